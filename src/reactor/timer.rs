//! Deadlines: the poll's timeout is the time to the nearest one.
//!
//! Commands set a deadline with an id of their choosing and get
//! `Event::Timer(id)` when it passes. There is no cancel: a command that
//! changes its mind ignores the id when it fires (a stale deadline is cheap).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The pending deadlines, nearest first.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    sequence: u64,
}

impl Timers {
    /// Adds a deadline. Ties fire in the order they were set.
    pub fn add(&mut self, at: Instant, id: u64) {
        self.sequence += 1;
        self.heap.push(Reverse((at, self.sequence, id)));
    }

    /// How long the poll may sleep before the nearest deadline; `None` if there is none.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(now))
    }

    /// The next deadline that has passed, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<u64> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, _, id))| id)
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
        timers.add(now + Duration::from_millis(30), 3);
        timers.add(now + Duration::from_millis(10), 1);
        assert_eq!(timers.timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(timers.pop_due(now), None);
        assert_eq!(timers.pop_due(now + Duration::from_millis(40)), Some(1));
        assert_eq!(timers.pop_due(now + Duration::from_millis(40)), Some(3));
        assert!(timers.is_empty());
    }
}
