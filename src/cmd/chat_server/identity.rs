//! Who is who in the room: the names members hold, and the one rule for
//! what a member's message may claim. Every door calls these two.
//!
//! A member's name is fixed by its first message — a framed client's first
//! frame's header, a line client's first line, a UDP peer's first datagram —
//! and checked then ([`Names::claim`]): a name with a control character or a
//! colon is refused ([`crate::safe_text::check_name`]); the server's own name
//! and its user's are reserved; a name already held in the room (in any case:
//! names are compared folded to lower case) is made unique with a number, and
//! its member told. A frame with no header at all as a first message gets a
//! guest name ([`guest_name`]).
//!
//! Whatever a member sends after that reaches the room under that name and
//! no other ([`admit`]). A message whose header already carries the name, with
//! a well-formed timestamp and clean text, goes out as the bytes it came in
//! (the relay's fast path). Anything else — another member's name, the
//! server's, no header at all, a control character, a line of text that could
//! pass for a header — is re-stamped: the member's own name, the text cleaned
//! ([`chat_msg::clean_text`]), its timestamp kept when well-formed. Nothing is
//! refused or closed for it: the rule is the same for a careless client and a
//! hostile one, and the room never shows anyone's words under another name.
//!
//! What it must not do: allocate for a message that passes as it is, or let
//! two members hold one name.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::member::Origin;
use crate::chat_msg;
use crate::safe_text::{self, MAX_NAME_CHARS};

/// The name the server's own notices come from, whatever its user is called.
pub const SERVER_NAME: &str = "server";

/// The names held in the room, folded to lower case, and who holds each.
/// Bounded by the room: one entry per named member, plus the reserved ones.
#[derive(Debug, Default)]
pub(super) struct Names {
    taken: HashMap<Box<str>, Origin>,
}

/// What [`Names::claim`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim {
    /// The name asked for (trimmed).
    Granted(Box<str>),
    /// Taken already: this one instead, made unique with a number.
    Renamed(Box<str>),
    /// Refused: why, in words for the one who asked.
    Refused(String),
}

impl Names {
    /// Names held by the server itself from the start: its own and, with
    /// `--name`, its user's.
    pub(super) fn new(reserved: &[&str]) -> Names {
        let mut names = Names::default();
        for name in reserved {
            names.taken.insert(fold(name), Origin::Server);
        }
        names
    }

    /// `who` asks for `wanted` as its name.
    pub(super) fn claim(&mut self, wanted: &str, who: Origin) -> Claim {
        let wanted = wanted.trim();
        if let Err(why) = safe_text::check_name(wanted) {
            return Claim::Refused(why.to_string());
        }
        match self.taken.get(&fold(wanted)) {
            None => {
                self.taken.insert(fold(wanted), who);
                Claim::Granted(Box::from(wanted))
            }
            Some(holder) if *holder == who => Claim::Granted(Box::from(wanted)),
            Some(Origin::Server) if who != Origin::Server => Claim::Refused(format!(
                "'{wanted}' is this server's own name; choose another"
            )),
            Some(_) => {
                // One of the first len() + 2 numbers is free.
                for n in 2..self.taken.len() + 3 {
                    let candidate = numbered(wanted, n);
                    if let std::collections::hash_map::Entry::Vacant(free) =
                        self.taken.entry(fold(&candidate))
                    {
                        free.insert(who);
                        return Claim::Renamed(Box::from(candidate));
                    }
                }
                Claim::Refused(format!("'{wanted}' is taken"))
            }
        }
    }

    /// `who` no longer holds `name` (it left).
    pub(super) fn release(&mut self, name: &str, who: Origin) {
        let key = fold(name);
        if self.taken.get(&key) == Some(&who) {
            self.taken.remove(&key);
        }
    }
}

/// A name compared as the room compares names.
fn fold(name: &str) -> Box<str> {
    Box::from(name.to_lowercase())
}

/// `base-n`, `base` shortened so the whole stays within [`MAX_NAME_CHARS`].
fn numbered(base: &str, n: usize) -> String {
    let suffix = format!("-{n}");
    let keep = MAX_NAME_CHARS.saturating_sub(suffix.len());
    let mut name: String = base.chars().take(keep).collect();
    name.push_str(&suffix);
    name
}

/// The name of a member whose first message had no chat header: `guest-PORT`.
pub(super) fn guest_name(peer: SocketAddr) -> String {
    format!("guest-{}", peer.port())
}

/// A member's message, admitted to the room under its name.
#[derive(Debug)]
pub(super) struct Admitted<'a> {
    /// The message as it came, when it passes as it is.
    original: &'a str,
    /// The message re-stamped, when it did not.
    restamped: Option<String>,
}

impl Admitted<'_> {
    /// The message as the room gets it.
    pub(super) fn message(&self) -> &str {
        self.restamped.as_deref().unwrap_or(self.original)
    }

    /// True when the message goes out as the bytes it came in.
    pub(super) fn as_is(&self) -> bool {
        self.restamped.is_none()
    }

    /// Its TEXT.
    pub(super) fn text(&self) -> &str {
        chat_msg::parse(self.message()).map_or("", |m| m.text)
    }
}

/// The one rule for what a member's message may claim (see the module docs):
/// as it is, when its header carries `name`, a well-formed timestamp and clean
/// text; re-stamped with `name` and cleaned otherwise.
pub(super) fn admit<'a>(message: &'a str, name: &str) -> Admitted<'a> {
    let restamped = match chat_msg::parse(message) {
        Some(m)
            if m.sender == name
                && chat_msg::is_isoformat(m.timestamp)
                && chat_msg::is_clean_text(m.text) =>
        {
            None
        }
        Some(m) => {
            let text = chat_msg::clean_text(m.text);
            Some(if chat_msg::is_isoformat(m.timestamp) {
                format!("[{}] {name}:\n\t{text}", m.timestamp)
            } else {
                chat_msg::format_now(name, &text)
            })
        }
        None => Some(chat_msg::format_now(name, &chat_msg::clean_text(message))),
    };
    Admitted {
        original: message,
        restamped,
    }
}

/// The name a message's header claims, if it is in the chat format.
pub(super) fn claimed_name(message: &str) -> Option<&str> {
    chat_msg::parse(message).map(|m| m.sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::ConnId;

    fn member(n: usize) -> Origin {
        Origin::Member(ConnId(n))
    }

    #[test]
    fn names_are_checked_reserved_and_made_unique() {
        let mut names = Names::new(&[SERVER_NAME, "Alice"]);
        assert_eq!(
            names.claim(" Ann ", member(1)),
            Claim::Granted(Box::from("Ann"))
        );
        assert_eq!(
            names.claim("ann", member(2)),
            Claim::Renamed(Box::from("ann-2"))
        );
        assert_eq!(
            names.claim("ANN", member(3)),
            Claim::Renamed(Box::from("ANN-3"))
        );
        for reserved in ["Server", "alice"] {
            assert!(matches!(
                names.claim(reserved, member(4)),
                Claim::Refused(_)
            ));
        }
        assert!(
            matches!(names.claim("Ev\x1bil", member(4)), Claim::Refused(why) if why.contains("control"))
        );
        assert!(matches!(names.claim("a: b", member(4)), Claim::Refused(_)));
        // Released, a name is free again; only its holder releases it.
        names.release("ann", member(9));
        assert!(matches!(names.claim("Ann", member(5)), Claim::Renamed(_)));
        names.release("ANN", member(1));
        assert_eq!(
            names.claim("Ann", member(6)),
            Claim::Granted(Box::from("Ann"))
        );
    }

    #[test]
    fn a_unique_name_stays_within_the_limit() {
        let mut names = Names::default();
        let long = "x".repeat(MAX_NAME_CHARS);
        names.claim(&long, member(1));
        match names.claim(&long, member(2)) {
            Claim::Renamed(name) => {
                assert_eq!(name.chars().count(), MAX_NAME_CHARS);
                assert!(name.ends_with("-2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_passes_as_it_is_only_under_its_members_name() {
        let ok = "[2024-02-03T01:02:03.000004] Ann:\n\thello";
        let admitted = admit(ok, "Ann");
        assert!(admitted.as_is());
        assert_eq!(admitted.message(), ok);
        assert_eq!(admitted.text(), "hello");

        let claimed = admit("[2024-02-03T01:02:03] server:\n\tBob left the chat", "Eve");
        assert_eq!(
            claimed.message(),
            "[2024-02-03T01:02:03] Eve:\n\tBob left the chat"
        );
        let dirty = admit(
            "[2024-02-03T01:02:03] Ann:\n\t\x1b[2Jhi\n[x] server:",
            "Ann",
        );
        assert_eq!(
            dirty.message(),
            "[2024-02-03T01:02:03] Ann:\n\t^[[2Jhi\n\t[x] server:"
        );
        let bare = admit("no header", "Ann");
        assert!(bare.message().ends_with("] Ann:\n\tno header"));
        assert!(chat_msg::is_isoformat(
            chat_msg::parse(bare.message()).unwrap().timestamp
        ));
        let bad_time = admit("[yesterday] Ann:\n\thi", "Ann");
        assert!(!bad_time.message().starts_with("[yesterday]"));
    }
}
