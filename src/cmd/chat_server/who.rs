//! `/who`: who is in the room, on this hub and, through the broker, on
//! every other hub of the room.
//!
//! A member that sends the text `/who` (a framed client's message, a line
//! client's line) is answered privately, by the server's name, with the
//! members and their doors; the request itself goes to no one. With a broker
//! link that is flowing, the hub also publishes the request on the room's
//! `who` subject and waits [`WHO_DEADLINE`] for the other hubs' answers
//! (request/reply: each answers to this hub's inbox), then answers with
//! them all; a hub that does not answer in time is simply not in the
//! answer. Without a flowing link the answer is this hub's members at once,
//! and it says the other hubs were not asked.
//!
//! Bounds: at most [`MAX_WHO_PENDING`] requests wait at once (more are
//! answered with this hub alone); an answer holds at most
//! [`MAX_WHO_ENTRIES`] names and is cut to `--max-frame`, saying how many
//! were left out; a hub's own answer is cut to the broker's `max_payload`.
//!
//! What it must not do: relay `/who` to the room, or hold the asker's
//! other messages back while it waits.

use std::fmt::Write as _;
use std::time::Duration;

use super::broker::{timer_id, WhoRequest, KIND_WHO};
use super::identity::SERVER_NAME;
use super::member::{door_name, Member};
use super::outbox::{Dest, HUB_HEADER};
use super::Hub;
use crate::nats::{self, Msg};
use crate::reactor::{ConnId, Ctx};

/// How long a `/who` waits for the other hubs' answers.
pub(super) const WHO_DEADLINE: Duration = Duration::from_millis(500);

/// Most `/who` requests waiting for other hubs at once.
const MAX_WHO_PENDING: usize = 64;

/// Most names in one answer.
const MAX_WHO_ENTRIES: usize = 10_000;

/// Room kept in a `/who` answer for the stamp (timestamp, sender) around it.
const STAMP_ROOM: usize = 96;

impl Hub {
    /// Appends `name (door)` for every member of this hub, `, `-separated,
    /// to `out`; at most `max` of them. Returns (listed, left out). A member
    /// whose name is not known yet is listed by its address, and a UDP peer
    /// that has not proven its address says so: everyone who can read the
    /// room is in the list.
    pub(super) fn local_members(
        &self,
        cx: &mut Ctx<Member>,
        out: &mut String,
        max: usize,
    ) -> (usize, usize) {
        let mut listed = 0;
        let mut more = 0;
        let mut add = |entry: &str, out: &mut String| {
            if listed >= max {
                more += 1;
                return;
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(entry);
            listed += 1;
        };
        if self.input.is_some() {
            let host = self.host.as_deref().unwrap_or(SERVER_NAME);
            add(&format!("{host} (console)"), out);
        }
        let mut ids = Vec::new();
        cx.conn_ids(&mut ids);
        for id in ids {
            let Some(c) = cx.conn(id) else {
                continue;
            };
            let member = &c.state_of_app;
            if !member.joined || member.leaving || member.link {
                continue;
            }
            let door = door_name(member.wire(), c.is_tls());
            match member.name.as_deref() {
                Some(name) => add(&format!("{name} ({door})"), out),
                None => add(&format!("{} ({door}, no name yet)", c.peer()), out),
            }
        }
        if let Some(udp) = &self.udp {
            let mut entries = Vec::new();
            udp.list(&mut entries);
            for entry in &entries {
                add(entry, out);
            }
        }
        (listed, more)
    }

    /// `/who` from `asker`: answer now, or once the other hubs have had
    /// [`WHO_DEADLINE`] to answer.
    pub(super) fn on_who(&mut self, cx: &mut Ctx<Member>, asker: ConnId) {
        let Some(peer) = cx.conn(asker).map(|c| c.peer()) else {
            return;
        };
        let mut here = String::new();
        let (listed, more) = self.local_members(cx, &mut here, MAX_WHO_ENTRIES);
        let mut text = format!("here: {here}");
        let asking = self.link_flowing()
            && self
                .broker
                .as_ref()
                .is_some_and(|link| link.who.len() < MAX_WHO_PENDING);
        if asking {
            if let Some(link) = self.broker.as_mut() {
                let n = link.who_next;
                link.who_next = link.who_next.wrapping_add(1);
                if link.send_who(cx, Dest::Who(n), b"") {
                    link.who.push_back(WhoRequest {
                        n,
                        asker,
                        peer,
                        text,
                        count: listed,
                        more,
                    });
                    cx.set_timer_in(WHO_DEADLINE, timer_id(KIND_WHO, n));
                    return;
                }
            }
        }
        if let Some(link) = &self.broker {
            let _ = write!(
                text,
                "; other hubs not asked (broker link {})",
                link.state().name()
            );
        }
        self.answer_who(cx, asker, listed, more, &text);
    }

    /// Another hub asks who is here: answer with this hub's members, one
    /// `name (door)` a line, within the broker's `max_payload`.
    pub(super) fn on_who_request(&mut self, cx: &mut Ctx<Member>, msg: &Msg<'_>) {
        let Some(reply) = msg.reply else {
            return;
        };
        let own = self
            .broker
            .as_ref()
            .map(|link| nats::header(msg.headers, HUB_HEADER) == Some(&*link.hub_id));
        if own != Some(false) {
            return;
        }
        let mut here = String::new();
        self.local_members(cx, &mut here, MAX_WHO_ENTRIES);
        let Some(link) = self.broker.as_mut() else {
            return;
        };
        let room = link.max_payload().saturating_sub(512);
        if here.len() > room {
            let mut cut = room;
            while !here.is_char_boundary(cut) {
                cut -= 1;
            }
            here.truncate(cut);
            here.push_str(", ...");
        }
        let reply = reply.to_string();
        link.send_who(cx, Dest::Reply(&reply), here.as_bytes());
    }

    /// Another hub's answer to one of this hub's `/who` requests.
    pub(super) fn on_who_reply(&mut self, msg: &Msg<'_>) {
        let Some(link) = self.broker.as_mut() else {
            return;
        };
        let Some(n) = msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return;
        };
        let hub = nats::header(msg.headers, HUB_HEADER).unwrap_or("?");
        let Some(request) = link.who.iter_mut().find(|r| r.n == n) else {
            return; // Too late: it was answered already.
        };
        let Ok(names) = std::str::from_utf8(msg.payload) else {
            return;
        };
        let count = if names.is_empty() {
            0
        } else {
            names.matches(", ").count() + 1
        };
        if request.count + count > MAX_WHO_ENTRIES {
            request.more += count;
            return;
        }
        request.count += count;
        let _ = write!(
            request.text,
            "; hub {}: {}",
            crate::safe_text::visible_line(hub),
            if names.is_empty() { "nobody" } else { names }
        );
    }

    /// The deadline of `/who` request `n`: answer with what came.
    pub(super) fn finish_who(&mut self, cx: &mut Ctx<Member>, n: u32) {
        let Some(link) = self.broker.as_mut() else {
            return;
        };
        let Some(at) = link.who.iter().position(|r| r.n == n) else {
            return;
        };
        let Some(request) = link.who.remove(at) else {
            return;
        };
        if Hub::same_member(cx, request.asker, request.peer) {
            self.answer_who(
                cx,
                request.asker,
                request.count,
                request.more,
                &request.text,
            );
        }
    }

    /// Sends the answer to `asker` alone, cut to fit `--max-frame`.
    fn answer_who(
        &mut self,
        cx: &mut Ctx<Member>,
        asker: ConnId,
        count: usize,
        more: usize,
        text: &str,
    ) {
        let Some(wire) = cx.state(asker).map(Member::wire) else {
            return;
        };
        let mut answer = format!("{} in the room: {text}", count + more);
        if more > 0 {
            let _ = write!(answer, " (and {more} more not listed)");
        }
        let room = self
            .frames
            .max_frame
            .saturating_sub(SERVER_NAME.len() + STAMP_ROOM);
        if answer.len() > room {
            let mut cut = room.saturating_sub(4);
            while !answer.is_char_boundary(cut) {
                cut -= 1;
            }
            answer.truncate(cut);
            answer.push_str(" ...");
        }
        if let Some(message) = self.encode_as(wire, &answer) {
            let _ = cx.queue(asker, &message);
        }
    }
}
