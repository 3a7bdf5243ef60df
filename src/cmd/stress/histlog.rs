//! The HdrHistogram interval log, both ways: `--hist-log` writes one,
//! `stress merge` and `stress plot` read any number of them.
//!
//! The format is the one HdrHistogram's `HistogramLogWriter` writes and its
//! `HistogramLogProcessor` (and the Python `hdrh` package) read: comment lines,
//! `#[StartTime: ...]` and `#[BaseTime: ...]`, a legend, then one line per
//! interval histogram — start (seconds after BaseTime), length, max, and the
//! histogram itself, V2-encoded, deflated and base64'd (written by the
//! `hdrhistogram` crate's own log writer and serializer). Values are
//! nanoseconds. An untagged line holds the latency corrected for coordinated
//! omission; a `Tag=uncorrected` line beside it the same interval's latency
//! from the actual send.
//!
//! Invariants: a log on disk only ever grows by whole lines (one `write` per
//! interval, so a reader never sees half a histogram unless the disk fills);
//! reading never trusts a file's size (over [`MAX_LOG_BYTES`] is refused) nor
//! its times (a StartTime or BaseTime outside 1970..2100 is refused, and a log
//! without either whose intervals count from 0 has no start rather than one
//! in 1970), and never averages percentiles — histograms are added, then read.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use super::report::Percentiles;
use crate::error::{Error, Result};

/// The tag of the uncorrected histogram of an interval.
pub const TAG_UNCORRECTED: &str = "uncorrected";

/// The largest log `stress merge` and `stress plot` read (a day at one
/// interval per second is about 0.5 GB only for huge histograms; a typical
/// hour is a few MB).
pub const MAX_LOG_BYTES: u64 = 256 * 1024 * 1024;

/// Times a log may give (StartTime, BaseTime, its first interval), in
/// seconds since 1970: from 1970 up to 2100-01-01.
pub const LATEST_TIME_S: f64 = 4_102_444_800.0;

/// Interval times below this (a year of seconds) in a log with neither
/// StartTime nor BaseTime count from the run's start, not from 1970
/// (HdrHistogram's own reader draws the same line): such a log's start is unknown.
const RELATIVE_BELOW_S: f64 = 365.0 * 24.0 * 3600.0;

/// The column legend HdrHistogram's own writer puts before the first interval.
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// What one interval looked like, for plots and JSON lines: when (seconds
/// after the log's start), how long, how many samples, and three latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Start, seconds after the log's (or the run's window's) start.
    pub t_s: f64,
    /// Length in seconds (1 but for a last, partial interval).
    pub length_s: f64,
    /// Samples in the interval.
    pub count: u64,
    /// Median, nanoseconds (0 when empty).
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds (0 when empty).
    pub p99_ns: u64,
    /// Largest sample, nanoseconds (0 when empty).
    pub max_ns: u64,
}

impl Point {
    /// The figures of `hist`, an interval starting `t_s` seconds in.
    pub fn of(hist: &Histogram<u64>, t_s: f64, length_s: f64) -> Point {
        let p = Percentiles::of(hist);
        Point {
            t_s,
            length_s,
            count: p.count,
            p50_ns: p.p50,
            p99_ns: p.p99,
            max_ns: p.max,
        }
    }

    /// Samples per second of the interval.
    pub fn per_s(&self) -> f64 {
        if self.length_s > 0.0 {
            self.count as f64 / self.length_s
        } else {
            0.0
        }
    }
}

/// Writes an interval log as the run goes. The file is created (truncated)
/// when the run starts, so a bad path fails before any connection is opened;
/// the header goes out when the measuring window opens, one buffered write
/// per interval after that. A failed write is remembered, the log stops, the
/// run goes on, and the run's end reports it.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// One interval's lines, written with one `write_all`, then cleared.
    buf: Vec<u8>,
    serializer: V2DeflateSerializer,
    /// The first write error, as text; nothing is written after it.
    failed: Option<String>,
}

impl LogWriter {
    /// Creates (or truncates) the log file at `path`.
    pub fn create(path: &Path) -> Result<LogWriter> {
        let file = File::create(path)
            .map_err(|e| Error::io(format!("creating --hist-log {}", path.display()), e))?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            buf: Vec::with_capacity(16 * 1024),
            serializer: V2DeflateSerializer::new(),
            failed: None,
        })
    }

    /// Writes the header: `comments` (one `#` line each), the log format
    /// version, StartTime and BaseTime (both `start`: interval timestamps
    /// count from it), and the legend.
    pub fn begin(&mut self, comments: &[String], start: SystemTime) {
        let mut builder = IntervalLogWriterBuilder::new();
        for comment in comments {
            builder.add_comment(comment);
        }
        builder
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(start)
            .with_base_time(start);
        let written = builder
            .begin_log_with(&mut self.buf, &mut self.serializer)
            .map(drop);
        if let Err(e) = written {
            self.fail(format!("formatting the header: {e}"));
        }
        self.buf.extend_from_slice(LEGEND.as_bytes());
        self.flush();
    }

    /// Adds one interval histogram to the pending lines: `start` after the
    /// log's BaseTime, `length` long, tagged or not. [`LogWriter::flush`]
    /// writes them.
    pub fn interval(
        &mut self,
        hist: &Histogram<u64>,
        tag: Option<&str>,
        start: Duration,
        length: Duration,
    ) {
        if self.failed.is_some() {
            return;
        }
        // A fresh writer per interval: the builder without headers writes
        // nothing of its own, and the borrow of our buffer ends here.
        let written = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.buf, &mut self.serializer)
            .map_err(|e| e.to_string())
            .and_then(|mut writer| {
                writer
                    .write_histogram(hist, start, length, tag.and_then(Tag::new))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            self.fail(format!("writing an interval: {e}"));
        }
    }

    /// Writes the pending lines to the file, all at once.
    pub fn flush(&mut self) {
        if self.failed.is_none() && !self.buf.is_empty() {
            if let Err(e) = self.file.write_all(&self.buf) {
                self.fail(e.to_string());
            }
        }
        self.buf.clear();
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            log::error!(
                "--hist-log {}: {why}; the log stops here, the run goes on",
                self.path.display()
            );
            self.failed = Some(format!("--hist-log {}: {why}", self.path.display()));
        }
    }

    /// The first write error, if there was one.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The log's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One series of a log read back: its histograms added up, and one [`Point`]
/// per interval.
pub struct Series {
    /// Every interval of the series added together.
    pub total: Histogram<u64>,
    /// The intervals in log order, `t_s` counted from the log's start.
    pub points: Vec<Point>,
}

impl Series {
    fn new(first: &Histogram<u64>) -> Series {
        let mut total = Histogram::new_from(first);
        total.auto(true);
        Series {
            total,
            points: Vec::new(),
        }
    }

    /// From the start of the first interval to the end of the last, in seconds.
    pub fn span_s(&self) -> f64 {
        match (self.points.first(), self.points.last()) {
            (Some(first), Some(last)) => (last.t_s + last.length_s - first.t_s).max(0.0),
            _ => 0.0,
        }
    }

    /// Samples per second over [`Series::span_s`].
    pub fn per_s(&self) -> f64 {
        let span = self.span_s();
        if span > 0.0 {
            self.total.len() as f64 / span
        } else {
            0.0
        }
    }
}

/// An interval log read back.
pub struct Log {
    /// The path it was read from, as given.
    pub path: String,
    /// When its intervals count from: its StartTime, else its first
    /// interval; `None` when the log does not say (no StartTime nor BaseTime,
    /// and interval times that count from 0).
    pub start: Option<SystemTime>,
    /// The untagged histograms: latency corrected for coordinated omission
    /// (in logs of other tools, whatever they logged untagged).
    pub corrected: Option<Series>,
    /// The histograms tagged `uncorrected`.
    pub uncorrected: Option<Series>,
    /// Other tags seen (not merged), each once.
    pub other_tags: Vec<String>,
    /// The first comment line (sockloop's names the run), if any.
    pub title: Option<String>,
}

/// Reads the interval log at `path`. A file that is not one, or a histogram
/// that does not decode, is an error naming the file and the byte offset.
pub fn read(path: &str) -> Result<Log> {
    let mut file = File::open(path).map_err(|e| Error::io(format!("opening {path}"), e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_LOG_BYTES {
        return Err(Error::Failed(format!(
            "{path}: {size} bytes is more than the {} MiB a log may have here; cut it \
             (it is one line per interval) and merge the pieces",
            MAX_LOG_BYTES >> 20
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    Read::by_ref(&mut file)
        .take(MAX_LOG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {path}"), e))?;
    parse(path, &bytes)
}

/// Reads an interval log from `bytes`; `path` names it in errors.
pub fn parse(path: &str, bytes: &[u8]) -> Result<Log> {
    let bad = |what: String| Error::Failed(format!("{path}: {what}"));
    let title = bytes
        .split(|b| *b == b'\n')
        .next()
        .and_then(|line| line.strip_prefix(b"#"))
        .filter(|line| !line.starts_with(b"["))
        .map(|line| String::from_utf8_lossy(line).trim().to_string());
    check_header_times(bytes).map_err(bad)?;
    let mut start_time: Option<f64> = None;
    let mut base_time: Option<f64> = None;
    let mut corrected: Option<Series> = None;
    let mut uncorrected: Option<Series> = None;
    let mut other_tags: Vec<String> = Vec::new();
    let mut first_abs: Option<f64> = None;
    let mut deserializer = Deserializer::new();
    let mut decoded = Vec::new();
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| {
            bad(format!(
                "not an HdrHistogram interval log ({e:?}; a line cut short?)"
            ))
        })?;
        let interval = match entry {
            LogEntry::StartTime(t) => {
                start_time.get_or_insert(t.as_secs_f64());
                continue;
            }
            LogEntry::BaseTime(t) => {
                base_time.get_or_insert(t.as_secs_f64());
                continue;
            }
            LogEntry::Interval(interval) => interval,
        };
        let tag = interval.tag().map(|t| t.as_str().to_string());
        let series = match tag.as_deref() {
            None => &mut corrected,
            Some(TAG_UNCORRECTED) => &mut uncorrected,
            Some(other) => {
                if !other_tags.iter().any(|t| t == other) {
                    other_tags.push(other.to_string());
                }
                continue;
            }
        };
        decoded.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(interval.encoded_histogram(), &mut decoded)
            .map_err(|e| bad(format!("an interval's histogram is not base64: {e}")))?;
        let hist: Histogram<u64> = deserializer
            .deserialize(&mut &decoded[..])
            .map_err(|e| bad(format!("an interval's histogram does not decode: {e:?}")))?;
        // HdrHistogram's rule: timestamps count from BaseTime; without one,
        // they are deltas from StartTime when far smaller than it, else absolute.
        let stamp = interval.start_timestamp().as_secs_f64();
        let abs = match (base_time, start_time) {
            (Some(base), _) => base + stamp,
            (None, Some(start)) if stamp < start - 365.0 * 24.0 * 3600.0 => start + stamp,
            _ => stamp,
        };
        let origin = *first_abs.get_or_insert(start_time.unwrap_or(abs));
        let series = series.get_or_insert_with(|| Series::new(&hist));
        series
            .total
            .add(&hist)
            .map_err(|e| bad(format!("histograms that cannot be added: {e:?}")))?;
        series.points.push(Point::of(
            &hist,
            abs - origin,
            interval.duration().as_secs_f64(),
        ));
    }
    if corrected.is_none() && uncorrected.is_none() {
        return Err(bad(if other_tags.is_empty() {
            "no interval histogram in it (an empty log, or not an interval log)".to_string()
        } else {
            format!(
                "no untagged or '{TAG_UNCORRECTED}' histogram in it (tags: {})",
                other_tags.join(", ")
            )
        }));
    }
    let first = first_abs.unwrap_or(0.0);
    let dated = start_time.is_some() || base_time.is_some() || first >= RELATIVE_BELOW_S;
    if !(0.0..LATEST_TIME_S).contains(&first) {
        return Err(bad(format!(
            "its first interval is dated {first} s after 1970 (from its StartTime, BaseTime \
             and interval times), not a time between 1970 and 2100"
        )));
    }
    Ok(Log {
        path: path.to_string(),
        start: dated.then(|| UNIX_EPOCH + Duration::from_secs_f64(first)),
        corrected,
        uncorrected,
        other_tags,
        title,
    })
}

/// Every `#[StartTime: ...]` and `#[BaseTime: ...]` line must hold a time
/// between 1970 and 2100 (HdrHistogram's reader skips one it cannot read,
/// which would silently date the log elsewhere); the error says which.
fn check_header_times(bytes: &[u8]) -> std::result::Result<(), String> {
    for line in bytes.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        for name in ["StartTime", "BaseTime"] {
            let Some(rest) = line.trim().strip_prefix(&format!("#[{name}:")) else {
                continue;
            };
            let value = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches([']', ',']);
            let fine = value
                .parse::<f64>()
                .is_ok_and(|t| (0.0..LATEST_TIME_S).contains(&t));
            if !fine {
                return Err(format!(
                    "its {name} {:?} is not a time between 1970 and 2100 (seconds since 1970)",
                    crate::safe_text::visible_line(value)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::stress::report::Latency;

    fn latency(samples: &[u64]) -> Latency {
        let mut latency = Latency::new();
        for ns in samples {
            latency.record(*ns);
        }
        latency
    }

    #[test]
    fn a_log_written_reads_back_with_every_count_and_the_tags_apart() {
        let dir = std::env::temp_dir().join(format!("sockloop-histlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.hlog");
        let start = UNIX_EPOCH + Duration::from_millis(1_764_072_000_250);
        let mut writer = LogWriter::create(&path).unwrap();
        writer.begin(&["sockloop stress echo 127.0.0.1:9".to_string()], start);
        let one_s = Duration::from_secs(1);
        let intervals = [
            latency(&[1_000, 2_000, 3_000]),
            latency(&[]),
            latency(&[5_000_000]),
        ];
        for (i, hist) in intervals.iter().enumerate() {
            let at = one_s * i as u32;
            writer.interval(hist.histogram(), None, at, one_s);
            writer.interval(
                latency(&[500]).histogram(),
                Some(TAG_UNCORRECTED),
                at,
                one_s,
            );
            writer.flush();
        }
        assert_eq!(writer.failed(), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#sockloop stress echo 127.0.0.1:9\n"),
            "{text}"
        );
        assert!(text.contains("#[StartTime: 1764072000.250 "), "{text}");
        assert!(text.contains(LEGEND), "{text}");
        assert!(text.contains("\nTag=uncorrected,1.000,1.000,"), "{text}");
        let log = read(path.to_str().unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            log.title.as_deref(),
            Some("sockloop stress echo 127.0.0.1:9")
        );
        assert_eq!(log.start, Some(start));
        let corrected = log.corrected.unwrap();
        assert_eq!(corrected.total.len(), 4);
        assert_eq!(corrected.points.len(), 3);
        assert_eq!(
            corrected.points.iter().map(|p| p.count).collect::<Vec<_>>(),
            [3, 0, 1]
        );
        assert_eq!(corrected.points[2].t_s, 2.0);
        assert_eq!(corrected.span_s(), 3.0);
        assert!(corrected.total.max() >= 5_000_000);
        assert_eq!(log.uncorrected.unwrap().total.len(), 3);
    }

    #[test]
    fn what_is_not_a_log_is_refused_with_the_file_named() {
        let error = parse("x.hlog", b"hello\n").err().unwrap().to_string();
        assert!(
            error.starts_with("x.hlog: not an HdrHistogram interval log"),
            "{error}"
        );
        let error = parse("y.hlog", b"#just a comment\n")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no interval histogram"), "{error}");
        let error = parse("z.hlog", b"0.000,1.000,1.0,AAAA\n")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("does not decode"), "{error}");
        for header in [
            "#[StartTime: 9000000000000000000.5 (seconds since epoch)]",
            "#[StartTime: 1e19 (seconds since epoch)]",
            "#[BaseTime: -1 (seconds since epoch)]",
            "#[StartTime: soon]",
        ] {
            let log = format!("{header}\n0.000,1.000,1.0,AAAA\n");
            let error = parse("t.hlog", log.as_bytes()).err().unwrap().to_string();
            assert!(
                error.starts_with("t.hlog: its ") && error.contains("between 1970 and 2100"),
                "{error}"
            );
        }
    }
}
