//! `sockloop chat server`: the TCP group-chat hub (the lecture's 1-to-1 chat
//! is the case of one client).
//!
//! Every frame a client sends is relayed to every *other* client and its
//! text printed on stdout; the server's own user, unless `--relay-only`,
//! types on stdin and speaks to everyone. Comings and goings are logged on
//! stderr and announced to the others by the server, under its reserved
//! name.
//!
//! What keeps one client from hurting the others:
//!
//! * **Fan-out stores a frame once.** The received wire bytes become one
//!   `Rc<[u8]>` that every recipient's output buffer shares; memory is
//!   O(message), not O(message × clients), and nothing is formatted or
//!   allocated per recipient.
//! * **A bounded backlog per client** (`--max-backlog`). A client that does
//!   not read is disconnected when it would exceed it, or, with
//!   `--on-backlog drop-oldest`, loses its oldest queued frames and is told
//!   how many it missed. Either way the others are not slowed.
//! * **A malformed frame closes only its connection**, with the reason logged:
//!   an over-long length is refused before anything is allocated for it.
//! * **Nobody can lie, hide or flood** (ARCHITECTURE.md, "The room's trust
//!   model"): names are fixed by a member's first message and unique; a
//!   message reaches the room only under its sender's name, cleaned of
//!   control characters (`identity.rs`); everyone is announced as they come
//!   and once as they go (`member.rs`); slow joiners have deadlines
//!   (`deadlines.rs`); an unproven UDP address is sent at most three times
//!   what it sent (`udp_room.rs`).
//!
//! # Four doors, one room
//!
//! * **Framed clients** (`--port`): the length-prefixed frames of the TCP chat.
//!   A client's first frame fixes its name; one that says nothing is a reader,
//!   in the room under its address.
//! * **Line clients** (`--line-port`): `nc`, `telnet` — newline-terminated
//!   text. On connecting, a line client is asked for its name with the chat's
//!   own prompt (`Enter your username to start the chat:`); its first
//!   non-empty line is its name, and it hears the room only from then on.
//!   Every later non-empty line becomes a chat message `[TIMESTAMP] NAME:\n\tTEXT`
//!   stamped by the server; a line that is exactly `<LEAVES THE CHAT>` ends
//!   its stay. It receives every message as text followed by a newline. A line
//!   longer than `--max-frame` is a protocol error that closes only that
//!   client; bytes that are not UTF-8 are taken lossily.
//! * **UDP peers** (`--udp-port`, [`udp_room`]): `udp-chat` programs.
//!   One datagram is one chat message text. A peer joins by sending and leaves
//!   with the leave text, by being silent for `--udp-peer-timeout`, or when
//!   the kernel reports its port unreachable.
//! * **Browsers** (`--web-port`, `web.rs`): `GET /` serves the chat page,
//!   compiled into the binary; `GET /ws` upgrades the same connection to a
//!   WebSocket, whose text messages are chat messages exactly as a framed
//!   client's frames (and go through the same `relay`). A connection still
//!   speaking HTTP is not a member and hears nothing of the room.
//!
//! **Encode once per wire format.** A message reaches the room as an
//! `Outgoing` (`fanout.rs`): its text, plus at most one `Rc` per wire format
//! (frame, line, datagram, WebSocket text frame), each made the first time a recipient of that
//! kind needs it and then shared by all of them. A frame relayed from a framed client is
//! the bytes it arrived as, when `identity::admit` lets it. Nothing is formatted per recipient.
//!
//! What it must not do: block on any one client, copy a frame per recipient,
//! or log per frame unless trace logging is on.
//!
//! # Where things are
//!
//! This file holds [`run`], the `Hub` (the room's state) and its event
//! dispatch. Each concern of the hub is a child module with its own
//! `impl Hub` block:
//!
//! * `args.rs`: the command line ([`Args`], [`OnBacklog`], [`LONG_ABOUT`]).
//! * `identity.rs`: the names held in the room, and the one rule for what a
//!   message may claim; every door calls it.
//! * `member.rs`: the clients ([`Member`]), coming in, named and going, and
//!   what the room is told; the close log.
//! * `commands.rs`: `/who` and `/help`.
//! * `deadlines.rs`: `--name-timeout` and `--frame-timeout`.
//! * `read.rs`: a TCP client's bytes, either door, into whole messages.
//! * `door_framed.rs`, `door_line.rs`, `door_udp.rs`, `web.rs`: what each
//!   door adds; [`udp_room`] keeps the UDP door's peer set; `page/` is the
//!   web door's page.
//! * `fanout.rs`: one message to the room, encoded once per wire format.
//! * `backlog.rs`: a client that does not keep up (`--on-backlog`).
//! * `held.rs`: messages held back by `--rate-limit`.
//! * `console.rs`: the server's own user, its copy of the room on stdout
//!   (dropped and counted, never waited for), and shutdown.
//! * `broker.rs`: the link to a NATS broker (`--broker`) that joins this
//!   hub's room to other hubs'; `outbox.rs`: what waits for it;
//!   `remote.rs`: what other hubs send, delivered here;
//!   `who.rs`: `/who`, on this hub and across hubs.

mod args;
mod backlog;
mod broker;
mod commands;
mod console;
mod deadlines;
mod door_framed;
mod door_line;
mod door_udp;
mod fanout;
mod held;
mod identity;
mod member;
mod outbox;
mod read;
mod remote;
pub mod udp_room;
mod web;
mod who;

pub use args::{Args, OnBacklog, LONG_ABOUT};
pub use member::Member;
pub use web::WebArgs;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::chat::{hint, ChatInput};
use crate::chat_msg::{self, NAME_PROMPT};
use crate::error::{Error, Result};
use crate::framing::{self, FrameConfig};
use crate::net;
use crate::reactor::{signals, Config, ConnId, Ctx, Event, Handler, Reactor};
use crate::udp;
use crate::websocket;
use backlog::notice_reserve;
use broker::{Link, TIMER_BROKER};
use console::{ConsoleCopy, HINT};
use identity::Names;
pub use identity::SERVER_NAME;
use member::{prompt_line, CloseLogs, Input};
use udp_room::{UdpRoom, UdpSettings};

/// The name the server's notices come from, and the one its user speaks
/// with when it has none of its own; reserved: no client may take it.
pub const DEFAULT_NAME: &str = SERVER_NAME;

/// How long a shutdown waits for clients to take what is queued for them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Timer: look for idle clients.
const TIMER_IDLE_SWEEP: u64 = 1;
/// Timer: the shutdown grace period is over.
const TIMER_GRACE: u64 = 2;
/// Timer: look for UDP peers silent for `--udp-peer-timeout`.
const TIMER_UDP_SWEEP: u64 = 3;
/// Timer: web door deadlines and keepalive pings.
const TIMER_WEB_SWEEP: u64 = 4;
/// Timer: a second of rate-limited log lines is over; log their counts.
const TIMER_LOG_SUMMARY: u64 = 5;
/// Timer: look for clients that missed `--name-timeout` or `--frame-timeout`.
const TIMER_DEADLINES: u64 = 6;
/// Timer bit: connection KEY (the low bits) may relay messages it had held
/// back for being over its `--rate-limit`.
const TIMER_RELEASE: u64 = 1 << 40;

/// Receive buffer asked for the UDP socket when the system default is smaller.
const MIN_UDP_RECV_BUFFER: usize = 256 * 1024;

/// The hub: the relay, the server's own user, and the shutdown. Its fields
/// are the room's state; its methods are in the child modules, one concern
/// each (see the module docs).
struct Hub {
    frames: FrameConfig,
    on_backlog: OnBacklog,
    max_backlog: usize,
    /// `--idle-timeout`, and how often idleness is checked.
    idle: Option<(Duration, Duration)>,
    /// The local user's typing; `None` with `--relay-only`, and while a
    /// `feed` is under way (so relaying may borrow the hub).
    input: Option<ChatInput>,
    /// The name the server's user speaks with, once known; its notices
    /// always come from [`SERVER_NAME`].
    host: Option<Box<str>>,
    /// Every name held in the room, and who holds it (`identity.rs`).
    names: Names,
    /// Room kept for a missed-frames notice (its largest encoded size).
    notice_reserve: usize,
    /// The listener of the plain-text door, if there is one.
    line_listener: Option<usize>,
    /// What a line client is asked first: the name prompt and a newline.
    prompt: Rc<[u8]>,
    /// `--name-timeout`: how long a line client may take to give its name.
    name_timeout: Duration,
    /// `--frame-timeout`: how long a frame or line may take once begun.
    frame_timeout: Duration,
    /// The deadline sweep is set (`deadlines.rs`).
    deadlines_armed: bool,
    /// Closes and name refusals, logged at most once a second per cause.
    close_logs: CloseLogs,
    /// The UDP door's peers, if there is one.
    udp: Option<UdpRoom>,
    /// The web door, if there is one.
    web: Option<web::WebDoor>,
    /// Scratch list of UDP peers found silent; reused.
    silent: Vec<SocketAddr>,
    /// Clients accepted and not yet closed.
    n_members: usize,
    /// Scratch list of connection ids for fan-out; reused, never shrunk.
    ids: Vec<ConnId>,
    /// Frames from one framed client, as they came, waiting to go to the
    /// room as one shared buffer (see `flush_batch`); reused.
    batch: Vec<u8>,
    /// Who sent the frames in `batch`.
    batch_from: Option<ConnId>,
    /// The copy of the room on stdout: batched per read, dropped and counted
    /// when stdout does not keep up (`console.rs`).
    console: ConsoleCopy,
    /// Shutting down: not accepting, clients flushing, no more announcements.
    stopping: bool,
    /// The link to the NATS broker that joins this hub's room to other
    /// hubs' (`--broker`), if there is one.
    broker: Option<Link>,
}

impl Handler for Hub {
    type Conn = Member;

    fn handle(&mut self, cx: &mut Ctx<Member>, event: Event<'_>) {
        let Some(event) = self.link_event(cx, event) else {
            return;
        };
        match event {
            Event::Accepted { conn, listener } => self.on_accepted(cx, conn, listener),
            Event::Data(conn, bytes) => self.on_data(cx, conn, bytes),
            Event::PeerClosed(conn) => self.on_peer_closed(cx, conn),
            Event::Drained(conn) => self.on_drained(cx, conn),
            Event::Closed(conn, reason) => self.on_closed(cx, conn, reason),
            Event::Stdin(bytes) => self.on_stdin(cx, bytes),
            Event::StdinEof => self.on_stdin_eof(cx),
            Event::Datagram(bytes, from) => self.on_datagram(cx, bytes, from),
            Event::PeerUnreachable(peer) => {
                self.udp_peer_gone(cx, peer, "unreachable: nothing listens on its port")
            }
            Event::UdpError(error) => log::warn!("udp: {error}"),
            Event::UdpWritable => {
                if let Some(udp) = self.udp.as_mut() {
                    udp.flush(cx);
                }
            }
            Event::Timer(TIMER_IDLE_SWEEP) => self.sweep_idle(cx),
            Event::Timer(TIMER_UDP_SWEEP) => self.sweep_udp(cx),
            Event::Timer(id) if id & TIMER_BROKER != 0 => self.on_link_timer(cx, id),
            Event::Timer(TIMER_WEB_SWEEP) => self.sweep_web(cx),
            Event::Timer(TIMER_LOG_SUMMARY) => {
                self.log_close_summaries();
                if let Some(udp) = self.udp.as_mut() {
                    udp.log_summaries();
                }
            }
            Event::Timer(TIMER_DEADLINES) => self.sweep_deadlines(cx),
            Event::Timer(id) if id & TIMER_RELEASE != 0 => {
                self.release_held(cx, ConnId((id & !TIMER_RELEASE) as usize))
            }
            Event::Timer(TIMER_GRACE) => {
                log::warn!(
                    "shutdown: {} did not take their output within {:?}; closing anyway",
                    Clients(self.n_members),
                    SHUTDOWN_GRACE
                );
                cx.stop();
            }
            Event::StdoutReady => self.on_stdout_ready(),
            Event::StdoutClosed => self.on_stdout_closed(),
            Event::Signal(signal) => {
                if self.stopping {
                    log::info!("{}: stopping now", signals::name(signal));
                    cx.stop();
                } else {
                    self.shut_down(cx, signals::name(signal));
                }
            }
            _ => {}
        }
    }

    fn describe(&self, out: &mut String) {
        if let Some(udp) = &self.udp {
            udp.describe(out);
        }
        if let Some(link) = &self.broker {
            link.describe(out);
        }
    }

    fn buffered_in(&self, member: &Member) -> usize {
        match &member.input {
            Some(Input::Framed(decoder)) => decoder.buffered(),
            Some(Input::Lines(lines)) => lines.buffered(),
            Some(Input::Web(web)) => web.buffered(),
            None => 0,
        }
    }
}

/// "1 client", "3 clients": a count for log lines, formatted without allocating.
struct Clients(usize);

impl std::fmt::Display for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1 => write!(f, "1 client"),
            n => write!(f, "{n} clients"),
        }
    }
}

/// Runs the chat server until SIGINT, SIGTERM or (unless `--relay-only`) the end of stdin.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    let frames = args.framing.config()?;
    if let Some(name) = &args.name {
        crate::safe_text::check_name(name.trim())
            .map_err(|why| Error::Usage(format!("--name: {why}")))?;
    }
    let link = args.broker.link_config()?.map(Link::new);
    let notice_reserve = notice_reserve(SERVER_NAME, frames);
    let largest_message =
        framing::encoded_len(frames.max_frame, frames).max(websocket::frame_len(frames.max_frame));
    let smallest_backlog = largest_message + notice_reserve;
    if args.max_backlog < smallest_backlog {
        return Err(Error::Usage(format!(
            "--max-backlog {} is too small: one frame of --max-frame {} bytes and a notice \
             take {smallest_backlog} bytes; raise --max-backlog or lower --max-frame",
            args.max_backlog, frames.max_frame
        )));
    }
    let limit = super::echo_server::raise_fd_limit();
    let full_notice = match framing::encode(
        chat_msg::format_now(SERVER_NAME, chat_msg::FULL_TEXT).as_bytes(),
        frames,
    ) {
        Ok(frame) => frame.to_vec(),
        Err(_) => framing::close_frame(frames).to_vec(),
    };
    let mut config = Config {
        out_limit: args.max_backlog,
        pause_reads_when_full: false,
        max_conns: args.max_conns as usize,
        stdin: !args.relay_only,
        trace,
        full_notice,
        background_hint: "; or serve without a local user: --relay-only",
        ..Config::default()
    };
    args.access.apply(&mut config);
    config.tls_server = args.tls.config()?;
    let tls = config.tls_server.is_some();
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let (_, addr) = reactor.cx().listen(args.bind, args.port)?;
    let line_door = match args.line_port {
        Some(port) => {
            let (index, addr) = reactor
                .cx()
                .listen(args.bind, port)
                .map_err(|e| e.at_door("--line-port"))?;
            // A line client turned away should read plain text, not a frame.
            reactor
                .cx()
                .set_full_notice(index, b"server full, try again later\n".to_vec());
            Some((index, addr))
        }
        None => None,
    };
    let udp_door = match args.udp_port {
        Some(port) => {
            let socket = net::bind_udp(args.bind, port).map_err(|e| e.at_door("--udp-port"))?;
            let addr = socket
                .local_addr()
                .map_err(|e| Error::io("reading the UDP socket address", e))?;
            if udp::recv_buffer(&socket).is_ok_and(|size| size < MIN_UDP_RECV_BUFFER) {
                let _ = udp::set_recv_buffer(&socket, MIN_UDP_RECV_BUFFER);
            }
            reactor
                .cx()
                .set_udp(socket)
                .map_err(|e| Error::io("registering the UDP socket", e))?;
            let room = UdpRoom::new(
                UdpSettings {
                    max_peers: args.udp_max_peers as usize,
                    max_per_ip: args.udp_max_peers_per_ip as usize,
                    timeout: args.udp_peer_timeout,
                    rate_limit: args.access.rate_limit,
                    trust_senders: args.udp_trust_senders,
                    local: addr,
                },
                std::time::Instant::now(),
            )
            .map_err(|e| Error::io("setting up the UDP door", e))?;
            reactor
                .cx()
                .set_timer_in(room.sweep_every(), TIMER_UDP_SWEEP);
            Some((room, addr))
        }
        None => None,
    };
    let web_door = Hub::open_web_door(reactor.cx(), args.bind, &args.web, tls, frames.max_frame)?;
    log::debug!(
        "open-file limit {limit}: up to about {} clients",
        limit.saturating_sub(16)
    );
    let idle = args.idle_timeout.map(|timeout| {
        let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        (timeout, every)
    });
    if let Some((_, every)) = idle {
        reactor.cx().set_timer_in(every, TIMER_IDLE_SWEEP);
    }
    // The main port first: scripts take the first "listening on" line.
    let tls_note = if tls { " (TLS)" } else { "" };
    net::announce(&format!("chat server{tls_note}"), addr);
    if let Some((_, addr)) = line_door {
        net::announce(&format!("chat server line door{tls_note}"), addr);
    }
    let (udp_room, udp_addr) = match udp_door {
        Some((room, addr)) => (Some(room), Some(addr)),
        None => (None, None),
    };
    if let Some(addr) = udp_addr {
        net::announce("chat server udp door", addr);
    }
    let web_door = web_door.map(|(door, addr)| {
        net::announce(&format!("chat server web door{tls_note}"), addr);
        web::tell_where(addr, tls);
        door
    });
    let input = if args.relay_only {
        None
    } else {
        let input = ChatInput::new(args.name.as_deref(), frames.max_frame).checking_names();
        if input.name().is_some() {
            hint(HINT);
        }
        Some(input)
    };
    let mut reserved = vec![SERVER_NAME];
    let host = args.name.as_deref().map(str::trim);
    reserved.extend(host);
    let mut hub = Hub {
        frames,
        on_backlog: args.on_backlog,
        max_backlog: args.max_backlog,
        idle,
        input,
        host: host.map(Box::from),
        names: Names::new(&reserved),
        notice_reserve,
        line_listener: line_door.map(|(index, _)| index),
        prompt: prompt_line(NAME_PROMPT),
        name_timeout: args.name_timeout,
        frame_timeout: args.frame_timeout,
        deadlines_armed: false,
        close_logs: CloseLogs::default(),
        udp: udp_room,
        web: web_door,
        silent: Vec::new(),
        n_members: 0,
        ids: Vec::new(),
        batch: Vec::new(),
        batch_from: None,
        console: ConsoleCopy::new(!args.no_stdout),
        stopping: false,
        broker: link,
    };
    if let Some(link) = hub.broker.as_mut() {
        link.start(reactor.cx());
    }
    reactor.run(&mut hub).map_err(|e| Error::io("polling", e))?;
    hub.note_unprinted();
    Ok(())
}
