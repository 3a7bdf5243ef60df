//! The UDP door's messages (`--udp-port`): a datagram is one chat message
//! from a `udp-chat` peer, who joins by sending it. The peer set itself (who
//! is there, their rate limits, the outbox) is `udp_room.rs`.
//!
//! A datagram reaches the room only if its sender passes `--allow`/`--deny`,
//! has a place in the room (`--udp-max-peers`), is within its `--rate-limit`
//! and within `--max-frame`; every one that does not is counted and logged
//! at powers of two, so a flood of datagrams cannot flood the log. A peer
//! that goes (the leave text, `--udp-peer-timeout` of silence, a port
//! reported unreachable) is taken out once and announced once, by name.
//!
//! What it must not do: block on the socket, or log once per datagram.

use std::net::SocketAddr;
use std::time::Instant;

use super::fanout::Outgoing;
use super::member::{Member, Origin};
use super::udp_room::Heard;
use super::{Hub, TIMER_UDP_SWEEP};
use crate::chat_msg::{self, LEAVE_TEXT};
use crate::reactor::Ctx;

impl Hub {
    /// A datagram: one chat message from a UDP peer, who joins by sending it.
    pub(super) fn on_datagram(&mut self, cx: &mut Ctx<Member>, bytes: &[u8], from: SocketAddr) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        if self.stopping {
            return;
        }
        if let Err(why) = cx.config().access.check(from.ip()) {
            if udp.refused.bump() {
                log::warn!(
                    "udp: ignored a datagram from {from}: {why} ({} so far)",
                    udp.refused.0
                );
            }
            return;
        }
        let now = Instant::now();
        match udp.heard(from, now) {
            Heard::Known => {}
            Heard::New => log::info!("udp peer {from} joined ({} udp peer(s))", udp.len()),
            Heard::Full => {
                if udp.full.bump() {
                    log::warn!(
                        "udp: ignored a datagram from {from}: the room has {} udp peers \
                         (--udp-max-peers) ({} such so far)",
                        udp.max_peers(),
                        udp.full.0
                    );
                }
                return;
            }
        }
        if bytes.is_empty() {
            return; // A keep-alive: heard, nothing to say.
        }
        if !udp.within_rate(from, bytes.len(), now) {
            if udp.over_rate.bump() {
                log::warn!(
                    "udp: dropped a datagram from {from}: over its --rate-limit ({} such so far)",
                    udp.over_rate.0
                );
            }
            return;
        }
        if bytes.len() > self.frames.max_frame {
            if udp.unsent.bump() {
                log::warn!(
                    "udp: dropped a datagram of {} bytes from {from}: over --max-frame {} \
                     ({} such so far)",
                    bytes.len(),
                    self.frames.max_frame,
                    udp.unsent.0
                );
            }
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let mut leaving = false;
        if let Some(parsed) = chat_msg::parse(&text) {
            leaving = parsed.text == LEAVE_TEXT;
            if let Some(peer) = udp.peer_mut(from) {
                if peer.name.as_deref() != Some(parsed.sender) {
                    let first = peer.name.is_none();
                    peer.name = Some(Box::from(parsed.sender));
                    if first && !leaving {
                        self.on_joined(cx, Origin::Udp(from), parsed.sender);
                    }
                }
            }
        }
        self.fan_out(cx, Origin::Udp(from), &mut Outgoing::new(&text));
        self.print(&text);
        self.flush_stdout(cx);
        if leaving {
            self.udp_peer_gone(cx, from, "left");
        }
    }

    /// Takes a UDP peer out of the room, saying why, and tells the others.
    pub(super) fn udp_peer_gone(&mut self, cx: &mut Ctx<Member>, addr: SocketAddr, why: &str) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        let Some(peer) = udp.remove(addr) else {
            log::debug!("udp: {addr} {why} (not in the room)");
            return;
        };
        let n = udp.len();
        match &peer.name {
            Some(name) => log::info!("{name} (udp {addr}) {why} ({n} udp peer(s))"),
            None => log::info!("udp peer {addr} {why} ({n} udp peer(s))"),
        }
        if let Some(name) = peer.name {
            let announcement = if why == "left" {
                format!("{name} left the chat")
            } else {
                format!("{name} left the chat ({why})")
            };
            self.announce(cx, Origin::Udp(addr), &announcement);
        }
    }

    /// Takes out the UDP peers silent for `--udp-peer-timeout`.
    pub(super) fn sweep_udp(&mut self, cx: &mut Ctx<Member>) {
        let Some(udp) = self.udp.as_ref() else {
            return;
        };
        if self.stopping {
            return;
        }
        let every = udp.sweep_every();
        let why = format!("silent for {} s", udp.timeout().as_secs());
        let mut silent = std::mem::take(&mut self.silent);
        udp.silent(Instant::now(), &mut silent);
        for &addr in &silent {
            self.udp_peer_gone(cx, addr, &why);
        }
        self.silent = silent;
        cx.set_timer_in(every, TIMER_UDP_SWEEP);
    }
}
