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
//!
//! A read never blocks. `O_NONBLOCK` lives on the open file, which a terminal
//! shares with the shell: after Ctrl+Z the shell clears it, and whoever else
//! holds the pipe or terminal may too. So the flag is checked (and set again)
//! before every read, and once more on SIGCONT. A job in the background that
//! reads its terminal gets `EIO` (SIGTTIN is blocked, see `signals.rs`): it
//! says once how to run it and goes on without stdin until it is brought back
//! to the foreground (the next read that works).

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

/// Fd 0's status flags at start-up; `None` when it was not open.
static STDIN_AT_START: OnceLock<Option<libc::c_int>> = OnceLock::new();

/// Looks whether fd 0 is open, once, and remembers the answer and its flags
/// (to restore them). `main` calls this before anything else so that the
/// answer predates every socket and every change of flags.
pub fn probe() -> bool {
    STDIN_AT_START
        .get_or_init(|| sys::status_flags(STDIN_FD))
        .is_some()
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
    /// File status flags at start-up, restored on drop once we set `O_NONBLOCK`.
    /// (A terminal's stdin, stdout and stderr share their flags; the console
    /// restores the same start-up values, so the order of the two does not matter.)
    saved_flags: Option<libc::c_int>,
    registered: bool,
    /// A read found this job in the background of its terminal, and it said so.
    in_background: bool,
}

impl StdinSource {
    /// Sets stdin up as a source, registering it when the poll accepts it.
    pub fn open(registry: &Registry) -> io::Result<StdinSource> {
        if !probe() {
            return Ok(StdinSource {
                kind: StdinKind::Absent,
                saved_flags: None,
                registered: false,
                in_background: false,
            });
        }
        match registry.register(
            &mut SourceFd(&STDIN_FD),
            Source::Stdin.token(),
            Interest::READABLE,
        ) {
            Ok(()) => {
                let now = sys::set_nonblocking(STDIN_FD)?;
                let saved_flags = Some(STDIN_AT_START.get().copied().flatten().unwrap_or(now));
                Ok(StdinSource {
                    kind: StdinKind::Pollable,
                    saved_flags,
                    registered: true,
                    in_background: false,
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(StdinSource {
                kind: StdinKind::AlwaysReady,
                saved_flags: None,
                registered: false,
                in_background: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// How stdin is served.
    pub fn kind(&self) -> StdinKind {
        self.kind
    }

    /// One `read(2)` from fd 0, which never blocks. `Ok(0)` is end of input.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.kind == StdinKind::Absent {
            return Ok(0);
        }
        if self.registered {
            self.ensure_nonblocking()?;
        }
        // Fd 0 through std's handle, which lends it as a borrowed descriptor;
        // std's own buffer is bypassed, and nothing else reads stdin.
        Ok(nix::unistd::read(io::stdin().as_fd(), buf)?)
    }

    /// Sets `O_NONBLOCK` again if someone cleared it (one `fcntl` when not).
    fn ensure_nonblocking(&mut self) -> io::Result<()> {
        let before = sys::set_nonblocking(STDIN_FD)?;
        if before & libc::O_NONBLOCK == 0 {
            log::debug!("stdin: O_NONBLOCK had been cleared behind our back; set again");
        }
        Ok(())
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

/// True when stdin is a terminal whose foreground process group is not ours:
/// the job runs in the background (then a read of the terminal fails with
/// `EIO`, since SIGTTIN is blocked).
fn in_background() -> bool {
    let stdin = io::stdin();
    match nix::unistd::tcgetpgrp(stdin.as_fd()) {
        Ok(foreground) => foreground != nix::unistd::getpgrp(),
        Err(_) => false,
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

    /// After SIGCONT: the terminal may have been made blocking while the job
    /// was stopped. Set the flag again now, and read at once: input typed
    /// meanwhile may have raised its edge before we could act on it.
    pub(super) fn stdin_continue(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        if stdin.registered {
            if let Err(e) = stdin.ensure_nonblocking() {
                log::warn!("stdin: cannot make it non-blocking again: {e}");
            }
        }
        if !self.stdin_paused && !self.stdin_eof && !self.ready.contains(&Source::Stdin) {
            self.ready.push(Source::Stdin);
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
                    stdin.in_background = false;
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
                Err(e) if e.raw_os_error() == Some(libc::EIO) && in_background() => {
                    if !stdin.in_background {
                        stdin.in_background = true;
                        log::warn!(
                            "stdin: this job runs in the background and may not read the \
                             terminal, so what is typed there is not read; bring it to the \
                             foreground (fg), or start it with its input redirected \
                             (< /dev/null or a file){}",
                            self.config.background_hint
                        );
                    }
                    return;
                }
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
