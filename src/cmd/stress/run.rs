//! One TCP run's life and its honest accounting: the connector, the phases
//! (load start, `--start-at` wait, warmup, measuring window), the loop's and
//! the CPU's figures at the window's edges, the progress clock, and the
//! parts of the summary every TCP mode prints.
//!
//! Invariant: the window is dated once at each edge, and every rate and the
//! loop's utilisation are taken over exactly that window.

use std::time::{Duration, Instant, SystemTime};

use super::connect::Connector;
use super::report::{self, Json, Tally};
use super::{
    generator_report, outcome, print_summary, start, Generator, Setup, TIMER_PROGRESS, TIMER_START,
    TIMER_WARMUP,
};
use crate::error::Result;
use crate::reactor::{Ctx, LoopStats};
use crate::sys;

/// What every TCP mode keeps about its run: the connector, its phases
/// (load start, warmup, measuring window), the loop's and the CPU's figures
/// at the window's edges, the progress clock.
pub struct Run {
    /// The mode's name, as the progress line and the JSON print it.
    pub mode: &'static str,
    /// Opens the connections and keeps their numbers.
    pub connector: Connector,
    /// When the run began (progress lines count from here; so does every
    /// mode's nanosecond clock).
    pub started: Instant,
    /// The wall-clock time at `started` (interval logs and JSON lines name
    /// times on it, so generators on several hosts can be lined up).
    pub started_wall: SystemTime,
    /// Load before the window opens (`--warmup`); zero for `conns`.
    pub warmup: Duration,
    /// The wall-clock time the load is to begin (`--start-at`), if asked.
    pub start_at: Option<SystemTime>,
    /// When the load began (the warmup's start), once it did.
    pub load_start: Option<Instant>,
    /// How much later than `--start-at` the load began (connections took
    /// longer, or the process did not get a CPU), when that was more than a
    /// millisecond.
    pub start_late: Option<Duration>,
    /// The measuring window's start, once it began.
    pub window_start: Option<Instant>,
    /// The measuring window's end, once it ended (early after Ctrl+C).
    pub window_end: Option<Instant>,
    /// Ctrl+C or SIGTERM ended the run early.
    pub interrupted: bool,
    /// The open-file limit and the connections it leaves room for.
    pub fd_limit: u64,
    /// See `fd_limit`.
    pub room: u64,
    loop_start: LoopStats,
    loop_end: Option<LoopStats>,
    cpu_start: Duration,
    cpu_end: Option<Duration>,
    progress_lines: u32,
    progress_last: Instant,
    progress_msgs: u64,
    progress_bytes: u64,
}

impl Run {
    /// A run of `mode` over `setup`; nothing is opened yet.
    pub fn new(mode: &'static str, setup: &Setup) -> Run {
        let now = Instant::now();
        Run {
            mode,
            connector: Connector::new(setup.plan.clone()),
            started: now,
            started_wall: SystemTime::now(),
            warmup: Duration::ZERO,
            start_at: None,
            load_start: None,
            start_late: None,
            window_start: None,
            window_end: None,
            interrupted: false,
            fd_limit: setup.fd_limit,
            room: setup.room,
            loop_start: LoopStats::default(),
            loop_end: None,
            cpu_start: Duration::ZERO,
            cpu_end: None,
            progress_lines: 0,
            progress_last: now,
            progress_msgs: 0,
            progress_bytes: 0,
        }
    }

    /// Starts opening connections and the progress clock.
    pub fn start<S: Default>(&mut self, cx: &mut Ctx<S>) {
        self.loop_start = cx.stats();
        self.cpu_start = sys::cpu_time();
        cx.set_timer(self.started + Duration::from_secs(1), TIMER_PROGRESS);
        self.connector.fill(cx);
    }

    /// Takes `--warmup` (checked by the caller) and `--start-at`.
    pub fn set_phases(&mut self, warmup: Duration, start_at: Option<SystemTime>) {
        self.warmup = warmup;
        self.start_at = start_at;
    }

    /// Every connection is open: sets [`TIMER_START`] for when the load is
    /// to begin — after `settle`, or at `--start-at` if that is later.
    pub fn arm_start<S>(&mut self, cx: &mut Ctx<S>, settle: Duration) {
        let now = Instant::now();
        let mut at = now + settle;
        if let Some(start_at) = self.start_at {
            if let Ok(ahead) = start_at.duration_since(SystemTime::now()) {
                if now + ahead > at {
                    at = now + ahead;
                    self.progress_line(&format!(
                        "{}, waiting {:.1} s for --start-at {}",
                        self.conns_text(),
                        ahead.as_secs_f64(),
                        start::utc_text(start_at)
                    ));
                }
            }
        }
        cx.set_timer(at, TIMER_START);
    }

    /// The load begins now ([`TIMER_START`] fired): opens the window at
    /// once, or sets [`TIMER_WARMUP`] for after the warmup. Returns the
    /// load's and the window's start on the run's nanosecond clock.
    pub fn begin_load<S>(&mut self, cx: &mut Ctx<S>) -> (u64, u64) {
        let now = Instant::now();
        self.load_start = Some(now);
        if let Some(start_at) = self.start_at {
            let late = self.wall(now).duration_since(start_at).unwrap_or_default();
            if late > Duration::from_millis(1) {
                self.start_late = Some(late);
                log::warn!(
                    "the load began {:.3} s after --start-at {} (connecting took longer, or \
                     this process did not get a CPU in time): generators that began on time \
                     measured other seconds",
                    late.as_secs_f64(),
                    start::utc_text(start_at)
                );
            }
        }
        if self.warmup.is_zero() {
            self.begin_window_at(cx, now);
        } else {
            cx.set_timer(now + self.warmup, TIMER_WARMUP);
            self.progress_line(&format!(
                "{}, warming up for {:.1} s (not measured)",
                self.conns_text(),
                self.warmup.as_secs_f64()
            ));
        }
        let load_ns = (now - self.started).as_nanos() as u64;
        (load_ns, load_ns + self.warmup.as_nanos() as u64)
    }

    /// [`TIMER_WARMUP`] fired: the window opens, dated when it was due.
    pub fn end_warmup<S>(&mut self, cx: &Ctx<S>) {
        if let (Some(load), None) = (self.load_start, self.window_start) {
            self.begin_window_at(cx, load + self.warmup);
        }
    }

    /// The load is on: it began, and the window has not ended.
    pub fn loading(&self) -> bool {
        self.load_start.is_some() && self.window_end.is_none()
    }

    /// The wall-clock time of `at`, an instant of this run.
    pub fn wall(&self, at: Instant) -> SystemTime {
        self.started_wall + at.saturating_duration_since(self.started)
    }

    /// Opens the measuring window now.
    pub fn begin_window<S>(&mut self, cx: &Ctx<S>) {
        self.begin_window_at(cx, Instant::now());
    }

    /// Opens the measuring window, dated `at` (now, or when a timer was due).
    pub fn begin_window_at<S>(&mut self, cx: &Ctx<S>, at: Instant) {
        self.window_start = Some(at);
        self.loop_start = cx.stats();
        self.cpu_start = sys::cpu_time();
        self.progress_last = Instant::now();
    }

    /// The JSON fields of the run's phases: `warmup_s`, `start_at_unix_s`,
    /// `start_unix_s` (the window's start) and `started_late_s`.
    pub fn phase_json(&self, json: &mut Json) {
        json.f64("warmup_s", self.warmup.as_secs_f64(), 3);
        json.opt_f64("start_at_unix_s", self.start_at.map(start::unix_seconds), 3);
        json.opt_f64(
            "start_unix_s",
            self.window_start
                .map(|at| start::unix_seconds(self.wall(at))),
            3,
        );
        json.opt_f64(
            "started_late_s",
            self.start_late.map(|late| late.as_secs_f64()),
            3,
        );
    }

    /// Closes the measuring window now (once).
    pub fn end_window<S>(&mut self, cx: &Ctx<S>) {
        if self.window_end.is_none() {
            self.window_end = Some(Instant::now());
            self.loop_end = Some(cx.stats());
            self.cpu_end = Some(sys::cpu_time());
        }
    }

    /// True between the window's start and its end.
    pub fn measuring(&self) -> bool {
        self.window_start.is_some() && self.window_end.is_none()
    }

    /// The window's length (so far, while it is open).
    pub fn window(&self) -> Duration {
        match (self.window_start, self.window_end) {
            (Some(start), Some(end)) => end - start,
            (Some(start), None) => start.elapsed(),
            _ => Duration::ZERO,
        }
    }

    /// Ctrl+C: close the window and stop the loop; the summary is still printed.
    pub fn interrupt<S>(&mut self, cx: &mut Ctx<S>) {
        if !self.interrupted {
            crate::errln!(
                "[{:>6.1}s] {}: interrupted, finishing",
                self.started.elapsed().as_secs_f64(),
                self.mode
            );
        }
        self.interrupted = true;
        if self.window_start.is_none() {
            self.begin_window(cx);
        }
        self.end_window(cx);
        cx.stop();
    }

    /// Re-arms the progress timer and returns the rates since the last line:
    /// (msgs/s, MB/s). `msgs` and `bytes` are running totals.
    pub fn progress_tick<S>(&mut self, cx: &mut Ctx<S>, msgs: u64, bytes: u64) -> (f64, f64) {
        self.progress_lines += 1;
        let next = self.started + Duration::from_secs(u64::from(self.progress_lines) + 1);
        cx.set_timer(next, TIMER_PROGRESS);
        let now = Instant::now();
        let secs = (now - self.progress_last).as_secs_f64().max(1e-9);
        let rates = (
            msgs.saturating_sub(self.progress_msgs) as f64 / secs,
            bytes.saturating_sub(self.progress_bytes) as f64 / secs / 1e6,
        );
        self.progress_last = now;
        self.progress_msgs = msgs;
        self.progress_bytes = bytes;
        rates
    }

    /// Prints `[   2.0s] echo: BODY` on stderr.
    pub fn progress_line(&self, body: &str) {
        crate::errln!(
            "[{:>6.1}s] {}: {body}",
            self.started.elapsed().as_secs_f64(),
            self.mode
        );
    }

    /// `500/500 up` or `480/500 up, 20 failed`.
    pub fn conns_text(&self) -> String {
        let failed = self.connector.failures().total();
        let mut text = format!(
            "{}/{} up",
            report::count(u64::from(self.connector.up())),
            report::count(u64::from(self.connector.plan().n))
        );
        if failed > 0 {
            text.push_str(&format!(", {} failed", report::count(failed)));
        }
        if self.connector.in_flight() > 0 {
            text.push_str(&format!(
                ", {} connecting",
                report::count(u64::from(self.connector.in_flight()))
            ));
        }
        text
    }

    /// The loop's utilisation over the window (or the run so far), 0..=1.
    pub fn utilisation<S>(&self, cx: &Ctx<S>) -> f64 {
        let end = self.loop_end.unwrap_or_else(|| cx.stats());
        end.since(&self.loop_start).utilisation()
    }

    /// CPU time this process used over the window.
    pub fn cpu(&self) -> Duration {
        self.cpu_end
            .unwrap_or_else(sys::cpu_time)
            .saturating_sub(self.cpu_start)
    }

    /// The summary's "connections" lines and the JSON `connect` object.
    pub fn connect_report(&self, lines: &mut Vec<String>, json: &mut Json) {
        let c = &self.connector;
        let plan = c.plan();
        let elapsed = c.elapsed();
        let connected = c.connected();
        let lat = c.latency().percentiles();
        lines.push(format!(
            "  connections: {} of {} opened in {:.2} s ({}/s){}; failed: {}",
            report::count(connected),
            report::count(u64::from(plan.n)),
            elapsed.as_secs_f64(),
            report::rate(report::per_second(connected, elapsed)),
            match plan.per_source {
                Some(_) => format!(", from {} source address(es)", plan.n_sources()),
                None => String::new(),
            },
            c.failures().human()
        ));
        lines.push(format!("  connect time: {}", lat.human()));
        if lat.count > 0 && lat.p99 >= 900_000_000 {
            lines.push(
                "  note: connect p99 near 1 s or more means SYNs were retransmitted: the \
                 server's accept queue (listen backlog) was full at times"
                    .to_string(),
            );
        }
        if let Some(first) = c.first_error() {
            lines.push(format!("  first connect failure: {first}"));
        }
        for limit in c.limits() {
            lines.push(format!("  {limit}"));
        }
        json.u64("conns", u64::from(plan.n));
        json.u64("connected", connected);
        json.begin("connect");
        c.failures().json(json, "failures");
        json.opt_str("first_error", c.first_error());
        json.opt_str("limit", c.limits().first().map(String::as_str));
        json.f64("total_s", elapsed.as_secs_f64(), 3);
        json.f64("per_s", report::per_second(connected, elapsed), 0);
        json.u64("sources", u64::from(plan.n_sources()));
        lat.json(json, "latency");
        json.end();
    }

    /// The summary's "generator" lines and the JSON `generator` object (see
    /// [`generator_report`]); `msgs` (if the mode counts messages) gives the
    /// CPU cost of one.
    pub fn generator_report<S>(
        &self,
        cx: &Ctx<S>,
        msgs: Option<u64>,
        lines: &mut Vec<String>,
        json: &mut Json,
    ) {
        generator_report(
            &Generator {
                utilisation: self.utilisation(cx),
                cpu: self.cpu(),
                window: self.window(),
                msgs,
                fd_limit: self.fd_limit,
                room: Some(self.room),
            },
            lines,
            json,
        );
    }

    /// Starts a summary the same way in every TCP mode: the headline (with
    /// "(interrupted)" when Ctrl+C ended the run), the JSON fields every mode
    /// starts with, and the connection report. `duration` is the measured time.
    pub fn open_summary(&self, headline: String, duration: Duration) -> (Vec<String>, Json) {
        let interrupted = if self.interrupted {
            " (interrupted)"
        } else {
            ""
        };
        let mut lines = vec![format!("{headline}{interrupted}")];
        let mut json = Json::new();
        self.json_head(&mut json, duration);
        self.connect_report(&mut lines, &mut json);
        (lines, json)
    }

    /// Ends a summary the same way in every message-counting mode: the
    /// errors by kind and the first one, the generator's honesty lines, then
    /// prints it (and the JSON line with `--json`) and returns the exit.
    #[allow(clippy::too_many_arguments)]
    pub fn close_summary<S>(
        &self,
        cx: &Ctx<S>,
        errors: &Tally,
        first_error: Option<&str>,
        msgs: u64,
        mut lines: Vec<String>,
        mut json: Json,
        json_wanted: bool,
    ) -> Result<()> {
        lines.push(format!("  errors: {}", errors.human()));
        if let Some(first) = first_error {
            lines.push(format!("  first error: {first}"));
        }
        errors.json(&mut json, "errors");
        json.opt_str("first_error", first_error);
        self.generator_report(cx, Some(msgs), &mut lines, &mut json);
        print_summary(&lines, json_wanted.then(|| json.finish()));
        outcome(self.mode, self, errors.total(), first_error)
    }

    /// The JSON fields every mode starts with; `duration` is the mode's
    /// measured time (the window; for `conns`, the hold).
    pub fn json_head(&self, json: &mut Json, duration: Duration) {
        json.u64("schema", report::SCHEMA);
        json.str("mode", self.mode);
        json.str("target", &self.connector.plan().target.to_string());
        json.f64("duration_s", duration.as_secs_f64(), 3);
        json.bool("interrupted", self.interrupted);
    }
}
