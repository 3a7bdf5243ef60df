//! `sockloop stress chat`: framed group-chat load with fan-out measured at
//! every receiver.
//!
//! `--conns` clients join a chat relay; the first `--senders` of them each
//! send `--rate` frames per second on a fixed schedule, and every client
//! reads. Each frame's payload is ASCII (valid UTF-8, as the chat requires),
//! stamped with sender, sequence number, intended and actual send time:
//!
//! ```text
//! SLS1 00003 0000000000001042 0000001234567890 0000001234599123 ..
//!      sender sequence         intended (ns)    actual (ns)      padding to --size
//! ```
//!
//! The stamp is the text of a chat message from `stress-SSSSS`, after a
//! header (`[TIMESTAMP] stress-00003:\n\t`, [`HEADER_LEN`] bytes) that a
//! chat server checks and then relays the frame as it came; a receiver reads
//! the stamp after whatever header arrives (a server that re-stamps a frame
//! keeps its text).
//!
//! So a receiver knows, without any shared table, who sent a frame, whether
//! it came in order, and how long it took to fan out — measured from the
//! intended send time (corrected for coordinated omission) and from the
//! actual send, side by side. Expected deliveries are counted as frames are
//! sent (one per other client up at that moment); after the window the run
//! waits `--drain` seconds for the rest, then whatever has not arrived is lost.
//!
//! Frames are decoded with the crate's one codec (`framing.rs`); senders
//! patch digits into a preallocated frame per sender, so the hot path
//! allocates nothing per frame.

use std::time::Duration;

use clap::Args as ClapArgs;

use super::connect::Ended;
use super::report::{self, Latency, Tally};
use super::{
    latency_lines, positive, prepare, rate_check, zero_or_more, Run, TcpArgs, SECONDS,
    SEND_TICK_NS, TIMER_CONN, TIMER_DRAIN, TIMER_END, TIMER_PROGRESS, TIMER_START,
};
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::framing::{self, Decoder, Frame, FrameConfig, PrefixLen};
use crate::reactor::{ConnId, Ctx, Event, Handler};

/// The stamp's first bytes; a frame without them is not ours (a join notice, say).
const MAGIC: &[u8] = b"SLS1 ";
/// Stamp layout: `SLS1 SSSSS QQQQQQQQQQQQQQQQ IIIIIIIIIIIIIIII AAAAAAAAAAAAAAAA `.
/// The three numbers a receiver reads per frame are 16 digits wide, so they
/// parse as two 8-byte words each (see [`parse16`]).
const SENDER: std::ops::Range<usize> = 5..10;
const SEQ: std::ops::Range<usize> = 11..27;
const INTENDED: std::ops::Range<usize> = 28..44;
const ACTUAL: std::ops::Range<usize> = 45..61;
/// Bytes the stamp takes; the smallest `--size`.
pub const STAMP_LEN: usize = 62;
/// Bytes of the chat header in front of the stamp: `[YYYY-MM-DDTHH:MM:SS] stress-SSSSS:\n\t`.
pub const HEADER_LEN: usize = 37;

/// A sender whose connection holds more than this unsent stops stamping new
/// frames until it drains (they fall behind schedule, which the corrected
/// latency shows).
const SENDER_BACKLOG: usize = 256 * 1024;
/// Most bytes one sender writes per turn.
const BATCH_MAX: usize = 64 * 1024;

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
        with --length-bytes 4). The first --senders of them send --rate frames per second \
        each, on a fixed schedule; every client reads. Each frame is stamped with its \
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
        sockloop stress chat 127.0.0.1:9001 --conns 50 --senders 5 --rate 100 --json"
)]
pub struct Args {
    /// Where to connect and how (shared by every TCP mode); --conns is the number of clients.
    #[command(flatten)]
    pub tcp: TcpArgs,
    /// How many of the clients send (all of them read).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99_999))]
    pub senders: u32,
    /// Frames per second per sender, on a fixed schedule (open loop).
    #[arg(long, value_name = "R", default_value_t = 100.0, value_parser = crate::ratelimit::parse_per_second)]
    pub rate: f64,
    /// Message text bytes per frame (at least 62: the stamp; the rest is
    /// padding). Each frame also carries its 37-byte chat header.
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub size: u32,
    /// Seconds the senders send, counted from when every client is connected and settled.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds to wait after the senders stop for frames still on their way.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub drain: f64,
    /// Seconds between the last connection and the first frame, so the
    /// relay has registered every client (and sent its join notices).
    #[arg(long, value_name = "S", default_value_t = 0.3)]
    pub settle: f64,
    /// Length prefix width in bytes: 2 (the course's Python) or 4 (the lecture's slide).
    #[arg(long, value_name = "N", default_value = "2", value_parser = ["2", "4"])]
    pub length_bytes: String,
}

/// One client's state: its number and its frame decoder (no buffer while no
/// frame is split across reads).
#[derive(Debug, Default)]
pub struct ChatConn {
    /// The client number (senders are 0 .. --senders).
    index: u32,
    /// Set when the handshake finishes.
    decoder: Option<Decoder>,
}

/// What one sender keeps: its preallocated frame and its place in the schedule.
struct Sender {
    /// The frame, prefix included; the stamp's digits are patched in place.
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
    config: FrameConfig,
    size: usize,
    n_senders: u32,
    period_ns: u64,
    duration: Duration,
    drain: Duration,
    settle: Duration,
    senders: Vec<Sender>,
    /// Next sequence number receiver `r` expects from sender `s`, at `r * n_senders + s`.
    next_seq: Vec<u64>,
    /// The window's start and planned end, nanoseconds since `run.started`.
    window_ns: (u64, u64),
    /// Reused buffer for one sender's batch of frames.
    batch: Vec<u8>,
    sent: u64,
    expected: u64,
    delivered: u64,
    out_of_order: u64,
    other_frames: u64,
    latency: Latency,
    uncorrected: Latency,
    /// How late frames left against their schedule (timer granularity + generator load).
    send_lag: Latency,
    errors: Tally,
    first_error: Option<String>,
    /// Every client is connected; the window opens after the settle time.
    start_scheduled: bool,
    /// The senders stopped; waiting for the last deliveries.
    draining: bool,
    /// Frames sent at the last progress line.
    progress_sent: u64,
}

/// Writes `value` as fixed-width decimal into `out` (leading zeros; the
/// high digits are dropped if it does not fit, which the widths rule out).
fn put_digits(out: &mut [u8], mut value: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Reads fixed-width decimal digits; `None` if any byte is not a digit.
fn get_digits(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Eight ASCII digits (the first the most significant) as a number, checked
/// and converted a word at a time instead of a digit at a time: a receiver
/// reads three 16-digit numbers per frame, millions of frames per second.
#[inline]
fn parse8(bytes: [u8; 8]) -> Option<u64> {
    let word = u64::from_le_bytes(bytes);
    // Every byte 0x30..=0x3f, and adding 6 keeps it there: '0'..='9'.
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    if word & HIGH != ZEROS || (word + 0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    // Combine neighbours: pairs of digits, then fours, then all eight.
    let mut x = word - ZEROS;
    x = (x * 10 + (x >> 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x * 100 + (x >> 16)) & 0x0000_ffff_0000_ffff;
    x = (x * 10_000 + (x >> 32)) & 0x0000_0000_ffff_ffff;
    Some(x)
}

/// Sixteen ASCII digits as a number (see [`parse8`]).
#[inline]
fn parse16(bytes: &[u8]) -> Option<u64> {
    let high = parse8(bytes.get(..8)?.try_into().ok()?)?;
    let low = parse8(bytes.get(8..16)?.try_into().ok()?)?;
    Some(high * 100_000_000 + low)
}

/// A stamp taken apart: (sender, sequence, intended ns, actual ns). The
/// stamp is the message text: after a chat header, if there is one.
fn parse_stamp(payload: &[u8]) -> Option<(u64, u64, u64, u64)> {
    let payload = match payload.first() {
        Some(b'[') => {
            let end = payload.windows(3).position(|w| w == b":\n\t")?;
            &payload[end + 3..]
        }
        _ => payload,
    };
    if payload.len() < STAMP_LEN || !payload.starts_with(MAGIC) {
        return None;
    }
    Some((
        get_digits(&payload[SENDER])?,
        parse16(&payload[SEQ])?,
        parse16(&payload[INTENDED])?,
        parse16(&payload[ACTUAL])?,
    ))
}

/// The chat header of sender `sender`'s frames, stamped `now`: [`HEADER_LEN`] bytes.
fn chat_header(sender: u32, now: &chrono::NaiveDateTime) -> String {
    format!(
        "[{}] stress-{sender:05}:\n\t",
        now.format("%Y-%m-%dT%H:%M:%S")
    )
}

/// The stamp of sender `sender`'s frames with zeroed numbers, padded to `size`.
fn stamp_template(sender: u32, size: usize) -> Vec<u8> {
    let mut payload = vec![b'.'; size];
    payload[..MAGIC.len()].copy_from_slice(MAGIC);
    put_digits(&mut payload[SENDER], u64::from(sender));
    for range in [SEQ, INTENDED, ACTUAL] {
        put_digits(&mut payload[range.clone()], 0);
        payload[range.end] = b' ';
    }
    payload[SENDER.end] = b' ';
    payload
}

impl Chat {
    fn now_ns(&self) -> u64 {
        self.run.started.elapsed().as_nanos() as u64
    }

    /// When frame `k` of sender `s` is due.
    fn intended_ns(&self, s: u32, k: u64) -> u64 {
        let phase = (f64::from(s) * 0.618_033_988_75).fract() * self.period_ns as f64;
        self.window_ns.0 + phase as u64 + k * self.period_ns
    }

    /// Sends every frame of sender `s` that is due, in one write; sets a
    /// timer for the next one.
    fn pump(&mut self, cx: &mut Ctx<ChatConn>, s: u32) {
        let Some(id) = self.run.connector.conn_of(s) else {
            return;
        };
        if !self.run.measuring() {
            return;
        }
        if cx.conn(id).map_or(0, |c| c.out_len()) > SENDER_BACKLOG {
            self.senders[s as usize].blocked = true;
            return;
        }
        let prefix = self.config.prefix.bytes();
        let now = self.now_ns();
        let receivers = u64::from(self.run.connector.up().saturating_sub(1));
        self.batch.clear();
        let mut k = self.senders[s as usize].next;
        let mut more_now = false;
        loop {
            let due = self.intended_ns(s, k);
            if due >= self.window_ns.1 {
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
            let at = prefix + HEADER_LEN;
            put_digits(&mut frame[at + SEQ.start..at + SEQ.end], k);
            put_digits(&mut frame[at + INTENDED.start..at + INTENDED.end], due);
            put_digits(&mut frame[at + ACTUAL.start..at + ACTUAL.end], now);
            self.batch.extend_from_slice(frame);
            self.send_lag.record(now - due);
            k += 1;
        }
        let n = k - self.senders[s as usize].next;
        self.senders[s as usize].next = k;
        if n > 0 {
            self.sent += n;
            self.expected += n * receivers;
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

    fn on_data(&mut self, cx: &mut Ctx<ChatConn>, id: ConnId, bytes: &[u8]) {
        let now = self.now_ns();
        let Some(st) = cx.state_mut(id) else { return };
        let receiver = st.index;
        let Some(decoder) = st.decoder.as_mut() else {
            return;
        };
        let fed = decoder.feed(bytes, |frame| match frame {
            Frame::Message { text, .. } => self.on_frame(receiver, text.as_bytes(), now),
            Frame::Close => self.other_frames += 1,
        });
        if let Err(e) = fed {
            let text = format!("client {receiver}: the relay sent a bad frame: {e}");
            self.fail(BAD_FRAME, text);
            cx.close(id, CloseReason::Protocol(e.to_string()));
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
        self.delivered += 1;
        self.latency.record(now.saturating_sub(intended));
        self.uncorrected.record(now.saturating_sub(actual));
    }

    fn fail(&mut self, kind: usize, text: String) {
        self.errors.add(kind);
        log::error!("{text}");
        self.first_error.get_or_insert(text);
    }

    /// Once every client is connected (or failed), settle, then send.
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
        cx.set_timer_in(self.settle, TIMER_START);
    }

    fn begin(&mut self, cx: &mut Ctx<ChatConn>) {
        if self.run.window_start.is_some() {
            return;
        }
        self.run.begin_window(cx);
        let start = self.now_ns();
        self.window_ns = (start, start + self.duration.as_nanos() as u64);
        cx.set_timer_in(self.duration, TIMER_END);
        for s in 0..self.n_senders {
            self.pump(cx, s);
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<ChatConn>, timer: u64) {
        if self.run.connector.on_timer(cx, timer) {
            self.check_start(cx);
            return;
        }
        match timer {
            TIMER_PROGRESS => self.progress(cx),
            TIMER_START => self.begin(cx),
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
            .latency
            .quantile(0.99)
            .map(report::duration_ns)
            .unwrap_or_else(|| "-".into());
        let body = format!(
            "{}, {} sent/s, {} delivered/s ({:.2} MB/s), fan-out p99 {p99}, errors {}",
            self.run.conns_text(),
            report::rate(sent_per_s),
            report::rate(delivered_per_s),
            mb_per_s,
            self.errors.total()
        );
        self.run.progress_line(&body);
    }

    fn summary(&mut self, cx: &Ctx<ChatConn>, json_wanted: bool) -> Result<()> {
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
        let plan = self.run.connector.plan();
        let head = format!(
            "stress chat {}: {} clients, {} sender(s) x {} frames/s, {} B frames, {}-byte prefix; \
             {:.2} s measured",
            plan.target,
            report::count(u64::from(plan.n)),
            self.n_senders,
            1e9 / self.period_ns as f64,
            self.size,
            self.config.prefix.bytes(),
            window.as_secs_f64()
        );
        let (mut lines, mut json) = self.run.open_summary(head, window);
        let sent_per_s = report::per_second(self.sent, window);
        let delivered_per_s = report::per_second(self.delivered, window);
        let asked = 1e9 / self.period_ns as f64 * f64::from(self.n_senders);
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
        let (rate_line, _) = rate_check("sending", sent_per_s, asked);
        lines.push(rate_line);
        json.u64("senders", u64::from(self.n_senders));
        json.f64("rate_per_sender", 1e9 / self.period_ns as f64, 3);
        json.u64("size", self.size as u64);
        json.u64("length_bytes", self.config.prefix.bytes() as u64);
        json.u64("sent", self.sent);
        json.f64("sent_per_s", sent_per_s, 0);
        json.f64("asked_per_s", asked, 0);
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
            &self.latency,
            Some(&self.uncorrected),
        );
        let lag = self.send_lag.percentiles();
        lines.push(format!(
            "  send lag (how late frames left against their schedule):                  {}",
            lag.human()
        ));
        lag.json(&mut json, "send_lag");
        self.run.close_summary(
            cx,
            &self.errors,
            self.first_error.as_deref(),
            self.delivered,
            lines,
            json,
            json_wanted,
        )
    }
}

impl Handler for Chat {
    type Conn = ChatConn;

    fn handle(&mut self, cx: &mut Ctx<ChatConn>, event: Event<'_>) {
        match event {
            Event::Connected(id) => {
                if let Some(index) = self.run.connector.on_connected(id) {
                    let config = self.config;
                    if let Some(st) = cx.state_mut(id) {
                        st.index = index;
                        st.decoder = Some(Decoder::new(config));
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
    positive("--duration", args.duration)?;
    positive("--rate", args.rate)?;
    zero_or_more("--drain", args.drain, SECONDS)?;
    zero_or_more("--settle", args.settle, SECONDS)?;
    let prefix = match args.length_bytes.as_str() {
        "4" => PrefixLen::Four,
        _ => PrefixLen::Two,
    };
    let config = FrameConfig {
        prefix,
        max_frame: 65_535,
    };
    let size = args.size as usize;
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
    let setup = prepare(&args.tcp, 0)?;
    let senders = (0..args.senders)
        .map(|s| {
            let mut payload = chat_header(s, &started).into_bytes();
            payload.extend_from_slice(&stamp_template(s, size));
            let mut frame = Vec::with_capacity(framing::encoded_len(payload.len(), config));
            framing::encode_into(&mut frame, &payload, config)
                .map(|()| Sender {
                    frame,
                    next: 0,
                    armed: false,
                    blocked: false,
                })
                .map_err(|e| Error::Usage(format!("--size: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut reactor = super::reactor::<ChatConn>(trace)?;
    let mut chat = Chat {
        run: Run::new("chat", &setup),
        config,
        size,
        n_senders: args.senders,
        period_ns: ((1e9 / args.rate) as u64).max(1),
        duration: Duration::from_secs_f64(args.duration),
        drain: Duration::from_secs_f64(args.drain),
        settle: Duration::from_secs_f64(args.settle),
        senders,
        next_seq: vec![0; args.tcp.conns as usize * args.senders as usize],
        window_ns: (0, 0),
        batch: Vec::with_capacity(BATCH_MAX),
        sent: 0,
        expected: 0,
        delivered: 0,
        out_of_order: 0,
        other_frames: 0,
        latency: Latency::new(),
        uncorrected: Latency::new(),
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
    chat.summary(reactor.cx(), args.tcp.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_what_was_written() {
        let mut payload = stamp_template(3, 64);
        put_digits(&mut payload[SEQ], 1042);
        put_digits(&mut payload[INTENDED], 1_234_567_890);
        put_digits(&mut payload[ACTUAL], 1_234_599_123);
        let text = std::str::from_utf8(&payload).expect("ASCII");
        assert_eq!(
            text,
            "SLS1 00003 0000000000001042 0000001234567890 0000001234599123 ..",
        );
        assert_eq!(
            parse_stamp(&payload),
            Some((3, 1042, 1_234_567_890, 1_234_599_123))
        );
        assert_eq!(parse_stamp(b"[2026-01-01T00:00:00] server:\n\thello"), None);
        // With the chat header in front, as frames go out, or re-stamped by a server.
        let now = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
            .unwrap();
        let header = chat_header(3, &now);
        assert_eq!(header.len(), HEADER_LEN);
        let mut framed = header.into_bytes();
        framed.extend_from_slice(&payload);
        assert_eq!(
            parse_stamp(&framed),
            Some((3, 1042, 1_234_567_890, 1_234_599_123))
        );
        let mut restamped = b"[2026-01-02T03:04:05.000006] guest-4:\n\t".to_vec();
        restamped.extend_from_slice(&payload);
        assert_eq!(
            parse_stamp(&restamped),
            Some((3, 1042, 1_234_567_890, 1_234_599_123))
        );
    }

    #[test]
    fn eight_digits_at_a_time_agree_with_one_at_a_time() {
        for value in [0u64, 7, 42, 1_000_000, 12_345_678, 99_999_999] {
            let text = format!("{value:08}");
            assert_eq!(parse8(text.as_bytes().try_into().unwrap()), Some(value));
        }
        for bad in [
            *b"1234567a",
            *b"1234/678",
            *b"12345:78",
            *b" 1234567",
            *b"\x7f1234567",
        ] {
            assert_eq!(parse8(bad), None, "{:?}", String::from_utf8_lossy(&bad));
        }
        assert_eq!(parse16(b"0000001234567890"), Some(1_234_567_890));
        assert_eq!(parse16(b"9999999999999999"), Some(9_999_999_999_999_999));
        assert_eq!(parse16(b"00000012345678"), None);
    }
}
