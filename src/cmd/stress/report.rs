//! What a stress run tells its user: latency histograms, the progress line,
//! the human summary's formatting and the one-line JSON summary.
//!
//! Nothing here touches a socket or the clock of the run; callers hand in
//! figures and get text back. The JSON field names are a public interface
//! (`"schema": 1`, documented in the README's appendix): add fields, never
//! rename or drop one without raising the schema number.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency a histogram holds: 60 s, in nanoseconds. Longer values are
/// clamped to it (a minute-long wait is reported as "at least a minute").
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits (HdrHistogram):
/// recording is a few array operations, so it stays on the hot path.
pub struct Latency {
    hist: Histogram<u64>,
}

/// The figures a report prints of one [`Latency`], in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: u64,
}

impl Latency {
    /// An empty histogram tracking 1 ns to 60 s.
    pub fn new() -> Latency {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3)
                .expect("constant bounds are valid"),
        }
    }

    /// Records one sample (clamped to 1 ns ..= 60 s).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.clamp(1, MAX_TRACKED_NS));
    }

    /// Samples recorded so far.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1), or `None` before the first sample.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q))
    }

    /// The summary figures.
    pub fn percentiles(&self) -> Percentiles {
        if self.hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.hist.len(),
            p50: self.hist.value_at_quantile(0.50),
            p90: self.hist.value_at_quantile(0.90),
            p99: self.hist.value_at_quantile(0.99),
            p999: self.hist.value_at_quantile(0.999),
            max: self.hist.max(),
            mean: self.hist.mean() as u64,
        }
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

impl Percentiles {
    /// `p50 56 µs  p90 70 µs  p99 110 µs  p99.9 300 µs  max 1.20 ms`.
    pub fn human(&self) -> String {
        if self.count == 0 {
            return "no samples".to_string();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            duration_ns(self.p50),
            duration_ns(self.p90),
            duration_ns(self.p99),
            duration_ns(self.p999),
            duration_ns(self.max)
        )
    }

    /// Writes `{"count":..,"p50_us":..,...}` under `key`.
    pub fn json(&self, json: &mut Json, key: &str) {
        json.begin(key);
        json.u64("count", self.count);
        if self.count > 0 {
            for (name, ns) in [
                ("p50_us", self.p50),
                ("p90_us", self.p90),
                ("p99_us", self.p99),
                ("p999_us", self.p999),
                ("max_us", self.max),
                ("mean_us", self.mean),
            ] {
                json.f64(name, ns as f64 / 1e3, 1);
            }
        }
        json.end();
    }
}

/// A nanosecond count as people read it: `830 ns`, `56.8 µs`, `1.21 ms`, `1.05 s`.
pub fn duration_ns(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns_f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns_f / 1e6)
    } else {
        format!("{:.2} s", ns_f / 1e9)
    }
}

/// An integer with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with thousands separators and no decimals: `41,234`.
pub fn rate(per_s: f64) -> String {
    if per_s.is_finite() && per_s >= 0.0 {
        count(per_s.round() as u64)
    } else {
        "-".to_string()
    }
}

/// `n / secs`, or 0 for an empty window.
pub fn per_second(n: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Builds one JSON object as a single line, with fields in the order they are
/// written. Small on purpose: numbers, strings, booleans, null, nested objects.
pub struct Json {
    text: String,
    /// One entry per open object: has it got a field yet?
    has_field: Vec<bool>,
}

impl Json {
    /// Starts the top-level object.
    pub fn new() -> Json {
        Json {
            text: String::from("{"),
            has_field: vec![false],
        }
    }

    fn key(&mut self, key: &str) {
        let first = self.has_field.last_mut().expect("an object is open");
        if *first {
            self.text.push(',');
        }
        *first = true;
        push_string(&mut self.text, key);
        self.text.push(':');
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        let _ = write!(self.text, "{value}");
    }

    /// A number with at most `decimals` decimals; NaN and infinities become null.
    pub fn f64(&mut self, key: &str, value: f64, decimals: usize) {
        self.key(key);
        if value.is_finite() {
            let text = format!("{value:.decimals$}");
            // Trim "2.50" to "2.5" and "3.00" to "3": same number, shorter line.
            let text = if text.contains('.') {
                text.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                text
            };
            self.text.push_str(if text == "-0" { "0" } else { &text });
        } else {
            self.text.push_str("null");
        }
    }

    /// A number, or null when `None`.
    pub fn opt_f64(&mut self, key: &str, value: Option<f64>, decimals: usize) {
        match value {
            Some(v) => self.f64(key, v, decimals),
            None => self.null(key),
        }
    }

    /// A string field.
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        push_string(&mut self.text, value);
    }

    /// A string, or null when `None`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.text.push_str(if value { "true" } else { "false" });
    }

    /// A null field.
    pub fn null(&mut self, key: &str) {
        self.key(key);
        self.text.push_str("null");
    }

    /// Opens a nested object under `key`; close it with [`Json::end`].
    pub fn begin(&mut self, key: &str) {
        self.key(key);
        self.text.push('{');
        self.has_field.push(false);
    }

    /// Closes the innermost nested object.
    pub fn end(&mut self) {
        assert!(self.has_field.len() > 1, "end() without begin()");
        self.has_field.pop();
        self.text.push('}');
    }

    /// Closes the top-level object and returns the line (no newline).
    pub fn finish(mut self) -> String {
        assert_eq!(self.has_field.len(), 1, "an object was left open");
        self.text.push('}');
        self.text
    }
}

impl Default for Json {
    fn default() -> Json {
        Json::new()
    }
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Counts of one family of events by kind (errors, connect failures), with
/// the stable names the report and the JSON use.
#[derive(Debug, Clone)]
pub struct Tally {
    names: &'static [&'static str],
    counts: Vec<u64>,
}

impl Tally {
    /// A tally over `names`, all zero.
    pub fn new(names: &'static [&'static str]) -> Tally {
        Tally {
            names,
            counts: vec![0; names.len()],
        }
    }

    /// Adds one to kind number `kind` (an index into the names).
    pub fn add(&mut self, kind: usize) {
        self.counts[kind] += 1;
    }

    /// Adds `n` to kind number `kind`.
    pub fn add_n(&mut self, kind: usize, n: u64) {
        self.counts[kind] += n;
    }

    /// The count of kind number `kind`.
    pub fn get(&self, kind: usize) -> u64 {
        self.counts[kind]
    }

    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `3 refused, 1 timed_out` (only kinds that happened), or `none`.
    pub fn human(&self) -> String {
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(&self.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{} {}", count(*n), name.replace('_', " ")))
            .collect();
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// Writes `{"total":..,"<kind>":..,...}` under `key`, every kind present.
    pub fn json(&self, json: &mut Json, key: &str) {
        json.begin(key);
        json.u64("total", self.total());
        for (name, n) in self.names.iter().zip(&self.counts) {
            json.u64(name, *n);
        }
        json.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_line_with_escaped_strings_and_nested_objects() {
        let mut json = Json::new();
        json.u64("schema", 1);
        json.str("target", "a\"b\n");
        json.begin("latency_us");
        json.f64("p50_us", 56.80, 1);
        json.f64("bad", f64::NAN, 1);
        json.end();
        json.bool("interrupted", false);
        json.null("rate");
        assert_eq!(
            json.finish(),
            r#"{"schema":1,"target":"a\"b\n","latency_us":{"p50_us":56.8,"bad":null},"interrupted":false,"rate":null}"#
        );
    }

    #[test]
    fn numbers_read_the_way_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(duration_ns(830), "830 ns");
        assert_eq!(duration_ns(56_800), "56.8 µs");
        assert_eq!(duration_ns(1_210_000), "1.21 ms");
        assert_eq!(duration_ns(1_050_000_000), "1.05 s");
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut latency = Latency::new();
        for us in 1..=1000u64 {
            latency.record(us * 1000);
        }
        let p = latency.percentiles();
        assert_eq!(p.count, 1000);
        assert!((499_000..=501_000).contains(&p.p50), "{}", p.p50);
        assert!((989_000..=991_000).contains(&p.p99), "{}", p.p99);
        assert!((999_000..=1_001_000).contains(&p.max), "{}", p.max);
    }

    #[test]
    fn a_tally_names_only_what_happened() {
        const NAMES: &[&str] = &["refused", "timed_out"];
        let mut tally = Tally::new(NAMES);
        assert_eq!(tally.human(), "none");
        tally.add(1);
        tally.add(1);
        assert_eq!(tally.human(), "2 timed out");
        let mut json = Json::new();
        tally.json(&mut json, "failures");
        assert_eq!(
            json.finish(),
            r#"{"failures":{"total":2,"refused":0,"timed_out":2}}"#
        );
    }
}
