//! The chat server's UDP peer set (`chat server --udp-port P`): the
//! `udp-chat` peers in the same room as the TCP clients.
//!
//! A UDP peer has no connection, so this file keeps what a connection would
//! have given the server for free: who is there (at most `--udp-max-peers`),
//! when each peer was last heard (one silent for `--udp-peer-timeout` is
//! gone), a per-peer `--rate-limit` bucket, and an outbox for datagrams the
//! kernel had no room for (at most [`OUTBOX_MAX`]; more are dropped and counted).
//! The message logic (names, joins, leaves, relaying) is in `door_udp.rs`;
//! this file only keeps the peer set and sends.
//!
//! What it must not do: allocate or format per recipient. A datagram goes out
//! straight from the message text; only when the socket is full is the text
//! stored, once, in an `Rc` that every waiting copy shares.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::ratelimit::{RateLimit, Throttle};
use crate::reactor::Ctx;
use crate::udp::{self, Sent, MAX_DATAGRAM};

/// Most UDP peers in the room at once, unless `--udp-max-peers` says otherwise.
pub const DEFAULT_MAX_PEERS: u32 = 1024;

/// Datagrams that may wait for room in the socket's send buffer; more are dropped (and counted).
pub const OUTBOX_MAX: usize = 4096;

/// Counts something that may happen very often (a datagram refused, dropped)
/// and says when to log it: the 1st, 2nd, 4th, 8th... time, so that a flood
/// of datagrams cannot flood the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally(
    /// How many so far.
    pub u64,
);

impl Tally {
    /// Counts one more; true when this one should be logged.
    pub fn bump(&mut self) -> bool {
        self.0 += 1;
        self.0.is_power_of_two()
    }
}

/// One UDP peer in the room.
#[derive(Debug)]
pub struct UdpPeer {
    /// When its last datagram arrived; silent for the timeout, it is removed.
    pub last_heard: Instant,
    /// Its name, as written in the sender field of its messages; `None`
    /// until its first message in the chat format.
    pub name: Option<Box<str>>,
    /// Its `--rate-limit` bucket (a UDP sender cannot be slowed: datagrams
    /// over the rate are dropped).
    throttle: Option<Box<Throttle>>,
}

/// What [`UdpRoom::heard`] made of a datagram's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A peer already in the room.
    Known,
    /// A new peer, now in the room.
    New,
    /// A new peer, not let in: the room has `--udp-max-peers` already.
    Full,
}

/// The UDP peers of the room, and what waits to be sent to them.
#[derive(Debug)]
pub struct UdpRoom {
    peers: HashMap<SocketAddr, UdpPeer>,
    max_peers: usize,
    /// `--udp-peer-timeout`.
    timeout: Duration,
    rate_limit: Option<RateLimit>,
    /// Datagrams the kernel did not take yet, oldest first.
    outbox: VecDeque<(Rc<[u8]>, SocketAddr)>,
    /// Datagrams ignored because `--allow`/`--deny` refuse their sender.
    pub refused: Tally,
    /// Datagrams from new peers ignored while the room was full.
    pub full: Tally,
    /// Datagrams dropped for being over the sender's `--rate-limit`.
    pub over_rate: Tally,
    /// Datagrams not sent: the outbox was full, or the message is longer than a datagram.
    pub unsent: Tally,
}

impl UdpRoom {
    /// The UDP peers and the door's counters, for the SIGUSR1 table.
    pub fn describe(&self, out: &mut String) {
        use std::fmt::Write;
        let now = Instant::now();
        let _ = writeln!(
            out,
            "udp door: {} peer(s) of at most {}; datagrams refused by rule {}, room full {}, \
             over the rate {}, not sent {}",
            self.peers.len(),
            self.max_peers,
            self.refused.0,
            self.full.0,
            self.over_rate.0,
            self.unsent.0
        );
        for (addr, peer) in &self.peers {
            let _ = writeln!(
                out,
                "  udp         {:<42} {:<12} silent {:.1}s",
                addr.to_string(),
                peer.name.as_deref().unwrap_or("(no name yet)"),
                (now - peer.last_heard).as_secs_f64()
            );
        }
    }

    /// An empty room for at most `max_peers` UDP peers.
    pub fn new(max_peers: usize, timeout: Duration, rate_limit: Option<RateLimit>) -> UdpRoom {
        UdpRoom {
            peers: HashMap::new(),
            max_peers: max_peers.max(1),
            timeout,
            rate_limit,
            outbox: VecDeque::new(),
            refused: Tally::default(),
            full: Tally::default(),
            over_rate: Tally::default(),
            unsent: Tally::default(),
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

    /// The most peers at once.
    pub fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// How often to look for silent peers: a quarter of the timeout, between 100 ms and 1 s.
    pub fn sweep_every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// A datagram came from `from`: it is (now) in the room, heard at `now`,
    /// unless the room is full.
    pub fn heard(&mut self, from: SocketAddr, now: Instant) -> Heard {
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.last_heard = now;
            return Heard::Known;
        }
        if self.peers.len() >= self.max_peers {
            return Heard::Full;
        }
        let throttle = self
            .rate_limit
            .map(|limit| Box::new(Throttle::new(limit, now)));
        self.peers.insert(
            from,
            UdpPeer {
                last_heard: now,
                name: None,
                throttle,
            },
        );
        Heard::New
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

    /// A peer in the room, to read or change.
    pub fn peer_mut(&mut self, addr: SocketAddr) -> Option<&mut UdpPeer> {
        self.peers.get_mut(&addr)
    }

    /// Takes a peer out of the room (and what waits to be sent to it).
    pub fn remove(&mut self, addr: SocketAddr) -> Option<UdpPeer> {
        let peer = self.peers.remove(&addr)?;
        self.outbox.retain(|(_, to)| *to != addr);
        Some(peer)
    }

    /// Fills `out` with the peers silent for the timeout or longer at `now`.
    pub fn silent(&self, now: Instant, out: &mut Vec<SocketAddr>) {
        out.clear();
        out.extend(
            self.peers
                .iter()
                .filter(|(_, p)| now.saturating_duration_since(p.last_heard) >= self.timeout)
                .map(|(addr, _)| *addr),
        );
    }

    /// The timeout, for log lines.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Forgets every peer and everything waiting (at shutdown).
    pub fn clear(&mut self) {
        self.peers.clear();
        self.outbox.clear();
    }

    /// Sends `text` as one datagram to every peer but `except`. Straight from
    /// `text` while the socket takes it; when it does not, the text is stored
    /// once in `shared` (made here, if the caller has not made it yet) and
    /// queued for [`UdpRoom::flush`].
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
            if self.unsent.bump() {
                log::warn!(
                    "udp: a message of {} bytes does not fit in a datagram (at most {MAX_DATAGRAM}); \
                     not sent to the UDP peers ({} such so far)",
                    text.len(),
                    self.unsent.0
                );
            }
            return;
        }
        let mut waiting = false;
        for &addr in self.peers.keys() {
            if Some(addr) == except {
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
                if self.unsent.bump() {
                    log::warn!(
                        "udp: {OUTBOX_MAX} datagrams already wait for the socket; one to {addr} \
                         dropped ({} such so far)",
                        self.unsent.0
                    );
                }
                continue;
            }
            let datagram = shared.get_or_insert_with(|| Rc::from(text));
            self.outbox.push_back((Rc::clone(datagram), addr));
            waiting = true;
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

    #[test]
    fn the_room_is_bounded_and_a_freed_place_is_taken_again() {
        let now = Instant::now();
        let mut room = UdpRoom::new(2, Duration::from_secs(60), None);
        assert_eq!(room.heard(addr(1), now), Heard::New);
        assert_eq!(room.heard(addr(2), now), Heard::New);
        assert_eq!(room.heard(addr(1), now), Heard::Known);
        assert_eq!(room.heard(addr(3), now), Heard::Full);
        assert!(room.remove(addr(2)).is_some());
        assert_eq!(room.heard(addr(3), now), Heard::New);
        assert_eq!(room.len(), 2);
    }

    #[test]
    fn silent_peers_are_found_after_the_timeout() {
        let start = Instant::now();
        let mut room = UdpRoom::new(8, Duration::from_secs(10), None);
        room.heard(addr(1), start);
        room.heard(addr(2), start + Duration::from_secs(5));
        let mut silent = Vec::new();
        room.silent(start + Duration::from_secs(9), &mut silent);
        assert!(silent.is_empty());
        room.silent(start + Duration::from_secs(11), &mut silent);
        assert_eq!(silent, [addr(1)]);
    }

    #[test]
    fn datagrams_over_the_rate_are_refused() {
        let now = Instant::now();
        let limit: RateLimit = "2/s".parse().unwrap();
        let mut room = UdpRoom::new(8, Duration::from_secs(60), Some(limit));
        room.heard(addr(1), now);
        assert!(room.within_rate(addr(1), 10, now));
        assert!(room.within_rate(addr(1), 10, now));
        assert!(!room.within_rate(addr(1), 10, now));
        assert!(room.within_rate(addr(1), 10, now + Duration::from_secs(1)));
    }

    #[test]
    fn a_tally_logs_at_powers_of_two() {
        let mut tally = Tally::default();
        let logged: Vec<u64> = (1..=9).filter(|_| tally.bump()).collect();
        assert_eq!(logged, [1, 2, 4, 8]);
        assert_eq!(tally.0, 9);
    }
}
