//! The hub's link to the NATS broker (`--broker`): one more connection in
//! the same poll, and the state machine that keeps it up.
//!
//! ```text
//!              ┌──────── attempt failed, or link lost: backoff with jitter ────────┐
//!              v                                                                   │
//!   Waiting ──timer──> Connecting ──TCP up──> Greeting ──INFO──> Subscribing ──PONG──> Flowing
//!                      (non-blocking)         (server first)    (CONNECT, SUB,      (PING every
//!                                                                PING sent)          --broker-ping)
//!   Connecting, Greeting, Subscribing: at most HANDSHAKE_TIMEOUT, then the attempt has failed.
//!   Flowing: a PING still unanswered at the next one means the link is dead.
//!   Stopped: the hub is shutting down; nothing reconnects.
//! ```
//!
//! Publishing never waits for the broker: a message for the other hubs is
//! encoded once into the outbox (`outbox.rs`, at most `--broker-backlog`
//! bytes; what does not fit is dropped and counted), and the outbox goes to
//! the connection only while the link is flowing, at most [`WATERMARK`]
//! bytes ahead of the kernel, all that was published in one turn in one
//! write at its end. A link that breaks loses at most what had been handed to
//! it (counted as "unsent at loss"). Delivery across hubs is therefore **at
//! most once**, and counted: every message carries its hub's id, run and
//! number, and a receiving hub counts what never came (`remote.rs`).
//!
//! Servers are tried in turn: the `--broker` list, then every server the
//! broker announced in `INFO connect_urls` (at most [`MAX_SERVERS`]). After
//! a failure the wait doubles from [`RECONNECT_MIN`] to
//! `--broker-reconnect-max`, each wait drawn between half and all of it, so
//! hubs that lost the same broker do not come back in step; a link that
//! reached flowing starts over at the shortest wait.
//!
//! What it must not do: block, let the room wait for the broker, hold more
//! than `--broker-backlog` bytes for it, or hand the hub its own messages.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::member::Member;
use super::outbox::{Dest, Outbox};
use super::remote::RemoteHubs;
use crate::cmd::rand::XorShift;
use crate::conn::CloseReason;
use crate::framing::PrefixLen;
use crate::nats::{self, Parser, ServerInfo, ServerUrl, DEFAULT_MAX_PAYLOAD};
use crate::reactor::{ConnId, Ctx, Queued};
use crate::safe_text::visible_line;

/// Timer bit: the broker link's own deadlines. Below it, the kind (bits
/// 32..40) and a generation or request number (the low 32 bits).
pub(super) const TIMER_BROKER: u64 = 1 << 41;
/// Timer kind: try the next server.
pub(super) const KIND_RECONNECT: u64 = 0;
/// Timer kind: an attempt that has not reached flowing by now has failed.
pub(super) const KIND_HANDSHAKE: u64 = 1;
/// Timer kind: PING, or give up on a link that did not answer the last one.
pub(super) const KIND_PING: u64 = 2;
/// Timer kind: hand what was published this turn to the connection.
pub(super) const KIND_PUMP: u64 = 3;
/// Timer kind: a `/who` request's deadline (the low bits are its number).
pub(super) const KIND_WHO: u64 = 4;

/// A timer id for the link.
pub(super) fn timer_id(kind: u64, n: u32) -> u64 {
    TIMER_BROKER | (kind << 32) | u64::from(n)
}

/// A link timer id taken apart: (kind, number).
pub(super) fn timer_parts(id: u64) -> (u64, u32) {
    ((id & !TIMER_BROKER) >> 32, id as u32)
}

/// Subscription: the room's messages.
pub(super) const SID_ROOM: u64 = 1;
/// Subscription: `/who` requests from other hubs.
pub(super) const SID_WHO: u64 = 2;
/// Subscription: answers to this hub's `/who` requests.
pub(super) const SID_WHO_REPLY: u64 = 3;

/// The shortest wait before trying again.
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// How long an attempt may take from the TCP connect to the broker's PONG.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most servers known at once (the `--broker` list plus those learned).
pub(super) const MAX_SERVERS: usize = 32;
/// Most bytes handed to the connection ahead of the kernel; the rest waits
/// in the outbox, so a broken link loses at most this much.
pub(super) const WATERMARK: usize = 256 * 1024;
/// The smallest limit on a message from the broker (see `Link::inbound_max`).
const INBOUND_MAX: usize = 8 * 1024 * 1024;
/// Bytes of the connection's output bound kept free of any one command
/// (for its control line, and a PING or PONG beside it).
const CONN_LIMIT_ROOM: usize = 1024;

/// Where the link is (see the module docs for the diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkState {
    /// Between attempts.
    Waiting,
    /// The TCP connect is under way.
    Connecting,
    /// Connected; waiting for the server's INFO.
    Greeting,
    /// CONNECT, SUBs and PING sent; waiting for the PONG that confirms them.
    Subscribing,
    /// Messages cross.
    Flowing,
    /// The hub is stopping.
    Stopped,
}

impl LinkState {
    /// Lower-case name, for logs and the SIGUSR1 table.
    pub(super) fn name(self) -> &'static str {
        match self {
            LinkState::Waiting => "waiting to reconnect",
            LinkState::Connecting => "connecting",
            LinkState::Greeting => "greeting",
            LinkState::Subscribing => "subscribing",
            LinkState::Flowing => "flowing",
            LinkState::Stopped => "stopped",
        }
    }
}

/// What the command line says about the broker.
#[derive(Debug, Clone)]
pub(super) struct LinkConfig {
    /// The servers to try first, resolved.
    pub servers: Vec<SocketAddr>,
    /// User and password, if the broker wants them.
    pub user: Option<(String, String)>,
    /// A token, if the broker wants one.
    pub token: Option<String>,
    /// This hub's id (a subject token).
    pub hub_id: String,
    /// The room (a subject token).
    pub room: String,
    /// `--broker-backlog`.
    pub backlog: usize,
    /// `--broker-ping`.
    pub ping_every: Duration,
    /// `--broker-reconnect-max`.
    pub reconnect_max: Duration,
}

/// The link's own counters (the outbox and the receiving side keep theirs).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LinkStats {
    /// Bytes that had been handed to the connection and were not sent when it broke.
    pub unsent_at_loss: u64,
    /// Times the link reached flowing.
    pub connects: u64,
    /// Times a flowing link was lost.
    pub losses: u64,
    /// Attempts that did not reach flowing.
    pub failed_attempts: u64,
}

/// A `/who` waiting for other hubs' answers.
#[derive(Debug)]
pub(super) struct WhoRequest {
    /// Its number (the last subject token of the inbox the answers go to).
    pub n: u32,
    /// Who asked, and from where (a key may be reused once it leaves).
    pub asker: ConnId,
    /// The asker's address, to tell it from a later client on the same key.
    pub peer: SocketAddr,
    /// The answer so far: `name (door)` for each member, grouped by hub.
    pub text: String,
    /// Members counted so far.
    pub count: usize,
    /// Members left out for want of room.
    pub more: usize,
}

/// The link to the broker.
#[derive(Debug)]
pub(super) struct Link {
    servers: Vec<SocketAddr>,
    /// Index of the server tried last (or connected to).
    current: usize,
    user: Option<(String, String)>,
    token: Option<String>,
    /// This hub's id, in every message it publishes.
    pub(super) hub_id: Box<str>,
    room: Box<str>,
    ping_every: Duration,
    reconnect_max: Duration,
    state: LinkState,
    /// Since when it is in `state`.
    since: Instant,
    /// The connection of the current attempt, if one is open.
    conn: Option<ConnId>,
    /// Counts attempts; a timer of an older one is stale.
    generation: u32,
    /// Attempts failed since the link last reached flowing.
    failures: u32,
    /// PINGs sent and not yet answered.
    pings_out: u32,
    /// The current server's `max_payload`.
    max_payload: usize,
    /// The current server's name.
    server_name: String,
    /// The output bound of the link's connection (`--max-backlog`).
    conn_limit: usize,
    /// Decodes what the server sends. Taken out while it is fed, so the
    /// hub may use the link for what it decodes.
    pub(super) parser: Option<Parser>,
    /// What waits for the broker.
    outbox: Outbox,
    /// A pump is due at the end of this turn.
    pump_armed: bool,
    rng: XorShift,
    /// What other hubs sent: their numbering, what went missing.
    pub(super) remote: RemoteHubs,
    /// `/who` requests waiting for answers, oldest first.
    pub(super) who: VecDeque<WhoRequest>,
    /// The next `/who` request's number.
    pub(super) who_next: u32,
    /// Counters.
    pub(super) stats: LinkStats,
}

impl Link {
    /// A link that has not tried anything yet.
    pub(super) fn new(config: LinkConfig) -> Link {
        let mut rng = XorShift::seeded();
        let run = rng.next();
        Link {
            current: 0,
            user: config.user,
            token: config.token,
            outbox: Outbox::new(&config.hub_id, run, &config.room, config.backlog),
            hub_id: config.hub_id.into(),
            room: config.room.into(),
            servers: config.servers,
            ping_every: config.ping_every,
            reconnect_max: config.reconnect_max.max(RECONNECT_MIN),
            state: LinkState::Waiting,
            since: Instant::now(),
            conn: None,
            generation: 0,
            failures: 0,
            pings_out: 0,
            max_payload: DEFAULT_MAX_PAYLOAD,
            server_name: String::new(),
            conn_limit: usize::MAX,
            parser: None,
            pump_armed: false,
            rng,
            remote: RemoteHubs::default(),
            who: VecDeque::new(),
            who_next: 0,
            stats: LinkStats::default(),
        }
    }

    /// A random hub id: 12 hex digits.
    pub(super) fn random_id() -> String {
        format!("{:012x}", XorShift::seeded().next() >> 16)
    }

    /// Makes the first attempt.
    pub(super) fn start(&mut self, cx: &mut Ctx<Member>) {
        self.conn_limit = cx.config().out_limit;
        log::info!(
            "broker: hub {} joins room '{}' (subject {}); {} server(s) to try",
            self.hub_id,
            self.room,
            self.outbox.subject,
            self.servers.len()
        );
        self.attempt(cx);
    }

    /// True when `conn` is the link's connection.
    pub(super) fn owns(&self, conn: ConnId) -> bool {
        self.conn == Some(conn)
    }

    /// Where the link is.
    pub(super) fn state(&self) -> LinkState {
        self.state
    }

    /// The largest command payload this link sends: the broker's
    /// `max_payload` (the default until an INFO said otherwise), and small
    /// enough that one command always fits under the connection's output
    /// bound (`--max-backlog`).
    pub(super) fn max_payload(&self) -> usize {
        self.max_payload
            .min(self.conn_limit.saturating_sub(CONN_LIMIT_ROOM))
    }

    /// The largest payload accepted from the server: the servers of a
    /// cluster may not all have the same `max_payload`, and a message another
    /// hub published through one with a larger limit is no protocol error. An
    /// incomplete message holds only what arrived of it.
    pub(super) fn inbound_max(&self) -> usize {
        self.max_payload.max(INBOUND_MAX)
    }

    fn server(&self) -> SocketAddr {
        self.servers[self.current]
    }

    fn set_state(&mut self, state: LinkState) {
        self.state = state;
        self.since = Instant::now();
    }

    /// Opens a connection to the current server (never blocks).
    fn attempt(&mut self, cx: &mut Ctx<Member>) {
        self.generation = self.generation.wrapping_add(1);
        self.pings_out = 0;
        let server = self.server();
        let member = Member {
            link: true,
            ..Member::default()
        };
        match cx.connect(server, member) {
            Ok(id) => {
                self.conn = Some(id);
                self.parser = Some(Parser::new(self.inbound_max()));
                self.set_state(LinkState::Connecting);
                cx.set_timer_in(HANDSHAKE_TIMEOUT, timer_id(KIND_HANDSHAKE, self.generation));
                log::debug!("broker: connecting to nats://{server} ({id})");
            }
            Err(e) => {
                self.attempt_failed(&format!("cannot connect: {e}"));
                self.retry_later(cx);
            }
        }
    }

    /// The TCP handshake is done: the server speaks first.
    pub(super) fn on_connected(&mut self) {
        self.set_state(LinkState::Greeting);
    }

    /// The server's INFO: the first one starts the handshake; a later one
    /// (protocol 1) updates the cluster's servers and the limits.
    pub(super) fn on_info(&mut self, cx: &mut Ctx<Member>, json: &str) {
        let info = match ServerInfo::parse(json) {
            Ok(info) => info,
            Err(why) => {
                self.drop_link(cx, CloseReason::Protocol(why));
                return;
            }
        };
        self.max_payload = info.max_payload.max(1);
        self.learn(&info.connect_urls);
        if info.lame_duck {
            log::warn!(
                "broker: {} is shutting down (lame duck mode); this hub moves on when it closes",
                visible_line(&info.server_name)
            );
        }
        if self.state != LinkState::Greeting {
            return;
        }
        self.server_name = info.server_name.clone();
        if info.tls_required {
            self.drop_link(
                cx,
                CloseReason::Local("the broker requires TLS, which the broker link does not speak"),
            );
            return;
        }
        if !info.headers {
            self.drop_link(
                cx,
                CloseReason::Local(
                    "the broker has no message headers (nats-server 2.2 or later needed)",
                ),
            );
            return;
        }
        if info.auth_required && self.user.is_none() && self.token.is_none() {
            log::warn!(
                "broker: the server wants credentials and none were given (--broker URL or flags)"
            );
        }
        let Some(conn) = self.conn else {
            return;
        };
        let mut hello = Vec::with_capacity(512);
        let name = format!("sockloop hub {} room {}", self.hub_id, self.room);
        nats::connect(
            &mut hello,
            &nats::Connect {
                name: &name,
                user: self.user.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
                token: self.token.as_deref(),
                echo: false,
            },
        );
        nats::sub(&mut hello, &self.outbox.subject, SID_ROOM);
        nats::sub(&mut hello, &self.outbox.who_subject, SID_WHO);
        nats::sub(
            &mut hello,
            &format!("{}.*", self.outbox.inbox),
            SID_WHO_REPLY,
        );
        hello.extend_from_slice(nats::PING);
        cx.send(conn, &hello);
        self.set_state(LinkState::Subscribing);
    }

    /// Adds the servers an INFO announced (bare `HOST:PORT` IP addresses;
    /// names are not looked up inside the loop).
    fn learn(&mut self, urls: &[String]) {
        for url in urls {
            let Some(addr) = ServerUrl::parse(url).ok().and_then(|u| u.ip()) else {
                log::debug!("broker: announced server {url:?} skipped (not an IP address)");
                continue;
            };
            if self.servers.contains(&addr) {
                continue;
            }
            if self.servers.len() >= MAX_SERVERS {
                log::debug!("broker: {MAX_SERVERS} servers known; nats://{addr} not added");
                continue;
            }
            self.servers.push(addr);
            log::info!(
                "broker: learned of server nats://{addr} ({} known)",
                self.servers.len()
            );
        }
    }

    /// The server answered a PING: the first answer confirms CONNECT and
    /// the subscriptions, and the room flows.
    pub(super) fn on_pong(&mut self, cx: &mut Ctx<Member>) {
        self.pings_out = self.pings_out.saturating_sub(1);
        if self.state != LinkState::Subscribing {
            return;
        }
        self.set_state(LinkState::Flowing);
        self.failures = 0;
        self.stats.connects += 1;
        log::info!(
            "broker: flowing: hub {} in room '{}' through nats://{} ({}, max_payload {} B); \
             {} B waiting to go",
            self.hub_id,
            self.room,
            self.server(),
            visible_line(&self.server_name),
            self.max_payload,
            self.outbox.len()
        );
        cx.set_timer_in(self.ping_every, timer_id(KIND_PING, self.generation));
        self.pump(cx);
    }

    /// The server sent PING.
    pub(super) fn on_ping(&mut self, cx: &mut Ctx<Member>) {
        if let Some(conn) = self.conn {
            cx.send(conn, nats::PONG);
        }
    }

    /// The server sent `-ERR`. It closes the connection after the fatal
    /// ones; during the handshake any error means the attempt failed.
    pub(super) fn on_err(&mut self, cx: &mut Ctx<Member>, text: &str) {
        log::warn!(
            "broker: nats://{} says: -ERR {}",
            self.server(),
            visible_line(text)
        );
        if matches!(self.state, LinkState::Greeting | LinkState::Subscribing) {
            self.drop_link(cx, CloseReason::Local("refused by the broker"));
        }
    }

    /// The server broke the protocol: drop the link (it reconnects).
    pub(super) fn protocol_error(&mut self, cx: &mut Ctx<Member>, error: nats::ProtoError) {
        self.drop_link(cx, CloseReason::Protocol(error.to_string()));
    }

    /// Closes the current connection; `on_closed` follows at the end of the turn.
    fn drop_link(&mut self, cx: &mut Ctx<Member>, reason: CloseReason) {
        if let Some(conn) = self.conn {
            cx.close(conn, reason);
        }
    }

    /// The link's connection is gone: count what was lost, and try again.
    pub(super) fn on_closed(&mut self, cx: &mut Ctx<Member>, conn: ConnId, reason: &CloseReason) {
        let unsent = cx.conn(conn).map_or(0, |c| c.out_len());
        self.conn = None;
        self.parser = None;
        let was = self.state;
        if was == LinkState::Stopped {
            return;
        }
        if was == LinkState::Flowing {
            self.stats.losses += 1;
            self.stats.unsent_at_loss += unsent as u64;
            log::warn!(
                "broker: link to nats://{} lost after {:.1} s ({reason}); {unsent} B handed to it \
                 were not sent; the local room goes on, reconnecting",
                self.server(),
                self.since.elapsed().as_secs_f64()
            );
        } else {
            self.attempt_failed(&format!("{} ({reason})", was.name()));
        }
        self.retry_later(cx);
    }

    /// Counts a failed attempt and logs it: the first of a series, then at
    /// powers of two, so an absent broker cannot flood the log.
    fn attempt_failed(&mut self, why: &str) {
        self.stats.failed_attempts += 1;
        self.failures += 1;
        if self.failures.is_power_of_two() {
            log::warn!(
                "broker: nats://{} not reached: {why}; {} failed attempt(s) in a row; \
                 the local room goes on",
                self.server(),
                self.failures
            );
        }
    }

    /// Waits (capped exponential backoff with jitter), then tries the next server.
    fn retry_later(&mut self, cx: &mut Ctx<Member>) {
        self.current = (self.current + 1) % self.servers.len();
        let delay = self.backoff();
        self.set_state(LinkState::Waiting);
        self.generation = self.generation.wrapping_add(1);
        cx.set_timer_in(delay, timer_id(KIND_RECONNECT, self.generation));
        log::debug!(
            "broker: next attempt in {delay:?}, to nats://{}",
            self.server()
        );
    }

    /// The wait before the next attempt: `RECONNECT_MIN` doubled for each
    /// failure in a row, at most `--broker-reconnect-max`, then drawn
    /// between half of it and all of it.
    fn backoff(&mut self) -> Duration {
        let rule = crate::backoff::Jittered {
            base: RECONNECT_MIN,
            cap: self.reconnect_max,
        };
        rule.delay(self.failures, self.rng.next())
    }

    /// One of the link's deadlines.
    pub(super) fn on_timer(&mut self, cx: &mut Ctx<Member>, kind: u64, n: u32) {
        match kind {
            KIND_PUMP => {
                self.pump_armed = false;
                self.pump(cx);
            }
            KIND_RECONNECT if n == self.generation && self.state == LinkState::Waiting => {
                self.attempt(cx);
            }
            KIND_HANDSHAKE if n == self.generation => {
                if matches!(
                    self.state,
                    LinkState::Connecting | LinkState::Greeting | LinkState::Subscribing
                ) {
                    self.drop_link(
                        cx,
                        CloseReason::Local("the broker did not complete the handshake in time"),
                    );
                }
            }
            KIND_PING if n == self.generation && self.state == LinkState::Flowing => {
                if self.pings_out > 0 {
                    log::warn!(
                        "broker: nats://{} did not answer a PING within {:?}: the link is dead",
                        self.server(),
                        self.ping_every
                    );
                    self.drop_link(cx, CloseReason::Local("no PONG from the broker"));
                    return;
                }
                if let Some(conn) = self.conn {
                    cx.send(conn, nats::PING);
                    self.pings_out += 1;
                }
                cx.set_timer_in(self.ping_every, timer_id(KIND_PING, self.generation));
            }
            _ => {}
        }
    }

    // ----- Publishing ---------------------------------------------------------------

    /// Publishes whole frames (as a framed client sent them, `prefix` wide) to the room.
    pub(super) fn publish_frames(
        &mut self,
        cx: &mut Ctx<Member>,
        frames: &[u8],
        prefix: PrefixLen,
    ) {
        if self
            .outbox
            .publish_frames(frames, prefix, self.max_payload())
        {
            self.arm_pump(cx);
        }
    }

    /// Publishes one message text to the room.
    pub(super) fn publish_text(&mut self, cx: &mut Ctx<Member>, text: &str, prefix: PrefixLen) {
        if self.outbox.publish_text(text, prefix, self.max_payload()) {
            self.arm_pump(cx);
        }
    }

    /// Queues a `/who` request or answer; false when the backlog had no room.
    pub(super) fn send_who(
        &mut self,
        cx: &mut Ctx<Member>,
        dest: Dest<'_>,
        payload: &[u8],
    ) -> bool {
        let queued = self.outbox.enqueue(dest, payload, 0);
        if queued {
            self.arm_pump(cx);
        }
        queued
    }

    /// Everything published this turn goes out in one write, at its end.
    fn arm_pump(&mut self, cx: &mut Ctx<Member>) {
        if !self.pump_armed && self.state == LinkState::Flowing {
            self.pump_armed = true;
            cx.set_timer_in(Duration::ZERO, timer_id(KIND_PUMP, 0));
        }
    }

    /// Hands waiting commands to the connection while it is flowing and
    /// holds less than [`WATERMARK`]; the rest waits for the next drain.
    pub(super) fn pump(&mut self, cx: &mut Ctx<Member>) {
        if self.state != LinkState::Flowing {
            return;
        }
        let Some(conn) = self.conn else {
            return;
        };
        let queued = cx.conn(conn).map_or(usize::MAX, |c| c.out_len());
        let room = WATERMARK.saturating_sub(queued);
        let max_payload = self.max_payload();
        // Refused (the connection's output bound): it stays, for the next drain.
        self.outbox.take(room, max_payload, |bytes| {
            cx.send(conn, bytes) == Queued::Yes
        });
    }

    /// The hub is stopping: what waits goes out (within the close grace),
    /// then the link closes; it never reconnects.
    pub(super) fn stop(&mut self, cx: &mut Ctx<Member>) {
        let was = self.state;
        self.set_state(LinkState::Stopped);
        let Some(conn) = self.conn else {
            return;
        };
        if was == LinkState::Flowing {
            let max_payload = self.max_payload();
            self.outbox.take(usize::MAX, max_payload, |bytes| {
                cx.send(conn, bytes) == Queued::Yes
            });
            cx.close_after_flush(conn);
        } else {
            cx.close(conn, CloseReason::Shutdown);
        }
        log::info!(
            "broker: leaving room '{}' ({} message(s) published, {} received, {} dropped)",
            self.room,
            self.outbox.stats.published,
            self.remote.received,
            self.outbox.stats.dropped_backlog + self.outbox.stats.dropped_too_big
        );
    }

    /// The SIGUSR1 lines about the link.
    pub(super) fn describe(&self, out: &mut String) {
        let (link, sent, got) = (&self.stats, &self.outbox.stats, &self.remote);
        let server = match self.state {
            LinkState::Waiting => format!(" (next: nats://{})", self.server()),
            LinkState::Stopped => String::new(),
            _ => format!(" to nats://{}", self.server()),
        };
        let _ = writeln!(
            out,
            "broker: {}{server} for {:.1} s; hub {}, room '{}'; queued {} B of {} B \
             (--broker-backlog){}",
            self.state.name(),
            self.since.elapsed().as_secs_f64(),
            self.hub_id,
            self.room,
            self.outbox.len(),
            self.outbox.limit(),
            match self.conn {
                Some(conn) => format!(", and {conn}'s output above"),
                None => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "  published {} message(s) ({} B), received {}; dropped {} (backlog full) + {} \
             (over max_payload); unsent at link loss {} B",
            sent.published,
            sent.published_bytes,
            got.received,
            sent.dropped_backlog,
            sent.dropped_too_big,
            link.unsent_at_loss,
        );
        let _ = writeln!(
            out,
            "  from other hubs: lost {} (of which {} came too late to keep their order), \
             undecodable {}; {} hub(s) heard",
            got.lost,
            got.late,
            got.undecodable,
            got.len()
        );
        let _ = writeln!(
            out,
            "  links made {}, lost {}, failed attempts {}; {} server(s) known",
            link.connects,
            link.losses,
            link.failed_attempts,
            self.servers.len(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_ids_come_apart() {
        let id = timer_id(KIND_WHO, 77);
        assert!(id & TIMER_BROKER != 0);
        assert_eq!(id & (1 << 40), 0, "never taken for a rate-limit release");
        assert_eq!(timer_parts(id), (KIND_WHO, 77));
        assert_eq!(
            timer_parts(timer_id(KIND_RECONNECT, u32::MAX)),
            (KIND_RECONNECT, u32::MAX)
        );
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter() {
        let mut link = Link::new(LinkConfig {
            servers: vec!["127.0.0.1:4222".parse().unwrap()],
            user: None,
            token: None,
            hub_id: "h".into(),
            room: "lobby".into(),
            backlog: 1024,
            ping_every: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(2),
        });
        for failures in 1..30 {
            link.failures = failures;
            let full = RECONNECT_MIN
                .saturating_mul(1 << (failures - 1).min(20))
                .min(Duration::from_secs(2));
            let wait = link.backoff();
            assert!(
                wait >= full / 2 && wait <= full,
                "{failures}: {wait:?} of {full:?}"
            );
        }
    }
}
