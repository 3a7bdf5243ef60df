//! Chat message text, shared by the UDP and TCP chats.
//!
//! `[TIMESTAMP] NAME:\n\tTEXT`, the timestamp in local time as Python's
//! `datetime.isoformat()` writes it: `YYYY-MM-DDTHH:MM:SS.ffffff`, with the
//! fractional part left out when the microseconds are zero. Being the same
//! text as the course's programs is what lets them chat with sockloop.
//! No I/O here.

use chrono::{DateTime, Local, NaiveDateTime, Timelike};

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
