//! What happens on one link of the mesh: the handshake and its refusals, the
//! tie-break when two links join the same two members, introductions, the
//! members' and guests' messages and their departures.
//!
//! *Invariant:* a member has exactly one active link (the one in
//! [`Members`](super::mesh::Members)), and only that link is sent on; every
//! other link to it is [`Role::Retiring`], read until it closes but never
//! written. So each message crosses each pair of members once.

use std::net::SocketAddr;
use std::time::Instant;

use super::mesh::{keep, DialKey, Member, Origin, TargetState};
use super::wire::{Control, Listen, MemberId};
use super::{
    close_link, queue, send_control, set_role, Guest, Link, Role, TcpChat, INTRO_GRACE,
    RETIRE_GRACE, TIMER_DIAL, TIMER_RETIRE,
};
use crate::chat_msg::{self, LEAVE_TEXT};
use crate::conn::CloseReason;
use crate::framing;
use crate::reactor::{ConnId, Ctx};
use crate::safe_text::{check_name, visible, visible_line};

impl TcpChat {
    // ----- The handshake ----------------------------------------------------------

    /// A `hello` on an accepted connection: a member wants a link.
    pub(super) fn on_hello(
        &mut self,
        cx: &mut Ctx<Link>,
        conn: ConnId,
        id: MemberId,
        dial: u64,
        listen: Listen,
        name: &str,
    ) {
        let Some(peer) = cx.conn(conn).map(|c| c.peer()) else {
            return;
        };
        let (Some(own_name), Some(local)) = (self.input.name(), self.local) else {
            return;
        };
        let welcome = Control::Welcome {
            id: self.me,
            listen: Listen::of(local),
            name: own_name,
        };
        if id == self.me {
            // One of our own dials reached our listener: say who we are, so the
            // dialing side (us) stops dialing that address.
            send_control(cx, conn, &welcome, self.frames);
            self.closing_link(cx, conn);
            return;
        }
        let refusal = if self.leaving {
            Some((true, format!("{own_name} is leaving the chat")))
        } else if let Err(why) = check_name(name) {
            Some((false, why.to_string()))
        } else if name == own_name || self.members.named(name, Some(id)).is_some() {
            Some((true, format!("the name {name} is already in this chat")))
        } else if self.members.get(id).is_none() && self.members.is_full() {
            Some((
                true,
                format!("the chat is full ({} members)", self.members.max),
            ))
        } else {
            None
        };
        if let Some((retry, why)) = refusal {
            log::warn!("refused a member at {peer}: {}", visible_line(&why));
            send_control(cx, conn, &Control::Bye { retry, why: &why }, self.frames);
            self.closing_link(cx, conn);
            return;
        }
        send_control(cx, conn, &welcome, self.frames);
        let key = DialKey { dialer: id, dial };
        self.link_up(cx, conn, id, name, listen.resolve(peer.ip()), key);
    }

    /// A `welcome` on a link we dialed: the member there, by id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_welcome(
        &mut self,
        cx: &mut Ctx<Link>,
        conn: ConnId,
        target: usize,
        dial: u64,
        id: MemberId,
        listen: Listen,
        name: &str,
    ) {
        let Some(addr) = self.targets.get(target).map(|t| t.addr) else {
            close_link(cx, conn, CloseReason::Local("address forgotten"));
            return;
        };
        if id == self.me {
            log::info!("{addr} is this member's own listener; not dialing it");
            if let Some(t) = self.targets.get_mut(target) {
                t.state = TargetState::Myself;
            }
            close_link(cx, conn, CloseReason::Local("dialed ourselves"));
            return;
        }
        if let Err(why) = check_name(name) {
            log::warn!(
                "the member at {addr} has a name we cannot show ({why}); not dialing it again"
            );
            if let Some(t) = self.targets.get_mut(target) {
                t.state = TargetState::Stopped;
            }
            close_link(cx, conn, CloseReason::Protocol("unacceptable name".into()));
            return;
        }
        if Some(name) == self.input.name() || self.members.named(name, Some(id)).is_some() {
            log::warn!("the member at {addr} is called {name}, a name already in this chat; trying again later");
            close_link(cx, conn, CloseReason::Local("name already in the chat"));
            return;
        }
        if let Some(t) = self.targets.get_mut(target) {
            t.member = Some(id);
            t.failures = 0;
            t.strangers = 0;
            t.last_error = None;
            t.state = TargetState::Connected;
        }
        let key = DialKey {
            dialer: self.me,
            dial,
        };
        self.link_up(cx, conn, id, name, listen.resolve(addr.ip()), key);
    }

    /// A `bye`: the member we dialed refused us, and says why.
    pub(super) fn on_bye(
        &mut self,
        cx: &mut Ctx<Link>,
        conn: ConnId,
        target: usize,
        retry: bool,
        why: &str,
    ) {
        let Some(t) = self.targets.get_mut(target) else {
            return;
        };
        let why = visible_line(why);
        if retry {
            log::warn!("{} refused us for now: {why}", t.addr);
        } else {
            log::warn!("{} refused us: {why}; not dialing it again", t.addr);
            t.state = TargetState::Stopped;
        }
        close_link(cx, conn, CloseReason::Local("refused by the member"));
    }

    /// A link we dialed answered with a chat message instead of `welcome`: not
    /// a member (a `chat server`, say), or one that took us for a guest.
    pub(super) fn on_stranger(&mut self, cx: &mut Ctx<Link>, conn: ConnId, target: usize) {
        if let Some(t) = self.targets.get_mut(target) {
            t.strangers += 1;
            if t.strangers >= 3 {
                log::warn!(
                    "{} does not speak tcp-chat's mesh (a chat server? join a hub with \
                     'sockloop chat client'); not dialing it again",
                    t.addr
                );
                t.state = TargetState::Stopped;
            }
        }
        close_link(
            cx,
            conn,
            CloseReason::Protocol("a chat message before the welcome".into()),
        );
    }

    /// A member link is up (both ends know each other). A second link to the
    /// same member goes through the tie-break; a new member is introduced to
    /// the others, and they to it.
    fn link_up(
        &mut self,
        cx: &mut Ctx<Link>,
        conn: ConnId,
        id: MemberId,
        name: &str,
        listen: SocketAddr,
        key: DialKey,
    ) {
        if let Some(member) = self.members.get_mut(id) {
            let (old, old_key) = (member.conn, member.key);
            let (kept, retired) = if keep(key, old_key) == old_key {
                (old, conn)
            } else {
                member.conn = conn;
                member.key = key;
                set_role(cx, conn, Role::Member(id));
                (conn, old)
            };
            log::debug!("two links to {name}: keeping {kept}, retiring {retired}");
            crate::trace!(
                cx.tracer(),
                "mesh: two links to {name}: keeping {kept} ({}), retiring {retired} ({})",
                if kept == conn { key } else { old_key },
                if kept == conn { old_key } else { key }
            );
            self.retire(cx, retired, id);
            return;
        }
        let now = Instant::now();
        self.members.insert(
            id,
            Member {
                name: name.into(),
                listen,
                conn,
                key,
                left: false,
                since: now,
            },
        );
        if let Some(link) = cx.state_mut(conn) {
            link.role = Role::Member(id);
            link.deadline = None;
            // Members hear everything first-hand: what was held in case it was a guest goes.
            link.held = Vec::new();
            link.held_bytes = 0;
        }
        // Remember where it listens, to dial it again if it vanishes.
        if let Some(k) = self.targets.add(listen, Origin::Learned, now) {
            if let Some(t) = self.targets.get_mut(k) {
                t.member = Some(id);
                t.failures = 0;
                if !matches!(t.state, TargetState::Dialing(_)) {
                    t.state = TargetState::Connected;
                }
            }
        }
        for k in self.targets.of_member(id) {
            if let Some(t) = self.targets.get_mut(k) {
                if matches!(t.state, TargetState::Waiting { .. }) {
                    t.state = TargetState::Connected;
                }
            }
        }
        log::info!(
            "{name} joined the chat (member at {listen}); {}",
            Count(self.members.len() + 1)
        );
        crate::trace!(cx.tracer(), "mesh: {conn} is {name} ({key})");
        // Introductions both ways.
        let others: Vec<(MemberId, SocketAddr, ConnId)> = self
            .members
            .iter()
            .filter(|(other, _)| *other != id)
            .map(|(other, m)| (other, m.listen, m.conn))
            .collect();
        for (other, addr, other_conn) in others {
            send_control(cx, conn, &Control::Member { id: other, addr }, self.frames);
            send_control(
                cx,
                other_conn,
                &Control::Member { id, addr: listen },
                self.frames,
            );
        }
    }

    /// Stops sending on a link that lost the tie-break: `retire`, then our
    /// write side closes after it. It is still read (the other end may have
    /// sent on it before it learned of the other link) until it is closed.
    fn retire(&mut self, cx: &mut Ctx<Link>, conn: ConnId, id: MemberId) {
        send_control(cx, conn, &Control::Retire, self.frames);
        cx.shutdown_write(conn);
        if let Some(link) = cx.state_mut(conn) {
            link.role = Role::Retiring(id);
            link.deadline = Some(Instant::now() + RETIRE_GRACE);
        }
        cx.set_timer_in(RETIRE_GRACE, TIMER_RETIRE | conn.0 as u64);
        if cx.state(conn).is_some_and(|l| l.peer_retired) {
            // Both ends have retired it: once what was queued on it before the
            // tie-break is written, nothing more will cross it.
            self.closing_link(cx, conn);
        }
    }

    /// `member`: a member we have a link to introduces another one.
    pub(super) fn on_introduction(
        &mut self,
        cx: &mut Ctx<Link>,
        from: MemberId,
        id: MemberId,
        addr: SocketAddr,
    ) {
        if id == self.me || self.members.get(id).is_some() || self.leaving {
            return;
        }
        let now = Instant::now();
        // The member with the smaller id dials at once; the other waits a
        // little in case that dial comes, and dials itself if it does not.
        let at = if self.me < id { now } else { now + INTRO_GRACE };
        if let Some(k) = self.targets.find(addr) {
            if let Some(t) = self.targets.get_mut(k) {
                t.member.get_or_insert(id);
            }
            return;
        }
        let Some(k) = self.targets.add(addr, Origin::Learned, at) else {
            self.n_book_full += 1;
            if self.n_book_full == 1 {
                log::warn!(
                    "the address book is full ({} addresses); further introductions are ignored",
                    self.targets.max
                );
            }
            return;
        };
        if let Some(t) = self.targets.get_mut(k) {
            t.member = Some(id);
        }
        let by = self.members.get(from).map_or("a member", |m| &m.name);
        crate::trace!(
            cx.tracer(),
            "mesh: {by} introduced {id} at {addr}; {}",
            if at == now {
                "dialing it now"
            } else {
                "waiting for it to dial us"
            }
        );
        if at == now {
            self.dial(cx, k);
        } else {
            cx.set_timer(at, TIMER_DIAL | k as u64);
        }
    }

    // ----- Members' messages and departures ----------------------------------------

    /// A chat message on a member's link: its own words, or a guest's it passes on.
    pub(super) fn on_member_message(
        &mut self,
        cx: &mut Ctx<Link>,
        conn: ConnId,
        id: MemberId,
        text: &str,
        wire: &[u8],
    ) {
        let Some(message) = chat_msg::parse(text) else {
            close_link(
                cx,
                conn,
                CloseReason::Protocol(
                    "a frame that is neither a chat message nor a control frame".into(),
                ),
            );
            return;
        };
        let member_name = self.members.get(id).map(|m| m.name.clone());
        if member_name.as_deref() == Some(message.sender) {
            if message.text == LEAVE_TEXT {
                self.member_leaves(id);
            }
        } else {
            // For a guest of that member: any acceptable name but ours or a member's.
            let allowed = check_name(message.sender).is_ok()
                && Some(message.sender) != self.input.name()
                && self.members.named(message.sender, None).is_none();
            if !allowed {
                let warned = cx.state(conn).is_some_and(|l| l.warned);
                if !warned {
                    log::warn!(
                        "{} sent a message signed '{}', a name it may not use; not shown \
                         (further ones from it are dropped too)",
                        member_name.as_deref().unwrap_or("a member"),
                        visible_line(message.sender)
                    );
                    if let Some(link) = cx.state_mut(conn) {
                        link.warned = true;
                    }
                }
                return;
            }
        }
        self.pass_on(cx, conn, text, wire, false);
    }

    /// A member said goodbye (the leave text, or the zero-length frame): said once.
    pub(super) fn member_leaves(&mut self, id: MemberId) {
        // Without it, the others and we make as many as the table holds.
        let n = self.members.len();
        if let Some(member) = self.members.get_mut(id) {
            if !member.left {
                member.left = true;
                log::info!("{} left the chat; {}", member.name, Count(n));
            }
        }
    }

    /// A member's active link closed: it left, or it vanished. Either way it is
    /// reported once and its addresses are dialed again, so it is reconnected
    /// if it comes back (learned addresses of a member that left are forgotten).
    pub(super) fn member_gone(
        &mut self,
        cx: &mut Ctx<Link>,
        id: MemberId,
        conn: ConnId,
        reason: &CloseReason,
    ) {
        if self.members.get(id).map(|m| m.conn) != Some(conn) {
            return;
        }
        let Some(member) = self.members.remove(id) else {
            return;
        };
        let n = self.members.len() + 1;
        if self.leaving || member.left {
            // Said already, when it said goodbye.
            log::debug!("{}'s link closed: {reason}", member.name);
        } else {
            log::warn!(
                "{} (member at {}) vanished: {reason}; {}",
                member.name,
                member.listen,
                Count(n)
            );
        }
        if self.leaving {
            return;
        }
        for k in self.targets.of_member(id) {
            let Some(t) = self.targets.get_mut(k) else {
                continue;
            };
            if t.origin == Origin::Learned && member.left {
                self.targets.remove(k);
                continue;
            }
            if matches!(
                t.state,
                TargetState::Connected | TargetState::Waiting { .. }
            ) {
                t.failures = 0;
                self.dial_failed(cx, k, format!("{} is gone", member.name));
            }
        }
    }

    // ----- Guests ----------------------------------------------------------------

    /// A chat message from a guest (or from a connection that becomes one now).
    pub(super) fn on_guest_message(
        &mut self,
        cx: &mut Ctx<Link>,
        conn: ConnId,
        text: &str,
        wire: &[u8],
    ) {
        let Some(message) = chat_msg::parse(text) else {
            self.refuse_guest(
                cx,
                conn,
                "not a chat message: frames must read '[TIMESTAMP] NAME:\\n\\tTEXT'",
            );
            return;
        };
        let known = self.guests.get(&conn).and_then(|g| g.name.clone());
        match known {
            None => {
                let name = message.sender;
                let taken = Some(name) == self.input.name()
                    || self.members.named(name, None).is_some()
                    || self
                        .guests
                        .iter()
                        .any(|(c, g)| *c != conn && g.name.as_deref() == Some(name));
                let refusal = if let Err(why) = check_name(name) {
                    Some(why.to_string())
                } else if taken {
                    Some(format!("the name {name} is already in this chat"))
                } else if !self.room_for_guest(conn) {
                    Some(self.guests_full())
                } else {
                    None
                };
                if let Some(why) = refusal {
                    self.refuse_guest(cx, conn, &why);
                    return;
                }
                self.become_guest(cx, conn, Some(name));
            }
            Some(name) if &*name != message.sender => {
                let why = format!(
                    "you joined as {name}; a message signed {} was refused",
                    message.sender
                );
                self.refuse_guest(cx, conn, &why);
                return;
            }
            Some(_) => {}
        }
        if message.text == LEAVE_TEXT {
            if let Some(guest) = self.guests.get_mut(&conn) {
                guest.said_leave = true;
            }
        }
        self.pass_on(cx, conn, text, wire, true);
    }

    /// A connection is a guest from now on (named, or still only listening):
    /// what was held for it goes out.
    pub(super) fn become_guest(&mut self, cx: &mut Ctx<Link>, conn: ConnId, name: Option<&str>) {
        let Some(peer) = cx.conn(conn).map(|c| c.peer()) else {
            return;
        };
        let held = match cx.state_mut(conn) {
            Some(link) if link.role == Role::Unknown => {
                link.role = Role::Guest;
                link.deadline = None;
                link.held_bytes = 0;
                std::mem::take(&mut link.held)
            }
            _ => Vec::new(),
        };
        for frame in &held {
            queue(cx, conn, frame);
        }
        if let Some(link) = cx.state_mut(conn) {
            link.heard_room |= !held.is_empty();
        }
        let guest = self.guests.entry(conn).or_insert(Guest {
            peer,
            name: None,
            said_leave: false,
        });
        match name {
            Some(name) => {
                guest.name = Some(name.into());
                log::info!("{name} joined the chat (guest from {peer}, {conn})");
            }
            None => log::info!("a guest from {peer} ({conn}) is listening"),
        }
    }

    /// True when `conn` may be a guest: it is one already (a listening guest
    /// that now names itself), or fewer than `--max-guests` guests, listening
    /// ones included, are here.
    pub(super) fn room_for_guest(&self, conn: ConnId) -> bool {
        self.guests.contains_key(&conn) || self.guests.len() < self.max_guests
    }

    /// The notice for a guest refused because the member is full.
    pub(super) fn guests_full(&self) -> String {
        format!(
            "this member has room for {} guests; try another one",
            self.max_guests
        )
    }

    /// Tells a guest why it cannot stay, in a chat message from us, and closes it.
    pub(super) fn refuse_guest(&mut self, cx: &mut Ctx<Link>, conn: ConnId, why: &str) {
        let peer = cx.conn(conn).map(|c| c.peer());
        log::warn!(
            "refused a guest from {}: {}",
            peer.map_or_else(String::new, |p| p.to_string()),
            visible_line(why)
        );
        let from = self.input.name().unwrap_or("tcp-chat");
        let notice = chat_msg::format_now(from, &visible(why));
        if let Ok(frame) = framing::encode(notice.as_bytes(), self.frames) {
            queue(cx, conn, &frame);
        }
        self.closing_link(cx, conn);
    }

    /// A guest's connection closed. If it did not say goodbye, its hub says
    /// it for it, so everyone hears once that it left.
    pub(super) fn guest_gone(&mut self, cx: &mut Ctx<Link>, conn: ConnId, reason: &CloseReason) {
        let Some(guest) = self.guests.remove(&conn) else {
            return;
        };
        let Some(name) = guest.name else {
            log::info!("the listening guest from {} left ({reason})", guest.peer);
            return;
        };
        if guest.said_leave {
            log::info!("{name} (guest) left the chat");
            return;
        }
        log::info!("{name} (guest from {}) is gone: {reason}", guest.peer);
        if self.leaving {
            return;
        }
        let goodbye = chat_msg::format_now(&name, LEAVE_TEXT);
        if let Ok(frame) = framing::encode(goodbye.as_bytes(), self.frames) {
            self.print(cx, &goodbye);
            self.fan_out(cx, &frame, true, Some(conn));
        }
    }

    /// Closes a connection once what is queued for it is written.
    fn closing_link(&mut self, cx: &mut Ctx<Link>, conn: ConnId) {
        if let Some(link) = cx.state_mut(conn) {
            link.closed = true;
        }
        cx.close_after_flush(conn);
    }
}

/// How many members the chat has now, this one included, as the log says it.
struct Count(usize);

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1 => write!(f, "1 member now (only you)"),
            n => write!(f, "{n} members now"),
        }
    }
}
