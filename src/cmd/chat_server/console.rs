//! The server's own side of the room: its user typing on stdin, the
//! messages it prints on stdout, and how it stops.
//!
//! Stdout is a copy for whoever watches the server, never the relay's
//! business: the messages of one read from a client are printed with one
//! write, through the reactor's stdout sink, which takes them whole or not
//! at all. When stdout's reader falls behind (a paused `less`, a full pipe)
//! the copy is dropped and counted, and the count is said on stderr at most
//! every `DROP_NOTE_EVERY`, when stdout flows again and at the end; the
//! relay goes on at full speed. `--no-stdout` turns the copy off (for
//! benchmarks). A stdout that fails (a closed pipe) stops the printing,
//! never the relay.
//!
//! Stopping happens once and in order: no more accepting, the room is told
//! (UDP peers with the leave text, since they have no connection to see
//! close), every client is given what is queued for it for at most
//! `SHUTDOWN_GRACE`, then the loop ends.
//!
//! What it must not do: wait for stdout, or keep the loop running after the
//! grace period.

use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// Shown to the server's user once its name is known (at a terminal only).
pub(super) const HINT: &str =
    "Type a message and press Enter to send it to everyone; end input (Ctrl+D) to stop the server.";

/// Most bytes of messages one read may print; beyond, the copy is dropped
/// and counted (a read holds at most 64 KiB, so this is rarely reached).
const STDOUT_BATCH: usize = 256 * 1024;

/// How often, at most, the server says how many messages it did not print.
pub(super) const DROP_NOTE_EVERY: Duration = Duration::from_secs(10);

/// The server's copy of the room on stdout.
pub(super) struct ConsoleCopy {
    /// False with `--no-stdout`, or once stdout failed.
    on: bool,
    /// The messages of the current read, written at its end; reused.
    batch: Vec<u8>,
    /// Messages in `batch`.
    batch_lines: u64,
    /// Messages not printed since the last note.
    dropped: u64,
    /// Messages not printed in all.
    dropped_total: u64,
    /// When the last note was said.
    noted: Instant,
}

impl ConsoleCopy {
    /// A copy that prints (`on`) or not (`--no-stdout`).
    pub(super) fn new(on: bool) -> ConsoleCopy {
        ConsoleCopy {
            on,
            batch: Vec::new(),
            batch_lines: 0,
            dropped: 0,
            dropped_total: 0,
            noted: Instant::now(),
        }
    }

    /// Says how many messages were not printed since the last note.
    fn note(&mut self, why: &str) {
        if self.dropped == 0 {
            return;
        }
        log::warn!(
            "stdout {why}: {} relayed message(s) not printed ({} in all); the relay was not slowed",
            self.dropped,
            self.dropped_total
        );
        self.dropped = 0;
        self.noted = Instant::now();
    }
}

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
                let alone = self.n_members == 0 && self.broker.is_none();
                if alone && self.udp.as_ref().map_or(true, UdpRoom::is_empty) {
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
        self.leave_other_hubs(cx);
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
            match cx.state(id).map(|m| (m.wire(), m.listening(), m.link)) {
                Some((_, _, true)) => continue, // The broker link closes itself.
                Some((Wire::Framed, _, _)) => {
                    let _ = cx.queue(id, &close);
                }
                Some((Wire::Web, true, _)) => {
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
        let copy = &mut self.console;
        if !copy.on {
            return;
        }
        if copy.batch.len() + text.len() >= STDOUT_BATCH {
            copy.dropped += 1;
            copy.dropped_total += 1;
            return;
        }
        copy.batch.extend_from_slice(text.as_bytes());
        copy.batch.push(b'\n');
        copy.batch_lines += 1;
    }

    /// Writes the messages printed since the last call, with one write, if
    /// stdout has room for them; otherwise drops and counts them.
    pub(super) fn flush_stdout(&mut self, cx: &mut Ctx<Member>) {
        let copy = &mut self.console;
        if copy.batch.is_empty() {
            return;
        }
        if !cx.stdout(&copy.batch) {
            copy.dropped += copy.batch_lines;
            copy.dropped_total += copy.batch_lines;
            if copy.noted.elapsed() >= DROP_NOTE_EVERY {
                copy.note("is not keeping up");
            }
        }
        copy.batch.clear();
        copy.batch_lines = 0;
    }

    /// Stdout took everything it held: say what was lost meanwhile.
    pub(super) fn on_stdout_ready(&mut self) {
        self.console.note("flows again");
    }

    /// Stdout failed (say, its reader closed the pipe): stop printing.
    pub(super) fn on_stdout_closed(&mut self) {
        let copy = &mut self.console;
        if copy.on {
            copy.on = false;
            let why = crate::reactor::console::stdout_failure()
                .map_or_else(|| "closed".to_string(), |e| crate::error::plain(&e));
            log::warn!("stdout: {why}; messages are relayed but no longer printed");
        }
    }

    /// At the end: the last count of what was not printed.
    pub(super) fn note_unprinted(&mut self) {
        self.console.note("was not keeping up");
    }
}
