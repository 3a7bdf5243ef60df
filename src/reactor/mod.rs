//! The reactor: one `mio::Poll`, one thread, every source of the program.
//!
//! A command builds a [`Reactor`], adds its sockets, and hands
//! [`Reactor::run`] a [`Handler`]. Each [`turn`](Reactor::turn) of the loop
//! does three things, in this order:
//!
//! 1. **poll** — block until a source is ready or the nearest deadline
//!    passes (no blocking at all while work is left over from the last turn);
//! 2. **dispatch** — for each event, decode its token into a [`Source`] and
//!    call that source's handler: accept, read, write, read stdin, take
//!    signals; then serve the ready list and the deadlines that passed;
//! 3. **finish** — write what commands queued during the turn (after one
//!    last look, without waiting, for input that arrived meanwhile), apply
//!    interest changes, and reap the connections that were closed.
//!
//! The command never sees readiness: it sees [`Event`]s — a connection
//! accepted, bytes arrived, the peer closed, stdin had a line's worth, a
//! deadline passed — and answers through [`Ctx`]: send, queue, close.
//!
//! # The edge-triggered rules
//!
//! mio reports readiness on edges: "this socket *became* readable". An event
//! that is not acted on in full is never repeated. Every rule below follows
//! from that, and each is kept in exactly one place:
//!
//! * **Drain, or remember.** A readable socket is read until `WouldBlock`
//!   (`read_conn`), or until its read budget is spent — then it goes on the
//!   *ready list* and is read again next turn, and the poll does not block
//!   while the list is not empty. A short read (fewer bytes than asked)
//!   also means the socket is empty, unless the peer has shut down its side,
//!   in which case we read on to see the end of the stream.
//! * **A paused reader is resumed by hand.** A connection whose output
//!   reached the limit stops reading (backpressure). Its readable edge is
//!   already spent, so when its output drains `flush_conn` puts it on the
//!   ready list; nothing else would ever wake it. The same holds for stdin
//!   (`Ctx::resume_stdin`), for a connection the command held
//!   (`Ctx::release_reads`) and for a listener paused when descriptors ran out.
//! * **Write interest only while there is output.** A write is tried first;
//!   only what the kernel does not take is queued, and only then is WRITABLE
//!   registered (`sync_interest`). It is dropped again once the queue drains,
//!   so an idle connection never wakes the loop.
//! * **Nobody closes in the middle of a turn.** [`Ctx::close`] marks a
//!   connection; the reaper removes it after the batch, so a slab key (the
//!   token) is never reused while an event for the old connection may still
//!   be in hand.
//! * **A UDP error is a queue, not a flag.** With `IP_RECVERR` set (see
//!   [`crate::udp`]), each ICMP report about a datagram we sent waits on the
//!   socket's error queue and raises EPOLLERR. `read_udp_errors` drains that
//!   queue, one [`Event::PeerUnreachable`] or [`Event::UdpError`] per report;
//!   an ordinary read would only have returned the bare errno, once, without
//!   saying which peer.
//! * **No source is read twice at once.** One handler runs at a time, which
//!   is why one scratch buffer serves every read.

pub mod signals;
pub mod stdin;
pub mod timer;
pub mod token;
pub mod trace;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll};
use slab::Slab;

use crate::access::AccessList;
use crate::conn::{CloseReason, Conn, State};
use crate::ratelimit::{RateLimit, Throttle};
use crate::trace;
use crate::udp;
use signals::SignalSource;
use stdin::{StdinKind, StdinSource};
use timer::Timers;
pub use token::Source;
use trace::Tracer;

/// Size of the one read buffer every source shares. Large enough for the
/// biggest UDP datagram (65,507 bytes).
pub const SCRATCH_SIZE: usize = 64 * 1024;

/// How many events one poll call can return.
const EVENT_CAPACITY: usize = 1024;

/// Deadline ids with this bit set belong to the reactor itself (the rest are
/// the command's): "connection KEY may read again" after a rate-limit pause.
const RESUME_READING_TIMER: u64 = 1 << 63;

/// Reactor deadline: "connection KEY must have finished its TLS handshake".
const HANDSHAKE_TIMER: u64 = 1 << 62;

/// Reactor deadline: "connection KEY, closing, has had its grace".
const CLOSE_TIMER: u64 = 1 << 61;

/// The bits of a deadline id that are the reactor's.
const REACTOR_TIMERS: u64 = RESUME_READING_TIMER | HANDSHAKE_TIMER | CLOSE_TIMER;

/// How long a connection closed with [`Ctx::close_after_flush`] may take to
/// take its last output and close its side, before it is closed regardless.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Non-blocking polls a turn may add to take in more input before it writes
/// the frames it queued (see `Ctx::gather`).
const GATHER_POLLS: usize = 4;

/// Plaintext a TLS session may hold before it refuses more (our `out` holds the rest).
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// A connection's identity: its slab key, which is also its `mio::Token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Settings of one reactor. Every bound has a default; see [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes a connection may have queued for its peer. With
    /// `pause_reads_when_full`, reading stops when it is reached. Default 64 KiB.
    pub out_limit: usize,
    /// Backpressure: read from a connection only into the room its own output
    /// has left (an echo server's rule). Off: the command enforces its own
    /// policy through [`Ctx::queue`]'s answer (the chat's rule). Default on.
    pub pause_reads_when_full: bool,
    /// Most connections at once; more are refused with `full_notice`. Default 100,000
    /// (the open-file limit usually binds first; it is handled the same way).
    pub max_conns: usize,
    /// Bytes read from one source per event before others get their turn. Default 256 KiB.
    pub read_budget: usize,
    /// Serve standard input. Default off.
    pub stdin: bool,
    /// Print a trace line for everything the loop does. Default off.
    pub trace: bool,
    /// What a refused client is told before it is closed.
    pub full_notice: Vec<u8>,
    /// Who may connect (`--allow`/`--deny`). Default: everyone.
    pub access: AccessList,
    /// Most connections from one IP address at once; 0: no limit. Default 0.
    pub max_conns_per_ip: usize,
    /// Per-client rate limit for accepted connections (`--rate-limit`). Default none.
    pub rate_limit: Option<RateLimit>,
    /// Speak TLS on every accepted connection (`--tls-cert`/`--tls-key`). Default none.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            out_limit: 64 * 1024,
            pause_reads_when_full: true,
            max_conns: 100_000,
            read_budget: 256 * 1024,
            stdin: false,
            trace: false,
            full_notice: b"sockloop: server full, try again later\n".to_vec(),
            access: AccessList::default(),
            max_conns_per_ip: 0,
            rate_limit: None,
            tls_server: None,
        }
    }
}

/// What happened, as a command sees it. Readiness never reaches a command.
#[derive(Debug)]
pub enum Event<'a> {
    /// A listener accepted a connection; its state is `S::default()`.
    Accepted {
        /// The new connection.
        conn: ConnId,
        /// Which listener, in the order they were added.
        listener: usize,
    },
    /// An outgoing connection finished its handshake.
    Connected(ConnId),
    /// Bytes arrived. They live in the shared scratch buffer: use them now.
    Data(ConnId, &'a [u8]),
    /// The peer shut down its write side; nothing more will be read.
    PeerClosed(ConnId),
    /// The connection's queued output has all been written.
    Drained(ConnId),
    /// The connection is about to be removed. Its state can still be read.
    Closed(ConnId, &'a CloseReason),
    /// Bytes from standard input.
    Stdin(&'a [u8]),
    /// Standard input ended (or was never open).
    StdinEof,
    /// A datagram arrived on the UDP socket.
    Datagram(&'a [u8], SocketAddr),
    /// An ICMP "port unreachable" came back for a datagram sent to this peer:
    /// nothing listens there any more. Read from the socket's error queue
    /// (see [`crate::udp`]), so the address is exact. Never fatal.
    PeerUnreachable(SocketAddr),
    /// The UDP socket reported another error (say, host unreachable, named in
    /// the message when the kernel said which peer). Never fatal.
    UdpError(io::Error),
    /// The UDP socket can take more datagrams (asked for with [`Ctx::udp_want_writable`]).
    UdpWritable,
    /// A deadline set with [`Ctx::set_timer`] passed.
    Timer(u64),
    /// SIGINT or SIGTERM arrived (SIGUSR1 is answered by the reactor itself).
    Signal(i32),
}

/// A command: what it does with each [`Event`].
pub trait Handler {
    /// The command's own per-connection state.
    type Conn: Default;

    /// Reacts to one event. Called once per event, one at a time.
    fn handle(&mut self, cx: &mut Ctx<Self::Conn>, event: Event<'_>);

    /// Bytes the command holds for a connection (say, half a frame), shown
    /// in the connection table. Default 0.
    fn buffered_in(&self, _conn: &Self::Conn) -> usize {
        0
    }

    /// Adds the command's own lines to the SIGUSR1 connection table (peers
    /// without a connection, counters). Default: nothing.
    fn describe(&self, _out: &mut String) {}
}

/// What [`Ctx::queue`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued; it will be written at the end of the turn.
    Yes,
    /// Not queued: the connection already holds `queued` bytes and the frame
    /// would take it over the output limit. The command chooses the policy.
    OverLimit {
        /// Bytes already queued for that connection.
        queued: usize,
    },
    /// Not queued: the connection is gone or closing.
    Gone,
}

/// The loop's own figures, for progress lines and `--trace`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopStats {
    /// Calls to poll.
    pub polls: u64,
    /// Events those calls returned.
    pub events: u64,
    /// Time spent blocked in poll.
    pub blocked: Duration,
    /// Time since the reactor started.
    pub elapsed: Duration,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused because the server was full (or out of descriptors).
    pub refused: u64,
    /// Connections refused by `--allow`/`--deny`.
    pub refused_by_rule: u64,
    /// Connections refused by `--max-conns-per-ip`.
    pub refused_per_ip: u64,
}

impl LoopStats {
    /// Share of the time the loop spent working rather than waiting in poll, 0..=1.
    pub fn utilisation(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        1.0 - (self.blocked.as_secs_f64() / self.elapsed.as_secs_f64()).min(1.0)
    }

    /// Figures accumulated since `earlier` (for per-second lines).
    pub fn since(&self, earlier: &LoopStats) -> LoopStats {
        LoopStats {
            polls: self.polls - earlier.polls,
            events: self.events - earlier.events,
            blocked: self.blocked.saturating_sub(earlier.blocked),
            elapsed: self.elapsed.saturating_sub(earlier.elapsed),
            accepted: self.accepted - earlier.accepted,
            refused: self.refused - earlier.refused,
            refused_by_rule: self.refused_by_rule - earlier.refused_by_rule,
            refused_per_ip: self.refused_per_ip - earlier.refused_per_ip,
        }
    }
}

impl fmt::Display for LoopStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let per_poll = if self.polls == 0 {
            0.0
        } else {
            self.events as f64 / self.polls as f64
        };
        write!(
            f,
            "loop: {:.0} polls/s, {per_poll:.1} events/poll, {:.0}% blocked in poll",
            self.polls as f64 / secs,
            100.0 * (1.0 - self.utilisation())
        )
    }
}

struct Listener {
    socket: TcpListener,
    /// Accepting stopped because descriptors ran out; resumed when a connection closes.
    paused: bool,
    /// What a client refused at this listener is told, if not `Config::full_notice`.
    full_notice: Option<Vec<u8>>,
}

/// Everything a command may touch while it handles an event.
///
/// It owns the poll, the connection table (a slab whose keys are the
/// tokens), the listeners, the UDP socket, stdin and the deadlines.
pub struct Ctx<S> {
    poll: Poll,
    config: Config,
    conns: Slab<Conn<S>>,
    /// Marked for removal this turn (see [`Ctx::close`]); each key once.
    closing: Vec<(usize, CloseReason)>,
    /// Connections with frames queued this turn, written in `finish`.
    dirty: Vec<usize>,
    /// Sources to serve next turn without waiting for an event.
    ready: Vec<Source>,
    listeners: Vec<Listener>,
    /// A descriptor held in reserve: freed to accept (and turn away) one
    /// client when the open-file limit is reached.
    spare_fd: Option<File>,
    udp: Option<UdpSocket>,
    udp_writable_wanted: bool,
    /// The kernel's running count of datagrams the UDP socket dropped for
    /// want of receive-buffer room, as last reported with a datagram.
    udp_dropped: u32,
    stdin: Option<StdinSource>,
    stdin_paused: bool,
    stdin_eof: bool,
    timers: Timers,
    tracer: Tracer,
    /// Open connections per peer IP, kept only under `max_conns_per_ip`.
    per_ip: HashMap<IpAddr, u32>,
    stats: LoopStats,
    started: Instant,
    stopping: bool,
}

/// The event loop: a [`Ctx`] plus what only the loop itself touches.
pub struct Reactor<S> {
    cx: Ctx<S>,
    events: Events,
    /// The one read buffer: every read lands here and is handed to the command.
    scratch: Vec<u8>,
    signals: SignalSource,
}

impl<S: Default> Reactor<S> {
    /// Creates the poll, installs the signal handlers and, if configured, stdin.
    pub fn new(config: Config) -> io::Result<Reactor<S>> {
        // Look at fd 0 before this function opens anything (see stdin::probe).
        stdin::probe();
        let poll = Poll::new()?;
        let stdin = if config.stdin {
            Some(StdinSource::open(poll.registry())?)
        } else {
            None
        };
        let signals = SignalSource::open(poll.registry())?;
        let mut ready = Vec::new();
        if let Some(source) = &stdin {
            // Regular files and /dev/null never raise a readiness event: start reading them now.
            if source.kind() != StdinKind::Pollable {
                ready.push(Source::Stdin);
            }
        }
        let tracer = Tracer::new(config.trace);
        Ok(Reactor {
            cx: Ctx {
                poll,
                conns: Slab::new(),
                closing: Vec::new(),
                dirty: Vec::new(),
                ready,
                listeners: Vec::new(),
                spare_fd: File::open("/dev/null").ok(),
                udp: None,
                udp_writable_wanted: false,
                udp_dropped: 0,
                stdin,
                stdin_paused: false,
                stdin_eof: false,
                timers: Timers::default(),
                tracer,
                per_ip: HashMap::new(),
                stats: LoopStats::default(),
                started: Instant::now(),
                stopping: false,
                config,
            },
            events: Events::with_capacity(EVENT_CAPACITY),
            scratch: vec![0; SCRATCH_SIZE],
            signals,
        })
    }

    /// The context, to add sockets and set deadlines before the loop runs.
    pub fn cx(&mut self) -> &mut Ctx<S> {
        &mut self.cx
    }

    /// Runs turns until a command calls [`Ctx::stop`].
    pub fn run<H: Handler<Conn = S>>(&mut self, handler: &mut H) -> io::Result<()> {
        while !self.cx.stopping {
            self.turn(handler)?;
        }
        Ok(())
    }

    /// One turn of the loop: poll, dispatch, finish.
    pub fn turn<H: Handler<Conn = S>>(&mut self, handler: &mut H) -> io::Result<()> {
        let Reactor {
            cx,
            events,
            scratch,
            signals,
        } = self;

        // 1. Poll. Work left from the last turn means: look, but do not wait.
        let now = Instant::now();
        let timeout = if cx.ready.is_empty() && cx.dirty.is_empty() {
            cx.timers.timeout(now)
        } else {
            Some(Duration::ZERO)
        };
        match cx.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let woke = Instant::now();
        cx.stats.polls += 1;
        cx.stats.blocked += woke - now;
        let n_events = events.iter().count();
        cx.stats.events += n_events as u64;
        trace!(
            cx.tracer,
            "poll: {} event(s) after {:.3}ms blocked, {} on ready list",
            n_events,
            (woke - now).as_secs_f64() * 1e3,
            cx.ready.len()
        );

        // 2. Dispatch: events first, then what the last turn left ready, then deadlines.
        let left_over = std::mem::take(&mut cx.ready);
        cx.dispatch(handler, events, scratch, signals);
        for source in left_over {
            match source {
                Source::Listener(i) => cx.accept_all(handler, i),
                Source::Conn(key) => cx.read_conn(handler, scratch, key),
                Source::Stdin => cx.read_stdin(handler, scratch),
                Source::Udp => cx.read_udp(handler, scratch),
                Source::Signals => {}
            }
        }
        let now = Instant::now();
        while let Some(id) = cx.timers.pop_due(now) {
            if id & RESUME_READING_TIMER != 0 {
                cx.end_throttle((id & !REACTOR_TIMERS) as usize);
            } else if id & HANDSHAKE_TIMER != 0 {
                cx.check_handshake((id & !REACTOR_TIMERS) as usize);
            } else if id & CLOSE_TIMER != 0 {
                cx.end_close_grace((id & !REACTOR_TIMERS) as usize);
            } else {
                handler.handle(cx, Event::Timer(id));
            }
        }

        // 2b. Gather: frames queued this turn go out at its end; first take in
        // what arrived meanwhile, so each recipient's one writev carries more.
        cx.gather(handler, events, scratch, signals)?;

        // 3. Finish: write what was queued, then remove what was closed.
        cx.finish(handler);
        cx.stats.elapsed = cx.started.elapsed();
        Ok(())
    }
}

impl<S> Ctx<S> {
    // ----- Adding sources ---------------------------------------------------

    /// Adds a listening socket; returns its number for [`Event::Accepted`].
    pub fn add_listener(&mut self, mut socket: TcpListener) -> io::Result<usize> {
        let index = self.listeners.len();
        self.poll.registry().register(
            &mut socket,
            Source::Listener(index).token(),
            Interest::READABLE,
        )?;
        self.listeners.push(Listener {
            socket,
            paused: false,
            full_notice: None,
        });
        Ok(index)
    }

    /// Binds a TCP listener on `bind:port` (see [`crate::net::listen_tcp`]) and adds
    /// it; returns its number and the address it got (the port, when 0 was asked).
    pub fn listen(&mut self, bind: IpAddr, port: u16) -> crate::error::Result<(usize, SocketAddr)> {
        use crate::error::Error;
        let socket = crate::net::listen_tcp(bind, port)?;
        let index = self
            .add_listener(socket)
            .map_err(|e| Error::io("registering the listener", e))?;
        let addr = self
            .listener_addr(index)
            .map_err(|e| Error::io("reading the listener address", e))?;
        Ok((index, addr))
    }

    /// Sets what a client refused at listener `index` is told (a listener
    /// whose clients speak another protocol than the server's main one).
    pub fn set_full_notice(&mut self, index: usize, notice: Vec<u8>) {
        if let Some(listener) = self.listeners.get_mut(index) {
            listener.full_notice = Some(notice);
        }
    }

    /// What a client refused at listener `index` is told.
    fn full_notice(&self, index: usize) -> &[u8] {
        self.listeners
            .get(index)
            .and_then(|l| l.full_notice.as_deref())
            .unwrap_or(&self.config.full_notice)
    }

    /// The local address of listener `index`.
    pub fn listener_addr(&self, index: usize) -> io::Result<SocketAddr> {
        self.listeners[index].socket.local_addr()
    }

    /// Stops accepting: the listeners are closed (used at shutdown).
    pub fn stop_accepting(&mut self) {
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        self.ready.retain(|s| !matches!(s, Source::Listener(_)));
    }

    /// Sets the UDP socket (one per reactor), asking the kernel to report
    /// unreachable peers and dropped datagrams (see [`crate::udp`]).
    pub fn set_udp(&mut self, mut socket: UdpSocket) -> io::Result<()> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        if let Err(e) = udp::enable_reports(&socket, ipv6) {
            log::warn!("udp: vanished peers and dropped datagrams will not be reported: {e}");
        }
        self.poll
            .registry()
            .register(&mut socket, Source::Udp.token(), Interest::READABLE)?;
        self.udp = Some(socket);
        Ok(())
    }

    /// The UDP socket, to send with.
    pub fn udp(&self) -> Option<&UdpSocket> {
        self.udp.as_ref()
    }

    /// The kernel's running count of datagrams the UDP socket dropped because
    /// its receive buffer was full (`SO_RXQ_OVFL`), as of the latest datagram
    /// that carried it. Drops after the last datagram show up only with the
    /// next one; [`udp::drops_now`] reads the counter directly.
    pub fn udp_dropped(&self) -> u32 {
        self.udp_dropped
    }

    /// Asks for [`Event::UdpWritable`] when the UDP socket can take more (after a
    /// send said `WouldBlock`); `false` stops asking.
    pub fn udp_want_writable(&mut self, wanted: bool) {
        if wanted == self.udp_writable_wanted {
            return;
        }
        self.udp_writable_wanted = wanted;
        let interest = if wanted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Some(socket) = self.udp.as_mut() {
            if let Err(e) = self
                .poll
                .registry()
                .reregister(socket, Source::Udp.token(), interest)
            {
                log::warn!("udp: cannot change interest: {e}");
            }
        }
    }

    /// Opens an outgoing connection (non-blocking); [`Event::Connected`] or
    /// [`Event::Closed`] tells how it went.
    pub fn connect(&mut self, addr: SocketAddr, state: S) -> io::Result<ConnId> {
        let stream = TcpStream::connect(addr)?;
        self.adopt(stream, addr, state, true)
    }

    /// Adds a connection made elsewhere (e.g. bound to a chosen source address
    /// first). `connecting`: the handshake is still under way.
    pub fn adopt(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        state: S,
        connecting: bool,
    ) -> io::Result<ConnId> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = if connecting {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .register(&mut stream, Source::Conn(key).token(), interest)?;
        let mut conn = Conn::new(
            stream,
            peer,
            if connecting {
                State::Connecting
            } else {
                State::Open
            },
            state,
        );
        conn.writable_registered = connecting;
        entry.insert(conn);
        trace!(
            self.tracer,
            "conn#{key} {peer}: opened (connecting: {connecting})"
        );
        Ok(ConnId(key))
    }

    // ----- Connections ------------------------------------------------------

    /// A connection, if it is still in the table.
    pub fn conn(&self, id: ConnId) -> Option<&Conn<S>> {
        self.conns.get(id.0)
    }

    /// The command's state for a connection.
    pub fn state(&self, id: ConnId) -> Option<&S> {
        self.conns.get(id.0).map(|c| &c.state_of_app)
    }

    /// The command's state for a connection, to change.
    pub fn state_mut(&mut self, id: ConnId) -> Option<&mut S> {
        self.conns.get_mut(id.0).map(|c| &mut c.state_of_app)
    }

    /// Number of connections in the table (including ones closing this turn).
    pub fn n_conns(&self) -> usize {
        self.conns.len()
    }

    /// Fills `out` with the ids of the live connections (not closing), in key order.
    pub fn conn_ids(&self, out: &mut Vec<ConnId>) {
        out.clear();
        out.extend(
            self.conns
                .iter()
                .filter(|(_, c)| !c.doomed)
                .map(|(key, _)| ConnId(key)),
        );
    }

    /// Sends bytes now: written straight to the socket when nothing is queued
    /// ahead of them; what the kernel does not take is copied into the output
    /// buffer and written when the socket is writable.
    ///
    /// The caller bounds what it sends (the reactor bounds reads to the
    /// output room under `pause_reads_when_full`).
    pub fn send(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        if conn.doomed || bytes.is_empty() {
            return;
        }
        let mut rest = bytes;
        if conn.tls.is_some() {
            // Through the session: queue, and write it all at the end of the turn.
            conn.out.push_copy(rest);
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id.0);
            }
            return;
        }
        if conn.out.is_empty() && conn.state != State::Connecting {
            loop {
                match conn.stream.write(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        if rest.is_empty() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.close(id, CloseReason::Io(e));
                        return;
                    }
                }
            }
            trace!(
                self.tracer,
                "{id}: wrote {} B directly{}",
                bytes.len() - rest.len(),
                if rest.is_empty() {
                    String::new()
                } else {
                    format!(", kernel full: {} B queued", rest.len())
                }
            );
        }
        if !rest.is_empty() {
            conn.out.push_copy(rest);
            self.after_output_change(id.0);
        }
    }

    /// Queues a shared frame for a connection, to be written at the end of the
    /// turn together with everything else queued for it (one `writev`). The
    /// frame is not copied: many connections can hold the same one.
    ///
    /// A frame that would take the connection over the output limit first
    /// makes the reactor write what is already queued (as much as the kernel
    /// takes, never blocking); only if it does not take enough is the
    /// answer [`Queued::OverLimit`]. So a peer that reads is never called slow
    /// just because one turn queued more than the limit for it.
    pub fn queue(&mut self, id: ConnId, frame: &Rc<[u8]>) -> Queued {
        let limit = self.config.out_limit;
        let Some(conn) = self.conns.get_mut(id.0) else {
            return Queued::Gone;
        };
        if conn.doomed || conn.state == State::Flushing && conn.out.is_empty() {
            return Queued::Gone;
        }
        if conn.out.len() + frame.len() > limit
            && frame.len() <= limit
            && conn.state != State::Connecting
        {
            // Frames queued earlier in this turn have not been offered to the
            // kernel yet. Offer them now, so that `OverLimit` means the peer
            // is not reading, not merely that the turn is long. What is left
            // stays queued (the connection is dirty or watched for WRITABLE,
            // and it is not empty, so the usual flush takes it from here).
            match conn.write_out() {
                Ok(n) => {
                    trace!(
                        self.tracer,
                        "{id}: at the output limit, wrote {n} B early, {} B still queued",
                        conn.out.len()
                    );
                }
                Err(e) => {
                    let reason = write_failure(conn.state, e);
                    self.close(id, reason);
                    return Queued::Gone;
                }
            }
        }
        let queued = conn.out.len();
        if queued + frame.len() > limit {
            return Queued::OverLimit { queued };
        }
        conn.out.push_shared(Rc::clone(frame));
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id.0);
        }
        Queued::Yes
    }

    /// Drops a connection's oldest queued frames (not one already started)
    /// until `need` more bytes fit under the output limit. Returns how many.
    pub fn drop_oldest(&mut self, id: ConnId, need: usize) -> usize {
        let limit = self.config.out_limit;
        match self.conns.get_mut(id.0) {
            Some(conn) => conn.out.drop_oldest(need, limit),
            None => 0,
        }
    }

    /// Closes a connection now (queued output is discarded). The command gets
    /// [`Event::Closed`] at the end of the turn, then the connection is removed.
    pub fn close(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(conn) = self.conns.get_mut(id.0) {
            if !conn.doomed {
                conn.doomed = true;
                self.closing.push((id.0, reason));
            }
        }
    }

    /// Stops reading, writes what is queued, then closes.
    pub fn close_after_flush(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        if conn.tls_handshaking() {
            // Nothing can be delivered before the handshake ends.
            self.close(id, CloseReason::Local("closed during the tls handshake"));
            return;
        }
        let deadline = self.started.elapsed() + CLOSE_GRACE;
        conn.close_deadline_ms = u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX);
        conn.state = State::Flushing;
        self.timers
            .add(Instant::now() + CLOSE_GRACE, CLOSE_TIMER | id.0 as u64);
        // Flushing with nothing left goes straight on (close_notify, then a gentle close).
        self.mark_dirty(id.0);
    }

    /// Shuts down our write side once the queued output is written (the
    /// peer sees end of stream; we keep reading until it closes).
    pub fn shutdown_write(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        if conn.tls.is_some() {
            // TLS: close_notify goes after the queued plaintext (see on_drained).
            conn.shutdown_write_when_drained = true;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id.0);
            }
        } else if conn.out.is_empty() {
            let _ = conn.stream.shutdown(Shutdown::Write);
            trace!(self.tracer, "{id}: write side shut down");
        } else {
            conn.shutdown_write_when_drained = true;
        }
    }

    /// Makes a connection a TLS client session (after connecting): the
    /// handshake starts at the end of this turn, and the command sees only
    /// plaintext from then on.
    pub fn start_tls(
        &mut self,
        id: ConnId,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Result<(), rustls::Error> {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return Ok(());
        };
        let mut session = rustls::ClientConnection::new(config, server_name)?;
        session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        conn.tls = Some(Box::new(session.into()));
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id.0);
        }
        Ok(())
    }

    // ----- Stdin, deadlines, the loop itself ---------------------------------

    /// Stops reading stdin (e.g. while the socket it feeds is full).
    pub fn pause_stdin(&mut self) {
        if !self.stdin_paused {
            self.stdin_paused = true;
            trace!(self.tracer, "stdin: paused");
        }
    }

    /// Reads stdin again, at once: its readable edge may already be spent.
    pub fn resume_stdin(&mut self) {
        if self.stdin_paused {
            self.stdin_paused = false;
            trace!(self.tracer, "stdin: resumed");
            if !self.stdin_eof {
                self.ready.push(Source::Stdin);
            }
        }
    }

    /// How stdin is served, if the reactor serves it.
    pub fn stdin_kind(&self) -> Option<StdinKind> {
        self.stdin.as_ref().map(|s| s.kind())
    }

    /// Calls back with [`Event::Timer`]`(id)` at `at`. Ids below 2^61 are the command's.
    pub fn set_timer(&mut self, at: Instant, id: u64) {
        debug_assert!(
            id & REACTOR_TIMERS == 0,
            "timer ids >= 2^61 are the reactor's"
        );
        self.timers.add(at, id);
    }

    /// Calls back with [`Event::Timer`]`(id)` after `delay`.
    pub fn set_timer_in(&mut self, delay: Duration, id: u64) {
        self.set_timer(Instant::now() + delay, id);
    }

    /// Counts `n` messages against a connection's `--rate-limit`; once it is
    /// over its rate, reading from it pauses until its bucket refills.
    pub fn charge_messages(&mut self, id: ConnId, n: u32) {
        if let Some(throttle) = self.conns.get_mut(id.0).and_then(|c| c.throttle.as_mut()) {
            throttle.msgs.take(f64::from(n), Instant::now());
        }
    }

    /// Takes one message from a connection's `--rate-limit` if one is
    /// available now; otherwise takes nothing and says how long until one is.
    /// For a command that counts messages one at a time and holds back the
    /// ones over the rate (instead of [`Ctx::charge_messages`], which lets a
    /// whole read through and pauses afterwards). No limit: always `Ok`.
    pub fn take_message(&mut self, id: ConnId) -> Result<(), Duration> {
        let Some(throttle) = self.conns.get_mut(id.0).and_then(|c| c.throttle.as_mut()) else {
            return Ok(());
        };
        let now = Instant::now();
        let wait = throttle.msgs.wait(now);
        if wait.is_zero() {
            throttle.msgs.take(1.0, now);
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Stops reading from a connection until [`Ctx::release_reads`]: the
    /// command holds input it cannot use yet, and must not be given more.
    pub fn hold_reads(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.0) {
            if !conn.held {
                conn.held = true;
                trace!(self.tracer, "{id}: reads held by the command");
            }
        }
    }

    /// Reads a held connection again, at once (its readable edge may be long spent).
    pub fn release_reads(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.0) {
            if conn.held {
                conn.held = false;
                self.ready.push(Source::Conn(id.0));
                trace!(self.tracer, "{id}: reads released by the command");
            }
        }
    }

    /// Ends [`Reactor::run`] after this turn.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// The loop's own figures so far.
    pub fn stats(&self) -> LoopStats {
        let mut stats = self.stats;
        stats.elapsed = self.started.elapsed();
        stats
    }

    /// The tracer, for a command's own trace lines.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The reactor's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- The loop's handlers (private) -------------------------------------

    /// Hands each event of a poll to the handler of its source.
    fn dispatch<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        events: &Events,
        scratch: &mut [u8],
        signals: &mut SignalSource,
    ) where
        S: Default,
    {
        for event in events.iter() {
            let source = Source::from(event.token());
            if self.tracer.on() {
                self.trace_event(source, event);
            }
            match source {
                Source::Listener(i) => self.accept_all(handler, i),
                Source::Conn(key) => self.on_conn_event(handler, scratch, key, event),
                Source::Stdin => self.read_stdin(handler, scratch),
                Source::Udp => self.on_udp_event(handler, scratch, event),
                Source::Signals => {
                    for signal in signals.pending() {
                        self.on_signal(handler, signal);
                    }
                }
            }
        }
    }

    /// Before the end-of-turn write of queued frames, polls without waiting
    /// (at most [`GATHER_POLLS`] times) and dispatches what has arrived, so
    /// that a relay under load writes each recipient once for several
    /// incoming frames instead of once each. Costs one `epoll_wait` per turn
    /// that has frames queued; nothing when nothing is queued (an echo server).
    fn gather<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        events: &mut Events,
        scratch: &mut [u8],
        signals: &mut SignalSource,
    ) -> io::Result<()>
    where
        S: Default,
    {
        for _ in 0..GATHER_POLLS {
            if self.dirty.is_empty() {
                return Ok(());
            }
            match self.poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                Err(e) => return Err(e),
            }
            self.stats.polls += 1;
            if events.is_empty() {
                return Ok(());
            }
            let n_events = events.iter().count();
            self.stats.events += n_events as u64;
            trace!(
                self.tracer,
                "gather: {n_events} more event(s) before writing"
            );
            self.dispatch(handler, events, scratch, signals);
        }
        Ok(())
    }

    fn accept_all<H: Handler<Conn = S>>(&mut self, handler: &mut H, index: usize)
    where
        S: Default,
    {
        loop {
            let Some(listener) = self.listeners.get_mut(index) else {
                return;
            };
            if listener.paused {
                return;
            }
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    if !self.admit(peer) {
                        drop(stream);
                        continue;
                    }
                    if self.conns.len() >= self.config.max_conns {
                        self.stats.refused += 1;
                        log::warn!(
                            "refused {peer}: {} connections is the limit (--max-conns)",
                            self.config.max_conns
                        );
                        refuse(stream, self.full_notice(index));
                        continue;
                    }
                    self.stats.accepted += 1;
                    let _ = stream.set_nodelay(true);
                    match self.adopt(stream, peer, S::default(), false) {
                        Ok(id) => {
                            if self.config.max_conns_per_ip > 0 {
                                *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
                                self.conns[id.0].counted_per_ip = true;
                            }
                            if let Some(config) = self.config.tls_server.clone() {
                                self.start_tls_server(id, config);
                            }
                            if let Some(limit) = self.config.rate_limit {
                                self.conns[id.0].throttle =
                                    Some(Box::new(Throttle::new(limit, Instant::now())));
                            }
                            trace!(
                                self.tracer,
                                "listener#{index}: accepted {id} from {peer} ({} open)",
                                self.conns.len()
                            );
                            handler.handle(
                                self,
                                Event::Accepted {
                                    conn: id,
                                    listener: index,
                                },
                            );
                        }
                        Err(e) => log::warn!("cannot register connection from {peer}: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => {
                    if !self.refuse_with_spare(index, &e) {
                        return;
                    }
                }
                Err(e) => {
                    // ECONNABORTED and friends: that client is gone, the listener is fine.
                    log::debug!("accept on listener#{index}: {e}");
                    if e.raw_os_error() != Some(libc::ECONNABORTED) {
                        return;
                    }
                }
            }
        }
    }

    /// Access rules and the per-IP limit, checked at accept. A refused
    /// client is logged with its address and counted; it is closed without a word.
    fn admit(&mut self, peer: SocketAddr) -> bool {
        if let Err(why) = self.config.access.check(peer.ip()) {
            self.stats.refused_by_rule += 1;
            log::warn!("refused {peer}: {why}");
            return false;
        }
        let limit = self.config.max_conns_per_ip;
        if limit > 0 && self.per_ip.get(&peer.ip()).copied().unwrap_or(0) as usize >= limit {
            self.stats.refused_per_ip += 1;
            log::warn!(
                "refused {peer}: {limit} connections from {} already (--max-conns-per-ip)",
                peer.ip()
            );
            return false;
        }
        true
    }

    /// Out of descriptors: free the spare, accept one waiting client, tell it
    /// the server is full, close it, take the spare back. Without a spare,
    /// pause the listener until a connection closes. Returns whether to go on
    /// accepting.
    fn refuse_with_spare(&mut self, index: usize, error: &io::Error) -> bool {
        let Some(spare) = self.spare_fd.take() else {
            log::warn!(
                "out of file descriptors ({error}); accepting paused until a connection closes"
            );
            self.listeners[index].paused = true;
            return false;
        };
        drop(spare);
        let go_on = match self.listeners[index].socket.accept() {
            Ok((stream, peer)) => {
                self.stats.refused += 1;
                log::warn!("refused {peer}: out of file descriptors ({error})");
                refuse(stream, self.full_notice(index));
                true
            }
            Err(_) => false,
        };
        // Only now, with the refused client's descriptor closed, is there one
        // to take back; taken earlier, the refused socket would still hold it
        // and the next client would find no spare.
        self.spare_fd = File::open("/dev/null").ok();
        if self.spare_fd.is_none() {
            log::warn!(
                "out of file descriptors ({error}); accepting paused until a connection closes"
            );
            self.listeners[index].paused = true;
            return false;
        }
        go_on
    }

    fn on_conn_event<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        scratch: &mut [u8],
        key: usize,
        event: &mio::event::Event,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed {
            return;
        }
        if event.is_read_closed() {
            conn.peer_hup = true;
        }
        if conn.state == State::Connecting {
            if !self.finish_connect(handler, key) {
                return;
            }
            // The writable edge that announced the connect is spent: write
            // what was queued before it (a request, a ClientHello) now.
            self.flush_conn(handler, key);
        } else if event.is_writable() || event.is_error() {
            self.flush_conn(handler, key);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_conn(handler, scratch, key);
        }
    }

    /// An outgoing connection became writable (or failed): did the handshake work?
    fn finish_connect<H: Handler<Conn = S>>(&mut self, handler: &mut H, key: usize) -> bool {
        let conn = &mut self.conns[key];
        let failure = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            self.close(ConnId(key), CloseReason::ConnectFailed(e));
            return false;
        }
        conn.state = State::Open;
        let _ = conn.stream.set_nodelay(true);
        trace!(self.tracer, "conn#{key}: connected");
        handler.handle(self, Event::Connected(ConnId(key)));
        self.after_output_change(key);
        true
    }

    /// Reads a connection until `WouldBlock`, a short read, EOF, the output
    /// limit (backpressure) or the read budget (then: the ready list).
    fn read_conn<H: Handler<Conn = S>>(&mut self, handler: &mut H, scratch: &mut [u8], key: usize) {
        let id = ConnId(key);
        let mut budget = self.config.read_budget;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.doomed || !conn.wants_read() {
                return;
            }
            let mut room = if self.config.pause_reads_when_full {
                self.config.out_limit.saturating_sub(conn.out.len())
            } else {
                usize::MAX
            }
            .min(scratch.len());
            if let Some(throttle) = conn.throttle.as_mut() {
                let now = Instant::now();
                let wait = throttle.wait(now);
                if !wait.is_zero() {
                    conn.throttled = true;
                    self.timers
                        .add(now + wait, RESUME_READING_TIMER | key as u64);
                    trace!(
                        self.tracer,
                        "{id}: over its rate limit, reads paused for {wait:?}"
                    );
                    return;
                }
                if let Some(bytes) = throttle.bytes.as_mut() {
                    // Never lift a backpressure pause (room 0): only narrow the room.
                    if room > 0 {
                        room = room.min(bytes.available(now) as usize).max(1);
                    }
                }
            }
            if room == 0 {
                conn.read_paused = true;
                trace!(
                    self.tracer,
                    "{id}: output full ({} B), reads paused (backpressure)",
                    conn.out.len()
                );
                return;
            }
            match conn.read_plain(&mut scratch[..room]) {
                Ok(0) => {
                    conn.state = State::ReadClosed;
                    conn.peer_hup = true;
                    trace!(self.tracer, "{id}: peer closed its write side (EOF)");
                    handler.handle(self, Event::PeerClosed(id));
                    return;
                }
                Ok(n) => {
                    if let Some(bytes) = conn.throttle.as_mut().and_then(|t| t.bytes.as_mut()) {
                        bytes.take(n as f64, Instant::now());
                    }
                    // TLS yields plaintext record by record: a short read says nothing there.
                    let short = n < room && !conn.peer_hup && conn.tls.is_none();
                    trace!(self.tracer, "{id}: read {n} B");
                    handler.handle(self, Event::Data(id, &scratch[..n]));
                    if short {
                        // The socket is empty; the next byte raises a new edge.
                        return;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        trace!(self.tracer, "{id}: read budget spent, on ready list");
                        self.ready.push(Source::Conn(key));
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // TLS may have answered a handshake message: watch for
                    // writability; a half-close that waited for the handshake may go now.
                    if conn.tls.is_some() {
                        let waiting = conn.shutdown_write_when_drained || !conn.out.is_empty();
                        if waiting && !conn.tls_handshaking() {
                            // The handshake may have just ended inside read_plain: what
                            // waited for it goes out now, not at an edge that may not come.
                            self.mark_dirty(key);
                        }
                        self.after_output_change(key);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.close(id, CloseReason::Protocol(e.to_string()));
                    return;
                }
                Err(e) => {
                    self.close(id, CloseReason::Io(e));
                    return;
                }
            }
        }
    }

    /// Writes a connection's queued output; drives what follows a drain.
    fn flush_conn<H: Handler<Conn = S>>(&mut self, handler: &mut H, key: usize) {
        let id = ConnId(key);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        if conn.doomed {
            return;
        }
        if !conn.has_pending_output() {
            if conn.shutdown_write_when_drained || conn.state == State::Flushing {
                self.on_drained(handler, key);
            }
            return;
        }
        match conn.write_out() {
            Ok(n) => {
                trace!(
                    self.tracer,
                    "{id}: wrote {n} B, {} B still queued",
                    conn.out.len()
                );
                if !conn.has_pending_output() {
                    self.on_drained(handler, key);
                } else if conn.read_paused && conn.out.len() < self.config.out_limit {
                    self.resume_reading(key);
                }
                self.after_output_change(key);
            }
            Err(e) => {
                let reason = write_failure(conn.state, e);
                self.close(id, reason);
            }
        }
    }

    fn on_drained<H: Handler<Conn = S>>(&mut self, handler: &mut H, key: usize) {
        let conn = &mut self.conns[key];
        if conn.read_paused {
            self.resume_reading(key);
        }
        let conn = &mut self.conns[key];
        if conn.tls_handshaking() {
            // Plaintext written during the handshake waits inside rustls: not drained yet.
            return;
        }
        if conn.state == State::Flushing {
            if conn.tls.is_some() && !conn.tls_close_sent {
                if let Some(tls) = conn.tls.as_mut() {
                    tls.send_close_notify();
                }
                conn.tls_close_sent = true;
                self.mark_dirty(key);
                return;
            }
            self.close_gently(key);
            return;
        }
        if conn.shutdown_write_when_drained {
            match conn.tls.as_mut() {
                // Not before the handshake ends: its last flight drains again.
                Some(tls) if tls.is_handshaking() => {}
                // TLS says goodbye after the last plaintext; the socket follows once that is out.
                Some(tls) if !conn.tls_close_sent => {
                    tls.send_close_notify();
                    conn.tls_close_sent = true;
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(key);
                    }
                    return;
                }
                _ => {
                    conn.shutdown_write_when_drained = false;
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    trace!(self.tracer, "conn#{key}: drained, write side shut down");
                }
            }
        }
        handler.handle(self, Event::Drained(ConnId(key)));
    }

    /// Everything owed to the peer has been handed to the kernel: shut our
    /// write side, read and drop whatever the peer sent that nobody will
    /// read, then close. Closing with unread bytes in the receive queue
    /// would make the kernel send a reset, and a reset makes the peer's
    /// kernel throw away what the peer has not read yet: our last words.
    fn close_gently(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let _ = conn.stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 4096];
        let mut budget = self.config.read_budget;
        while budget > 0 {
            match conn.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
        self.close(ConnId(key), CloseReason::Done);
    }

    /// A closing connection's grace ran out: close it now, whatever is left.
    fn end_close_grace(&mut self, key: usize) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let late = u64::from(conn.close_deadline_ms) <= now_ms;
        match conn.state {
            State::Flushing if late => self.close(
                ConnId(key),
                CloseReason::Local("the peer did not take its last output in time"),
            ),
            _ => {}
        }
    }

    /// Makes an accepted connection a TLS server session, with a deadline for its handshake.
    fn start_tls_server(&mut self, id: ConnId, config: Arc<rustls::ServerConfig>) {
        match rustls::ServerConnection::new(config) {
            Ok(mut session) => {
                session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                self.conns[id.0].tls = Some(Box::new(session.into()));
                self.timers.add(
                    Instant::now() + crate::tls::HANDSHAKE_TIMEOUT,
                    HANDSHAKE_TIMER | id.0 as u64,
                );
            }
            Err(e) => self.close(id, CloseReason::Protocol(format!("tls: {e}"))),
        }
    }

    /// A TLS handshake deadline passed: a connection still handshaking is closed
    /// (a stalled client costs one descriptor for a bounded time, and nobody waits for it).
    fn check_handshake(&mut self, key: usize) {
        let stalled = self.conns.get(key).is_some_and(|c| {
            c.tls_handshaking() && (Instant::now() - c.since) >= crate::tls::HANDSHAKE_TIMEOUT
        });
        if stalled {
            self.close(
                ConnId(key),
                CloseReason::Protocol(format!(
                    "tls handshake not finished within {} s",
                    crate::tls::HANDSHAKE_TIMEOUT.as_secs()
                )),
            );
        }
    }

    /// A rate-limit pause is over: read the connection again, at once (its
    /// readable edge may be long spent). Stale ids are harmless: a connection
    /// that is not throttled is left alone, one still in debt pauses again.
    fn end_throttle(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.throttled {
                conn.throttled = false;
                self.ready.push(Source::Conn(key));
                trace!(
                    self.tracer,
                    "conn#{key}: rate-limit pause over, reads resumed"
                );
            }
        }
    }

    /// Puts a connection on the list written at the end of this turn.
    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Trap (a): the paused connection's readable edge is already spent, so
    /// it goes on the ready list to be read at once.
    fn resume_reading(&mut self, key: usize) {
        self.conns[key].read_paused = false;
        self.ready.push(Source::Conn(key));
        trace!(
            self.tracer,
            "conn#{key}: output drained below the limit, reads resumed"
        );
    }

    /// Registers WRITABLE exactly while output is pending (or a connect is under way).
    fn after_output_change(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let wanted = conn.wants_write();
        if wanted == conn.writable_registered || conn.doomed {
            return;
        }
        let interest = if wanted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self
            .poll
            .registry()
            .reregister(&mut conn.stream, Source::Conn(key).token(), interest)
        {
            Ok(()) => {
                conn.writable_registered = wanted;
                trace!(
                    self.tracer,
                    "conn#{key}: interest {}",
                    if wanted { "READ+WRITE" } else { "READ" }
                );
            }
            Err(e) => self.close(ConnId(key), CloseReason::Io(e)),
        }
    }

    fn read_stdin<H: Handler<Conn = S>>(&mut self, handler: &mut H, scratch: &mut [u8]) {
        let mut budget = self.config.read_budget;
        loop {
            if self.stdin_paused || self.stdin_eof {
                return;
            }
            let Some(stdin) = self.stdin.as_mut() else {
                return;
            };
            let always_ready = stdin.kind() != StdinKind::Pollable;
            match stdin.read(scratch) {
                Ok(0) => {
                    self.stdin_eof = true;
                    stdin.close(self.poll.registry());
                    trace!(self.tracer, "stdin: end of input");
                    handler.handle(self, Event::StdinEof);
                    return;
                }
                Ok(n) => {
                    trace!(self.tracer, "stdin: read {n} B");
                    handler.handle(self, Event::Stdin(&scratch[..n]));
                    budget = budget.saturating_sub(n);
                    if always_ready || budget == 0 {
                        // A regular file never signals: one chunk per turn, then come back.
                        self.ready.push(Source::Stdin);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("stdin: {e}; treating it as ended");
                    self.stdin_eof = true;
                    stdin.close(self.poll.registry());
                    handler.handle(self, Event::StdinEof);
                    return;
                }
            }
        }
    }

    fn on_udp_event<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        scratch: &mut [u8],
        event: &mio::event::Event,
    ) {
        if event.is_writable() && self.udp_writable_wanted {
            handler.handle(self, Event::UdpWritable);
        }
        if event.is_error() {
            self.read_udp_errors(handler);
        }
        if event.is_readable() || event.is_error() {
            self.read_udp(handler, scratch);
        }
    }

    /// Reads datagrams until `WouldBlock` or the read budget (then: the ready list).
    fn read_udp<H: Handler<Conn = S>>(&mut self, handler: &mut H, scratch: &mut [u8]) {
        let mut budget = self.config.read_budget;
        loop {
            let Some(socket) = self.udp.as_ref() else {
                return;
            };
            match udp::recv_datagram(socket, scratch) {
                Ok(datagram) => {
                    let n = datagram.len;
                    let from = datagram.from;
                    if let Some(dropped) = datagram.drops {
                        self.udp_dropped = dropped;
                    }
                    if datagram.truncated {
                        log::warn!("udp: a datagram from {from} was cut to {n} B");
                    }
                    trace!(self.tracer, "udp: {n} B from {from}");
                    handler.handle(self, Event::Datagram(&scratch[..n], from));
                    budget = budget.saturating_sub(n.max(1));
                    if budget == 0 {
                        self.ready.push(Source::Udp);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if udp::is_icmp_error(&e) => {
                    // An ICMP report was pending; its details wait on the error queue.
                    if !self.read_udp_errors(handler) {
                        handler.handle(self, Event::UdpError(e));
                    }
                }
                Err(e) => {
                    trace!(self.tracer, "udp: error {e}");
                    handler.handle(self, Event::UdpError(e));
                    // Do not spin on an error that repeats; come back next turn.
                    self.ready.push(Source::Udp);
                    return;
                }
            }
        }
    }

    /// Drains the UDP socket's error queue (ICMP reports); returns whether it held any.
    fn read_udp_errors<H: Handler<Conn = S>>(&mut self, handler: &mut H) -> bool {
        let mut any = false;
        loop {
            let Some(socket) = self.udp.as_ref() else {
                return any;
            };
            match udp::recv_error(socket) {
                Ok(None) => return any,
                Ok(Some(report)) => {
                    any = true;
                    trace!(
                        self.tracer,
                        "udp: error queue: {} about {:?} (ICMP from {:?})",
                        report.error,
                        report.peer,
                        report.offender
                    );
                    let event = match report.peer {
                        Some(peer) if report.port_unreachable => Event::PeerUnreachable(peer),
                        Some(peer) => Event::UdpError(io::Error::new(
                            report.error.kind(),
                            format!("{peer}: {}", report.error),
                        )),
                        None => Event::UdpError(report.error),
                    };
                    handler.handle(self, event);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    trace!(self.tracer, "udp: reading the error queue: {e}");
                    return any;
                }
            }
        }
    }

    fn on_signal<H: Handler<Conn = S>>(&mut self, handler: &mut H, signal: i32) {
        trace!(self.tracer, "signals: {}", signals::name(signal));
        if signal == signals::TABLE_SIGNAL {
            self.print_table(handler);
        } else {
            handler.handle(self, Event::Signal(signal));
        }
    }

    /// SIGUSR1: the connection table on stderr.
    fn print_table<H: Handler<Conn = S>>(&self, handler: &H) {
        let now = Instant::now();
        let mut text = format!(
            "connection table: {} connection(s); {} accepted, refused: {} full, {} by rule, {} per-ip; {}\n",
            self.conns.len(),
            self.stats.accepted,
            self.stats.refused,
            self.stats.refused_by_rule,
            self.stats.refused_per_ip,
            self.stats()
        );
        text.push_str("  token       peer                                       state        out B     in B      age\n");
        for (key, conn) in &self.conns {
            text.push_str(&format!(
                "  {:<11} {:<42} {:<12} {:<9} {:<9} {:.1}s\n",
                format!("conn#{key}"),
                conn.peer.to_string(),
                if conn.read_paused {
                    "paused"
                } else if conn.throttled {
                    "throttled"
                } else if conn.held {
                    "held"
                } else {
                    conn.state.name()
                },
                conn.out.len(),
                handler.buffered_in(&conn.state_of_app),
                (now - conn.since).as_secs_f64()
            ));
        }
        handler.describe(&mut text);
        let _ = io::stderr().lock().write_all(text.as_bytes());
    }

    /// End of turn: write every connection that had frames queued, then reap.
    fn finish<H: Handler<Conn = S>>(&mut self, handler: &mut H) {
        // Closing can queue more (a "has left" message), and writing can fail
        // and close more; two rounds settle it, and anything left waits for
        // the next turn, which will not block.
        for _ in 0..2 {
            let dirty = std::mem::take(&mut self.dirty);
            for key in dirty {
                self.flush_conn(handler, key);
            }
            self.reap(handler);
        }
    }

    fn reap<H: Handler<Conn = S>>(&mut self, handler: &mut H) {
        while !self.closing.is_empty() {
            let closing = std::mem::take(&mut self.closing);
            for (key, reason) in closing {
                handler.handle(self, Event::Closed(ConnId(key), &reason));
                let mut conn = self.conns.remove(key);
                let _ = self.poll.registry().deregister(&mut conn.stream);
                if conn.counted_per_ip {
                    let ip = conn.peer.ip();
                    if let Some(count) = self.per_ip.get_mut(&ip) {
                        *count -= 1;
                        if *count == 0 {
                            self.per_ip.remove(&ip);
                        }
                    }
                }
                trace!(self.tracer, "conn#{key} {}: closed ({reason})", conn.peer);
                self.ready.retain(|s| *s != Source::Conn(key));
                self.dirty.retain(|k| *k != key);
                // A descriptor is free again: a listener paused for lack of them may go on.
                for (index, listener) in self.listeners.iter_mut().enumerate() {
                    if listener.paused {
                        listener.paused = false;
                        self.ready.push(Source::Listener(index));
                        log::info!("a descriptor is free: accepting again");
                    }
                }
                if self.spare_fd.is_none() {
                    self.spare_fd = File::open("/dev/null").ok();
                }
            }
        }
    }

    fn trace_event(&self, source: Source, event: &mio::event::Event) {
        let role = match source {
            Source::Listener(i) => format!("listener#{i}"),
            Source::Udp => "udp".to_string(),
            Source::Stdin => "stdin".to_string(),
            Source::Signals => "signals".to_string(),
            Source::Conn(key) => match self.conns.get(key) {
                Some(conn) => format!("conn#{key} {} ({} B queued)", conn.peer, conn.out.len()),
                None => format!("conn#{key} (gone)"),
            },
        };
        let mut flags = Vec::new();
        if event.is_readable() {
            flags.push("readable");
        }
        if event.is_writable() {
            flags.push("writable");
        }
        if event.is_read_closed() {
            flags.push("read-closed");
        }
        if event.is_write_closed() {
            flags.push("write-closed");
        }
        if event.is_error() {
            flags.push("error");
        }
        self.tracer
            .line(format_args!("event {role}: {}", flags.join("|")));
    }
}

/// Why a connection ends when a write fails: a peer that already closed its
/// side simply left before taking everything; otherwise it is an I/O error.
fn write_failure(state: State, error: io::Error) -> CloseReason {
    if state == State::ReadClosed {
        CloseReason::PeerGone
    } else {
        CloseReason::Io(error)
    }
}

/// Tells a client it cannot be served, best effort, and closes it.
fn refuse(mut stream: TcpStream, notice: &[u8]) {
    let _ = stream.write(notice);
    let _ = stream.shutdown(Shutdown::Write);
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
