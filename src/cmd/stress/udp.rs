//! `sockloop stress udp`: the UDP streamer with a built-in sink.
//!
//! Sends `--count` numbered chat messages (`[TIMESTAMP] stress:\n\tNumber I`,
//! the format `udp-stream` uses, so `udp-chat` and `udp-sink` understand
//! them) to a target at `--rate` per second, from the reactor's one UDP
//! socket. Every datagram that arrives on that socket is counted the way
//! `udp-sink` counts ([`crate::stream::Sequences`]): received, unique, lost,
//! reordered (with the largest distance) and duplicated. Without a target the stream is sent to the
//! socket itself, so one command measures a whole UDP path on this machine;
//! with a target (say `sockloop udp-sink`), the target's own report tells
//! what arrived, and this one tells what was sent.
//!
//! Both halves are `udp-stream`'s and `udp-sink`'s own paths
//! ([`crate::stream_io`]): messages written from a template into batches
//! and sent with `sendmmsg` (segmented where the kernel allows), and
//! arrivals taken with `recvmmsg`; the sink keeps one bit per message number.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::report::{self, Json, Tally};
use super::{
    generator_report, print_summary, rate_check, zero_or_more, Generator, SECONDS, TIMER_END,
    TIMER_MODE, TIMER_PROGRESS, UNPACED,
};
use crate::addr;
use crate::chat_msg;
use crate::error::{Error, Result};
use crate::net;
use crate::reactor::{Ctx, Event, Handler, LoopStats};
use crate::stream::{self, Sequences};
use crate::stream_io::{Next, StreamReceiver, StreamSender};
use crate::sys;
use crate::udp;
use crate::udp_batch::Gso;
use crate::units;

/// The sender name in every message.
const NAME: &str = "stress";
/// Timer: the next datagrams are due.
const TIMER_SEND: u64 = TIMER_MODE;
/// The receive buffer the socket asks for (the kernel caps it at
/// `net.core.rmem_max`, 208 KiB by default).
const SINK_RCVBUF: usize = 4 << 20;
/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Send errors (JSON keys under `send_errors`).
const SEND_ERROR_NAMES: &[&str] = &["no_buffer", "refused", "unreachable", "other"];

/// The long `--help` text of `stress udp` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str = "UDP streamer with a built-in sink.\n\n\
        Sends --count numbered chat messages ('[TIMESTAMP] stress:\\n\\tNumber I', as \
        udp-stream does) at --rate per second from one UDP socket. Every datagram that \
        arrives on that socket is checked by a built-in sink: received, unique, lost, \
        reordered (arrived after a higher number; with the largest distance) and \
        duplicated.\n\n\
        Without ADDR the stream goes to the socket itself, so the sink sees it all: a \
        measurement of this machine's UDP path and of the loop. With ADDR (for example a \
        `sockloop udp-sink`), the target's report says what arrived and this one what was \
        sent; compare them.";

/// Command-line options of `stress udp`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "UDP streamer with a built-in sink: sent, received, lost, reordered, duplicated",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop stress udp --count 100000 --rate 50000\n  \
        sockloop udp-sink --port 9002 &   sockloop stress udp 127.0.0.1:9002 --count 10000\n  \
        sockloop stress udp 127.0.0.1:9002 --count 10000 --rate 0 --size 1200 --json"
)]
pub struct Args {
    /// Where to send: HOST:PORT. Without it, the stream goes to this
    /// program's own socket and the built-in sink sees every datagram.
    pub addr: Option<String>,
    /// Messages to send (numbered from 0).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub count: u64,
    /// Messages per second (0: as fast as the socket takes them).
    #[arg(long, value_name = "R", default_value_t = 10_000.0, value_parser = crate::ratelimit::parse_per_second)]
    pub rate: f64,
    /// Pad each message's TEXT to this many bytes ('Number 7 ......'), as udp-stream does.
    #[arg(long, value_name = "B", default_value_t = 0)]
    pub size: usize,
    /// Seconds to wait after the last datagram for stragglers.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub drain: f64,
    /// Print the summary also as one JSON line on stdout (fields: README, appendix).
    #[arg(long)]
    pub json: bool,
    /// Never use UDP segmentation offload: one datagram per message (still
    /// 64 messages per system call), as `udp-stream --no-gso`.
    #[arg(long)]
    pub no_gso: bool,
}

/// The `send_errors` key (index into [`SEND_ERROR_NAMES`]) of a send error.
fn send_error_kind(e: &io::Error) -> usize {
    match e.raw_os_error() {
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => 0,
        Some(libc::ECONNREFUSED) => 1,
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => 2,
        _ => 3,
    }
}

/// `I` out of `[TIMESTAMP] NAME:\n\tNumber I[ padding]`.
pub fn message_number(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    stream::parse_number(chat_msg::parse(text)?.text)
}

/// The `stress udp` handler.
struct Udp {
    target: SocketAddr,
    to_self: bool,
    count: u64,
    size: usize,
    rate: Option<f64>,
    drain: Duration,
    started: Instant,
    sending_done: Option<Instant>,
    /// The sending half: paced batches from a template.
    stream: StreamSender,
    /// The receiving half: batches after the reactor's first read.
    receiver: StreamReceiver,
    /// Datagrams the kernel accepted.
    sent: u64,
    send_errors: Tally,
    blocked: bool,
    timer_armed: bool,
    /// The built-in sink: numbers that came back, counted as `udp-sink` counts.
    sink: Sequences,
    /// Datagrams that came back and were not ours.
    other: u64,
    /// ICMP reports that nothing listens at the target.
    unreachable: u64,
    interrupted: bool,
    loop_start: LoopStats,
    loop_end: Option<LoopStats>,
    cpu_start: Duration,
    cpu_end: Option<Duration>,
    progress_lines: u32,
    progress_last: (u64, u64),
}

impl Udp {
    /// Sends what is due (one batch per turn), then arranges to be called again.
    fn pump(&mut self, cx: &mut Ctx<()>) {
        if self.blocked || self.sending_done.is_some() {
            return;
        }
        let Some(socket) = cx.udp() else {
            return;
        };
        let (errors, target) = (&mut self.send_errors, self.target);
        let next = self.stream.pump(socket, |e, _, n| {
            if errors.total() == 0 {
                log::warn!(
                    "sending to {target}: {} (counted; the stream goes on)",
                    crate::error::plain(e)
                );
            }
            errors.add_n(send_error_kind(e), n);
        });
        self.sent = self.stream.sent().datagrams;
        match next {
            Next::Done => self.finish_sending(cx),
            Next::At(at) => self.arm(cx, at),
            Next::Writable => {
                self.blocked = true;
                cx.udp_want_writable(true);
            }
        }
    }

    /// Counts the datagram the reactor read, and whatever else is queued.
    fn on_datagram(&mut self, cx: &mut Ctx<()>, bytes: &[u8]) {
        let (sink, other) = (&mut self.sink, &mut self.other);
        let mut count = |datagram: &[u8]| match message_number(datagram) {
            Some(i) => {
                sink.record(i);
            }
            None => *other += 1,
        };
        for datagram in self.receiver.datagrams_in(bytes) {
            count(datagram);
        }
        if let Some(socket) = cx.udp() {
            let drained = self
                .receiver
                .drain(socket, cx.stats().polls, |datagram, _, _| count(datagram));
            if let Some(e) = drained.error {
                log::debug!("udp: {e}");
            }
        }
        if self.sending_done.is_some() && self.all_arrived() {
            cx.stop();
        }
    }

    fn arm(&mut self, cx: &mut Ctx<()>, at: Instant) {
        if !self.timer_armed {
            self.timer_armed = true;
            cx.set_timer(at, TIMER_SEND);
        }
    }

    fn send_error(&mut self, e: &io::Error) {
        if self.send_errors.total() == 0 {
            log::warn!(
                "sending to {}: {} (counted; the stream goes on)",
                self.target,
                crate::error::plain(e)
            );
        }
        self.send_errors.add(send_error_kind(e));
    }

    fn finish_sending(&mut self, cx: &mut Ctx<()>) {
        if self.sending_done.is_some() {
            return;
        }
        self.sending_done = Some(Instant::now());
        self.loop_end = Some(cx.stats());
        self.cpu_end = Some(sys::cpu_time());
        if self.all_arrived() || (!self.to_self && self.sink.received() == 0) {
            cx.stop();
        } else {
            cx.set_timer_in(self.drain, TIMER_END);
        }
    }

    fn all_arrived(&self) -> bool {
        self.sink.unique() >= self.sent
    }

    /// Numbers sent that have not come back (never negative).
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.sink.unique())
    }

    fn progress(&mut self, cx: &mut Ctx<()>) {
        self.progress_lines += 1;
        cx.set_timer(
            self.started + Duration::from_secs(u64::from(self.progress_lines) + 1),
            TIMER_PROGRESS,
        );
        let (sent_before, received_before) = self.progress_last;
        self.progress_last = (self.sent, self.sink.received());
        let arrivals = if self.to_self || self.sink.received() > 0 {
            format!(
                "received {}/s, not arrived (yet) {}",
                report::count(self.sink.received() - received_before),
                report::count(self.lost())
            )
        } else {
            "arrivals are counted at the target".to_string()
        };
        crate::errln!(
            "[{:>6.1}s] udp: sent {} of {} ({}/s), {arrivals}, errors {}",
            self.started.elapsed().as_secs_f64(),
            report::count(self.sent),
            report::count(self.count),
            report::count(self.sent - sent_before),
            self.send_errors.total()
        );
    }

    fn summary(&self, cx: &Ctx<()>, json_wanted: bool) -> Result<()> {
        let sending = self
            .sending_done
            .unwrap_or_else(Instant::now)
            .duration_since(self.started);
        let sent_per_s = report::per_second(self.sent, sending);
        let mut lines = vec![format!(
            "stress udp {}{}: {} messages{}{}",
            self.target,
            if self.to_self {
                " (its own socket)"
            } else {
                ""
            },
            report::count(self.count),
            if self.size > 0 {
                format!(" of {} B", self.size)
            } else {
                String::new()
            },
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )];
        let mut json = Json::new();
        json.u64("schema", 1);
        json.str("mode", "udp");
        json.str("target", &self.target.to_string());
        json.f64("duration_s", sending.as_secs_f64(), 3);
        json.bool("interrupted", self.interrupted);
        json.bool("to_self", self.to_self);
        json.u64("count", self.count);
        json.u64("size", self.size as u64);
        lines.push(format!(
            "  sent: {} in {:.2} s ({}/s); send errors: {}; the socket was full {} time(s){}",
            report::count(self.sent),
            sending.as_secs_f64(),
            report::rate(sent_per_s),
            self.send_errors.human(),
            report::count(self.stream.sent().waits),
            match self.stream.sent().no_buffers {
                0 => String::new(),
                n => format!(
                    ", the device's queue (ENOBUFS) {} time(s)",
                    report::count(n)
                ),
            }
        ));
        let sent = self.stream.sent();
        lines.push(format!(
            "  {} sendmmsg call(s), {:.1} datagrams per call; segmentation offload {}",
            report::count(sent.calls),
            sent.datagrams as f64 / sent.calls.max(1) as f64,
            match self.stream.gso() {
                Gso::On => "on".to_string(),
                Gso::Off(why) => format!("off, {why}"),
            }
        ));
        json.u64("sent", self.sent);
        json.f64("sent_per_s", sent_per_s, 0);
        match self.rate {
            Some(asked) => {
                let (line, _) = rate_check("sending", sent_per_s, asked);
                lines.push(line);
                json.f64("asked_per_s", asked, 0);
            }
            None => json.null("asked_per_s"),
        }
        self.send_errors.json(&mut json, "send_errors");
        json.u64("socket_full", self.stream.sent().waits);
        json.u64("device_full", self.stream.sent().no_buffers);
        json.u64("unreachable", self.unreachable);
        if self.unreachable > 0 {
            lines.push(format!(
                "  {} ICMP report(s) that nothing listens at {}",
                report::count(self.unreachable),
                self.target
            ));
        }
        let sink = &self.sink;
        if sink.received() == 0 && !self.to_self {
            lines.push(format!(
                "  built-in sink: nothing came back to this socket; {} reports what arrived there",
                self.target
            ));
        } else {
            lines.push(format!(
                "  built-in sink: received {} (unique {}), lost {}, reordered {} (largest \
                 distance {}), duplicated {}, not ours {}",
                report::count(sink.received()),
                report::count(sink.unique()),
                report::count(self.lost()),
                report::count(sink.reordered()),
                report::count(sink.max_reorder_distance()),
                report::count(sink.duplicated()),
                report::count(self.other)
            ));
        }
        if sink.received() == 0 && !self.to_self {
            // Nothing came back: what arrived is the target's to say, not ours to call lost.
            json.null("sink");
        } else {
            json.begin("sink");
            json.u64("received", sink.received());
            json.u64("unique", sink.unique());
            json.u64("lost", self.lost());
            json.u64("reordered", sink.reordered());
            json.u64("max_reorder_distance", sink.max_reorder_distance());
            json.u64("duplicated", sink.duplicated());
            json.u64("other", self.other);
            json.end();
        }
        let drops = cx.udp().and_then(|socket| udp::drops_now(socket).ok());
        if let Some(drops) = drops.filter(|d| *d > 0 || self.to_self) {
            lines.push(format!(
                "  this socket's full receive buffer dropped {} datagram(s) (SO_MEMINFO)",
                report::count(u64::from(drops))
            ));
        }
        match drops {
            Some(d) => json.u64("rcvbuf_drops", u64::from(d)),
            None => json.null("rcvbuf_drops"),
        }
        let loop_end = self.loop_end.unwrap_or_else(|| cx.stats());
        let cpu_end = self.cpu_end.unwrap_or_else(sys::cpu_time);
        generator_report(
            &Generator {
                utilisation: loop_end.since(&self.loop_start).utilisation(),
                cpu: cpu_end.saturating_sub(self.cpu_start),
                window: sending,
                msgs: Some(self.sent),
                fd_limit: sys::nofile_limit().map(|(soft, _)| soft).unwrap_or(0),
                room: None,
            },
            &mut lines,
            &mut json,
        );
        print_summary(&lines, json_wanted.then(|| json.finish()));
        if self.sent == 0 && self.send_errors.total() > 0 {
            return Err(Error::Failed(format!(
                "stress udp: nothing could be sent to {} ({} send error(s))",
                self.target,
                self.send_errors.total()
            )));
        }
        Ok(())
    }
}

impl Handler for Udp {
    type Conn = ();

    fn handle(&mut self, cx: &mut Ctx<()>, event: Event<'_>) {
        match event {
            Event::Datagram(bytes, _) => self.on_datagram(cx, bytes),
            Event::UdpWritable => {
                self.blocked = false;
                cx.udp_want_writable(false);
                self.pump(cx);
            }
            Event::PeerUnreachable(peer) => {
                if self.unreachable == 0 {
                    log::warn!("{peer}: port unreachable (ICMP): nothing listens there");
                }
                self.unreachable += 1;
            }
            Event::UdpError(e) => self.send_error(&e),
            Event::Timer(TIMER_SEND) => {
                self.timer_armed = false;
                self.pump(cx);
            }
            Event::Timer(TIMER_PROGRESS) => self.progress(cx),
            Event::Timer(TIMER_END) => cx.stop(),
            Event::Signal(_) => {
                self.interrupted = true;
                if self.sending_done.is_none() {
                    self.sending_done = Some(Instant::now());
                    self.loop_end = Some(cx.stats());
                    self.cpu_end = Some(sys::cpu_time());
                }
                cx.stop();
            }
            _ => {}
        }
    }
}

/// Runs `stress udp`: stream, then wait for stragglers, then report.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    zero_or_more("--rate", args.rate, UNPACED)?;
    units::check_rate("--rate", args.rate).map_err(Error::Usage)?;
    zero_or_more("--drain", args.drain, SECONDS)?;
    let drain = units::cap("--drain", args.drain).map_err(Error::Usage)?;
    let longest = chat_msg::format_now(NAME, &stream::text(args.count - 1, args.size)).len();
    if longest > MAX_DATAGRAM {
        return Err(Error::Usage(format!(
            "--size {}: a message would take {longest} bytes, more than one UDP datagram \
             carries ({MAX_DATAGRAM})",
            args.size
        )));
    }
    let target = args.addr.as_deref().map(addr::resolve).transpose()?;
    let bind_ip = match target {
        Some(t) if t.ip().is_loopback() && t.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(t) if t.is_ipv6() => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        Some(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let socket = net::bind_udp(bind_ip, 0)?;
    // The built-in sink reads between batches, but a loop that falls behind
    // (a busy machine) may find two batches waiting: room for a few
    // thousand datagrams, so its own buffer is not what it measures.
    if let Err(e) = udp::set_recv_buffer(&socket, SINK_RCVBUF) {
        log::debug!("receive buffer of {SINK_RCVBUF} bytes refused: {e}");
    }
    let local = socket
        .local_addr()
        .map_err(|e| Error::io("reading the UDP socket's address", e))?;
    let mut reactor = super::reactor::<()>(trace)?;
    let target = target.unwrap_or(local);
    let rate = (args.rate > 0.0).then_some(args.rate);
    let started = Instant::now();
    let stream = StreamSender::new(
        &socket,
        &[target],
        NAME,
        args.size,
        args.count,
        rate,
        !args.no_gso,
        started,
    );
    let receiver = StreamReceiver::new(&socket, false);
    reactor
        .cx()
        .set_udp(socket)
        .map_err(|e| Error::io("registering the UDP socket", e))?;
    let mut udp = Udp {
        target,
        to_self: args.addr.is_none(),
        count: args.count,
        size: args.size,
        rate,
        drain,
        started,
        sending_done: None,
        stream,
        receiver,
        sent: 0,
        send_errors: Tally::new(SEND_ERROR_NAMES),
        blocked: false,
        timer_armed: false,
        sink: Sequences::expecting(args.count),
        other: 0,
        unreachable: 0,
        interrupted: false,
        loop_start: reactor.cx().stats(),
        loop_end: None,
        cpu_start: sys::cpu_time(),
        cpu_end: None,
        progress_lines: 0,
        progress_last: (0, 0),
    };
    log::info!("sending from {local} to {}", udp.target);
    reactor
        .cx()
        .set_timer(udp.started + Duration::from_secs(1), TIMER_PROGRESS);
    udp.pump(reactor.cx());
    reactor.run(&mut udp).map_err(|e| Error::io("polling", e))?;
    udp.summary(reactor.cx(), args.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_numbers_are_read_from_the_chat_text() {
        assert_eq!(
            message_number(b"[2026-11-25T10:00:00.5] stress:\n\tNumber 42"),
            Some(42)
        );
        assert_eq!(
            message_number(b"[2026-11-25T10:00:00] x:\n\tNumber 7 ......"),
            Some(7)
        );
        assert_eq!(
            message_number(b"[2026-11-25T10:00:00] x:\n\tNumber x"),
            None
        );
        assert_eq!(message_number(b"Number 7"), None);
    }
}
