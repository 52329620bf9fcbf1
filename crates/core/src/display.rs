//! Agent-written text made inert wherever a reviewer reads it: a chat
//! message, a terminal (`gavel show`, `gavel requests`), a web page.
//! Characters that reorder or hide text, or that a terminal acts on, are
//! shown as `⟨U+XXXX⟩` instead of being passed on (a reviewer sees that
//! something was there) and, for fields meant to be one line, line breaks
//! become spaces so they cannot fake further fields.

/// Characters that change how the text around them is displayed without
/// being visible themselves, or that a terminal interprets:
/// - C0 and C1 controls but tab and line feed (ESC, 0x1b, starts terminal
///   escape sequences: colours, cursor moves, window titles, hyperlinks;
///   0x9b is CSI on some terminals) and DEL;
/// - bidirectional controls (which can show a name reversed);
/// - zero-width and other invisible characters (which can hide a text's
///   real spelling), tag characters, variation selectors, the BOM.
pub fn is_hidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

fn reveal_into(out: &mut String, c: char) {
    out.push_str(&format!("⟨U+{:04X}⟩", c as u32));
}

/// `text` with every hidden character shown as `⟨U+XXXX⟩`; line breaks and
/// tabs are kept.
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' => {}
            '\u{0085}' | '\u{2028}' | '\u{2029}' => out.push('\n'),
            c if is_hidden(c) => reveal_into(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// `text` on one line: every line break (CR, LF, NEL, U+2028, U+2029)
/// becomes a space, tabs become spaces, and hidden characters are shown as
/// `⟨U+XXXX⟩`.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' | '\n' | '\t' | '\u{0085}' | '\u{2028}' | '\u{2029}' => out.push(' '),
            c if is_hidden(c) => reveal_into(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_cannot_fake_more_lines_or_hide_its_spelling() {
        assert_eq!(
            one_line("x\nResource: scratch\r\nAction:\u{2028}sql.read"),
            "x Resource: scratch  Action: sql.read"
        );
        assert_eq!(
            one_line("ad\u{202E}nimda\u{200B}"),
            "ad⟨U+202E⟩nimda⟨U+200B⟩"
        );
        assert_eq!(visible("a\n\u{2066}b\tc\u{7}"), "a\n⟨U+2066⟩b\tc⟨U+0007⟩");
    }

    #[test]
    fn terminal_escape_sequences_are_inert() {
        let hostile = "DROP TABLE t\u{1b}[2K\u{1b}[1A\u{1b}]0;title\u{7}SELECT 1\u{9b}31m";
        let shown = visible(hostile);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        );
        assert!(shown.contains("⟨U+001B⟩[2K"), "{shown}");
        assert!(shown.contains("⟨U+009B⟩"), "{shown}");
        assert!(shown.starts_with("DROP TABLE t"));
    }
}
