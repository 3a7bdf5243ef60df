//! Chat message text, shared by the UDP and TCP chats.
//!
//! `[TIMESTAMP] NAME:\n\tTEXT`, the timestamp in local time as Python's
//! `datetime.isoformat()` writes it: `YYYY-MM-DDTHH:MM:SS.ffffff`, with the
//! fractional part left out when the microseconds are zero. Being the same
//! text as the course's programs is what lets them chat with sockloop.
//! No I/O here.
//!
//! A message shown to a person goes through [`clean_text`] or [`display`]:
//! control characters are shown, not obeyed ([`crate::safe_text::visible`]),
//! and every line of TEXT after its first starts with the tab the format
//! puts before TEXT, so a line that starts with `[` is always a header and
//! no text can pass for someone else's message.

use std::borrow::Cow;

use chrono::{DateTime, Local, NaiveDateTime, Timelike};

use crate::safe_text;

/// The text a participant sends when it leaves.
pub const LEAVE_TEXT: &str = "<LEAVES THE CHAT>";

/// The text of the chat message a full chat server sends a client it turns
/// away, just before it closes the connection; a chat client that gets this
/// as its first message and then the end of the connection was refused.
pub const FULL_TEXT: &str = "the server is full; try again later";

/// The prompt shown when no `--name` was given.
pub const NAME_PROMPT: &str = "Enter your username to start the chat:";

/// Formats a message stamped with the current local time.
pub fn format_now(sender: &str, text: &str) -> String {
    format_at(&Local::now().naive_local(), sender, text)
}

/// Formats a message with the given timestamp.
pub fn format_at(time: &NaiveDateTime, sender: &str, text: &str) -> String {
    format!("[{}] {sender}:\n\t{text}", isoformat(time))
}

/// Python's `datetime.isoformat()` for a naive date-time.
pub fn isoformat(time: &NaiveDateTime) -> String {
    let micros = time.nanosecond() / 1_000 % 1_000_000;
    if micros == 0 {
        time.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        format!("{}.{micros:06}", time.format("%Y-%m-%dT%H:%M:%S"))
    }
}

/// A chat message taken apart: `[TIMESTAMP] NAME:\n\tTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// What stood between the brackets.
    pub timestamp: &'a str,
    /// The sender's name as the sender wrote it.
    pub sender: &'a str,
    /// The message text.
    pub text: &'a str,
}

/// Takes a message apart; `None` when it is not in the chat format.
pub fn parse(message: &str) -> Option<Parsed<'_>> {
    let rest = message.strip_prefix('[')?;
    let close = rest.find("] ")?;
    let timestamp = &rest[..close];
    let rest = &rest[close + 2..];
    let split = rest.find(":\n\t")?;
    Some(Parsed {
        timestamp,
        sender: &rest[..split],
        text: &rest[split + 3..],
    })
}

/// True when the message's whole TEXT is the leave text (not merely ending with it).
pub fn is_leave(message: &str) -> bool {
    parse(message).is_some_and(|m| m.text == LEAVE_TEXT)
}

/// True when `text` has the shape [`isoformat`] writes:
/// `YYYY-MM-DDTHH:MM:SS`, with `.` and six digits or not. Checks the shape,
/// not the calendar; cheap enough for every relayed message.
pub fn is_isoformat(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape = |b: &[u8]| {
        b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        })
    };
    match bytes.len() {
        19 => shape(bytes),
        26 => {
            shape(&bytes[..19]) && bytes[19] == b'.' && bytes[20..].iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// TEXT as it may be shown to anyone: control characters made visible and
/// every line after the first indented by a tab, so none can pass for a
/// header ([`safe_text::visible`]), and no line ending at the end. Borrowed
/// when nothing had to change, which [`is_clean_text`] tells cheaply.
pub fn clean_text(text: &str) -> Cow<'_, str> {
    if is_clean_text(text) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(safe_text::visible(text.trim_end_matches(['\n', '\r'])).into_owned())
}

/// True when [`clean_text`] would leave `text` as it is: no control
/// character to show, every newline followed by a tab, none at the end.
pub fn is_clean_text(text: &str) -> bool {
    !text.ends_with('\n') && matches!(safe_text::visible(text), Cow::Borrowed(_))
}

/// A whole message as it may be printed on a terminal: its header's
/// timestamp and name, and its TEXT, cleaned as [`clean_text`] says. Text
/// not in the chat format is cleaned as a whole. Borrowed when nothing had
/// to change (the common case).
pub fn display(message: &str) -> Cow<'_, str> {
    let Some(parsed) = parse(message) else {
        return clean_text(message);
    };
    let header_clean = matches!(safe_text::visible_line(parsed.timestamp), Cow::Borrowed(_))
        && matches!(safe_text::visible_line(parsed.sender), Cow::Borrowed(_));
    if header_clean && is_clean_text(parsed.text) {
        return Cow::Borrowed(message);
    }
    Cow::Owned(format!(
        "[{}] {}:\n\t{}",
        safe_text::visible_line(parsed.timestamp),
        safe_text::visible_line(parsed.sender),
        clean_text(parsed.text)
    ))
}

/// Parses a `[TIMESTAMP]` as written by [`isoformat`] back to a local date-time.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Local>> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    naive.and_local_timezone(Local).earliest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(h: u32, m: u32, s: u32, micro: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2024, 2, 3)
            .unwrap()
            .and_hms_micro_opt(h, m, s, micro)
            .unwrap()
    }

    #[test]
    fn matches_the_lecture_example() {
        assert_eq!(
            format_at(&at(12, 15, 0, 0), "Alice", "Hello, World!"),
            "[2024-02-03T12:15:00] Alice:\n\tHello, World!"
        );
    }

    #[test]
    fn prints_microseconds_with_six_digits_only_when_nonzero() {
        assert_eq!(isoformat(&at(1, 2, 3, 4500)), "2024-02-03T01:02:03.004500");
        assert_eq!(isoformat(&at(1, 2, 3, 0)), "2024-02-03T01:02:03");
    }

    #[test]
    fn the_timestamp_shape_is_checked_byte_by_byte() {
        assert!(is_isoformat("2024-02-03T01:02:03"));
        assert!(is_isoformat("2024-02-03T01:02:03.004500"));
        assert!(is_isoformat(&isoformat(&at(1, 2, 3, 5))));
        for bad in [
            "",
            "2024-02-03 01:02:03",
            "2024-02-03T01:02:03.45",
            "x024-02-03T01:02:03",
            "2024-02-03T01:02:03.00450\u{1b}",
        ] {
            assert!(!is_isoformat(bad), "{bad:?}");
        }
    }

    #[test]
    fn clean_text_shows_controls_and_indents_every_later_line() {
        assert!(matches!(clean_text("plain \u{e9} text"), Cow::Borrowed(_)));
        assert!(matches!(clean_text("two\n\tlines"), Cow::Borrowed(_)));
        assert_eq!(clean_text("\x1b[2Jx\u{9b}"), "^[[2Jx<U+009B>");
        assert_eq!(
            clean_text("hi\n[2024-02-03T01:02:03] server:\n\tBob left the chat"),
            "hi\n\t[2024-02-03T01:02:03] server:\n\tBob left the chat"
        );
        assert_eq!(clean_text("trailing\r\n"), "trailing");
        for text in ["a\rb", "x\n", "\u{202e}y", "a\nb", "\u{e9}\x07"] {
            assert!(!is_clean_text(text), "{text:?}");
            assert!(is_clean_text(&clean_text(text)), "{text:?}");
        }
        assert!(is_clean_text("caf\u{e9} \u{2713} \u{a0}"));
    }

    #[test]
    fn display_cleans_the_header_too() {
        let fine = format_at(&at(1, 2, 3, 0), "Ann", "hello");
        assert!(matches!(display(&fine), Cow::Borrowed(_)));
        assert_eq!(
            display("[2024-02-03T01:02:03] Ev\x1bil:\n\tboo\x07"),
            "[2024-02-03T01:02:03] Ev^[il:\n\tboo^G"
        );
        assert_eq!(display("no header\x1b[2J"), "no header^[[2J");
    }

    #[test]
    fn parses_back_and_recognises_only_an_exact_leave() {
        let msg = format_at(&at(1, 2, 3, 5), "Bob: the builder", "hi:\n\tthere");
        let parsed = parse(&msg).unwrap();
        assert_eq!(parsed.sender, "Bob: the builder");
        assert_eq!(parsed.text, "hi:\n\tthere");
        assert!(parse_timestamp(parsed.timestamp).is_some());
        assert!(is_leave(&format_now("x", LEAVE_TEXT)));
        assert!(!is_leave(&format_now("x", "I say <LEAVES THE CHAT>")));
        assert!(!is_leave("<LEAVES THE CHAT>"));
    }
}
