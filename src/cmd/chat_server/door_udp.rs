//! The UDP door's messages (`--udp-port`): a datagram is one chat message
//! from a `udp-chat` peer, who joins by sending it. The peer set itself (who
//! is there, whose address is proven, the budgets, the outbox) is
//! `udp_room.rs`.
//!
//! A datagram, in order: refused unless its sender passes `--allow`/`--deny`
//! and is not this socket itself; an empty one keeps a peer in and does
//! nothing else; an answer to a challenge proves its sender's address and
//! goes no further; a message of ours come back round a loop of hubs goes no
//! further; a newcomer must find a place (`UdpRoom::admit`), and its first
//! message fixes its name (`identity.rs`: refused, with a notice, if it may
//! not have it), then it is announced and challenged to prove its address;
//! the message must be within its sender's `--rate-limit` and `--max-frame`.
//! Then it is admitted under its sender's name (`identity::admit`) and goes
//! to the room. The leave text takes the peer out, announced once; `/who`
//! and `/help` are answered to it alone. Everything dropped is counted and
//! logged at most once a second per cause.
//!
//! What it must not do: block on the socket, log once per datagram, or send
//! an address that has not proven itself more than three times what it sent.

use std::net::SocketAddr;
use std::time::Instant;

use super::commands::Command;
use super::fanout::Outgoing;
use super::identity::{self, guest_name, Claim, SERVER_NAME};
use super::member::{Member, Origin};
use super::udp_room::{Admit, Dropped, Proof};
use super::{Hub, TIMER_UDP_SWEEP};
use crate::chat_msg::{self, LEAVE_TEXT};
use crate::reactor::Ctx;
use crate::routability;
use crate::safe_text::visible_line;

impl Hub {
    /// A datagram: one chat message from a UDP peer, who joins by sending it.
    pub(super) fn on_datagram(&mut self, cx: &mut Ctx<Member>, bytes: &[u8], from: SocketAddr) {
        if self.stopping {
            return;
        }
        let max_frame = self.frames.max_frame;
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        let now = Instant::now();
        if let Err(why) = cx.config().access.check(from.ip()) {
            udp.dropped(cx, Dropped::Refused, || {
                format!("ignored a datagram from {from}: {why}")
            });
            return;
        }
        if udp.is_own(from) {
            udp.dropped(cx, Dropped::Ours, || {
                format!("ignored a datagram from this socket's own address {from}")
            });
            return;
        }
        let known = udp.heard(from, bytes.len(), now);
        if bytes.is_empty() {
            if !known {
                udp.dropped(cx, Dropped::Empty, || {
                    format!(
                        "ignored an empty datagram from {from}: an empty datagram keeps a \
                         peer in, it never lets one in"
                    )
                });
            }
            return;
        }
        if bytes.len() > max_frame {
            udp.dropped(cx, Dropped::TooLong, || {
                format!(
                    "dropped a datagram of {} bytes from {from}: over --max-frame {max_frame}",
                    bytes.len()
                )
            });
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let said = chat_msg::parse(&text).map_or(&*text, |m| m.text);
        if let Some(token) = routability::parse_answer(said) {
            match udp.prove(from, token, now) {
                Proof::Proven => log::info!("udp peer {from} proved its address"),
                Proof::Already => {}
                Proof::Wrong => log::debug!("udp: {from} answered with a token not its own"),
            }
            return;
        }
        if udp.sent_lately(bytes) {
            udp.dropped(cx, Dropped::Looped, || {
                format!("dropped a message from {from}: it is ours, come back round a loop")
            });
            return;
        }
        if !known {
            if said == LEAVE_TEXT {
                return; // A stranger leaving: nothing to do.
            }
            let instead_of = match udp.admit(from, bytes.len(), now) {
                Admit::New => None,
                Admit::NewInsteadOf(unproven) => Some(unproven),
                Admit::No(why) => {
                    udp.dropped(cx, why, || {
                        format!("ignored a datagram from newcomer {from}: {why:?}")
                    });
                    return;
                }
            };
            let wanted =
                identity::claimed_name(&text).map_or_else(|| guest_name(from), str::to_owned);
            if !self.name_udp_peer(cx, from, &wanted, instead_of) {
                return;
            }
        }
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        udp.challenge(cx, from, SERVER_NAME, now);
        if !udp.within_rate(from, bytes.len(), now) {
            udp.dropped(cx, Dropped::OverRate, || {
                format!("dropped a datagram from {from}: over its --rate-limit")
            });
            return;
        }
        let Some(name) = udp.peer_mut(from).and_then(|p| p.name.clone()) else {
            return;
        };
        let admitted = identity::admit(&text, &name);
        let said = admitted.text();
        if said == LEAVE_TEXT {
            self.udp_peer_gone(cx, from, "left");
            return;
        }
        if said.trim().is_empty() {
            return;
        }
        if let Some(command) = Command::parse(said) {
            self.answer(cx, Origin::Udp(from), command);
            return;
        }
        let message = admitted.message();
        self.fan_out(cx, Origin::Udp(from), &mut Outgoing::new(message));
        self.print(message);
        self.flush_stdout(cx);
    }

    /// A new UDP peer asks for `wanted` as its name. True when it has a name
    /// now: it has been challenged first (its budget is spent on that before
    /// anything else), the unproven peer whose place it took is out, and the
    /// room has been told. False when it was refused: it is told why, within
    /// its budget, and is out of the room again (the place it would have
    /// taken is left to its holder).
    fn name_udp_peer(
        &mut self,
        cx: &mut Ctx<Member>,
        from: SocketAddr,
        wanted: &str,
        instead_of: Option<SocketAddr>,
    ) -> bool {
        let (name, renamed) = match self.names.claim(wanted, Origin::Udp(from)) {
            Claim::Refused(why) => {
                self.tell_udp(cx, from, &format!("your name is refused: {why}"));
                if let Some(udp) = self.udp.as_mut() {
                    udp.remove(from);
                    udp.dropped(cx, Dropped::NameRefused, || {
                        format!(
                            "{from}: the name '{}' is refused: {}",
                            visible_line(wanted),
                            visible_line(&why)
                        )
                    });
                }
                return false;
            }
            Claim::Granted(name) => (name, false),
            Claim::Renamed(name) => (name, true),
        };
        let Some(udp) = self.udp.as_mut() else {
            return false;
        };
        udp.challenge(cx, from, SERVER_NAME, Instant::now());
        let proven = match udp.peer_mut(from) {
            Some(peer) => {
                peer.name = Some(name.clone());
                peer.proven
            }
            None => return false,
        };
        if let Some(unproven) = instead_of {
            self.udp_peer_gone(
                cx,
                unproven,
                "made room for a newcomer before proving its address",
            );
        }
        let n = self.udp.as_ref().map_or(0, |udp| udp.len());
        log::info!("udp peer {from} came in ({n} udp peer(s))");
        log::info!("{name} joined the chat (udp {from})");
        let unproven = if proven {
            ""
        } else {
            ", address not proven yet"
        };
        self.announce(
            cx,
            Origin::Udp(from),
            &format!("{name} joined the chat (udp {from}{unproven})"),
        );
        if renamed {
            self.tell_udp(
                cx,
                from,
                &format!("the name {} is taken here: you are {name}", wanted.trim()),
            );
        }
        true
    }

    /// Tells one UDP peer something, privately, as the server (within its
    /// budget while its address is not proven).
    pub(super) fn tell_udp(&mut self, cx: &mut Ctx<Member>, to: SocketAddr, text: &str) {
        let message = chat_msg::format_now(SERVER_NAME, &chat_msg::clean_text(text));
        if let Some(udp) = self.udp.as_mut() {
            udp.send_to(cx, to, message.as_bytes());
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
        let Some(name) = peer.name else {
            log::info!("udp peer {addr} {why} ({n} udp peer(s))");
            return;
        };
        self.names.release(&name, Origin::Udp(addr));
        log::info!("{name} (udp {addr}) {why} ({n} udp peer(s))");
        let announcement = if why == "left" {
            format!("{name} left the chat")
        } else {
            format!("{name} left the chat ({why})")
        };
        self.announce(cx, Origin::Udp(addr), &announcement);
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
