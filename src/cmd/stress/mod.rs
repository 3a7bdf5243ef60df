//! `sockloop stress`: a load generator that drives thousands of connections
//! from one thread, through the same reactor as the servers.
//!
//! Each mode is a [`Handler`](crate::reactor::Handler) whose per-connection
//! state is a few words (no buffer per connection, no allocation per
//! message): `echo` (request/response, every byte verified), `conns` (idle
//! connections held open), `chat` (framed or line fan-out with per-sender
//! order), `udp` (numbered datagrams with a built-in sink). Two more
//! commands read what runs leave behind: `merge` (several generators'
//! interval logs, one report) and `plot` (an SVG of them).
//!
//! This file holds what the TCP modes share: their common options, the
//! descriptor budget, the reactor they run on, and the summary's shared
//! parts (generator honesty, latency lines, the send-lag warning, the
//! interval log and plot lines). [`run`] holds one run's phases (connect,
//! optional `--start-at` wait, warmup, measuring window, drain), its
//! progress line and its connection report. [`connect`] opens connections at scale and names the limit behind a
//! failure; [`report`] holds histograms and the JSON writer; [`timeline`]
//! files samples by second for [`histlog`] (the interval log), the JSON
//! interval lines and [`plot`]; [`start`] reads `--start-at`.
//!
//! Numbers this module prints must never flatter: rates are divided by the
//! window they were counted in, latencies come from HDR histograms, and every
//! report says how busy the generator itself was, so a generator-bound run
//! cannot pass for a server-bound one. Nothing here retries or hides a failure.

pub mod chat;
pub mod connect;
pub mod conns;
pub mod echo;
pub mod histlog;
pub mod merge;
pub mod plot;
pub mod report;
pub mod run;
pub mod stamp;
pub mod start;
pub mod timeline;
pub mod udp;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};

use crate::addr;
use crate::error::{Error, Result};
use crate::reactor::{Config, Reactor};
use crate::sys;
use crate::units;
use connect::{is_v4_loopback, port_range_size, Plan};
use report::{Json, Latency, Percentiles};
pub use run::Run;
use timeline::{MeasureArgs, Timeline};

/// Descriptors kept back for what is not a client connection: stdio, the
/// poll, the signal pipe, the reactor's spare, a probe, log files.
pub const RESERVED_FDS: u64 = 32;

/// Timer: the next progress line.
pub const TIMER_PROGRESS: u64 = 1;
/// Timer: the measuring window (or the hold) is over.
pub const TIMER_END: u64 = 4;
/// Timer: stop waiting for answers still in flight.
pub const TIMER_DRAIN: u64 = 5;
/// Timer: the load begins (after the settle time, or at `--start-at`).
pub const TIMER_START: u64 = 6;
/// Timer: the next interval of the [`Timeline`] ends.
pub const TIMER_INTERVAL: u64 = 7;
/// Timer: the warmup is over; the measuring window opens.
pub const TIMER_WARMUP: u64 = 8;
/// First timer id a mode may use for itself.
pub const TIMER_MODE: u64 = 16;
/// Timer ids from here on are `TIMER_CONN + connection number`.
pub const TIMER_CONN: u64 = 1 << 32;

/// A sender woken by a timer sends everything due by then, and is not woken
/// again sooner than this. Deadlines fire to the microsecond (the reactor's
/// timerfd), so a message due later than this is sent on time; messages due
/// closer together than this (over 20,000 a second on one connection) go
/// out in one write instead of one wake-up each. The lateness this allows
/// is reported as the send lag.
pub const SEND_TICK_NS: u64 = 50_000;

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
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
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
    let timeout = units::cap("--connect-timeout", args.connect_timeout).map_err(Error::Usage)?;
    units::check_rate("--connect-rate", args.connect_rate).map_err(Error::Usage)?;
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
        also: Vec::new(),
        n: args.conns,
        rate: (args.connect_rate > 0.0).then_some(args.connect_rate),
        concurrency: args.connect_concurrency,
        timeout,
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

/// Parses a duration option: seconds as a number (`10`, `0.5`) or with a
/// unit, as wrk2 takes them (`500ms`, `10s`, `2m`, `1h`). The range is
/// checked where the option is used ([`positive`], [`zero_or_more`]).
pub fn parse_seconds(text: &str) -> std::result::Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "'{text}' is not a duration (use 10, 10s, 500ms, 2m or 1h)"
            ))
        }
    };
    number
        .parse::<f64>()
        .map(|n| n * scale)
        .map_err(|_| format!("'{text}' is not a duration (use 10, 10s, 500ms, 2m or 1h)"))
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
/// JSON line on stdout, marked `"type":"summary"` right after its schema
/// number (interval lines, printed before it, say `"interval"`). Neither
/// waits: what a stuck reader has not taken is given a bounded time at exit
/// (`console::finish`).
pub fn print_summary(lines: &[String], json: Option<String>) {
    crate::errln!("{}", lines.join("\n"));
    if let Some(line) = json {
        let mut line = typed_summary(&line);
        line.push('\n');
        let _ = crate::reactor::console::out_data(line.as_bytes());
    }
}

/// `{"schema":1,...}` as `{"schema":1,"type":"summary",...}`. Every summary
/// line starts with its schema number (a number: the first comma ends it).
fn typed_summary(line: &str) -> String {
    match line.find(',') {
        Some(comma) if line.starts_with("{\"schema\":") => {
            format!("{},\"type\":\"summary\"{}", &line[..comma], &line[comma..])
        }
        _ => line.to_string(),
    }
}

/// The lines a latency mode adds to its summary after its latencies: a
/// warning when messages left so late against their schedule that the
/// lateness, not the server, makes up the corrected latency; the spectrum
/// with `--spectrum`; where the interval log and the plot went (drawing the
/// plot now). Returns the error that must end the run afterwards (the log
/// or the plot could not be written), if any.
pub fn measure_report(
    lines: &mut Vec<String>,
    args: &MeasureArgs,
    timeline: &Timeline,
    lag: Option<&Latency>,
    title: &str,
    what: &str,
) -> Option<Error> {
    if let (Some(lag), Some(plain)) = (lag, timeline.total_uncorrected()) {
        if let Some(warning) = lag_warning(&lag.percentiles(), &plain.percentiles(), what) {
            lines.push(warning);
        }
    }
    if args.spectrum {
        lines.extend(report::spectrum(
            "latency spectrum (milliseconds):",
            timeline.total().histogram(),
        ));
        if let Some(plain) = timeline.total_uncorrected() {
            lines.extend(report::spectrum(
                "latency spectrum, uncorrected (milliseconds):",
                plain.histogram(),
            ));
        }
    }
    let mut error = None;
    if let Some(path) = &args.hist_log {
        match timeline.log_failed() {
            Some(why) => error = Some(Error::Failed(why.to_string())),
            None => lines.push(format!(
                "  interval log: {} ({} one-second histograms)",
                path.display(),
                timeline.points().len()
            )),
        }
    }
    if let Some(path) = &args.plot {
        let series = plot::Series {
            name: "latency".to_string(),
            corrected: timeline.total().histogram(),
            uncorrected: timeline.total_uncorrected().map(Latency::histogram),
            points: timeline.points(),
            offset_s: 0.0,
        };
        match plot::draw(path, title, &[series]) {
            Ok(()) => lines.push(format!("  plot: {}", path.display())),
            Err(e) => error = error.or(Some(e)),
        }
    }
    error
}

/// A send lag is large when its median is above 100 µs and above the median
/// latency measured from the actual send: then most of the corrected latency
/// is the generator's own lateness.
pub fn lag_warning(lag: &Percentiles, plain: &Percentiles, what: &str) -> Option<String> {
    (lag.count > 0 && plain.count > 0 && lag.p50 > 100_000 && lag.p50 > plain.p50).then(|| {
        format!(
            "  warning: {what} left {} late (median) against their schedule, more than the {} \
             they then took (median, uncorrected): the corrected latency is mostly the \
             generator's own lateness; see the loop utilisation, give the generator a core \
             (taskset), or lower the rate",
            report::duration_ns(lag.p50),
            report::duration_ns(plain.p50)
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_units_wrk2_users_type() {
        assert_eq!(parse_seconds("10"), Ok(10.0));
        assert_eq!(parse_seconds("2.5s"), Ok(2.5));
        assert_eq!(parse_seconds("500ms"), Ok(0.5));
        assert_eq!(parse_seconds("2m"), Ok(120.0));
        assert_eq!(parse_seconds("1h"), Ok(3600.0));
        assert!(parse_seconds("10 parsecs")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_seconds("s").is_err());
    }

    #[test]
    fn the_summary_line_says_it_is_one_right_after_its_schema() {
        assert_eq!(
            typed_summary(r#"{"schema":1,"mode":"echo"}"#),
            r#"{"schema":1,"type":"summary","mode":"echo"}"#
        );
        assert_eq!(typed_summary("{}"), "{}");
    }

    #[test]
    fn send_lag_is_large_when_it_outweighs_the_round_trip() {
        let us = |p50: u64| Percentiles {
            count: 10,
            p50: p50 * 1000,
            ..Percentiles::default()
        };
        assert!(lag_warning(&us(600), &us(35), "messages")
            .unwrap()
            .contains("left 600.0 µs late"));
        assert!(lag_warning(&us(20), &us(35), "messages").is_none());
        assert!(lag_warning(&us(150), &us(300), "messages").is_none());
    }
}
