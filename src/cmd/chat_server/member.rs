//! Members: the TCP clients in the room, their names, and how they join
//! and leave.
//!
//! A `Member` is small on purpose (an idle one owns no heap buffer), since a
//! server may hold tens of thousands. A member is announced to the room once
//! when it gets its name (its first message, or a line client's first line)
//! and once when it goes, saying why: it left, or was disconnected for its
//! backlog, a protocol error or idleness, or its connection was lost. A
//! member that never gave a name comes and goes unannounced. The hub's
//! `n_members` counts clients accepted and not yet closed.
//!
//! What it must not do: announce a member twice, or queue room messages for
//! one that is leaving, or for a line client that has not given its name.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Clients, Hub, TIMER_IDLE_SWEEP};
use crate::conn::CloseReason;
use crate::framing::Decoder;
use crate::lines::LineDecoder;
use crate::reactor::{ConnId, Ctx};

/// How a client speaks: which door it came in by.
#[derive(Debug)]
pub(super) enum Input {
    /// Length-prefixed frames (`--port`). Holds memory only for an incomplete frame.
    Framed(Decoder),
    /// Newline-terminated lines (`--line-port`). Holds memory only for an incomplete line.
    Lines(LineDecoder),
}

/// One client, as the hub sees it. Small on purpose: a server may hold
/// tens of thousands, and an idle one owns no heap buffer.
#[derive(Debug)]
pub struct Member {
    /// Splits its bytes into frames or lines. Set when the connection is
    /// accepted; taken out for the length of a `feed` (so relaying may use
    /// the rest of the table) and put back.
    pub(super) input: Option<Input>,
    /// It came in by the plain-text door: it is sent lines, not frames, and
    /// hears the room only once it has given its name.
    pub(super) line: bool,
    /// Its name: for a framed client, as it wrote it in the sender field of
    /// its messages; for a line client, its first line. `None` until then.
    pub(super) name: Option<Box<str>>,
    /// When it last sent anything (kept only with `--idle-timeout`).
    pub(super) last_heard: Instant,
    /// It said it is leaving (a zero-length frame, the leave line, or end of
    /// stream): its output is flushed, then it is closed; it gets no new messages.
    pub(super) leaving: bool,
    /// Frames dropped from its queue since it connected (drop-oldest),
    /// including any notice that was itself dropped.
    pub(super) missed: u64,
    /// `missed` as the last notice queued for it reported it. Notices carry
    /// the running total, so one that is dropped loses nothing: the next
    /// one says it all.
    pub(super) reported: u64,
    /// A notice may still be in its queue: no second one until the queue
    /// drains, so a client that does not read is not sent a stream of notices.
    pub(super) notice_queued: bool,
    /// Whole frames (or lines, each with its newline) that arrived while it
    /// was over its `--rate-limit`, in order, to be relayed as its rate
    /// allows. Reads are held while this is not empty, so it never holds more
    /// than one read's worth; empty and unallocated otherwise.
    pub(super) held: Vec<u8>,
    /// It ended its stream (or sent the zero-length frame) with messages
    /// still held: it leaves once they are relayed.
    pub(super) leave_after_held: bool,
}

impl Default for Member {
    fn default() -> Member {
        Member {
            input: None,
            line: false,
            name: None,
            last_heard: Instant::now(),
            leaving: false,
            missed: 0,
            reported: 0,
            notice_queued: false,
            held: Vec::new(),
            leave_after_held: false,
        }
    }
}

impl Member {
    /// True when room messages should be queued for it.
    pub(super) fn listening(&self) -> bool {
        let waiting_for_name = self.line && self.name.is_none();
        !self.leaving && !waiting_for_name
    }
}

/// Where a message came from; it is relayed to everyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The server itself (its user, or an announcement).
    Server,
    /// A TCP client, framed or line.
    Member(ConnId),
    /// A UDP peer.
    Udp(SocketAddr),
}

impl Hub {
    pub(super) fn on_accepted(&mut self, cx: &mut Ctx<Member>, conn: ConnId, listener: usize) {
        self.n_members += 1;
        let line = Some(listener) == self.line_listener;
        if let Some(member) = cx.state_mut(conn) {
            member.line = line;
            member.input = Some(if line {
                Input::Lines(LineDecoder::new(self.frames.max_frame))
            } else {
                Input::Framed(Decoder::new(self.frames))
            });
        }
        if let Some(c) = cx.conn(conn) {
            log::info!(
                "{} connected{} ({conn}, {})",
                c.peer(),
                if line { " by the line door" } else { "" },
                Clients(self.n_members)
            );
        }
        if line {
            cx.send(conn, &self.prompt);
        }
    }

    /// A client's or UDP peer's first message (or line client's name): now
    /// it has a name, and the others are told.
    pub(super) fn on_joined(&mut self, cx: &mut Ctx<Member>, origin: Origin, name: &str) {
        match origin {
            Origin::Member(conn) => {
                let peer = cx.conn(conn).map(|c| c.peer().to_string());
                log::info!(
                    "{name} joined the chat ({}, {conn})",
                    peer.as_deref().unwrap_or("?")
                );
            }
            Origin::Udp(addr) => log::info!("{name} joined the chat (udp {addr})"),
            Origin::Server => {}
        }
        self.announce(cx, origin, &format!("{name} joined the chat"));
    }

    /// The client said it is leaving (zero-length frame, the leave line, or
    /// end of stream): write what it is owed, then close.
    pub(super) fn on_leaving(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        if let Some(member) = cx.state_mut(conn) {
            member.leaving = true;
        }
        cx.close_after_flush(conn);
    }

    pub(super) fn on_closed(&mut self, cx: &mut Ctx<Member>, conn: ConnId, reason: &CloseReason) {
        let Some(c) = cx.conn(conn) else {
            return;
        };
        if c.state_of_app.input.is_none() {
            // Never handed over (a TLS handshake that failed): never a member.
            return;
        }
        self.n_members = self.n_members.saturating_sub(1);
        let member = &c.state_of_app;
        let name = member.name.clone();
        let who = match &name {
            Some(name) => format!("{name} ({}, {conn})", c.peer()),
            None => format!("{} ({conn})", c.peer()),
        };
        let n = Clients(self.n_members);
        if self.stopping {
            log::info!("{who} closed at shutdown: {reason} ({n})");
            if self.n_members == 0 {
                cx.stop();
            }
            return;
        }
        let announcement = if member.leaving || matches!(reason, CloseReason::Done) {
            log::info!("{who} left ({n})");
            "left the chat"
        } else {
            match reason {
                CloseReason::Backlog { .. } | CloseReason::Protocol(_) => {
                    log::warn!("{who} disconnected: {reason} ({n})")
                }
                _ => log::info!("{who} disconnected: {reason} ({n})"),
            }
            match reason {
                CloseReason::Backlog { .. } => "was disconnected: not reading fast enough",
                CloseReason::Protocol(_) => "was disconnected: protocol error",
                CloseReason::Idle => "was disconnected: idle for too long",
                _ => "left the chat (connection lost)",
            }
        };
        if let Some(name) = name {
            self.announce(cx, Origin::Member(conn), &format!("{name} {announcement}"));
        }
    }

    /// Closes clients that have sent nothing for the idle timeout.
    pub(super) fn sweep_idle(&mut self, cx: &mut Ctx<Member>) {
        let Some((timeout, every)) = self.idle else {
            return;
        };
        if self.stopping {
            return;
        }
        let now = Instant::now();
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            let idle = cx
                .state(id)
                .is_some_and(|m| !m.leaving && now.duration_since(m.last_heard) >= timeout);
            if idle {
                cx.close(id, CloseReason::Idle);
            }
        }
        cx.set_timer_in(every, TIMER_IDLE_SWEEP);
    }
}
