//! A run's latency second by second: the interval histograms behind
//! `--hist-log`, `--json-intervals`, `--plot`, and the run's totals.
//!
//! A mode records each sample once, into the current interval's histogram.
//! When an interval ends (the first sample or timer past its end), it is
//! closed: written to the interval log, printed as a JSON line, kept as one
//! [`Point`] for the plot, and added into the run's total — so the summary's
//! percentiles and the log's histograms are the same samples, and the
//! log's counts add up to the summary's.
//!
//! Invariant: intervals are exactly `[origin + k s, origin + (k + 1) s)` of
//! the run's clock, whatever the timer's punctuality: a sample is filed by
//! the time it was taken, not by when the interval happened to be closed.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::Args as ClapArgs;
use hdrhistogram::Histogram;

use super::histlog::{LogWriter, Point, TAG_UNCORRECTED};
use super::report::{Json, Latency, SCHEMA};
use super::start::{self, unix_seconds};
use super::TIMER_INTERVAL;
use crate::error::Result;
use crate::reactor::{Ctx, StdoutRoom};

/// The length of one interval.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Intervals kept for `--plot` (about eleven days at one a second); later
/// ones are still logged and counted, only not plotted.
pub const MAX_POINTS: usize = 1_000_000;

/// How a latency mode measures: when, for how long, and where the per-second
/// histograms go (shared by `stress echo` and `stress chat`).
#[derive(Debug, Clone, ClapArgs)]
pub struct MeasureArgs {
    /// Seconds of load before the measuring window opens: sent, checked,
    /// and left out of every figure (warm caches, a settled server).
    #[arg(long, value_name = "S", default_value_t = 0.0, value_parser = super::parse_seconds)]
    pub warmup: f64,
    /// Begin the load at this wall-clock time instead of as soon as every
    /// connection is open, so generators on several hosts run the same
    /// seconds: @UNIX_SECONDS, an RFC 3339 time (2026-11-25T12:00:00Z) or a
    /// local HH:MM[:SS] of today.
    #[arg(long, value_name = "TIME", value_parser = parse_start_at)]
    pub start_at: Option<SystemTime>,
    /// Write the latency of every second as an HdrHistogram interval log
    /// (compressed V2 histograms, nanoseconds; untagged: corrected, Tag=uncorrected:
    /// from the actual send), for `stress merge`, `stress plot` and HdrHistogram's tools.
    #[arg(long, value_name = "FILE")]
    pub hist_log: Option<PathBuf>,
    /// Draw the run as an SVG: latency by percentile, throughput and p99 per second.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print one JSON line per second on stdout ("type": "interval"), then
    /// the summary line (implies --json).
    #[arg(long)]
    pub json_intervals: bool,
    /// Print the full latency percentile spectrum (HdrHistogram's layout,
    /// milliseconds) in the summary.
    #[arg(short = 'L', long)]
    pub spectrum: bool,
}

impl MeasureArgs {
    /// Creates the `--hist-log` file, if asked: first thing, so a bad path
    /// stops the run before anything else is done.
    pub fn create_log(&self) -> Result<Option<LogWriter>> {
        self.hist_log.as_deref().map(LogWriter::create).transpose()
    }
}

fn parse_start_at(text: &str) -> std::result::Result<SystemTime, String> {
    start::parse(text, SystemTime::now())
}

/// The run's intervals, its totals, and where closed intervals go.
pub struct Timeline {
    mode: &'static str,
    /// The run's clock: `now_ns` values count from here.
    started: Instant,
    /// The wall-clock time of `started`.
    started_wall: SystemTime,
    /// The measuring window's start (ns on the run's clock), once it is set.
    origin_ns: Option<u64>,
    /// Intervals closed so far.
    closed: u64,
    /// The end of the open interval.
    next_ns: u64,
    /// No more samples: the last interval was closed.
    finished: bool,
    corrected: Latency,
    /// `None` when the mode has one latency only (closed loop).
    uncorrected: Option<Latency>,
    total: Latency,
    total_uncorrected: Option<Latency>,
    points: Vec<Point>,
    log: Option<LogWriter>,
    json_lines: bool,
    /// Writing a JSON line failed (stdout closed): no more are tried.
    json_failed: bool,
}

impl Timeline {
    /// A timeline for `mode`; `paired` when each sample has an uncorrected
    /// twin; `log` from [`MeasureArgs::create_log`]; `started` and
    /// `started_wall` are the run's clock.
    pub fn new(
        mode: &'static str,
        paired: bool,
        args: &MeasureArgs,
        log: Option<LogWriter>,
        started: Instant,
        started_wall: SystemTime,
    ) -> Timeline {
        Timeline {
            mode,
            started,
            started_wall,
            origin_ns: None,
            closed: 0,
            next_ns: u64::MAX,
            finished: false,
            corrected: Latency::new(),
            uncorrected: paired.then(Latency::new),
            total: Latency::new(),
            total_uncorrected: paired.then(Latency::new),
            points: Vec::new(),
            log,
            json_lines: args.json_intervals,
            json_failed: false,
        }
    }

    /// Opens the first interval at `origin_ns` on the run's clock (the
    /// window's start, which may lie ahead, after a warmup), writes the log's
    /// header with `comments`, and sets the timer that closes intervals
    /// nobody records into.
    pub fn start<S>(&mut self, cx: &mut Ctx<S>, origin_ns: u64, comments: &[String]) {
        self.origin_ns = Some(origin_ns);
        self.next_ns = origin_ns + INTERVAL.as_nanos() as u64;
        let wall = self.wall(origin_ns);
        if let Some(log) = self.log.as_mut() {
            log.begin(comments, wall);
        }
        cx.set_timer(self.at(self.next_ns), TIMER_INTERVAL);
    }

    /// Records one sample taken at `now_ns`.
    #[inline]
    pub fn record(&mut self, now_ns: u64, ns: u64) {
        if now_ns >= self.next_ns {
            self.roll(now_ns);
        }
        self.corrected.record(ns);
    }

    /// Records a sample and its uncorrected twin, taken at `now_ns`.
    #[inline]
    pub fn record_pair(&mut self, now_ns: u64, corrected_ns: u64, uncorrected_ns: u64) {
        if now_ns >= self.next_ns {
            self.roll(now_ns);
        }
        self.corrected.record(corrected_ns);
        if let Some(uncorrected) = self.uncorrected.as_mut() {
            uncorrected.record(uncorrected_ns);
        }
    }

    /// The interval timer fired: closes what ended and sets the next one.
    pub fn on_timer<S>(&mut self, cx: &mut Ctx<S>, now_ns: u64) {
        if self.finished || self.origin_ns.is_none() {
            return;
        }
        self.roll(now_ns);
        cx.set_timer(self.at(self.next_ns), TIMER_INTERVAL);
    }

    /// No more samples after `end_ns`: closes every interval up to it, the
    /// last one partial, and flushes the log.
    pub fn finish(&mut self, end_ns: u64) {
        if self.finished {
            return;
        }
        self.finished = true;
        let Some(origin) = self.origin_ns else { return };
        self.roll(end_ns);
        let open_start = self.next_ns - INTERVAL.as_nanos() as u64;
        if end_ns > open_start.max(origin) || !self.corrected.histogram().is_empty() {
            let length = end_ns.saturating_sub(open_start);
            self.close(Duration::from_nanos(length));
        }
        if let Some(log) = self.log.as_mut() {
            log.flush();
        }
    }

    /// Closes every interval that ended by `now_ns`.
    fn roll(&mut self, now_ns: u64) {
        while now_ns >= self.next_ns {
            self.close(INTERVAL);
            self.next_ns += INTERVAL.as_nanos() as u64;
        }
        if let Some(log) = self.log.as_mut() {
            log.flush();
        }
    }

    /// Closes the open interval (`length` long): log, JSON line, point, totals.
    fn close(&mut self, length: Duration) {
        let start = INTERVAL * self.closed as u32;
        let t_s = start.as_secs_f64();
        let length_s = length.as_secs_f64();
        let hist = self.corrected.histogram();
        if let Some(log) = self.log.as_mut() {
            log.interval(hist, None, start, length);
            if let Some(uncorrected) = &self.uncorrected {
                log.interval(
                    uncorrected.histogram(),
                    Some(TAG_UNCORRECTED),
                    start,
                    length,
                );
            }
        }
        if self.points.len() < MAX_POINTS {
            self.points.push(Point::of(hist, t_s, length_s));
        }
        if self.json_lines && !self.json_failed {
            self.print_interval(t_s, length_s);
        }
        self.total.add(&self.corrected);
        self.corrected.reset();
        if let (Some(total), Some(uncorrected)) =
            (self.total_uncorrected.as_mut(), self.uncorrected.as_mut())
        {
            total.add(uncorrected);
            uncorrected.reset();
        }
        self.closed += 1;
    }

    fn print_interval(&mut self, t_s: f64, length_s: f64) {
        let origin = self.origin_ns.unwrap_or(0);
        let mut json = Json::new();
        json.u64("schema", SCHEMA);
        json.str("type", "interval");
        json.str("mode", self.mode);
        json.f64("t_s", t_s, 3);
        json.f64("length_s", length_s, 3);
        let start = self.wall(origin) + Duration::from_secs_f64(t_s);
        json.f64("start_unix_s", unix_seconds(start), 3);
        let latency = self.corrected.percentiles();
        json.u64("count", latency.count);
        json.f64("per_s", latency.count as f64 / length_s.max(1e-9), 0);
        latency.json(&mut json, "latency");
        match &self.uncorrected {
            Some(uncorrected) => uncorrected
                .percentiles()
                .json(&mut json, "latency_uncorrected"),
            None => json.null("latency_uncorrected"),
        }
        let mut line = json.finish();
        line.push('\n');
        // Through stdout's sink: never waited for. A reader that keeps up
        // gets every line; one that stalls loses lines, never the run's pace.
        match crate::reactor::console::out_data(line.as_bytes()) {
            StdoutRoom::Closed => {
                log::warn!("stdout is closed; no more interval lines");
                self.json_failed = true;
            }
            StdoutRoom::Room | StdoutRoom::Full => {}
        }
    }

    /// Every closed interval added up: the run's latency.
    pub fn total(&self) -> &Latency {
        &self.total
    }

    /// The uncorrected twin of [`Timeline::total`], if samples have one.
    pub fn total_uncorrected(&self) -> Option<&Latency> {
        self.total_uncorrected.as_ref()
    }

    /// One point per closed interval (at most [`MAX_POINTS`]).
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The p99 of the last closed interval, in nanoseconds, if it had samples.
    pub fn last_p99(&self) -> Option<u64> {
        self.points
            .last()
            .filter(|p| p.count > 0 && self.closed as usize == self.points.len())
            .map(|p| p.p99_ns)
    }

    /// The wall-clock time of the window's start, once it is set.
    pub fn start_wall(&self) -> Option<SystemTime> {
        self.origin_ns.map(|ns| self.wall(ns))
    }

    /// The interval log's write error, if one happened.
    pub fn log_failed(&self) -> Option<&str> {
        self.log.as_ref().and_then(|log| log.failed())
    }

    /// The histogram of the corrected series so far (closed intervals only).
    pub fn histogram(&self) -> &Histogram<u64> {
        self.total.histogram()
    }

    fn wall(&self, ns: u64) -> SystemTime {
        self.started_wall + Duration::from_nanos(ns)
    }

    fn at(&self, ns: u64) -> Instant {
        self.started + Duration::from_nanos(ns)
    }
}
