//! The UDP stream's text and what a receiver measures of it: the streamer's
//! `Number I` messages, exact sequence accounting, and jitter.
//!
//! It exists so that `udp-sink` (and the load generator's UDP mode) count
//! the same way, and so the counting can be tested with numbers alone. No
//! I/O and no clocks here: callers pass send and arrival times in.
//!
//! # Writing messages without formatting them
//!
//! A sender writes millions of messages a second, so it does not format
//! them: a [`Template`] holds `[TIMESTAMP] NAME:\n\tNumber ` once, its
//! timestamp patched in place per batch ([`Stamp`] re-derives the date and
//! time only when the second changes), and the number is an ASCII counter
//! incremented in place. Each message is then a copy of the head, the
//! digits and the padding. The timestamp always carries its six digits of
//! microseconds (Python's `isoformat` drops them when they are zero), so all
//! messages with as many digits have the same length — which is what lets
//! them leave in segmented runs.
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

/// Bytes of a stream message's timestamp: `YYYY-MM-DDTHH:MM:SS.ffffff`.
pub const STAMP_LEN: usize = 26;

/// Writes chat timestamps (local time, always with microseconds), deriving
/// the date and time of day only when the second changes.
#[derive(Debug, Default)]
pub struct Stamp {
    /// The Unix second last derived and its `YYYY-MM-DDTHH:MM:SS`.
    second: Option<(i64, [u8; 19])>,
}

impl Stamp {
    /// The timestamp of `unix_micros` (microseconds since the Unix epoch).
    pub fn at(&mut self, unix_micros: i64) -> [u8; STAMP_LEN] {
        use chrono::TimeZone as _;
        let (secs, micros) = (
            unix_micros.div_euclid(1_000_000),
            unix_micros.rem_euclid(1_000_000),
        );
        let whole = match self.second {
            Some((second, text)) if second == secs => text,
            _ => {
                let mut text = [b'0'; 19];
                if let Some(local) = chrono::Local.timestamp_opt(secs, 0).earliest() {
                    let formatted = local.format("%Y-%m-%dT%H:%M:%S").to_string();
                    if formatted.len() == 19 {
                        text.copy_from_slice(formatted.as_bytes());
                    }
                }
                self.second = Some((secs, text));
                text
            }
        };
        let mut out = [0u8; STAMP_LEN];
        out[..19].copy_from_slice(&whole);
        out[19] = b'.';
        let mut rest = micros as u32;
        for digit in out[20..].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out
    }
}

/// A decimal number kept as ASCII digits and incremented in place.
#[derive(Debug, Clone, Copy)]
struct Digits {
    /// The digits, right-aligned: `buf[start..]`.
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn new(n: u64) -> Digits {
        let mut buf = [b'0'; 20];
        let mut start = buf.len();
        let mut rest = n;
        loop {
            start -= 1;
            buf[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        Digits { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn increment(&mut self) {
        for i in (self.start..self.buf.len()).rev() {
            if self.buf[i] == b'9' {
                self.buf[i] = b'0';
            } else {
                self.buf[i] += 1;
                return;
            }
        }
        // All nines: one digit more (u64::MAX has 20 digits; never reached in a stream).
        if self.start > 0 {
            self.start -= 1;
            self.buf[self.start] = b'1';
        }
    }
}

/// The stream's messages, written one after another from a prepared head:
/// `[TIMESTAMP] NAME:\n\tNumber I[ padding]`, the same bytes as
/// `chat_msg::format_at(time, NAME, &text(I, size))` with a six-digit
/// fraction (see the module docs).
#[derive(Debug, Clone)]
pub struct Template {
    /// `[TIMESTAMP] NAME:\n\tNumber `; the timestamp sits at bytes 1..27.
    head: Vec<u8>,
    size: usize,
    number: Digits,
}

impl Template {
    /// A template for sender `name`, TEXT padded to `size`, starting at number `first`.
    pub fn new(name: &str, size: usize, first: u64) -> Template {
        let mut head = Vec::with_capacity(STAMP_LEN + name.len() + 16);
        head.push(b'[');
        head.extend_from_slice(&[b'0'; STAMP_LEN]);
        head.extend_from_slice(b"] ");
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b":\n\t");
        head.extend_from_slice(PREFIX.as_bytes());
        Template {
            head,
            size,
            number: Digits::new(first),
        }
    }

    /// Sets the timestamp of the messages written from now on.
    pub fn set_stamp(&mut self, stamp: &[u8; STAMP_LEN]) {
        self.head[1..1 + STAMP_LEN].copy_from_slice(stamp);
    }

    /// Bytes of the next message.
    pub fn next_len(&self) -> usize {
        let text = PREFIX.len() + self.number.as_bytes().len();
        self.head.len() - PREFIX.len() + text.max(self.size)
    }

    /// Appends the next message to `out` and moves on to the next number.
    pub fn write_next(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        let digits = self.number.as_bytes();
        out.extend_from_slice(digits);
        let text = PREFIX.len() + digits.len();
        if text < self.size {
            out.push(b' ');
            out.resize(out.len() + self.size - text - 1, b'.');
        }
        self.number.increment();
    }
}

/// Where the stream message at the start of `bytes` ends: after
/// `[TIMESTAMP] NAME:\n\tNumber I` and its padding (a space, then dots).
/// `None` when `bytes` does not start with a stream message.
pub fn message_end(bytes: &[u8]) -> Option<usize> {
    let find = |from: usize, needle: &[u8]| {
        bytes
            .get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|at| from + at)
    };
    if bytes.first() != Some(&b'[') {
        return None;
    }
    let name = find(1, b"] ")? + 2;
    let mut at = find(name, b":\n\t")? + 3;
    at += PREFIX.len();
    if bytes.get(at - PREFIX.len()..at)? != PREFIX.as_bytes() {
        return None;
    }
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    at += digits;
    if bytes.get(at) == Some(&b' ') {
        at += 1 + bytes[at + 1..].iter().take_while(|b| **b == b'.').count();
    }
    Some(at)
}

/// The size of the messages in `bytes` when it holds two or more stream
/// messages end to end, every one but the last of the first one's size: a
/// run the kernel coalesced (`UDP_GRO`) and handed over without its segment
/// size. `None` for one message, or for anything else.
pub fn run_size(bytes: &[u8]) -> Option<usize> {
    let size = message_end(bytes)?;
    if size >= bytes.len() {
        return None;
    }
    bytes
        .chunks(size)
        .all(|message| message_end(message) == Some(message.len()))
        .then_some(size)
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
    fn the_template_writes_what_the_formatter_writes() {
        use chrono::NaiveDate;
        let time = NaiveDate::from_ymd_opt(2024, 2, 3)
            .unwrap()
            .and_hms_micro_opt(12, 15, 0, 250)
            .unwrap();
        let stamp: [u8; STAMP_LEN] = crate::chat_msg::isoformat(&time)
            .as_bytes()
            .try_into()
            .unwrap();
        for size in [0, 9, 12, 30] {
            // Across digit boundaries: 9 -> 10, 99 -> 100, 999 -> 1000.
            for first in [0, 95, 995, 99_999_990] {
                let mut template = Template::new("streamer", size, first);
                template.set_stamp(&stamp);
                for i in first..first + 12 {
                    let expected = crate::chat_msg::format_at(&time, "streamer", &text(i, size));
                    assert_eq!(
                        template.next_len(),
                        expected.len(),
                        "number {i}, size {size}"
                    );
                    let mut out = vec![b'x'];
                    template.write_next(&mut out);
                    assert_eq!(&out[1..], expected.as_bytes(), "number {i}, size {size}");
                }
            }
        }
    }

    #[test]
    fn a_coalesced_run_is_recognised_by_its_first_message() {
        let mut template = Template::new("s", 20, 8);
        template.set_stamp(b"2024-02-03T12:15:00.000250");
        let mut run = Vec::new();
        for _ in 0..5 {
            template.write_next(&mut run);
        }
        let one = run.len() / 5;
        assert_eq!(message_end(&run), Some(one));
        assert_eq!(run_size(&run), Some(one));
        assert_eq!(run_size(&run[..one]), None, "a single message is no run");
        assert_eq!(run_size(&run[..2 * one + 7]), None, "a torn last message");
        // Unpadded numbers: 9 and 10 differ in length, so they are never one run.
        let mut plain = Template::new("s", 0, 9);
        let mut two = Vec::new();
        plain.write_next(&mut two);
        plain.write_next(&mut two);
        assert_eq!(run_size(&two), None);
        assert_eq!(run_size(b"[x] s:\n\tNumber 1[x] s:\n\tNumber 2"), Some(16));
        assert_eq!(run_size(b"not a stream at all"), None);
        assert_eq!(message_end(b"[x] s:\n\tNumber "), None);
    }

    #[test]
    fn stamps_always_carry_six_digits_of_microseconds() {
        let mut stamp = Stamp::default();
        let base = 1_700_000_000_000_000i64;
        let a = stamp.at(base);
        let b = stamp.at(base + 250);
        let c = stamp.at(base + 1_000_000);
        let text = |s: &[u8]| String::from_utf8(s.to_vec()).unwrap();
        assert!(text(&a).ends_with(".000000"), "{}", text(&a));
        assert!(text(&b).ends_with(".000250"), "{}", text(&b));
        assert_eq!(a[..19], b[..19]);
        assert_ne!(a[..19], c[..19]);
        let parsed = crate::chat_msg::parse_timestamp(&text(&b)).unwrap();
        assert_eq!(parsed.timestamp_micros(), base + 250);
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
