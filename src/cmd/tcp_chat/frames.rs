//! Frames in, frames out: what arrives on each connection is decoded and
//! handed to the handshake, the members' or the guests' code by the
//! connection's role; what goes out is fanned out to members and guests.
//! Also the end of each connection, and the deadlines of each role.
//!
//! *Invariant:* every text printed or passed on here went through
//! [`visible`](crate::safe_text::visible) first; what arrives after a
//! connection was closed is not looked at.

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Instant;

use super::mesh::TargetState;
use super::wire::{self, Control};
use super::{
    close_link, queue, role, set_role, Link, Role, TcpChat, LEAVE_GRACE, TIMER_DIAL, TIMER_HELLO,
    TIMER_IDENT, TIMER_KEY, TIMER_LEAVE, TIMER_RETIRE,
};
use crate::conn::CloseReason;
use crate::framing::{self, Decoder, Frame};
use crate::reactor::{ConnId, Ctx};
use crate::safe_text::{visible, visible_line};

impl TcpChat {
    // ----- Frames ---------------------------------------------------------------

    pub(super) fn on_data(&mut self, cx: &mut Ctx<Link>, conn: ConnId, bytes: &[u8]) {
        let Some(link) = cx.state_mut(conn) else {
            return;
        };
        let mut decoder = link
            .decoder
            .take()
            .unwrap_or_else(|| Decoder::new(self.frames));
        let result = decoder.feed(bytes, |frame| {
            if cx.state(conn).map_or(true, |l| l.closed) {
                return;
            }
            match frame {
                Frame::Close => self.on_close_frame(cx, conn),
                Frame::Message { text, wire } => self.on_message(cx, conn, text, wire),
            }
        });
        if let Err(e) = result {
            close_link(cx, conn, CloseReason::Protocol(e.to_string()));
        }
        if let Some(link) = cx.state_mut(conn) {
            link.decoder = Some(decoder);
        }
    }

    pub(super) fn on_message(&mut self, cx: &mut Ctx<Link>, conn: ConnId, text: &str, wire: &[u8]) {
        if wire::is_control(text) {
            match wire::parse(text) {
                Ok(control) => self.on_control(cx, conn, control),
                Err(why) => close_link(
                    cx,
                    conn,
                    CloseReason::Protocol(format!("bad control frame: {}", visible_line(&why))),
                ),
            }
            return;
        }
        match role(cx, conn) {
            Some(Role::Unknown | Role::Guest) => self.on_guest_message(cx, conn, text, wire),
            Some(Role::Member(id) | Role::Retiring(id)) => {
                self.on_member_message(cx, conn, id, text, wire)
            }
            Some(Role::Dialing { target, .. }) => self.on_stranger(cx, conn, target),
            None => {}
        }
    }

    pub(super) fn on_control(&mut self, cx: &mut Ctx<Link>, conn: ConnId, control: Control<'_>) {
        match (role(cx, conn), control) {
            (
                Some(Role::Unknown),
                Control::Hello {
                    id,
                    dial,
                    listen,
                    name,
                },
            ) => self.on_hello(cx, conn, id, dial, listen, name),
            (
                Some(Role::Guest),
                Control::Hello {
                    id,
                    dial,
                    listen,
                    name,
                },
            ) if self.may_still_be_a_member(cx, conn) => {
                // A member whose hello came after IDENT_WAIT: not a guest after all.
                self.guests.remove(&conn);
                set_role(cx, conn, Role::Unknown);
                self.on_hello(cx, conn, id, dial, listen, name)
            }
            (Some(Role::Dialing { target, dial }), Control::Welcome { id, listen, name }) => {
                self.on_welcome(cx, conn, target, dial, id, listen, name)
            }
            (Some(Role::Dialing { target, .. }), Control::Bye { retry, why }) => {
                self.on_bye(cx, conn, target, retry, why)
            }
            (Some(Role::Member(from) | Role::Retiring(from)), Control::Member { id, addr }) => {
                self.on_introduction(cx, from, id, addr)
            }
            (Some(Role::Member(_) | Role::Retiring(_)), Control::Retire) => {
                if let Some(link) = cx.state_mut(conn) {
                    link.peer_retired = true;
                }
                crate::trace!(cx.tracer(), "mesh: {conn}: the other end retired this link");
            }
            (_, control) => close_link(
                cx,
                conn,
                CloseReason::Protocol(format!(
                    "unexpected control frame: {}",
                    visible_line(&control.encode())
                )),
            ),
        }
    }

    /// A guest that has neither a name nor anything from the room: a slow
    /// member's `hello` may still make it a member.
    pub(super) fn may_still_be_a_member(&self, cx: &Ctx<Link>, conn: ConnId) -> bool {
        let unnamed = self.guests.get(&conn).is_some_and(|g| g.name.is_none());
        unnamed && cx.state(conn).is_some_and(|l| !l.heard_room)
    }

    /// A zero-length frame: the other end is closing this connection.
    pub(super) fn on_close_frame(&mut self, cx: &mut Ctx<Link>, conn: ConnId) {
        if let Some(Role::Member(id)) = role(cx, conn) {
            self.member_leaves(id);
        }
        if let Some(link) = cx.state_mut(conn) {
            link.closed = true;
        }
        cx.close_after_flush(conn);
    }

    /// End of stream: nothing more will come from this connection.
    pub(super) fn on_peer_closed(&mut self, cx: &mut Ctx<Link>, conn: ConnId) {
        let retired_by_peer = cx.state(conn).is_some_and(|l| l.peer_retired);
        if matches!(role(cx, conn), Some(Role::Member(_))) && retired_by_peer && !self.leaving {
            // The other end moved to the link that won the tie-break; we go on
            // sending here until that link is up on our side too.
            return;
        }
        close_link(cx, conn, CloseReason::Done);
    }

    pub(super) fn on_closed(&mut self, cx: &mut Ctx<Link>, conn: ConnId, reason: &CloseReason) {
        match role(cx, conn) {
            Some(Role::Dialing { target, .. }) => {
                let current = self
                    .targets
                    .get(target)
                    .is_some_and(|t| t.state == TargetState::Dialing(conn));
                if current && !self.leaving {
                    self.dial_failed(cx, target, reason.to_string());
                }
            }
            Some(Role::Member(id)) => self.member_gone(cx, id, conn, reason),
            Some(Role::Guest) => self.guest_gone(cx, conn, reason),
            Some(Role::Unknown) if matches!(reason, CloseReason::Protocol(_)) => {
                let peer = cx.conn(conn).map(|c| c.peer());
                log::warn!(
                    "closed {conn} from {}: {reason}",
                    peer.map_or_else(String::new, |p| p.to_string())
                );
            }
            _ => {}
        }
        self.guests.remove(&conn);
        // The link that held stdin back may be this one: stdin, paused, brings
        // no event of its own, and no other link may ever drain, so look now.
        // (A closed member is out of `members` already, so its queue no longer counts.)
        self.regulate_stdin(cx);
        self.stop_if_alone(cx);
    }

    pub(super) fn on_timer(&mut self, cx: &mut Ctx<Link>, id: u64) {
        let key = (id & TIMER_KEY) as usize;
        let now = Instant::now();
        let due = |cx: &Ctx<Link>, want: fn(Role) -> bool| {
            cx.state(ConnId(key))
                .is_some_and(|l| want(l.role) && l.deadline.is_some_and(|d| d <= now))
        };
        match id & !TIMER_KEY {
            0 if id == TIMER_LEAVE => {
                log::info!("not everyone closed within {LEAVE_GRACE:?}; leaving anyway");
                cx.stop();
            }
            TIMER_DIAL => self.on_dial_timer(cx, key),
            TIMER_IDENT => self.on_ident_timer(cx, ConnId(key)),
            TIMER_HELLO if due(cx, |r| matches!(r, Role::Dialing { .. })) => close_link(
                cx,
                ConnId(key),
                CloseReason::Local("no welcome within the dial timeout"),
            ),
            TIMER_RETIRE if due(cx, |r| matches!(r, Role::Retiring(_))) => close_link(
                cx,
                ConnId(key),
                CloseReason::Local("the other end did not close a retired link"),
            ),
            _ => {}
        }
    }

    // ----- Fan-out ----------------------------------------------------------------

    /// Queues one frame for every guest and, when `to_members`, every member
    /// (their active links), except `from`. Frames for a connection not yet
    /// known to be a guest or a member are held for it.
    pub(super) fn fan_out(
        &mut self,
        cx: &mut Ctx<Link>,
        frame: &Rc<[u8]>,
        to_members: bool,
        from: Option<ConnId>,
    ) {
        if self.leaving {
            return;
        }
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            if Some(id) == from {
                continue;
            }
            match role(cx, id) {
                Some(Role::Member(_)) if to_members => queue(cx, id, frame),
                Some(Role::Guest) => {
                    queue(cx, id, frame);
                    if let Some(link) = cx.state_mut(id) {
                        link.heard_room = true;
                    }
                }
                Some(Role::Unknown) => {
                    let max = self.max_backlog;
                    let Some(link) = cx.state_mut(id) else {
                        continue;
                    };
                    if link.held_bytes + frame.len() > max {
                        let queued = link.held_bytes;
                        close_link(cx, id, CloseReason::Backlog { queued, limit: max });
                    } else {
                        link.held_bytes += frame.len();
                        link.held.push(Rc::clone(frame));
                    }
                }
                _ => {}
            }
        }
    }

    /// Prints a message from the network and passes it on: to guests, and to
    /// members too when it came from one of our guests. Text with control
    /// characters is made visible and re-framed first, so what we print and
    /// what we pass on are the same, safe, text.
    pub(super) fn pass_on(
        &mut self,
        cx: &mut Ctx<Link>,
        from: ConnId,
        text: &str,
        wire: &[u8],
        to_members: bool,
    ) {
        let shown = visible(text);
        let frame: Rc<[u8]> = match &shown {
            Cow::Borrowed(_) => Rc::from(wire),
            Cow::Owned(safe) => match framing::encode(safe.as_bytes(), self.frames) {
                Ok(frame) => frame,
                Err(e) => {
                    log::warn!(
                        "a message from {from} was dropped: shown safely it is too long ({e})"
                    );
                    return;
                }
            },
        };
        self.print(cx, &shown);
        self.fan_out(cx, &frame, to_members, Some(from));
    }
}
