//! The server's own side of the room: its user typing on stdin, the
//! messages it prints on stdout, and how it stops.
//!
//! Stdout is written at most once per read from a client (sooner only when
//! `STDOUT_BATCH` bytes wait), and a stdout that fails (a closed pipe) stops
//! the printing, never the relay. Stopping happens once and in order: no
//! more accepting, the room is told (UDP peers with the leave text, since
//! they have no connection to see close), every client is given what is
//! queued for it for at most `SHUTDOWN_GRACE`, then the loop ends.
//!
//! What it must not do: block on stdout, or keep the loop running after
//! the grace period.

use std::rc::Rc;

use super::commands::Command;
use super::fanout::Outgoing;
use super::identity::{Claim, SERVER_NAME};
use super::member::{Member, Origin, Wire};
use super::udp_room::UdpRoom;
use super::{Clients, Hub, SHUTDOWN_GRACE, TIMER_GRACE};
use crate::chat_msg::{self, LEAVE_TEXT};
use crate::cmd::chat::{hint, Typed};
use crate::framing;
use crate::reactor::Ctx;
use crate::sys;

/// Shown to the server's user once its name is known (at a terminal only).
pub(super) const HINT: &str =
    "Type a message and press Enter to send it to everyone; end input (Ctrl+D) to stop the server.";

/// Printed messages are written to stdout at the end of each read, or
/// sooner when this many bytes are waiting.
const STDOUT_BATCH: usize = 64 * 1024;

impl Hub {
    pub(super) fn on_stdin(&mut self, cx: &mut Ctx<Member>, bytes: &[u8]) {
        if self.stopping {
            return;
        }
        let Some(mut input) = self.input.take() else {
            return;
        };
        input.feed(bytes, |typed| self.on_typed(cx, typed));
        self.input = Some(input);
    }

    pub(super) fn on_stdin_eof(&mut self, cx: &mut Ctx<Member>) {
        if let Some(mut input) = self.input.take() {
            if !self.stopping {
                input.finish(|typed| self.on_typed(cx, typed));
            }
            self.input = Some(input);
        }
        // As in the lecture: the server's user leaving ends the chat.
        self.shut_down(
            cx,
            "end of input: the server's user left (--relay-only serves without one)",
        );
    }

    fn on_typed(&mut self, cx: &mut Ctx<Member>, typed: Typed<'_>) {
        match typed {
            Typed::Name(name) => {
                let name = match self.names.claim(name, Origin::Server) {
                    Claim::Granted(name) => name,
                    Claim::Renamed(given) => {
                        eprintln!("the name {name} is taken in the room: you are {given}");
                        given
                    }
                    Claim::Refused(why) => {
                        // ChatInput checks names as they are typed; the server's
                        // own is the server's user's to take.
                        eprintln!("{why}");
                        Box::from(SERVER_NAME)
                    }
                };
                self.host = Some(name);
                hint(HINT);
            }
            Typed::Text { text, .. } => {
                if let Some(command) = Command::parse(text) {
                    self.answer(cx, Origin::Server, command);
                    return;
                }
                if self.n_members == 0 && self.udp.as_ref().map_or(true, UdpRoom::is_empty) {
                    log::warn!("nobody is connected: the message went to no one");
                }
                self.say_as_host(cx, text);
            }
        }
    }

    /// The server's user says `text` to everyone.
    fn say_as_host(&mut self, cx: &mut Ctx<Member>, text: &str) {
        let name = self.host.as_deref().unwrap_or(SERVER_NAME);
        let message = chat_msg::format_now(name, &chat_msg::clean_text(text));
        if message.len() > self.frames.max_frame {
            log::warn!("not sent: {} bytes is over --max-frame", message.len());
            return;
        }
        self.fan_out(cx, Origin::Server, &mut Outgoing::new(&message));
    }

    /// Stops accepting, says goodbye, flushes every client and closes it;
    /// the loop ends when all are gone or the grace period is over.
    pub(super) fn shut_down(&mut self, cx: &mut Ctx<Member>, why: &str) {
        if self.stopping {
            return;
        }
        cx.stop_accepting();
        if self.input.is_some() {
            // As in the lecture: the server's user leaving ends the chat.
            self.say_as_host(cx, LEAVE_TEXT);
        } else if let Some(udp) = self.udp.as_mut() {
            // UDP peers have no connection to see close: the leave text
            // makes their udp-chat forget the server.
            let message = chat_msg::format_now(SERVER_NAME, LEAVE_TEXT);
            udp.send_all(cx, None, message.as_bytes(), &mut None);
        }
        if let Some(udp) = self.udp.as_mut() {
            udp.clear();
        }
        self.stopping = true;
        if self.n_members == 0 {
            log::info!("{why}: stopping (no clients connected)");
            cx.stop();
            return;
        }
        log::info!(
            "{why}: no longer accepting; closing {} (waiting at most {:?} for their output)",
            Clients(self.n_members),
            SHUTDOWN_GRACE
        );
        let close: Rc<[u8]> = Rc::from(framing::close_frame(self.frames));
        let web_close = self.web_goodbye();
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            match cx.state(id).map(|m| (m.wire(), m.listening())) {
                Some((Wire::Framed, _)) => {
                    let _ = cx.queue(id, &close);
                }
                Some((Wire::Web, true)) => {
                    let _ = cx.queue(id, &web_close);
                }
                _ => {}
            }
            cx.close_after_flush(id);
        }
        cx.set_timer_in(SHUTDOWN_GRACE, TIMER_GRACE);
    }

    /// Adds one message and a newline to what goes to stdout after this read.
    pub(super) fn print(&mut self, text: &str) {
        if !self.printing {
            return;
        }
        if self.stdout.len() + text.len() >= STDOUT_BATCH {
            self.flush_stdout();
        }
        self.stdout.extend_from_slice(text.as_bytes());
        self.stdout.push(b'\n');
    }

    /// Writes the messages printed since the last call: one `write` per
    /// read from a client, not one per message.
    pub(super) fn flush_stdout(&mut self) {
        if self.stdout.is_empty() {
            return;
        }
        if let Err(error) = sys::write_all_fd(1, &self.stdout) {
            self.printing = false;
            log::warn!("stdout: {error}; messages are relayed but no longer printed");
        }
        self.stdout.clear();
    }
}
