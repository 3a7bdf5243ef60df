//! Standard output and standard error as sinks the loop writes without
//! ever waiting for them.
//!
//! Each is a bounded buffer in front of its descriptor. Bytes are written at
//! once when nothing waits ahead of them; what the descriptor does not take
//! (`EAGAIN`: a full pipe, a paused `less`, a terminal stopped with Ctrl+S)
//! waits in the buffer, and only then is the descriptor registered with the
//! poll, for WRITABLE, until the buffer drains (`Source::Stdout`,
//! `Source::Stderr`; the registrations are made just before the loop polls,
//! by [`sync`]). A regular file or `/dev/null` never answers `EAGAIN`,
//! so it is simply written. Both descriptors are made non-blocking when a
//! reactor starts and their flags are put back by [`finish`]; the flag is
//! checked again before every write, because whoever shares the open file
//! (a shell after Ctrl+Z, another program on the same terminal) may clear it.
//!
//! What happens when a buffer is full depends on what the bytes are:
//!
//! * **a log or trace line** ([`LogWriter`], [`errln!`](crate::errln)): dropped
//!   and counted; once stderr drains, one line says how many were lost;
//! * **a server's copy of what it relays** ([`Ctx::stdout`]): refused, whole;
//!   the command counts what it did not print and says so now and then;
//! * **a client's data** ([`Ctx::stdout_data`]): taken, and the answer
//!   [`StdoutRoom::Full`] tells the client to stop reading its socket until
//!   [`Event::StdoutReady`]. A client holds at most one read beyond the limit.
//!
//! *Invariant:* no write to fd 1 or fd 2 waits. The only waits are
//! [`Reactor::drain_stdout`] (in the loop's own poll, ended by SIGINT or
//! SIGTERM) and [`finish`] at exit (bounded by [`EXIT_WAIT`]).
//!
//! The buffers are process-wide, behind a mutex, because the logger needs
//! them from anywhere; the program has one thread, so the lock is never
//! contended. A log line made while the lock is held (mio logs its own
//! registrations at trace level) cannot be written: it is dropped rather
//! than deadlock (see [`Locked`]).

use std::cell::Cell;
use std::fmt;
use std::io::{self, Write};
use std::ops::{Deref, DerefMut};
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::signals;
use super::token::Source;
use super::{Ctx, Event, Handler, Reactor};
use crate::sys;
use crate::trace;

/// Bytes standard output may hold waiting for its reader (a client may go
/// over by one read, see [`Ctx::stdout_data`]).
pub const STDOUT_LIMIT: usize = 1024 * 1024;

/// Bytes standard error may hold waiting for its reader; log lines beyond are dropped.
pub const STDERR_LIMIT: usize = 256 * 1024;

/// How long [`finish`] keeps trying at exit while no byte could be written.
pub const EXIT_WAIT: Duration = Duration::from_secs(1);

const STDOUT_FD: RawFd = 1;
const STDERR_FD: RawFd = 2;

/// One of the two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output: the program's data.
    Out,
    /// Standard error: status, logs, traces.
    Err,
}

/// What [`Ctx::stdout_data`] did with a client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutRoom {
    /// Taken; there is room for more.
    Room,
    /// Taken, and standard output now holds at least [`STDOUT_LIMIT`]
    /// bytes: stop producing more (hold the socket's reads) until
    /// [`Event::StdoutReady`].
    Full,
    /// Standard output is gone (its reader closed the pipe, or it failed):
    /// the bytes were discarded, and so will any that follow be.
    Closed,
}

/// The status flags of fd 1 and fd 2 when the program started; `None`
/// for a descriptor that was not open.
type AtStart = (Option<libc::c_int>, Option<libc::c_int>);

static AT_START: OnceLock<AtStart> = OnceLock::new();

/// Looks, once, whether fd 1 and fd 2 are open, and keeps their flags.
/// `main` calls this before it opens anything, so that a socket given
/// descriptor 1 or 2 (because the program was started with them closed) is
/// never written as if it were stdout, and so that the flags put back at
/// exit are the ones the program was given, whatever changed them since
/// (on a terminal, stdin's `O_NONBLOCK` is stdout's too).
pub fn probe() {
    at_start();
}

fn at_start() -> AtStart {
    *AT_START.get_or_init(|| (sys::status_flags(STDOUT_FD), sys::status_flags(STDERR_FD)))
}

/// The two sinks and, while a reactor runs, its poll's registry.
static CONSOLE: Mutex<Console> = Mutex::new(Console {
    out: Sink::new(STDOUT_FD, STDOUT_LIMIT),
    err: Sink::new(STDERR_FD, STDERR_LIMIT),
});

struct Console {
    out: Sink,
    err: Sink,
}

thread_local! {
    /// True while this thread holds the console's lock.
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// The console's lock, held: marks the thread as inside, so that a write
/// made from within (a log line of mio's, while a sink registers) is
/// dropped instead of waiting on the lock this thread already holds.
struct Locked(MutexGuard<'static, Console>);

impl Deref for Locked {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.0
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Console {
        &mut self.0
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        HELD.with(|held| held.set(false));
    }
}

/// Takes the lock, unless this thread holds it already (then `None`).
fn try_console() -> Option<Locked> {
    if HELD.with(Cell::get) {
        return None;
    }
    // One thread: a poisoned lock only means a panic unwound through a
    // write, and the buffers are still consistent.
    let guard = CONSOLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    HELD.with(|held| held.set(true));
    Some(Locked(guard))
}

/// Takes the lock; for the loop's own calls, which never nest.
fn console() -> Locked {
    try_console().expect("the console's lock is not taken twice by the loop")
}

impl Console {
    fn sink(&mut self, stream: Stream) -> &mut Sink {
        match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        }
    }
}

/// One descriptor's buffer and what is known about the descriptor.
struct Sink {
    fd: RawFd,
    limit: usize,
    /// Bytes waiting, from `head` on. Released whenever it drains.
    pending: Vec<u8>,
    head: usize,
    /// Set once: the descriptor was closed at start, or a write failed
    /// (`EPIPE`: the reader left). Everything is discarded from then on.
    gone: bool,
    /// Why, as the OS said it (`EBADF` for a descriptor closed at start).
    failure: Option<io::Error>,
    /// The failure has not been told to the command yet (stdout only).
    owe_closed: bool,
    /// A writer was refused or told "full": tell it when the buffer drains.
    owe_ready: bool,
    /// Registered with the reactor's poll for WRITABLE (see [`sync`]).
    registered: bool,
    /// We set `O_NONBLOCK` on it: its start-up flags go back at exit.
    touched: bool,
    /// Lines dropped for want of room since the last note (stderr).
    dropped: u64,
}

/// What a write attempt found.
enum Wrote {
    /// Everything pending was written.
    All,
    /// The descriptor is full; the rest waits.
    Partly,
    /// The descriptor failed; everything was discarded.
    Failed,
}

impl Sink {
    const fn new(fd: RawFd, limit: usize) -> Sink {
        Sink {
            fd,
            limit,
            pending: Vec::new(),
            head: 0,
            gone: false,
            failure: None,
            owe_closed: false,
            owe_ready: false,
            registered: false,
            touched: false,
            dropped: 0,
        }
    }

    fn len(&self) -> usize {
        self.pending.len() - self.head
    }

    /// The descriptor's flags at start-up, `None` if it was not open then.
    fn flags_at_start(&self) -> Option<libc::c_int> {
        let (out, err) = at_start();
        if self.fd == STDOUT_FD {
            out
        } else {
            err
        }
    }

    fn open_at_start(&self) -> bool {
        self.flags_at_start().is_some()
    }

    /// Makes the descriptor non-blocking (again).
    fn ensure_nonblocking(&mut self) -> io::Result<()> {
        sys::set_nonblocking(self.fd)?;
        self.touched = true;
        Ok(())
    }

    /// Offers bytes. `whole`: all of them or none (a log line, a server's
    /// copy); otherwise all of them, whatever the buffer holds (a client's
    /// data, bounded by its caller). Returns whether they were taken.
    fn offer(&mut self, bytes: &[u8], whole: bool) -> bool {
        if !self.gone && !self.open_at_start() {
            self.fail(io::Error::from_raw_os_error(libc::EBADF));
        }
        if self.gone {
            return false;
        }
        if bytes.is_empty() {
            return true;
        }
        if whole && self.len() + bytes.len() > self.limit {
            return false;
        }
        let mut rest = bytes;
        if self.len() == 0 {
            match self.write_from(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) => {
                    self.fail(e);
                    return false;
                }
            }
        }
        if !rest.is_empty() {
            self.pending.extend_from_slice(rest);
        }
        true
    }

    /// Writes from `bytes` until the descriptor is full; returns how many it took.
    fn write_from(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.ensure_nonblocking()?;
        let mut done = 0;
        while done < bytes.len() {
            match sys::write_fd(self.fd, &bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes what is pending until it is all out or the descriptor is full.
    fn push(&mut self) -> Wrote {
        if self.gone {
            return Wrote::Failed;
        }
        if self.len() == 0 {
            return Wrote::All;
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.write_from(&pending[self.head..]);
        self.pending = pending;
        match result {
            Ok(n) => {
                self.head += n;
                if self.len() == 0 {
                    // Drained: give the memory back, as an idle connection does.
                    self.pending = Vec::new();
                    self.head = 0;
                    Wrote::All
                } else {
                    if self.head >= self.pending.len() / 2 {
                        self.pending.drain(..self.head);
                        self.head = 0;
                    }
                    Wrote::Partly
                }
            }
            Err(e) => {
                self.fail(e);
                Wrote::Failed
            }
        }
    }

    /// The descriptor failed: nothing will be written to it again.
    fn fail(&mut self, error: io::Error) {
        self.gone = true;
        self.failure = Some(error);
        self.owe_closed = true;
        self.pending = Vec::new();
        self.head = 0;
    }

    /// Whether the poll should watch this descriptor: while bytes wait.
    fn wants_watch(&self) -> bool {
        self.len() > 0 && !self.gone
    }

    fn token(&self) -> Token {
        if self.fd == STDOUT_FD {
            Source::Stdout.token()
        } else {
            Source::Stderr.token()
        }
    }

    /// Stderr: once drained, says how many lines were dropped meanwhile.
    fn note_dropped(&mut self) {
        if self.dropped == 0 || self.len() > 0 || self.gone {
            return;
        }
        let note = format!(
            "warn: {} log line(s) dropped: standard error was not being read\n",
            self.dropped
        );
        self.dropped = 0;
        self.offer(note.as_bytes(), false);
    }

    fn restore(&mut self) {
        if std::mem::take(&mut self.touched) {
            if let Some(flags) = self.flags_at_start() {
                sys::restore_flags(self.fd, flags);
            }
        }
    }
}

/// Writes a log or status line to standard error without waiting: dropped
/// (and counted, see the module docs) when stderr's buffer is full.
pub fn err(bytes: &[u8]) {
    let Some(mut console) = try_console() else {
        return;
    };
    let sink = console.sink(Stream::Err);
    if !sink.offer(bytes, true) && !sink.gone {
        sink.dropped += 1;
    }
}

/// Formats a line (a newline is added) and writes it with [`err`].
pub fn err_line(args: fmt::Arguments<'_>) {
    let mut line = fmt::format(args);
    line.push('\n');
    err(line.as_bytes());
}

/// Like `eprintln!`, but through standard error's sink: it never blocks and
/// never panics (`eprintln!` panics when stderr answers `EAGAIN`, which it
/// does once it shares a non-blocking terminal with stdin).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::reactor::console::err_line(format_args!($($arg)*))
    };
}

/// Gives bytes to standard output, whole or not at all, without waiting;
/// `false`: not taken (stdout's buffer has no room for them, or stdout is gone).
pub fn out(bytes: &[u8]) -> bool {
    let mut console = console();
    let sink = console.sink(Stream::Out);
    let taken = sink.offer(bytes, true);
    if !taken {
        sink.owe_ready = !sink.gone;
    }
    taken
}

/// Gives a client's data to standard output: always taken unless stdout is
/// gone; see [`StdoutRoom`] for what the caller must do next.
pub fn out_data(bytes: &[u8]) -> StdoutRoom {
    let mut console = console();
    let sink = console.sink(Stream::Out);
    if !sink.offer(bytes, false) && sink.gone {
        return StdoutRoom::Closed;
    }
    if sink.len() >= sink.limit {
        sink.owe_ready = true;
        StdoutRoom::Full
    } else {
        StdoutRoom::Room
    }
}

/// Why standard output is gone, if it is: `BrokenPipe` when its reader
/// closed the pipe (which a client takes as "enough", not as an error).
pub fn stdout_failure() -> Option<io::Error> {
    let console = console();
    console
        .out
        .failure
        .as_ref()
        .map(|e| match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        })
}

/// Bytes waiting in a stream's buffer.
pub fn pending(stream: Stream) -> usize {
    console().sink(stream).len()
}

/// The logger's output: each record goes to [`err`], whole or not at all.
/// Give it to `env_logger` as `Target::Pipe`.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        err(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// At exit: writes what the buffers still hold, waiting while the
/// descriptors take it, but never longer than [`EXIT_WAIT`] without
/// progress and not at all once SIGINT or SIGTERM has arrived; then puts the
/// descriptors' flags back.
pub fn finish() {
    let mut last_progress = Instant::now();
    loop {
        let mut console = console();
        let before = console.out.len() + console.err.len();
        let _ = console.out.push();
        let _ = console.err.push();
        console.err.note_dropped();
        let _ = console.err.push();
        let after = console.out.len() + console.err.len();
        let fds: Vec<RawFd> = [&console.out, &console.err]
            .iter()
            .filter(|sink| sink.len() > 0)
            .map(|sink| sink.fd)
            .collect();
        drop(console);
        if after < before {
            last_progress = Instant::now();
        }
        if fds.is_empty() || signals::interrupted() || last_progress.elapsed() >= EXIT_WAIT {
            break;
        }
        // A short wait, so that a signal is noticed within it.
        sys::wait_writable(fds[0], Duration::from_millis(50));
    }
    restore();
}

/// Puts the descriptors' flags back as they were (also from the panic hook).
pub fn restore() {
    if HELD.with(Cell::get) {
        return;
    }
    if let Ok(mut console) = CONSOLE.try_lock() {
        console.out.restore();
        console.err.restore();
    }
}

/// While a reactor runs: dropped with it, which forgets the registrations
/// (they went with its poll).
pub(super) struct Link;

/// Makes both descriptors non-blocking and writes what was left from before.
pub(super) fn attach() -> Link {
    probe();
    let mut console = console();
    for stream in [Stream::Out, Stream::Err] {
        let sink = console.sink(stream);
        sink.registered = false;
        if !sink.gone && sink.open_at_start() {
            let _ = sink.ensure_nonblocking();
        }
        let _ = sink.push();
    }
    Link
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut console = console();
        console.out.registered = false;
        console.err.registered = false;
    }
}

/// Before each poll: registers stdout and stderr for WRITABLE while bytes
/// wait for them, and deregisters them once none do. Done here, outside any
/// write, because mio logs its registrations: a registration made while a
/// log line is being written would wait on the logger's own lock.
pub(super) fn sync(registry: &Registry) {
    let changes: Vec<(RawFd, Token, bool)> = {
        let console = console();
        [&console.out, &console.err]
            .into_iter()
            .filter(|sink| sink.wants_watch() != sink.registered)
            .map(|sink| (sink.fd, sink.token(), sink.wants_watch()))
            .collect()
    };
    for (fd, token, want) in changes {
        let registered = if want {
            // A descriptor that said EAGAIN is a pipe, a socket or a
            // terminal, all of which the poll takes.
            registry
                .register(&mut SourceFd(&fd), token, Interest::WRITABLE)
                .is_ok()
        } else {
            let _ = registry.deregister(&mut SourceFd(&fd));
            false
        };
        let mut console = console();
        let sink = if fd == STDOUT_FD {
            &mut console.out
        } else {
            &mut console.err
        };
        sink.registered = registered;
    }
}

/// What writing a stream's pending bytes owes the command.
#[derive(Default)]
struct Owed {
    ready: bool,
    closed: bool,
}

/// Writes a stream's pending bytes; returns what the command must be told.
fn service(stream: Stream) -> Owed {
    let mut console = console();
    let sink = console.sink(stream);
    let wrote = sink.push();
    if matches!(wrote, Wrote::All) && stream == Stream::Err {
        sink.note_dropped();
    }
    let mut owed = Owed::default();
    if stream == Stream::Out {
        if sink.gone && sink.owe_closed {
            sink.owe_closed = false;
            owed.closed = true;
        } else if !sink.gone && sink.owe_ready && sink.len() == 0 {
            sink.owe_ready = false;
            owed.ready = true;
        }
    }
    owed
}

impl<S> Ctx<S> {
    /// Prints bytes on standard output if they fit in its buffer, whole or
    /// not at all, without waiting. `false`: not printed (stdout is full or
    /// gone) — a server's copy of what it relays is then dropped, and the
    /// server counts it; [`Event::StdoutReady`] follows once stdout drains.
    pub fn stdout(&mut self, bytes: &[u8]) -> bool {
        let taken = out(bytes);
        self.after_stdout();
        taken
    }

    /// Prints a client's data on standard output: taken whatever the buffer
    /// holds (unless stdout is gone), without waiting. On
    /// [`StdoutRoom::Full`] the client must stop reading what feeds stdout
    /// ([`Ctx::hold_reads`]) until [`Event::StdoutReady`]: its stdout is its
    /// data, and holding its reads is the backpressure that keeps the buffer
    /// within one read of [`STDOUT_LIMIT`]. On [`StdoutRoom::Closed`],
    /// [`Event::StdoutClosed`] follows too.
    pub fn stdout_data(&mut self, bytes: &[u8]) -> StdoutRoom {
        let room = out_data(bytes);
        self.after_stdout();
        room
    }

    /// A failure found while writing is told to the command next turn
    /// (not from inside the call that found it).
    fn after_stdout(&mut self) {
        let owed = {
            let console = console();
            console.out.gone && console.out.owe_closed
        };
        if owed && !self.ready.contains(&Source::Stdout) {
            self.ready.push(Source::Stdout);
        }
    }

    /// Stdout or stderr became writable (or is served from the ready list):
    /// write what waits, and tell the command what changed.
    pub(super) fn on_console<H: Handler<Conn = S>>(&mut self, handler: &mut H, stream: Stream) {
        let owed = service(stream);
        trace!(
            self.tracer,
            "{}: {} B still waiting",
            if stream == Stream::Out {
                "stdout"
            } else {
                "stderr"
            },
            pending(stream)
        );
        if owed.closed {
            handler.handle(self, Event::StdoutClosed);
        } else if owed.ready {
            handler.handle(self, Event::StdoutReady);
        }
    }

    /// After SIGCONT: whoever ran meanwhile may have made the descriptors
    /// blocking again; the next write sets them right, so try one now.
    pub(super) fn console_continue(&mut self) {
        let mut console = console();
        for stream in [Stream::Out, Stream::Err] {
            let sink = console.sink(stream);
            if !sink.gone && sink.open_at_start() {
                let _ = sink.ensure_nonblocking();
                if sink.len() > 0 {
                    let source = match stream {
                        Stream::Out => Source::Stdout,
                        Stream::Err => Source::Stderr,
                    };
                    if !self.ready.contains(&source) {
                        self.ready.push(source);
                    }
                }
            }
        }
    }
}

impl<S> Reactor<S> {
    /// After the loop: waits until standard output has taken what its
    /// buffer holds — a client's data, which its reader is owed — serving
    /// nothing but the two streams and the signals. Ends early when stdout is
    /// gone or at SIGINT/SIGTERM (then what is left is dropped).
    pub fn drain_stdout(&mut self) -> io::Result<()> {
        loop {
            let (waiting, registered) = {
                let console = console();
                (
                    console.out.len() > 0 && !console.out.gone,
                    console.out.registered,
                )
            };
            if !waiting || signals::interrupted() {
                return Ok(());
            }
            sync(self.cx.poll.registry());
            let registered = registered || console().out.registered;
            // Not registered (the poll refused it): look again now and then.
            let timeout = (!registered).then_some(Duration::from_millis(50));
            match self.cx.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if !registered {
                service(Stream::Out);
            }
            for event in self.events.iter() {
                match Source::from(event.token()) {
                    Source::Stdout => {
                        service(Stream::Out);
                    }
                    Source::Stderr => {
                        service(Stream::Err);
                    }
                    Source::Signals => {
                        // SIGINT and SIGTERM are seen through `interrupted`;
                        // after SIGCONT, writing again restores the flags.
                        let _ = self.signals.pending();
                        service(Stream::Out);
                        service(Stream::Err);
                    }
                    _ => {}
                }
            }
        }
    }
}
