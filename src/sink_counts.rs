//! What a receiver counts of a `udp-stream` — received, lost (and how much
//! of that its own full receive buffer dropped), reordered, duplicated,
//! jitter, expected — and the names it reports them by. `udp-sink` and the
//! sink built into `stress udp` both count with [`SinkCounts`] and report
//! through [`Figures::each`], so a count has one name in both JSON lines.
//!
//! The counting itself is [`Sequences`] (exact, bounded) and [`Jitter`]
//! (RFC 3550, from each message's own timestamp). No I/O here.

use crate::chat_msg;
use crate::stream::{self, Arrival, Jitter, Sequences};

/// Turns chat timestamps into microseconds since the epoch, parsing the
/// date and time once per second of timestamps rather than once per message.
#[derive(Debug, Default)]
struct Timestamps {
    /// `YYYY-MM-DDTHH:MM:SS` last parsed, and its microseconds since the epoch.
    second: Option<(String, i64)>,
}

impl Timestamps {
    fn micros(&mut self, timestamp: &str) -> Option<i64> {
        let whole = timestamp.get(..19)?;
        let fraction = timestamp.get(19..)?;
        let fraction_us = match fraction.strip_prefix('.') {
            None if fraction.is_empty() => 0,
            Some(digits) if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<i64>().ok()?
            }
            _ => return None,
        };
        let base = match &self.second {
            Some((text, base)) if text == whole => *base,
            _ => {
                let base = chat_msg::parse_timestamp(whole)?.timestamp_micros();
                self.second = Some((whole.to_string(), base));
                base
            }
        };
        Some(base + fraction_us)
    }
}

/// Everything a sink counts of the datagrams it receives.
#[derive(Debug, Default)]
pub struct SinkCounts {
    /// Message numbers: received, unique, lost, reordered, duplicated.
    pub seq: Sequences,
    jitter: Jitter,
    timestamps: Timestamps,
    /// Datagrams that are not `Number I` chat messages.
    not_stream: u64,
}

impl SinkCounts {
    /// Counts for a stream of `count` messages (numbers 0 to count - 1), or,
    /// without a count, up to the highest number seen.
    pub fn new(count: Option<u64>) -> SinkCounts {
        SinkCounts {
            seq: match count {
                Some(count) => Sequences::expecting(count),
                None => Sequences::new(),
            },
            ..SinkCounts::default()
        }
    }

    /// Counts one datagram that arrived at `arrived_us` (microseconds since the epoch).
    pub fn count(&mut self, bytes: &[u8], arrived_us: i64) {
        let parsed = std::str::from_utf8(bytes)
            .ok()
            .and_then(chat_msg::parse)
            .and_then(|m| Some((stream::parse_number(m.text)?, m.timestamp)));
        let Some((number, timestamp)) = parsed else {
            self.not_stream += 1;
            return;
        };
        match self.seq.record(number) {
            Arrival::InOrder | Arrival::Reordered { .. } => {
                if let Some(sent_us) = self.timestamps.micros(timestamp) {
                    self.jitter.add(sent_us, arrived_us);
                }
            }
            Arrival::Duplicate | Arrival::OutOfRange => {}
        }
    }

    /// RFC 3550 interarrival jitter so far, milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter.millis()
    }

    /// The figures to report. `expected` overrides the numbers that should
    /// have arrived (`stress udp`: those it sent, fewer than `--count` when
    /// interrupted); `rcvbuf_drops` is the kernel's drop count for the
    /// socket, if it could be read.
    pub fn figures(&self, expected: Option<u64>, rcvbuf_drops: Option<u64>) -> Figures {
        let expected = expected.unwrap_or_else(|| self.seq.expected());
        let lost = expected.saturating_sub(self.seq.unique());
        Figures {
            received: self.seq.received(),
            unique: self.seq.unique(),
            expected,
            highest: self.seq.highest(),
            lost,
            lost_to_rcvbuf: lost.min(rcvbuf_drops.unwrap_or(0)),
            rcvbuf_drops,
            reordered: self.seq.reordered(),
            max_reorder_distance: self.seq.max_reorder_distance(),
            duplicated: self.seq.duplicated(),
            not_stream: self.not_stream,
            out_of_range: self.seq.out_of_range(),
            jitter_ms: self.jitter.millis(),
            jitter_samples: self.jitter.samples(),
        }
    }
}

/// A sink's counts at one moment; each is reported under the name of its
/// field (see [`Figures::each`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Stream messages that arrived (duplicates included).
    pub received: u64,
    /// Distinct message numbers that arrived.
    pub unique: u64,
    /// Numbers that should have arrived.
    pub expected: u64,
    /// The highest number seen.
    pub highest: Option<u64>,
    /// Expected numbers that never arrived.
    pub lost: u64,
    /// Of the lost messages, how many this socket's full receive buffer
    /// accounts for: `min(lost, rcvbuf_drops)`.
    pub lost_to_rcvbuf: u64,
    /// Datagrams the kernel dropped for this socket, its receive buffer
    /// being full; `None` when the count could not be read.
    pub rcvbuf_drops: Option<u64>,
    /// Messages that arrived after a higher number.
    pub reordered: u64,
    /// The largest such distance.
    pub max_reorder_distance: u64,
    /// Arrivals of a number that had already arrived.
    pub duplicated: u64,
    /// Datagrams that were not `Number I` chat messages.
    pub not_stream: u64,
    /// Numbers at or above the expected count (or the tracking bound), not
    /// counted otherwise.
    pub out_of_range: u64,
    /// RFC 3550 interarrival jitter, milliseconds.
    pub jitter_ms: f64,
    /// Messages the jitter was computed from.
    pub jitter_samples: u64,
}

/// One reported figure's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Figure {
    /// A count.
    Count(u64),
    /// A count that may be unknown (`null`).
    Maybe(Option<u64>),
    /// Milliseconds, to the nanosecond.
    Millis(f64),
}

impl Figures {
    /// Every figure with its name, in report order: the one vocabulary of
    /// both sinks' JSON.
    pub fn each(&self, mut put: impl FnMut(&'static str, Figure)) {
        use Figure::{Count, Maybe, Millis};
        put("received", Count(self.received));
        put("unique", Count(self.unique));
        put("expected", Count(self.expected));
        put("highest", Maybe(self.highest));
        put("lost", Count(self.lost));
        put("lost_to_rcvbuf", Count(self.lost_to_rcvbuf));
        put("rcvbuf_drops", Maybe(self.rcvbuf_drops));
        put("reordered", Count(self.reordered));
        put("max_reorder_distance", Count(self.max_reorder_distance));
        put("duplicated", Count(self.duplicated));
        put("not_stream", Count(self.not_stream));
        put("out_of_range", Count(self.out_of_range));
        put("jitter_ms", Millis(self.jitter_ms));
        put("jitter_samples", Count(self.jitter_samples));
    }

    /// The figures as JSON members, `"name":value,...` (no braces).
    pub fn json_members(&self) -> String {
        let mut out = String::new();
        self.each(|name, value| {
            if !out.is_empty() {
                out.push(',');
            }
            let value = match value {
                Figure::Count(n) | Figure::Maybe(Some(n)) => n.to_string(),
                Figure::Maybe(None) => "null".to_string(),
                Figure::Millis(ms) => format!("{ms:.6}"),
            };
            out.push_str(&format!("\"{name}\":{value}"));
        });
        out
    }

    /// One line for people: `received 10,000 (unique 10,000), lost 0 of
    /// 10,000 expected (0 to the receive buffer), ...`, with `count` to
    /// format counts.
    pub fn human(&self, count: impl Fn(u64) -> String) -> String {
        format!(
            "received {} (unique {}), lost {} of {} expected ({} to this socket's full receive \
             buffer), reordered {} (largest distance {}), duplicated {}, jitter {:.3} ms{}",
            count(self.received),
            count(self.unique),
            count(self.lost),
            count(self.expected),
            count(self.lost_to_rcvbuf),
            count(self.reordered),
            count(self.max_reorder_distance),
            count(self.duplicated),
            self.jitter_ms,
            if self.not_stream > 0 {
                format!(", not in the stream format {}", count(self.not_stream))
            } else {
                String::new()
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_parsed_once_per_second() {
        let mut ts = Timestamps::default();
        let a = ts.micros("2024-02-03T12:15:00.000250").unwrap();
        let b = ts.micros("2024-02-03T12:15:00.500000").unwrap();
        let c = ts.micros("2024-02-03T12:15:01").unwrap();
        assert_eq!(b - a, 499_750);
        assert_eq!(c - a, 999_750);
        assert!(ts.micros("2024-02-03T12:15:01.5").is_none());
        assert!(ts.micros("garbage").is_none());
    }

    #[test]
    fn lost_is_counted_against_what_was_expected() {
        let mut counts = SinkCounts::new(Some(10));
        for i in [0u64, 1, 3, 2, 3] {
            let message = chat_msg::format_now("x", &stream::text(i, 0));
            counts.count(message.as_bytes(), 0);
        }
        counts.count(b"not ours", 0);
        let figures = counts.figures(None, Some(2));
        assert_eq!(
            (
                figures.received,
                figures.unique,
                figures.expected,
                figures.lost
            ),
            (5, 4, 10, 6)
        );
        assert_eq!((figures.lost_to_rcvbuf, figures.duplicated), (2, 1));
        assert_eq!((figures.reordered, figures.not_stream), (1, 1));
        assert_eq!(counts.figures(Some(4), None).lost, 0);
        let json = figures.json_members();
        assert!(json.starts_with("\"received\":5,\"unique\":4,"), "{json}");
        assert!(json.contains("\"rcvbuf_drops\":2"), "{json}");
    }
}
