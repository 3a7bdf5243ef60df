//! `sockloop udp-chat`: peer-to-peer group chat over UDP (the lecture's lab 2,
//! the graceful version), with the socket and stdin in one poll instead of a
//! receiver thread.
//!
//! Each message is one datagram in the chat text format
//! ([`chat_msg`]), sent to every known peer: the PEER arguments plus every
//! address a datagram arrives from. A peer leaves when its datagram's whole
//! TEXT is the leave text, or when the kernel reports its port unreachable
//! ([`Event::PeerUnreachable`]) — the lecture's version kept such a ghost for
//! ever.
//!
//! An address a datagram came from may be forged, so a peer learned that way
//! is not trusted as the PEER arguments are ([`crate::routability`]): it is
//! challenged to echo a token, and until it has, it is sent at most three
//! times the bytes it sent (`--trust-senders` lifts this on a LAN where
//! addresses cannot be forged). The peer set is bounded (`--max-peers`, and
//! `--max-peers-per-ip` from one IP address); when it is full, a newcomer
//! takes the place of the unproven peer silent the longest, and a peer that
//! has proven its address (or was named) is never pushed out, so a flood of
//! forged senders cannot evict a real peer. An empty datagram never makes
//! a peer, and neither does this socket's own address. A challenge from
//! anyone is answered by itself, to the address that sent it, never with
//! more bytes than the challenge had.
//!
//! Everything printed is shown, not obeyed: a peer's control characters
//! cannot clear the screen or forge a line ([`chat_msg::display`]).
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
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use crate::addr;
use crate::chat_msg::{self, LEAVE_TEXT, NAME_PROMPT};
use crate::error::{Error, Result};
use crate::lines::LineDecoder;
use crate::loglimit::{Note, RateLog};
use crate::net;
use crate::ratelimit::Bucket;
use crate::reactor::{console, Config, Ctx, Event, Handler, Reactor, StdoutRoom};
use crate::routability::{self, Budget, Tokens};
use crate::safe_text;
use crate::udp::{self, unmapped, OwnAddress, Sent, MAX_DATAGRAM};

/// How long the leave messages may wait for a full socket before the chat exits anyway.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// Receive buffer asked for when the system default is smaller: room for a
/// few datagrams of the largest size.
const MIN_RECV_BUFFER: usize = 256 * 1024;

/// The timer that ends the wait for the leave messages.
const LEAVE_DEADLINE: u64 = 1;

/// The timer that logs how many datagrams were ignored in the last second.
const LOG_SUMMARY: u64 = 2;

/// Newcomers let in per second (and at most this many at once).
const NEW_PEERS_PER_SEC: f64 = 64.0;

/// How often an unproven peer is sent a challenge, at most.
const CHALLENGE_EVERY: Duration = Duration::from_secs(1);

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
        kernel reports unreachable (it exited without leaving).\n\n\
        A sender's address can be forged, so a peer learned from a datagram is asked to \
        echo a token ('<ECHO ...>', which udp-chat and the chat server do by themselves) \
        and, until it has, is sent at most three times the bytes it sent. PEER arguments \
        are trusted as given. On a LAN where addresses cannot be forged, --trust-senders \
        lets the course's Python peers, which cannot answer, hear everything.";

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
    /// Most peers remembered. When full, a newcomer takes the place of the peer
    /// silent the longest among those that have not proven their address; while
    /// every peer has (or was named), newcomers are ignored.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_peers: u32,
    /// Most peers from one IP address; newcomers from it are ignored beyond that.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_peers_per_ip: u32,
    /// Take every sender's address as its own: send to a new peer at once,
    /// without the 3x limit that holds until it echoes a token. Only where
    /// addresses cannot be forged, such as a lab LAN with the course's Python
    /// peers, which cannot echo one.
    #[arg(long)]
    pub trust_senders: bool,
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
    /// A new peer, added after forgetting this one: the unproven peer silent the longest.
    NewForgetting(SocketAddr),
    /// A newcomer not let in, and why.
    Ignored(&'static str),
}

/// One known peer.
#[derive(Debug)]
struct Peer {
    /// The tick it was last heard at (its key in `by_silence`).
    tick: u64,
    /// Named on the command line, or proven by echoing its token (or
    /// `--trust-senders`): it is sent everything and never pushed out.
    trusted: bool,
    /// What it may be sent until it is trusted.
    budget: Budget,
    /// When it was last sent a challenge.
    challenged: Option<Instant>,
}

/// The known peers, bounded, ordered by when each was last heard from.
#[derive(Debug)]
struct Peers {
    max: usize,
    max_per_ip: usize,
    /// `--trust-senders`.
    trust_senders: bool,
    /// Ticks once per [`Peers::heard`]: a logical clock of arrivals.
    clock: u64,
    peers: HashMap<SocketAddr, Peer>,
    /// Each peer by the tick it was last heard at: the first entry is the
    /// peer silent the longest.
    by_silence: BTreeMap<u64, SocketAddr>,
    /// Peers per IP address.
    per_ip: HashMap<IpAddr, u32>,
    /// Newcomers let in: [`NEW_PEERS_PER_SEC`].
    newcomers: Bucket,
}

impl Peers {
    fn new(max: usize, max_per_ip: usize, trust_senders: bool) -> Peers {
        Peers {
            max: max.max(1),
            max_per_ip: max_per_ip.max(1),
            trust_senders,
            clock: 0,
            peers: HashMap::new(),
            by_silence: BTreeMap::new(),
            per_ip: HashMap::new(),
            newcomers: Bucket::new(NEW_PEERS_PER_SEC, Instant::now()),
        }
    }

    /// A peer named on the command line: trusted as given.
    fn name(&mut self, peer: SocketAddr) {
        self.clock += 1;
        self.by_silence.insert(self.clock, peer);
        *self.per_ip.entry(unmapped(peer.ip())).or_insert(0) += 1;
        self.peers.insert(
            peer,
            Peer {
                tick: self.clock,
                trusted: true,
                budget: Budget::default(),
                challenged: None,
            },
        );
    }

    /// A datagram of `bytes` bytes came from `from`.
    fn heard(&mut self, from: SocketAddr, bytes: usize, now: Instant) -> Heard {
        self.clock += 1;
        if let Some(peer) = self.peers.get_mut(&from) {
            self.by_silence.remove(&peer.tick);
            peer.tick = self.clock;
            peer.budget.received(bytes);
            self.by_silence.insert(self.clock, from);
            return Heard::Known;
        }
        if bytes == 0 {
            return Heard::Ignored("an empty datagram keeps a peer in, it never makes one");
        }
        let ip = unmapped(from.ip());
        if self.per_ip.get(&ip).copied().unwrap_or(0) as usize >= self.max_per_ip {
            return Heard::Ignored("that IP address has --max-peers-per-ip peers already");
        }
        if self.newcomers.available(now) < 1.0 {
            return Heard::Ignored("newcomers are arriving too fast");
        }
        let mut forgotten = None;
        if self.peers.len() >= self.max {
            let peers = &self.peers;
            forgotten = self
                .by_silence
                .values()
                .copied()
                .find(|addr| peers.get(addr).is_some_and(|p| !p.trusted));
            match forgotten {
                Some(oldest) => {
                    self.remove(oldest);
                }
                None => {
                    return Heard::Ignored(
                        "the peer set is full of peers named or proven (--max-peers)",
                    )
                }
            }
        }
        self.newcomers.take(1.0, now);
        let mut budget = Budget::default();
        budget.received(bytes);
        self.peers.insert(
            from,
            Peer {
                tick: self.clock,
                trusted: self.trust_senders,
                budget,
                challenged: None,
            },
        );
        self.by_silence.insert(self.clock, from);
        *self.per_ip.entry(ip).or_insert(0) += 1;
        match forgotten {
            Some(oldest) => Heard::NewForgetting(oldest),
            None => Heard::New,
        }
    }

    /// `peer` echoed a right token: trusted from now on. True if that is news.
    fn prove(&mut self, peer: SocketAddr) -> bool {
        match self.peers.get_mut(&peer) {
            Some(p) if !p.trusted => {
                p.trusted = true;
                true
            }
            _ => false,
        }
    }

    /// Whether `bytes` may be sent to `peer` now (counted if it is not trusted).
    fn may_send(&mut self, peer: SocketAddr, bytes: usize) -> bool {
        self.peers
            .get_mut(&peer)
            .is_some_and(|p| p.trusted || p.budget.spend(bytes))
    }

    /// Whether `peer` is due a challenge now; if so, it is noted as sent.
    fn challenge_due(&mut self, peer: SocketAddr, bytes: usize, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let due = p.challenged.map_or(true, |at| {
            now.saturating_duration_since(at) >= CHALLENGE_EVERY
        });
        if p.trusted || !due || !p.budget.spend(bytes) {
            return false;
        }
        p.challenged = Some(now);
        true
    }

    /// Forgets `peer`; returns whether it was known.
    fn remove(&mut self, peer: SocketAddr) -> bool {
        let Some(p) = self.peers.remove(&peer) else {
            return false;
        };
        self.by_silence.remove(&p.tick);
        let ip = unmapped(peer.ip());
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
        true
    }

    fn len(&self) -> usize {
        self.peers.len()
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
    /// This socket's own addresses: a datagram from one is forged.
    own: OwnAddress,
    /// Makes and checks the tokens unproven peers are challenged with.
    tokens: Tokens,
    /// Datagrams ignored (forged, empty, no room), logged once a second.
    ignored: RateLog,
    /// Messages not sent to unproven peers over their budget, logged once a second.
    withheld: RateLog,
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

    /// Queues `message` for every peer (an unproven one only within its
    /// budget) and sends what the socket takes.
    fn send_to_all(&mut self, cx: &mut Ctx<()>, message: Rc<[u8]>) {
        let mut withheld = 0;
        let peers: Vec<SocketAddr> = self.peers.iter().collect();
        for peer in peers {
            if self.peers.may_send(peer, message.len()) {
                self.outbox.push_back((Rc::clone(&message), peer));
            } else {
                withheld += 1;
            }
        }
        if withheld > 0 {
            match self.withheld.note(Instant::now()) {
                Note::Log => log::info!(
                    "not sent to {withheld} peer(s) that have not echoed their token yet \
                     (an unproven address is sent at most three times what it sent)"
                ),
                Note::CountedFirst(at) => cx.set_timer(at, LOG_SUMMARY),
                Note::Counted => {}
            }
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
        cx.set_timer_in(LEAVE_GRACE, LEAVE_DEADLINE);
        self.send_to_all(cx, message);
    }

    fn on_datagram(&mut self, cx: &mut Ctx<()>, bytes: &[u8], from: SocketAddr) {
        if self.own.is(from) {
            self.ignore(cx, from, "it claims to come from this socket itself");
            return;
        }
        let now = Instant::now();
        let text = String::from_utf8_lossy(bytes);
        let said = chat_msg::parse(&text).map_or(&*text, |m| m.text);
        let known = self.peers.peers.contains_key(&from);
        if let Some(token) = routability::parse_answer(said) {
            if known {
                self.peers.heard(from, bytes.len(), now);
            }
            if self.tokens.check(from, token, now) && self.peers.prove(from) {
                log::info!("peer {from} proved its address");
            }
            return;
        }
        if let Some(token) = routability::parse_challenge(said) {
            if known {
                self.peers.heard(from, bytes.len(), now);
            }
            self.answer(cx, from, token, bytes.len());
            return;
        }
        if chat_msg::is_leave(&text) {
            self.print(cx, &text);
            if self.peers.remove(from) {
                self.outbox.retain(|(_, peer)| *peer != from);
                log::info!("peer {from} left");
            }
            return;
        }
        if !bytes.is_empty() {
            self.print(cx, &text);
        }
        match self.peers.heard(from, bytes.len(), now) {
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
            Heard::Ignored(why) => {
                if !bytes.is_empty() {
                    self.ignore(cx, from, why);
                }
                return;
            }
        }
        self.challenge(cx, from, now);
        crate::trace!(cx.tracer(), "udp-chat: {} peer(s)", self.peers.len());
    }

    /// Asks an unproven peer to echo its token (at most once a second, within its budget).
    fn challenge(&mut self, cx: &mut Ctx<()>, peer: SocketAddr, now: Instant) {
        let token = self.tokens.token(peer, now);
        let name = self.name.as_deref().unwrap_or("udp-chat");
        let text = chat_msg::format_now(name, &routability::challenge_text(token));
        if self.peers.challenge_due(peer, text.len(), now) {
            self.outbox.push_back((text.into_bytes().into(), peer));
            self.flush(cx);
        }
    }

    /// Answers a challenge from `from` with its token, never with more bytes
    /// than the challenge had: answering is not an amplifier either.
    fn answer(&mut self, cx: &mut Ctx<()>, from: SocketAddr, token: u64, asked: usize) {
        let name = self.name.as_deref().unwrap_or("udp-chat");
        let reply = chat_msg::format_now(name, &routability::answer_text(token));
        if reply.len() > asked {
            log::debug!("a challenge from {from} is shorter than its answer: not answered");
            return;
        }
        log::info!("{from} asked us to prove our address: answered");
        self.outbox.push_back((reply.into_bytes().into(), from));
        self.flush(cx);
    }

    /// Notes a datagram ignored; logs it unless one was in the last second.
    fn ignore(&mut self, cx: &mut Ctx<()>, from: SocketAddr, why: &str) {
        match self.ignored.note(Instant::now()) {
            Note::Log => log::warn!("ignored a datagram from {from}: {why}"),
            Note::CountedFirst(at) => cx.set_timer(at, LOG_SUMMARY),
            Note::Counted => {}
        }
    }

    /// Prints one incoming message and a newline on stdout, its control
    /// characters shown, not obeyed (`chat_msg::display`). When stdout's
    /// reader falls behind, the socket is not read until it catches up: the
    /// kernel keeps what its receive buffer holds and drops the rest.
    fn print(&mut self, cx: &mut Ctx<()>, text: &str) {
        if self.stdout_gone {
            return;
        }
        let text = chat_msg::display(text);
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(&text);
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
            Event::Timer(LOG_SUMMARY) => {
                let now = Instant::now();
                if let Some(n) = self.ignored.summary(now) {
                    log::warn!("ignored {n} more datagram(s) in the last second");
                }
                if let Some(n) = self.withheld.summary(now) {
                    log::info!(
                        "{n} more message(s) not sent to peers that have not echoed their token"
                    );
                }
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
        safe_text::check_name(name).map_err(|why| Error::Usage(format!("--name: {why}")))?;
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
    let mut peers = Peers::new(
        args.max_peers as usize,
        args.max_peers_per_ip as usize,
        args.trust_senders,
    );
    for peer in distinct {
        peers.name(peer);
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
        own: OwnAddress::new(local),
        tokens: Tokens::new().map_err(|e| Error::io("making the UDP tokens", e))?,
        ignored: RateLog::default(),
        withheld: RateLog::default(),
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
    fn a_newcomer_takes_only_an_unproven_peers_place() {
        let now = Instant::now();
        let mut peers = Peers::new(2, 16, false);
        peers.name(addr(1));
        assert_eq!(peers.heard(addr(2), 40, now), Heard::New);
        // 2 speaks again, yet, unproven, it is the one to make room.
        assert_eq!(peers.heard(addr(2), 40, now), Heard::Known);
        assert_eq!(peers.heard(addr(3), 40, now), Heard::NewForgetting(addr(2)));
        assert!(peers.prove(addr(3)));
        assert!(matches!(peers.heard(addr(4), 40, now), Heard::Ignored(_)));
        assert!(matches!(peers.heard(addr(5), 0, now), Heard::Ignored(_)));
        assert_eq!(peers.iter().collect::<Vec<_>>(), vec![addr(1), addr(3)]);
        assert!(peers.remove(addr(1)));
        assert!(!peers.remove(addr(1)));
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn an_unproven_peer_is_sent_three_times_what_it_sent() {
        let now = Instant::now();
        let mut peers = Peers::new(8, 16, false);
        peers.heard(addr(1), 10, now);
        assert!(peers.may_send(addr(1), 30));
        assert!(!peers.may_send(addr(1), 1));
        peers.prove(addr(1));
        assert!(peers.may_send(addr(1), 1_000_000));
        let mut trusting = Peers::new(8, 16, true);
        trusting.heard(addr(1), 1, now);
        assert!(trusting.may_send(addr(1), 1_000_000));
    }

    #[test]
    fn one_ip_address_has_a_bounded_share() {
        let now = Instant::now();
        let mut peers = Peers::new(100, 2, false);
        assert_eq!(peers.heard(addr(1), 1, now), Heard::New);
        assert_eq!(peers.heard(addr(2), 1, now), Heard::New);
        assert!(matches!(peers.heard(addr(3), 1, now), Heard::Ignored(_)));
    }
}
