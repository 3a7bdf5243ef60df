//! `sockloop udp-chat`: peer-to-peer group chat over UDP (the lecture's lab 2,
//! the graceful version), with the socket and stdin in one poll instead of a
//! receiver thread.
//!
//! Each message is one datagram in the chat text format
//! ([`chat_msg`]), sent to every known peer: the PEER arguments plus every
//! address a datagram arrives from. The peer set is bounded (`--max-peers`);
//! when it is full, the peer silent the longest is forgotten. A peer leaves
//! when its datagram's whole TEXT is the leave text, or when the kernel
//! reports its port unreachable ([`Event::PeerUnreachable`]) — the lecture's
//! version kept such a ghost for ever.
//!
//! Sending never drops a message because the socket is full: what the kernel
//! does not take waits in a small outbox for [`Event::UdpWritable`], and
//! stdin is not read meanwhile, so the outbox never holds more than one
//! message per peer (plus the leave message).
//!
//! Stdin is split into lines by the shared [`LineDecoder`]. A line longer
//! than the largest datagram can never be sent, and the decoder cannot find
//! where the next line starts, so such a line ends the input: the chat
//! leaves and exits 1 saying why.
//!
//! What this file must not do: touch readiness, parse addresses by hand, or
//! format messages itself — those live in the reactor, [`addr`] and
//! [`chat_msg`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use clap::Args as ClapArgs;

use crate::addr;
use crate::chat_msg::{self, LEAVE_TEXT, NAME_PROMPT};
use crate::error::{Error, Result};
use crate::lines::LineDecoder;
use crate::net;
use crate::reactor::{console, Config, Ctx, Event, Handler, Reactor, StdoutRoom};
use crate::udp::{self, Sent, MAX_DATAGRAM};

/// How long the leave messages may wait for a full socket before the chat exits anyway.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// Receive buffer asked for when the system default is smaller: room for a
/// few datagrams of the largest size.
const MIN_RECV_BUFFER: usize = 256 * 1024;

/// The timer that ends the wait for the leave messages.
const LEAVE_DEADLINE: u64 = 1;

/// The long `--help` text of `udp-chat` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str =
    "Peer-to-peer group chat over UDP: every line you type goes, as one datagram, \
        to every known peer — the PEER arguments plus everyone a message arrives from.\n\n\
        Messages read '[TIMESTAMP] NAME:\\n\\tTEXT', the same text as the course's Python \
        programs, so they can chat with this one. Incoming messages are printed on stdout \
        as they arrive; status lines go to stderr.\n\n\
        End of input (Ctrl+D), Ctrl+C or SIGTERM sends '<LEAVES THE CHAT>' to every peer \
        and exits. A peer that left that way is removed; so is a peer whose port the \
        kernel reports unreachable (it exited without leaving).";

/// Command-line options of `udp-chat`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Peer-to-peer group chat over UDP (lecture lab 2)",
    long_about = LONG_ABOUT,
    after_help = "Examples (three terminals):\n  sockloop udp-chat --port 5000 --name alice\n  \
        sockloop udp-chat --port 5001 --name bob localhost:5000\n  \
        sockloop udp-chat --name carol 127.0.0.1:5000 127.0.0.1:5001"
)]
pub struct Args {
    /// UDP port to receive on (0: the system picks one, printed at start).
    #[arg(long, short, default_value_t = 0)]
    pub port: u16,
    /// Local address to bind: an IP (0.0.0.0: every IPv4 interface; :: for IPv6 and IPv4;
    /// [::1] works too) or a host name such as localhost.
    #[arg(long, default_value = "0.0.0.0", value_parser = crate::units::parse_bind)]
    pub bind: IpAddr,
    /// Your name in the chat. Without it, the first line you type is your name.
    #[arg(long, short)]
    pub name: Option<String>,
    /// Most peers remembered; when full, the one silent the longest is forgotten.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_peers: u32,
    /// Peers to send to from the start: HOST:PORT, [IPv6]:PORT or IPv4:PORT.
    #[arg(value_name = "PEER")]
    pub peers: Vec<String>,
}

/// What [`Peers::heard`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// A peer already known; it is now the most recently heard.
    Known,
    /// A new peer, added.
    New,
    /// A new peer, added after forgetting this one, silent the longest.
    NewForgetting(SocketAddr),
}

/// The known peers, bounded, ordered by when each was last heard from.
#[derive(Debug)]
struct Peers {
    max: usize,
    /// Ticks once per [`Peers::heard`]: a logical clock of arrivals.
    clock: u64,
    /// Each peer and the tick it was last heard at.
    last_heard: HashMap<SocketAddr, u64>,
    /// The same, by tick: the first entry is the peer silent the longest.
    by_silence: BTreeMap<u64, SocketAddr>,
}

impl Peers {
    fn new(max: usize) -> Peers {
        Peers {
            max: max.max(1),
            clock: 0,
            last_heard: HashMap::new(),
            by_silence: BTreeMap::new(),
        }
    }

    /// Notes that `peer` spoke (or was named on the command line).
    fn heard(&mut self, peer: SocketAddr) -> Heard {
        self.clock += 1;
        if let Some(tick) = self.last_heard.insert(peer, self.clock) {
            self.by_silence.remove(&tick);
            self.by_silence.insert(self.clock, peer);
            return Heard::Known;
        }
        self.by_silence.insert(self.clock, peer);
        if self.last_heard.len() <= self.max {
            return Heard::New;
        }
        match self.by_silence.pop_first() {
            Some((_, oldest)) => {
                self.last_heard.remove(&oldest);
                Heard::NewForgetting(oldest)
            }
            None => Heard::New,
        }
    }

    /// Forgets `peer`; returns whether it was known.
    fn remove(&mut self, peer: SocketAddr) -> bool {
        match self.last_heard.remove(&peer) {
            Some(tick) => {
                self.by_silence.remove(&tick);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.last_heard.len()
    }

    /// Every peer, silent-the-longest first.
    fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.by_silence.values().copied()
    }
}

/// The chat: peers, the name, stdin's lines and what waits to be sent.
struct UdpChat {
    /// `None` until the user typed it (no `--name`).
    name: Option<String>,
    peers: Peers,
    /// Splits stdin into lines; a line longer than a datagram ends the input.
    input: LineDecoder,
    /// Lines read but not handled yet: they wait while a message waits in
    /// the outbox (stdin is paused then, so this holds at most one read's worth).
    pending: VecDeque<String>,
    stdin_ended: bool,
    /// How the chat ends: `Err` when the input could not be used.
    outcome: Result<()>,
    /// Datagrams the kernel did not take yet, oldest first.
    outbox: VecDeque<(Rc<[u8]>, SocketAddr)>,
    /// The leave messages are queued; the chat ends once they are sent.
    leaving: bool,
    /// Printing to stdout failed once; do not try again.
    stdout_gone: bool,
    /// Sends that found the socket full and waited.
    n_waits: u64,
}

impl UdpChat {
    /// Handles the complete lines typed so far, one message at a time: while
    /// a message still waits in the outbox, the next line waits too.
    fn take_lines(&mut self, cx: &mut Ctx<()>) {
        while self.outbox.is_empty() && !self.leaving {
            let Some(line) = self.pending.pop_front() else {
                break;
            };
            self.on_line(cx, line);
        }
        if !self.outbox.is_empty() {
            cx.pause_stdin();
        } else if self.stdin_ended && self.pending.is_empty() {
            let why = if self.outcome.is_err() {
                "unusable input"
            } else {
                "end of input"
            };
            self.leave(cx, why);
        }
    }

    fn on_line(&mut self, cx: &mut Ctx<()>, line: String) {
        let Some(name) = &self.name else {
            if line.trim().is_empty() {
                crate::errln!("{NAME_PROMPT}");
            } else {
                self.name = Some(line);
                self.say_how_to_chat();
            }
            return;
        };
        if line.is_empty() {
            return;
        }
        if line == LEAVE_TEXT {
            log::info!(
                "'{LEAVE_TEXT}' is how leaving is announced, so it is not sent as a message; \
                 to leave, end the input (Ctrl+D) or press Ctrl+C"
            );
            return;
        }
        let message = chat_msg::format_now(name, &line);
        if message.len() > MAX_DATAGRAM {
            log::warn!(
                "message not sent: {} bytes do not fit in one datagram (at most {MAX_DATAGRAM})",
                message.len()
            );
            return;
        }
        if self.peers.len() == 0 {
            log::info!("no peers: the message went nowhere (give PEER addresses, or wait to hear from someone)");
            return;
        }
        self.send_to_all(cx, message.into_bytes().into());
    }

    fn say_how_to_chat(&self) {
        log::info!(
            "type a message and press Enter to send it to {} peer(s); Ctrl+D or Ctrl+C leaves",
            self.peers.len()
        );
    }

    fn send_to_all(&mut self, cx: &mut Ctx<()>, message: Rc<[u8]>) {
        for peer in self.peers.iter() {
            self.outbox.push_back((Rc::clone(&message), peer));
        }
        self.flush(cx);
    }

    /// Sends what waits in the outbox until it is empty or the socket is full.
    fn flush(&mut self, cx: &mut Ctx<()>) {
        while let Some((message, peer)) = self.outbox.front() {
            let Some(socket) = cx.udp() else {
                self.outbox.clear();
                break;
            };
            match udp::send_to(socket, message, *peer) {
                Sent::Yes => {
                    crate::trace!(cx.tracer(), "udp-chat: sent {} B to {peer}", message.len());
                    self.outbox.pop_front();
                }
                Sent::Full => {
                    self.n_waits += 1;
                    crate::trace!(
                        cx.tracer(),
                        "udp-chat: socket full, {} datagram(s) wait for room",
                        self.outbox.len()
                    );
                    cx.udp_want_writable(true);
                    return;
                }
                Sent::Failed(e) => {
                    log::warn!("cannot send to {peer}: {e}");
                    self.outbox.pop_front();
                }
            }
        }
        cx.udp_want_writable(false);
        if self.leaving {
            cx.stop();
        } else {
            cx.resume_stdin();
        }
    }

    /// Sends the leave message to every peer; the chat ends once it is out.
    fn leave(&mut self, cx: &mut Ctx<()>, why: &str) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        cx.pause_stdin();
        let Some(name) = &self.name else {
            log::info!("{why}: leaving before choosing a name; nothing was sent");
            cx.stop();
            return;
        };
        log::info!(
            "{why}: telling {} peer(s) that {name} leaves",
            self.peers.len()
        );
        let message: Rc<[u8]> = chat_msg::format_now(name, LEAVE_TEXT).into_bytes().into();
        for peer in self.peers.iter() {
            self.outbox.push_back((Rc::clone(&message), peer));
        }
        cx.set_timer_in(LEAVE_GRACE, LEAVE_DEADLINE);
        self.flush(cx);
    }

    fn on_datagram(&mut self, cx: &mut Ctx<()>, bytes: &[u8], from: SocketAddr) {
        let text = String::from_utf8_lossy(bytes);
        self.print(cx, &text);
        if chat_msg::is_leave(&text) {
            if self.peers.remove(from) {
                self.outbox.retain(|(_, peer)| *peer != from);
                log::info!("peer {from} left");
            }
            return;
        }
        match self.peers.heard(from) {
            Heard::Known => {}
            Heard::New => log::info!("new peer {from}"),
            Heard::NewForgetting(oldest) => {
                self.outbox.retain(|(_, peer)| *peer != oldest);
                log::info!(
                    "new peer {from}; the peer set is full (--max-peers {}), so {oldest}, \
                     silent the longest, is forgotten",
                    self.peers.max
                );
            }
        }
        crate::trace!(cx.tracer(), "udp-chat: {} peer(s)", self.peers.len());
    }

    /// Prints one incoming message and a newline on stdout. When stdout's
    /// reader falls behind, the socket is not read until it catches up: the
    /// kernel keeps what its receive buffer holds and drops the rest.
    fn print(&mut self, cx: &mut Ctx<()>, text: &str) {
        if self.stdout_gone {
            return;
        }
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        match cx.stdout_data(line.as_bytes()) {
            StdoutRoom::Room => {}
            StdoutRoom::Full => cx.hold_udp_reads(),
            StdoutRoom::Closed => self.on_stdout_closed(),
        }
    }

    /// Stdout failed (say, its reader closed the pipe): the chat goes on unprinted.
    fn on_stdout_closed(&mut self) {
        if !self.stdout_gone {
            self.stdout_gone = true;
            let why = console::stdout_failure()
                .map_or_else(|| "closed".to_string(), |e| crate::error::plain(&e));
            log::warn!("cannot print messages any more: {why}");
        }
    }

    fn on_unreachable(&mut self, peer: SocketAddr) {
        if self.peers.remove(peer) {
            self.outbox.retain(|(_, p)| *p != peer);
            log::warn!(
                "peer {peer} is unreachable (nothing listens on its port any more); removed"
            );
        } else {
            log::debug!("{peer} is unreachable (not a peer any more)");
        }
    }
}

impl Handler for UdpChat {
    type Conn = ();

    fn handle(&mut self, cx: &mut Ctx<()>, event: Event<'_>) {
        match event {
            Event::Stdin(bytes) => {
                let fed = self.input.feed(bytes, |line| {
                    self.pending
                        .push_back(String::from_utf8_lossy(line).into_owned())
                });
                if let Err(e) = fed {
                    // The decoder cannot find the next line's start: no more input.
                    self.outcome = Err(Error::Failed(format!(
                        "standard input: {e}, and a message must fit in one datagram"
                    )));
                    self.stdin_ended = true;
                    cx.pause_stdin();
                }
                self.take_lines(cx);
            }
            Event::StdinEof => {
                self.stdin_ended = true;
                if let Some(line) = self.input.finish() {
                    self.pending
                        .push_back(String::from_utf8_lossy(&line).into_owned());
                }
                self.take_lines(cx);
            }
            Event::Datagram(bytes, from) => self.on_datagram(cx, bytes, from),
            Event::PeerUnreachable(peer) => self.on_unreachable(peer),
            Event::UdpError(e) => log::warn!("udp: {e}"),
            Event::UdpWritable => {
                self.flush(cx);
                self.take_lines(cx);
            }
            Event::Timer(LEAVE_DEADLINE) => {
                if !self.outbox.is_empty() {
                    log::warn!(
                        "{} leave message(s) could not be sent within {LEAVE_GRACE:?}",
                        self.outbox.len()
                    );
                }
                cx.stop();
            }
            Event::Signal(signal) => self.leave(cx, crate::reactor::signals::name(signal)),
            Event::StdoutReady => cx.release_udp_reads(),
            Event::StdoutClosed => self.on_stdout_closed(),
            _ => {}
        }
    }
}

/// Runs the chat until end of input, SIGINT or SIGTERM.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    if let Some(name) = &args.name {
        if name.is_empty() || name.contains('\n') {
            return Err(Error::Usage(
                "--name must be non-empty and on one line".into(),
            ));
        }
    }
    let listed = args
        .peers
        .iter()
        .map(|peer| addr::resolve(peer))
        .collect::<Result<Vec<_>>>()?;
    let config = Config {
        stdin: true,
        trace,
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let socket = net::bind_udp(args.bind, args.port)?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::io("reading the socket address", e))?;
    if udp::recv_buffer(&socket).is_ok_and(|size| size < MIN_RECV_BUFFER) {
        let _ = udp::set_recv_buffer(&socket, MIN_RECV_BUFFER);
    }
    let mut distinct: Vec<SocketAddr> = Vec::new();
    for (text, peer) in args.peers.iter().zip(listed) {
        let peer = udp::peer_for_socket(peer, local).ok_or_else(|| {
            Error::Usage(format!(
                "peer {text} is IPv6 but the socket is bound to {}; add --bind ::",
                args.bind
            ))
        })?;
        if !distinct.contains(&peer) {
            distinct.push(peer);
        }
    }
    if distinct.len() > args.max_peers as usize {
        return Err(Error::Usage(format!(
            "{} peers given but --max-peers is {}",
            distinct.len(),
            args.max_peers
        )));
    }
    let mut peers = Peers::new(args.max_peers as usize);
    for peer in distinct {
        peers.heard(peer);
    }
    reactor
        .cx()
        .set_udp(socket)
        .map_err(|e| Error::io("registering the UDP socket", e))?;
    net::announce("udp-chat", local);
    if args.bind.is_unspecified() {
        if let Ok(interfaces) = if_addrs::get_if_addrs() {
            let ips: Vec<String> = interfaces
                .iter()
                .filter(|i| i.ip().is_ipv4() || !local.is_ipv4())
                .map(|i| i.ip().to_string())
                .collect();
            log::info!("local IP addresses: {}", ips.join(", "));
        }
    }
    let mut chat = UdpChat {
        name: args.name.clone(),
        peers,
        input: LineDecoder::new(MAX_DATAGRAM),
        pending: VecDeque::new(),
        stdin_ended: false,
        outcome: Ok(()),
        outbox: VecDeque::new(),
        leaving: false,
        stdout_gone: false,
        n_waits: 0,
    };
    if chat.name.is_some() {
        chat.say_how_to_chat();
    } else {
        crate::errln!("{NAME_PROMPT}");
    }
    reactor
        .run(&mut chat)
        .map_err(|e| Error::io("polling", e))?;
    // What stdout holds are messages the user has not seen yet.
    reactor
        .drain_stdout()
        .map_err(|e| Error::io("polling", e))?;
    if chat.n_waits > 0 {
        log::info!(
            "{} send(s) found the socket full and waited for room",
            chat.n_waits
        );
    }
    chat.outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn forgets_the_peer_silent_the_longest() {
        let mut peers = Peers::new(2);
        assert_eq!(peers.heard(addr(1)), Heard::New);
        assert_eq!(peers.heard(addr(2)), Heard::New);
        // 1 speaks again, so 2 is now the one silent the longest.
        assert_eq!(peers.heard(addr(1)), Heard::Known);
        assert_eq!(peers.heard(addr(3)), Heard::NewForgetting(addr(2)));
        assert_eq!(peers.iter().collect::<Vec<_>>(), vec![addr(1), addr(3)]);
        assert!(peers.remove(addr(1)));
        assert!(!peers.remove(addr(1)));
        assert_eq!(peers.len(), 1);
    }
}
