//! The line door (`--line-port`): plain-text clients such as `nc` and
//! `telnet`.
//!
//! A line client's first non-empty line is its name (`Hub::name_member`; a
//! name refused is explained and asked for again); each later non-empty line
//! is a message the server stamps `[TIMESTAMP] NAME:\n\tTEXT` in that name,
//! its text cleaned first (`chat_msg::clean_text`). The line
//! `<LEAVES THE CHAT>` ends its stay (the room hears it once, from the
//! server); `/who` and `/help` are answered to it alone. It hears the room
//! only once it has a name (`Member::listening`). A message longer than
//! `--max-frame` once stamped goes to no one: the client alone is told why,
//! and stays.
//!
//! What it must not do: let a client speak before it has a name, or pass on
//! a line as anything but a message stamped with that name.

use std::time::Instant;

use super::commands::Command;
use super::fanout::Outgoing;
use super::member::{Member, Origin};
use super::Hub;
use crate::chat_msg::{self, LEAVE_TEXT};
use crate::reactor::{ConnId, Ctx};

impl Hub {
    /// One whole line from a line client: its name first, then messages.
    pub(super) fn on_line(&mut self, cx: &mut Ctx<Member>, conn: ConnId, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        if member.leaving {
            return;
        }
        if self.idle.is_some() {
            member.last_heard = Instant::now();
        }
        if member.name.is_none() {
            let name = text.trim();
            if name.is_empty() {
                let _ = cx.queue(conn, &self.prompt);
            } else {
                self.name_member(cx, conn, name);
            }
            return;
        }
        let said = text.trim();
        if said.is_empty() {
            return;
        }
        if said == LEAVE_TEXT {
            self.on_leaving(cx, conn);
            return;
        }
        if let Some(command) = Command::parse(said) {
            self.answer(cx, Origin::Member(conn), command);
            return;
        }
        let Some(name) = cx.state(conn).and_then(|m| m.name.as_deref()) else {
            return;
        };
        let message = chat_msg::format_now(name, &chat_msg::clean_text(text));
        if message.len() > self.frames.max_frame {
            let notice = format!(
                "not sent: your message is {} bytes once stamped, over the {}-byte maximum",
                message.len(),
                self.frames.max_frame
            );
            self.tell(cx, conn, &notice);
            return;
        }
        self.fan_out(cx, Origin::Member(conn), &mut Outgoing::new(&message));
        self.print(&message);
    }
}
