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
    /// Connection KEY, closing, has had its grace: close it now.
    CloseGrace(usize),
    /// A second of refusals at accept is over: log how many were not logged.
    RefusalSummary,
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
}
