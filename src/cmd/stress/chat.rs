//! `sockloop stress chat`: framed group-chat load with fan-out measured at
//! every receiver.
//!
//! `--conns` clients join a chat relay; the first `--senders` of them send
//! `--rate` frames per second between them (each `rate/senders`) on a fixed
//! schedule, and every client reads. Each frame's payload is ASCII (valid
//! UTF-8, as the chat requires), stamped with sender, sequence number,
//! intended and actual send time:
//!
//! ```text
//! SLS1 00003 0000000000001042 0000001234567890 0000001234599123 ..
//!      sender sequence         intended (ns)    actual (ns)      padding to --size
//! ```
//!
//! so a receiver knows, without any shared table, who sent a frame, whether
//! it came in order, and how long it took to fan out — measured from the
//! intended send time (corrected for coordinated omission) and from the
//! actual send, side by side. Expected deliveries are counted as frames are
//! sent (one per other client up at that moment); after the window the run
//! waits `--drain` seconds for the rest, then whatever has not arrived is lost.
//!
//! Each framed sender's stamp is the text of a chat message from
//! `stress-SSSSS` (see `stamp.rs`), so a chat server relays it as it came.
//!
//! Given several addresses (the hubs of one room joined through a broker,
//! `chat server --broker`), the clients are spread over them round-robin,
//! delivered/expected and per-sender order are checked across all of them,
//! and the fan-out latency of frames that crossed to another hub is also
//! reported on its own.
//!
//! Frames are decoded with the crate's one codec (`framing.rs`); senders
//! patch digits into a preallocated frame per sender, so the hot path
//! allocates nothing per frame.
//!
//! With `--lines` the clients use the chat server's line door instead
//! (`--line-port`, as `nc` does): each sends its name line first, then one
//! stamp per line; the server delivers each message as `[TIMESTAMP] NAME:`
//! and a tab-indented text line, and a receiver reads the stamp from the
//! latter (`lines.rs` splits them).

use std::time::Duration;

use clap::Args as ClapArgs;

use super::connect::Ended;
use super::report::{self, Latency, Tally};
use super::timeline::{MeasureArgs, Timeline};
use super::{
    latency_lines, measure_report, prepare, rate_check, Run, TcpArgs, SEND_TICK_NS, TIMER_CONN,
    TIMER_DRAIN, TIMER_END, TIMER_INTERVAL, TIMER_PROGRESS, TIMER_START, TIMER_WARMUP,
};
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::framing::{self, Decoder, Frame, FrameConfig, PrefixLen};
use crate::lines::LineDecoder;
use crate::reactor::{ConnId, Ctx, Event, Handler};
use crate::units;

pub use super::stamp::STAMP_LEN;
use super::stamp::{
    chat_header, parse_stamp, put_digits, stamp_template, ACTUAL, HEADER_LEN, INTENDED, SEQ,
};

/// A sender whose connection holds more than this unsent stops stamping new
/// frames until it drains (they fall behind schedule, which the corrected
/// latency shows).
const SENDER_BACKLOG: usize = 256 * 1024;
/// Most bytes one sender writes per turn.
const BATCH_MAX: usize = 64 * 1024;

/// Frames per second in all when neither `--rate` nor `--rate-per-sender` is given.
const DEFAULT_RATE: f64 = 100.0;

/// Error kinds (JSON keys under `errors`).
const ERROR_NAMES: &[&str] = &["lost", "out_of_order", "bad_frame", "closed"];
const LOST: usize = 0;
const OUT_OF_ORDER: usize = 1;
const BAD_FRAME: usize = 2;
const CLOSED: usize = 3;

/// The long `--help` text of `stress chat` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str =
    "Framed group-chat load: senders at a fixed rate, fan-out latency at every \
        receiver.\n\n\
        Opens --conns framed clients to a chat relay (2-byte big-endian length prefix, or 4 \
        with --length-bytes 4; or, with --lines, newline-terminated clients of the chat \
        server's --line-port). The first --senders of them send --rate frames per second \
        between them (the total, as wrk2's -R), each on a fixed schedule; every client \
        reads. Each frame is stamped with its \
        sender, a sequence number and its send time, so every receiver checks that each \
        sender's frames arrive in order, and the report gives expected vs delivered frames \
        (expected: one per other client up when the frame was sent), frames delivered per \
        second and fan-out latency, corrected for coordinated omission and uncorrected. \
        Lost or reordered frames are errors (exit 1).";

/// Command-line options of `stress chat`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Framed group-chat load: senders at a fixed rate, fan-out latency at every receiver",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop chat server --relay-only --port 9001 &\n  \
        sockloop stress chat 127.0.0.1:9001 --conns 100 --senders 10 --rate 1000 --size 64\n  \
        sockloop stress chat 127.0.0.1:9001 --conns 50 --senders 5 --rate 100 --json\n  \
        sockloop chat server --relay-only --port 9001 --line-port 9002 &\n  \
        sockloop stress chat 127.0.0.1:9002 --lines -c 20 --senders 2 -R 200\n  \
        sockloop stress chat 127.0.0.1:9001 127.0.0.1:9002 --conns 100 --senders 10   (two hubs of one room)"
)]
pub struct Args {
    /// Where to connect and how (shared by every TCP mode); --conns is the number of clients.
    #[command(flatten)]
    pub tcp: TcpArgs,
    /// More hubs of the same room (joined through `chat server --broker`):
    /// client i connects to address i mod the number of addresses.
    #[arg(value_name = "MORE_ADDRS")]
    pub more: Vec<String>,
    /// How many of the clients send (all of them read).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99_999))]
    pub senders: u32,
    /// Frames per second from all senders together (1000, 10k), each
    /// sending R/senders on a fixed schedule (open loop). 0: unpaced, every
    /// sender as fast as its connection takes frames. Default: 100.
    #[arg(short = 'R', long, value_name = "R", value_parser = crate::units::parse_rate,
          conflicts_with = "rate_per_sender")]
    pub rate: Option<f64>,
    /// Frames per second from every sender (R x senders in all; 0: unpaced).
    #[arg(long, value_name = "R", value_parser = crate::units::parse_rate)]
    pub rate_per_sender: Option<f64>,
    /// Message text bytes per frame (at least 62: the stamp; the rest is
    /// padding; 1K works). A framed client's frame also carries its 37-byte
    /// chat header.
    #[arg(short = 's', long, value_name = "BYTES", default_value = "64", value_parser = crate::units::parse_size)]
    pub size: usize,
    /// How long the senders send (10s, 500ms, 2m; a bare number is
    /// seconds), counted from when every client is connected and settled
    /// (and the warmup is over).
    #[arg(short = 'd', long, value_name = "DURATION", default_value = "5s",
          value_parser = crate::units::parse_duration_nonzero)]
    pub duration: Duration,
    /// How long to wait after the senders stop for frames still on their way.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::units::parse_duration)]
    pub drain: Duration,
    /// How long to wait between the last connection and the first frame, so
    /// the relay has registered every client (and sent its join notices).
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = crate::units::parse_duration)]
    pub settle: Duration,
    /// Length prefix width in bytes: 2 (the course's Python) or 4 (the lecture's slide).
    #[arg(long, value_name = "N", default_value = "2", value_parser = ["2", "4"])]
    pub length_bytes: String,
    /// Speak the chat server's line door (its --line-port) instead of frames:
    /// each client sends its name line, then one stamped line per message.
    #[arg(long)]
    pub lines: bool,
    /// Warmup, start time, interval log, plot, spectrum.
    #[command(flatten)]
    pub measure: MeasureArgs,
}

/// How a client reads what the relay sends it.
#[derive(Debug)]
enum Input {
    /// Length-prefixed frames.
    Frames(Decoder),
    /// Newline-terminated lines (the line door).
    Lines(LineDecoder),
}

/// One client's state: its number and its decoder (no buffer while no
/// frame or line is split across reads).
#[derive(Debug, Default)]
pub struct ChatConn {
    /// The client number (senders are 0 .. --senders).
    index: u32,
    /// Set when the handshake finishes.
    input: Option<Input>,
}

/// What one sender keeps: its preallocated frame and its place in the schedule.
struct Sender {
    /// The frame as it goes on the wire (prefix or trailing newline
    /// included); the stamp's digits are patched in place.
    frame: Vec<u8>,
    /// The next sequence number.
    next: u64,
    /// A timer is set for its next due frame.
    armed: bool,
    /// Stopped stamping because its connection's output is full; resumed on drain.
    blocked: bool,
}

/// The `stress chat` handler.
struct Chat {
    run: Run,
    measure: MeasureArgs,
    config: FrameConfig,
    /// The line door: a newline after each stamp, no length prefix.
    lines: bool,
    /// Where the stamp starts in a sender's wire frame (the prefix's length, or 0).
    stamp_at: usize,
    size: usize,
    n_senders: u32,
    /// Nanoseconds between two frames of one sender; 0: unpaced (`--rate 0`).
    period_ns: u64,
    duration: Duration,
    drain: Duration,
    settle: Duration,
    senders: Vec<Sender>,
    /// Next sequence number receiver `r` expects from sender `s`, at `r * n_senders + s`.
    next_seq: Vec<u64>,
    /// The load's start (the schedule's origin, before any warmup) and its
    /// planned end, nanoseconds since `run.started`.
    load_ns: (u64, u64),
    /// The window's start (after the warmup) and planned end, same clock.
    /// A frame counts when its intended send time falls in it.
    window_ns: (u64, u64),
    /// Reused buffer for one sender's batch of frames.
    batch: Vec<u8>,
    sent: u64,
    expected: u64,
    delivered: u64,
    out_of_order: u64,
    other_frames: u64,
    /// Fan-out latency, corrected and uncorrected, second by second.
    timeline: Timeline,
    /// Addresses the clients are spread over (client i: address i mod hubs).
    hubs: u32,
    /// Fan-out latency, from the actual send, of frames received on another
    /// hub than their sender's (the path through the broker).
    cross_hub: Latency,
    /// How late frames left against their schedule (timer granularity + generator load).
    send_lag: Latency,
    errors: Tally,
    first_error: Option<String>,
    /// Every client is connected; the load begins after the settle time.
    start_scheduled: bool,
    /// The senders stopped; waiting for the last deliveries.
    draining: bool,
    /// Frames sent at the last progress line.
    progress_sent: u64,
}

impl Chat {
    fn now_ns(&self) -> u64 {
        self.run.started.elapsed().as_nanos() as u64
    }

    /// When frame `k` of sender `s` is due.
    fn intended_ns(&self, s: u32, k: u64) -> u64 {
        let phase = (f64::from(s) * 0.618_033_988_75).fract() * self.period_ns as f64;
        self.load_ns.0 + phase as u64 + k * self.period_ns
    }

    /// Sends every frame of sender `s` that is due, in one write; sets a
    /// timer for the next one.
    fn pump(&mut self, cx: &mut Ctx<ChatConn>, s: u32) {
        let Some(id) = self.run.connector.conn_of(s) else {
            return;
        };
        if !self.run.loading() {
            return;
        }
        if cx.conn(id).map_or(0, |c| c.out_len()) > SENDER_BACKLOG {
            self.senders[s as usize].blocked = true;
            return;
        }
        if self.period_ns == 0 {
            return self.pump_unpaced(cx, s, id);
        }
        let prefix = self.stamp_at;
        let now = self.now_ns();
        let receivers = u64::from(self.run.connector.up().saturating_sub(1));
        self.batch.clear();
        let mut k = self.senders[s as usize].next;
        let mut more_now = false;
        loop {
            let due = self.intended_ns(s, k);
            if due >= self.load_ns.1 {
                break;
            }
            if due > now {
                let sender = &mut self.senders[s as usize];
                if !sender.armed {
                    sender.armed = true;
                    cx.set_timer(
                        self.run.started + Duration::from_nanos(due.max(now + SEND_TICK_NS)),
                        TIMER_CONN + u64::from(s),
                    );
                }
                break;
            }
            let frame = &mut self.senders[s as usize].frame;
            if self.batch.len() + frame.len() > BATCH_MAX {
                more_now = true;
                break;
            }
            put_digits(&mut frame[prefix + SEQ.start..prefix + SEQ.end], k);
            put_digits(
                &mut frame[prefix + INTENDED.start..prefix + INTENDED.end],
                due,
            );
            put_digits(&mut frame[prefix + ACTUAL.start..prefix + ACTUAL.end], now);
            self.batch.extend_from_slice(frame);
            if due >= self.window_ns.0 {
                // Frames due in the warmup go out and are checked, never counted.
                self.send_lag.record(now - due);
                self.sent += 1;
                self.expected += receivers;
            }
            k += 1;
        }
        let n = k - self.senders[s as usize].next;
        self.senders[s as usize].next = k;
        if n > 0 {
            cx.send(id, &self.batch);
        }
        if more_now {
            // A full batch: the rest goes next turn, after others had theirs.
            let sender = &mut self.senders[s as usize];
            if !sender.armed {
                sender.armed = true;
                cx.set_timer_in(Duration::ZERO, TIMER_CONN + u64::from(s));
            }
        }
    }

    /// `--rate 0`: a batch of frames, each stamped as intended now, then
    /// the next batch at the next turn, until the connection holds
    /// [`SENDER_BACKLOG`] unsent (resumed when it drains) or the load ends.
    fn pump_unpaced(&mut self, cx: &mut Ctx<ChatConn>, s: u32, id: ConnId) {
        let now = self.now_ns();
        if now >= self.load_ns.1 {
            return;
        }
        let prefix = self.stamp_at;
        let receivers = u64::from(self.run.connector.up().saturating_sub(1));
        let counted = now >= self.window_ns.0;
        self.batch.clear();
        let sender = &mut self.senders[s as usize];
        let mut k = sender.next;
        while self.batch.len() + sender.frame.len() <= BATCH_MAX {
            let frame = &mut sender.frame;
            put_digits(&mut frame[prefix + SEQ.start..prefix + SEQ.end], k);
            put_digits(
                &mut frame[prefix + INTENDED.start..prefix + INTENDED.end],
                now,
            );
            put_digits(&mut frame[prefix + ACTUAL.start..prefix + ACTUAL.end], now);
            self.batch.extend_from_slice(frame);
            k += 1;
        }
        let n = k - sender.next;
        sender.next = k;
        if counted {
            self.sent += n;
            self.expected += n * receivers;
        }
        cx.send(id, &self.batch);
        let sender = &mut self.senders[s as usize];
        if cx.conn(id).map_or(0, |c| c.out_len()) > SENDER_BACKLOG {
            sender.blocked = true;
        } else if !sender.armed {
            sender.armed = true;
            cx.set_timer_in(Duration::ZERO, TIMER_CONN + u64::from(s));
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<ChatConn>, id: ConnId, bytes: &[u8]) {
        let now = self.now_ns();
        let Some(st) = cx.state_mut(id) else { return };
        let receiver = st.index;
        let fed = match st.input.as_mut() {
            None => return,
            Some(Input::Frames(decoder)) => decoder
                .feed(bytes, |frame| match frame {
                    Frame::Message { text, .. } => self.on_frame(receiver, text.as_bytes(), now),
                    Frame::Close => self.other_frames += 1,
                })
                .map_err(|e| e.to_string()),
            Some(Input::Lines(decoder)) => decoder
                .feed(bytes, |line| {
                    // A message is `[TIMESTAMP] NAME:` and its text, indented
                    // by a tab; anything else (the name prompt) is not ours.
                    if let Some(text) = line.strip_prefix(b"\t") {
                        self.on_frame(receiver, text, now);
                    } else if !(line.starts_with(b"[") && line.ends_with(b":")) {
                        self.other_frames += 1;
                    }
                })
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = fed {
            let text = format!("client {receiver}: the relay sent a bad frame: {e}");
            self.fail(BAD_FRAME, text);
            cx.close(id, CloseReason::Protocol(e));
        }
        if self.draining && self.delivered >= self.expected {
            cx.stop();
        }
    }

    fn on_frame(&mut self, receiver: u32, payload: &[u8], now: u64) {
        let Some((sender, seq, intended, actual)) = parse_stamp(payload) else {
            self.other_frames += 1;
            return;
        };
        if sender >= u64::from(self.n_senders) || sender == u64::from(receiver) {
            // Not a sender of this run, or our own frame sent back to us.
            self.other_frames += 1;
            return;
        }
        let slot = (u64::from(receiver) * u64::from(self.n_senders) + sender) as usize;
        let want = self.next_seq[slot];
        if seq != want {
            self.out_of_order += 1;
            if self.out_of_order <= 3 {
                let text = if seq > want {
                    format!(
                        "client {receiver}: sender {sender}'s frame {seq} arrived while frame \
                         {want} was expected ({} frame(s) skipped)",
                        seq - want
                    )
                } else {
                    format!(
                        "client {receiver}: sender {sender}'s frame {seq} arrived after frame \
                         {} (out of order or duplicated)",
                        want - 1
                    )
                };
                self.fail(OUT_OF_ORDER, text);
            } else {
                self.errors.add(OUT_OF_ORDER);
            }
        }
        self.next_seq[slot] = want.max(seq + 1);
        if intended < self.window_ns.0 {
            return; // A warmup frame: checked for order, not counted.
        }
        self.delivered += 1;
        self.timeline.record_pair(
            now,
            now.saturating_sub(intended),
            now.saturating_sub(actual),
        );
        if self.hubs > 1 && sender % u64::from(self.hubs) != u64::from(receiver % self.hubs) {
            self.cross_hub.record(now.saturating_sub(actual));
        }
    }

    fn fail(&mut self, kind: usize, text: String) {
        self.errors.add(kind);
        log::error!("{text}");
        self.first_error.get_or_insert(text);
    }

    /// Once every client is connected (or failed), settle (or wait for
    /// `--start-at`), then send.
    fn check_start(&mut self, cx: &mut Ctx<ChatConn>) {
        if self.start_scheduled || !self.run.connector.done() {
            return;
        }
        self.start_scheduled = true;
        if self.run.connector.up() == 0 {
            self.run.begin_window(cx);
            self.run.end_window(cx);
            cx.stop();
            return;
        }
        self.run.arm_start(cx, self.settle);
    }

    fn begin(&mut self, cx: &mut Ctx<ChatConn>) {
        if self.run.load_start.is_some() {
            return;
        }
        let (load, window) = self.run.begin_load(cx);
        let end = window + self.duration.as_nanos() as u64;
        self.load_ns = (load, end);
        self.window_ns = (window, end);
        cx.set_timer(self.run.started + Duration::from_nanos(end), TIMER_END);
        let header = self.log_header();
        self.timeline.start(cx, window, &header);
        for s in 0..self.n_senders {
            self.pump(cx, s);
        }
    }

    /// The interval log's header lines: the run, and what its histograms hold.
    fn log_header(&self) -> Vec<String> {
        vec![
            format!("sockloop {}", self.load_text()),
            "Values in nanoseconds. Untagged: fan-out latency from the intended send time \
             (corrected for coordinated omission); Tag=uncorrected: from the actual send."
                .to_string(),
        ]
    }

    /// Frames per second asked of each sender; `None` when unpaced (`--rate 0`).
    fn per_sender(&self) -> Option<f64> {
        (self.period_ns > 0).then(|| 1e9 / self.period_ns as f64)
    }

    /// `stress chat ADDR: 100 clients, 10 sender(s), 1,000 frames/s (100 per sender), ...`.
    fn load_text(&self) -> String {
        let plan = self.run.connector.plan();
        let rate = match self.per_sender() {
            Some(per_sender) => format!(
                "{} frames/s ({} per sender)",
                report::rate(per_sender * f64::from(self.n_senders)),
                report::rate(per_sender)
            ),
            None => "unpaced (each sender as fast as its connection takes frames)".to_string(),
        };
        format!(
            "stress chat {}{}: {} clients, {} sender(s), {rate}, {} B, {}",
            plan.target,
            match plan.also.len() {
                0 => String::new(),
                more => format!(" and {more} more hub(s)"),
            },
            report::count(u64::from(plan.n)),
            self.n_senders,
            self.size,
            if self.lines {
                "line door".to_string()
            } else {
                format!("{}-byte prefix", self.config.prefix.bytes())
            }
        )
    }

    fn on_timer(&mut self, cx: &mut Ctx<ChatConn>, timer: u64) {
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
                // Frames due in the window's last tick go out before it closes.
                for s in 0..self.n_senders {
                    self.pump(cx, s);
                }
                self.run.end_window(cx);
                self.draining = true;
                if self.delivered >= self.expected {
                    cx.stop();
                } else {
                    cx.set_timer_in(self.drain, TIMER_DRAIN);
                }
            }
            TIMER_DRAIN => cx.stop(),
            t if t >= TIMER_CONN => {
                let s = (t - TIMER_CONN) as u32;
                if let Some(sender) = self.senders.get_mut(s as usize) {
                    sender.armed = false;
                    self.pump(cx, s);
                }
            }
            _ => {}
        }
    }

    fn progress(&mut self, cx: &mut Ctx<ChatConn>) {
        let sent_per_s = (self.sent - self.progress_sent) as f64;
        self.progress_sent = self.sent;
        let (delivered_per_s, mb_per_s) =
            self.run
                .progress_tick(cx, self.delivered, self.delivered * self.size as u64);
        let p99 = self
            .timeline
            .last_p99()
            .map(report::duration_ns)
            .unwrap_or_else(|| "-".into());
        let body = format!(
            "{}, {} sent/s, {} delivered/s ({:.2} MB/s), fan-out p99 (last 1 s) {p99}, errors {}",
            self.run.conns_text(),
            report::rate(sent_per_s),
            report::rate(delivered_per_s),
            mb_per_s,
            self.errors.total()
        );
        self.run.progress_line(&body);
    }

    fn summary(&mut self, cx: &Ctx<ChatConn>, json_wanted: bool) -> Result<()> {
        // Deliveries are recorded through the drain: the last interval ends now.
        let now = self.now_ns();
        self.timeline.finish(now);
        let lost = self.expected.saturating_sub(self.delivered);
        if lost > 0 {
            self.errors.add_n(LOST, lost);
            let text = format!(
                "{} of {} expected deliveries had not arrived when the drain time ({:.1} s) ran out",
                report::count(lost),
                report::count(self.expected),
                self.drain.as_secs_f64()
            );
            self.first_error.get_or_insert(text);
        }
        let window = self.run.window();
        let head = format!(
            "{}; {:.2} s measured{}",
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
        let sent_per_s = report::per_second(self.sent, window);
        let delivered_per_s = report::per_second(self.delivered, window);
        let asked = self.per_sender().map(|r| r * f64::from(self.n_senders));
        let ratio = if self.expected > 0 {
            self.delivered as f64 / self.expected as f64
        } else {
            0.0
        };
        lines.push(format!(
            "  frames: sent {} ({}/s), expected {} deliveries, delivered {} ({}/s, {:.2} MB/s), \
             ratio {:.4}",
            report::count(self.sent),
            report::rate(sent_per_s),
            report::count(self.expected),
            report::count(self.delivered),
            report::rate(delivered_per_s),
            delivered_per_s * self.size as f64 / 1e6,
            ratio
        ));
        lines.push(format!(
            "  order: {} frame(s) out of order; lost: {}; frames that were not ours (notices): {}",
            report::count(self.out_of_order),
            report::count(lost),
            report::count(self.other_frames)
        ));
        if let Some(asked) = asked {
            let (rate_line, _) = rate_check("sending", sent_per_s, asked);
            lines.push(rate_line);
        }
        json.u64("senders", u64::from(self.n_senders));
        json.opt_f64("rate_per_sender", self.per_sender(), 3);
        json.u64("size", self.size as u64);
        json.str("door", if self.lines { "line" } else { "framed" });
        if self.lines {
            json.null("length_bytes");
        } else {
            json.u64("length_bytes", self.config.prefix.bytes() as u64);
        }
        json.u64("sent", self.sent);
        json.f64("sent_per_s", sent_per_s, 0);
        json.opt_f64("asked_per_s", asked, 0);
        json.u64("expected", self.expected);
        json.u64("delivered", self.delivered);
        json.f64("delivered_per_s", delivered_per_s, 0);
        json.f64("delivered_ratio", ratio, 4);
        json.f64("mb_per_s", delivered_per_s * self.size as f64 / 1e6, 3);
        json.u64("lost", lost);
        json.u64("out_of_order", self.out_of_order);
        json.u64("other_frames", self.other_frames);
        latency_lines(
            &mut lines,
            &mut json,
            self.timeline.total(),
            self.timeline.total_uncorrected(),
        );
        json.u64("hubs", u64::from(self.hubs));
        if self.hubs > 1 {
            let cross = self.cross_hub.percentiles();
            lines.push(format!(
                "  fan-out to another hub than the sender's (from the actual send):         {}",
                cross.human()
            ));
            cross.json(&mut json, "latency_cross_hub");
        } else {
            json.null("latency_cross_hub");
        }
        if asked.is_some() {
            let lag = self.send_lag.percentiles();
            lines.push(format!(
                "  send lag (how late frames left against their schedule):                  {}",
                lag.human()
            ));
            lag.json(&mut json, "send_lag");
        } else {
            json.null("send_lag");
        }
        let title = self.load_text();
        let failed = measure_report(
            &mut lines,
            &self.measure,
            &self.timeline,
            Some(&self.send_lag),
            &title,
            "frames",
        );
        let outcome = self.run.close_summary(
            cx,
            &self.errors,
            self.first_error.as_deref(),
            self.delivered,
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

impl Handler for Chat {
    type Conn = ChatConn;

    fn handle(&mut self, cx: &mut Ctx<ChatConn>, event: Event<'_>) {
        match event {
            Event::Connected(id) => {
                if let Some(index) = self.run.connector.on_connected(id) {
                    let config = self.config;
                    let lines = self.lines;
                    if let Some(st) = cx.state_mut(id) {
                        st.index = index;
                        st.input = Some(if lines {
                            Input::Lines(LineDecoder::new(config.max_frame))
                        } else {
                            Input::Frames(Decoder::new(config))
                        });
                    }
                    if lines {
                        // The line door's first line is the client's name.
                        cx.send(id, format!("stress{index}\n").as_bytes());
                    }
                }
                self.run.connector.fill(cx);
                self.check_start(cx);
            }
            Event::Data(id, bytes) => self.on_data(cx, id, bytes),
            Event::Drained(id) => {
                if let Some(s) = self.run.connector.index_of(id) {
                    if let Some(sender) = self.senders.get_mut(s as usize) {
                        if sender.blocked {
                            sender.blocked = false;
                            self.pump(cx, s);
                        }
                    }
                }
            }
            Event::PeerClosed(id) => cx.close(id, CloseReason::Done),
            Event::Closed(id, reason) => match self.run.connector.on_closed(id, reason) {
                Ended::ConnectFailed { .. } => {
                    self.run.connector.fill(cx);
                    self.check_start(cx);
                }
                Ended::Lost { index } => {
                    if !matches!(reason, CloseReason::Protocol(_)) {
                        let text = format!("client {index}: {reason} during the run");
                        self.fail(CLOSED, text);
                    }
                }
                Ended::NotOurs => {}
            },
            Event::Timer(timer) => self.on_timer(cx, timer),
            Event::Signal(_) => self.run.interrupt(cx),
            _ => {}
        }
    }
}

/// Runs `stress chat` until the window and the drain are over, or Ctrl+C.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    // Frames per second from each sender; 0 is unpaced.
    let per_sender = match (args.rate, args.rate_per_sender) {
        (Some(total), _) => total / f64::from(args.senders),
        (None, Some(per_sender)) => per_sender,
        (None, None) => DEFAULT_RATE / f64::from(args.senders),
    };
    units::check_rate("--rate (per sender)", per_sender).map_err(Error::Usage)?;
    let duration = units::cap("--duration", args.duration).map_err(Error::Usage)?;
    let drain = units::cap("--drain", args.drain).map_err(Error::Usage)?;
    let settle = units::cap("--settle", args.settle).map_err(Error::Usage)?;
    let warmup = units::cap("--warmup", args.measure.warmup).map_err(Error::Usage)?;
    let prefix = match args.length_bytes.as_str() {
        "4" => PrefixLen::Four,
        _ => PrefixLen::Two,
    };
    let config = FrameConfig {
        prefix,
        max_frame: 65_535,
    };
    let size = args.size;
    if !(STAMP_LEN..=config.max_frame - HEADER_LEN).contains(&size) {
        return Err(Error::Usage(format!(
            "--size must be between {STAMP_LEN} (the stamp) and {} bytes (a frame also \
             carries its {HEADER_LEN}-byte chat header), not {size}",
            config.max_frame - HEADER_LEN
        )));
    }
    let started = chrono::Local::now().naive_local();
    if args.senders > args.tcp.conns {
        return Err(Error::Usage(format!(
            "--senders {} is more than --conns {}: senders are clients too",
            args.senders, args.tcp.conns
        )));
    }
    let log = args.measure.create_log()?;
    let mut setup = prepare(&args.tcp, 0)?;
    for more in &args.more {
        setup.plan.also.push(crate::addr::resolve(more)?);
    }
    let senders = (0..args.senders)
        .map(|s| {
            let stamp = stamp_template(s, size);
            let frame = if args.lines {
                let mut line = stamp;
                line.push(b'\n');
                line
            } else {
                // A chat message of its own: the server relays it as it came.
                let mut payload = chat_header(s, &started).into_bytes();
                payload.extend_from_slice(&stamp);
                let mut frame = Vec::with_capacity(framing::encoded_len(payload.len(), config));
                framing::encode_into(&mut frame, &payload, config)
                    .map_err(|e| Error::Usage(format!("--size: {e}")))?;
                frame
            };
            Ok(Sender {
                frame,
                next: 0,
                armed: false,
                blocked: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut reactor = super::reactor::<ChatConn>(trace)?;
    let mut run = Run::new("chat", &setup);
    run.set_phases(warmup, args.measure.start_at);
    let timeline = Timeline::new(
        "chat",
        true,
        &args.measure,
        log,
        run.started,
        run.started_wall,
    );
    let mut chat = Chat {
        run,
        measure: args.measure.clone(),
        config,
        lines: args.lines,
        stamp_at: if args.lines {
            0
        } else {
            prefix.bytes() + HEADER_LEN
        },
        size,
        n_senders: args.senders,
        period_ns: if per_sender > 0.0 {
            ((1e9 / per_sender) as u64).max(1)
        } else {
            0
        },
        duration,
        drain,
        settle,
        senders,
        next_seq: vec![0; args.tcp.conns as usize * args.senders as usize],
        load_ns: (0, 0),
        window_ns: (0, 0),
        batch: Vec::with_capacity(BATCH_MAX),
        sent: 0,
        expected: 0,
        delivered: 0,
        out_of_order: 0,
        other_frames: 0,
        timeline,
        hubs: 1 + args.more.len() as u32,
        cross_hub: Latency::new(),
        send_lag: Latency::new(),
        errors: Tally::new(ERROR_NAMES),
        first_error: None,
        start_scheduled: false,
        draining: false,
        progress_sent: 0,
    };
    chat.run.start(reactor.cx());
    chat.check_start(reactor.cx());
    reactor
        .run(&mut chat)
        .map_err(|e| Error::io("polling", e))?;
    chat.summary(reactor.cx(), args.tcp.json || args.measure.json_intervals)
}
