//! `sockloop stress echo`: request/response load on an echo server, with
//! every echoed byte checked.
//!
//! Each connection sends `--size`-byte messages and reads them back, with up
//! to `--pipeline` messages in flight. Closed loop (the default): a message
//! goes out as soon as one comes back. Open loop (`--rate R`, in all, as
//! wrk2's `-R`): each of the `n` connections sends `R/n` a second, message
//! `k` *due* at `start + phase + k·n/R` whatever the server does; its latency
//! is measured from that intended time, so a server that stalls shows up as
//! high latency rather than as fewer samples (coordinated omission, as wrk2
//! measures it), and the uncorrected figure is printed next to it.
//!
//! Phases: connect, (wait for `--start-at`), `--warmup` (load, not
//! measured), the window (`--duration`), the drain. Samples are filed by
//! second in a [`Timeline`] (interval log, JSON lines, plot).
//!
//! Verification costs one `memcmp` per read and no state per message: byte
//! `o` of connection `i`'s stream is `PATTERN[(o + i) % 251]`, so the bytes to
//! send and the bytes to expect are slices of one preallocated buffer. The
//! only per-connection memory is [`EchoConn`] and `pipeline` send times.

use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::connect::Ended;
use super::report::{self, Latency, Tally};
use super::timeline::{MeasureArgs, Timeline};
use super::{
    latency_lines, measure_report, parse_seconds, positive, prepare, rate_check, zero_or_more, Run,
    TcpArgs, SECONDS, SEND_TICK_NS, TIMER_CONN, TIMER_DRAIN, TIMER_END, TIMER_INTERVAL,
    TIMER_PROGRESS, TIMER_START, TIMER_WARMUP,
};
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::reactor::{ConnId, Ctx, Event, Handler, SCRATCH_SIZE};
use crate::units;

/// The stream pattern repeats every this many bytes; a prime, so message
/// boundaries never line up with it and a shifted echo cannot pass.
const PERIOD: u64 = 251;

/// Error kinds (JSON keys under `errors`).
const ERROR_NAMES: &[&str] = &["mismatch", "unexpected_bytes", "closed", "reset"];
const MISMATCH: usize = 0;
const UNEXPECTED: usize = 1;
const CLOSED: usize = 2;
const RESET: usize = 3;

/// The long `--help` text of `stress echo` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str =
    "Request/response load on an echo server; every echoed byte is verified.\n\n\
        Opens --conns connections (all from this one thread), then for --duration seconds \
        each sends --size-byte messages and reads them back, keeping up to --pipeline \
        messages in flight. Reports messages/s, MB/s (payload, one way), latency \
        percentiles and errors. The first byte that comes back wrong is reported with its \
        connection and offset, and the run exits 1.\n\n\
        Closed loop by default: a connection sends its next message when one returns, so a \
        slow server is sent less (and looks better than it is). With --rate R (-R, the \
        total, as in wrk2) the connections send R messages/s between them, each on a fixed \
        schedule of R/connections, and latency is measured from when each message should \
        have been sent (corrected for coordinated omission); the uncorrected figure is \
        printed beside it. --rate-per-conn R asks R of every connection instead.\n\n\
        --warmup S loads the server S seconds before measuring; --start-at TIME begins the \
        load at a wall-clock time (several generators together); --hist-log FILE writes \
        every second's latency histogram for 'stress merge' and 'stress plot'.";

/// Command-line options of `stress echo`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Request/response load on an echo server; every echoed byte is verified",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop echo server --port 9000 &\n  \
        sockloop stress echo 127.0.0.1:9000 --conns 100 --size 1024 --duration 5\n  \
        sockloop stress echo 127.0.0.1:9000 --conns 10 --size 16384 --pipeline 8\n  \
        sockloop stress echo 127.0.0.1:9000 -c 50 -d 30 -R 10000 --warmup 5 --hist-log run.hlog\n  \
        sockloop stress echo 127.0.0.1:9000 --conns 50 --rate 200 --json\n\n\
        Progress goes to stderr each second; Ctrl+C ends the run early and still prints \
        the summary."
)]
pub struct Args {
    /// Where to connect and how (shared by every TCP mode).
    #[command(flatten)]
    pub tcp: TcpArgs,
    /// Bytes per message.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16 * 1024 * 1024))]
    pub size: u32,
    /// Seconds to measure (10, 10s, 2m, 500ms), counted from when every
    /// connection is open (and the warmup is over).
    #[arg(short = 'd', long, value_name = "S", default_value_t = 5.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Messages in flight per connection (1: ping-pong).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub pipeline: u32,
    /// Open loop: R messages per second in all, spread evenly over the
    /// connections (R/connections each, on a fixed schedule, still at most
    /// --pipeline in flight); latency is measured from each message's intended
    /// send time.
    #[arg(short = 'R', long, value_name = "R", value_parser = crate::ratelimit::parse_per_second,
          conflicts_with = "rate_per_conn")]
    pub rate: Option<f64>,
    /// Open loop with R messages per second from every connection (R x
    /// connections in all).
    #[arg(long, value_name = "R", value_parser = crate::ratelimit::parse_per_second)]
    pub rate_per_conn: Option<f64>,
    /// Seconds to wait after the window for echoes still in flight (they are
    /// verified, not counted).
    #[arg(long, value_name = "S", default_value_t = 2.0, value_parser = parse_seconds)]
    pub drain: f64,
    /// Warmup, start time, interval log, plot, spectrum.
    #[command(flatten)]
    pub measure: MeasureArgs,
}

/// What `--rate` or `--rate-per-conn` asked for.
#[derive(Debug, Clone, Copy)]
enum Rate {
    /// Messages per second from all connections together.
    Total(f64),
    /// Messages per second from each connection.
    PerConn(f64),
}

/// One connection's state: where its two streams stand.
#[derive(Debug, Default)]
pub struct EchoConn {
    /// The connection number (fixes its pattern phase and its send-time slots).
    index: u32,
    /// Messages sent.
    sent: u64,
    /// Echoed bytes received and verified.
    received: u64,
    /// Open loop: a timer is set for this connection's next due message.
    timer_armed: bool,
}

/// The `stress echo` handler.
struct Echo {
    run: Run,
    measure: MeasureArgs,
    size: u64,
    pipeline: u64,
    /// Open loop: what was asked.
    rate: Option<Rate>,
    /// Open loop: nanoseconds between two messages of one connection (set
    /// when the load begins, from the connections up then).
    period_ns: Option<u64>,
    duration: Duration,
    drain: Duration,
    /// The stream pattern, long enough for any read or write in one slice.
    pattern: Vec<u8>,
    /// Send time of message `k` of connection `i` at `i * pipeline + k % pipeline`,
    /// nanoseconds since `run.started`.
    sent_at: Vec<u64>,
    /// Open loop: the intended send time, same layout.
    intended_at: Vec<u64>,
    /// The load's start (the schedule's origin, before any warmup) and its
    /// planned end, nanoseconds since `run.started`.
    load_ns: (u64, u64),
    /// The window's start (after the warmup) and planned end, same clock.
    window_ns: (u64, u64),
    /// Latency from the intended send time (open loop) or the send (closed
    /// loop), and open loop from the actual send, second by second.
    timeline: Timeline,
    /// Open loop: how late messages left against their schedule (timer
    /// granularity, a busy generator, a full pipeline).
    send_lag: Latency,
    /// Messages whose echo completed inside the window.
    msgs: u64,
    /// Messages sent inside the window (not in the warmup).
    sent: u64,
    /// Messages sent and not echoed yet, over all connections.
    in_flight: u64,
    errors: Tally,
    first_error: Option<String>,
    /// The window is over; waiting for the echoes still in flight.
    draining: bool,
    /// Every connection is open (or failed); the load's start is scheduled.
    start_armed: bool,
}

impl Echo {
    fn now_ns(&self) -> u64 {
        self.run.started.elapsed().as_nanos() as u64
    }

    fn slot(&self, index: u32, msg: u64) -> usize {
        (u64::from(index) * self.pipeline + msg % self.pipeline) as usize
    }

    /// When message `k` of connection `index` is due (open loop).
    fn intended_ns(&self, index: u32, k: u64, period: u64) -> u64 {
        // Connections are spread over one period (golden-ratio steps) so
        // they do not all send in the same instant.
        let phase = (f64::from(index) * 0.618_033_988_75).fract() * period as f64;
        self.load_ns.0 + phase as u64 + k * period
    }

    /// Writes messages `from .. from + n` of connection `index`: one
    /// contiguous run of the pattern stream, sent in slices.
    fn send_stream(&self, cx: &mut Ctx<EchoConn>, id: ConnId, index: u32, from: u64, n: u64) {
        let piece = (self.pattern.len() as u64) - PERIOD;
        let mut offset = from * self.size;
        let end = offset + n * self.size;
        while offset < end {
            let start = ((offset + u64::from(index)) % PERIOD) as usize;
            let len = (end - offset).min(piece) as usize;
            cx.send(id, &self.pattern[start..start + len]);
            offset += len as u64;
        }
    }

    /// Closed loop: sends `n` more messages on `id` now.
    fn send_now(&mut self, cx: &mut Ctx<EchoConn>, id: ConnId, n: u64) {
        let Some(st) = cx.state(id) else { return };
        let (index, first) = (st.index, st.sent);
        let now = self.now_ns();
        for k in first..first + n {
            let slot = self.slot(index, k);
            self.sent_at[slot] = now;
        }
        if let Some(st) = cx.state_mut(id) {
            st.sent = first + n;
        }
        self.in_flight += n;
        if now >= self.window_ns.0 {
            self.sent += n;
        }
        self.send_stream(cx, id, index, first, n);
    }

    /// Open loop: sends every message of connection `index` that is due and
    /// fits in the pipeline; sets a timer for the next one.
    fn pump(&mut self, cx: &mut Ctx<EchoConn>, index: u32) {
        let Some(period) = self.period_ns else { return };
        let Some(id) = self.run.connector.conn_of(index) else {
            return;
        };
        let Some(st) = cx.state(id) else { return };
        let (first, done, mut armed) = (st.sent, st.received / self.size, st.timer_armed);
        let now = self.now_ns();
        let mut k = first;
        while k - done < self.pipeline {
            let due = self.intended_ns(index, k, period);
            if due >= self.load_ns.1 {
                break;
            }
            if due > now {
                if !armed {
                    armed = true;
                    cx.set_timer(
                        self.run.started + Duration::from_nanos(due.max(now + SEND_TICK_NS)),
                        TIMER_CONN + u64::from(index),
                    );
                }
                break;
            }
            let slot = self.slot(index, k);
            self.intended_at[slot] = due;
            self.sent_at[slot] = now;
            if due >= self.window_ns.0 {
                self.send_lag.record(now - due);
                self.sent += 1;
            }
            k += 1;
        }
        if let Some(st) = cx.state_mut(id) {
            st.sent = k;
            st.timer_armed = armed;
        }
        if k > first {
            self.in_flight += k - first;
            self.send_stream(cx, id, index, first, k - first);
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<EchoConn>, id: ConnId, bytes: &[u8]) {
        let Some(st) = cx.state(id) else { return };
        let (index, sent, received) = (st.index, st.sent, st.received);
        let len = bytes.len() as u64;
        if len > sent * self.size - received {
            let text = format!(
                "connection {index}{}: the server sent {} more bytes than it was sent (at byte \
                 offset {} of the stream)",
                local_text(cx, id),
                len - (sent * self.size - received),
                sent * self.size
            );
            return self.fail(cx, id, UNEXPECTED, text);
        }
        let start = ((received + u64::from(index)) % PERIOD) as usize;
        let expected = &self.pattern[start..start + bytes.len()];
        if expected != bytes {
            let at = expected
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .expect("slices differ");
            let offset = received + at as u64;
            let text = format!(
                "connection {index}{}: echo mismatch at byte offset {offset} of its stream \
                 (message {}, byte {}): sent 0x{:02x}, got back 0x{:02x}",
                local_text(cx, id),
                offset / self.size,
                offset % self.size,
                expected[at],
                bytes[at]
            );
            return self.fail(cx, id, MISMATCH, text);
        }
        let now = self.now_ns();
        let total = received + len;
        let (done_before, done_after) = (received / self.size, total / self.size);
        if let Some(st) = cx.state_mut(id) {
            st.received = total;
        }
        let in_window = self.in_window(now);
        for k in done_before..done_after {
            let slot = self.slot(index, k);
            if in_window {
                self.msgs += 1;
                match self.period_ns {
                    Some(_) => self.timeline.record_pair(
                        now,
                        now - self.intended_at[slot],
                        now - self.sent_at[slot],
                    ),
                    None => self.timeline.record(now, now - self.sent_at[slot]),
                }
            }
        }
        let completed = done_after - done_before;
        self.in_flight -= completed;
        if self.run.loading() {
            match self.period_ns {
                Some(_) if completed > 0 => self.pump(cx, index),
                Some(_) => {}
                None if completed > 0 => self.send_now(cx, id, completed),
                None => {}
            }
        } else if self.draining && self.in_flight == 0 {
            cx.stop();
        }
    }

    /// Counts an error on one connection, says so at once, and closes it.
    fn fail(&mut self, cx: &mut Ctx<EchoConn>, id: ConnId, kind: usize, text: String) {
        self.errors.add(kind);
        log::error!("{text}");
        self.first_error.get_or_insert(text);
        cx.close(id, CloseReason::Local("echo check failed"));
    }

    fn on_closed(&mut self, cx: &mut Ctx<EchoConn>, id: ConnId, reason: &CloseReason) {
        match self.run.connector.on_closed(id, reason) {
            Ended::ConnectFailed { .. } => {
                self.run.connector.fill(cx);
                self.check_start(cx);
            }
            Ended::Lost { index } => {
                let Some(st) = cx.state(id) else { return };
                let outstanding = st.sent - st.received / self.size;
                self.in_flight -= outstanding;
                let counted = matches!(reason, CloseReason::Local(_));
                if !counted && (self.run.loading() || outstanding > 0) {
                    let kind = match reason {
                        CloseReason::Io(_) => RESET,
                        _ => CLOSED,
                    };
                    let text = format!(
                        "connection {index}{}: {reason} during the run, with {outstanding} \
                         message(s) not echoed",
                        local_text(cx, id)
                    );
                    self.errors.add(kind);
                    log::warn!("{text}");
                    self.first_error.get_or_insert(text);
                }
                if self.draining && self.in_flight == 0 {
                    cx.stop();
                }
            }
            Ended::NotOurs => {}
        }
    }

    /// A completion at `now` counts: inside the window, which has not ended.
    fn in_window(&self, now: u64) -> bool {
        self.run.window_end.is_none()
            && self.run.load_start.is_some()
            && (self.window_ns.0..self.window_ns.1).contains(&now)
    }

    /// Once every connection is open (or failed), the load is scheduled.
    fn check_start(&mut self, cx: &mut Ctx<EchoConn>) {
        if self.start_armed || !self.run.connector.done() {
            return;
        }
        self.start_armed = true;
        if self.run.connector.up() == 0 {
            self.run.begin_window(cx);
            self.run.end_window(cx);
            cx.stop();
            return;
        }
        self.run.arm_start(cx, Duration::ZERO);
    }

    /// The load begins: the schedule, the window, the first messages.
    fn begin(&mut self, cx: &mut Ctx<EchoConn>) {
        if self.run.load_start.is_some() {
            return;
        }
        let (load, window) = self.run.begin_load(cx);
        let up = u64::from(self.run.connector.up().max(1));
        self.period_ns = self.rate.map(|rate| {
            let per_conn = match rate {
                Rate::Total(total) => total / up as f64,
                Rate::PerConn(per_conn) => per_conn,
            };
            ((1e9 / per_conn) as u64).max(1)
        });
        let end = window + self.duration.as_nanos() as u64;
        self.load_ns = (load, end);
        self.window_ns = (window, end);
        cx.set_timer(self.run.started + Duration::from_nanos(end), TIMER_END);
        let header = self.log_header();
        self.timeline.start(cx, window, &header);
        for index in 0..self.run.connector.plan().n {
            let Some(id) = self.run.connector.conn_of(index) else {
                continue;
            };
            match self.period_ns {
                Some(_) => self.pump(cx, index),
                None => self.send_now(cx, id, self.pipeline),
            }
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<EchoConn>, timer: u64) {
        if self.run.connector.on_timer(cx, timer) {
            self.check_start(cx);
            return;
        }
        match timer {
            TIMER_PROGRESS => self.progress(cx),
            TIMER_START => self.begin(cx),
            TIMER_WARMUP => self.run.end_warmup(cx),
            TIMER_INTERVAL => {
                let now = self.now_ns();
                self.timeline.on_timer(cx, now);
            }
            TIMER_END => {
                if self.period_ns.is_some() {
                    // Messages due in the window's last tick go out before it closes.
                    for index in 0..self.run.connector.plan().n {
                        self.pump(cx, index);
                    }
                }
                self.run.end_window(cx);
                // Echoes completed in the drain are not counted: the last
                // interval ends with the window.
                self.timeline.finish(self.window_ns.1);
                self.draining = true;
                if self.in_flight == 0 {
                    cx.stop();
                } else {
                    cx.set_timer_in(self.drain, TIMER_DRAIN);
                }
            }
            TIMER_DRAIN => cx.stop(),
            t if t >= TIMER_CONN => {
                let index = (t - TIMER_CONN) as u32;
                if let Some(id) = self.run.connector.conn_of(index) {
                    if let Some(st) = cx.state_mut(id) {
                        st.timer_armed = false;
                    }
                }
                if self.run.loading() {
                    self.pump(cx, index);
                }
            }
            _ => {}
        }
    }

    fn progress(&mut self, cx: &mut Ctx<EchoConn>) {
        let (msgs_per_s, mb_per_s) = self.run.progress_tick(cx, self.msgs, self.msgs * self.size);
        let p99 = self
            .timeline
            .last_p99()
            .map(report::duration_ns)
            .unwrap_or_else(|| "-".into());
        let body = format!(
            "{}, {} msgs/s, {:.2} MB/s, p99 (last 1 s) {p99}, errors {}{}",
            self.run.conns_text(),
            report::rate(msgs_per_s),
            mb_per_s,
            self.errors.total(),
            if self.draining {
                format!(", draining {} in flight", self.in_flight)
            } else {
                String::new()
            }
        );
        self.run.progress_line(&body);
    }

    /// What the loop asks for, as the summary's headline and the log's title say it.
    fn load_text(&self) -> String {
        match (self.rate, self.period_ns) {
            (Some(rate), Some(period)) => {
                let per_conn = 1e9 / period as f64;
                let total = match rate {
                    Rate::Total(total) => total,
                    Rate::PerConn(_) => per_conn * f64::from(self.run.connector.up()),
                };
                format!(
                    "open loop at {} msgs/s ({} per connection)",
                    report::rate(total),
                    number(per_conn)
                )
            }
            (Some(_), None) => "open loop".to_string(),
            (None, _) => "closed loop".to_string(),
        }
    }

    /// The interval log's header lines: the run, and what its histograms hold.
    fn log_header(&self) -> Vec<String> {
        let plan = self.run.connector.plan();
        vec![
            format!(
                "sockloop stress echo {}: {} connections x {} B, pipeline {}, {}",
                plan.target,
                self.run.connector.up(),
                self.size,
                self.pipeline,
                self.load_text()
            ),
            match self.period_ns {
                Some(_) => "Values in nanoseconds. Untagged: round trip from the intended send \
                    time (corrected for coordinated omission); Tag=uncorrected: from the actual \
                    send."
                    .to_string(),
                None => {
                    "Values in nanoseconds: round trip from the send (closed loop).".to_string()
                }
            },
        ]
    }

    fn summary(&mut self, cx: &Ctx<EchoConn>, json_wanted: bool) -> Result<()> {
        let end_ns = self
            .run
            .window_end
            .map(|at| at.saturating_duration_since(self.run.started).as_nanos() as u64)
            .unwrap_or(u64::MAX)
            .min(self.window_ns.1);
        self.timeline.finish(end_ns);
        let window = self.run.window();
        let msgs_per_s = report::per_second(self.msgs, window);
        let mb_per_s = msgs_per_s * self.size as f64 / 1e6;
        let head = format!(
            "stress echo {}: {} connections x {} B, pipeline {}, {}; {:.2} s measured{}",
            self.run.connector.plan().target,
            report::count(u64::from(self.run.connector.plan().n)),
            self.size,
            self.pipeline,
            self.load_text(),
            window.as_secs_f64(),
            if self.run.warmup.is_zero() {
                String::new()
            } else {
                format!(" after {:.1} s of warmup", self.run.warmup.as_secs_f64())
            }
        );
        let (mut lines, mut json) = self.run.open_summary(head, window);
        self.run.phase_json(&mut json);
        json.u64("size", self.size);
        json.u64("pipeline", self.pipeline);
        lines.push(format!(
            "  throughput: {} msgs/s, {:.2} MB/s one way ({} echoes completed in the window)",
            report::rate(msgs_per_s),
            mb_per_s,
            report::count(self.msgs)
        ));
        let asked = self
            .period_ns
            .map(|p| 1e9 / p as f64 * f64::from(self.run.connector.up().max(1)));
        match asked {
            Some(asked) => {
                let (line, _) = rate_check("message", msgs_per_s, asked);
                lines.push(line);
                json.opt_f64("rate_per_conn", self.period_ns.map(|p| 1e9 / p as f64), 3);
                json.f64("asked_per_s", asked, 0);
            }
            None => {
                json.null("rate_per_conn");
                json.null("asked_per_s");
            }
        }
        json.u64("msgs", self.msgs);
        json.f64("msgs_per_s", msgs_per_s, 0);
        json.f64("mb_per_s", mb_per_s, 3);
        json.u64("sent", self.sent);
        json.u64("unanswered", self.in_flight);
        latency_lines(
            &mut lines,
            &mut json,
            self.timeline.total(),
            self.timeline.total_uncorrected(),
        );
        match self.period_ns {
            Some(_) => {
                let lag = self.send_lag.percentiles();
                lines.push(format!(
                    "  send lag (how late messages left against their schedule):                {}",
                    lag.human()
                ));
                lag.json(&mut json, "send_lag");
            }
            None => json.null("send_lag"),
        }
        if self.in_flight > 0 {
            lines.push(format!(
                "  unanswered: {} message(s) still in flight when {}",
                report::count(self.in_flight),
                if self.run.interrupted {
                    "the run was interrupted"
                } else {
                    "the drain time ran out"
                }
            ));
        }
        let title = format!(
            "stress echo {}: {}",
            self.run.connector.plan().target,
            self.load_text()
        );
        let failed = measure_report(
            &mut lines,
            &self.measure,
            &self.timeline,
            self.period_ns.map(|_| &self.send_lag),
            &title,
            "messages",
        );
        let outcome = self.run.close_summary(
            cx,
            &self.errors,
            self.first_error.as_deref(),
            self.msgs,
            lines,
            json,
            json_wanted,
        );
        match failed {
            Some(error) => outcome.and(Err(error)),
            None => outcome,
        }
    }
}

/// A rate as people write it: `2,000`, `66.7`, `0.5`.
fn number(value: f64) -> String {
    if value >= 100.0 {
        report::rate(value)
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// ` (127.0.0.2:40312)`: our end of a connection, as the server's logs name it.
fn local_text<S>(cx: &Ctx<S>, id: ConnId) -> String {
    cx.conn(id)
        .and_then(|c| c.local_addr().ok())
        .map(|a| format!(" ({a})"))
        .unwrap_or_default()
}

impl Handler for Echo {
    type Conn = EchoConn;

    fn handle(&mut self, cx: &mut Ctx<EchoConn>, event: Event<'_>) {
        match event {
            Event::Connected(id) => {
                if let Some(index) = self.run.connector.on_connected(id) {
                    if let Some(st) = cx.state_mut(id) {
                        st.index = index;
                    }
                }
                self.run.connector.fill(cx);
                self.check_start(cx);
            }
            Event::Data(id, bytes) => self.on_data(cx, id, bytes),
            Event::PeerClosed(id) => cx.close(id, CloseReason::Done),
            Event::Closed(id, reason) => self.on_closed(cx, id, reason),
            Event::Timer(timer) => self.on_timer(cx, timer),
            Event::Signal(_) => self.run.interrupt(cx),
            _ => {}
        }
    }
}

/// Runs `stress echo` until the window and the drain are over, or Ctrl+C.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    positive("--duration", args.duration)?;
    zero_or_more("--drain", args.drain, SECONDS)?;
    zero_or_more("--warmup", args.measure.warmup, SECONDS)?;
    let duration = units::cap("--duration", args.duration).map_err(Error::Usage)?;
    let drain = units::cap("--drain", args.drain).map_err(Error::Usage)?;
    let warmup = units::cap("--warmup", args.measure.warmup).map_err(Error::Usage)?;
    let rate = match (args.rate, args.rate_per_conn) {
        (Some(total), _) => {
            positive("--rate", total)?;
            let per_conn = total / f64::from(args.tcp.conns);
            units::check_rate("--rate (per connection)", per_conn).map_err(Error::Usage)?;
            Some(Rate::Total(total))
        }
        (None, Some(per_conn)) => {
            positive("--rate-per-conn", per_conn)?;
            units::check_rate("--rate-per-conn", per_conn).map_err(Error::Usage)?;
            Some(Rate::PerConn(per_conn))
        }
        (None, None) => None,
    };
    let log = args.measure.create_log()?;
    let setup = prepare(&args.tcp, 0)?;
    let n = u64::from(setup.plan.n);
    let pipeline = u64::from(args.pipeline);
    let size = u64::from(args.size);
    let piece = (SCRATCH_SIZE as u64).max(size);
    let pattern: Vec<u8> = (0..piece + PERIOD)
        .map(|i| b'!' + ((i % PERIOD) * 37 % 94) as u8)
        .collect();
    let mut reactor = super::reactor::<EchoConn>(trace)?;
    let mut run = Run::new("echo", &setup);
    run.set_phases(warmup, args.measure.start_at);
    let timeline = Timeline::new(
        "echo",
        rate.is_some(),
        &args.measure,
        log,
        run.started,
        run.started_wall,
    );
    let mut echo = Echo {
        run,
        measure: args.measure.clone(),
        size,
        pipeline,
        rate,
        period_ns: None,
        duration,
        drain,
        pattern,
        sent_at: vec![0; (n * pipeline) as usize],
        intended_at: if rate.is_some() {
            vec![0; (n * pipeline) as usize]
        } else {
            Vec::new()
        },
        load_ns: (0, 0),
        window_ns: (0, 0),
        timeline,
        send_lag: Latency::new(),
        msgs: 0,
        sent: 0,
        in_flight: 0,
        errors: Tally::new(ERROR_NAMES),
        first_error: None,
        draining: false,
        start_armed: false,
    };
    echo.run.start(reactor.cx());
    echo.check_start(reactor.cx());
    let started = Instant::now();
    reactor
        .run(&mut echo)
        .map_err(|e| Error::io("polling", e))?;
    log::debug!(
        "stress echo: loop ran {:.2} s",
        started.elapsed().as_secs_f64()
    );
    echo.summary(reactor.cx(), args.tcp.json || args.measure.json_intervals)
}
