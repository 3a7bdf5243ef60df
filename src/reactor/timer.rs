//! Deadlines: the poll's timeout is the time to the nearest one.
//!
//! Commands set a deadline with an id of their choosing and get
//! `Event::Timer(id)` when it passes. The reactor keeps its own deadlines in
//! the same heap, each a [`Deadline`] variant naming the connection it is
//! for, so a command's ids are all its own. There is no cancel: whoever
//! changed its mind ignores the deadline when it fires (a stale deadline is
//! cheap, and each handler below checks that its reason still holds).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Whose a deadline is, and what its passing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deadline {
    /// The command's own, handed back as `Event::Timer(id)`.
    Command(u64),
    /// Connection KEY, paused by its rate limit, may read again.
    ResumeReading(usize),
    /// Connection KEY must have finished its TLS handshake by now.
    Handshake(usize),
    /// Connection KEY, closing since the instant given, has had its grace:
    /// close it now. The instant tells the connection that began closing then
    /// from a later one that reused its key (accepted after that instant).
    CloseGrace(usize, Instant),
    /// Listener I failed to accept for a reason that may pass: try again.
    RetryAccept(usize),
    /// The UDP socket failed to receive for a reason that may pass: try again.
    RetryUdp,
}

/// How long to wait before trying again a source whose last attempt failed
/// with an error that may pass (a listener out of kernel memory, a UDP
/// socket error that repeats): 10 ms, doubling to at most 1 s, back to the
/// start after a success. The source is left alone meanwhile, so an error
/// that repeats costs a few wake-ups a second, never a spinning loop; and
/// it *is* retried, so nothing waits for an edge that may never come.
#[derive(Debug, Default, Clone, Copy)]
pub struct Backoff {
    /// The wait before the next retry; zero until something fails.
    next: Duration,
    /// A retry deadline is set and has not fired yet.
    pending: bool,
}

impl Backoff {
    /// The first wait after a failure.
    pub const FIRST: Duration = Duration::from_millis(10);
    /// The longest wait.
    pub const MOST: Duration = Duration::from_secs(1);

    /// Records a failure; returns how long to wait before retrying, or
    /// `None` when a retry is already set.
    pub fn fail(&mut self) -> Option<Duration> {
        if self.pending {
            return None;
        }
        let wait = self.next.max(Backoff::FIRST);
        self.next = (wait * 2).min(Backoff::MOST);
        self.pending = true;
        Some(wait)
    }

    /// The retry deadline fired: the source may be tried again.
    pub fn retry_due(&mut self) {
        self.pending = false;
    }

    /// True while waiting for a retry: leave the source alone.
    pub fn waiting(&self) -> bool {
        self.pending
    }

    /// A success: the next failure starts over at [`Backoff::FIRST`].
    pub fn succeeded(&mut self) {
        self.next = Duration::ZERO;
    }
}

/// The pending deadlines, nearest first.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Deadline)>>,
    sequence: u64,
}

impl Timers {
    /// Adds a deadline. Ties fire in the order they were set.
    pub fn add(&mut self, at: Instant, deadline: Deadline) {
        self.sequence += 1;
        self.heap.push(Reverse((at, self.sequence, deadline)));
    }

    /// How long the poll may sleep before the nearest deadline; `None` if there is none.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(now))
    }

    /// The next deadline that has passed, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Deadline> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, _, deadline))| deadline)
            }
            _ => None,
        }
    }

    /// Number of pending deadlines.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no deadline is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_and_sets_the_timeout() {
        let now = Instant::now();
        let mut timers = Timers::default();
        timers.add(now + Duration::from_millis(30), Deadline::Command(3));
        timers.add(now + Duration::from_millis(10), Deadline::Handshake(1));
        assert_eq!(timers.timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(timers.pop_due(now), None);
        let later = now + Duration::from_millis(40);
        assert_eq!(timers.pop_due(later), Some(Deadline::Handshake(1)));
        assert_eq!(timers.pop_due(later), Some(Deadline::Command(3)));
        assert!(timers.is_empty());
    }

    #[test]
    fn a_backoff_doubles_to_its_cap_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.fail(), Some(Duration::from_millis(10)));
        assert!(backoff.waiting());
        assert_eq!(backoff.fail(), None, "one retry at a time");
        let mut waits = Vec::new();
        for _ in 0..9 {
            backoff.retry_due();
            waits.push(backoff.fail().unwrap().as_millis());
        }
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.retry_due();
        backoff.succeeded();
        assert_eq!(backoff.fail(), Some(Duration::from_millis(10)));
    }
}
