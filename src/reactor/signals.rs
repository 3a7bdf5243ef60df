//! Signals as a poll source: SIGINT, SIGTERM, SIGUSR1 and SIGCONT arrive as
//! events of the one loop (through signal-hook's self-pipe), never as code
//! running at a random point of it.
//!
//! * SIGINT and SIGTERM go to the command ([`Event::Signal`]), and also set a
//!   flag ([`interrupted`]) that the waits outside the loop look at — the
//!   drain of a client's stdout, the bounded flush at exit — so that they,
//!   too, end at once.
//! * SIGUSR1 prints the connection table.
//! * SIGCONT (after Ctrl+Z and `fg`, or `kill -CONT`): the shell may have
//!   made the terminal blocking while the job was stopped; stdin, stdout and
//!   stderr are made non-blocking again and tried at once.
//! * SIGTTIN and SIGTTOU are blocked: a job in the background that reads the
//!   terminal gets `EIO` (and says how to run it, see `stdin.rs`) instead of
//!   being stopped, where SIGTERM could not reach it; its output to the
//!   terminal is let through.
//!
//! *Invariant:* no code runs in a signal handler except signal-hook's write
//! to the pipe and its store to the flag.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use mio::{Interest, Registry};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use signal_hook::consts::{SIGCONT, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use super::token::Source;
use super::{Ctx, Event, Handler};
use crate::trace;

/// SIGUSR1: print the connection table.
pub const TABLE_SIGNAL: i32 = SIGUSR1;

/// SIGCONT: the job was continued.
pub const CONTINUE_SIGNAL: i32 = SIGCONT;

/// Set by the first SIGINT or SIGTERM, for good; see [`interrupted`].
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// True once SIGINT or SIGTERM has arrived (while a reactor was set up).
/// What waits outside the loop stops waiting then.
pub fn interrupted() -> bool {
    INTERRUPTED
        .get()
        .is_some_and(|flag| flag.load(Ordering::Relaxed))
}

/// The signals the reactor listens for.
pub struct SignalSource {
    signals: Signals,
}

impl SignalSource {
    /// Installs the handlers and registers their pipe with the poll; blocks
    /// SIGTTIN and SIGTTOU (see the module docs).
    pub fn open(registry: &Registry) -> io::Result<SignalSource> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGCONT])?;
        registry.register(&mut signals, Source::Signals.token(), Interest::READABLE)?;
        if INTERRUPTED.get().is_none() {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(SIGINT, Arc::clone(&flag))?;
            signal_hook::flag::register(SIGTERM, Arc::clone(&flag))?;
            let _ = INTERRUPTED.set(flag);
        }
        let mut background = SigSet::empty();
        background.add(Signal::SIGTTIN);
        background.add(Signal::SIGTTOU);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&background), None)?;
        Ok(SignalSource { signals })
    }

    /// The signals that arrived since the last call.
    pub fn pending(&mut self) -> Vec<i32> {
        self.signals.pending().collect()
    }
}

/// The name of a signal the reactor listens for.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGUSR1 => "SIGUSR1",
        SIGCONT => "SIGCONT",
        _ => "signal",
    }
}

impl<S> Ctx<S> {
    pub(super) fn on_signal<H: Handler<Conn = S>>(&mut self, handler: &mut H, signal: i32) {
        trace!(self.tracer, "signals: {}", name(signal));
        match signal {
            TABLE_SIGNAL => self.print_table(handler),
            CONTINUE_SIGNAL => {
                self.stdin_continue();
                self.console_continue();
            }
            _ => handler.handle(self, Event::Signal(signal)),
        }
    }
}
