//! Log lines for things that can happen thousands of times a second (a
//! refused connection, a client closed, a datagram dropped): at most one line
//! a second per cause, and the count of those not logged.
//!
//! A [`RateLog`] is one cause. The first event logs at once, in full; the
//! events that follow within the same second are only counted. When that
//! second is over, the owner asks [`RateLog::summary`] (from a deadline it set
//! when [`Note::Counted`] first came back) and logs one line with the count,
//! and the next second starts. So a flood of a million refusals is two lines a
//! second per cause, and the counts still add up to what happened.
//!
//! *Invariant:* no I/O, no allocation: the caller does the logging, with the
//! words it knows.

use std::time::{Duration, Instant};

/// How often a cause may log: once per this window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// What [`RateLog::note`] decided about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// Log this one now, in full.
    Log,
    /// Counted, not logged; the first of its window: the caller should come
    /// back at the instant given, through [`RateLog::summary`].
    CountedFirst(Instant),
    /// Counted, not logged; a summary is already due.
    Counted,
}

/// One cause of log lines, limited to one line per [`WINDOW`] with counts.
#[derive(Debug, Clone, Default)]
pub struct RateLog {
    /// When the current window started (the last line logged for this cause).
    since: Option<Instant>,
    /// Events counted and not yet logged in this window.
    pending: u64,
    /// Every event ever noted.
    total: u64,
}

impl RateLog {
    /// Notes one event at `now`: whether to log it now or count it.
    pub fn note(&mut self, now: Instant) -> Note {
        self.total += 1;
        match self.since {
            Some(since) if now.saturating_duration_since(since) < WINDOW => {
                self.pending += 1;
                if self.pending == 1 {
                    Note::CountedFirst(since + WINDOW)
                } else {
                    Note::Counted
                }
            }
            _ => {
                // A summary of the last window, had nobody asked for it, is
                // folded into the next one; the count is never lost.
                if self.pending == 0 {
                    self.since = Some(now);
                    Note::Log
                } else {
                    self.pending += 1;
                    Note::Counted
                }
            }
        }
    }

    /// At the end of a window: how many events were counted and not logged,
    /// if any (the caller logs them as one line); a new window starts.
    pub fn summary(&mut self, now: Instant) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        let since = self.since.unwrap_or(now);
        if now.saturating_duration_since(since) < WINDOW {
            return None;
        }
        self.since = Some(now);
        Some(std::mem::take(&mut self.pending))
    }

    /// Events counted and not yet logged.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Every event noted so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_every_event_counted() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut log = RateLog::default();
        assert_eq!(log.note(ms(0)), Note::Log);
        assert_eq!(log.note(ms(10)), Note::CountedFirst(ms(1000)));
        assert_eq!(log.note(ms(20)), Note::Counted);
        assert_eq!(log.summary(ms(999)), None, "not before the second is over");
        assert_eq!(log.summary(ms(1000)), Some(2));
        assert_eq!(log.summary(ms(1001)), None, "nothing new to say");
        // Still within the new window that the summary opened.
        assert_eq!(log.note(ms(1500)), Note::CountedFirst(ms(2000)));
        assert_eq!(log.summary(ms(2000)), Some(1));
        // Quiet for long enough: the next event logs at once.
        assert_eq!(log.note(ms(5000)), Note::Log);
        assert_eq!(log.total(), 5);
    }

    #[test]
    fn a_summary_nobody_asked_for_is_not_lost() {
        let start = Instant::now();
        let mut log = RateLog::default();
        assert_eq!(log.note(start), Note::Log);
        assert!(matches!(
            log.note(start + Duration::from_millis(1)),
            Note::CountedFirst(_)
        ));
        // The owner never came back; the next event is counted with it.
        assert_eq!(log.note(start + Duration::from_secs(3)), Note::Counted);
        assert_eq!(log.summary(start + Duration::from_secs(3)), Some(2));
    }
}
