//! The member's own user: the name and lines typed on stdin, what is printed
//! on stdout, starting the mesh once the name is known, and leaving it.
//!
//! *Invariant:* stdin is read only while no member has more than half its
//! backlog waiting, so piped input goes at the pace of the slowest member;
//! the check runs again whenever a queue drains or a link closes, so paused
//! input never waits for a member that is gone.
//!
//! *Invariant:* stdout is the user's data, and nothing meant for it is
//! dropped. When its buffer is full, every link's reads are held until it
//! drains: the backpressure reaches the senders through TCP, and their own
//! backlog policy decides about a member whose reader stays stuck. (Guests
//! relayed through this member wait too: a member is a person's chat first
//! and its guests' hub second.)

use std::rc::Rc;
use std::time::Instant;

use super::super::chat::{hint, Typed};
use super::mesh::Origin;
use super::{close_link, queue, role, Link, Role, TcpChat, HINT, LEAVE_GRACE, TIMER_LEAVE};
use crate::chat_msg::{self, LEAVE_TEXT};
use crate::conn::CloseReason;
use crate::framing;
use crate::net;
use crate::reactor::{Ctx, StdoutRoom};
use crate::safe_text::visible;

impl TcpChat {
    // ----- The local user -----------------------------------------------------

    pub(super) fn on_stdin(&mut self, cx: &mut Ctx<Link>, bytes: &[u8]) {
        if self.leaving {
            return;
        }
        let mut typed_lines = Vec::new();
        let mut named = false;
        self.input.feed(bytes, |typed| match typed {
            Typed::Name(_) => named = true,
            Typed::Text { text, .. } => typed_lines.push(text.to_string()),
        });
        if named {
            self.on_name(cx);
        }
        for line in typed_lines {
            self.say(cx, &line);
        }
        self.regulate_stdin(cx);
    }

    /// The name the user typed (checked by the input already): the mesh starts.
    pub(super) fn on_name(&mut self, cx: &mut Ctx<Link>) {
        hint(HINT);
        self.start(cx);
    }

    /// Sends a typed line to every member and guest.
    pub(super) fn say(&mut self, cx: &mut Ctx<Link>, text: &str) {
        let Some(name) = self.input.name() else {
            return;
        };
        let message = chat_msg::format_now(name, &visible(text));
        let frame = match framing::encode(message.as_bytes(), self.frames) {
            Ok(frame) => frame,
            Err(e) => {
                log::warn!("not sent: {e} (--max-frame)");
                return;
            }
        };
        if self.members.len() == 0 && self.guests.is_empty() {
            log::info!("nobody else is in the chat yet: the message went nowhere");
        }
        self.fan_out(cx, &frame, true, None);
    }

    /// Pauses stdin while a member has more than half its backlog waiting, so
    /// piped input slows down to the pace of the slowest member instead of
    /// getting it disconnected. (A guest never slows the chat down.)
    pub(super) fn regulate_stdin(&mut self, cx: &mut Ctx<Link>) {
        let most = self
            .members
            .iter()
            .filter_map(|(_, m)| cx.conn(m.conn).map(|c| c.out_len()))
            .max()
            .unwrap_or(0);
        if most >= self.max_backlog / 2 && !self.leaving {
            cx.pause_stdin();
        } else if !self.leaving {
            cx.resume_stdin();
        }
    }

    /// Prints one message (already made visible) and a newline on stdout.
    /// When stdout's buffer is full, every link's reads are held until
    /// [`Event::StdoutReady`](crate::reactor::Event::StdoutReady) (see the
    /// module docs).
    pub(super) fn print(&mut self, cx: &mut Ctx<Link>, text: &str) {
        if self.stdout_gone {
            return;
        }
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        match cx.stdout_data(line.as_bytes()) {
            StdoutRoom::Room | StdoutRoom::Closed => {}
            StdoutRoom::Full => {
                if !self.stdout_held {
                    self.stdout_held = true;
                    log::debug!("stdout is full: reads held until it drains");
                }
                let mut ids = std::mem::take(&mut self.ids);
                cx.conn_ids(&mut ids);
                for &id in &ids {
                    cx.hold_reads(id);
                }
                self.ids = ids;
            }
        }
    }

    /// Stdout took what waited: read every link again.
    pub(super) fn on_stdout_ready(&mut self, cx: &mut Ctx<Link>) {
        if !self.stdout_held {
            return;
        }
        self.stdout_held = false;
        let mut ids = std::mem::take(&mut self.ids);
        cx.conn_ids(&mut ids);
        for &id in &ids {
            cx.release_reads(id);
        }
        self.ids = ids;
    }

    /// Stdout failed (its reader closed the pipe, say): stop printing.
    pub(super) fn on_stdout_closed(&mut self) {
        if !self.stdout_gone {
            self.stdout_gone = true;
            match crate::reactor::console::stdout_failure() {
                Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    log::warn!("cannot print messages any more: {e}");
                }
                _ => {}
            }
        }
    }

    // ----- Starting and leaving ---------------------------------------------------

    /// Listens, then dials every PEER (once the name is known: a hello carries it).
    pub(super) fn start(&mut self, cx: &mut Ctx<Link>) {
        match cx.listen(self.bind, self.port) {
            Ok((_, local)) => {
                self.local = Some(local);
                net::announce("tcp-chat", local);
            }
            Err(e) => {
                self.outcome = Err(e);
                cx.stop();
                return;
            }
        }
        log::info!(
            "member id {}; dialing {} peer(s)",
            self.me,
            self.given.len()
        );
        let now = Instant::now();
        for addr in std::mem::take(&mut self.given) {
            if let Some(key) = self.targets.add(addr, Origin::CommandLine, now) {
                self.dial(cx, key);
            }
        }
    }

    /// Says goodbye to every member and guest (the leave text, the
    /// zero-length frame, our write side shut), then waits for them to close,
    /// at most [`LEAVE_GRACE`].
    pub(super) fn leave(&mut self, cx: &mut Ctx<Link>, why: &str) {
        if self.leaving {
            return;
        }
        let mut last = None;
        self.input.finish(|typed| {
            if let Typed::Text { text, .. } = typed {
                last = Some(text.to_string());
            }
        });
        if let Some(line) = last {
            self.say(cx, &line);
        }
        self.leaving = true;
        cx.pause_stdin();
        cx.stop_accepting();
        let Some(name) = self.input.name() else {
            log::info!("{why}: leaving before choosing a name");
            cx.stop();
            return;
        };
        let goodbye = framing::encode(
            chat_msg::format_now(name, LEAVE_TEXT).as_bytes(),
            self.frames,
        )
        .ok();
        let close: Rc<[u8]> = Rc::from(framing::close_frame(self.frames));
        cx.conn_ids(&mut self.ids);
        let mut told = 0;
        for id in std::mem::take(&mut self.ids) {
            match role(cx, id) {
                Some(Role::Member(_) | Role::Guest) => {
                    if let Some(goodbye) = &goodbye {
                        queue(cx, id, goodbye);
                    }
                    queue(cx, id, &close);
                    cx.shutdown_write(id);
                    told += 1;
                }
                Some(Role::Unknown | Role::Dialing { .. }) => {
                    close_link(cx, id, CloseReason::Local("leaving"));
                }
                _ => {}
            }
        }
        log::info!("{why}: leaving the chat ({told} member(s) and guest(s) told)");
        cx.set_timer_in(LEAVE_GRACE, TIMER_LEAVE);
        self.stop_if_alone(cx);
    }

    /// While leaving: stops once no member or guest is left to wait for.
    pub(super) fn stop_if_alone(&mut self, cx: &mut Ctx<Link>) {
        if !self.leaving {
            return;
        }
        cx.conn_ids(&mut self.ids);
        if self.ids.is_empty() {
            cx.stop();
        }
    }
}
