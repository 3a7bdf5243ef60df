//! `sockloop udp-stream`: the lecture's streamer — N numbered chat messages
//! (`Number I`) to every peer — grown into a tool for stress tests.
//!
//! Pacing comes from the loop's timeout: with `--rate R`, message I is due
//! at start + I/R, and the streamer asks the reactor for a deadline
//! ([`Ctx::set_timer`]) instead of sleeping, so signals and ICMP reports
//! are still served between sends. Without a rate it sends a batch per turn
//! and comes straight back.
//!
//! A full socket is waited out, never skipped: the datagram the kernel
//! refused is kept, and sending resumes on [`Event::UdpWritable`]; the
//! summary says how many sends had to wait.
//!
//! What this file must not do: sleep, spin on `WouldBlock`, or count
//! anything the receiver should count — loss is the sink's business.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use crate::addr;
use crate::error::{Error, Result};
use crate::net;
use crate::reactor::{Config, Ctx, Event, Handler, LoopStats, Reactor};
use crate::stream;
use crate::stream_io::{Next, StreamSender};
use crate::udp::{self, MAX_DATAGRAM};
use crate::udp_batch::Gso;
use crate::units;

/// Timer ids: the progress line, and sending (with a generation, so only the
/// latest send deadline counts).
const PROGRESS: u64 = 1;
const SEND_BASE: u64 = 1 << 32;

/// The longest timestamp the chat format writes: `YYYY-MM-DDTHH:MM:SS.ffffff`.
const TIMESTAMP_MAX: usize = stream::STAMP_LEN;

/// The long `--help` text of `udp-stream` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str =
    "Send N numbered chat messages ('Number 0', 'Number 1', ...) to every peer, \
        in the chat text format, so a running udp-chat shows them and udp-sink can count \
        what arrived.\n\n\
        --rate paces the stream through the event loop's timeout (never by sleeping): each \
        tick sends, in one batch, every message that fell due; without it, messages go as \
        fast as the socket takes them. When the socket is full, the stream waits until it \
        has room again instead of dropping the message, and the summary says how many sends \
        had to wait. A progress line is printed each second.\n\n\
        Messages are written from a prepared template (the timestamp, always with \
        microseconds, is patched once per batch; the number is a counter patched in place) \
        and sent with sendmmsg, up to 64 messages per system call. Where the kernel offers \
        UDP segmentation offload (UDP_SEGMENT), each run of up to 64 equal-size messages \
        leaves as one, and the kernel cuts it into datagrams; if the kernel or the route \
        refuses it, the stream says so and goes on one datagram per message.";

/// Command-line options of `udp-stream`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Send N numbered chat messages to every peer (lecture lab 2 streamer)",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop udp-sink --port 6000 &\n  \
        sockloop udp-stream --count 100000 --rate 20000 --size 200 127.0.0.1:6000\n  \
        sockloop udp-stream --count 10 localhost:5000 localhost:5001"
)]
pub struct Args {
    /// How many messages to send to each peer.
    #[arg(long, short)]
    pub count: u64,
    /// Messages per second (to each peer); default: as fast as possible.
    #[arg(long, short, value_parser = crate::ratelimit::parse_per_second)]
    pub rate: Option<f64>,
    /// Pad each message's TEXT to this many bytes ('Number 7 ......').
    #[arg(long, short, default_value_t = 0)]
    pub size: usize,
    /// The sender name in each message.
    #[arg(long, short, default_value = "streamer")]
    pub name: String,
    /// Never use UDP segmentation offload: one datagram per message (still
    /// sent 64 messages per system call). For comparison, or for a path that
    /// mishandles segmented sends.
    #[arg(long)]
    pub no_gso: bool,
    /// Where to send: HOST:PORT, [IPv6]:PORT or IPv4:PORT (one or more).
    #[arg(value_name = "PEER", required = true)]
    pub peers: Vec<String>,
}

/// The streamer's progress and tallies.
struct Streamer {
    stream: StreamSender,
    count: u64,
    started: Instant,
    /// Waiting for [`Event::UdpWritable`].
    waiting: bool,
    /// The send deadline that counts (older ones are ignored when they fire).
    send_timer: Option<(u64, Instant)>,
    send_generation: u64,
    /// Port-unreachable reports per peer: nobody listened there.
    unreachable: BTreeMap<SocketAddr, u64>,
    /// Refused sends warned about (at most 10).
    warned: u64,
    last_progress: (Instant, u64, LoopStats),
    finished: bool,
}

impl Streamer {
    /// Sends what is due, then arranges to be called again: by a deadline,
    /// or by the socket having room.
    fn pump(&mut self, cx: &mut Ctx<()>) {
        if self.waiting || self.finished {
            return;
        }
        let Some(socket) = cx.udp() else {
            return;
        };
        let warned = &mut self.warned;
        let next = self.stream.pump(socket, |e, peer, n| {
            if *warned < 10 {
                *warned += 1;
                log::warn!("{n} datagram(s) to {peer} not sent: {e}");
            }
        });
        match next {
            Next::Done => {
                self.finished = true;
                cx.stop();
            }
            Next::At(at) => self.wake_at(cx, at),
            Next::Writable => {
                self.waiting = true;
                crate::trace!(
                    cx.tracer(),
                    "udp-stream: socket full at message {}, waiting for room",
                    self.stream.messages_done()
                );
                cx.udp_want_writable(true);
            }
        }
    }

    /// Makes sure the loop wakes by `at` to send again.
    fn wake_at(&mut self, cx: &mut Ctx<()>, at: Instant) {
        if let Some((_, pending)) = self.send_timer {
            if pending <= at {
                return;
            }
        }
        self.send_generation += 1;
        let id = SEND_BASE + self.send_generation;
        self.send_timer = Some((id, at));
        cx.set_timer(at, id);
    }

    fn progress(&mut self, cx: &mut Ctx<()>) {
        let now = Instant::now();
        let stats = cx.stats();
        let (then, sent_then, stats_then) = self.last_progress;
        let secs = (now - then).as_secs_f64().max(1e-9);
        let sent = self.stream.sent();
        log::info!(
            "udp-stream: message {}/{} ({:.0} datagrams/s), {} send(s) waited; {}",
            self.stream.messages_done(),
            self.count,
            (sent.datagrams - sent_then) as f64 / secs,
            sent.waits,
            stats.since(&stats_then)
        );
        self.last_progress = (now, sent.datagrams, stats);
        cx.set_timer_in(Duration::from_secs(1), PROGRESS);
    }

    fn summary(&self, stats: &LoopStats) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let sent = self.stream.sent();
        let peers = self.stream.peers().count();
        let gso = match self.stream.gso() {
            Gso::On => "on".to_string(),
            Gso::Off(why) => format!("off, {why}"),
        };
        let mut text = format!(
            "udp-stream: sent {} of {} message(s) to {} peer(s): {} datagrams, {} bytes in {:.3} s \
             ({:.0} datagrams/s, {:.2} MB/s); {} sends had to wait for room in the socket; \
             {} failed; loop utilisation {:.0}%",
            self.stream.messages_done(),
            self.count,
            peers,
            sent.datagrams,
            sent.bytes,
            secs,
            sent.datagrams as f64 / secs,
            sent.bytes as f64 / secs / 1e6,
            sent.waits,
            sent.failed,
            stats.utilisation() * 100.0
        );
        text.push_str(&format!(
            "\nudp-stream: {} sendmmsg call(s), {:.1} datagrams per call; segmentation offload {gso}",
            sent.calls,
            sent.datagrams as f64 / sent.calls.max(1) as f64
        ));
        if sent.no_buffers > 0 {
            text.push_str(&format!(
                "\nudp-stream: the kernel had no buffers {} time(s) (ENOBUFS: the device's queue \
                 was full); each time the stream waited 1 to 128 ms",
                sent.no_buffers
            ));
        }
        for (peer, n) in &self.unreachable {
            text.push_str(&format!(
                "\nudp-stream: {peer}: {n} port-unreachable report(s) — nothing was listening there"
            ));
        }
        text
    }
}

impl Handler for Streamer {
    type Conn = ();

    fn handle(&mut self, cx: &mut Ctx<()>, event: Event<'_>) {
        match event {
            Event::Timer(PROGRESS) => self.progress(cx),
            Event::Timer(id) if self.send_timer.is_some_and(|(current, _)| current == id) => {
                self.send_timer = None;
                self.pump(cx);
            }
            Event::UdpWritable => {
                self.waiting = false;
                cx.udp_want_writable(false);
                self.pump(cx);
            }
            Event::PeerUnreachable(peer) => {
                let n = self.unreachable.entry(peer).or_insert(0);
                *n += 1;
                if *n == 1 {
                    log::warn!(
                        "{peer} is unreachable: nothing listens on that port (still sending)"
                    );
                }
            }
            Event::UdpError(e) => log::warn!("udp: {e}"),
            Event::Datagram(_, from) => log::debug!("ignored a datagram from {from}"),
            Event::Signal(signal) => {
                log::info!(
                    "{}: stopping at message {}",
                    crate::reactor::signals::name(signal),
                    self.stream.messages_done()
                );
                cx.stop();
            }
            _ => {}
        }
    }
}

/// Runs the streamer until every message went to every peer (or a signal).
pub fn run(args: &Args, trace: bool) -> Result<()> {
    if let Some(rate) = args.rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(Error::Usage(format!(
            "--rate {rate}: give a positive number of messages per second"
        )));
    }
    if let Some(rate) = args.rate {
        units::check_rate("--rate", rate).map_err(Error::Usage)?;
    }
    let header_max = format!("[] {}:\n\t", args.name).len() + TIMESTAMP_MAX;
    let text_max = stream::text(args.count.saturating_sub(1), args.size).len();
    if header_max + text_max > MAX_DATAGRAM {
        return Err(Error::Usage(format!(
            "--size {}: a message would not fit in one datagram (at most {} bytes of text with this name)",
            args.size,
            MAX_DATAGRAM.saturating_sub(header_max)
        )));
    }
    let resolved = args
        .peers
        .iter()
        .map(|peer| addr::resolve(peer))
        .collect::<Result<Vec<_>>>()?;
    let any_v6 = resolved.iter().any(|p| p.is_ipv6());
    let bind = if any_v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let config = Config {
        trace,
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let socket = net::bind_udp(bind, 0)?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::io("reading the socket address", e))?;
    let peers: Vec<SocketAddr> = resolved
        .into_iter()
        .filter_map(|p| udp::peer_for_socket(p, local))
        .collect();
    reactor
        .cx()
        .set_udp(socket)
        .map_err(|e| Error::io("registering the UDP socket", e))?;
    log::debug!("udp-stream: sending from {local}");
    let now = Instant::now();
    let stream = match reactor.cx().udp() {
        Some(socket) => StreamSender::new(
            socket,
            &peers,
            &args.name,
            args.size,
            args.count,
            args.rate,
            !args.no_gso,
            now,
        ),
        None => return Err(Error::Failed("the UDP socket is not registered".into())),
    };
    let mut streamer = Streamer {
        stream,
        count: args.count,
        started: now,
        waiting: false,
        send_timer: None,
        send_generation: 0,
        unreachable: BTreeMap::new(),
        warned: 0,
        last_progress: (now, 0, LoopStats::default()),
        finished: false,
    };
    let cx = reactor.cx();
    cx.set_timer_in(Duration::from_secs(1), PROGRESS);
    streamer.wake_at(cx, now);
    reactor
        .run(&mut streamer)
        .map_err(|e| Error::io("polling", e))?;
    crate::errln!("{}", streamer.summary(&reactor.cx().stats()));
    Ok(())
}
