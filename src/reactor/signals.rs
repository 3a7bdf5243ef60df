//! Signals as a poll source: SIGINT, SIGTERM and SIGUSR1 arrive as events of
//! the one loop (through signal-hook's self-pipe), never as code running at a
//! random point of it.

use std::io;

use mio::{Interest, Registry};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use super::token::Source;
use super::{Ctx, Event, Handler};
use crate::trace;

/// The signals the reactor listens for.
pub struct SignalSource {
    signals: Signals,
}

impl SignalSource {
    /// Installs the handlers and registers their pipe with the poll.
    pub fn open(registry: &Registry) -> io::Result<SignalSource> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
        registry.register(&mut signals, Source::Signals.token(), Interest::READABLE)?;
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
        _ => "signal",
    }
}

/// SIGUSR1: print the connection table.
pub const TABLE_SIGNAL: i32 = SIGUSR1;

impl<S> Ctx<S> {
    pub(super) fn on_signal<H: Handler<Conn = S>>(&mut self, handler: &mut H, signal: i32) {
        trace!(self.tracer, "signals: {}", name(signal));
        if signal == TABLE_SIGNAL {
            self.print_table(handler);
        } else {
            handler.handle(self, Event::Signal(signal));
        }
    }
}
