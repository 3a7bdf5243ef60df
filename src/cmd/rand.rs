//! `sockloop rand`: endless random 32-bit signed integers, one a line — an
//! input that never ends, for `sockloop rand | sockloop echo client ...`.
//!
//! Exits quietly (status 0) when the reader closes the pipe.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// A small xorshift generator: plenty for test input (and the chat server's
/// reconnect jitter and hub ids), and no dependency. Not for secrets.
#[derive(Debug)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// Seeded from the clock and the process id.
    pub(crate) fn seeded() -> XorShift {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        XorShift((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// The next number.
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Writes random integers until stdout is closed.
pub fn run() -> Result<()> {
    let mut rng = XorShift::seeded();
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    loop {
        let value = (rng.next() >> 32) as u32 as i32;
        if let Err(e) = writeln!(out, "{value}") {
            return quiet_on_closed_pipe(e);
        }
    }
}

fn quiet_on_closed_pipe(e: io::Error) -> Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(Error::io("writing to stdout", e))
    }
}
