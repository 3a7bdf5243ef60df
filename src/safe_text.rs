//! Text a peer supplied, made safe to show: one place for the rules that keep
//! peer-supplied text from driving a terminal or forging lines.
//!
//! A chat relays names and messages typed by other people. Printed raw, an
//! `ESC [ 2 J` clears the reader's screen, an OSC sequence retitles their
//! terminal, a `CR` moves the cursor back so a later text hides an earlier
//! one, a `BEL` rings, and a bidi override makes text read in another order
//! than it was sent. A newline in a name forges a whole log line. None of that
//! is anything a chat participant may do to another.
//!
//! So every byte a peer chose goes through one of these before it reaches a
//! terminal, a line client or a log:
//!
//! * [`visible`] — for message text: the chat format's own `\n` and `\t` stay,
//!   every other control character is shown instead of obeyed, and every
//!   line a peer starts is indented (`\n` becomes `\n\t` unless a tab
//!   follows already), so no text can begin a line that reads as a message
//!   header `[TIMESTAMP] NAME:` of someone else;
//! * [`visible_line`] — for a log line: `\n` and `\t` too, so one log line
//!   stays one line;
//! * [`check_name`] — for a name, which is refused rather than rewritten.
//!
//! The visible rendering: C0 controls and DEL in caret notation, as terminals
//! and `cat -v` show them (`ESC` is `^[`, `CR` `^M`, `BEL` `^G`, NUL `^@`,
//! DEL `^?`); the C1 controls (U+0080..=U+009F) and the bidi overrides and
//! isolates (U+202A..=U+202E, U+2066..=U+2069) as `<U+XXXX>`. Everything
//! else, including every printable non-ASCII character, passes unchanged.
//!
//! *Invariant:* no I/O, and no allocation when the text needs no change (the
//! common case): the answer is then borrowed from the input.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;

/// The most characters (not bytes) a name may have.
pub const MAX_NAME_CHARS: usize = 32;

/// Text safe to print on a terminal or send to a line client: every control
/// character except `\n` and `\t` is replaced by a visible rendering (see the
/// module docs), and a `\n` not followed by `\t` gets one, so every line after
/// the first is indented as the chat format indents a message's text.
/// Borrowed when nothing had to change.
pub fn visible(text: &str) -> Cow<'_, str> {
    render(text, false)
}

/// Like [`visible`], and also `\n` -> `^J` and `\t` -> `^I`: for log lines,
/// so a peer cannot end one log line and forge the next.
pub fn visible_line(text: &str) -> Cow<'_, str> {
    render(text, true)
}

/// Why a name was refused. Its `Display` is written to be shown to the person
/// (or program) who chose the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Nothing left after trimming.
    Empty,
    /// More than [`MAX_NAME_CHARS`] characters.
    TooLong {
        /// How many characters the name has.
        chars: usize,
    },
    /// A control character (shown with its visible rendering).
    Control(char),
    /// A `:`, which would make the message header ambiguous.
    Colon,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "a name cannot be empty"),
            NameError::TooLong { chars } => write!(
                f,
                "a name can have at most {MAX_NAME_CHARS} characters; this one has {chars}"
            ),
            NameError::Control(c) => {
                let mut shown = String::new();
                push_rendering(&mut shown, *c);
                write!(
                    f,
                    "a name cannot contain control characters (it contains {shown})"
                )
            }
            NameError::Colon => write!(
                f,
                "a name cannot contain ':' (a message reads 'NAME:' and a colon in the name \
                 would make it read as someone else speaking)"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Whether `name` may be used as a chat name: 1 to [`MAX_NAME_CHARS`]
/// characters (the caller trims first), no control character at all (C0
/// including `\n` and `\t`, DEL, C1, the bidi controls) and no `:`.
///
/// Why no `:`: a message is `[TIMESTAMP] NAME:\n\tTEXT`, and both people and
/// programs find the name as what stands before the colon. The name
/// `Ann: hi` would print as `[...] Ann: hi:`, which reads as Ann saying "hi";
/// a reader that splits at the first `:` would take the sender to be `Ann`.
/// Refusing the colon keeps the sender field one unambiguous token.
///
/// Reserved names (a server's own, say) are the caller's business.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let mut chars = 0;
    for c in name.chars() {
        chars += 1;
        if c == ':' {
            return Err(NameError::Colon);
        }
        if is_control(c) || c == '\n' || c == '\t' {
            return Err(NameError::Control(c));
        }
    }
    if chars > MAX_NAME_CHARS {
        return Err(NameError::TooLong { chars });
    }
    Ok(())
}

/// A character [`visible`] replaces (the format's `\n` and `\t` excepted).
fn is_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` (followed by `next`) must be rewritten: a control character;
/// `\n` and `\t` in a log line; a `\n` not followed by `\t` in message text.
fn needs_rendering(c: char, next: Option<char>, line: bool) -> bool {
    if line {
        is_control(c) || c == '\n' || c == '\t'
    } else {
        is_control(c) || (c == '\n' && next != Some('\t'))
    }
}

/// The one scan behind [`visible`] and [`visible_line`]: borrow until the
/// first character that needs rendering, then copy with renderings.
fn render(text: &str, line: bool) -> Cow<'_, str> {
    let mut chars = text.char_indices().peekable();
    let first = loop {
        match chars.next() {
            None => return Cow::Borrowed(text),
            Some((i, c)) => {
                if needs_rendering(c, chars.peek().map(|&(_, n)| n), line) {
                    break i;
                }
            }
        }
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    let mut rest = text[first..].chars().peekable();
    while let Some(c) = rest.next() {
        if !needs_rendering(c, rest.peek().copied(), line) {
            out.push(c);
        } else if c == '\n' && !line {
            out.push_str("\n\t");
        } else {
            push_rendering(&mut out, c);
        }
    }
    Cow::Owned(out)
}

/// Appends the visible form of one control character: caret notation for C0
/// and DEL, `<U+XXXX>` for the rest.
fn push_rendering(out: &mut String, c: char) {
    let code = c as u32;
    match code {
        0x00..=0x1f => {
            out.push('^');
            out.push(char::from(b'@' + code as u8));
        }
        0x7f => out.push_str("^?"),
        _ => {
            let _ = write!(out, "<U+{code:04X}>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for text in [
            "",
            "hello",
            "caf\u{e9} \u{2713} \u{1f600}",
            "a\n\tb",
            "\u{a0}\u{2065}",
        ] {
            assert!(
                matches!(visible(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
        assert!(matches!(
            visible_line("no breaks"),
            Cow::Borrowed("no breaks")
        ));
    }

    #[test]
    fn a_peer_cannot_start_a_line_that_reads_as_someone_elses_header() {
        let forged = "hi\n[2026-01-01T12:00:00] Bob:\n\tI owe Eve 100";
        assert_eq!(
            visible(forged),
            "hi\n\t[2026-01-01T12:00:00] Bob:\n\tI owe Eve 100"
        );
        assert_eq!(visible("end\n"), "end\n\t");
        assert!(matches!(visible("a\n\tb"), Cow::Borrowed(_)));
        let whole = "[2026-01-01T12:00:00] Eve:\n\thi\nthere";
        assert_eq!(visible(whole), "[2026-01-01T12:00:00] Eve:\n\thi\n\tthere");
    }

    #[test]
    fn c0_and_del_in_caret_notation() {
        assert_eq!(visible("\x1b[2Jgone"), "^[[2Jgone");
        assert_eq!(visible("a\rb\x07c\x00d\x7f"), "a^Mb^Gc^@d^?");
        assert_eq!(visible("\x1b]0;owned\x07"), "^[]0;owned^G");
        assert_eq!(visible("\x1f\x0b\x0c"), "^_^K^L");
    }

    #[test]
    fn newline_and_tab_stay_in_text_but_not_in_a_log_line() {
        assert_eq!(visible("Ann:\n\thi"), "Ann:\n\thi");
        assert_eq!(visible_line("Ann:\n\thi"), "Ann:^J^Ihi");
        assert_eq!(visible_line("x\r\ny\x1b"), "x^M^Jy^[");
    }

    #[test]
    fn c1_and_bidi_controls_as_code_points() {
        assert_eq!(
            visible("\u{80}\u{9b}2J\u{9f}"),
            "<U+0080><U+009B>2J<U+009F>"
        );
        assert_eq!(
            visible("\u{202e}txt.exe\u{202c}"),
            "<U+202E>txt.exe<U+202C>"
        );
        assert_eq!(visible("\u{2066}x\u{2069}"), "<U+2066>x<U+2069>");
        // The neighbours of those ranges are ordinary characters.
        let neighbours = "\u{7e}\u{a0}\u{2029}\u{202f}\u{2065}\u{206a}";
        assert_eq!(visible(neighbours), neighbours);
    }

    #[test]
    fn multibyte_text_around_a_control_survives() {
        assert_eq!(visible("\u{e9}\x1b\u{2713}"), "\u{e9}^[\u{2713}");
    }

    #[test]
    fn names_that_pass() {
        for name in [
            "Ann",
            "J\u{fc}rgen",
            "\u{5f20}\u{4f1f}",
            "a b",
            &"x".repeat(32),
        ] {
            assert_eq!(check_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn names_that_are_refused_and_why() {
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(
            check_name(&"\u{e9}".repeat(33)),
            Err(NameError::TooLong { chars: 33 })
        );
        assert_eq!(check_name("Ann: hi"), Err(NameError::Colon));
        for c in [
            '\n', '\t', '\x1b', '\r', '\x7f', '\u{85}', '\u{202e}', '\u{2068}',
        ] {
            let name = format!("Ann{c}");
            assert_eq!(check_name(&name), Err(NameError::Control(c)), "{name:?}");
        }
    }

    #[test]
    fn a_refusal_reads_as_a_notice_and_shows_the_character() {
        let notice = check_name("a\x1bb").unwrap_err().to_string();
        assert_eq!(
            notice,
            "a name cannot contain control characters (it contains ^[)"
        );
        let notice = check_name("\u{202e}").unwrap_err().to_string();
        assert!(notice.contains("<U+202E>"), "{notice}");
        assert!(check_name(&"x".repeat(40))
            .unwrap_err()
            .to_string()
            .contains("at most 32 characters; this one has 40"));
    }
}
