//! Connector-controlled text on its way to a terminal or a log line.
//!
//! Names, versions, stream names, error texts, log lines, drift paths and
//! quarantine errors all come from an untrusted component. Printed raw, a
//! newline or carriage return forges a line (`run … succeeded`), and an
//! escape sequence retitles the terminal (`ESC ] 0 ; … BEL`) or clears it
//! (`ESC [ 2 J`). [`Escaped`] is the one place such text is made safe: every
//! terminal and log edge prints connector text through it. JSON output
//! (`--json`) and the store keep the exact text (serde escapes it there).

use std::fmt;

/// `n` bytes with a binary unit, one decimal past bytes (`512 B`,
/// `1.5 KiB`, `48.0 MiB`), for tables and pages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `text` for a terminal or log line: shown with [`Escaped`].
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// Displays its text on one line with every control character escaped:
/// `\n`, `\r`, `\t` as those two-character escapes, other C0 and C1
/// controls and DEL as `\x1b`-style hex, and the Unicode line/paragraph
/// separators and bidirectional overrides (which reorder or break what a
/// terminal shows) as `\u{202e}`. Everything else, backslashes included, is
/// shown as is. Width, fill and alignment (`{:<16}`) apply to the escaped
/// text.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

/// Whether `c` must not reach a terminal as itself.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn write_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if needs_escape(c) && (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32)?,
            c if needs_escape(c) => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.chars().any(needs_escape) {
            return f.pad(self.0);
        }
        let mut s = String::with_capacity(self.0.len() + 16);
        write_escaped(&mut s, self.0)?;
        f.pad(&s)
    }
}

/// An error and its causes on one line, outermost first, joined by `: `,
/// each cause once: one whose text the line already ends with (an error
/// that quotes its source in its own message, as some library errors do)
/// is not repeated. Not escaped: show it through [`escaped`].
pub fn chain_text<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `message` cut to at most `max` bytes, at a character boundary.
pub fn truncate(message: &str, max: usize) -> &str {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Serialize and deserialize each type as its text: its `Display` out,
/// its `FromStr` back in (grants, secret references: the forms an operator
/// writes on the command line, so a serialised run spec reads the same).
#[macro_export]
macro_rules! serde_as_text {
    ($($t:ty),+ $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

pub use serde_as_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Quoting(std::io::Error);
    impl fmt::Display for Quoting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot read x: {}", self.0)
        }
    }
    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_chain_shows_each_cause_once() {
        let io = || std::io::Error::other("Is a directory");
        let e = anyhow::Error::new(Quoting(io())).context("loading");
        assert_eq!(
            chain_text(e.chain()),
            "loading: cannot read x: Is a directory"
        );
        // `{:#}` repeats the quoted cause; the chain does not.
        assert_eq!(
            format!("{e:#}"),
            "loading: cannot read x: Is a directory: Is a directory"
        );
        let e = anyhow::Error::new(io()).context("cannot read y");
        assert_eq!(chain_text(e.chain()), "cannot read y: Is a directory");
    }

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        let hostile = "a\nrun 1 succeeded\r\x1b]0;title\x07\x1b[2J\t\u{7f}\u{9b}\u{202e}é\\n";
        let shown = escaped(hostile).to_string();
        assert_eq!(
            shown,
            r"a\nrun 1 succeeded\r\x1b]0;title\x07\x1b[2J\t\x7f\x9b\u{202e}é\n"
        );
        assert!(!shown.chars().any(needs_escape), "{shown:?}");
        assert_eq!(escaped("plain text").to_string(), "plain text");
    }

    #[test]
    fn padding_applies_to_the_escaped_text() {
        assert_eq!(format!("{:<6}|", escaped("a\nb")), "a\\nb  |");
        assert_eq!(format!("{:>4}|", escaped("ab")), "  ab|");
    }
}
