//! What the hub has for the broker: whole `HPUB` commands, waiting for the
//! link, at most `--broker-backlog` bytes of them.
//!
//! A message for the other hubs is encoded once, here, the moment it enters
//! the room; the link (`broker.rs`) takes whole commands from the front
//! while it is flowing. A command that does not fit under the limit is
//! dropped, counted and logged (at powers of two): the room never waits for
//! the broker. Chat messages are numbered in the order they entered this
//! hub, dropped ones included, so the hubs that miss them can count them
//! (`remote.rs`); the numbers belong to this run of the hub (`Sockloop-Run`),
//! so a restarted hub is told from a late message.
//!
//! A batch is cut so that no command is over the broker's `max_payload`;
//! a single message over it cannot go, and is dropped and counted.
//!
//! What it must not do: hold more than its limit, or hand the link part of
//! a command.

use std::collections::VecDeque;

use crate::framing::{self, FrameConfig, PrefixLen};
use crate::nats::{self, HeaderBlock};

/// Bytes kept for the header block when a batch is cut to `max_payload`.
const HEADER_ROOM: usize = 256;

/// The header naming the hub a message comes from.
pub(super) const HUB_HEADER: &str = "Sockloop-Hub";
/// The header naming the run of that hub (a new one each time it starts).
pub(super) const RUN_HEADER: &str = "Sockloop-Run";
/// The header with the sequence number of a chat payload's first message.
pub(super) const SEQ_HEADER: &str = "Sockloop-Seq";
/// The header with the width of the length prefixes in a chat payload.
pub(super) const PREFIX_HEADER: &str = "Sockloop-Prefix";

/// Where a command goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Dest<'a> {
    /// The room's subject, with this first sequence number and prefix width.
    Room(u64, PrefixLen),
    /// The room's `/who` subject; answers to the inbox, token `n`.
    Who(u32),
    /// An answer to another hub's `/who`.
    Reply(&'a str),
}

/// One whole command in the queue.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Its bytes.
    len: usize,
    /// Its header block and payload, as the broker's `max_payload` counts them.
    payload: usize,
    /// Chat messages in it (0 for a `/who` request or answer).
    messages: u64,
}

/// What the outbox counted.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct OutStats {
    /// Chat messages handed to the link.
    pub published: u64,
    /// Bytes handed to the link (whole commands).
    pub published_bytes: u64,
    /// Chat messages dropped because `--broker-backlog` was full.
    pub dropped_backlog: u64,
    /// Times that happened (logged at powers of two).
    pub drop_events: u64,
    /// Chat messages dropped for being over the broker's `max_payload`.
    pub dropped_too_big: u64,
}

/// The queue of commands for the broker.
#[derive(Debug)]
pub(super) struct Outbox {
    /// Whole commands, from `head` on.
    pending: Vec<u8>,
    head: usize,
    records: VecDeque<Record>,
    /// `--broker-backlog`.
    limit: usize,
    /// This hub's id and this run's number, in every command.
    hub_id: Box<str>,
    run: u64,
    /// The number of the next chat message.
    seq: u64,
    /// `sockloop.room.ROOM`, `sockloop.room.ROOM.who`, `sockloop.hub.HUB.who`.
    pub(super) subject: Box<str>,
    pub(super) who_subject: Box<str>,
    pub(super) inbox: Box<str>,
    /// Reused for header blocks, single frames and reply subjects.
    headers: HeaderBlock,
    frame: Vec<u8>,
    reply: String,
    /// Counters.
    pub(super) stats: OutStats,
}

impl Outbox {
    /// An empty outbox for hub `hub_id` (this run: `run`) in room `room`.
    pub(super) fn new(hub_id: &str, run: u64, room: &str, limit: usize) -> Outbox {
        let subject = format!("sockloop.room.{room}");
        Outbox {
            pending: Vec::new(),
            head: 0,
            records: VecDeque::new(),
            limit,
            hub_id: hub_id.into(),
            run,
            seq: 0,
            who_subject: format!("{subject}.who").into(),
            subject: subject.into(),
            inbox: format!("sockloop.hub.{hub_id}.who").into(),
            headers: HeaderBlock::default(),
            frame: Vec::new(),
            reply: String::new(),
            stats: OutStats::default(),
        }
    }

    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.pending.len() - self.head
    }

    /// `--broker-backlog`.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Queues whole frames (`prefix` wide, as a framed client sent them) for
    /// the room, in as few commands as `max_payload` allows. Returns true
    /// when anything was queued.
    pub(super) fn publish_frames(
        &mut self,
        frames: &[u8],
        prefix: PrefixLen,
        max_payload: usize,
    ) -> bool {
        let width = prefix.bytes();
        let room = max_payload.saturating_sub(HEADER_ROOM);
        let mut queued = false;
        let (mut start, mut at, mut n) = (0, 0, 0u64);
        while at + width <= frames.len() {
            let len = frames[at..at + width]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            let whole = (width + len).min(frames.len() - at);
            if whole > room {
                if n > 0 {
                    queued |= self.enqueue(Dest::Room(self.seq, prefix), &frames[start..at], n);
                }
                self.seq += 1;
                self.stats.dropped_too_big += 1;
                log::warn!(
                    "broker: a message of {len} B not published: over the broker's max_payload \
                     ({max_payload} B); the local room had it ({} such so far)",
                    self.stats.dropped_too_big
                );
                at += whole;
                start = at;
                n = 0;
                continue;
            }
            if at + whole - start > room {
                queued |= self.enqueue(Dest::Room(self.seq, prefix), &frames[start..at], n);
                start = at;
                n = 0;
            }
            at += whole;
            n += 1;
        }
        if n > 0 {
            queued |= self.enqueue(Dest::Room(self.seq, prefix), &frames[start..at], n);
        }
        queued
    }

    /// Queues one message text for the room.
    pub(super) fn publish_text(
        &mut self,
        text: &str,
        prefix: PrefixLen,
        max_payload: usize,
    ) -> bool {
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        let config = FrameConfig {
            prefix,
            max_frame: prefix.max_len(),
        };
        let queued = match framing::encode_into(&mut frame, text.as_bytes(), config) {
            Ok(()) => self.publish_frames(&frame, prefix, max_payload),
            Err(e) => {
                log::warn!("broker: a message not published: {e}");
                false
            }
        };
        self.frame = frame;
        queued
    }

    /// Puts one command in the queue, or drops it (counted) when the limit
    /// would be passed. Chat messages are numbered even when dropped.
    pub(super) fn enqueue(&mut self, dest: Dest<'_>, payload: &[u8], messages: u64) -> bool {
        let block = self
            .headers
            .start()
            .field(HUB_HEADER, &self.hub_id)
            .field(RUN_HEADER, format_args!("{:x}", self.run));
        if let Dest::Room(first, prefix) = dest {
            self.seq = first + messages;
            block
                .field(SEQ_HEADER, first)
                .field(PREFIX_HEADER, prefix.bytes());
        }
        let headers = block.finish();
        let (subject, reply): (&str, Option<&str>) = match dest {
            Dest::Room(..) => (&self.subject, None),
            Dest::Who(n) => {
                self.reply.clear();
                self.reply.push_str(&self.inbox);
                self.reply.push('.');
                self.reply.push_str(&n.to_string());
                (&self.who_subject, Some(&self.reply))
            }
            Dest::Reply(to) => (to, None),
        };
        let len = nats::publish_len(subject, reply, headers.len(), payload.len());
        let waiting = self.pending.len() - self.head;
        if waiting + len > self.limit {
            self.stats.dropped_backlog += messages;
            self.stats.drop_events += 1;
            if self.stats.drop_events.is_power_of_two() {
                log::warn!(
                    "broker: --broker-backlog full ({waiting} B waiting for the broker): {} \
                     message(s) dropped so far, never to reach the other hubs",
                    self.stats.dropped_backlog
                );
            }
            return false;
        }
        nats::publish_with_headers(&mut self.pending, subject, reply, headers, payload);
        self.records.push_back(Record {
            len,
            payload: headers.len() + payload.len(),
            messages,
        });
        true
    }

    /// Hands whole commands to `send`, at most `room` bytes of them (but
    /// at least one), in as few calls as they allow; stops at the first
    /// call that refuses (`send` returns false), which keeps what it was
    /// offered. A command over `max_payload` (made for a server that took
    /// more) is dropped and counted instead.
    pub(super) fn take(
        &mut self,
        mut room: usize,
        max_payload: usize,
        mut send: impl FnMut(&[u8]) -> bool,
    ) {
        let mut first = true;
        loop {
            while let Some(&record) = self.records.front() {
                if record.payload <= max_payload {
                    break;
                }
                self.records.pop_front();
                self.head += record.len;
                self.stats.dropped_too_big += record.messages;
            }
            let (mut end, mut n, mut messages) = (self.head, 0, 0);
            for record in &self.records {
                let fits = record.len <= room || (first && n == 0);
                if record.payload > max_payload || !fits {
                    break;
                }
                end += record.len;
                room = room.saturating_sub(record.len);
                n += 1;
                messages += record.messages;
            }
            if n == 0 || !send(&self.pending[self.head..end]) {
                break;
            }
            self.stats.published += messages;
            self.stats.published_bytes += (end - self.head) as u64;
            self.records.drain(..n);
            self.head = end;
            first = false;
        }
        if self.head == self.pending.len() {
            self.pending.clear();
            self.head = 0;
            if self.pending.capacity() > self.limit.min(1 << 20) {
                self.pending = Vec::new();
            }
        } else if self.head > self.pending.len() / 2 {
            self.pending.drain(..self.head);
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(texts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for text in texts {
            framing::encode_into(&mut out, text.as_bytes(), FrameConfig::default()).unwrap();
        }
        out
    }

    fn drain(outbox: &mut Outbox) -> Vec<u8> {
        let mut out = Vec::new();
        outbox.take(usize::MAX, 1 << 20, |b| {
            out.extend_from_slice(b);
            true
        });
        out
    }

    #[test]
    fn a_batch_is_one_command_numbered_from_the_first_message() {
        let mut outbox = Outbox::new("hub1", 0xabc, "lobby", 1 << 20);
        assert!(outbox.publish_frames(&frames(&["a", "bc"]), PrefixLen::Two, 1 << 20));
        assert!(outbox.publish_text("d", PrefixLen::Two, 1 << 20));
        let text = String::from_utf8(drain(&mut outbox)).unwrap();
        assert_eq!(
            text.matches("HPUB sockloop.room.lobby ").count(),
            2,
            "{text}"
        );
        assert!(text.contains("Sockloop-Hub: hub1\r\nSockloop-Run: abc\r\nSockloop-Seq: 0\r\n"));
        assert!(text.contains("Sockloop-Seq: 2\r\nSockloop-Prefix: 2\r\n"));
        assert_eq!(outbox.stats.published, 3);
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn over_the_limit_is_dropped_counted_and_numbered() {
        let mut outbox = Outbox::new("h", 1, "r", 200);
        let mut queued = 0;
        for _ in 0..10 {
            queued += u64::from(outbox.publish_text("0123456789", PrefixLen::Two, 1 << 20));
        }
        assert!(queued > 0 && queued < 10);
        assert_eq!(outbox.stats.dropped_backlog, 10 - queued);
        assert!(outbox.len() <= 200);
        assert_eq!(outbox.seq, 10, "dropped messages keep their numbers");
    }

    #[test]
    fn a_batch_is_cut_to_max_payload_and_a_message_over_it_dropped() {
        let mut outbox = Outbox::new("h", 1, "r", 1 << 20);
        let big = "x".repeat(600);
        let small = "y".repeat(200);
        let batch = frames(&[&small, &small, &big, &small]);
        outbox.publish_frames(&batch, PrefixLen::Two, 700);
        assert_eq!(outbox.stats.dropped_too_big, 1);
        let text = String::from_utf8_lossy(&drain(&mut outbox)).into_owned();
        assert_eq!(
            text.matches("HPUB").count(),
            2,
            "the two small ones, then one: {text}"
        );
        assert!(
            text.contains("Sockloop-Seq: 3\r\n"),
            "the one after the dropped one"
        );
    }

    #[test]
    fn take_hands_whole_commands_within_the_room() {
        let mut outbox = Outbox::new("h", 1, "r", 1 << 20);
        for _ in 0..3 {
            outbox.publish_text("hello", PrefixLen::Two, 1 << 20);
        }
        let one = outbox.records[0].len;
        let mut got = Vec::new();
        let mut keep = |b: &[u8]| {
            got.extend_from_slice(b);
            true
        };
        outbox.take(one + 1, 1 << 20, &mut keep);
        outbox.take(1, 1 << 20, &mut keep);
        assert_eq!(got.len(), 2 * one, "at least one, even past the room");
        outbox.take(usize::MAX, 1 << 20, |_| false);
        assert_eq!(outbox.len(), one, "a refused command stays queued");
        assert_eq!(outbox.stats.published, 2);
    }
}
