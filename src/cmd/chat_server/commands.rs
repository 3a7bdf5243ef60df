//! The room's commands: a message whose whole text is `/who` or `/help`
//! is answered to its sender alone, by the server, and relayed to nobody.
//!
//! `/who` lists who can read the room — the server's user, every TCP client
//! (by name, or by address until its name is known) and every UDP peer — with
//! the door each came in by (`who.rs`, which also asks the other hubs of a
//! room joined through a broker). The answer is one message, cut to
//! [`MAX_ANSWER`] bytes of text for a UDP peer or the server's user. Any
//! other text starting with `/` is an ordinary message.
//!
//! What it must not do: send an answer to anyone but the one who asked.

use super::member::{Member, Origin};
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
    /// Answers `command` to `to` alone. `/who` from a TCP member asks the
    /// other hubs too, when there is a broker link (`who.rs`).
    pub(super) fn answer(&mut self, cx: &mut Ctx<Member>, to: Origin, command: Command) {
        let text = match (command, to) {
            (Command::Who, Origin::Member(conn)) => return self.on_who(cx, conn),
            (Command::Who, _) => self.who_here(cx),
            (Command::Help, _) => HELP.to_string(),
        };
        match to {
            Origin::Member(conn) => self.tell(cx, conn, &text),
            Origin::Udp(addr) => self.tell_udp(cx, addr, &text),
            Origin::Server => eprintln!("{text}"),
        }
    }

    /// Who is in the room on this hub, and by which door, as one line of
    /// text of at most [`MAX_ANSWER`] bytes.
    fn who_here(&mut self, cx: &mut Ctx<Member>) -> String {
        let limit = MAX_ANSWER.min(self.frames.max_frame.saturating_sub(64));
        let mut here = String::new();
        let (listed, more) = self.local_members(cx, &mut here, usize::MAX);
        let mut text = format!("{} in the room: {here}", listed + more);
        if text.len() > limit {
            let mut cut = limit.saturating_sub(4);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" ...");
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
