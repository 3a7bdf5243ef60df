//! The reactor: one `mio::Poll`, one thread, every source of the program.
//!
//! A command builds a [`Reactor`], adds its sockets, and hands
//! [`Reactor::run`] a [`Handler`]. Each [`turn`](Reactor::turn) of the loop
//! does three things, in this order:
//!
//! 1. **poll** — block until a source is ready or the nearest deadline
//!    passes, to the microsecond (a timerfd in the poll; see `timer.rs`),
//!    and no blocking at all while work is left over from the last turn;
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
//!   in which case we read on to see the end of the stream. (`tcp.rs`;
//!   listeners in `accept.rs`, datagrams in `udp.rs`, stdin in `stdin.rs`.)
//! * **A paused reader is resumed by hand.** A connection whose output
//!   reached the limit stops reading (backpressure). Its readable edge is
//!   already spent, so when its output drains `flush_conn` puts it on the
//!   ready list; nothing else would ever wake it. The same holds for stdin
//!   (`Ctx::resume_stdin`), for a connection the command held
//!   (`Ctx::release_reads`) and for a listener paused when descriptors ran
//!   out (`tcp.rs`, `reap`).
//! * **Write interest only while there is output.** A write is tried first;
//!   only what the kernel does not take is queued, and only then is WRITABLE
//!   registered (`after_output_change` in `tcp.rs`). It is dropped again once
//!   the queue drains, so an idle connection never wakes the loop.
//! * **Nobody closes in the middle of a turn.** [`Ctx::close`] marks a
//!   connection; the reaper removes it after the batch, so a slab key (the
//!   token) is never reused while an event for the old connection may still
//!   be in hand (`ctx.rs` marks, `tcp.rs` reaps).
//! * **A UDP error is a queue, not a flag.** With `IP_RECVERR` set (see
//!   [`crate::udp`]), each ICMP report about a datagram we sent waits on the
//!   socket's error queue and raises EPOLLERR. `read_udp_errors` drains that
//!   queue, one [`Event::PeerUnreachable`] or [`Event::UdpError`] per report;
//!   an ordinary read would only have returned the bare errno, once, without
//!   saying which peer (`udp.rs`).
//! * **An error that may pass is retried on a deadline.** A listener that
//!   cannot accept for a reason of its own, or a UDP socket whose receive
//!   fails, is set aside until a backoff deadline (10 ms doubling to 1 s,
//!   [`timer::Backoff`]): retried at once it would spin, never retried it
//!   would strand what waits behind the error (`accept.rs`, `udp.rs`).
//! * **No source is read twice at once.** One handler runs at a time, which
//!   is why one scratch buffer serves every read.
//! * **Nothing waits but the poll.** Every descriptor the loop touches is
//!   non-blocking, stdin, stdout and stderr included: stdout and stderr are
//!   bounded buffers drained on writable readiness (`console.rs`), stdin's
//!   `O_NONBLOCK` is checked before every read and set again on SIGCONT
//!   (`stdin.rs`), and a client's connect is finished by the loop (`Ctx::connect`).
//!
//! # Where things are
//!
//! This file holds the loop. Each other file adds the `Ctx` methods of one
//! concern: `api.rs` (what a command sees), `ctx.rs` (what a command may
//! do), `accept.rs` (listeners and admission), `tcp.rs` (a connection's
//! reads, writes, close and reaping), `tls.rs`, `udp.rs`, `stdin.rs`,
//! `console.rs` (stdout and stderr, written without waiting), `signals.rs`,
//! `timer.rs` (deadlines), `stats.rs` (the loop's figures, the SIGUSR1
//! table, trace lines), `token.rs` (the token map), `trace.rs`;
//! `tests.rs` tests the edges above from the inside, over loopback.

mod accept;
mod api;
pub mod console;
mod ctx;
pub mod signals;
mod stats;
pub mod stdin;
mod tcp;
#[cfg(test)]
mod tests;
pub mod timer;
mod tls;
pub mod token;
pub mod trace;
mod udp;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Poll};
use slab::Slab;

use crate::conn::{CloseReason, Conn};
use crate::trace;
use accept::Listener;
pub use api::{Config, ConnId, Event, Handler, Queued, FULL_NOTICE};
pub use console::StdoutRoom;
use signals::SignalSource;
pub use stats::LoopStats;
use stdin::{StdinKind, StdinSource};
use timer::{Backoff, Deadline, Timers};
pub use token::Source;
use trace::Tracer;

/// Size of the one read buffer every source shares. Large enough for the
/// biggest UDP datagram (65,507 bytes).
pub const SCRATCH_SIZE: usize = 64 * 1024;

/// How many events one poll call can return.
const EVENT_CAPACITY: usize = 1024;

/// How long a connection closed with [`Ctx::close_after_flush`] may take to
/// take its last output and close its side, before it is closed regardless.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Non-blocking polls a turn may add to take in more input before it writes
/// the frames it queued (see `Ctx::gather`).
const GATHER_POLLS: usize = 4;

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
    /// The UDP socket failed to receive: when to try again.
    udp_backoff: Backoff,
    udp_writable_wanted: bool,
    /// The command holds the UDP socket's reads (`Ctx::hold_udp_reads`).
    udp_held: bool,
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
    /// Refusals at accept, for log lines limited to one a second per cause.
    refusals: accept::Refusals,
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
    /// Stdout and stderr register with this poll while bytes wait for them.
    _console: console::Link,
}

impl<S: Default> Reactor<S> {
    /// Creates the poll, installs the signal handlers and, if configured, stdin.
    pub fn new(config: Config) -> io::Result<Reactor<S>> {
        // Look at fds 0, 1 and 2 before this function opens anything (see
        // stdin::probe); make stdout and stderr non-blocking.
        stdin::probe();
        let console = console::attach();
        let poll = Poll::new()?;
        let stdin = if config.stdin {
            Some(StdinSource::open(poll.registry())?)
        } else {
            None
        };
        let signals = SignalSource::open(poll.registry())?;
        let timers = Timers::new(poll.registry());
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
                udp_backoff: Backoff::default(),
                udp_writable_wanted: false,
                udp_held: false,
                udp_dropped: 0,
                stdin,
                stdin_paused: false,
                stdin_eof: false,
                timers,
                tracer,
                per_ip: HashMap::new(),
                refusals: accept::Refusals::default(),
                stats: LoopStats::default(),
                started: Instant::now(),
                stopping: false,
                config,
            },
            events: Events::with_capacity(EVENT_CAPACITY),
            scratch: vec![0; SCRATCH_SIZE],
            signals,
            _console: console,
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
            ..
        } = self;

        // 1. Poll. Work left from the last turn means: look, but do not wait.
        console::sync(cx.poll.registry());
        let now = Instant::now();
        let timeout = if cx.ready.is_empty() && cx.dirty.is_empty() {
            cx.timers.poll_timeout(now)
        } else {
            Some(Duration::ZERO)
        };
        match cx.poll.poll(events, timeout) {
            Ok(()) => {}
            // A signal ended the wait (its event comes with the next poll).
            // The wait still counts, and the rest of the turn runs as for a
            // poll that returned nothing: deadlines may be due.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
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
                Source::Stdout => cx.on_console(handler, console::Stream::Out),
                Source::Stderr => cx.on_console(handler, console::Stream::Err),
                Source::Signals | Source::Timer => {}
            }
        }
        let now = Instant::now();
        while let Some(deadline) = cx.timers.pop_due(now) {
            match deadline {
                Deadline::Command(id) => handler.handle(cx, Event::Timer(id)),
                Deadline::ResumeReading(key) => cx.end_throttle(key),
                Deadline::Handshake(key) => cx.check_handshake(key),
                Deadline::CloseGrace(key, since) => cx.end_close_grace(key, since),
                Deadline::RetryAccept(index) => cx.retry_accept(handler, index),
                Deadline::RetryUdp => cx.retry_udp(handler, scratch),
                Deadline::RefusalSummary => cx.log_refusal_summaries(),
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
                Source::Stdout => self.on_console(handler, console::Stream::Out),
                Source::Stderr => self.on_console(handler, console::Stream::Err),
                Source::Signals => {
                    for signal in signals.pending() {
                        self.on_signal(handler, signal);
                    }
                }
                // The deadlines it woke us for pass after the events (`turn`).
                Source::Timer => self.timers.on_clock(),
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
}
