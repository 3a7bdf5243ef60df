//! `sockloop tcp-chat`: the lecture's group chat over TCP without a hub.
//! Every member listens and dials in the same poll, and the members form a
//! full mesh: one TCP link between every two of them.
//!
//! # The shape
//!
//! A member listens on `--port` and dials every PEER. Each link starts with a
//! handshake in control frames (`wire.rs`): the dialer says `hello` (its id,
//! name and listening port), the other answers `welcome`. Then each side
//! introduces the other to the members it already has (`member` frames), and
//! the newcomer dials those it has no link to yet. So a newcomer given one
//! member's address reaches the whole chat.
//!
//! A typed line goes to every member over its own link, once; nothing is
//! forwarded from member to member, so every message is printed exactly once
//! by every member, by construction rather than by de-duplication.
//!
//! # Guests: the course's framed clients
//!
//! A connection whose first frame is a chat message rather than a `hello` is a
//! *guest*: the course's Python `Connection` client (2-byte length, UTF-8
//! text), `sockloop chat client`, or anything that speaks the same frames. The
//! member it connected to is its hub: it prints the guest's messages and
//! passes them to every member and guest, and passes everything it receives
//! to its guests. A connection that stays silent becomes a guest that only
//! listens after [`IDENT_WAIT`] (what it was sent meanwhile was held for it).
//! Listening guests count toward `--max-guests` like named ones: one past
//! the bound is sent a notice and closed.
//!
//! # Start in any order, leave in any way
//!
//! A PEER that is not up yet is dialed again with capped, jittered backoff
//! (`mesh::Backoff`). A member that goes is noticed by each member on its
//! own link: the leave text (`<LEAVES THE CHAT>`) and the zero-length frame
//! when it leaves properly, end of stream or a reset when it does not; it is
//! reported once. Its address is then dialed again, so a member that comes
//! back is reconnected. Two members that dial each other at the same moment
//! keep the link dialed by the smaller id (`mesh::keep`) and retire the other.
//!
//! # Trust
//!
//! Names must pass [`check_name`] (members and guests alike: refused with a
//! notice otherwise), and no name is in the chat twice as far as this member
//! can see. A member speaks as itself or for its guests, never as another
//! member or as us; a guest speaks only under the name of its first message.
//! Every text printed or passed on goes through [`visible`](crate::safe_text::visible) first, so no
//! control character reaches a terminal.
//!
//! What this file must not do: touch readiness or `WouldBlock`, parse control
//! frames by hand (that is `wire.rs`), or decide dial times and tie-breaks
//! (that is `mesh.rs`).

mod dialing;
mod frames;
mod links;
mod mesh;
mod user;
mod wire;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::chat::{hint, ChatInput, FramingArgs};
use crate::chat_msg;
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::framing::{self, Decoder, FrameConfig};
use crate::reactor::{signals, Config, ConnId, Ctx, Event, Handler, Queued, Reactor};
use crate::safe_text::check_name;
use mesh::{Backoff, Members, Origin, Rng, TargetState, Targets};
use wire::{Control, MemberId};

/// How long an accepted connection may stay silent before it is taken for a
/// guest that only listens. A member says `hello` the moment it connects.
/// (A connection that became a listening guest and has not been sent anything
/// yet may still say `hello`, so a member slowed down past this wait is not
/// mistaken for a guest for good.)
pub const IDENT_WAIT: Duration = Duration::from_secs(3);

/// How long a dial may take, connect and `welcome` included, before it counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a member introduced to us waits for the other one (the one with
/// the smaller id, which dials at once) before it dials itself.
pub const INTRO_GRACE: Duration = Duration::from_secs(2);

/// How long a retired link may stay open for the other end to retire it too.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);

/// How long leaving waits for the others to take the leave message and close.
pub const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// The first wait before dialing an address again.
pub const RETRY_BASE: Duration = Duration::from_millis(200);

/// Learned addresses are given up (and forgotten) after this many failed dials in a row
/// (with the default 10 s cap, a few minutes).
pub const GIVE_UP_AFTER: u32 = 30;

/// The smallest `--max-frame` the mesh can work with (its control frames).
const MIN_FRAME: usize = 512;

/// Timer: leaving has waited long enough.
const TIMER_LEAVE: u64 = 1;
/// Timer kinds, in the bits above [`TIMER_KEY`]; the low bits are a target or a connection.
const TIMER_DIAL: u64 = 1 << 40;
const TIMER_HELLO: u64 = 2 << 40;
const TIMER_IDENT: u64 = 3 << 40;
const TIMER_RETIRE: u64 = 4 << 40;
const TIMER_KEY: u64 = (1 << 40) - 1;

/// Shown once the name is known (at a terminal only).
const HINT: &str =
    "Type a message and press Enter to send it to everyone; end input (Ctrl+D) to leave.";

/// The long `--help` text of `tcp-chat` (also given to its subcommand in `cli.rs`).
pub const LONG_ABOUT: &str =
    "Group chat over TCP without a hub: every member listens on --port and \
    dials every PEER, and the members form a full mesh (a link between every two). A newcomer \
    given one member's address is introduced to the others and dials them itself.\n\n\
    Messages read '[TIMESTAMP] NAME:\\n\\tTEXT' in the course's frames (a 2-byte big-endian \
    length, then UTF-8 text; --length-bytes 4 for the lecture's slide), so the course's \
    Python Connection clients can connect to any member and chat as guests: that member \
    passes their messages on.\n\n\
    Members start in any order: a PEER that is not up yet is dialed again, waiting twice as \
    long each time (with jitter) up to --retry-max. A member that leaves (end of input, \
    Ctrl+C) sends '<LEAVES THE CHAT>' and the zero-length frame; one that vanishes \
    (killed, reset) is noticed on its link. Either way it is reported once, and its address \
    is dialed again so it is reconnected when it comes back.\n\n\
    Names are 1 to 32 characters without control characters or ':'; a member or guest with \
    another name is refused with a notice. Control characters in messages are shown (^[, \
    <U+202E>), never passed to a terminal. Each link may have --max-backlog bytes waiting; \
    a member or guest that does not read is disconnected.\n\n\
    --trace shows the mesh at work (dials, handshakes, retries, tie-breaks); SIGUSR1 prints \
    the members, guests and the address book with each address's state.";

/// Command-line options of `tcp-chat`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Group chat over TCP without a hub: members listen and dial in one poll",
    long_about = LONG_ABOUT,
    after_help = "Examples (three terminals; the third knows only the first):\n  \
        sockloop tcp-chat --port 5000 --name Ann\n  \
        sockloop tcp-chat --port 5001 --name Bob localhost:5000\n  \
        sockloop tcp-chat --port 5002 --name Cy 127.0.0.1:5000\n\n\
        A course Python client joins through any member:\n  \
        python3 chat_client.py 127.0.0.1 5001 Dee"
)]
pub struct Args {
    /// TCP port to listen on (0: the system picks one, printed at start).
    #[arg(long, short, default_value_t = 0)]
    pub port: u16,
    /// Local address to listen on: an IP (0.0.0.0: every IPv4 interface; :: for IPv6 too;
    /// [::1] works too) or a host name such as localhost.
    #[arg(long, default_value = "0.0.0.0", value_parser = crate::units::parse_bind)]
    pub bind: IpAddr,
    /// Your name in the chat (asked for on stdin when missing).
    #[arg(long, short)]
    pub name: Option<String>,
    /// Most members linked at once; a hello beyond it is refused (the dialer retries later).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_peers: u32,
    /// Most guests (framed clients that are not members, silent listeners
    /// included) at once; one more is sent a notice and closed.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub max_guests: u32,
    /// Bytes that may wait for one member or guest (suffixes K, M, G); one that
    /// does not read is disconnected.
    #[arg(long, default_value = "1M", value_parser = crate::units::parse_size_min1)]
    pub max_backlog: usize,
    /// Longest wait, in seconds, between two dials of an address that does not answer.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub retry_max: u64,
    /// The framing every member and guest uses.
    #[command(flatten)]
    pub framing: FramingArgs,
    /// Members to dial: HOST:PORT, [IPv6]:PORT or IPv4:PORT.
    #[arg(value_name = "PEER")]
    pub peers: Vec<String>,
}

/// What one connection is to the chat.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Accepted; nothing heard yet. A member says `hello` first; a guest sends
    /// a chat message, or nothing for [`IDENT_WAIT`].
    #[default]
    Unknown,
    /// We dialed address book entry `target`; `hello` goes out once connected.
    Dialing {
        /// The address book entry.
        target: usize,
        /// Our dial count at the time: the link's [`DialKey`].
        dial: u64,
    },
    /// The link we send on to this member.
    Member(MemberId),
    /// A link to this member that lost the tie-break: we sent `retire` and shut
    /// our write side; it is read until the other end closes it too.
    Retiring(MemberId),
    /// A framed client that does not speak the mesh (see [`Guest`]).
    Guest,
}

/// The command's state for one connection.
#[derive(Debug, Default)]
struct Link {
    role: Role,
    /// Frames in; made at the first bytes (accepted connections start from `Default`).
    decoder: Option<Decoder>,
    /// Frames for an [`Role::Unknown`] connection, delivered if it turns out
    /// a guest, dropped if a member (members hear everything first-hand).
    held: Vec<Rc<[u8]>>,
    /// Bytes in `held`; bounded by `--max-backlog`.
    held_bytes: usize,
    /// When the deadline of its current role passes (identify, dial, retire).
    deadline: Option<Instant>,
    /// The other end sent `retire` on this link.
    peer_retired: bool,
    /// This link sent a message under a name it may not use (warned once).
    warned: bool,
    /// A guest's link has been sent something from the room (so it can no
    /// longer turn out to be a member).
    heard_room: bool,
    /// We closed it (or asked for it); nothing more is read from its frames.
    closed: bool,
}

/// A guest, as the member that is its hub knows it.
#[derive(Debug)]
struct Guest {
    /// Where it connected from.
    peer: SocketAddr,
    /// Its name: fixed by its first message; `None` while it only listens.
    name: Option<Box<str>>,
    /// It said goodbye with the leave text.
    said_leave: bool,
}

/// The chat as one member sees it.
struct TcpChat {
    /// Our identity in the mesh.
    me: MemberId,
    /// The user's name and lines.
    input: ChatInput,
    frames: FrameConfig,
    bind: IpAddr,
    port: u16,
    /// The PEER arguments, dialed once the mesh starts.
    given: Vec<SocketAddr>,
    /// Our listener's address, once listening.
    local: Option<SocketAddr>,
    members: Members,
    targets: Targets,
    guests: BTreeMap<ConnId, Guest>,
    max_guests: usize,
    max_backlog: usize,
    backoff: Backoff,
    rng: Rng,
    /// Dials made so far (the second half of a [`DialKey`]).
    n_dials: u64,
    /// Introductions ignored because the address book was full.
    n_book_full: u64,
    leaving: bool,
    /// Printing to stdout failed once; do not try again.
    stdout_gone: bool,
    /// Every link's reads are held until stdout drains.
    stdout_held: bool,
    outcome: Result<()>,
    /// Scratch list of connection ids.
    ids: Vec<ConnId>,
}

impl Handler for TcpChat {
    type Conn = Link;

    fn handle(&mut self, cx: &mut Ctx<Link>, event: Event<'_>) {
        match event {
            Event::Stdin(bytes) => self.on_stdin(cx, bytes),
            Event::StdinEof => self.leave(cx, "end of input"),
            Event::Accepted { conn, .. } => self.on_accepted(cx, conn),
            Event::Connected(conn) => self.on_connected(cx, conn),
            Event::Data(conn, bytes) => self.on_data(cx, conn, bytes),
            Event::PeerClosed(conn) => self.on_peer_closed(cx, conn),
            Event::Drained(_) => self.regulate_stdin(cx),
            Event::Closed(conn, reason) => self.on_closed(cx, conn, reason),
            Event::Timer(id) => self.on_timer(cx, id),
            Event::StdoutReady => self.on_stdout_ready(cx),
            Event::StdoutClosed => self.on_stdout_closed(),
            Event::Signal(signal) => {
                if self.leaving {
                    log::info!("{}: stopping now", signals::name(signal));
                    cx.stop();
                } else {
                    self.leave(cx, signals::name(signal));
                }
            }
            _ => {}
        }
    }

    fn buffered_in(&self, link: &Link) -> usize {
        link.decoder.as_ref().map_or(0, Decoder::buffered)
    }

    fn describe(&self, out: &mut String) {
        self.describe_mesh(out, Instant::now());
    }
}

/// Runs the chat until its user leaves (see the module docs).
pub fn run(args: &Args, trace: bool) -> Result<()> {
    let frames = args.framing.config()?;
    if frames.max_frame < MIN_FRAME {
        return Err(Error::Usage(format!(
            "tcp-chat needs --max-frame {MIN_FRAME} or more (its own control frames)"
        )));
    }
    let name = match args.name.as_deref().map(str::trim) {
        Some(name) => {
            check_name(name).map_err(|why| Error::Usage(format!("--name: {why}")))?;
            Some(name)
        }
        None => None,
    };
    let mut given = Vec::new();
    for peer in &args.peers {
        let addr = pick_address(peer, args.bind)?;
        if !given.contains(&addr) {
            given.push(addr);
        }
    }
    let max_peers = args.max_peers as usize;
    if given.len() > max_peers * 4 {
        return Err(Error::Usage(format!(
            "{} peers given; at most {} (4 x --max-peers)",
            given.len(),
            max_peers * 4
        )));
    }
    let mut rng = Rng::seeded();
    let me = MemberId(rng.next());
    let full_notice = framing::encode(
        chat_msg::format_now("tcp-chat", "this member is full; try another one").as_bytes(),
        frames,
    )
    .map(|f| f.to_vec())
    .unwrap_or_default();
    let config = Config {
        stdin: true,
        trace,
        out_limit: args.max_backlog,
        pause_reads_when_full: false,
        max_conns: 2 * max_peers + args.max_guests as usize + 16,
        full_notice,
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let mut chat = TcpChat {
        me,
        input: ChatInput::new(name, frames.max_frame).checking_names(),
        frames,
        bind: args.bind,
        port: args.port,
        given,
        local: None,
        members: Members::new(max_peers),
        targets: Targets::new(max_peers * 4, GIVE_UP_AFTER),
        guests: BTreeMap::new(),
        max_guests: args.max_guests as usize,
        max_backlog: args.max_backlog,
        backoff: Backoff {
            base: RETRY_BASE,
            cap: Duration::from_secs(args.retry_max),
        },
        rng,
        n_dials: 0,
        n_book_full: 0,
        leaving: false,
        stdout_gone: false,
        stdout_held: false,
        outcome: Ok(()),
        ids: Vec::new(),
    };
    if chat.input.name().is_some() {
        hint(HINT);
        chat.start(reactor.cx());
    }
    reactor
        .run(&mut chat)
        .map_err(|e| Error::io("polling", e))?;
    reactor
        .drain_stdout()
        .map_err(|e| Error::io("writing to stdout", e))?;
    chat.outcome
}

/// Resolves a PEER, preferring an address of the family we listen on (the
/// other members most likely listen on the same): `localhost` may name `::1`
/// first while everyone listens on 0.0.0.0.
fn pick_address(peer: &str, bind: IpAddr) -> Result<SocketAddr> {
    let all = crate::addr::resolve_all(peer)?;
    Ok(all
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == bind.is_ipv4())
        .unwrap_or(all[0]))
}

/// A connection's role, if it is still in the table.
fn role(cx: &Ctx<Link>, conn: ConnId) -> Option<Role> {
    cx.state(conn).map(|l| l.role)
}

/// Sets a connection's role.
fn set_role(cx: &mut Ctx<Link>, conn: ConnId, role: Role) {
    if let Some(link) = cx.state_mut(conn) {
        link.role = role;
    }
}

/// Closes a connection now and stops reading its frames.
fn close_link(cx: &mut Ctx<Link>, conn: ConnId, reason: CloseReason) {
    if let Some(link) = cx.state_mut(conn) {
        link.closed = true;
    }
    cx.close(conn, reason);
}

/// Queues a frame; a connection that would go over `--max-backlog` is disconnected.
fn queue(cx: &mut Ctx<Link>, conn: ConnId, frame: &Rc<[u8]>) {
    if let Queued::OverLimit { queued } = cx.queue(conn, frame) {
        let limit = cx.config().out_limit;
        let peer = cx.conn(conn).map(|c| c.peer());
        log::warn!(
            "{conn} ({}) does not read: {queued} B wait for it (--max-backlog {limit}); disconnected",
            peer.map_or_else(String::new, |p| p.to_string())
        );
        close_link(cx, conn, CloseReason::Backlog { queued, limit });
    }
}

/// Queues one control frame.
fn send_control(cx: &mut Ctx<Link>, conn: ConnId, control: &Control<'_>, frames: FrameConfig) {
    match framing::encode(control.encode().as_bytes(), frames) {
        Ok(frame) => queue(cx, conn, &frame),
        Err(e) => log::warn!("a control frame did not fit: {e}"),
    }
}

impl TcpChat {
    /// The SIGUSR1 lines: who we are, the members, the guests, the address book.
    fn describe_mesh(&self, out: &mut String, now: Instant) {
        let name = self.input.name().unwrap_or("(no name yet)");
        let _ = writeln!(
            out,
            "mesh: {name} (id {}), listening on {}; {} member(s), {} guest(s), {} address(es), {} dial(s) made",
            self.me,
            self.local.map_or_else(|| "nothing yet".to_string(), |a| a.to_string()),
            self.members.len(),
            self.guests.len(),
            self.targets.len(),
            self.n_dials
        );
        for (id, m) in self.members.iter() {
            let _ = writeln!(
                out,
                "  member {:<20} id {id} at {:<22} {} ({}) {:.1}s{}",
                m.name,
                m.listen,
                m.conn,
                if m.key.dialer == self.me {
                    "we dialed"
                } else {
                    "it dialed"
                },
                (now - m.since).as_secs_f64(),
                if m.left { ", leaving" } else { "" }
            );
        }
        for (conn, g) in &self.guests {
            let _ = writeln!(
                out,
                "  guest  {:<20} {conn} from {}",
                g.name.as_deref().unwrap_or("(listening)"),
                g.peer
            );
        }
        for (_, t) in self.targets.iter() {
            let state = match t.state {
                TargetState::Waiting { at } if at > now => {
                    format!("retrying in {:.1}s", (at - now).as_secs_f64())
                }
                TargetState::Waiting { .. } => "dialing soon".to_string(),
                TargetState::Dialing(conn) => format!("dialing on {conn}"),
                TargetState::Connected => "connected".to_string(),
                TargetState::Myself => "our own address".to_string(),
                TargetState::Stopped => "not dialed any more".to_string(),
            };
            let _ = writeln!(
                out,
                "  address {:<22} {:<12} {state}; {} failure(s) in a row{}",
                t.addr,
                match t.origin {
                    Origin::CommandLine => "(PEER)",
                    Origin::Learned => "(learned)",
                },
                t.failures,
                t.last_error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(", last: {e}"))
            );
        }
        if self.n_book_full > 0 {
            let _ = writeln!(
                out,
                "  {} introduction(s) ignored: the address book was full",
                self.n_book_full
            );
        }
    }
}
