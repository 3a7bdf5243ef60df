//! `--trace`: one line on stderr for everything the loop does.
//!
//! Free when off: every call site is the [`trace!`](crate::trace) macro, which
//! tests one bool before it formats anything. The lines go through stderr's
//! sink (`console.rs`): when nobody reads them they are dropped, never waited for.

use std::fmt::Write;
use std::time::Instant;

/// Whether tracing is on, and the clock its lines are stamped with.
pub struct Tracer {
    on: bool,
    start: Instant,
}

impl Tracer {
    /// A tracer that prints when `on`.
    pub fn new(on: bool) -> Tracer {
        Tracer {
            on,
            start: Instant::now(),
        }
    }

    /// True when trace lines are printed.
    #[inline]
    pub fn on(&self) -> bool {
        self.on
    }

    /// Prints one trace line: `trace +12.345ms <text>`.
    pub fn line(&self, args: std::fmt::Arguments<'_>) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        let mut line = String::with_capacity(128);
        let _ = writeln!(line, "trace +{ms:.3}ms {args}");
        super::console::err(line.as_bytes());
    }
}

/// Prints a trace line when tracing is on; formats nothing when it is off.
#[macro_export]
macro_rules! trace {
    ($tracer:expr, $($arg:tt)*) => {
        if $tracer.on() {
            $tracer.line(format_args!($($arg)*));
        }
    };
}
