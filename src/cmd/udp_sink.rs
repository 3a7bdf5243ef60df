//! `sockloop udp-sink`: receives a `udp-stream` and reports what UDP did to
//! it — received, lost, reordered, duplicated, rate, jitter — and how much of
//! the loss was the sink's own fault.
//!
//! The counting is [`stream::Sequences`] (exact, bounded); this file only
//! feeds it. The one thing only the socket can tell is how many datagrams
//! the kernel dropped because this sink's receive buffer was full: the
//! reactor keeps the `SO_RXQ_OVFL` count ([`Ctx::udp_dropped`]) and the
//! final report reads the counter once more ([`udp::drops_now`]), so "my
//! sink was too slow" can be told from "the network lost it".
//!
//! Jitter is RFC 3550's, computed from each message's own timestamp (the
//! `[TIMESTAMP]` of the chat format, microsecond precision) and its arrival
//! time. On one machine both come from the same clock; across machines a
//! constant clock offset cancels out, a drifting one does not.
//!
//! Datagrams are taken in batches: the reactor hands over the first one of
//! each wake-up, and [`StreamReceiver::drain`] takes the rest with
//! `recvmmsg`, 64 per system call. Each datagram is still counted on its
//! own, exactly as one read at a time would count it; only the arrival time
//! is read once per batch.
//!
//! What this file must not do: decide what counts as lost or reordered
//! (that is `stream.rs`), or print to stdout anything but the final report.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use crate::chat_msg;
use crate::error::{Error, Result};
use crate::net;
use crate::reactor::{console, Config, Ctx, Event, Handler, LoopStats, Reactor};
use crate::stream::{self, Arrival, Jitter, Sequences};
use crate::stream_io::{self, StreamReceiver};
use crate::udp;
use crate::units;

/// Timer ids.
const LIVE: u64 = 1;
const END: u64 = 2;
const IDLE: u64 = 3;

/// The long `--help` text of `udp-sink` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str =
    "Receive a udp-stream ('Number I' messages) and report what arrived: received, \
        unique, lost (numbers never seen, from 0 up to the highest seen, or up to --count), \
        how many of the lost ones this sink's own full receive buffer dropped (the kernel's \
        SO_RXQ_OVFL count), reordered (arrived after a higher number, with the largest \
        distance), duplicated, messages/s and jitter (RFC 3550, from the messages' \
        timestamps).\n\n\
        Counts are exact and never negative. A live line goes to stderr each second; the \
        final report goes to stdout, as text or (--json) one JSON line.\n\n\
        The run ends after --duration, or --idle-timeout seconds after the last datagram \
        once one arrived, or when all --count messages arrived, or on Ctrl+C.";

/// Command-line options of `udp-sink`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Receive a udp-stream and report loss, reordering, duplication, rate and jitter",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop udp-sink --port 6000\n  \
        sockloop udp-stream --count 100000 127.0.0.1:6000\n  \
        sockloop udp-sink --port 6000 --rcvbuf 4096 --json   (a tiny buffer: watch it drop)",
    after_long_help = "JSON fields (--json), all numbers:\n  \
        schema 1; received, unique, expected, highest (null before any arrival), lost,\n  \
        lost_to_rcvbuf = min(lost, rcvbuf_drops), rcvbuf_drops (the kernel's count for this\n  \
        socket), reordered, max_reorder_distance, duplicated, not_stream, out_of_range,\n  \
        elapsed_s, active_s (first to last arrival), msgs_per_s (over active_s), jitter_ms,\n  \
        jitter_samples, loop_utilisation (0..1).\n\n\
        Examples:\n  sockloop udp-sink --port 6000\n  \
        sockloop udp-stream --count 100000 127.0.0.1:6000\n  \
        sockloop udp-sink --port 6000 --rcvbuf 4096 --json   (a tiny buffer: watch it drop)"
)]
pub struct Args {
    /// UDP port to receive on (0: the system picks one, printed at start).
    #[arg(long, short, default_value_t = 0)]
    pub port: u16,
    /// Local address to bind: an IP (0.0.0.0: every IPv4 interface; :: for IPv6 and IPv4;
    /// [::1] works too) or a host name such as localhost.
    #[arg(long, default_value = "0.0.0.0", value_parser = crate::units::parse_bind)]
    pub bind: IpAddr,
    /// Stop after this many seconds.
    #[arg(long, short, value_name = "S")]
    pub duration: Option<f64>,
    /// Stop S seconds after the last datagram, once one arrived (0: never).
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub idle_timeout: f64,
    /// The stream's --count: numbers below it that never arrive are lost even
    /// at the tail, and the run ends as soon as all of them arrived.
    #[arg(long, short, value_name = "N")]
    pub count: Option<u64>,
    /// Print the final report as one JSON line ("schema": 1; the fields are listed below).
    #[arg(long)]
    pub json: bool,
    /// Ask for a receive buffer of this many bytes (SO_RCVBUF; the kernel doubles
    /// it and clamps it). A tiny one shows the sink dropping what it cannot keep up with.
    #[arg(long, value_name = "BYTES")]
    pub rcvbuf: Option<usize>,
    /// Let the kernel hand over runs of equal-size datagrams as one buffer
    /// (UDP_GRO), cut back into datagrams here: far less work per datagram.
    /// The price: the kernel then counts a dropped run as one drop, so
    /// rcvbuf_drops and lost_to_rcvbuf become lower bounds.
    #[arg(long)]
    pub gro: bool,
}

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

/// What the sink counts of each datagram.
#[derive(Debug, Default)]
struct Counts {
    seq: Sequences,
    jitter: Jitter,
    timestamps: Timestamps,
    /// Datagrams that are not `Number I` chat messages.
    not_stream: u64,
}

impl Counts {
    /// Counts one datagram that arrived at `arrived_us` (microseconds since the epoch).
    fn count(&mut self, bytes: &[u8], arrived_us: i64) {
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
}

/// The sink's tallies.
struct Sink {
    counts: Counts,
    receiver: StreamReceiver,
    started: Instant,
    first_arrival: Option<Instant>,
    last_arrival: Option<Instant>,
    idle_timeout: Option<Duration>,
    /// Received count, instant and loop figures at the last live line.
    last_live: (u64, Instant, LoopStats),
    /// Datagrams cut short (warned about once).
    truncated: u64,
}

impl Sink {
    /// Counts the datagram the reactor read, and whatever else is queued.
    fn on_datagram(&mut self, cx: &mut Ctx<()>, bytes: &[u8]) {
        let arrived = stream_io::now_micros();
        for datagram in self.receiver.datagrams_in(bytes) {
            self.counts.count(datagram, arrived);
        }
        if let Some(socket) = cx.udp() {
            let counts = &mut self.counts;
            let drained = self
                .receiver
                .drain(socket, cx.stats().polls, |datagram, _, arrived| {
                    counts.count(datagram, arrived)
                });
            if drained.truncated > 0 && self.truncated == 0 {
                log::warn!("udp: a datagram was longer than the receive buffer and was cut");
            }
            self.truncated += drained.truncated;
            if let Some(e) = drained.error {
                log::debug!("udp: {e}");
            }
        }
        let now = Instant::now();
        if self.first_arrival.is_none() {
            self.first_arrival = Some(now);
            if let Some(idle) = self.idle_timeout {
                cx.set_timer(now + idle, IDLE);
            }
        }
        self.last_arrival = Some(now);
        if self.counts.seq.complete() {
            log::debug!(
                "all {} expected messages arrived",
                self.counts.seq.expected()
            );
            cx.stop();
        }
    }

    fn on_idle_timer(&mut self, cx: &mut Ctx<()>) {
        let (Some(idle), Some(last)) = (self.idle_timeout, self.last_arrival) else {
            return;
        };
        let quiet_until = last + idle;
        if Instant::now() >= quiet_until {
            log::debug!("nothing arrived for {idle:?}: the stream is over");
            cx.stop();
        } else {
            cx.set_timer(quiet_until, IDLE);
        }
    }

    fn live_line(&mut self, cx: &mut Ctx<()>) {
        let now = Instant::now();
        let stats = cx.stats();
        let (received_then, then, stats_then) = self.last_live;
        let secs = (now - then).as_secs_f64().max(1e-9);
        let drops = drops(cx);
        log::info!(
            "udp-sink: {} received ({:.0}/s), {} lost ({} by this sink's full buffer), \
             {} reordered, {} duplicated, jitter {:.3} ms; {}",
            self.counts.seq.received(),
            (self.counts.seq.received() - received_then) as f64 / secs,
            self.counts.seq.lost(),
            self.counts.seq.lost().min(drops as u64),
            self.counts.seq.reordered(),
            self.counts.seq.duplicated(),
            self.counts.jitter.millis(),
            stats.since(&stats_then)
        );
        self.last_live = (self.counts.seq.received(), now, stats);
        cx.set_timer_in(Duration::from_secs(1), LIVE);
    }

    /// The figures of the final report.
    fn report(&self, rcvbuf_drops: u32, stats: &LoopStats) -> Report {
        let active = match (self.first_arrival, self.last_arrival) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        };
        let lost = self.counts.seq.lost();
        Report {
            received: self.counts.seq.received(),
            unique: self.counts.seq.unique(),
            expected: self.counts.seq.expected(),
            highest: self.counts.seq.highest(),
            lost,
            rcvbuf_drops: rcvbuf_drops as u64,
            lost_to_rcvbuf: lost.min(rcvbuf_drops as u64),
            reordered: self.counts.seq.reordered(),
            max_reorder_distance: self.counts.seq.max_reorder_distance(),
            duplicated: self.counts.seq.duplicated(),
            not_stream: self.counts.not_stream,
            out_of_range: self.counts.seq.out_of_range(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            active_s: active,
            msgs_per_s: if active > 0.0 {
                self.counts.seq.received() as f64 / active
            } else {
                0.0
            },
            jitter_ms: self.counts.jitter.millis(),
            jitter_samples: self.counts.jitter.samples(),
            loop_utilisation: stats.utilisation(),
        }
    }
}

/// The kernel's drop count for the sink's socket: the counter itself when
/// it can be read, else the last value a datagram carried.
fn drops(cx: &Ctx<()>) -> u32 {
    let carried = cx.udp_dropped();
    match cx.udp().map(udp::drops_now) {
        Some(Ok(now)) => now.max(carried),
        _ => carried,
    }
}

/// The final report's figures; each is a field of the JSON line, by the same name.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Stream messages that arrived (duplicates included).
    pub received: u64,
    /// Distinct message numbers that arrived.
    pub unique: u64,
    /// Numbers that should have arrived: `--count`, or the highest seen + 1.
    pub expected: u64,
    /// The highest number seen.
    pub highest: Option<u64>,
    /// Expected numbers that never arrived.
    pub lost: u64,
    /// Datagrams the kernel dropped for this socket, its receive buffer being full.
    pub rcvbuf_drops: u64,
    /// Of the lost messages, how many the full receive buffer accounts for:
    /// `min(lost, rcvbuf_drops)`.
    pub lost_to_rcvbuf: u64,
    /// Messages that arrived after a higher number.
    pub reordered: u64,
    /// The largest such distance.
    pub max_reorder_distance: u64,
    /// Arrivals of a number that had already arrived.
    pub duplicated: u64,
    /// Datagrams that were not `Number I` chat messages.
    pub not_stream: u64,
    /// Numbers at or above `--count` (or the tracking bound), not counted otherwise.
    pub out_of_range: u64,
    /// Seconds the sink ran.
    pub elapsed_s: f64,
    /// Seconds from the first arrival to the last.
    pub active_s: f64,
    /// Received messages per second over `active_s`.
    pub msgs_per_s: f64,
    /// RFC 3550 interarrival jitter, milliseconds.
    pub jitter_ms: f64,
    /// Messages the jitter was computed from.
    pub jitter_samples: u64,
    /// Share of the time the sink's loop was busy, 0..=1.
    pub loop_utilisation: f64,
}

impl Report {
    /// One JSON object on one line, `"schema": 1` first.
    pub fn to_json(&self) -> String {
        let highest = self
            .highest
            .map_or_else(|| "null".to_string(), |h| h.to_string());
        format!(
            "{{\"schema\":1,\"received\":{},\"unique\":{},\"expected\":{},\"highest\":{highest},\
             \"lost\":{},\"lost_to_rcvbuf\":{},\"rcvbuf_drops\":{},\"reordered\":{},\
             \"max_reorder_distance\":{},\"duplicated\":{},\"not_stream\":{},\"out_of_range\":{},\
             \"elapsed_s\":{:.6},\"active_s\":{:.6},\"msgs_per_s\":{:.1},\"jitter_ms\":{:.6},\
             \"jitter_samples\":{},\"loop_utilisation\":{:.4}}}",
            self.received,
            self.unique,
            self.expected,
            self.lost,
            self.lost_to_rcvbuf,
            self.rcvbuf_drops,
            self.reordered,
            self.max_reorder_distance,
            self.duplicated,
            self.not_stream,
            self.out_of_range,
            self.elapsed_s,
            self.active_s,
            self.msgs_per_s,
            self.jitter_ms,
            self.jitter_samples,
            self.loop_utilisation
        )
    }

    /// The report for people, several lines.
    pub fn to_text(&self) -> String {
        let mut text = String::from("udp-sink report\n");
        let range = match self.highest {
            Some(h) => format!(" (numbers up to {h})"),
            None => String::new(),
        };
        let _ = writeln!(
            text,
            "  received    {} messages, {} unique{range}",
            self.received, self.unique
        );
        let _ = writeln!(
            text,
            "  lost        {} of {} expected; {} of them dropped by this sink's full receive buffer",
            self.lost, self.expected, self.lost_to_rcvbuf
        );
        let _ = writeln!(
            text,
            "  drops       {} datagrams dropped by the kernel for this socket (receive buffer full)",
            self.rcvbuf_drops
        );
        let _ = writeln!(
            text,
            "  reordered   {} (largest distance {})",
            self.reordered, self.max_reorder_distance
        );
        let _ = writeln!(text, "  duplicated  {}", self.duplicated);
        let _ = writeln!(
            text,
            "  rate        {:.0} messages/s over {:.3} s (first to last arrival)",
            self.msgs_per_s, self.active_s
        );
        let _ = writeln!(
            text,
            "  jitter      {:.3} ms (RFC 3550, from the messages' timestamps; {} samples)",
            self.jitter_ms, self.jitter_samples
        );
        if self.not_stream + self.out_of_range > 0 {
            let _ = writeln!(
                text,
                "  ignored     {} datagrams not in the stream format, {} numbers out of range",
                self.not_stream, self.out_of_range
            );
        }
        let _ = writeln!(
            text,
            "  loop        {:.0}% busy over {:.3} s",
            self.loop_utilisation * 100.0,
            self.elapsed_s
        );
        text
    }
}

impl Handler for Sink {
    type Conn = ();

    fn handle(&mut self, cx: &mut Ctx<()>, event: Event<'_>) {
        match event {
            Event::Datagram(bytes, _) => self.on_datagram(cx, bytes),
            Event::Timer(LIVE) => self.live_line(cx),
            Event::Timer(END) => cx.stop(),
            Event::Timer(IDLE) => self.on_idle_timer(cx),
            Event::UdpError(e) => log::warn!("udp: {e}"),
            Event::PeerUnreachable(peer) => log::debug!("{peer} is unreachable"),
            Event::Signal(signal) => {
                log::info!("{}: reporting", crate::reactor::signals::name(signal));
                cx.stop();
            }
            _ => {}
        }
    }
}

/// A seconds option as a `Duration`: 0 or more, at most [`units::MAX_DURATION`].
fn seconds(option: &str, value: f64) -> Result<Duration> {
    units::cap(option, value).map_err(Error::Usage)
}

/// Runs the sink until the stream is over, then prints the report.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    let duration = args
        .duration
        .map(|d| seconds("--duration", d))
        .transpose()?;
    let idle = seconds("--idle-timeout", args.idle_timeout)?;
    if args.rcvbuf == Some(0) {
        return Err(Error::Usage("--rcvbuf 0: give a size in bytes".into()));
    }
    let config = Config {
        trace,
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let socket = net::bind_udp(args.bind, args.port)?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::io("reading the socket address", e))?;
    if let Some(bytes) = args.rcvbuf {
        let granted = udp::set_recv_buffer(&socket, bytes)
            .map_err(|e| Error::io("setting the receive buffer (--rcvbuf)", e))?;
        log::info!("receive buffer: asked for {bytes} bytes, the kernel granted {granted}");
    }
    reactor
        .cx()
        .set_udp(socket)
        .map_err(|e| Error::io("registering the UDP socket", e))?;
    net::announce("udp-sink", local);
    let now = Instant::now();
    let receiver = match reactor.cx().udp() {
        Some(socket) => StreamReceiver::new(socket, args.gro),
        None => return Err(Error::Failed("the UDP socket is not registered".into())),
    };
    if args.gro && !receiver.gro() {
        log::info!("UDP_GRO is not available here; receiving datagram by datagram");
    }
    let mut sink = Sink {
        counts: Counts {
            seq: match args.count {
                Some(count) => Sequences::expecting(count),
                None => Sequences::new(),
            },
            ..Counts::default()
        },
        receiver,
        started: now,
        first_arrival: None,
        last_arrival: None,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        last_live: (0, now, LoopStats::default()),
        truncated: 0,
    };
    let cx = reactor.cx();
    cx.set_timer_in(Duration::from_secs(1), LIVE);
    if let Some(duration) = duration {
        cx.set_timer_in(duration, END);
    }
    if args.count == Some(0) {
        cx.stop();
    }
    reactor
        .run(&mut sink)
        .map_err(|e| Error::io("polling", e))?;
    let cx = reactor.cx();
    let report = sink.report(drops(cx), &cx.stats());
    let mut out = if args.json {
        report.to_json()
    } else {
        report.to_text()
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    // The report is what the user ran this for: wait for stdout to take it
    // (Ctrl+C ends the wait).
    let _ = reactor.cx().stdout_data(out.as_bytes());
    reactor
        .drain_stdout()
        .map_err(|e| Error::io("polling", e))?;
    match console::stdout_failure() {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing the report", e))
        }
        _ => Ok(()),
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
    fn json_report_is_one_line_with_a_schema() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = Sink {
            counts: Counts::default(),
            receiver: StreamReceiver::new(&socket, false),
            started: Instant::now(),
            first_arrival: None,
            last_arrival: None,
            idle_timeout: None,
            last_live: (0, Instant::now(), LoopStats::default()),
            truncated: 0,
        };
        let json = sink.report(0, &LoopStats::default()).to_json();
        assert!(json.starts_with("{\"schema\":1,"));
        assert!(json.contains("\"highest\":null"));
        assert!(!json.contains('\n'));
    }
}
