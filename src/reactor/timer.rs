//! Deadlines: the poll wakes at the nearest one.
//!
//! Commands set a deadline with an id of their choosing and get
//! `Event::Timer(id)` when it passes. The reactor keeps its own deadlines in
//! the same heap, each a [`Deadline`] variant naming the connection it is
//! for, so a command's ids are all its own. There is no cancel: whoever
//! changed its mind ignores the deadline when it fires (a stale deadline is
//! cheap, and each handler below checks that its reason still holds).
//!
//! **To the microsecond.** mio takes the poll's timeout in whole
//! milliseconds, rounded up, so a deadline polled for that way passes up to
//! a millisecond late — a load generator's schedule would measure its own
//! timer. So the nearest deadline is also set, as an absolute time on the
//! monotonic clock, on a timerfd registered in the same poll: the kernel's
//! high-resolution timer makes it readable when the deadline is due, and
//! that wakes the poll. The millisecond timeout stays as the backstop
//! (where no timerfd can be made, it is all there is). Deadlines still pass
//! in one place only, `Reactor::turn`, after the events of the poll.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;

use super::token::Source;

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
    /// A second of refusals at accept is over: log how many were not logged.
    RefusalSummary,
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

/// The pending deadlines, nearest first, and the clock that wakes the poll for them.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Deadline)>>,
    sequence: u64,
    /// The timerfd; `None` where none could be made (then the poll's
    /// millisecond timeout alone wakes the loop).
    clock: Option<Clock>,
}

/// A timerfd in the poll, and what it is set to.
struct Clock {
    fd: TimerFd,
    /// The same moment on `Instant`'s clock and as CLOCK_MONOTONIC (which
    /// is what `Instant` reads on Linux): turns a deadline into the
    /// absolute time the timerfd takes.
    anchor: (Instant, TimeSpec),
    /// The deadline the timerfd is set for, until it fires or is moved.
    set_for: Option<Instant>,
}

impl Clock {
    /// Makes a non-blocking timerfd on CLOCK_MONOTONIC and registers it.
    fn open(registry: &Registry) -> io::Result<Clock> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let anchor = (
            Instant::now(),
            clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?,
        );
        registry.register(
            &mut SourceFd(&fd.as_fd().as_raw_fd()),
            Source::Timer.token(),
            Interest::READABLE,
        )?;
        Ok(Clock {
            fd,
            anchor,
            set_for: None,
        })
    }

    /// Sets the timerfd to fire at `at`.
    fn set(&mut self, at: Instant) {
        let (instant, mono) = self.anchor;
        let when = mono + TimeSpec::from_duration(at.saturating_duration_since(instant));
        match self.fd.set(
            Expiration::OneShot(when),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        ) {
            Ok(()) => self.set_for = Some(at),
            Err(e) => log::debug!("timerfd_settime: {e}; deadlines fall back to the poll timeout"),
        }
    }
}

impl Timers {
    /// No deadlines yet, and a timerfd registered in the poll of `registry`
    /// (if the system gives one).
    pub fn new(registry: &Registry) -> Timers {
        let clock = Clock::open(registry)
            .map_err(|e| log::debug!("no timerfd ({e}): deadlines to the millisecond"))
            .ok();
        Timers {
            clock,
            ..Timers::default()
        }
    }

    /// The poll's timeout for the nearest deadline, having set the timerfd
    /// to wake it right then: zero when a deadline is due, `None` when none
    /// is pending. (mio rounds the timeout up to whole milliseconds; the
    /// timerfd, when there is one, fires first.)
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        let Reverse((at, _, _)) = *self.heap.peek()?;
        let left = at.saturating_duration_since(now);
        if let Some(clock) = self.clock.as_mut().filter(|_| !left.is_zero()) {
            // Move it only if it would fire late, or has fired already.
            if clock.set_for.map_or(true, |set| set > at || set <= now) {
                clock.set(at);
            }
        }
        Some(left)
    }

    /// The timerfd fired: takes its expiry count, so its next expiry is a
    /// new edge for the poll.
    pub fn on_clock(&mut self) {
        if let Some(clock) = self.clock.as_mut() {
            // Non-blocking: EAGAIN (a stale event) is as good as a read.
            let _ = clock.fd.wait();
        }
    }

    /// Adds a deadline. Ties fire in the order they were set.
    pub fn add(&mut self, at: Instant, deadline: Deadline) {
        self.sequence += 1;
        self.heap.push(Reverse((at, self.sequence, deadline)));
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
        assert_eq!(timers.poll_timeout(now), Some(Duration::from_millis(10)));
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

    #[test]
    fn the_timerfd_wakes_the_poll_for_a_deadline_under_a_millisecond_ahead() {
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(8);
        let mut timers = Timers::new(poll.registry());
        let now = Instant::now();
        timers.add(now + Duration::from_micros(300), Deadline::Command(7));
        let timeout = timers.poll_timeout(now).unwrap();
        assert!(timeout <= Duration::from_micros(300), "{timeout:?}");
        // Not the timeout (mio would round it up to 1 ms), but the clock's
        // own event must end this poll; 5 s is only the test's guard.
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let woke: Vec<Source> = events.iter().map(|e| Source::from(e.token())).collect();
        assert_eq!(
            woke,
            [Source::Timer],
            "no event from the deadline's timerfd"
        );
        timers.on_clock();
        assert_eq!(timers.pop_due(Instant::now()), Some(Deadline::Command(7)));
        // Read, the timerfd raises no second event for the same expiry.
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        assert_eq!(timers.poll_timeout(Instant::now()), None);
    }
}
