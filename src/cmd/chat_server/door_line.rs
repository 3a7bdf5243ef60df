//! The line door (`--line-port`): plain-text clients such as `nc` and
//! `telnet`.
//!
//! A line client's first non-empty line is its name; each later non-empty
//! line is a message the server stamps `[TIMESTAMP] NAME:\n\tTEXT` in its
//! name, and the line `<LEAVES THE CHAT>` is relayed and then ends its
//! stay. It hears the room only once it has a name (`Member::listening`).
//! A message longer than `--max-frame` once stamped goes to no one: the
//! client alone is told why, and stays.
//!
//! What it must not do: let a client speak before it has a name, or pass on
//! a line as anything but a message stamped with that name.

use super::fanout::Outgoing;
use super::member::{Member, Origin};
use super::who::WHO_COMMAND;
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
        let Some(name) = member.name.as_deref() else {
            let name = text.trim();
            if name.is_empty() {
                cx.send(conn, &self.prompt);
                return;
            }
            member.name = Some(Box::from(name));
            self.on_joined(cx, Origin::Member(conn), name);
            return;
        };
        if text.trim_start().is_empty() {
            return;
        }
        if text.trim() == WHO_COMMAND {
            self.on_who(cx, conn);
            return;
        }
        let message = chat_msg::format_now(name, text);
        if message.len() > self.frames.max_frame {
            let notice = format!(
                "not sent: your message is {} bytes once stamped, over the {}-byte maximum",
                message.len(),
                self.frames.max_frame
            );
            if let Some(notice) = self.encode_for(true, &notice) {
                let _ = cx.queue(conn, &notice);
            }
            return;
        }
        self.fan_out(cx, Origin::Member(conn), &mut Outgoing::new(&message));
        self.print(&message);
        if text.trim() == LEAVE_TEXT {
            self.on_leaving(cx, conn);
        }
    }
}
