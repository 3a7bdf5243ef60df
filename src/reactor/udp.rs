//! The reactor's side of the one UDP socket: reading datagrams until
//! `WouldBlock`, draining the error queue (ICMP reports name the peer), and
//! write interest only while a command asks for it.
//!
//! The rule it keeps: an error is reported to the command and the socket is
//! tried again later, never at once: an ICMP report is taken from the error
//! queue and reading goes on; any other error sets the socket aside until a
//! backoff deadline (10 ms doubling to 1 s), so an error that repeats costs a
//! few wake-ups a second instead of a spinning loop.

use std::io;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::Interest;

use crate::trace;
use crate::udp;

use super::timer::Deadline;
use super::token::Source;
use super::{Ctx, Event, Handler};

impl<S> Ctx<S> {
    /// Sets the UDP socket (one per reactor), asking the kernel to report
    /// unreachable peers and dropped datagrams (see [`crate::udp`]).
    pub fn set_udp(&mut self, mut socket: UdpSocket) -> io::Result<()> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        if let Err(e) = udp::enable_reports(&socket, ipv6) {
            log::warn!("udp: vanished peers and dropped datagrams will not be reported: {e}");
        }
        self.poll
            .registry()
            .register(&mut socket, Source::Udp.token(), Interest::READABLE)?;
        self.udp = Some(socket);
        Ok(())
    }

    /// The UDP socket, to send with.
    pub fn udp(&self) -> Option<&UdpSocket> {
        self.udp.as_ref()
    }

    /// The kernel's running count of datagrams the UDP socket dropped because
    /// its receive buffer was full (`SO_RXQ_OVFL`), as of the latest datagram
    /// that carried it. Drops after the last datagram show up only with the
    /// next one; [`udp::drops_now`] reads the counter directly.
    pub fn udp_dropped(&self) -> u32 {
        self.udp_dropped
    }

    /// Asks for [`Event::UdpWritable`] when the UDP socket can take more (after a
    /// send said `WouldBlock`); `false` stops asking.
    pub fn udp_want_writable(&mut self, wanted: bool) {
        if wanted == self.udp_writable_wanted {
            return;
        }
        self.udp_writable_wanted = wanted;
        let interest = if wanted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Some(socket) = self.udp.as_mut() {
            if let Err(e) = self
                .poll
                .registry()
                .reregister(socket, Source::Udp.token(), interest)
            {
                log::warn!("udp: cannot change interest: {e}");
            }
        }
    }

    /// Stops reading datagrams until [`Ctx::release_udp_reads`]: the command
    /// cannot use more now (say, its stdout is full). The kernel keeps what
    /// fits in the socket's receive buffer and drops the rest, counted.
    pub fn hold_udp_reads(&mut self) {
        if !self.udp_held {
            self.udp_held = true;
            trace!(self.tracer, "udp: reads held by the command");
        }
    }

    /// Reads datagrams again, at once (the readable edge may be long spent).
    pub fn release_udp_reads(&mut self) {
        if self.udp_held {
            self.udp_held = false;
            trace!(self.tracer, "udp: reads released by the command");
            if !self.ready.contains(&Source::Udp) {
                self.ready.push(Source::Udp);
            }
        }
    }

    pub(super) fn on_udp_event<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        scratch: &mut [u8],
        event: &mio::event::Event,
    ) {
        if event.is_writable() && self.udp_writable_wanted {
            handler.handle(self, Event::UdpWritable);
        }
        if event.is_error() {
            self.read_udp_errors(handler);
        }
        if event.is_readable() || event.is_error() {
            self.read_udp(handler, scratch);
        }
    }

    /// Reads datagrams until `WouldBlock` or the read budget (then: the ready
    /// list), unless an error has set the socket aside (then: its retry deadline).
    pub(super) fn read_udp<H: Handler<Conn = S>>(&mut self, handler: &mut H, scratch: &mut [u8]) {
        let mut budget = self.config.read_budget;
        loop {
            if self.udp_held || self.udp_backoff.waiting() {
                return;
            }
            let Some(socket) = self.udp.as_ref() else {
                return;
            };
            match udp::recv_datagram(socket, scratch) {
                Ok(datagram) => {
                    self.udp_backoff.succeeded();
                    let n = datagram.len;
                    let from = datagram.from;
                    if let Some(dropped) = datagram.drops {
                        self.udp_dropped = dropped;
                    }
                    if datagram.truncated {
                        log::warn!("udp: a datagram from {from} was cut to {n} B");
                    }
                    trace!(self.tracer, "udp: {n} B from {from}");
                    handler.handle(self, Event::Datagram(&scratch[..n], from));
                    budget = budget.saturating_sub(n.max(1));
                    if budget == 0 {
                        self.ready.push(Source::Udp);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if udp::is_icmp_error(&e) => {
                    // An ICMP report was pending; its details wait on the error queue.
                    if !self.read_udp_errors(handler) {
                        handler.handle(self, Event::UdpError(e));
                    }
                }
                Err(e) => {
                    trace!(self.tracer, "udp: error {e}");
                    handler.handle(self, Event::UdpError(e));
                    // It may repeat at every read: come back after a backoff,
                    // not next turn (that would spin), and not never (what
                    // waits behind it would raise no edge).
                    if let Some(wait) = self.udp_backoff.fail() {
                        self.stats.udp_errors += 1;
                        trace!(self.tracer, "udp: reading again in {wait:?}");
                        self.timers.add(Instant::now() + wait, Deadline::RetryUdp);
                    }
                    return;
                }
            }
        }
    }

    /// The UDP socket's retry deadline: read it again.
    pub(super) fn retry_udp<H: Handler<Conn = S>>(&mut self, handler: &mut H, scratch: &mut [u8]) {
        self.udp_backoff.retry_due();
        self.read_udp(handler, scratch);
    }

    /// Drains the UDP socket's error queue (ICMP reports); returns whether it held any.
    pub(super) fn read_udp_errors<H: Handler<Conn = S>>(&mut self, handler: &mut H) -> bool {
        let mut any = false;
        loop {
            let Some(socket) = self.udp.as_ref() else {
                return any;
            };
            match udp::recv_error(socket) {
                Ok(None) => return any,
                Ok(Some(report)) => {
                    any = true;
                    trace!(
                        self.tracer,
                        "udp: error queue: {} about {:?} (ICMP from {:?})",
                        report.error,
                        report.peer,
                        report.offender
                    );
                    let event = match report.peer {
                        Some(peer) if report.port_unreachable => Event::PeerUnreachable(peer),
                        Some(peer) => Event::UdpError(io::Error::new(
                            report.error.kind(),
                            format!("{peer}: {}", report.error),
                        )),
                        None => Event::UdpError(report.error),
                    };
                    handler.handle(self, event);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    trace!(self.tracer, "udp: reading the error queue: {e}");
                    return any;
                }
            }
        }
    }
}
