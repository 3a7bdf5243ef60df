//! The mesh's bookkeeping, without a socket: who is in the chat, which
//! addresses to keep dialing and when, and which of two links between the
//! same two members stays.
//!
//! * [`Members`]: every member we have a link to, keyed by [`MemberId`],
//!   with exactly one *active* link each (the one we send on).
//! * [`Targets`]: the address book: every address we want a link to (the
//!   PEER arguments, and addresses other members introduced), its state, and
//!   when to dial it next. Bounded: a learned address that is given up is
//!   forgotten, a full book makes room by forgetting the oldest address it no
//!   longer dials, and only a book full of live addresses ignores further
//!   introductions.
//! * [`Backoff`]: capped exponential backoff with jitter, so members started
//!   in any order find each other without a storm of connects.
//! * [`DialKey`] and [`keep`]: the deterministic tie-break for simultaneous dials.
//!
//! *Invariant:* no I/O and no clock of its own: every time comes in as an argument.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use slab::Slab;

use super::wire::MemberId;
use crate::reactor::ConnId;

/// Which link between two members this is, in an order both ends agree on:
/// who dialed it, then which of that member's dials it was.
///
/// When two members dial each other at the same moment there are two links
/// between them, and each end learns of the second one at a different time.
/// Each end keeps the link with the smaller key and retires the other; both
/// compute the same answer from the same two keys, so no extra message, and
/// no timing, decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DialKey {
    /// The member that dialed the link.
    pub dialer: MemberId,
    /// That member's dial count when it dialed it.
    pub dial: u64,
}

impl fmt::Display for DialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dial {} of {}", self.dial, self.dialer)
    }
}

/// Of two links between the same two members, the one that stays: the one
/// dialed by the member with the smaller id; of two dialed by the same
/// member, its earlier dial.
pub fn keep(a: DialKey, b: DialKey) -> DialKey {
    a.min(b)
}

/// A small random number generator (splitmix64): ids and jitter need
/// unpredictability between processes, not cryptographic strength.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the system's random source, or from the clock and the
    /// process id when that cannot be read.
    pub fn seeded() -> Rng {
        let mut bytes = [0u8; 8];
        let from_system = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .is_ok();
        let seed = if from_system {
            u64::from_le_bytes(bytes)
        } else {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ (u64::from(std::process::id()) << 32)
        };
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Capped exponential backoff with jitter (the rule every redial shares).
pub use crate::backoff::Jittered as Backoff;

/// A member of the chat we have a link to.
#[derive(Debug)]
pub struct Member {
    /// Its name (checked with `safe_text::check_name`).
    pub name: Box<str>,
    /// Where it listens, as we would dial it.
    pub listen: SocketAddr,
    /// The link we send on.
    pub conn: ConnId,
    /// That link's place in the tie-break order.
    pub key: DialKey,
    /// It said goodbye (the leave text or the zero-length frame), and that
    /// was reported; its link closing is no surprise.
    pub left: bool,
    /// When its first link came up.
    pub since: Instant,
}

/// The members we have links to, at most `max`.
#[derive(Debug)]
pub struct Members {
    /// At most this many at once (`--max-peers`).
    pub max: usize,
    by_id: BTreeMap<MemberId, Member>,
}

impl Members {
    /// An empty table for at most `max` members.
    pub fn new(max: usize) -> Members {
        Members {
            max,
            by_id: BTreeMap::new(),
        }
    }

    /// The member `id`, if we have a link to it.
    pub fn get(&self, id: MemberId) -> Option<&Member> {
        self.by_id.get(&id)
    }

    /// The member `id`, to change.
    pub fn get_mut(&mut self, id: MemberId) -> Option<&mut Member> {
        self.by_id.get_mut(&id)
    }

    /// Adds a member (the caller checked that it is new and that there is room).
    pub fn insert(&mut self, id: MemberId, member: Member) {
        self.by_id.insert(id, member);
    }

    /// Takes a member out.
    pub fn remove(&mut self, id: MemberId) -> Option<Member> {
        self.by_id.remove(&id)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there is no room for another.
    pub fn is_full(&self) -> bool {
        self.by_id.len() >= self.max
    }

    /// Every member, by id.
    pub fn iter(&self) -> impl Iterator<Item = (MemberId, &Member)> {
        self.by_id.iter().map(|(id, m)| (*id, m))
    }

    /// The member (other than `except`) called `name`, if any.
    pub fn named(&self, name: &str, except: Option<MemberId>) -> Option<MemberId> {
        self.by_id
            .iter()
            .find(|(id, m)| &*m.name == name && Some(**id) != except)
            .map(|(id, _)| *id)
    }
}

/// Where an address in the book came from; it decides how long to keep dialing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A PEER argument: dialed until it answers, redialed whenever its member
    /// goes, for as long as the program runs.
    CommandLine,
    /// Introduced by a member, or learned from a member's own announcement:
    /// dialed while its member is in the chat; after the member vanishes,
    /// redialed until [`Targets::give_up_after`] failures in a row, then forgotten.
    Learned,
}

/// What the book knows about one address right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// To be dialed at `at` (a timer is set for it).
    Waiting {
        /// When.
        at: Instant,
    },
    /// A dial is under way on this link.
    Dialing(ConnId),
    /// Its member is in the chat, through some link.
    Connected,
    /// The address is our own listener (a dial there reached ourselves).
    Myself,
    /// Not dialed any more: refused for good, or not a member. A full book
    /// forgets these first.
    Stopped,
}

/// One address the mesh wants a link to.
#[derive(Debug)]
pub struct Target {
    /// The address.
    pub addr: SocketAddr,
    /// Why it is in the book.
    pub origin: Origin,
    /// The member found there (from a welcome or an introduction), if known.
    pub member: Option<MemberId>,
    /// What is happening with it.
    pub state: TargetState,
    /// Failed dials in a row (for the backoff; 0 after a success).
    pub failures: u32,
    /// Dials that met something other than a member, in a row.
    pub strangers: u32,
    /// Why the last dial failed, for the SIGUSR1 table.
    pub last_error: Option<String>,
    /// When it came into the book, as a count of additions (the oldest goes first).
    added: u64,
}

/// The address book: bounded, keyed by a stable index (timers carry it).
#[derive(Debug)]
pub struct Targets {
    /// At most this many addresses.
    pub max: usize,
    /// Learned addresses are given up after this many failures in a row.
    pub give_up_after: u32,
    book: Slab<Target>,
    /// Addresses added so far (each target's `added`).
    n_added: u64,
}

impl Targets {
    /// An empty book of at most `max` addresses.
    pub fn new(max: usize, give_up_after: u32) -> Targets {
        Targets {
            max,
            give_up_after,
            book: Slab::new(),
            n_added: 0,
        }
    }

    /// Adds an address to be dialed at `at`. A full book first forgets the
    /// oldest address it no longer dials (stopped, or our own); `None` when
    /// every address in it is live. An address already in the book is
    /// returned as it is.
    pub fn add(&mut self, addr: SocketAddr, origin: Origin, at: Instant) -> Option<usize> {
        if let Some(key) = self.find(addr) {
            if origin == Origin::CommandLine {
                self.book[key].origin = Origin::CommandLine;
            }
            return Some(key);
        }
        if self.book.len() >= self.max {
            let dead = self
                .book
                .iter()
                .filter(|(_, t)| matches!(t.state, TargetState::Stopped | TargetState::Myself))
                .min_by_key(|(_, t)| t.added)
                .map(|(key, _)| key)?;
            self.book.remove(dead);
        }
        self.n_added += 1;
        Some(self.book.insert(Target {
            addr,
            origin,
            member: None,
            state: TargetState::Waiting { at },
            failures: 0,
            strangers: 0,
            last_error: None,
            added: self.n_added,
        }))
    }

    /// The key of `addr`, if it is in the book.
    pub fn find(&self, addr: SocketAddr) -> Option<usize> {
        self.book
            .iter()
            .find(|(_, t)| t.addr == addr)
            .map(|(key, _)| key)
    }

    /// A target by key.
    pub fn get(&self, key: usize) -> Option<&Target> {
        self.book.get(key)
    }

    /// A target by key, to change.
    pub fn get_mut(&mut self, key: usize) -> Option<&mut Target> {
        self.book.get_mut(key)
    }

    /// Forgets an address.
    pub fn remove(&mut self, key: usize) {
        if self.book.contains(key) {
            self.book.remove(key);
        }
    }

    /// Every target, by key.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Target)> {
        self.book.iter()
    }

    /// The keys of the targets where `member` was found.
    pub fn of_member(&self, member: MemberId) -> Vec<usize> {
        self.book
            .iter()
            .filter(|(_, t)| t.member == Some(member))
            .map(|(key, _)| key)
            .collect()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.book.len()
    }

    /// Records a failed dial (or a member lost) and says when to dial next:
    /// `None` when the address is given up (learned, too many failures); it
    /// is then forgotten, so a member that comes back at a new address (a
    /// restart on `--port 0`) never leaves a dead entry behind.
    pub fn failed(
        &mut self,
        key: usize,
        why: String,
        now: Instant,
        backoff: &Backoff,
        rng: &mut Rng,
    ) -> Option<Instant> {
        let give_up_after = self.give_up_after;
        let target = self.book.get_mut(key)?;
        target.failures = target.failures.saturating_add(1);
        target.last_error = Some(why);
        if target.origin == Origin::Learned && target.failures > give_up_after {
            self.book.remove(key);
            return None;
        }
        let at = now + backoff.delay(target.failures, rng.next());
        target.state = TargetState::Waiting { at };
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(dialer: u64, dial: u64) -> DialKey {
        DialKey {
            dialer: MemberId(dialer),
            dial,
        }
    }

    #[test]
    fn both_ends_keep_the_same_link_whatever_order_they_learn_of_them() {
        // A (id 1) and B (id 9) dial each other: link X dialed by A, Y by B.
        let x = key(1, 4);
        let y = key(9, 1);
        assert_eq!(keep(x, y), x);
        assert_eq!(keep(y, x), x);
        // Two dials by the same member (two addresses of one listener): the earlier stays.
        assert_eq!(keep(key(9, 7), key(9, 3)), key(9, 3));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_in_the_upper_half() {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        };
        let mut rng = Rng(42);
        for (failures, full) in [(1, 200), (2, 400), (3, 800), (7, 10_000), (40, 10_000)] {
            let full = Duration::from_millis(full);
            let mut seen = Vec::new();
            for _ in 0..50 {
                let d = backoff.delay(failures, rng.next());
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
                seen.push(d);
            }
            seen.dedup();
            assert!(seen.len() > 1, "no jitter after {failures} failures");
        }
    }

    #[test]
    fn learned_addresses_are_given_up_and_command_line_ones_never() {
        let now = Instant::now();
        let backoff = Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
        };
        let mut rng = Rng(1);
        let mut targets = Targets::new(4, 3);
        let learned = targets
            .add("127.0.0.1:1".parse().unwrap(), Origin::Learned, now)
            .unwrap();
        let given = targets
            .add("127.0.0.1:2".parse().unwrap(), Origin::CommandLine, now)
            .unwrap();
        for _ in 0..3 {
            assert!(targets
                .failed(learned, "refused".into(), now, &backoff, &mut rng)
                .is_some());
        }
        assert!(targets
            .failed(learned, "refused".into(), now, &backoff, &mut rng)
            .is_none());
        assert!(
            targets.get(learned).is_none(),
            "a given-up address is forgotten"
        );
        assert_eq!(targets.len(), 1);
        for _ in 0..100 {
            assert!(targets
                .failed(given, "refused".into(), now, &backoff, &mut rng)
                .is_some());
        }
    }

    #[test]
    fn the_book_is_bounded_and_an_address_is_in_it_once() {
        let now = Instant::now();
        let mut targets = Targets::new(2, 3);
        let a = "127.0.0.1:1".parse().unwrap();
        let first = targets.add(a, Origin::Learned, now).unwrap();
        assert_eq!(targets.add(a, Origin::CommandLine, now), Some(first));
        assert_eq!(targets.get(first).unwrap().origin, Origin::CommandLine);
        assert!(targets
            .add("127.0.0.1:2".parse().unwrap(), Origin::Learned, now)
            .is_some());
        assert!(targets
            .add("127.0.0.1:3".parse().unwrap(), Origin::Learned, now)
            .is_none());
        assert_eq!(targets.len(), 2);
    }

    #[test]
    fn a_full_book_forgets_the_oldest_address_it_no_longer_dials() {
        let now = Instant::now();
        let mut targets = Targets::new(3, 3);
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let keys: Vec<usize> = (1..=3)
            .map(|port| targets.add(addr(port), Origin::Learned, now).unwrap())
            .collect();
        targets.get_mut(keys[2]).unwrap().state = TargetState::Stopped;
        targets.get_mut(keys[1]).unwrap().state = TargetState::Myself;
        // The oldest dead one goes: 2 (ours), then 3 (stopped); 1 is live.
        assert!(targets.add(addr(4), Origin::Learned, now).is_some());
        assert!(targets.find(addr(2)).is_none());
        assert!(targets.add(addr(5), Origin::Learned, now).is_some());
        assert!(targets.find(addr(3)).is_none());
        assert!(targets.add(addr(6), Origin::Learned, now).is_none());
        assert!(targets.find(addr(1)).is_some());
        assert_eq!(targets.len(), 3);
    }
}
