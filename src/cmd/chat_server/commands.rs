//! The room's commands: a message whose whole text is `/who` or `/help`
//! is answered to its sender alone, by the server, and relayed to nobody.
//!
//! `/who` lists who can read the room — the server's user, every TCP client
//! (by name, or by address until its name is known) and every UDP peer — with
//! the door each came in by. The answer is one message, at most
//! [`MAX_ANSWER`] bytes of text; a longer list ends with how many were left
//! out. Any other text starting with `/` is an ordinary message.
//!
//! What it must not do: send an answer to anyone but the one who asked.

use std::fmt::Write as _;

use super::member::{door_name, Member, Origin};
use super::Hub;
use crate::reactor::Ctx;

/// The longest `/who` answer, in bytes of text (it is also kept within `--max-frame`).
pub const MAX_ANSWER: usize = 4096;

/// What `/help` says.
const HELP: &str = "commands: /who lists who is in the room (only you see the answer); \
    /help shows this. Every other message goes to everyone in the room.";

/// A command a member sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    /// `/who`: who is in the room, and by which door.
    Who,
    /// `/help`: the commands.
    Help,
}

impl Command {
    /// The command a message's text is, if it is one.
    pub(super) fn parse(text: &str) -> Option<Command> {
        match text.trim() {
            "/who" => Some(Command::Who),
            "/help" => Some(Command::Help),
            _ => None,
        }
    }
}

impl Hub {
    /// Answers `command` to `to` alone.
    pub(super) fn answer(&mut self, cx: &mut Ctx<Member>, to: Origin, command: Command) {
        let text = match command {
            Command::Who => self.who(cx),
            Command::Help => HELP.to_string(),
        };
        match to {
            Origin::Member(conn) => self.tell(cx, conn, &text),
            Origin::Udp(addr) => self.tell_udp(cx, addr, &text),
            Origin::Server => eprintln!("{text}"),
        }
    }

    /// Who is in the room, and by which door, as one line of text.
    fn who(&mut self, cx: &mut Ctx<Member>) -> String {
        let limit = MAX_ANSWER.min(self.frames.max_frame.saturating_sub(64));
        let mut entries: Vec<String> = Vec::new();
        if let Some(host) = &self.host {
            entries.push(format!("{host} (this server's user)"));
        }
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            let Some(c) = cx.conn(id) else {
                continue;
            };
            let member = &c.state_of_app;
            if !member.joined || member.leaving {
                continue;
            }
            let door = door_name(member.wire(), c.is_tls());
            entries.push(match &member.name {
                Some(name) => format!("{name} ({door})"),
                None => format!("{} ({door}, no name yet)", c.peer()),
            });
        }
        if let Some(udp) = &self.udp {
            udp.list(&mut entries);
        }
        let mut text = format!("in the room ({}): ", entries.len());
        for (shown, entry) in entries.iter().enumerate() {
            let more = entries.len() - shown;
            if text.len() + entry.len() + format!(", and {more} more").len() + 2 > limit {
                if shown > 0 {
                    text.push_str(", ");
                }
                let _ = write!(text, "and {more} more");
                return text;
            }
            if shown > 0 {
                text.push_str(", ");
            }
            text.push_str(entry);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_whole_text_is_a_command() {
        assert_eq!(Command::parse("/who"), Some(Command::Who));
        assert_eq!(Command::parse(" /help "), Some(Command::Help));
        assert_eq!(Command::parse("/who is there"), None);
        assert_eq!(Command::parse("/me waves"), None);
        assert_eq!(Command::parse("who"), None);
    }
}
