//! The framed door (`--port`): a message from a length-prefixed client goes
//! to the room as the bytes it came in.
//!
//! A framed client's frames are never re-encoded for framed recipients: the
//! frames one sender's read holds are gathered in the hub's `batch` and
//! queued for each recipient as one shared buffer, and line recipients get
//! one shared run of lines made from it. The batch lives no longer than one
//! read (or one release of held messages) and is sent before anything else
//! goes to the room (a join announcement, another sender's frames), so every
//! recipient hears the room in the order it was said. With drop-oldest it
//! holds one frame at a time, so a dropped segment is one missed message.
//!
//! What it must not do: copy or parse a frame per recipient.

use std::rc::Rc;

use super::args::OnBacklog;
use super::member::{Member, Origin, Wire};
use super::web;
use super::who::WHO_COMMAND;
use super::Hub;
use crate::chat_msg;
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
    /// One whole message from framed client `from`: learn its sender's
    /// name, pass the frame to everyone else as it came, and print it.
    pub(super) fn relay(&mut self, cx: &mut Ctx<Member>, from: ConnId, text: &str, wire: &[u8]) {
        if let Some(parsed) = chat_msg::parse(text) {
            if let Some(member) = cx.state_mut(from) {
                if member.name.as_deref() != Some(parsed.sender) {
                    let first = member.name.is_none();
                    member.name = Some(Box::from(parsed.sender));
                    if first {
                        // The announcement goes before this message, after the earlier ones.
                        self.flush_batch(cx);
                        self.on_joined(cx, Origin::Member(from), parsed.sender);
                    }
                }
            }
            if parsed.text.trim() == WHO_COMMAND {
                self.flush_batch(cx);
                self.on_who(cx, from);
                return;
            }
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("{from}: frame of {} B to relay", wire.len());
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
