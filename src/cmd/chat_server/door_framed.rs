//! The framed door (`--port`): a message from a length-prefixed client goes
//! to the room as the bytes it came in, when `identity::admit` lets it.
//!
//! A client's first frame fixes its name (its header's, or a guest name if
//! it has none); every frame after it is admitted under that name. One that
//! passes as it is is never re-encoded for framed recipients: the
//! frames one sender's read holds are gathered in the hub's `batch` and
//! queued for each recipient as one shared buffer, and line recipients get
//! one shared run of lines made from it. The batch lives no longer than one
//! read (or one release of held messages) and is sent before anything else
//! goes to the room (a join announcement, another sender's frames), so every
//! recipient hears the room in the order it was said. With drop-oldest it
//! holds one frame at a time, so a dropped segment is one missed message.
//!
//! One that does not (another name, no header, a control character) is
//! re-stamped and goes to the room as a message of its own, after the batch.
//! The leave text is not relayed (the member's leave notice says it once);
//! `/who` and `/help` are answered to the sender alone.
//!
//! What it must not do: copy or parse a frame per recipient, or relay a
//! frame under any name but its sender's.

use std::rc::Rc;

use std::time::Instant;

use super::args::OnBacklog;
use super::commands::Command;
use super::fanout::Outgoing;
use super::identity::{self, guest_name};
use super::member::{Member, Origin, Wire};
use super::web;
use super::Hub;
use crate::chat_msg::LEAVE_TEXT;
use crate::reactor::{ConnId, Ctx, Queued};

/// Whole frames, as they came, turned into text lines (one per frame).
pub(super) fn frames_as_lines(frames: &[u8], prefix: usize) -> Rc<[u8]> {
    let mut lines = Vec::with_capacity(frames.len());
    let mut rest = frames;
    while rest.len() >= prefix {
        let len = rest[..prefix]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        let end = (prefix + len).min(rest.len());
        lines.extend_from_slice(&rest[prefix..end]);
        lines.push(b'\n');
        rest = &rest[end..];
    }
    Rc::from(lines)
}

impl Hub {
    /// One whole message from framed client `from`: its first fixes its
    /// name; each is admitted under that name, then passed to everyone else
    /// (as it came, when it may) and printed.
    pub(super) fn relay(&mut self, cx: &mut Ctx<Member>, from: ConnId, text: &str, wire: &[u8]) {
        let Some(member) = cx.state_mut(from) else {
            return;
        };
        if member.leaving {
            return;
        }
        if self.idle.is_some() {
            member.last_heard = Instant::now();
        }
        if member.name.is_none() {
            let wanted = match identity::claimed_name(text) {
                Some(name) => name.to_string(),
                None => guest_name(cx.conn(from).map_or(([0, 0, 0, 0], 0).into(), |c| c.peer())),
            };
            if !self.name_member(cx, from, &wanted) {
                return;
            }
        }
        let Some(name) = cx.state(from).and_then(|m| m.name.as_deref()) else {
            return;
        };
        let claimed_other = identity::claimed_name(text) != Some(name);
        let admitted = identity::admit(text, name);
        let said = admitted.text();
        if said == LEAVE_TEXT {
            // The room hears it once, from the server, when the connection closes.
            self.on_leaving(cx, from);
            return;
        }
        if said.trim().is_empty() {
            return; // Its name, and nothing to say: an introduction.
        }
        if let Some(command) = Command::parse(said) {
            self.flush_batch(cx);
            self.answer(cx, Origin::Member(from), command);
            return;
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("{from}: frame of {} B to relay", wire.len());
        }
        if !admitted.as_is() {
            if claimed_other {
                self.tell_restamp_once(cx, from);
            }
            let message = admitted.message();
            if message.len() > self.frames.max_frame {
                let notice = format!(
                    "not sent: your message is {} bytes once stamped with your name, over the \
                     {}-byte maximum",
                    message.len(),
                    self.frames.max_frame
                );
                self.tell(cx, from, &notice);
                return;
            }
            self.fan_out(cx, Origin::Member(from), &mut Outgoing::new(message));
            self.print(message);
            return;
        }
        if self.batch_from != Some(from) {
            self.flush_batch(cx);
            self.batch_from = Some(from);
        }
        self.batch.extend_from_slice(wire);
        if let Some(udp) = self.udp.as_mut() {
            udp.send_all(cx, None, text.as_bytes(), &mut None);
        }
        self.print(text);
        if self.on_backlog == OnBacklog::DropOldest {
            // Dropping counts whole queued segments as missed messages: keep one per segment.
            self.flush_batch(cx);
        }
    }

    /// Tells a member, once, that what it signs with another name (or none)
    /// reaches the room under its own.
    fn tell_restamp_once(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        if member.told_restamp {
            return;
        }
        member.told_restamp = true;
        let name = member.name.clone().unwrap_or_default();
        self.tell(
            cx,
            conn,
            &format!(
                "this connection speaks as {name}: messages signed with another name, or \
                 with none, reach the room as {name}'s"
            ),
        );
    }

    /// Sends the batched frames of one client to the rest of the room as one
    /// shared buffer (and, for line clients, one shared run of lines).
    ///
    /// A read from a busy sender holds many frames, and they lie side by side
    /// in the read buffer: sharing them as one segment costs each recipient
    /// one queue entry per read rather than one per frame. At 10 senders x
    /// 5,000 frames/s to 100 clients this cut the relay's time in the output
    /// queues several-fold (see ARCHITECTURE.md, performance notes).
    pub(super) fn flush_batch(&mut self, cx: &mut Ctx<Member>) {
        let Some(from) = self.batch_from.take() else {
            return;
        };
        if self.batch.is_empty() {
            return;
        }
        let framed: Rc<[u8]> = Rc::from(&self.batch[..]);
        let mut lines: Option<Rc<[u8]>> = None;
        let mut webs: Option<Rc<[u8]>> = None;
        cx.conn_ids(&mut self.ids);
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            if id == from {
                continue;
            }
            let wire = match cx.state(id) {
                Some(member) if member.listening() => member.wire(),
                _ => continue,
            };
            let prefix = self.frames.prefix.bytes();
            let frame = match wire {
                Wire::Line => lines.get_or_insert_with(|| frames_as_lines(&self.batch, prefix)),
                Wire::Web => webs.get_or_insert_with(|| web::frames_as_web(&self.batch, prefix)),
                Wire::Framed => &framed,
            };
            if let Queued::OverLimit { queued } = cx.queue(id, frame) {
                let frame = Rc::clone(frame);
                self.over_limit(cx, id, &frame, queued);
            }
        }
        if let Some(link) = self.broker.as_mut() {
            link.publish_frames(cx, &self.batch, self.frames.prefix);
        }
        self.batch.clear();
    }
}
