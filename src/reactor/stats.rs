//! What the loop shows of itself: its own figures, the SIGUSR1 connection
//! table and the `--trace` line for each event.

use std::fmt;
use std::time::{Duration, Instant};

use super::token::Source;
use super::{Ctx, Handler};

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
    /// Times a listener could not accept for a reason of its own (not one
    /// client's) and was set aside until a retry deadline.
    pub accept_errors: u64,
    /// Times the UDP socket failed to receive for a reason other than an
    /// ICMP report, and was set aside until a retry deadline.
    pub udp_errors: u64,
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
            accept_errors: self.accept_errors - earlier.accept_errors,
            udp_errors: self.udp_errors - earlier.udp_errors,
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

impl<S> Ctx<S> {
    /// SIGUSR1: the connection table on stderr.
    pub(super) fn print_table<H: Handler<Conn = S>>(&self, handler: &H) {
        let now = Instant::now();
        let errors = if self.stats.accept_errors + self.stats.udp_errors > 0 {
            format!(
                "; retried after errors: {} accept, {} udp",
                self.stats.accept_errors, self.stats.udp_errors
            )
        } else {
            String::new()
        };
        let mut text = format!(
            "connection table: {} connection(s); {} accepted, refused: {} full, {} by rule, {} per-ip{errors}; {}\n",
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
        super::console::err(text.as_bytes());
    }

    pub(super) fn trace_event(&self, source: Source, event: &mio::event::Event) {
        let role = match source {
            Source::Listener(i) => format!("listener#{i}"),
            Source::Udp => "udp".to_string(),
            Source::Stdin => "stdin".to_string(),
            Source::Signals => "signals".to_string(),
            Source::Stdout => "stdout".to_string(),
            Source::Stderr => "stderr".to_string(),
            Source::Timer => "timer".to_string(),
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
