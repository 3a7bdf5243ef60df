//! Dialing and accepting: every address in the book is dialed, again after a
//! backoff when that fails, and every accepted connection gets a deadline to
//! say whether it is a member or a guest.
//!
//! *Invariant:* at most one dial per address is under way at any time, and a
//! timer whose moment has been moved (a reused key, a newer plan) does nothing.

use std::time::Instant;

use super::mesh::TargetState;
use super::wire::{Control, Listen};
use super::{
    close_link, role, send_control, Link, Role, TcpChat, DIAL_TIMEOUT, IDENT_WAIT, TIMER_DIAL,
    TIMER_HELLO, TIMER_IDENT,
};
use crate::conn::CloseReason;
use crate::reactor::{ConnId, Ctx};

impl TcpChat {
    // ----- Dialing -------------------------------------------------------------

    /// Dials address book entry `key` now.
    pub(super) fn dial(&mut self, cx: &mut Ctx<Link>, key: usize) {
        let Some(target) = self.targets.get_mut(key) else {
            return;
        };
        let addr = target.addr;
        self.n_dials += 1;
        let link = Link {
            role: Role::Dialing {
                target: key,
                dial: self.n_dials,
            },
            deadline: Some(Instant::now() + DIAL_TIMEOUT),
            ..Link::default()
        };
        match cx.connect(addr, link) {
            Ok(conn) => {
                target.state = TargetState::Dialing(conn);
                crate::trace!(
                    cx.tracer(),
                    "mesh: dialing {addr} on {conn} (dial {}, attempt {})",
                    self.n_dials,
                    target.failures + 1
                );
                cx.set_timer_in(DIAL_TIMEOUT, TIMER_HELLO | conn.0 as u64);
            }
            Err(e) => self.dial_failed(cx, key, e.to_string()),
        }
    }

    /// A dial to entry `key` failed: dial again after the backoff, or give up.
    pub(super) fn dial_failed(&mut self, cx: &mut Ctx<Link>, key: usize, why: String) {
        let now = Instant::now();
        let Some(target) = self.targets.get(key) else {
            return;
        };
        let (addr, first) = (target.addr, target.failures == 0);
        match self
            .targets
            .failed(key, why.clone(), now, &self.backoff, &mut self.rng)
        {
            Some(at) => {
                cx.set_timer(at, TIMER_DIAL | key as u64);
                let wait = (at - now).as_secs_f64();
                if first {
                    log::info!(
                        "{addr}: {why}; dialing again with backoff (at most {} s apart)",
                        self.backoff.cap.as_secs()
                    );
                } else {
                    log::debug!("{addr}: {why}; next dial in {wait:.1} s");
                }
                crate::trace!(cx.tracer(), "mesh: {addr}: {why}; next dial in {wait:.3} s");
            }
            None => log::info!(
                "{addr}: {why}; giving up after {} failed dials (address forgotten)",
                self.targets.give_up_after
            ),
        }
    }

    /// A dial timer: dial now, unless the member there is linked already.
    pub(super) fn on_dial_timer(&mut self, cx: &mut Ctx<Link>, key: usize) {
        if self.leaving {
            return;
        }
        let Some(target) = self.targets.get_mut(key) else {
            return;
        };
        let TargetState::Waiting { at } = target.state else {
            return;
        };
        if at > Instant::now() {
            return; // An older timer of a reused entry.
        }
        if target.member.is_some_and(|m| self.members.get(m).is_some()) {
            target.state = TargetState::Connected;
            return;
        }
        self.dial(cx, key);
    }

    pub(super) fn on_connected(&mut self, cx: &mut Ctx<Link>, conn: ConnId) {
        let Some(Role::Dialing { dial, .. }) = role(cx, conn) else {
            return;
        };
        let (Some(name), Some(local)) = (self.input.name(), self.local) else {
            return;
        };
        let hello = Control::Hello {
            id: self.me,
            dial,
            listen: Listen::of(local),
            name,
        };
        crate::trace!(cx.tracer(), "mesh: {conn} connected; hello sent");
        send_control(cx, conn, &hello, self.frames);
    }

    // ----- Accepting -----------------------------------------------------------

    pub(super) fn on_accepted(&mut self, cx: &mut Ctx<Link>, conn: ConnId) {
        if self.leaving {
            close_link(cx, conn, CloseReason::Local("leaving"));
            return;
        }
        if let Some(link) = cx.state_mut(conn) {
            link.deadline = Some(Instant::now() + IDENT_WAIT);
        }
        cx.set_timer_in(IDENT_WAIT, TIMER_IDENT | conn.0 as u64);
    }

    /// An accepted connection said nothing for [`IDENT_WAIT`]: a guest that
    /// listens, if there is room for one more guest; else it is told so and closed.
    pub(super) fn on_ident_timer(&mut self, cx: &mut Ctx<Link>, conn: ConnId) {
        let due = cx
            .state(conn)
            .is_some_and(|l| l.role == Role::Unknown && l.deadline <= Some(Instant::now()));
        if !due {
            return;
        }
        if self.room_for_guest(conn) {
            self.become_guest(cx, conn, None);
        } else {
            let why = self.guests_full();
            self.refuse_guest(cx, conn, &why);
        }
    }
}
