//! What the CLI writes for people and for pipes: standard output that ends
//! quietly when its reader goes away (`gavel … | head`), colour only on a
//! terminal, tables sized to their content, and times relative to now.

use std::io::{IsTerminal as _, Write as _};

/// Writes one line to standard output. A closed pipe ends the program
/// quietly with success: the reader has all it wanted.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        fail(&e);
    }
}

/// Writes text without a line break of its own.
pub fn text(s: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        fail(&e);
    }
}

fn fail(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("gavel: cannot write to standard output: {e}");
    std::process::exit(i32::from(crate::exit::FAILURE));
}

/// Whether `e` (anywhere in its chain) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}

/// Colour and bold only when standard output is a terminal and
/// `NO_COLOR` is unset.
pub fn colour() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb")
    })
}

/// A request state, coloured by what it asks of a reviewer.
pub fn state(s: &str, padded_to: usize) -> String {
    let padded = format!("{s:<padded_to$}");
    if !colour() {
        return padded;
    }
    let code = match s {
        "pending" => "33",
        "approved" | "admitted" | "executed" => "32",
        "denied" | "failed" => "31",
        _ => "2",
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

/// Bold on a terminal.
pub fn bold(s: &str) -> String {
    if colour() {
        format!("\x1b[1m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

/// Rows under headers, each column as wide as its widest cell; the last
/// column is not padded. Cells must already be inert one-line text.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    /// A column whose cells are request states (coloured).
    state_column: Option<usize>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Table {
        Table {
            headers,
            rows: Vec::new(),
            state_column: None,
        }
    }

    pub fn state_column(mut self, index: usize) -> Table {
        self.state_column = Some(index);
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the headers, then the rows.
    pub fn print(&self) {
        self.print_with(true);
    }

    /// Prints the rows alone (the headers only size the columns).
    pub fn print_rows(&self) {
        self.print_with(false);
    }

    fn print_with(&self, headers: bool) {
        let columns = self.headers.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([self.headers[i].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let header: Vec<String> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| pad(h, widths[i], i + 1 == columns))
            .collect();
        if headers {
            line(format_args!("{}", bold(header.join("  ").trim_end())));
        }
        for row in &self.rows {
            let cells: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = row.get(i).map(String::as_str).unwrap_or("");
                    let last = i + 1 == columns;
                    if Some(i) == self.state_column {
                        state(cell, if last { 0 } else { widths[i] })
                    } else {
                        pad(cell, widths[i], last)
                    }
                })
                .collect();
            line(format_args!("{}", cells.join("  ").trim_end()));
        }
    }
}

fn pad(cell: &str, width: usize, last: bool) -> String {
    if last {
        return cell.to_owned();
    }
    let fill = width.saturating_sub(cell.chars().count());
    format!("{cell}{}", " ".repeat(fill))
}

/// `t` (RFC 3339) relative to now: `3m ago`, `in 12m`; empty when `t` is
/// not a time.
pub fn relative(t: &str) -> String {
    use gavel_core::Clock as _;
    let Ok(then) = gavel_core::Timestamp::parse_rfc3339(t) else {
        return String::new();
    };
    let now = gavel_core::SystemClock.now();
    let ms = then.0 - now.0;
    let span = span(ms.unsigned_abs() / 1000);
    if ms.abs() < 1000 {
        "now".into()
    } else if ms < 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// A duration in seconds, to one unit: `45s`, `12m`, `3h`, `2d`.
pub fn span(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(5), "5s");
        assert_eq!(span(150), "2m");
        assert_eq!(span(3 * 3600 + 5), "3h");
        assert_eq!(span(3 * 86_400), "3d");
    }

    #[test]
    fn cells_pad_to_the_widest_except_the_last() {
        assert_eq!(pad("ab", 4, false), "ab  ");
        assert_eq!(pad("ab", 4, true), "ab");
        assert_eq!(pad("é", 3, false), "é  ");
    }
}
