//! The UDP stream's text and what a receiver measures of it: the streamer's
//! `Number I` messages, exact sequence accounting, and jitter.
//!
//! It exists so that `udp-sink` (and the load generator's UDP mode) count
//! the same way, and so the counting can be tested with numbers alone. No
//! I/O and no clocks here: callers pass arrival times in.
//!
//! # Counting rules
//!
//! For each datagram whose TEXT is `Number I`:
//! * **received** counts it; **unique** counts it the first time I is seen,
//!   **duplicated** every later time (so received = unique + duplicated);
//! * **reordered** counts a first arrival of I after a higher number already
//!   arrived; its *distance* is how far below the highest number it was;
//! * **lost** is how many numbers from 0 up to the highest seen (or up to an
//!   expected count) never arrived. A late arrival turns a "lost" number back
//!   into a received one, so lost can go down while a run goes on.
//!
//! Every count is exact and none can go negative: lost = expected − unique,
//! and unique never exceeds expected because each number is counted once.
//!
//! # The bound
//!
//! Seen numbers are kept in a bitmap, one bit per number from 0 to the
//! highest seen, grown on demand. Numbers from [`MAX_TRACKED`] up (100
//! million: a 12.5 MB bitmap at most) are not tracked and are counted apart
//! as out of range, so a stray datagram cannot make the receiver allocate
//! without limit.

/// Numbers from here up are not tracked (see the module docs): a stream of
/// up to 100 million messages is counted exactly.
pub const MAX_TRACKED: u64 = 100_000_000;

const PREFIX: &str = "Number ";

/// The TEXT of stream message `i`: `Number I`, padded to `size` bytes (when
/// longer) with a space and then dots, so it still reads as the number.
pub fn text(i: u64, size: usize) -> String {
    let mut text = String::new();
    write_text(&mut text, i, size);
    text
}

/// Appends the TEXT of stream message `i` (see [`text`]) to `out`, `size`
/// counting from where it starts; for senders that reuse one buffer.
pub fn write_text(out: &mut String, i: u64, size: usize) {
    use std::fmt::Write as _;
    let start = out.len();
    let _ = write!(out, "{PREFIX}{i}");
    if out.len() - start < size {
        out.push(' ');
        while out.len() - start < size {
            out.push('.');
        }
    }
}

/// The number I of a stream message's TEXT (`Number I`, maybe padded after
/// a space); `None` for any other text.
pub fn parse_number(text: &str) -> Option<u64> {
    let rest = text.strip_prefix(PREFIX)?;
    let digits_end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    if digits_end == 0 || !(digits_end == rest.len() || rest.as_bytes()[digits_end] == b' ') {
        return None;
    }
    rest[..digits_end].parse().ok()
}

/// What one arrival was, as [`Sequences::record`] classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival, in order (higher than everything before it).
    InOrder,
    /// First arrival, after a higher number: `distance` below the highest.
    Reordered {
        /// Highest number seen before it, minus its own.
        distance: u64,
    },
    /// The number had already arrived.
    Duplicate,
    /// At or above the tracked range; not counted anywhere else.
    OutOfRange,
}

/// Exact accounting of a numbered stream: a bitmap of the numbers seen.
#[derive(Debug, Clone, Default)]
pub struct Sequences {
    /// Bit `i` is set once number `i` arrived. Grows to cover `highest`.
    seen: Vec<u64>,
    /// Numbers from here up are out of range: [`MAX_TRACKED`], or a lower
    /// expected count.
    limit: Option<u64>,
    highest: Option<u64>,
    received: u64,
    unique: u64,
    reordered: u64,
    max_reorder_distance: u64,
    out_of_range: u64,
}

impl Sequences {
    /// An empty tracker for numbers below [`MAX_TRACKED`].
    pub fn new() -> Sequences {
        Sequences::default()
    }

    /// An empty tracker for a stream of `count` messages (numbers
    /// `0..count`): numbers not seen below `count` are lost even when no
    /// higher one arrived.
    pub fn expecting(count: u64) -> Sequences {
        Sequences {
            limit: Some(count.min(MAX_TRACKED)),
            ..Sequences::default()
        }
    }

    fn limit(&self) -> u64 {
        self.limit.unwrap_or(MAX_TRACKED)
    }

    /// Counts one arrival of number `i`.
    pub fn record(&mut self, i: u64) -> Arrival {
        if i >= self.limit() {
            self.out_of_range += 1;
            return Arrival::OutOfRange;
        }
        self.received += 1;
        let word = (i / 64) as usize;
        let bit = 1u64 << (i % 64);
        if word >= self.seen.len() {
            // Grow geometrically, never past the limit.
            let needed = word + 1;
            let cap = (self.limit() as usize).div_ceil(64);
            let grown = needed.max(self.seen.len() * 2).min(cap).max(needed);
            self.seen.resize(grown, 0);
        }
        if self.seen[word] & bit != 0 {
            return Arrival::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        match self.highest {
            Some(highest) if i < highest => {
                let distance = highest - i;
                self.reordered += 1;
                self.max_reorder_distance = self.max_reorder_distance.max(distance);
                Arrival::Reordered { distance }
            }
            _ => {
                self.highest = Some(i);
                Arrival::InOrder
            }
        }
    }

    /// True when number `i` has arrived.
    pub fn has(&self, i: u64) -> bool {
        let word = (i / 64) as usize;
        word < self.seen.len() && self.seen[word] & (1 << (i % 64)) != 0
    }

    /// Arrivals counted (in range), duplicates included.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Distinct numbers that arrived.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Arrivals of a number that had already arrived.
    pub fn duplicated(&self) -> u64 {
        self.received - self.unique
    }

    /// First arrivals that came after a higher number.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// The largest distance of a reordered arrival below the highest number
    /// seen before it (0 when nothing was reordered).
    pub fn max_reorder_distance(&self) -> u64 {
        self.max_reorder_distance
    }

    /// The highest number seen, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// How many numbers the stream should have delivered by now: the
    /// expected count if one was given, else the highest seen plus one.
    pub fn expected(&self) -> u64 {
        match self.limit {
            Some(count) => count,
            None => self.highest.map_or(0, |h| h + 1),
        }
    }

    /// Numbers below [`expected`](Sequences::expected) that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected() - self.unique
    }

    /// Arrivals at or above the tracked range, not counted otherwise.
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range
    }

    /// True when an expected count was given and every number arrived.
    pub fn complete(&self) -> bool {
        self.limit.is_some() && self.lost() == 0
    }
}

/// Interarrival jitter as RFC 3550 (section 6.4.1) defines it, from each
/// message's send timestamp and its arrival time: the running mean of the
/// change in transit time between consecutive messages, smoothed by 1/16.
///
/// Only differences of transit times count, so a constant offset between
/// the sender's and the receiver's clocks cancels out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Jitter {
    /// Transit time of the previous message, in microseconds.
    last_transit: Option<i64>,
    /// The estimate, in microseconds.
    jitter: f64,
    samples: u64,
}

impl Jitter {
    /// Adds one message: sent at `sent_us`, arrived at `arrived_us`
    /// (microseconds on any clocks that tick at the same rate).
    pub fn add(&mut self, sent_us: i64, arrived_us: i64) {
        let transit = arrived_us - sent_us;
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        self.samples += 1;
    }

    /// The current estimate in milliseconds.
    pub fn millis(&self) -> f64 {
        self.jitter / 1000.0
    }

    /// Messages that contributed.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds numbers in order of arrival and returns the tracker.
    fn run(arrivals: &[u64]) -> Sequences {
        let mut seq = Sequences::new();
        for &i in arrivals {
            seq.record(i);
        }
        seq
    }

    #[test]
    fn text_pads_after_a_space_and_parses_back() {
        assert_eq!(text(7, 0), "Number 7");
        assert_eq!(text(7, 9), "Number 7 ");
        assert_eq!(text(7, 12), "Number 7 ...");
        assert_eq!(text(123, 12).len(), 12);
        for i in [0, 7, 123, 99_999_999] {
            for size in [0, 5, 20, 1000] {
                assert_eq!(parse_number(&text(i, size)), Some(i));
            }
        }
        assert_eq!(parse_number("Number "), None);
        assert_eq!(parse_number("Number 12x"), None);
        assert_eq!(parse_number("number 12"), None);
        assert_eq!(parse_number("Number -1"), None);
        assert_eq!(parse_number("Number 99999999999999999999999"), None);
    }

    #[test]
    fn an_orderly_stream_has_nothing_to_report() {
        let seq = run(&(0..1000).collect::<Vec<_>>());
        assert_eq!(seq.received(), 1000);
        assert_eq!(seq.unique(), 1000);
        assert_eq!((seq.lost(), seq.reordered(), seq.duplicated()), (0, 0, 0));
        assert_eq!(seq.highest(), Some(999));
    }

    #[test]
    fn counts_gaps_as_lost_until_they_arrive() {
        let mut seq = run(&[0, 1, 4, 5]);
        assert_eq!(seq.lost(), 2);
        assert_eq!(seq.record(2), Arrival::Reordered { distance: 3 });
        assert_eq!(seq.lost(), 1);
        assert_eq!(seq.reordered(), 1);
        assert_eq!(seq.max_reorder_distance(), 3);
    }

    #[test]
    fn swaps_and_duplicates_are_counted_exactly() {
        // 0 1 3 2 4 4 6 5 5 7: two swaps (2 and 5 late by 1), 4 and 5 doubled.
        let seq = run(&[0, 1, 3, 2, 4, 4, 6, 5, 5, 7]);
        assert_eq!(seq.reordered(), 2);
        assert_eq!(seq.max_reorder_distance(), 1);
        assert_eq!(seq.duplicated(), 2);
        assert_eq!(seq.unique(), 8);
        assert_eq!(seq.received(), 10);
        assert_eq!(seq.lost(), 0);
    }

    #[test]
    fn a_late_duplicate_is_a_duplicate_not_a_reorder() {
        let seq = run(&[0, 1, 2, 1]);
        assert_eq!(seq.reordered(), 0);
        assert_eq!(seq.duplicated(), 1);
    }

    #[test]
    fn an_expected_count_makes_a_lost_tail_visible() {
        let mut seq = Sequences::expecting(10);
        for i in 0..7 {
            seq.record(i);
        }
        assert_eq!(seq.lost(), 3);
        assert!(!seq.complete());
        assert_eq!(seq.record(10), Arrival::OutOfRange);
        assert_eq!(seq.out_of_range(), 1);
        assert_eq!(seq.received(), 7);
        for i in 7..10 {
            seq.record(i);
        }
        assert!(seq.complete());
    }

    #[test]
    fn stays_within_its_bound() {
        let mut seq = Sequences::new();
        assert_eq!(seq.record(MAX_TRACKED), Arrival::OutOfRange);
        assert_eq!(seq.record(u64::MAX), Arrival::OutOfRange);
        assert_eq!(seq.record(MAX_TRACKED - 1), Arrival::InOrder);
        assert!(seq.has(MAX_TRACKED - 1));
        assert_eq!(seq.seen.len() as u64, MAX_TRACKED.div_ceil(64));
        assert_eq!(seq.lost(), MAX_TRACKED - 1);
        assert_eq!(seq.out_of_range(), 2);
    }

    proptest::proptest! {
        /// The bitmap agrees with a plain set-based model on any arrival
        /// order, with repeats, and no count ever goes negative.
        #[test]
        fn agrees_with_a_set_model(arrivals in proptest::collection::vec(0u64..300, 0..400)) {
            let mut seq = Sequences::new();
            let mut model = std::collections::HashSet::new();
            let (mut highest, mut reordered, mut max_distance) = (None::<u64>, 0, 0);
            for &i in &arrivals {
                seq.record(i);
                if model.insert(i) {
                    match highest {
                        Some(h) if i < h => {
                            reordered += 1;
                            max_distance = max_distance.max(h - i);
                        }
                        _ => highest = Some(i),
                    }
                }
                proptest::prop_assert_eq!(seq.received(), seq.unique() + seq.duplicated());
                proptest::prop_assert!(seq.unique() <= seq.expected());
            }
            let expected = highest.map_or(0, |h| h + 1);
            proptest::prop_assert_eq!(seq.unique(), model.len() as u64);
            proptest::prop_assert_eq!(seq.duplicated(), (arrivals.len() - model.len()) as u64);
            proptest::prop_assert_eq!(seq.lost(), expected - model.len() as u64);
            proptest::prop_assert_eq!(seq.reordered(), reordered);
            proptest::prop_assert_eq!(seq.max_reorder_distance(), max_distance);
            for i in 0..300 {
                proptest::prop_assert_eq!(seq.has(i), model.contains(&i));
            }
        }
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        let mut jitter = Jitter::default();
        // Constant transit (any clock offset): no jitter.
        for i in 0..10 {
            jitter.add(i * 1000, i * 1000 + 5_000_000);
        }
        assert_eq!(jitter.millis(), 0.0);
        // One message 1.6 ms late: J = 1600/16 = 100 us, then it decays.
        jitter.add(10_000, 10_000 + 5_000_000 + 1600);
        assert!((jitter.millis() - 0.1).abs() < 1e-9);
        assert_eq!(jitter.samples(), 11);
    }
}
