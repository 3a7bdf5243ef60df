//! What a stress run tells its user: latency histograms, the progress line,
//! the human summary's formatting, the percentile spectrum and the one-line
//! JSON objects.
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
pub const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// The JSON schema number every line carries.
pub const SCHEMA: u64 = 1;

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

    /// Adds every sample of `other` (both track the same range, so nothing is lost).
    pub fn add(&mut self, other: &Latency) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds add");
    }

    /// Forgets every sample, keeping the allocation.
    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// The histogram itself (for the interval log and the spectrum).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// The value at quantile `q` (0..=1), or `None` before the first sample.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q))
    }

    /// The summary figures.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.hist)
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

impl Percentiles {
    /// The summary figures of any histogram of nanoseconds (one read from a log, say).
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: hist.len(),
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
            mean: hist.mean() as u64,
        }
    }

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

/// Steps per halving of the distance to 100% in [`spectrum`]: HdrHistogram's
/// and wrk2's default, which gives rows at 0%, 10%, ... 50%, 55%, ... 90%,
/// 91.25%, ... down to the last sample.
pub const SPECTRUM_TICKS: u32 = 5;

/// The full percentile spectrum of a histogram of nanoseconds, in the layout
/// of HdrHistogram's `outputPercentileDistribution` (and wrk2's `--latency`):
/// value in milliseconds, percentile, count up to it and `1/(1-percentile)`,
/// then mean, deviation, max and count. `title` heads the block. The rows
/// start at column 0, as HdrHistogram's tools print them, so they can be cut
/// out of the report and fed to a plotter that reads that format.
pub fn spectrum(title: &str, hist: &Histogram<u64>) -> Vec<String> {
    let mut lines = vec![
        format!("  {title}"),
        format!(
            "{:>12} {:>14} {:>10} {:>14}",
            "Value(ms)", "Percentile", "TotalCount", "1/(1-Percentile)"
        ),
    ];
    if hist.is_empty() {
        lines.push("  (no samples)".to_string());
        return lines;
    }
    let mut total = 0u64;
    for step in hist.iter_quantiles(SPECTRUM_TICKS) {
        total += step.count_since_last_iteration();
        let q = step.quantile_iterated_to();
        let value_ms = step.value_iterated_to() as f64 / 1e6;
        if q < 1.0 {
            lines.push(format!(
                "{value_ms:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            ));
        } else {
            lines.push(format!("{value_ms:>12.3} {q:>14.12} {total:>10}"));
        }
    }
    lines.push(format!(
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        hist.mean() / 1e6,
        hist.stdev() / 1e6
    ));
    lines.push(format!(
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        hist.max() as f64 / 1e6,
        hist.len()
    ));
    lines
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
/// written. Small on purpose: numbers, strings, booleans, null, nested
/// objects and arrays of objects.
pub struct Json {
    text: String,
    /// One entry per open object or array: is it an array, and has it got
    /// a field (or an element) yet?
    open: Vec<(bool, bool)>,
}

impl Json {
    /// Starts the top-level object.
    pub fn new() -> Json {
        Json {
            text: String::from("{"),
            open: vec![(false, false)],
        }
    }

    /// Writes the comma before a field or an element, if one came before.
    fn separate(&mut self) {
        let (_, has_some) = self.open.last_mut().expect("an object is open");
        if *has_some {
            self.text.push(',');
        }
        *has_some = true;
    }

    fn key(&mut self, key: &str) {
        assert!(
            !self.open.last().expect("an object is open").0,
            "a field inside an array; open an element with item()"
        );
        self.separate();
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
        self.open.push((false, false));
    }

    /// Opens an array of objects under `key`; open each element with
    /// [`Json::item`], close the array with [`Json::end`].
    pub fn begin_array(&mut self, key: &str) {
        self.key(key);
        self.text.push('[');
        self.open.push((true, false));
    }

    /// Opens the next object of the innermost array; close it with [`Json::end`].
    pub fn item(&mut self) {
        assert!(
            self.open.last().expect("an array is open").0,
            "item() outside an array"
        );
        self.separate();
        self.text.push('{');
        self.open.push((false, false));
    }

    /// Closes the innermost nested object or array.
    pub fn end(&mut self) {
        assert!(self.open.len() > 1, "end() without begin()");
        let (array, _) = self.open.pop().expect("checked above");
        self.text.push(if array { ']' } else { '}' });
    }

    /// Closes the top-level object and returns the line (no newline).
    pub fn finish(mut self) -> String {
        assert_eq!(self.open.len(), 1, "an object was left open");
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
    fn arrays_hold_objects_separated_by_commas() {
        let mut json = Json::new();
        json.begin_array("logs");
        for n in [1, 2] {
            json.item();
            json.u64("count", n);
            json.null("latency");
            json.end();
        }
        json.end();
        json.begin_array("empty");
        json.end();
        assert_eq!(
            json.finish(),
            r#"{"logs":[{"count":1,"latency":null},{"count":2,"latency":null}],"empty":[]}"#
        );
    }

    #[test]
    fn the_spectrum_climbs_to_the_last_sample() {
        let mut latency = Latency::new();
        for us in 1..=1000u64 {
            latency.record(us * 1000);
        }
        let lines = spectrum("latency", latency.histogram());
        assert!(lines[1].contains("1/(1-Percentile)"), "{lines:?}");
        let rows: Vec<Vec<f64>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20, "{lines:?}");
        let first = &rows[0];
        let last = rows.last().unwrap();
        assert!((first[0] - 0.001).abs() < 1e-6, "{first:?}");
        assert_eq!(first[1], 0.0);
        assert!((last[0] - 1.0).abs() < 0.001, "{last:?}");
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2], 1000.0);
        assert!(rows
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] < w[1][1]));
        assert!(lines.iter().any(|l| l.starts_with("#[Max     =")));
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
