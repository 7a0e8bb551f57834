//! Text from sensors made safe to print on an operator's terminal.
//!
//! Sensors control strings such as `sensor_version`, `process.uid`, `actor.user.name` and a
//! command result's detail. Printed raw in a table, an escape sequence in one of them could
//! recolour or erase the terminal, and a line break could add a fake row. Every table column
//! that prints such text passes it through [`escape_controls`]. JSON output needs no such
//! step, because JSON escapes control characters itself.
//!
//! The bidirectional controls (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069)
//! and the line and paragraph separators (U+2028, U+2029) are escaped too: they cannot move
//! the cursor, but they can make a row read backwards or break it.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Returns `text` with each control character (C0, DEL and C1, Unicode category Cc) and each
/// character that [`is_reordering`] names replaced by its Rust escape, such as `\u{1b}` for
/// ESC and `\u{a}` for a line feed.
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || is_reordering(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// Returns whether `c` changes the direction or the lines of the text around it.
fn is_reordering(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_escaped() {
        let cases = [
            ("1.0\u{1b}[31mRED", "1.0\\u{1b}[31mRED"),
            ("bob\r\nfake row", "bob\\u{d}\\u{a}fake row"),
            ("tab\there\0", "tab\\u{9}here\\u{0}"),
            ("del\u{7f}", "del\\u{7f}"),
            ("csi\u{9b}31m", "csi\\u{9b}31m"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            ("line\u{2028}break", "line\\u{2028}break"),
        ];
        for (input, expected) in cases {
            assert_eq!(escape_controls(input), expected, "{input:?}");
        }
    }

    #[test]
    fn printable_text_borrowed() {
        for text in ["", "DESKTOP-01", "müller", "日本語", "a\\u{1b}b"] {
            assert!(
                matches!(escape_controls(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
    }
}
