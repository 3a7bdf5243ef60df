//! Reading a TCP client, whichever door it came in by: its bytes become
//! whole messages, in order.
//!
//! The client's decoder (frames or lines) splits what it sent; each whole
//! message goes to its door at once (`relay` for frames, `on_line` for
//! lines) while the client is within its `--rate-limit`. From the first one
//! that is not, every later one of that read is held behind it (`held.rs`),
//! so nothing is reordered. A malformed frame or an over-long line closes
//! that client only, with the reason logged. The end of a client's stream
//! still counts a last line without a newline, and the client leaves after
//! what it said. After each read the client's half-sent frame or line, if
//! any, is noted with when it began, for `--frame-timeout` (`deadlines.rs`).
//!
//! What it must not do: relay a message out of order or past its sender's
//! rate, or let one client's bad input close another.

use std::time::{Duration, Instant};

use super::member::{Input, Member};
use super::Hub;
use crate::conn::CloseReason;
use crate::framing::Frame;
use crate::reactor::{ConnId, Ctx};

impl Hub {
    /// Bytes from a client: decode its frames or lines and relay each one
    /// its `--rate-limit` allows; hold back the rest, in order.
    pub(super) fn on_data(&mut self, cx: &mut Ctx<Member>, conn: ConnId, bytes: &[u8]) {
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        let Some(mut input) = member.input.take() else {
            return;
        };
        let mut held = std::mem::take(&mut member.held);
        let was_holding = !held.is_empty();
        let mut wait = None;
        let mut leaving = false;
        let mut n_whole = 0usize;
        let result = match &mut input {
            Input::Framed(decoder) => decoder
                .feed(bytes, |frame| match frame {
                    Frame::Message { text, wire } => {
                        n_whole += 1;
                        if held.is_empty() {
                            match cx.take_message(conn) {
                                Ok(()) => return self.relay(cx, conn, text, wire),
                                Err(until) => wait = Some(until),
                            }
                        }
                        held.extend_from_slice(wire);
                    }
                    Frame::Close => leaving = true,
                })
                .map_err(|error| error.to_string()),
            Input::Lines(lines) => lines
                .feed(bytes, |line| {
                    n_whole += 1;
                    if held.is_empty() {
                        match cx.take_message(conn) {
                            Ok(()) => return self.on_line(cx, conn, line),
                            Err(until) => wait = Some(until),
                        }
                    }
                    held.extend_from_slice(line);
                    held.push(b'\n');
                })
                .map_err(|error| format!("{error} (--max-frame)")),
            Input::Web(web) => {
                // Protocol errors are answered there, with a close frame.
                let before = web.messages;
                self.on_web_data(cx, conn, web, bytes, &mut held, &mut wait, &mut leaving);
                n_whole += (web.messages - before) as usize;
                Ok(())
            }
        };
        self.flush_batch(cx);
        self.flush_stdout(cx);
        let holding = !held.is_empty();
        let partial = match &input {
            Input::Framed(decoder) => decoder.buffered() > 0,
            Input::Lines(lines) => lines.buffered() > 0,
            Input::Web(web) => web.buffered() > 0,
        };
        let mut deadline_started = false;
        if let Some(member) = cx.state_mut(conn) {
            member.input = Some(input);
            member.held = held;
            member.leave_after_held |= leaving && holding;
            // A whole message in this read means what is half-sent now began in it.
            if !partial {
                member.partial_since = None;
            } else if n_whole > 0 || member.partial_since.is_none() {
                member.partial_since = Some(Instant::now());
                deadline_started = true;
            }
        }
        if deadline_started {
            self.arm_deadlines(cx);
        }
        if holding && !was_holding {
            self.start_holding(cx, conn, wait.unwrap_or(Duration::ZERO));
        }
        match result {
            Err(why) => cx.close(conn, CloseReason::Protocol(why)),
            Ok(()) if leaving && !holding => self.on_leaving(cx, conn),
            Ok(()) => {}
        }
    }

    /// The peer shut down its sending side. A line client's last line may
    /// have had no newline: it still counts.
    pub(super) fn on_peer_closed(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        let last = match member.input.as_mut() {
            Some(Input::Lines(lines)) => lines.finish(),
            _ => None,
        };
        if !member.held.is_empty() {
            // It leaves after what it said, at the pace its rate allows.
            if let Some(line) = last {
                member.held.extend_from_slice(&line);
                member.held.push(b'\n');
            }
            member.leave_after_held = true;
            return;
        }
        if let Some(line) = last {
            match cx.take_message(conn) {
                Ok(()) => {
                    self.on_line(cx, conn, &line);
                    self.flush_stdout(cx);
                }
                Err(wait) => {
                    if let Some(member) = cx.state_mut(conn) {
                        member.held = line;
                        member.held.push(b'\n');
                        member.leave_after_held = true;
                    }
                    self.start_holding(cx, conn, wait);
                    return;
                }
            }
        }
        self.on_leaving(cx, conn);
    }
}
