//! The room across hubs: what the hub does with its broker link's events,
//! and with the messages other hubs publish.
//!
//! A message that enters this hub by any door reaches the room through
//! `fan_out` or `flush_batch`, and those two publish it (`broker.rs`), once.
//! A message from another hub arrives here and is delivered to every local
//! member on every door (framed, line, UDP, and stdout) in the order the
//! broker delivered it, which is its sender's order; it goes through
//! neither of those two functions, so it is never published again, and a
//! hub never takes back its own (the broker does not echo them, and the hub
//! id in every message is checked). Loops are impossible by construction.
//!
//! A payload from another hub is the frames one read of its sender held, or
//! one message, `2`- or `4`-byte prefixed as that hub frames them: when that
//! is this hub's framing too and every frame is within `--max-frame`, the
//! bytes are shared with every framed member as they came; otherwise they are
//! framed again, once. A frame this hub cannot deliver (over `--max-frame`,
//! not UTF-8) is counted and skipped.
//!
//! What it must not do: publish a message that came from the broker, or let
//! the broker link's troubles reach the local room.

use std::rc::Rc;

use super::args::OnBacklog;
use super::broker::{self, timer_parts, LinkState, KIND_WHO, SID_ROOM, SID_WHO, SID_WHO_REPLY};
use super::door_framed::frames_as_lines;
use super::member::Member;
use super::Hub;
use crate::conn::CloseReason;
use crate::framing::{self, FrameConfig};
use crate::nats::{Msg, ServerOp};
use crate::reactor::{ConnId, Ctx, Event, Queued};

impl Hub {
    /// Takes the events of the broker link's connection; hands back every other.
    pub(super) fn link_event<'e>(
        &mut self,
        cx: &mut Ctx<Member>,
        event: Event<'e>,
    ) -> Option<Event<'e>> {
        let Some(link) = self.broker.as_mut() else {
            return Some(event);
        };
        let conn = match &event {
            Event::Connected(conn)
            | Event::Data(conn, _)
            | Event::PeerClosed(conn)
            | Event::Drained(conn)
            | Event::Closed(conn, _) => *conn,
            _ => return Some(event),
        };
        if !link.owns(conn) {
            return Some(event);
        }
        match event {
            Event::Connected(_) => link.on_connected(),
            Event::Data(_, bytes) => self.on_link_data(cx, bytes),
            Event::PeerClosed(conn) => {
                cx.close(conn, CloseReason::Local("the broker closed the link"))
            }
            Event::Drained(_) => link.pump(cx),
            Event::Closed(conn, reason) => link.on_closed(cx, conn, reason),
            _ => {}
        }
        None
    }

    /// A link timer (see `broker.rs` for the kinds).
    pub(super) fn on_link_timer(&mut self, cx: &mut Ctx<Member>, id: u64) {
        let (kind, n) = timer_parts(id);
        if kind == KIND_WHO {
            self.finish_who(cx, n);
        } else if let Some(link) = self.broker.as_mut() {
            link.on_timer(cx, kind, n);
        }
    }

    /// Bytes from the broker: whole operations, each handled in turn.
    fn on_link_data(&mut self, cx: &mut Ctx<Member>, bytes: &[u8]) {
        let Some(mut parser) = self.broker.as_mut().and_then(|link| link.parser.take()) else {
            return;
        };
        let result = parser.feed(bytes, |op| self.on_link_op(cx, op));
        self.flush_stdout();
        if let Some(link) = self.broker.as_mut() {
            parser.set_max_payload(link.inbound_max());
            if let Err(error) = result {
                link.protocol_error(cx, error);
            }
            if link.state() != LinkState::Stopped {
                link.parser = Some(parser);
            }
        }
    }

    fn on_link_op(&mut self, cx: &mut Ctx<Member>, op: ServerOp<'_>) {
        if let ServerOp::Msg(msg) = op {
            match msg.sid {
                SID_ROOM => self.on_remote_chat(cx, &msg),
                SID_WHO => self.on_who_request(cx, &msg),
                SID_WHO_REPLY => self.on_who_reply(&msg),
                _ => {}
            }
            return;
        }
        let Some(link) = self.broker.as_mut() else {
            return;
        };
        match op {
            ServerOp::Info(json) => link.on_info(cx, json),
            ServerOp::Ping => link.on_ping(cx),
            ServerOp::Pong => link.on_pong(cx),
            ServerOp::Err(text) => link.on_err(cx, text),
            ServerOp::Ok | ServerOp::Msg(_) => {}
        }
    }

    /// Messages from another hub: to every local member, on every door.
    fn on_remote_chat(&mut self, cx: &mut Ctx<Member>, msg: &Msg<'_>) {
        let Some(link) = self.broker.as_mut() else {
            return;
        };
        let Some((hub, seq, prefix)) = broker::chat_headers(msg.headers) else {
            link.stats.undecodable += 1;
            return;
        };
        if *hub == *link.hub_id {
            return; // Our own, had the broker echoed it.
        }
        let width = prefix.bytes();
        let local = self.frames;
        let mut n = 0u64;
        let mut as_they_came = prefix == local.prefix;
        for text in broker::frames(msg.payload, width) {
            n += 1;
            match text {
                Ok(text) if text.len() <= local.max_frame => {}
                _ => as_they_came = false,
            }
        }
        link.heard(hub, seq, n);
        // Anything a local sender said before goes first.
        self.flush_batch(cx);
        let framed: Rc<[u8]> = if as_they_came {
            Rc::from(msg.payload)
        } else {
            let mut again = Vec::with_capacity(msg.payload.len());
            for text in broker::frames(msg.payload, width) {
                let fits = text
                    .ok()
                    .filter(|t| framing::encode_into(&mut again, t.as_bytes(), local).is_ok());
                if fits.is_none() {
                    link_undecodable(self);
                }
            }
            Rc::from(again)
        };
        if framed.is_empty() {
            return;
        }
        self.deliver_frames(cx, &framed, local);
    }

    /// Queues `framed` (whole frames in this hub's framing) for every local
    /// member and UDP peer, and prints each message.
    fn deliver_frames(&mut self, cx: &mut Ctx<Member>, framed: &Rc<[u8]>, local: FrameConfig) {
        let width = local.prefix.bytes();
        if self.on_backlog == OnBacklog::DropOldest {
            // Dropping counts whole queued segments as missed messages: one per segment.
            for text in broker::frames(framed, width).flatten() {
                if let Ok(frame) = framing::encode(text.as_bytes(), local) {
                    self.queue_for_all(cx, &frame, width);
                }
            }
        } else {
            self.queue_for_all(cx, framed, width);
        }
        for text in broker::frames(framed, width).flatten() {
            if let Some(udp) = self.udp.as_mut() {
                udp.send_all(cx, None, text.as_bytes(), &mut None);
            }
            self.print(text);
        }
    }

    /// Queues whole frames for every listening member: framed members share
    /// `framed`, line members share one run of lines made from it.
    fn queue_for_all(&mut self, cx: &mut Ctx<Member>, framed: &Rc<[u8]>, width: usize) {
        let mut lines: Option<Rc<[u8]>> = None;
        cx.conn_ids(&mut self.ids);
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            let line = match cx.state(id) {
                Some(member) if member.listening() => member.line,
                _ => continue,
            };
            let frame = if line {
                lines.get_or_insert_with(|| frames_as_lines(framed, width))
            } else {
                framed
            };
            if let Queued::OverLimit { queued } = cx.queue(id, frame) {
                let frame = Rc::clone(frame);
                self.over_limit(cx, id, &frame, queued);
            }
        }
    }

    /// True when a message from `conn` should also go to the other hubs'
    /// `/who` (the link is flowing), for the `/who` answer's footnote.
    pub(super) fn link_flowing(&self) -> bool {
        self.broker
            .as_ref()
            .is_some_and(|link| link.state() == LinkState::Flowing)
    }

    /// The member `conn`, if it is still the one at `peer`.
    pub(super) fn same_member(cx: &Ctx<Member>, conn: ConnId, peer: std::net::SocketAddr) -> bool {
        cx.conn(conn).is_some_and(|c| c.peer() == peer)
    }
}

/// Counts a message from another hub that this hub could not deliver.
fn link_undecodable(hub: &mut Hub) {
    if let Some(link) = hub.broker.as_mut() {
        link.stats.undecodable += 1;
    }
}
