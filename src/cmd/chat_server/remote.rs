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

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::args::OnBacklog;
use super::broker::{timer_parts, LinkState, KIND_WHO, SID_ROOM, SID_WHO, SID_WHO_REPLY};
use super::door_framed::frames_as_lines;
use super::identity::SERVER_NAME;
use super::member::{Member, Wire};
use super::outbox::{HUB_HEADER, PREFIX_HEADER, RUN_HEADER, SEQ_HEADER};
use super::{web, Hub};
use crate::chat_msg;
use crate::conn::CloseReason;
use crate::framing::{self, FrameConfig, PrefixLen};
use crate::nats::{self, Msg, ServerOp};
use crate::reactor::{ConnId, Ctx, Event, Queued};
use crate::safe_text::visible_line;

/// Most other hubs whose numbering is followed; the one heard least
/// recently is forgotten first.
const MAX_REMOTE_HUBS: usize = 1024;

/// What a receiving hub keeps about one other hub.
#[derive(Debug)]
struct RemoteHub {
    /// The run of that hub its numbers belong to.
    run: u64,
    /// The number its next message should carry.
    next: u64,
    /// When it was last heard.
    last: Instant,
}

/// What other hubs sent: their numbering, and what went missing.
///
/// NATS keeps one publisher connection's order; across a reconnect, what
/// a hub sent on its old connection may still be delivered after what it
/// sends on the new one. So a payload numbered below what its hub's next
/// should be is late: it is dropped (counted), and order holds. A number
/// above it means messages that never came (counted as lost).
#[derive(Debug, Default)]
pub(super) struct RemoteHubs {
    hubs: HashMap<Box<str>, RemoteHub>,
    /// Chat messages received (and delivered) from other hubs.
    pub received: u64,
    /// Chat messages other hubs numbered that were not delivered here.
    pub lost: u64,
    /// Of `lost`, those that came, too late to keep their sender's order.
    pub late: u64,
    /// Times messages went missing (logged at powers of two).
    gap_events: u64,
    /// Payloads from other hubs that could not be decoded, and frames that
    /// could not be delivered here (over `--max-frame`).
    pub undecodable: u64,
}

impl RemoteHubs {
    /// Hubs heard.
    pub(super) fn len(&self) -> usize {
        self.hubs.len()
    }

    /// `n` messages numbered from `seq` by run `run` of hub `hub`: true when
    /// they are to be delivered (they are not late).
    fn heard(&mut self, hub: &str, run: u64, seq: u64, n: u64) -> bool {
        let now = Instant::now();
        if let Some(known) = self.hubs.get_mut(hub).filter(|k| k.run == run) {
            known.last = now;
            if seq < known.next {
                self.late += n;
                return false;
            }
            if seq > known.next {
                let lost = seq - known.next;
                self.lost += lost;
                self.gap_events += 1;
                if self.gap_events.is_power_of_two() {
                    log::warn!(
                        "broker: {lost} message(s) from hub {} did not arrive (a broker outage, \
                         or a full backlog there); {} lost in all",
                        visible_line(hub),
                        self.lost
                    );
                }
            }
            known.next = seq + n;
            self.received += n;
            return true;
        }
        if !self.hubs.contains_key(hub) && self.hubs.len() >= MAX_REMOTE_HUBS {
            let oldest = self
                .hubs
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.hubs.remove(&oldest);
            }
        }
        let known = self.hubs.insert(
            hub.into(),
            RemoteHub {
                run,
                next: seq + n,
                last: now,
            },
        );
        match known {
            Some(_) => log::info!("broker: hub {} restarted", visible_line(hub)),
            None => log::info!("broker: hearing hub {}", visible_line(hub)),
        }
        self.received += n;
        true
    }
}

/// The frames of a chat payload from another hub (`width`-byte prefixes),
/// each as text; `Err` at the first that is cut short or not UTF-8.
fn frames(payload: &[u8], width: usize) -> impl Iterator<Item = Result<&str, ()>> {
    let mut rest = payload;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < width {
            rest = &[];
            return Some(Err(()));
        }
        let len = rest[..width]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len == 0 || rest.len() - width < len {
            rest = &[];
            return Some(Err(()));
        }
        let text = std::str::from_utf8(&rest[width..width + len]).map_err(|_| ());
        rest = if text.is_ok() {
            &rest[width + len..]
        } else {
            &[]
        };
        Some(text)
    })
}

/// A chat payload's details from its headers: (hub, run, first number,
/// prefix width); `None` when one is missing or wrong.
fn chat_headers(headers: &[u8]) -> Option<(&str, u64, u64, PrefixLen)> {
    let hub = nats::header(headers, HUB_HEADER)?;
    let run = u64::from_str_radix(nats::header(headers, RUN_HEADER)?, 16).ok()?;
    let seq = nats::header(headers, SEQ_HEADER)?.parse().ok()?;
    let prefix = match nats::header(headers, PREFIX_HEADER)? {
        "2" => PrefixLen::Two,
        "4" => PrefixLen::Four,
        _ => return None,
    };
    Some((hub, run, seq, prefix))
}

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
        self.flush_stdout(cx);
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
        let Some((hub, run, seq, prefix)) = chat_headers(msg.headers) else {
            link.remote.undecodable += 1;
            return;
        };
        if *hub == *link.hub_id {
            return; // Our own, had the broker echoed it.
        }
        let width = prefix.bytes();
        let local = self.frames;
        let mut n = 0u64;
        let mut as_they_came = prefix == local.prefix;
        for text in frames(msg.payload, width) {
            n += 1;
            match text {
                Ok(text) if text.len() <= local.max_frame => {}
                _ => as_they_came = false,
            }
        }
        if !link.remote.heard(hub, run, seq, n) {
            return;
        }
        // Anything a local sender said before goes first.
        self.flush_batch(cx);
        let framed: Rc<[u8]> = if as_they_came {
            Rc::from(msg.payload)
        } else {
            let mut again = Vec::with_capacity(msg.payload.len());
            for text in frames(msg.payload, width) {
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
            for text in frames(framed, width).flatten() {
                if let Ok(frame) = framing::encode(text.as_bytes(), local) {
                    self.queue_for_all(cx, &frame, width);
                }
            }
        } else {
            self.queue_for_all(cx, framed, width);
        }
        for text in frames(framed, width).flatten() {
            if let Some(udp) = self.udp.as_mut() {
                // A udp-chat peer forgets whoever sends it the leave text,
                // and every datagram comes from this hub: someone leaving
                // another hub must not make this hub's peers forget it.
                if !chat_msg::is_leave(text) {
                    udp.send_all(cx, None, text.as_bytes(), &mut None);
                }
            }
            self.print(text);
        }
    }

    /// Queues whole frames for every listening member: framed members share
    /// `framed`, line members one run of lines made from it, web members one
    /// run of WebSocket text frames (as `flush_batch` does for a local sender).
    fn queue_for_all(&mut self, cx: &mut Ctx<Member>, framed: &Rc<[u8]>, width: usize) {
        let mut lines: Option<Rc<[u8]>> = None;
        let mut webs: Option<Rc<[u8]>> = None;
        cx.conn_ids(&mut self.ids);
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            let wire = match cx.state(id) {
                Some(member) if member.listening() => member.wire(),
                _ => continue,
            };
            let frame = match wire {
                Wire::Line => lines.get_or_insert_with(|| frames_as_lines(framed, width)),
                Wire::Web => webs.get_or_insert_with(|| web::frames_as_web(framed, width)),
                Wire::Framed => framed,
            };
            if let Queued::OverLimit { queued } = cx.queue(id, frame) {
                let frame = Rc::clone(frame);
                self.over_limit(cx, id, &frame, queued);
            }
        }
    }

    /// The hub is stopping: the other hubs are told that its members leave
    /// (its own members see their connections close), then the link closes.
    pub(super) fn leave_other_hubs(&mut self, cx: &mut Ctx<Member>) {
        let Some(mut link) = self.broker.take() else {
            return;
        };
        let mut names: Vec<String> = Vec::new();
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            if let Some(name) = cx
                .state(id)
                .filter(|m| !m.link)
                .and_then(|m| m.name.as_deref())
            {
                names.push(name.to_string());
            }
        }
        if let Some(udp) = &self.udp {
            names.extend(udp.names().map(str::to_string));
        }
        for name in names {
            let text = format!("{name} left the chat (its server stopped)");
            let message = chat_msg::format_now(SERVER_NAME, &text);
            link.publish_text(cx, &message, self.frames.prefix);
        }
        link.stop(cx);
        self.broker = Some(link);
    }

    /// True when the broker link is flowing.
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
        link.remote.undecodable += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_a_payload_are_read_back() {
        let mut payload = Vec::new();
        for text in ["one", "two"] {
            framing::encode_into(&mut payload, text.as_bytes(), FrameConfig::default()).unwrap();
        }
        let texts: Vec<_> = frames(&payload, 2).collect();
        assert_eq!(texts, vec![Ok("one"), Ok("two")]);
        payload.push(0);
        assert_eq!(frames(&payload, 2).last(), Some(Err(())));
        assert_eq!(frames(&[0, 5, b'a'], 2).collect::<Vec<_>>(), vec![Err(())]);
    }

    #[test]
    fn gaps_are_lost_late_ones_dropped_and_a_new_run_starts_over() {
        let mut hubs = RemoteHubs::default();
        assert!(hubs.heard("a", 1, 0, 3));
        assert!(hubs.heard("a", 1, 3, 1));
        assert!(hubs.heard("a", 1, 10, 2), "a gap: 4..10 lost");
        assert_eq!(hubs.lost, 6);
        assert!(!hubs.heard("a", 1, 5, 2), "late: dropped to keep the order");
        assert_eq!(hubs.late, 2);
        assert!(hubs.heard("a", 2, 0, 1), "a new run of that hub");
        assert!(hubs.heard("b", 7, 100, 1), "first heard: nothing lost");
        assert_eq!((hubs.lost, hubs.received, hubs.len()), (6, 8, 2));
    }
}
