//! Fan-out: one message to everyone in the room but its origin, each in the
//! wire format of its door, and the messages the server speaks itself,
//! always under its own reserved name (`identity::SERVER_NAME`), whatever
//! its user is called.
//!
//! An `Outgoing` makes each wire format (frame, line, datagram, WebSocket
//! text frame) at most once per message, when the first recipient of that
//! kind needs it, and every recipient of that kind shares it through an `Rc`. A recipient whose queue
//! is full is handed to the backlog policy (`backlog.rs`), which never waits
//! for it. A message the server makes that is over `--max-frame` is logged
//! and sent to no one.
//!
//! A message goes out after every frame batched before it (`flush_batch`),
//! so everyone hears the room in the order it was said.
//!
//! What it must not do: copy, format or allocate per recipient.

use std::rc::Rc;

use super::identity::SERVER_NAME;
use super::member::{Member, Origin, Wire};
use super::web;
use super::Hub;
use crate::chat_msg;
use crate::framing::{self, FrameConfig};
use crate::reactor::{Ctx, Queued};

/// One chat message on its way to the room: its text, and each wire format
/// made at most once, when the first recipient of that kind needs it, then
/// shared by every recipient of that kind.
pub(super) struct Outgoing<'a> {
    /// The message text, `[TIMESTAMP] NAME:\n\tTEXT` (or whatever a client sent).
    text: &'a str,
    /// Prefix and text, for framed clients.
    framed: Option<Rc<[u8]>>,
    /// Text and a newline, for line clients.
    line: Option<Rc<[u8]>>,
    /// The text alone, for UDP peers; made only if the socket is full.
    datagram: Option<Rc<[u8]>>,
    /// A WebSocket text frame, for web members.
    web: Option<Rc<[u8]>>,
}

impl<'a> Outgoing<'a> {
    /// A message the server made (it has been checked against `--max-frame`).
    pub(super) fn new(text: &'a str) -> Outgoing<'a> {
        Outgoing {
            text,
            framed: None,
            line: None,
            datagram: None,
            web: None,
        }
    }

    /// The frame for framed recipients; `None` when the text is over `--max-frame`.
    fn framed(&mut self, frames: FrameConfig) -> Option<&Rc<[u8]>> {
        if self.framed.is_none() {
            self.framed = framing::encode(self.text.as_bytes(), frames).ok();
        }
        self.framed.as_ref()
    }

    /// The line for line recipients.
    fn line(&mut self) -> &Rc<[u8]> {
        let text = self.text;
        self.line.get_or_insert_with(|| line_bytes(text))
    }

    /// The text frame for web recipients.
    fn web(&mut self) -> &Rc<[u8]> {
        let text = self.text;
        self.web.get_or_insert_with(|| web::text_frame(text))
    }
}

/// `text` and a newline, shared.
fn line_bytes(text: &str) -> Rc<[u8]> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    Rc::from(bytes)
}

impl Hub {
    /// Queues one message for every client and UDP peer but its origin,
    /// each in its own wire format, each format encoded once. Nothing is
    /// copied or formatted per recipient; a recipient whose backlog is full
    /// is dealt with by the `--on-backlog` policy.
    pub(super) fn fan_out(&mut self, cx: &mut Ctx<Member>, origin: Origin, out: &mut Outgoing<'_>) {
        self.flush_batch(cx);
        if let Some(link) = self.broker.as_mut() {
            // To the other hubs of the room, once (see remote.rs).
            link.publish_text(cx, out.text, self.frames.prefix);
        }
        cx.conn_ids(&mut self.ids);
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            if origin == Origin::Member(id) {
                continue;
            }
            let wire = match cx.state(id) {
                Some(member) if member.listening() => member.wire(),
                _ => continue,
            };
            let frame = match wire {
                Wire::Line => out.line(),
                Wire::Web => out.web(),
                Wire::Framed => match out.framed(self.frames) {
                    Some(frame) => frame,
                    None => continue,
                },
            };
            if let Queued::OverLimit { queued } = cx.queue(id, frame) {
                self.over_limit(cx, id, frame, queued);
            }
        }
        if let Some(udp) = self.udp.as_mut() {
            let except = match origin {
                Origin::Udp(addr) => Some(addr),
                _ => None,
            };
            udp.send_all(cx, except, out.text.as_bytes(), &mut out.datagram);
        }
    }

    /// Says `text` to everyone but `except`, as the server.
    pub(super) fn announce(&mut self, cx: &mut Ctx<Member>, except: Origin, text: &str) {
        if self.stopping {
            return;
        }
        let message = chat_msg::format_now(SERVER_NAME, &chat_msg::clean_text(text));
        if message.len() > self.frames.max_frame {
            log::warn!("not sent: {} bytes is over --max-frame", message.len());
            return;
        }
        self.fan_out(cx, except, &mut Outgoing::new(&message));
    }

    /// A chat message from the server's name in the wire format `wire`;
    /// `None` (logged) when it is longer than `--max-frame`.
    pub(super) fn encode_as(&self, wire: Wire, text: &str) -> Option<Rc<[u8]>> {
        let message = chat_msg::format_now(SERVER_NAME, &chat_msg::clean_text(text));
        match wire {
            Wire::Line => return Some(line_bytes(&message)),
            Wire::Web if message.len() <= self.frames.max_frame => {
                return Some(web::text_frame(&message))
            }
            _ => {}
        }
        match framing::encode(message.as_bytes(), self.frames) {
            Ok(frame) => Some(frame),
            Err(error) => {
                log::warn!("not sent: {error} (--max-frame)");
                None
            }
        }
    }
}
