//! Slow joiners: how long a client may take to say who it is, or to finish
//! what it began to say.
//!
//! * **A name** (`--name-timeout`): a line client must give its name within
//!   that time of connecting (a TLS one: of its handshake's end); until then
//!   it hears nothing and only holds a descriptor. A framed client that says
//!   nothing is a reader, in the room and announced by its address, and is
//!   bounded by `--idle-timeout` and `--max-conns-per-ip` instead; a UDP
//!   datagram is whole by nature.
//! * **A message once begun** (`--frame-timeout`): a frame or line whose first
//!   byte has arrived must be whole within that time, at either door. Counting
//!   bytes (as `--idle-timeout` once did) let one byte a second hold a
//!   descriptor for ever; this does not.
//!
//! A client that misses a deadline is told why and closed; the room hears it
//! once. The check is a sweep once a second, armed only while some client has
//! a deadline running, so an idle room never wakes the loop. A client whose
//! reads the server holds (`--rate-limit`) is not the one keeping a frame
//! unfinished: its deadline waits until its reads resume.
//!
//! What it must not do: close a client for the server's own slowness, or
//! wake an idle room.

use std::time::{Duration, Instant};

use super::member::{Late, Member};
use super::{Hub, TIMER_DEADLINES};
use crate::reactor::Ctx;

/// How often the deadlines are checked while any is running.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Hub {
    /// A deadline is running: make sure the sweep is.
    pub(super) fn arm_deadlines(&mut self, cx: &mut Ctx<Member>) {
        if !self.deadlines_armed {
            self.deadlines_armed = true;
            cx.set_timer_in(SWEEP_EVERY, TIMER_DEADLINES);
        }
    }

    /// Closes the clients that missed a deadline; runs again while any is running.
    pub(super) fn sweep_deadlines(&mut self, cx: &mut Ctx<Member>) {
        self.deadlines_armed = false;
        if self.stopping {
            return;
        }
        let now = Instant::now();
        let mut running = false;
        let mut late = Vec::new();
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            let Some(c) = cx.conn(id) else {
                continue;
            };
            let member = &c.state_of_app;
            if !member.joined || member.leaving {
                continue;
            }
            if member.line && member.name.is_none() {
                if now.saturating_duration_since(c.since()) >= self.name_timeout {
                    late.push((id, Late::Name));
                    continue;
                }
                running = true;
            }
            if let Some(since) = member.partial_since {
                if !member.held.is_empty() {
                    running = true; // The server holds its reads: not its fault.
                } else if now.saturating_duration_since(since) >= self.frame_timeout {
                    late.push((id, Late::Frame));
                } else {
                    running = true;
                }
            }
        }
        for (id, why) in late {
            let text = match why {
                Late::Name => format!(
                    "no name within {} s: closing (--name-timeout)",
                    self.name_timeout.as_secs()
                ),
                Late::Frame => format!(
                    "a message begun and not finished within {} s: closing (--frame-timeout)",
                    self.frame_timeout.as_secs()
                ),
            };
            self.tell(cx, id, &text);
            if let Some(member) = cx.state_mut(id) {
                member.late = Some(why);
            }
            cx.close_after_flush(id);
        }
        if running {
            self.arm_deadlines(cx);
        }
    }
}
