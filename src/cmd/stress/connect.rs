//! Opening thousands of client connections from one thread, and saying which
//! limit stopped the ones that could not be opened.
//!
//! The [`Connector`] opens connection number 0, 1, 2, ... as non-blocking
//! sockets handed to the reactor (`Ctx::adopt`), at most `concurrency`
//! handshakes at a time and, with `--connect-rate`, no faster than asked.
//! When the target is IPv4 loopback it binds each socket to a source address
//! of its own in 127.0.0.0/8 first (`net::connect_nonblocking`, with
//! `IP_BIND_ADDRESS_NO_PORT`, so the bind takes no port), which lifts the ~28k ephemeral-port ceiling of one
//! source address.
//!
//! It must not block, retry, or treat a failure as fatal: a connection that
//! cannot be opened is counted by cause ([`Cause`]), the limit behind the
//! cause is explained once, from the system's values at that moment, and the
//! run goes on with the connections that did open.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::report::{Latency, Tally};
use crate::conn::CloseReason;
use crate::error::plain;
use crate::net;
use crate::reactor::{ConnId, Ctx};
use crate::sys;

/// Timer: the next connection may be opened (`--connect-rate`).
pub const TIMER_PACE: u64 = 2;
/// Timer: look for handshakes older than the connect timeout.
pub const TIMER_SWEEP: u64 = 3;

/// How often handshakes are checked against the connect timeout.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// First source address when spreading: 127.0.0.2 (127.0.0.1 stays the plain default).
const FIRST_SOURCE: u32 = 0x7f00_0002;

/// No connection number for this slab key.
const NONE: u32 = u32::MAX;

/// Why a connection could not be opened. The names are the JSON keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// ECONNREFUSED: nothing listening, or a listen backlog overflow with
    /// `tcp_abort_on_overflow`.
    Refused = 0,
    /// No answer within `--connect-timeout` (or ETIMEDOUT): SYNs dropped.
    TimedOut,
    /// ECONNRESET during the handshake.
    Reset,
    /// EADDRNOTAVAIL: no ephemeral port left for this source address.
    NoPorts,
    /// EMFILE: this process's open-file limit.
    NoFiles,
    /// ENFILE: the system's open-file table.
    NoSystemFiles,
    /// ENETUNREACH / EHOSTUNREACH.
    Unreachable,
    /// Anything else (the first one is quoted in the report).
    Other,
}

/// The JSON and report names of the causes, in [`Cause`] order.
pub const CAUSE_NAMES: &[&str] = &[
    "refused",
    "timed_out",
    "reset",
    "no_ports",
    "no_files",
    "no_system_files",
    "unreachable",
    "other",
];

impl Cause {
    /// The cause behind an error of `socket`, `bind`, `connect` or the handshake.
    pub fn of(error: &io::Error) -> Cause {
        match error.raw_os_error() {
            Some(libc::ECONNREFUSED) => Cause::Refused,
            Some(libc::ETIMEDOUT) => Cause::TimedOut,
            Some(libc::ECONNRESET) | Some(libc::ECONNABORTED) | Some(libc::EPIPE) => Cause::Reset,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => Cause::NoPorts,
            Some(libc::EMFILE) => Cause::NoFiles,
            Some(libc::ENFILE) => Cause::NoSystemFiles,
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => Cause::Unreachable,
            _ if error.kind() == io::ErrorKind::TimedOut => Cause::TimedOut,
            _ => Cause::Other,
        }
    }
}

/// How the connections of a run are to be opened.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub target: SocketAddr,
    /// More servers of the same service (the hubs of one chat room):
    /// connection `i` goes to `target` when `i % (1 + also.len())` is 0,
    /// else to `also[i % (1 + also.len()) - 1]`.
    pub also: Vec<SocketAddr>,
    /// Connections to open.
    pub n: u32,
    /// Most connections opened per second; `None`: as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Most handshakes under way at once.
    pub concurrency: u32,
    /// A handshake not finished after this long counts as timed out.
    pub timeout: Duration,
    /// `Some(k)`: bind connection `i` to 127.0.0.(2 + i / k) first.
    pub per_source: Option<u32>,
}

impl Plan {
    /// The server connection `index` goes to (round-robin over `target` and `also`).
    pub fn target_of(&self, index: u32) -> SocketAddr {
        match index as usize % (1 + self.also.len()) {
            0 => self.target,
            k => self.also[k - 1],
        }
    }

    /// The source address connection `index` binds to, if spreading.
    pub fn source_for(&self, index: u32) -> Option<SocketAddr> {
        let per_source = self.per_source?;
        let ip = Ipv4Addr::from(FIRST_SOURCE + index / per_source.max(1));
        Some(SocketAddr::new(IpAddr::V4(ip), 0))
    }

    /// How many source addresses `n` connections use (1 when not spreading).
    pub fn n_sources(&self) -> u32 {
        match self.per_source {
            Some(k) => self.n.div_ceil(k.max(1)).max(1),
            None => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Not attempted yet.
    Waiting,
    /// Handshake under way.
    Connecting,
    /// Connected and not closed since.
    Up,
    /// Could not be opened.
    Failed,
    /// Was up, then closed.
    Closed,
}

/// One planned connection: 24 bytes, whatever the run's size.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Its slab key while it is in the reactor's table.
    key: u32,
    state: SlotState,
    /// When its `connect()` was issued.
    started: Instant,
}

/// What a closed connection was, for the mode that saw it close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its handshake failed (already counted under `cause`).
    ConnectFailed {
        /// The connection number.
        index: u32,
        /// Why.
        cause: Cause,
    },
    /// It was up and now it is closed.
    Lost {
        /// The connection number.
        index: u32,
    },
    /// Not a connection this connector opened.
    NotOurs,
}

/// Opens the connections of a [`Plan`] through the reactor and keeps their
/// numbers, connect times and failures.
pub struct Connector {
    plan: Plan,
    slots: Vec<Slot>,
    /// Slab key → connection number ([`NONE`] for keys that are not ours).
    by_key: Vec<u32>,
    /// The next connection number to attempt.
    next: u32,
    in_flight: u32,
    up: u32,
    ever_up: bool,
    /// Failures by [`Cause`].
    failures: Tally,
    first_error: Option<String>,
    /// Causes whose limit has been explained already (bit per cause).
    told: u32,
    /// The explanation of every limit hit, in the order they were hit.
    limits: Vec<String>,
    /// Handshakes under way with their deadlines, oldest first.
    deadlines: VecDeque<(u32, Instant)>,
    /// Time from `connect()` to the finished handshake, of every connection that opened.
    latency: Latency,
    began: Option<Instant>,
    ended: Option<Instant>,
    pace_armed: bool,
    sweep_armed: bool,
}

impl Connector {
    /// A connector for `plan`; nothing is opened before [`Connector::fill`].
    pub fn new(plan: Plan) -> Connector {
        let now = Instant::now();
        Connector {
            slots: vec![
                Slot {
                    key: NONE,
                    state: SlotState::Waiting,
                    started: now,
                };
                plan.n as usize
            ],
            by_key: Vec::new(),
            next: 0,
            in_flight: 0,
            up: 0,
            ever_up: false,
            failures: Tally::new(CAUSE_NAMES),
            first_error: None,
            told: 0,
            limits: Vec::new(),
            deadlines: VecDeque::new(),
            latency: Latency::new(),
            began: None,
            ended: None,
            pace_armed: false,
            sweep_armed: false,
            plan,
        }
    }

    /// The plan being carried out.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Opens as many connections as the concurrency and the rate allow now;
    /// arms a timer for the rest. Call it again after every connect or failure.
    pub fn fill<S: Default>(&mut self, cx: &mut Ctx<S>) {
        let now = Instant::now();
        let began = *self.began.get_or_insert(now);
        while self.next < self.plan.n && self.in_flight < self.plan.concurrency {
            if let Some(rate) = self.plan.rate {
                let allowed = (now.duration_since(began).as_secs_f64() * rate) as u64 + 1;
                if u64::from(self.next) >= allowed {
                    if !self.pace_armed {
                        self.pace_armed = true;
                        let at = began + Duration::from_secs_f64(f64::from(self.next) / rate);
                        cx.set_timer(at, TIMER_PACE);
                    }
                    break;
                }
            }
            let index = self.next;
            self.next += 1;
            self.open(cx, index);
        }
        self.check_done();
    }

    /// Handles the connector's own timers; false for any other timer.
    pub fn on_timer<S: Default>(&mut self, cx: &mut Ctx<S>, timer: u64) -> bool {
        match timer {
            TIMER_PACE => {
                self.pace_armed = false;
                self.fill(cx);
            }
            TIMER_SWEEP => {
                self.sweep_armed = false;
                self.sweep(cx);
            }
            _ => return false,
        }
        true
    }

    /// A handshake finished: returns the connection's number, or `None` if it is not ours.
    pub fn on_connected(&mut self, id: ConnId) -> Option<u32> {
        let index = self.index_of(id)?;
        let slot = &mut self.slots[index as usize];
        if slot.state != SlotState::Connecting {
            return None;
        }
        slot.state = SlotState::Up;
        self.latency
            .record(slot.started.elapsed().as_nanos() as u64);
        self.in_flight -= 1;
        self.up += 1;
        self.ever_up = true;
        Some(index)
    }

    /// A connection is being removed: a failed handshake (counted here) or a lost connection.
    pub fn on_closed(&mut self, id: ConnId, reason: &CloseReason) -> Ended {
        let Some(index) = self.index_of(id) else {
            return Ended::NotOurs;
        };
        self.by_key[id.0] = NONE;
        let slot = &mut self.slots[index as usize];
        match slot.state {
            SlotState::Connecting => {
                slot.state = SlotState::Failed;
                self.in_flight -= 1;
                let cause = match reason {
                    CloseReason::ConnectFailed(e) | CloseReason::Io(e) => {
                        self.note_failure(index, e);
                        Cause::of(e)
                    }
                    other => {
                        let e = io::Error::other(other.to_string());
                        self.note_failure(index, &e);
                        Cause::Other
                    }
                };
                self.check_done();
                Ended::ConnectFailed { index, cause }
            }
            SlotState::Up => {
                slot.state = SlotState::Closed;
                self.up -= 1;
                Ended::Lost { index }
            }
            _ => Ended::NotOurs,
        }
    }

    /// The connection number of a slab key, if the connection is ours.
    pub fn index_of(&self, id: ConnId) -> Option<u32> {
        match self.by_key.get(id.0) {
            Some(&index) if index != NONE => Some(index),
            _ => None,
        }
    }

    /// The reactor id of connection `index` while it is up.
    pub fn conn_of(&self, index: u32) -> Option<ConnId> {
        let slot = self.slots.get(index as usize)?;
        (slot.state == SlotState::Up).then_some(ConnId(slot.key as usize))
    }

    /// Every connection attempted and none still under way.
    pub fn done(&self) -> bool {
        self.ended.is_some()
    }

    /// Connections up now.
    pub fn up(&self) -> u32 {
        self.up
    }

    /// Connections whose handshake ever finished.
    pub fn connected(&self) -> u64 {
        self.latency.count()
    }

    /// Handshakes under way.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Failures by cause.
    pub fn failures(&self) -> &Tally {
        &self.failures
    }

    /// The first failure's text, as the system put it.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// The explanations of the limits hit, in order.
    pub fn limits(&self) -> &[String] {
        &self.limits
    }

    /// Connect times of the connections that opened.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// From the first `connect()` to the last handshake's end (so far, while under way).
    pub fn elapsed(&self) -> Duration {
        match (self.began, self.ended) {
            (Some(began), Some(ended)) => ended - began,
            (Some(began), None) => began.elapsed(),
            _ => Duration::ZERO,
        }
    }

    // ----- private -----------------------------------------------------------

    fn open<S: Default>(&mut self, cx: &mut Ctx<S>, index: u32) {
        let started = Instant::now();
        let target = self.plan.target_of(index);
        let opened = net::connect_nonblocking(target, self.plan.source_for(index))
            .and_then(|stream| cx.adopt(stream, target, S::default(), true));
        match opened {
            Ok(id) => {
                if self.by_key.len() <= id.0 {
                    self.by_key.resize(id.0 + 1, NONE);
                }
                self.by_key[id.0] = index;
                self.slots[index as usize] = Slot {
                    key: id.0 as u32,
                    state: SlotState::Connecting,
                    started,
                };
                self.in_flight += 1;
                self.deadlines
                    .push_back((index, started + self.plan.timeout));
                if !self.sweep_armed {
                    self.sweep_armed = true;
                    cx.set_timer_in(SWEEP_EVERY, TIMER_SWEEP);
                }
            }
            Err(e) => {
                self.slots[index as usize].state = SlotState::Failed;
                self.note_failure(index, &e);
            }
        }
    }

    /// Closes handshakes older than the timeout (their `Closed` event counts them).
    fn sweep<S: Default>(&mut self, cx: &mut Ctx<S>) {
        let now = Instant::now();
        while let Some(&(index, deadline)) = self.deadlines.front() {
            let slot = self.slots[index as usize];
            if slot.state != SlotState::Connecting {
                self.deadlines.pop_front();
                continue;
            }
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let why = io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer within {:.1} s (--connect-timeout)",
                    self.plan.timeout.as_secs_f64()
                ),
            );
            cx.close(ConnId(slot.key as usize), CloseReason::ConnectFailed(why));
        }
        if !self.deadlines.is_empty() && !self.sweep_armed {
            self.sweep_armed = true;
            cx.set_timer_in(SWEEP_EVERY, TIMER_SWEEP);
        }
    }

    fn note_failure(&mut self, index: u32, error: &io::Error) {
        let cause = Cause::of(error);
        self.failures.add(cause as usize);
        if self.first_error.is_none() {
            let source = self
                .plan
                .source_for(index)
                .map(|s| format!(" from {}", s.ip()))
                .unwrap_or_default();
            self.first_error = Some(format!(
                "connection {index}{source} to {}: {}",
                self.plan.target,
                plain(error)
            ));
        }
        let bit = 1u32 << (cause as u32);
        if self.told & bit == 0 {
            self.told |= bit;
            let text = explain(cause, &self.plan, self.ever_up, error);
            log::warn!("connection {index}: {}; {text}", plain(error));
            self.limits.push(text);
        }
    }

    fn check_done(&mut self) {
        if self.ended.is_none() && self.next >= self.plan.n && self.in_flight == 0 {
            self.ended = Some(Instant::now());
        }
    }
}

/// Which limit a cause points to, with its current value read from the
/// system now, and the fix.
pub fn explain(cause: Cause, plan: &Plan, ever_up: bool, error: &io::Error) -> String {
    let sysctl = |path: &str| sys::proc_sys(path).unwrap_or_else(|| "unknown".to_string());
    match cause {
        Cause::NoPorts => {
            let range = sysctl("net/ipv4/ip_local_port_range");
            let ports = port_range_size(&range)
                .map(|n| format!(" ({n} ports per source address and server address)"))
                .unwrap_or_default();
            let fix = match plan.per_source {
                Some(k) => format!(
                    "connections are already spread over {} source addresses, {k} each: lower \
                     --per-source, or wait for ports in TIME_WAIT from earlier runs to expire \
                     (ss -tan state time-wait | wc -l)",
                    plan.n_sources()
                ),
                None if is_v4_loopback(plan.target) => {
                    "spread the connections over 127.0.0.x source addresses (--spread on)".into()
                }
                None => "widen the range (sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"), \
                     or connect from more source addresses"
                    .into(),
            };
            format!(
                "limit hit: ephemeral ports (EADDRNOTAVAIL): net.ipv4.ip_local_port_range is \
                 {range}{ports}; fix: {fix}"
            )
        }
        Cause::NoFiles => {
            let (soft, hard) = sys::nofile_limit().unwrap_or((0, 0));
            format!(
                "limit hit: open files of this process (EMFILE): soft limit {soft}, hard limit \
                 {hard}; fix: raise the hard limit (as root: ulimit -Hn N, or LimitNOFILE= / \
                 /etc/security/limits.conf) or ask for fewer --conns"
            )
        }
        Cause::NoSystemFiles => format!(
            "limit hit: open files of the whole system (ENFILE): fs.file-nr is {} of \
             fs.file-max {}; fix: sysctl -w fs.file-max=N, or end other programs' files",
            sysctl("fs/file-nr"),
            sysctl("fs/file-max")
        ),
        Cause::Refused if !ever_up => format!(
            "nothing accepts connections on {} (connection refused): is the server running \
             on that address and port?",
            plan.target
        ),
        Cause::Refused | Cause::TimedOut => format!(
            "limit hit: the server's listen backlog, most likely: net.core.somaxconn is {}, \
             net.ipv4.tcp_max_syn_backlog is {}, net.ipv4.tcp_abort_on_overflow is {} (a full \
             accept queue drops SYNs, which clients see as timeouts, or refuses them when \
             tcp_abort_on_overflow is 1); fix: let the server accept faster or listen with a \
             larger backlog (it gets at most somaxconn: sysctl -w net.core.somaxconn=N), or \
             pace the connects with --connect-rate",
            sysctl("net/core/somaxconn"),
            sysctl("net/ipv4/tcp_max_syn_backlog"),
            sysctl("net/ipv4/tcp_abort_on_overflow")
        ),
        Cause::Reset => "the server reset connections during the handshake: it may be turning \
             away clients over its own limit (--max-conns, or out of descriptors)"
            .to_string(),
        Cause::Unreachable => format!(
            "{} is unreachable from here: check the address",
            plan.target
        ),
        Cause::Other => format!("unexpected error: {}", plain(error)),
    }
}

/// `"32768 60999"` → 28,232.
pub fn port_range_size(range: &str) -> Option<u32> {
    let mut parts = range.split_whitespace().map(|p| p.parse::<u32>());
    let low = parts.next()?.ok()?;
    let high = parts.next()?.ok()?;
    (high >= low).then(|| high - low + 1)
}

/// True for 127.x.y.z targets (source spreading works only there).
pub fn is_v4_loopback(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u32, per_source: Option<u32>) -> Plan {
        Plan {
            target: "127.0.0.1:9".parse().unwrap(),
            also: Vec::new(),
            n,
            rate: None,
            concurrency: 10,
            timeout: Duration::from_secs(1),
            per_source,
        }
    }

    #[test]
    fn spreading_uses_a_new_source_address_every_per_source_connections() {
        let p = plan(10_000, Some(4000));
        assert_eq!(p.source_for(0).unwrap().to_string(), "127.0.0.2:0");
        assert_eq!(p.source_for(3999).unwrap().to_string(), "127.0.0.2:0");
        assert_eq!(p.source_for(4000).unwrap().to_string(), "127.0.0.3:0");
        assert_eq!(p.n_sources(), 3);
        assert_eq!(plan(10, None).source_for(0), None);
    }

    #[test]
    fn connections_go_round_robin_over_the_targets() {
        let mut p = plan(10, None);
        assert_eq!(p.target_of(7), p.target);
        p.also = vec!["127.0.0.1:10".parse().unwrap()];
        assert_eq!(p.target_of(0).port(), 9);
        assert_eq!(p.target_of(1).port(), 10);
        assert_eq!(p.target_of(2).port(), 9);
    }

    #[test]
    fn errors_are_sorted_by_the_limit_behind_them() {
        let of = |errno| Cause::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::ECONNREFUSED), Cause::Refused);
        assert_eq!(of(libc::EADDRNOTAVAIL), Cause::NoPorts);
        assert_eq!(of(libc::EMFILE), Cause::NoFiles);
        assert_eq!(of(libc::ENFILE), Cause::NoSystemFiles);
        assert_eq!(of(libc::ECONNRESET), Cause::Reset);
        assert_eq!(
            Cause::of(&io::Error::new(io::ErrorKind::TimedOut, "x")),
            Cause::TimedOut
        );
        assert_eq!(CAUSE_NAMES.len(), Cause::Other as usize + 1);
    }

    #[test]
    fn explanations_name_the_limit_and_the_fix() {
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let text = explain(Cause::NoPorts, &plan(30_000, None), true, &e);
        assert!(text.contains("ip_local_port_range"), "{text}");
        assert!(text.contains("--spread on"), "{text}");
        let text = explain(Cause::NoFiles, &plan(30_000, None), true, &e);
        assert!(text.contains("soft limit"), "{text}");
        let text = explain(Cause::TimedOut, &plan(30_000, None), true, &e);
        assert!(text.contains("somaxconn"), "{text}");
        let text = explain(Cause::Refused, &plan(1, None), false, &e);
        assert!(text.contains("nothing accepts"), "{text}");
        assert_eq!(port_range_size("32768 60999"), Some(28232));
    }
}
