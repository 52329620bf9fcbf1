//! Agent-written text made safe to show to a reviewer in a chat channel:
//! no characters that reorder or hide text, and, for fields meant to be
//! one line, no line breaks that could fake further fields.

/// Characters that change how text around them is displayed without
/// being visible themselves: bidirectional controls (which can show a name
/// reversed) and zero-width characters (which can hide text's real
/// spelling).
fn is_invisible_control(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{061C}'
            | '\u{FEFF}'
    ) || (c.is_control() && c != '\n' && c != '\t')
}

/// `text` without invisible controls; line breaks are kept.
pub fn visible(text: &str) -> String {
    text.chars().filter(|c| !is_invisible_control(*c)).collect()
}

/// `text` on one line: every line break (CR, LF, NEL, U+2028, U+2029)
/// becomes a space, and invisible controls are removed.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\r' | '\n' | '\u{0085}' | '\u{2028}' | '\u{2029}' => ' ',
            c => c,
        })
        .filter(|c| !is_invisible_control(*c))
        .collect()
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
        assert_eq!(one_line("ad\u{202E}nimda\u{200B}"), "adnimda");
        assert_eq!(visible("a\n\u{2066}b\tc\u{7}"), "a\nb\tc");
    }
}
