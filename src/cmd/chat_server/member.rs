//! Members: the TCP clients in the room, how they come in, get their name
//! and go, and what the room is told about it.
//!
//! Everyone knows who is in the room. A TCP client is announced by the
//! server as soon as it is in (a TLS one once its handshake is over), by its
//! address, since its name comes with its first message; when that name is
//! known (`identity.rs` decides what it may be), the room is told who that
//! address is. A line client is announced at connect too, though it hears the
//! room only once it has given its name. A member is announced once when it
//! goes, saying why: it left, or was disconnected (its backlog, a protocol
//! error, idleness, a deadline), or its connection was lost. The leave text a
//! client sends on its way out is not relayed: the server's notice is the one
//! announcement. The hub's `n_members` counts clients in and not yet closed.
//!
//! Closes are logged at most once a second per cause, with counts
//! ([`CloseLogs`]), so a flood of clients coming and going cannot flood the log.
//!
//! What it must not do: announce a member twice, queue room messages for one
//! that is leaving (or, at the line door, has no name yet), or let a name
//! outlive its member.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use super::identity::Claim;
use super::web::{self, WebConn, WebStage};
use super::{Clients, Hub, TIMER_IDLE_SWEEP, TIMER_LOG_SUMMARY};
use crate::conn::CloseReason;
use crate::framing::Decoder;
use crate::lines::LineDecoder;
use crate::loglimit::{Note, RateLog};
use crate::reactor::{ConnId, Ctx};
use crate::safe_text::visible_line;

/// How a client speaks: which door it came in by.
#[derive(Debug)]
pub(super) enum Input {
    /// Length-prefixed frames (`--port`). Holds memory only for an incomplete frame.
    Framed(Decoder),
    /// Newline-terminated lines (`--line-port`). Holds memory only for an incomplete line.
    Lines(LineDecoder),
    /// HTTP, then WebSocket frames (`--web-port`; see `web.rs`).
    Web(Box<WebConn>),
}

/// The wire format a member is sent the room in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    /// Length-prefixed frames.
    Framed,
    /// Text lines.
    Line,
    /// WebSocket text frames.
    Web,
}

impl Wire {
    /// The wire of a TCP door that is not the web's.
    fn from_line(line: bool) -> Wire {
        if line {
            Wire::Line
        } else {
            Wire::Framed
        }
    }
}

/// A deadline a member missed (see `deadlines.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Late {
    /// No name within `--name-timeout` (the line door).
    Name,
    /// A frame or line begun and not finished within `--frame-timeout`.
    Frame,
}

/// One client, as the hub sees it. Small on purpose: a server may hold
/// tens of thousands, and an idle one owns no heap buffer.
#[derive(Debug)]
pub struct Member {
    /// Handed over by the reactor (`Event::Accepted`) and counted in
    /// `n_members`; a TLS connection still handshaking is not.
    pub(super) joined: bool,
    /// Splits its bytes into frames or lines. Set when the connection is
    /// accepted; taken out for the length of a `feed` (so relaying may use
    /// the rest of the table) and put back.
    pub(super) input: Option<Input>,
    /// It came in by the plain-text door: it is sent lines, not frames, and
    /// hears the room only once it has given its name.
    pub(super) line: bool,
    /// It came in by the web door, and how far it got (`None`: another door).
    /// It hears the room only once it is a WebSocket.
    pub(super) web: Option<WebStage>,
    /// Its name, fixed by its first message (`identity.rs`); `None` until then.
    pub(super) name: Option<Box<str>>,
    /// When its last complete message arrived (kept only with `--idle-timeout`).
    pub(super) last_heard: Instant,
    /// When the frame or line it has begun (and not finished) began to
    /// arrive; `None` when nothing is half-sent (see `deadlines.rs`).
    pub(super) partial_since: Option<Instant>,
    /// The deadline it missed, if that is why it is closing.
    pub(super) late: Option<Late>,
    /// It was told once that what it signs with another name reaches the room under its own.
    pub(super) told_restamp: bool,
    /// It said it is leaving (a zero-length frame, the leave text, or end of
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
    /// This connection is the hub's link to the NATS broker (`broker.rs`),
    /// not a client: it is never in the room.
    pub(super) link: bool,
}

impl Default for Member {
    fn default() -> Member {
        Member {
            joined: false,
            input: None,
            line: false,
            web: None,
            name: None,
            last_heard: Instant::now(),
            partial_since: None,
            late: None,
            told_restamp: false,
            leaving: false,
            missed: 0,
            reported: 0,
            notice_queued: false,
            held: Vec::new(),
            leave_after_held: false,
            link: false,
        }
    }
}

impl Member {
    /// True when room messages should be queued for it.
    pub(super) fn listening(&self) -> bool {
        let waiting_for_name = self.line && self.name.is_none();
        let not_a_websocket = self.web == Some(WebStage::Http);
        self.joined && !self.leaving && !waiting_for_name && !not_a_websocket && !self.link
    }

    /// The wire format it is sent the room in.
    pub(super) fn wire(&self) -> Wire {
        if self.line {
            Wire::Line
        } else if self.web.is_some() {
            Wire::Web
        } else {
            Wire::Framed
        }
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

/// Which door, as notices and `/who` name it.
pub(super) fn door_name(wire: Wire, tls: bool) -> &'static str {
    match (wire, tls) {
        (Wire::Framed, false) => "framed",
        (Wire::Framed, true) => "framed, TLS",
        (Wire::Line, false) => "line",
        (Wire::Line, true) => "line, TLS",
        (Wire::Web, false) => "web",
        (Wire::Web, true) => "web, TLS",
    }
}

/// Why a member's connection closed, as one cause of log lines.
#[derive(Debug, Clone, Copy)]
pub(super) enum Closed {
    Left,
    Lost,
    Protocol,
    Backlog,
    Idle,
    Late,
    Shutdown,
    NameRefused,
}

impl Closed {
    const ALL: [Closed; 8] = [
        Closed::Left,
        Closed::Lost,
        Closed::Protocol,
        Closed::Backlog,
        Closed::Idle,
        Closed::Late,
        Closed::Shutdown,
        Closed::NameRefused,
    ];

    /// What happened to them, for the line that sums a second up.
    fn phrase(self) -> &'static str {
        match self {
            Closed::Left => "left",
            Closed::Lost => "lost their connection",
            Closed::Protocol => "were disconnected for a protocol error",
            Closed::Backlog => "were disconnected for not reading fast enough",
            Closed::Idle => "were disconnected for idleness",
            Closed::Late => "were disconnected for missing a deadline",
            Closed::Shutdown => "were closed at shutdown",
            Closed::NameRefused => "had their name refused",
        }
    }
}

/// The close log: one [`RateLog`] per [`Closed`] cause.
#[derive(Debug, Default)]
pub(super) struct CloseLogs {
    logs: [RateLog; 8],
}

impl Hub {
    pub(super) fn on_accepted(&mut self, cx: &mut Ctx<Member>, conn: ConnId, listener: usize) {
        if self
            .web
            .as_ref()
            .is_some_and(|web| web.listener == listener)
        {
            // Not a member until it becomes a WebSocket.
            return self.on_web_accepted(cx, conn);
        }
        self.n_members += 1;
        let line = Some(listener) == self.line_listener;
        if let Some(member) = cx.state_mut(conn) {
            member.joined = true;
            member.line = line;
            member.input = Some(if line {
                Input::Lines(LineDecoder::new(self.frames.max_frame))
            } else {
                Input::Framed(Decoder::new(self.frames))
            });
        }
        let Some(c) = cx.conn(conn) else {
            return;
        };
        let (peer, tls) = (c.peer(), c.is_tls());
        log::info!(
            "{peer} connected{} ({conn}, {})",
            if line { " by the line door" } else { "" },
            Clients(self.n_members)
        );
        self.announce_joined(cx, conn, peer, door_name(Wire::from_line(line), tls));
        if line {
            let _ = cx.queue(conn, &self.prompt);
            self.arm_deadlines(cx);
        }
    }

    /// Tells the room a member came in by `door`, by its address.
    pub(super) fn announce_joined(
        &mut self,
        cx: &mut Ctx<Member>,
        conn: ConnId,
        peer: SocketAddr,
        door: &str,
    ) {
        self.announce(
            cx,
            Origin::Member(conn),
            &format!("{peer} joined the chat ({door} door, no name yet)"),
        );
    }

    /// A TCP member asks for `wanted` as its name (its first message, or a
    /// line client's first line). True when it has a name now; false when it
    /// was refused: it has been told why and, at the framed door, is closing
    /// (a line client is asked again).
    pub(super) fn name_member(&mut self, cx: &mut Ctx<Member>, conn: ConnId, wanted: &str) -> bool {
        let claim = self.names.claim(wanted, Origin::Member(conn));
        let Some(c) = cx.conn(conn) else {
            return false;
        };
        let (peer, line) = (c.peer(), c.state_of_app.line);
        let name = match claim {
            Claim::Refused(why) => {
                self.log_close(cx, Closed::NameRefused, || {
                    format!(
                        "{peer} ({conn}): the name '{}' is refused: {}",
                        visible_line(wanted),
                        visible_line(&why)
                    )
                });
                self.tell(cx, conn, &format!("your name is refused: {why}"));
                if line {
                    let _ = cx.queue(conn, &self.prompt);
                } else {
                    if let Some(member) = cx.state_mut(conn) {
                        member.leaving = true;
                    }
                    cx.close_after_flush(conn);
                }
                return false;
            }
            Claim::Granted(name) => name,
            Claim::Renamed(name) => {
                self.tell(
                    cx,
                    conn,
                    &format!("the name {} is taken here: you are {name}", wanted.trim()),
                );
                name
            }
        };
        log::info!("{peer} ({conn}) is {name}");
        let notice = format!("{peer} is {name}");
        if let Some(member) = cx.state_mut(conn) {
            member.name = Some(name);
        }
        self.announce(cx, Origin::Member(conn), &notice);
        true
    }

    /// Tells one member something, privately, as the server.
    pub(super) fn tell(&mut self, cx: &mut Ctx<Member>, conn: ConnId, text: &str) {
        let Some(wire) = cx.state(conn).map(Member::wire) else {
            return;
        };
        if let Some(notice) = self.encode_as(wire, text) {
            let _ = cx.queue(conn, &notice);
        }
    }

    /// The client said it is leaving (zero-length frame, the leave text, or
    /// end of stream): write what it is owed, then close. The room hears of
    /// it once, when it is closed.
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
        let member = &c.state_of_app;
        if !member.joined {
            // Never a member: a TLS handshake that failed, or a web
            // connection that never became a WebSocket.
            log::debug!("{conn}: closed before it joined: {reason}");
            return;
        }
        self.n_members = self.n_members.saturating_sub(1);
        let web_failure = web::failure_of(member);
        let reason = web_failure.as_ref().unwrap_or(reason);
        let peer = c.peer();
        let (name, late, leaving) = (member.name.clone(), member.late, member.leaving);
        if let Some(name) = &name {
            self.names.release(name, Origin::Member(conn));
        }
        let who = match &name {
            Some(name) => format!("{name} ({peer}, {conn})"),
            None => format!("{peer} ({conn})"),
        };
        let n = Clients(self.n_members);
        if self.stopping {
            self.log_close(cx, Closed::Shutdown, || {
                format!("{who} closed at shutdown: {reason} ({n})")
            });
            if self.n_members == 0 {
                cx.stop();
            }
            return;
        }
        let (cause, announcement) = match (late, reason) {
            (Some(Late::Name), _) => (
                Closed::Late,
                "was disconnected: no name within --name-timeout",
            ),
            (Some(Late::Frame), _) => (
                Closed::Late,
                "was disconnected: a message left unfinished for too long",
            ),
            (None, CloseReason::Done) => (Closed::Left, "left the chat"),
            (None, _) if leaving => (Closed::Left, "left the chat"),
            (None, CloseReason::Backlog { .. }) => {
                (Closed::Backlog, "was disconnected: not reading fast enough")
            }
            (None, CloseReason::Protocol(_)) => {
                (Closed::Protocol, "was disconnected: protocol error")
            }
            (None, CloseReason::Idle) => (Closed::Idle, "was disconnected: idle for too long"),
            (None, _) => (Closed::Lost, "left the chat (connection lost)"),
        };
        self.log_close(cx, cause, || match cause {
            Closed::Left => format!("{who} left ({n})"),
            Closed::Late => format!("{who} disconnected: {announcement} ({n})"),
            _ => format!("{who} disconnected: {reason} ({n})"),
        });
        let subject = name.map_or_else(|| peer.to_string(), String::from);
        self.announce(
            cx,
            Origin::Member(conn),
            &format!("{subject} {announcement}"),
        );
    }

    /// Logs one close (or name refusal) of `cause`, unless one was logged in
    /// the last second; then it is counted, and the count logged when that
    /// second is over (`log_close_summaries`).
    pub(super) fn log_close(
        &mut self,
        cx: &mut Ctx<Member>,
        cause: Closed,
        line: impl FnOnce() -> String,
    ) {
        match self.close_logs.logs[cause as usize].note(Instant::now()) {
            Note::Log => match cause {
                Closed::Backlog | Closed::Protocol | Closed::Late | Closed::NameRefused => {
                    log::warn!("{}", line())
                }
                _ => log::info!("{}", line()),
            },
            Note::CountedFirst(at) => cx.set_timer(at, TIMER_LOG_SUMMARY),
            Note::Counted => {}
        }
    }

    /// A second of closes is over: one line per cause with how many were not logged.
    pub(super) fn log_close_summaries(&mut self) {
        let now = Instant::now();
        for cause in Closed::ALL {
            if let Some(n) = self.close_logs.logs[cause as usize].summary(now) {
                log::info!("{n} more client(s) {} in the last second", cause.phrase());
            }
        }
    }

    /// Closes clients that have sent no complete message for the idle timeout.
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
            let idle = cx.state(id).is_some_and(|m| {
                m.joined && !m.leaving && !m.link && now.duration_since(m.last_heard) >= timeout
            });
            if idle {
                cx.close(id, CloseReason::Idle);
            }
        }
        cx.set_timer_in(every, TIMER_IDLE_SWEEP);
    }
}

/// The name prompt, as a shared line for the line door.
pub(super) fn prompt_line(prompt: &str) -> Rc<[u8]> {
    let mut line = prompt.as_bytes().to_vec();
    line.push(b'\n');
    Rc::from(line)
}
