//! The backlog policy: what happens to a client that does not read as fast
//! as the room talks (`--max-backlog`, `--on-backlog`).
//!
//! The reactor refuses to queue more than `--max-backlog` bytes for one
//! client; this file decides what that refusal means. With `disconnect` the
//! client is closed and the room goes on. With `drop-oldest` its oldest
//! queued frames make room, every dropped frame is counted, and the client
//! is told the running total: at most one notice waits in its queue at a
//! time, and room for it is kept (`notice_reserve`), so the notice itself
//! never pushes the queue over the limit and a dropped notice loses no count.
//!
//! What it must not do: slow the room for one client, or send a client that
//! does not read a stream of notices.

use std::rc::Rc;

use chrono::NaiveDate;

use super::args::OnBacklog;
use super::member::Member;
use super::Hub;
use crate::chat_msg;
use crate::conn::CloseReason;
use crate::framing::{self, FrameConfig};
use crate::reactor::{ConnId, Ctx, Queued};
use crate::websocket;

/// What a client that missed frames is told: the running total.
fn notice_text(missed: u64) -> String {
    format!("you have missed {missed} message(s) so far: your connection did not keep up")
}

/// The largest encoded size of a missed-frames notice from `name`.
pub(super) fn notice_reserve(name: &str, frames: FrameConfig) -> usize {
    let longest_time = NaiveDate::from_ymd_opt(2000, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .expect("a valid date");
    let text = chat_msg::format_at(&longest_time, name, &notice_text(u64::MAX));
    framing::encoded_len(text.len(), frames).max(websocket::frame_len(text.len()))
}

impl Hub {
    /// `id` cannot take `frame` without exceeding its backlog.
    pub(super) fn over_limit(
        &mut self,
        cx: &mut Ctx<Member>,
        id: ConnId,
        frame: &Rc<[u8]>,
        queued: usize,
    ) {
        match self.on_backlog {
            OnBacklog::Disconnect => cx.close(
                id,
                CloseReason::Backlog {
                    queued,
                    limit: self.max_backlog,
                },
            ),
            OnBacklog::DropOldest => {
                let notice_due = cx.state(id).is_some_and(|m| !m.notice_queued);
                let room = frame.len() + if notice_due { self.notice_reserve } else { 0 };
                let dropped = cx.drop_oldest(id, room) as u64;
                if let Some(member) = cx.state_mut(id) {
                    member.missed += dropped;
                }
                if notice_due {
                    self.send_notice(cx, id);
                }
                if cx.queue(id, frame) != Queued::Yes {
                    // Only when a frame that has started to go out fills the backlog.
                    if let Some(member) = cx.state_mut(id) {
                        member.missed += 1;
                    }
                }
            }
        }
    }

    /// Tells `id` how many frames it has missed so far, if that is news,
    /// within its backlog.
    fn send_notice(&mut self, cx: &mut Ctx<Member>, id: ConnId) {
        let Some((missed, reported, wire)) = cx.state(id).map(|m| (m.missed, m.reported, m.wire()))
        else {
            return;
        };
        if missed == reported {
            return;
        }
        let Some(notice) = self.encode_as(wire, &notice_text(missed)) else {
            return;
        };
        if cx.queue(id, &notice) == Queued::Yes {
            if let Some(member) = cx.state_mut(id) {
                member.reported = missed;
                member.notice_queued = true;
            }
            if let Some(c) = cx.conn(id) {
                log::info!(
                    "{id} {}: too slow, {} more frame(s) dropped (drop-oldest), {missed} in all; told it so",
                    c.peer(),
                    missed - reported
                );
            }
        }
    }

    /// A client's queue is empty: the last notice went out (or was dropped,
    /// and counted), and what was dropped since can be reported.
    pub(super) fn on_drained(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        if !member.notice_queued && member.missed == member.reported {
            return;
        }
        member.notice_queued = false;
        self.send_notice(cx, conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_reserve_covers_any_notice() {
        let frames = FrameConfig::default();
        let now = chat_msg::format_now("Ann", &notice_text(u64::MAX));
        assert!(framing::encoded_len(now.len(), frames) <= notice_reserve("Ann", frames));
    }
}
