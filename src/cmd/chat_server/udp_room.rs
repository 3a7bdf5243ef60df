//! The chat server's UDP peer set (`chat server --udp-port P`): the
//! `udp-chat` peers in the same room as the TCP clients.
//!
//! A UDP peer has no connection, so this file keeps what a connection would
//! have given the server for free, and what a connection's handshake would
//! have proven:
//!
//! * **Who is there**, bounded: at most `--udp-max-peers`, at most
//!   `--udp-max-peers-per-ip` from one IP address, at most
//!   [`NEW_PEERS_PER_SEC`] newcomers a second. A datagram from our own
//!   address is never a peer (a forged one would make the hub its own peer),
//!   and an empty datagram keeps a peer in but never lets one in. When the
//!   room is full, a newcomer takes the place of the peer that has waited
//!   longest without proving its address; a peer that has proven it is never
//!   pushed out, so a flood of forged datagrams cannot keep real peers out.
//! * **Whether its address is its own** ([`crate::routability`]): until a
//!   peer has echoed the token it was sent, it is sent at most three times the
//!   bytes it sent us; the challenge goes first. `--udp-trust-senders` lifts
//!   this where addresses cannot be forged (a lab LAN whose Python peers
//!   cannot answer).
//! * **Our own messages coming back**: the last [`RECENT_MAX`] messages sent
//!   to the peers are remembered by their timestamp and text (a hub that
//!   relays them re-stamps the name, never those), so a message that returns
//!   round a loop of hubs is recognised and goes no further.
//! * When each peer was last heard (one silent for `--udp-peer-timeout` is
//!   gone), a per-peer `--rate-limit` bucket, and an outbox for datagrams the
//!   kernel had no room for (at most [`OUTBOX_MAX`]; more are dropped and counted).
//!
//! Every datagram ignored or dropped is counted by cause ([`Dropped`]) and
//! logged at most once a second per cause. The message logic (names, joins,
//! leaves, relaying) is in `door_udp.rs`; this file keeps the peer set and sends.
//!
//! What it must not do: allocate or format per recipient. A datagram goes out
//! straight from the message text; only when the socket is full is the text
//! stored, once, in an `Rc` that every waiting copy shares.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::TIMER_LOG_SUMMARY;
use crate::chat_msg;
use crate::loglimit::{Note, RateLog};
use crate::ratelimit::{Bucket, RateLimit, Throttle};
use crate::reactor::Ctx;
use crate::routability::{self, Budget, Tokens};
use crate::udp::{self, unmapped, OwnAddress, Sent, MAX_DATAGRAM};

/// Most UDP peers in the room at once, unless `--udp-max-peers` says otherwise.
pub const DEFAULT_MAX_PEERS: u32 = 1024;

/// Most UDP peers from one IP address, unless `--udp-max-peers-per-ip` says otherwise.
pub const DEFAULT_MAX_PEERS_PER_IP: u32 = 16;

/// Datagrams that may wait for room in the socket's send buffer; more are dropped (and counted).
pub const OUTBOX_MAX: usize = 4096;

/// Newcomers let in per second (and at most this many at once): a flood of
/// forged senders cannot fill the room, or the room's ears with join notices,
/// faster than this.
pub const NEW_PEERS_PER_SEC: f64 = 64.0;

/// How often a peer that has not proven its address is sent a challenge.
pub const CHALLENGE_EVERY: Duration = Duration::from_secs(1);

/// Messages sent to the peers that are remembered, to recognise them coming back.
pub const RECENT_MAX: usize = 4096;

/// Why a datagram went nowhere (or a message did not go to a peer); each
/// is counted and logged at most once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Refused by `--allow`/`--deny`.
    Refused,
    /// From our own address.
    Ours,
    /// Empty, from an address that is not a peer.
    Empty,
    /// From a newcomer while the room was full of proven peers.
    Full,
    /// From a newcomer whose IP already has `--udp-max-peers-per-ip` peers.
    IpFull,
    /// From a newcomer over [`NEW_PEERS_PER_SEC`].
    TooFast,
    /// Over the sender's `--rate-limit`.
    OverRate,
    /// Over `--max-frame`.
    TooLong,
    /// A message of ours come back round a loop.
    Looped,
    /// Its sender's name was refused.
    NameRefused,
    /// Not sent: the outbox was full, or the message is longer than a datagram.
    Unsent,
    /// Not sent to a peer over its budget while it has not proven its address.
    Unproven,
}

impl Dropped {
    const ALL: [Dropped; 12] = [
        Dropped::Refused,
        Dropped::Ours,
        Dropped::Empty,
        Dropped::Full,
        Dropped::IpFull,
        Dropped::TooFast,
        Dropped::OverRate,
        Dropped::TooLong,
        Dropped::Looped,
        Dropped::NameRefused,
        Dropped::Unsent,
        Dropped::Unproven,
    ];

    /// The cause, for the line that sums a second up and the connection table.
    fn cause(self) -> &'static str {
        match self {
            Dropped::Refused => "refused by --allow/--deny",
            Dropped::Ours => "from our own address",
            Dropped::Empty => "empty, from no peer",
            Dropped::Full => "from newcomers while full (--udp-max-peers)",
            Dropped::IpFull => "from newcomers over --udp-max-peers-per-ip",
            Dropped::TooFast => "from newcomers arriving too fast",
            Dropped::OverRate => "over --rate-limit",
            Dropped::TooLong => "over --max-frame",
            Dropped::Looped => "our own messages come back round a loop",
            Dropped::NameRefused => "with a refused name",
            Dropped::Unsent => "not sent (socket full or too long)",
            Dropped::Unproven => "not sent to peers that have not proven their address",
        }
    }
}

/// One UDP peer in the room.
#[derive(Debug)]
pub struct UdpPeer {
    /// When its last datagram arrived; silent for the timeout, it is removed.
    pub last_heard: Instant,
    /// Its name, fixed by its first message; `None` until it is given.
    pub name: Option<Box<str>>,
    /// It has echoed its token (or `--udp-trust-senders`): its address is its own.
    pub proven: bool,
    /// What it may be sent while it has not proven its address.
    budget: Budget,
    /// When it was last sent a challenge.
    challenged: Option<Instant>,
    /// Its `--rate-limit` bucket (a UDP sender cannot be slowed: datagrams
    /// over the rate are dropped).
    throttle: Option<Box<Throttle>>,
}

/// What [`UdpRoom::admit`] made of a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// In the room now.
    New,
    /// In the room now, in the place of this peer, which had not proven its
    /// address: the caller takes it out (and says so).
    NewInsteadOf(SocketAddr),
    /// Not let in, for this reason.
    No(Dropped),
}

/// What [`UdpRoom::prove`] made of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The token was right: the peer's address is its own from now on.
    Proven,
    /// Right, and already known.
    Already,
    /// Not the token this address was sent, or not a peer.
    Wrong,
}

/// How the UDP door is set up.
#[derive(Debug, Clone)]
pub struct UdpSettings {
    /// `--udp-max-peers`.
    pub max_peers: usize,
    /// `--udp-max-peers-per-ip`.
    pub max_per_ip: usize,
    /// `--udp-peer-timeout`.
    pub timeout: Duration,
    /// `--rate-limit`.
    pub rate_limit: Option<RateLimit>,
    /// `--udp-trust-senders`: every address is taken as its sender's own.
    pub trust_senders: bool,
    /// The socket's own address.
    pub local: SocketAddr,
}

/// The UDP peers of the room, and what waits to be sent to them.
#[derive(Debug)]
pub struct UdpRoom {
    settings: UdpSettings,
    peers: HashMap<SocketAddr, UdpPeer>,
    /// Peers per IP address.
    per_ip: HashMap<IpAddr, u32>,
    /// Peers that had not proven their address when they came in, oldest
    /// first; some may have proven it or left since (skipped when met).
    /// Kept within twice `max_peers` entries.
    unproven: VecDeque<SocketAddr>,
    /// Newcomers let in: [`NEW_PEERS_PER_SEC`].
    newcomers: Bucket,
    /// This socket's own addresses: a datagram from one is forged.
    own: OwnAddress,
    tokens: Tokens,
    /// Fingerprints of the last [`RECENT_MAX`] messages sent to the peers, oldest first.
    recent: VecDeque<u64>,
    /// The same, to look up.
    recent_set: HashSet<u64>,
    /// Datagrams the kernel did not take yet, oldest first.
    outbox: VecDeque<(Rc<[u8]>, SocketAddr)>,
    /// Datagrams dropped (or not sent), by cause.
    counts: [u64; 12],
    /// The log of those, at most one line a second per cause.
    logs: [RateLog; 12],
}

/// A message's fingerprint: its timestamp and text, not its sender's name
/// (which each hub on a loop stamps anew).
fn fingerprint(text: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    match std::str::from_utf8(text).ok().and_then(chat_msg::parse) {
        Some(m) => (m.timestamp, m.text).hash(&mut hasher),
        None => text.hash(&mut hasher),
    }
    hasher.finish()
}

impl UdpRoom {
    /// An empty room.
    pub fn new(settings: UdpSettings, now: Instant) -> std::io::Result<UdpRoom> {
        Ok(UdpRoom {
            own: OwnAddress::new(settings.local),
            settings: UdpSettings {
                max_peers: settings.max_peers.max(1),
                max_per_ip: settings.max_per_ip.max(1),
                ..settings
            },
            peers: HashMap::new(),
            per_ip: HashMap::new(),
            unproven: VecDeque::new(),
            newcomers: Bucket::new(NEW_PEERS_PER_SEC, now),
            tokens: Tokens::new()?,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            outbox: VecDeque::new(),
            counts: [0; 12],
            logs: Default::default(),
        })
    }

    /// The UDP peers and the door's counters, for the SIGUSR1 table.
    pub fn describe(&self, out: &mut String) {
        use std::fmt::Write;
        let now = Instant::now();
        let _ = writeln!(
            out,
            "udp door: {} peer(s) of at most {} ({} per IP); datagrams dropped or not sent:",
            self.peers.len(),
            self.settings.max_peers,
            self.settings.max_per_ip,
        );
        for drop in Dropped::ALL {
            let _ = writeln!(out, "  {:>10} {}", self.counts[drop as usize], drop.cause());
        }
        for (addr, peer) in &self.peers {
            let (received, sent) = peer.budget.counts();
            let _ = writeln!(
                out,
                "  udp         {:<42} {:<12} silent {:.1}s{}",
                addr.to_string(),
                peer.name.as_deref().unwrap_or("(no name yet)"),
                (now - peer.last_heard).as_secs_f64(),
                if peer.proven {
                    String::new()
                } else {
                    format!(", address not proven ({received} B in, {sent} B out)")
                }
            );
        }
    }

    /// The peers for `/who`: `NAME (udp)`, or with its address while it has none.
    pub fn list(&self, entries: &mut Vec<String>) {
        for (addr, peer) in &self.peers {
            let unproven = if peer.proven {
                ""
            } else {
                ", address not proven"
            };
            entries.push(match &peer.name {
                Some(name) => format!("{name} (udp{unproven})"),
                None => format!("{addr} (udp, no name yet{unproven})"),
            });
        }
    }

    /// The names of the peers that have given one.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.peers.values().filter_map(|peer| peer.name.as_deref())
    }

    /// Peers in the room.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when no UDP peer is in the room.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// How often to look for silent peers: a quarter of the timeout, between 100 ms and 1 s.
    pub fn sweep_every(&self) -> Duration {
        (self.settings.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The timeout, for log lines.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// True when `from` is this socket itself.
    pub fn is_own(&self, from: SocketAddr) -> bool {
        self.own.is(from)
    }

    /// A datagram of `bytes` bytes came from `from`: if it is a peer, it is
    /// heard now and its budget grows; false when it is not a peer.
    pub fn heard(&mut self, from: SocketAddr, bytes: usize, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(&from) else {
            return false;
        };
        peer.last_heard = now;
        peer.budget.received(bytes);
        true
    }

    /// Lets a newcomer in (its datagram of `bytes` bytes is not empty), if
    /// it may come in: see the module docs.
    pub fn admit(&mut self, from: SocketAddr, bytes: usize, now: Instant) -> Admit {
        let ip = unmapped(from.ip());
        if self.per_ip.get(&ip).copied().unwrap_or(0) as usize >= self.settings.max_per_ip {
            return Admit::No(Dropped::IpFull);
        }
        if self.newcomers.available(now) < 1.0 {
            return Admit::No(Dropped::TooFast);
        }
        let mut instead_of = None;
        if self.peers.len() >= self.settings.max_peers {
            while let Some(oldest) = self.unproven.pop_front() {
                if self.peers.get(&oldest).is_some_and(|p| !p.proven) {
                    instead_of = Some(oldest);
                    break;
                }
            }
            if instead_of.is_none() {
                return Admit::No(Dropped::Full);
            }
        }
        self.newcomers.take(1.0, now);
        let mut budget = Budget::default();
        budget.received(bytes);
        let proven = self.settings.trust_senders;
        self.peers.insert(
            from,
            UdpPeer {
                last_heard: now,
                name: None,
                proven,
                budget,
                challenged: None,
                throttle: self
                    .settings
                    .rate_limit
                    .map(|limit| Box::new(Throttle::new(limit, now))),
            },
        );
        *self.per_ip.entry(ip).or_insert(0) += 1;
        if !proven {
            self.unproven.push_back(from);
            if self.unproven.len() > 2 * self.settings.max_peers {
                let peers = &self.peers;
                self.unproven
                    .retain(|addr| peers.get(addr).is_some_and(|p| !p.proven));
            }
        }
        match instead_of {
            Some(oldest) => Admit::NewInsteadOf(oldest),
            None => Admit::New,
        }
    }

    /// `from` answered a challenge with `token`.
    pub fn prove(&mut self, from: SocketAddr, token: u64, now: Instant) -> Proof {
        let Some(peer) = self.peers.get_mut(&from) else {
            return Proof::Wrong;
        };
        if !self.tokens.check(from, token, now) {
            return Proof::Wrong;
        }
        if peer.proven {
            return Proof::Already;
        }
        peer.proven = true;
        Proof::Proven
    }

    /// Sends `from` a challenge from `name`, if it has not proven its
    /// address, was not challenged in the last [`CHALLENGE_EVERY`], and its
    /// budget allows.
    pub fn challenge<S>(&mut self, cx: &mut Ctx<S>, to: SocketAddr, name: &str, now: Instant) {
        let Some(peer) = self.peers.get_mut(&to) else {
            return;
        };
        let due = peer.challenged.map_or(true, |at| {
            now.saturating_duration_since(at) >= CHALLENGE_EVERY
        });
        if peer.proven || !due {
            return;
        }
        let token = self.tokens.token(to, now);
        let text = chat_msg::format_now(name, &routability::challenge_text(token));
        if !peer.budget.spend(text.len()) {
            return;
        }
        peer.challenged = Some(now);
        self.send_one(cx, to, text.as_bytes());
    }

    /// Sends one datagram to one peer, within its budget if it has not
    /// proven its address; false when it was not sent.
    pub fn send_to<S>(&mut self, cx: &mut Ctx<S>, to: SocketAddr, text: &[u8]) -> bool {
        let Some(peer) = self.peers.get_mut(&to) else {
            return false;
        };
        if !peer.proven && !peer.budget.spend(text.len()) {
            self.counts[Dropped::Unproven as usize] += 1;
            return false;
        }
        self.send_one(cx, to, text);
        true
    }

    /// Sends one datagram to any address (a peer's budget already counted).
    pub fn send_one<S>(&mut self, cx: &mut Ctx<S>, to: SocketAddr, text: &[u8]) {
        if self.outbox.is_empty() {
            let Some(socket) = cx.udp() else {
                return;
            };
            match udp::send_to(socket, text, to) {
                Sent::Yes => return,
                Sent::Failed(e) => {
                    log::debug!("udp: cannot send to {to}: {e}");
                    return;
                }
                Sent::Full => {}
            }
        }
        if self.outbox.len() >= OUTBOX_MAX {
            self.counts[Dropped::Unsent as usize] += 1;
            return;
        }
        self.outbox.push_back((Rc::from(text), to));
        cx.udp_want_writable(true);
    }

    /// Charges one message of `bytes` bytes to `from`'s rate limit; false
    /// (and nothing charged) when it is over its rate and the datagram must be dropped.
    pub fn within_rate(&mut self, from: SocketAddr, bytes: usize, now: Instant) -> bool {
        let Some(throttle) = self.peers.get_mut(&from).and_then(|p| p.throttle.as_mut()) else {
            return true;
        };
        if !throttle.msgs.wait(now).is_zero() {
            return false;
        }
        if let Some(bucket) = throttle.bytes.as_mut() {
            if bucket.available(now) < 1.0 {
                return false;
            }
            bucket.take(bytes as f64, now);
        }
        throttle.msgs.take(1.0, now);
        true
    }

    /// True when `text` is a message this room sent to its peers lately:
    /// one of ours, come back round a loop.
    pub fn sent_lately(&self, text: &[u8]) -> bool {
        !self.recent.is_empty() && self.recent_set.contains(&fingerprint(text))
    }

    /// A peer in the room, to read or change.
    pub fn peer_mut(&mut self, addr: SocketAddr) -> Option<&mut UdpPeer> {
        self.peers.get_mut(&addr)
    }

    /// Takes a peer out of the room (and what waits to be sent to it).
    pub fn remove(&mut self, addr: SocketAddr) -> Option<UdpPeer> {
        let peer = self.peers.remove(&addr)?;
        let ip = unmapped(addr.ip());
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
        self.outbox.retain(|(_, to)| *to != addr);
        Some(peer)
    }

    /// Fills `out` with the peers silent for the timeout or longer at `now`.
    pub fn silent(&self, now: Instant, out: &mut Vec<SocketAddr>) {
        out.clear();
        out.extend(
            self.peers
                .iter()
                .filter(|(_, p)| {
                    now.saturating_duration_since(p.last_heard) >= self.settings.timeout
                })
                .map(|(addr, _)| *addr),
        );
    }

    /// Forgets every peer and everything waiting (at shutdown).
    pub fn clear(&mut self) {
        self.peers.clear();
        self.per_ip.clear();
        self.unproven.clear();
        self.outbox.clear();
    }

    /// Counts a datagram dropped for `why`; logs `line` unless one of that
    /// cause was logged in the last second (then the count is logged when
    /// that second is over: [`UdpRoom::log_summaries`]).
    pub fn dropped<S>(&mut self, cx: &mut Ctx<S>, why: Dropped, line: impl FnOnce() -> String) {
        self.counts[why as usize] += 1;
        match self.logs[why as usize].note(Instant::now()) {
            Note::Log => log::warn!("udp: {}", line()),
            Note::CountedFirst(at) => cx.set_timer(at, TIMER_LOG_SUMMARY),
            Note::Counted => {}
        }
    }

    /// A second of dropped datagrams is over: one line per cause with their count.
    pub fn log_summaries(&mut self) {
        let now = Instant::now();
        for drop in Dropped::ALL {
            if let Some(n) = self.logs[drop as usize].summary(now) {
                log::warn!(
                    "udp: {n} more datagram(s) in the last second: {}",
                    drop.cause()
                );
            }
        }
    }

    /// Sends `text` as one datagram to every peer but `except`: to a peer
    /// that has not proven its address only within its budget. Straight from
    /// `text` while the socket takes it; when it does not, the text is stored
    /// once in `shared` (made here, if the caller has not made it yet) and
    /// queued for [`UdpRoom::flush`]. The message is remembered, to be
    /// recognised if it comes back.
    pub fn send_all<S>(
        &mut self,
        cx: &mut Ctx<S>,
        except: Option<SocketAddr>,
        text: &[u8],
        shared: &mut Option<Rc<[u8]>>,
    ) {
        if self.peers.is_empty() || self.peers.len() == 1 && except.is_some() {
            return;
        }
        if text.len() > MAX_DATAGRAM {
            self.dropped(cx, Dropped::Unsent, || {
                format!(
                    "a message of {} bytes does not fit in a datagram (at most {MAX_DATAGRAM}); \
                     not sent to the UDP peers",
                    text.len()
                )
            });
            return;
        }
        self.remember(text);
        let mut waiting = false;
        let mut unproven = 0;
        let mut unsent = 0;
        for (&addr, peer) in self.peers.iter_mut() {
            if Some(addr) == except {
                continue;
            }
            if !peer.proven && !peer.budget.spend(text.len()) {
                unproven += 1;
                continue;
            }
            if self.outbox.is_empty() {
                let Some(socket) = cx.udp() else {
                    return;
                };
                match udp::send_to(socket, text, addr) {
                    Sent::Yes => continue,
                    Sent::Failed(e) => {
                        log::debug!("udp: cannot send to {addr}: {e}");
                        continue;
                    }
                    Sent::Full => {}
                }
            }
            if self.outbox.len() >= OUTBOX_MAX {
                unsent += 1;
                continue;
            }
            let datagram = shared.get_or_insert_with(|| Rc::from(text));
            self.outbox.push_back((Rc::clone(datagram), addr));
            waiting = true;
        }
        self.counts[Dropped::Unproven as usize] += unproven;
        if unsent > 0 {
            self.dropped(cx, Dropped::Unsent, || {
                format!("{OUTBOX_MAX} datagrams already wait for the socket; {unsent} dropped")
            });
        }
        if waiting {
            crate::trace!(
                cx.tracer(),
                "udp: socket full, {} datagram(s) wait for room",
                self.outbox.len()
            );
            cx.udp_want_writable(true);
        }
    }

    /// Remembers a message sent to the peers (the oldest of [`RECENT_MAX`] goes).
    fn remember(&mut self, text: &[u8]) {
        let print = fingerprint(text);
        if self.recent_set.insert(print) {
            self.recent.push_back(print);
            if self.recent.len() > RECENT_MAX {
                if let Some(oldest) = self.recent.pop_front() {
                    self.recent_set.remove(&oldest);
                }
            }
        }
    }

    /// Sends what waits in the outbox until it is empty or the socket is full again.
    pub fn flush<S>(&mut self, cx: &mut Ctx<S>) {
        while let Some((datagram, addr)) = self.outbox.front() {
            let Some(socket) = cx.udp() else {
                self.outbox.clear();
                break;
            };
            match udp::send_to(socket, datagram, *addr) {
                Sent::Yes => {}
                Sent::Failed(e) => log::debug!("udp: cannot send to {addr}: {e}"),
                Sent::Full => return,
            }
            self.outbox.pop_front();
        }
        cx.udp_want_writable(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn room(max_peers: usize, max_per_ip: usize) -> UdpRoom {
        UdpRoom::new(
            UdpSettings {
                max_peers,
                max_per_ip,
                timeout: Duration::from_secs(60),
                rate_limit: None,
                trust_senders: false,
                local: addr(9000),
            },
            Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn a_full_room_lets_a_newcomer_in_only_in_an_unproven_peers_place() {
        let now = Instant::now();
        let mut room = room(2, 16);
        assert_eq!(room.admit(addr(1), 40, now), Admit::New);
        assert_eq!(room.admit(addr(2), 40, now), Admit::New);
        let token = room.tokens.token(addr(1), now);
        assert_eq!(room.prove(addr(1), token, now), Proof::Proven);
        assert_eq!(room.prove(addr(1), token ^ 1, now), Proof::Wrong);
        // 2 has not proven itself: 3 takes its place; then nobody's is free.
        assert_eq!(room.admit(addr(3), 40, now), Admit::NewInsteadOf(addr(2)));
        room.remove(addr(2));
        let token = room.tokens.token(addr(3), now);
        room.prove(addr(3), token, now);
        assert_eq!(room.admit(addr(4), 40, now), Admit::No(Dropped::Full));
        assert_eq!(room.len(), 2);
        assert!(room.heard(addr(1), 0, now));
        assert!(!room.heard(addr(2), 0, now));
    }

    #[test]
    fn one_ip_address_has_a_bounded_share_and_newcomers_a_bounded_rate() {
        let now = Instant::now();
        let mut room = room(1000, 3);
        for port in 1..=3 {
            assert_eq!(room.admit(addr(port), 40, now), Admit::New);
        }
        assert_eq!(room.admit(addr(4), 40, now), Admit::No(Dropped::IpFull));
        let other = SocketAddr::from(([127, 0, 0, 2], 1));
        assert_eq!(room.admit(other, 40, now), Admit::New);
        room.remove(addr(1));
        assert_eq!(room.admit(addr(4), 40, now), Admit::New);
        let mut room = room_with_many_ips();
        let refused = (0..200u16)
            .filter(|&i| {
                let from = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1));
                room.admit(from, 40, now) == Admit::No(Dropped::TooFast)
            })
            .count();
        assert!(refused >= 200 - NEW_PEERS_PER_SEC as usize - 1, "{refused}");
    }

    fn room_with_many_ips() -> UdpRoom {
        room(10_000, 16)
    }

    #[test]
    fn our_own_address_is_recognised_whatever_it_is_written_as() {
        let mut settings = room(8, 8).settings.clone();
        settings.local = SocketAddr::from(([0, 0, 0, 0], 9000));
        let room = UdpRoom::new(settings, Instant::now()).unwrap();
        assert!(room.is_own(addr(9000)));
        assert!(room.is_own("[::ffff:127.0.0.1]:9000".parse().unwrap()));
        assert!(!room.is_own(addr(9001)));
    }

    #[test]
    fn a_message_sent_lately_is_known_by_its_time_and_text_whatever_the_name() {
        let mut room = room(8, 8);
        room.remember(b"[2024-02-03T01:02:03.000001] Ann:\n\thello");
        assert!(room.sent_lately(b"[2024-02-03T01:02:03.000001] hub-2:\n\thello"));
        assert!(!room.sent_lately(b"[2024-02-03T01:02:03.000002] Ann:\n\thello"));
        for i in 0..RECENT_MAX {
            room.remember(format!("[2024-02-03T01:02:03] x:\n\t{i}").as_bytes());
        }
        assert!(!room.sent_lately(b"[2024-02-03T01:02:03.000001] Ann:\n\thello"));
        assert_eq!(room.recent.len(), RECENT_MAX);
    }

    #[test]
    fn silent_peers_are_found_after_the_timeout() {
        let start = Instant::now();
        let mut room = room(8, 8);
        room.admit(addr(1), 40, start);
        room.admit(addr(2), 40, start);
        room.heard(addr(2), 1, start + Duration::from_secs(5));
        let mut silent = Vec::new();
        room.silent(start + Duration::from_secs(59), &mut silent);
        assert!(silent.is_empty());
        room.silent(start + Duration::from_secs(61), &mut silent);
        assert_eq!(silent, [addr(1)]);
    }

    #[test]
    fn datagrams_over_the_rate_are_refused() {
        let now = Instant::now();
        let mut settings = room(8, 8).settings.clone();
        settings.rate_limit = Some("2/s".parse().unwrap());
        let mut room = UdpRoom::new(settings, now).unwrap();
        room.admit(addr(1), 40, now);
        assert!(room.within_rate(addr(1), 10, now));
        assert!(room.within_rate(addr(1), 10, now));
        assert!(!room.within_rate(addr(1), 10, now));
        assert!(room.within_rate(addr(1), 10, now + Duration::from_secs(1)));
    }
}
