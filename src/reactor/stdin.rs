//! Standard input as a poll source, whatever stdin turns out to be.
//!
//! | stdin is            | how it is served                                          |
//! |---------------------|-----------------------------------------------------------|
//! | a terminal or pipe  | registered with the poll (edge-triggered), `O_NONBLOCK` set and the old flags restored on drop |
//! | a regular file, `/dev/null` | epoll refuses them (`EPERM`); they never block, so the reactor treats them as always readable and reads one bounded chunk per turn |
//! | closed (no fd 0)    | seen at start-up, before any socket exists, and reported as end of input at once |
//!
//! The closed case matters: when a program starts without fd 0, the first
//! socket it opens *gets* fd 0. [`probe`] looks once, at start-up, and its
//! answer is kept, so a socket on fd 0 is never read as stdin.

use std::io;
use std::os::fd::{AsFd, RawFd};
use std::sync::OnceLock;

use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::token::Source;
use super::{Ctx, Event, Handler};
use crate::sys;
use crate::trace;

const STDIN_FD: RawFd = 0;

static STDIN_OPEN: OnceLock<bool> = OnceLock::new();

/// Looks whether fd 0 is open, once, and remembers the answer. `main` calls
/// this before anything else so that the answer predates every socket.
pub fn probe() -> bool {
    *STDIN_OPEN.get_or_init(|| sys::fd_is_open(STDIN_FD))
}

/// How stdin is served (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinKind {
    /// Registered with the poll.
    Pollable,
    /// Always readable: a regular file or `/dev/null`.
    AlwaysReady,
    /// Not open at all: behaves as an empty input.
    Absent,
}

/// Standard input, owned by the reactor.
pub struct StdinSource {
    kind: StdinKind,
    /// File status flags before we set `O_NONBLOCK`, restored on drop.
    saved_flags: Option<libc::c_int>,
    registered: bool,
}

impl StdinSource {
    /// Sets stdin up as a source, registering it when the poll accepts it.
    pub fn open(registry: &Registry) -> io::Result<StdinSource> {
        if !probe() {
            return Ok(StdinSource {
                kind: StdinKind::Absent,
                saved_flags: None,
                registered: false,
            });
        }
        match registry.register(
            &mut SourceFd(&STDIN_FD),
            Source::Stdin.token(),
            Interest::READABLE,
        ) {
            Ok(()) => {
                let saved_flags = Some(sys::set_nonblocking(STDIN_FD)?);
                Ok(StdinSource {
                    kind: StdinKind::Pollable,
                    saved_flags,
                    registered: true,
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(StdinSource {
                kind: StdinKind::AlwaysReady,
                saved_flags: None,
                registered: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// How stdin is served.
    pub fn kind(&self) -> StdinKind {
        self.kind
    }

    /// One `read(2)` from fd 0. `Ok(0)` is end of input.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.kind == StdinKind::Absent {
            return Ok(0);
        }
        // Fd 0 through std's handle, which lends it as a borrowed descriptor;
        // std's own buffer is bypassed, and nothing else reads stdin.
        Ok(nix::unistd::read(io::stdin().as_fd(), buf)?)
    }

    /// Stops watching stdin (at end of input). Restores the descriptor's flags.
    pub fn close(&mut self, registry: &Registry) {
        if self.registered {
            let _ = registry.deregister(&mut SourceFd(&STDIN_FD));
            self.registered = false;
        }
        self.restore();
    }

    fn restore(&mut self) {
        if let Some(flags) = self.saved_flags.take() {
            sys::restore_flags(STDIN_FD, flags);
        }
    }
}

impl Drop for StdinSource {
    /// Every exit path that unwinds through the reactor puts the user's
    /// terminal back as it was: a shell left with a non-blocking tty breaks.
    fn drop(&mut self) {
        self.restore();
    }
}

impl<S> Ctx<S> {
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

    pub(super) fn read_stdin<H: Handler<Conn = S>>(&mut self, handler: &mut H, scratch: &mut [u8]) {
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
}
