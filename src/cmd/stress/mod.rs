//! `sockloop stress`: a load generator that drives thousands of connections
//! from one thread, through the same reactor as the servers.
//!
//! Each mode is a [`Handler`](crate::reactor::Handler) whose per-connection
//! state is a few words (no buffer per connection, no allocation per
//! message): `echo` (request/response, every byte verified), `conns` (idle
//! connections held open), `chat` (framed fan-out with per-sender order),
//! `udp` (numbered datagrams with a built-in sink).
//!
//! This file holds what the TCP modes share: their common options, the
//! descriptor budget, the run's phases and measuring window, the progress
//! line and the parts of the summary every mode prints (connections,
//! generator honesty). [`connect`] opens connections at scale and names the
//! limit behind a failure; [`report`] holds histograms and the JSON writer.
//!
//! Numbers this module prints must never flatter: rates are divided by the
//! window they were counted in, latencies come from HDR histograms, and every
//! report says how busy the generator itself was, so a generator-bound run
//! cannot pass for a server-bound one. Nothing here retries or hides a failure.

pub mod chat;
pub mod connect;
pub mod conns;
pub mod echo;
pub mod report;
pub mod udp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};

use crate::addr;
use crate::error::{Error, Result};
use crate::reactor::{Config, Ctx, LoopStats, Reactor};
use crate::sys;
use connect::{is_v4_loopback, port_range_size, Connector, Plan};
use report::{Json, Latency, Tally};

/// Descriptors kept back for what is not a client connection: stdio, the
/// poll, the signal pipe, the reactor's spare, a probe, log files.
pub const RESERVED_FDS: u64 = 32;

/// Timer: the next progress line.
pub const TIMER_PROGRESS: u64 = 1;
/// Timer: the measuring window (or the hold) is over.
pub const TIMER_END: u64 = 4;
/// Timer: stop waiting for answers still in flight.
pub const TIMER_DRAIN: u64 = 5;
/// Timer: the start of the measuring window, after the settle time.
pub const TIMER_START: u64 = 6;
/// First timer id a mode may use for itself.
pub const TIMER_MODE: u64 = 16;
/// Timer ids from here on are `TIMER_CONN + connection number`.
pub const TIMER_CONN: u64 = 1 << 32;

/// A sender woken by a timer sends everything due by then, and is not woken
/// again sooner than this: the poll's timeout has millisecond granularity
/// anyway, so waking per message would only add writes (and syscalls), not
/// punctuality. The lateness this allows is reported as the send lag.
pub const SEND_TICK_NS: u64 = 1_000_000;

/// The generator's loop was busier than this: say it may have been the bottleneck.
pub const BUSY_WARNING: f64 = 0.90;

/// Where the source addresses of the connections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Spread {
    /// Spread over 127.0.0.2, 127.0.0.3, ... when the target is IPv4 loopback.
    Auto,
    /// Always spread (the target must be IPv4 loopback).
    On,
    /// Let the kernel pick the source address (one address: ~28k ports).
    Off,
}

/// Options every TCP mode shares: where to connect, how many, how fast.
#[derive(Debug, Clone, ClapArgs)]
pub struct TcpArgs {
    /// The server: HOST:PORT, [IPv6]:PORT or IPv4:PORT.
    pub addr: String,
    /// Client connections to open. Each costs one descriptor; the run refuses
    /// more than the open-file limit allows.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Open at most R connections per second (0: as fast as
    /// --connect-concurrency allows). Pacing keeps a burst of SYNs from
    /// overflowing the server's listen backlog.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = crate::ratelimit::parse_per_second)]
    pub connect_rate: f64,
    /// Handshakes under way at once. Connect times include the generator's
    /// own queueing: a lower value gives truer connect times, a higher one
    /// more connects per second against a server far away.
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Seconds a handshake may take before it counts as "timed out" (a SYN
    /// lost to a full backlog is retried by the kernel after 1 s, 3 s, ...).
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Source addresses. auto: when the target is IPv4 loopback, connection i
    /// binds to 127.0.0.(2 + i / --per-source) first, with
    /// IP_BIND_ADDRESS_NO_PORT, so more connections fit than the ~28k
    /// ephemeral ports of one source address.
    #[arg(long, value_enum, default_value_t = Spread::Auto)]
    pub spread: Spread,
    /// Connections per source address when spreading.
    #[arg(long, value_name = "N", default_value_t = 4000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub per_source: u32,
    /// Print the summary also as one JSON line on stdout (fields: README, appendix).
    #[arg(long)]
    pub json: bool,
}

/// A validated TCP run: the server's address, the connection plan and the
/// descriptor budget behind it.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The server.
    pub target: SocketAddr,
    /// How the connections are opened.
    pub plan: Plan,
    /// The open-file limit in force (after raising the soft limit to the hard one).
    pub fd_limit: u64,
    /// Connections that limit leaves room for.
    pub room: u64,
}

/// Checks the options, raises the open-file limit and says how many
/// connections it allows; refuses a `--conns` that cannot fit (exit 2).
/// `extra` is the number of connections the mode opens besides `--conns`.
pub fn prepare(args: &TcpArgs, extra: u32) -> Result<Setup> {
    positive("--connect-timeout", args.connect_timeout)?;
    zero_or_more("--connect-rate", args.connect_rate, UNPACED)?;
    let target = addr::resolve(&args.addr)?;
    let (soft_before, hard) = sys::nofile_limit().unwrap_or((1024, 1024));
    let fd_limit = match sys::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("cannot raise the open-file limit ({e}); it stays at {soft_before}");
            soft_before
        }
    };
    let room = fd_limit.saturating_sub(RESERVED_FDS);
    let wanted = u64::from(args.conns) + u64::from(extra);
    if wanted > room {
        return Err(Error::Usage(format!(
            "--conns {} needs {} open files, but this process may open at most {fd_limit} \
             (hard limit {hard}), which leaves room for {room} connections; ask for fewer \
             or raise the hard limit (as root: ulimit -Hn N, or /etc/security/limits.conf)",
            args.conns,
            wanted + RESERVED_FDS
        )));
    }
    log::info!(
        "open-file limit {fd_limit}{}: room for {room} connections",
        if fd_limit > soft_before {
            format!(" (raised from {soft_before})")
        } else {
            String::new()
        }
    );
    let per_source = match args.spread {
        Spread::Off => None,
        Spread::Auto if !is_v4_loopback(target) => None,
        Spread::On if !is_v4_loopback(target) => {
            return Err(Error::Usage(format!(
                "--spread on needs an IPv4 loopback target (127.x.y.z), not {target}"
            )))
        }
        Spread::Auto | Spread::On => Some(args.per_source),
    };
    let plan = Plan {
        target,
        n: args.conns,
        rate: (args.connect_rate > 0.0).then_some(args.connect_rate),
        concurrency: args.connect_concurrency,
        timeout: Duration::from_secs_f64(args.connect_timeout),
        per_source,
    };
    match per_source {
        Some(k) => log::debug!(
            "source addresses: 127.0.0.2 and up, {k} connections each ({} in all)",
            plan.n_sources()
        ),
        None => {
            let range = sys::proc_sys("net/ipv4/ip_local_port_range").unwrap_or_default();
            if let Some(ports) = port_range_size(&range) {
                if args.conns > ports {
                    log::warn!(
                        "{} connections from one source address, but \
                         net.ipv4.ip_local_port_range ({range}) has {ports} ports: expect \
                         EADDRNOTAVAIL{}",
                        args.conns,
                        if is_v4_loopback(target) {
                            " (--spread auto would avoid it)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }
    Ok(Setup {
        target,
        plan,
        fd_limit,
        room,
    })
}

/// A usage error unless `value` is a positive, finite number.
pub fn positive(name: &str, value: f64) -> Result<()> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{name} must be a positive number, not {value}"
        )))
    }
}

/// What a duration option accepts, for [`zero_or_more`].
pub const SECONDS: &str = "0 or more seconds";
/// What a pacing rate accepts, for [`zero_or_more`].
pub const UNPACED: &str = "0 (unpaced) or a positive number";

/// A usage error unless `value` is 0 or a positive, finite number;
/// `meaning` completes "NAME must be ...", e.g. "0 or more seconds".
pub fn zero_or_more(name: &str, value: f64, meaning: &str) -> Result<()> {
    if value >= 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{name} must be {meaning}, not {value}"
        )))
    }
}

/// The reactor a generator runs on: reads are never paused by our own
/// output (the answers are what makes room on the server), and the output
/// limit is the mode's business.
pub fn reactor<S: Default>(trace: bool) -> Result<Reactor<S>> {
    let config = Config {
        out_limit: 64 * 1024 * 1024,
        pause_reads_when_full: false,
        trace,
        ..Config::default()
    };
    Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))
}

/// What every TCP mode keeps about its run: the connector, the measuring
/// window, the loop's and the CPU's figures at its edges, the progress clock.
pub struct Run {
    /// The mode's name, as the progress line and the JSON print it.
    pub mode: &'static str,
    /// Opens the connections and keeps their numbers.
    pub connector: Connector,
    /// When the run began (progress lines count from here).
    pub started: Instant,
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

    /// Opens the measuring window now.
    pub fn begin_window<S>(&mut self, cx: &Ctx<S>) {
        let now = Instant::now();
        self.window_start = Some(now);
        self.loop_start = cx.stats();
        self.cpu_start = sys::cpu_time();
        self.progress_last = now;
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
        json.u64("schema", 1);
        json.str("mode", self.mode);
        json.str("target", &self.connector.plan().target.to_string());
        json.f64("duration_s", duration.as_secs_f64(), 3);
        json.bool("interrupted", self.interrupted);
    }
}

/// What the generator itself did over a window: the figures of its honesty line.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    /// Share of the window the loop was busy rather than blocked in poll, 0..=1.
    pub utilisation: f64,
    /// CPU time the process used over the window.
    pub cpu: Duration,
    /// The window's length.
    pub window: Duration,
    /// Messages handled (for the CPU cost of one), if the mode counts them.
    pub msgs: Option<u64>,
    /// The open-file limit in force.
    pub fd_limit: u64,
    /// Connections that limit leaves room for (TCP modes).
    pub room: Option<u64>,
}

/// The summary's "generator" line, a warning when the generator (not the
/// server) was the bottleneck, and the JSON `generator` object.
pub fn generator_report(g: &Generator, lines: &mut Vec<String>, json: &mut Json) {
    let per_msg_ns = g
        .msgs
        .filter(|n| *n > 0)
        .map(|n| g.cpu.as_nanos() as f64 / n as f64);
    // A window too short to judge (a run where nothing connected) warns of nothing.
    let busy = g.utilisation > BUSY_WARNING && g.window >= Duration::from_millis(200);
    lines.push(format!(
        "  generator: loop busy {:.0}% of the time (blocked in poll the rest), CPU {:.2} s{}; \
         open-file limit {}{}",
        g.utilisation * 100.0,
        g.cpu.as_secs_f64(),
        per_msg_ns
            .map(|ns| format!(", {} per message", report::duration_ns(ns as u64)))
            .unwrap_or_default(),
        g.fd_limit,
        g.room
            .map(|room| format!(" (room for {} connections)", report::count(room)))
            .unwrap_or_default()
    ));
    if busy {
        lines.push(format!(
            "  warning: the generator's loop was busy {:.0}% of the time: the generator, \
             not the server, may have set the pace; give it a core of its own \
             (taskset), or spread the load over more generators",
            g.utilisation * 100.0
        ));
    }
    json.begin("generator");
    json.f64("loop_utilisation", g.utilisation, 3);
    json.f64("cpu_s", g.cpu.as_secs_f64(), 3);
    json.opt_f64("cpu_per_msg_us", per_msg_ns.map(|ns| ns / 1e3), 3);
    json.bool("bottleneck", busy);
    json.u64("fd_limit", g.fd_limit);
    match g.room {
        Some(room) => json.u64("max_conns", room),
        None => json.null("max_conns"),
    }
    json.end();
}

/// The run's exit: an error when nothing could connect or errors were seen.
pub fn outcome(mode: &str, run: &Run, errors: u64, first: Option<&str>) -> Result<()> {
    if run.connector.connected() == 0 && !run.interrupted {
        return Err(Error::Failed(format!(
            "stress {mode}: no connection could be opened{}",
            run.connector
                .first_error()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    if errors > 0 {
        return Err(Error::Failed(format!(
            "stress {mode}: {errors} error(s){}",
            first.map(|f| format!("; first: {f}")).unwrap_or_default()
        )));
    }
    Ok(())
}

/// Prints the summary: the human lines on stderr, then (with `--json`) the
/// JSON line on stdout. Neither waits: what a stuck reader has not taken by
/// the end is given a bounded time at exit (`console::finish`).
pub fn print_summary(lines: &[String], json: Option<String>) {
    crate::errln!("{}", lines.join("\n"));
    if let Some(mut line) = json {
        line.push('\n');
        let _ = crate::reactor::console::out_data(line.as_bytes());
    }
}

/// The open-loop comparison every rate-driven report prints: achieved vs asked.
/// Returns the line and whether they differ by more than 5%.
pub fn rate_check(what: &str, achieved: f64, asked: f64) -> (String, bool) {
    let ratio = if asked > 0.0 { achieved / asked } else { 0.0 };
    let off = (ratio - 1.0).abs() > 0.05;
    let mut line = format!(
        "  rate: {}/s achieved of {}/s asked ({:.1}%)",
        report::rate(achieved),
        report::rate(asked),
        ratio * 100.0
    );
    if off {
        line.push_str(&format!(
            "\n  warning: the achieved {what} rate is more than 5% off the asked rate: \
             the schedule was not kept (see the loop utilisation below for whose fault)"
        ));
    }
    (line, off)
}

/// Latency reports of open-loop runs: corrected (from the intended send
/// time) and uncorrected (from the actual send), side by side.
pub fn latency_lines(
    lines: &mut Vec<String>,
    json: &mut Json,
    corrected: &Latency,
    uncorrected: Option<&Latency>,
) {
    let main = corrected.percentiles();
    match uncorrected {
        Some(plain) => {
            let plain = plain.percentiles();
            lines.push(format!(
                "  latency from the intended send time (corrected for coordinated omission): {}",
                main.human()
            ));
            lines.push(format!(
                "  latency from the actual send time (uncorrected, for comparison):          {}",
                plain.human()
            ));
            main.json(json, "latency");
            plain.json(json, "latency_uncorrected");
        }
        None => {
            lines.push(format!("  latency: {}", main.human()));
            main.json(json, "latency");
            json.null("latency_uncorrected");
        }
    }
}
