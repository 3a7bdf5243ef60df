//! Held messages: what a TCP client sent beyond its `--rate-limit`.
//!
//! A client over its rate is slowed, never disconnected and never
//! reordered: its reads are held while any of its messages are, the held
//! ones go to the room in the order they were sent, as fast as its rate
//! allows, and a leave it asked for waits behind them. Since reads stop as
//! soon as something is held, a client never has more than one read's worth
//! held; the buffer is empty and unallocated otherwise.
//!
//! What it must not do: relay a held message early, or drop one.

use std::time::Duration;

use super::member::Member;
use super::{Hub, TIMER_RELEASE};
use crate::reactor::{ConnId, Ctx};

impl Hub {
    /// `conn` is over its `--rate-limit` with messages held: read nothing
    /// more from it, and come back when its next message is due.
    pub(super) fn start_holding(&mut self, cx: &mut Ctx<Member>, conn: ConnId, wait: Duration) {
        cx.hold_reads(conn);
        cx.set_timer_in(wait, TIMER_RELEASE | conn.0 as u64);
        if log::log_enabled!(log::Level::Debug) {
            log::debug!("{conn}: over its --rate-limit; messages held for {wait:?}");
        }
    }

    /// Relays the messages `conn` had held back, as many as its rate allows
    /// now; reads resume once none are left.
    pub(super) fn release_held(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        if member.held.is_empty() {
            return; // A stale deadline: the key may even belong to a newer client.
        }
        let mut held = std::mem::take(&mut member.held);
        let line = member.line;
        let prefix = self.frames.prefix.bytes();
        let mut done = 0;
        let mut wait = None;
        while done < held.len() {
            let rest = &held[done..];
            // Whole items only: each was checked when it arrived.
            let end = if line {
                rest.iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1)
            } else {
                let len = rest[..prefix]
                    .iter()
                    .fold(0usize, |n, &b| (n << 8) | usize::from(b));
                (prefix + len).min(rest.len())
            };
            if let Err(until) = cx.take_message(conn) {
                wait = Some(until);
                break;
            }
            let item = &rest[..end];
            if line {
                self.on_line(cx, conn, &item[..item.len() - 1]);
            } else if let Ok(text) = std::str::from_utf8(&item[prefix..]) {
                self.relay(cx, conn, text, item);
            }
            done += end;
        }
        self.flush_batch(cx);
        self.flush_stdout(cx);
        held.drain(..done);
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        if held.is_empty() {
            let leave = std::mem::take(&mut member.leave_after_held);
            if member.partial_since.is_some() {
                // Its half-sent frame waited on us: its deadline starts again.
                member.partial_since = Some(std::time::Instant::now());
            }
            cx.release_reads(conn);
            if leave {
                self.on_leaving(cx, conn);
            }
        } else {
            member.held = held;
            cx.set_timer_in(
                wait.unwrap_or(Duration::ZERO),
                TIMER_RELEASE | conn.0 as u64,
            );
        }
    }
}
