//! One TCP connection's I/O as the loop drives it: finishing a connect,
//! reading until the socket is empty (or the budget or output room runs
//! out), writing queued output, what follows a drain, the gentle close,
//! write interest exactly while output is pending, and reaping.

use std::fs::File;
use std::io::{self, Read};
use std::net::Shutdown;
use std::time::Instant;

use mio::Interest;

use crate::conn::{CloseReason, State};
use crate::trace;

use super::timer::Deadline;
use super::token::Source;
use super::{ConnId, Ctx, Event, Handler};

impl<S> Ctx<S> {
    pub(super) fn on_conn_event<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        scratch: &mut [u8],
        key: usize,
        event: &mio::event::Event,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed {
            return;
        }
        if event.is_read_closed() {
            conn.peer_hup = true;
        }
        if conn.state == State::Connecting {
            if !self.finish_connect(handler, key) {
                return;
            }
            // The writable edge that announced the connect is spent: write
            // what was queued before it (a request, a ClientHello) now.
            self.flush_conn(handler, key);
        } else if event.is_writable() || event.is_error() {
            self.flush_conn(handler, key);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_conn(handler, scratch, key);
        }
    }

    /// An outgoing connection became writable (or failed): did the handshake work?
    pub(super) fn finish_connect<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        key: usize,
    ) -> bool {
        let conn = &mut self.conns[key];
        let failure = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            self.close(ConnId(key), CloseReason::ConnectFailed(e));
            return false;
        }
        conn.state = State::Open;
        let _ = conn.stream.set_nodelay(true);
        trace!(self.tracer, "conn#{key}: connected");
        handler.handle(self, Event::Connected(ConnId(key)));
        self.after_output_change(key);
        true
    }

    /// Reads a connection until `WouldBlock`, a short read, EOF, the output
    /// limit (backpressure) or the read budget (then: the ready list).
    pub(super) fn read_conn<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        scratch: &mut [u8],
        key: usize,
    ) {
        let id = ConnId(key);
        let mut budget = self.config.read_budget;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.doomed || !conn.wants_read() {
                return;
            }
            let mut room = if self.config.pause_reads_when_full {
                self.config.out_limit.saturating_sub(conn.out.len())
            } else {
                usize::MAX
            }
            .min(scratch.len());
            if let Some(throttle) = conn.throttle.as_mut() {
                let now = Instant::now();
                let wait = throttle.wait(now);
                if !wait.is_zero() {
                    conn.throttled = true;
                    self.timers.add(now + wait, Deadline::ResumeReading(key));
                    trace!(
                        self.tracer,
                        "{id}: over its rate limit, reads paused for {wait:?}"
                    );
                    return;
                }
                if let Some(bytes) = throttle.bytes.as_mut() {
                    // Never lift a backpressure pause (room 0): only narrow the room.
                    if room > 0 {
                        room = room.min(bytes.available(now) as usize).max(1);
                    }
                }
            }
            if room == 0 {
                conn.read_paused = true;
                trace!(
                    self.tracer,
                    "{id}: output full ({} B), reads paused (backpressure)",
                    conn.out.len()
                );
                return;
            }
            match conn.read_plain(&mut scratch[..room]) {
                Ok(0) => {
                    conn.state = State::ReadClosed;
                    conn.peer_hup = true;
                    trace!(self.tracer, "{id}: peer closed its write side (EOF)");
                    handler.handle(self, Event::PeerClosed(id));
                    return;
                }
                Ok(n) => {
                    if let Some(bytes) = conn.throttle.as_mut().and_then(|t| t.bytes.as_mut()) {
                        bytes.take(n as f64, Instant::now());
                    }
                    // TLS yields plaintext record by record: a short read says nothing there.
                    let short = n < room && !conn.peer_hup && conn.tls.is_none();
                    trace!(self.tracer, "{id}: read {n} B");
                    if conn.accept_pending.is_some() && !self.hand_over_if_ready(handler, key) {
                        return;
                    }
                    handler.handle(self, Event::Data(id, &scratch[..n]));
                    if short {
                        // The socket is empty; the next byte raises a new edge.
                        return;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        trace!(self.tracer, "{id}: read budget spent, on ready list");
                        self.ready.push(Source::Conn(key));
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if conn.accept_pending.is_some() && !self.hand_over_if_ready(handler, key) {
                        return;
                    }
                    let Some(conn) = self.conns.get_mut(key) else {
                        return;
                    };
                    // TLS may have answered a handshake message: watch for
                    // writability; a half-close that waited for the handshake may go now.
                    if conn.tls.is_some() {
                        let waiting = conn.shutdown_write_when_drained || !conn.out.is_empty();
                        if waiting && !conn.tls_handshaking() {
                            // The handshake may have just ended inside read_plain: what
                            // waited for it goes out now, not at an edge that may not come.
                            self.mark_dirty(key);
                        }
                        self.after_output_change(key);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.close(id, CloseReason::invalid_data(&e));
                    return;
                }
                Err(e) => {
                    self.close(id, CloseReason::Io(e));
                    return;
                }
            }
        }
    }

    /// Writes a connection's queued output; drives what follows a drain.
    pub(super) fn flush_conn<H: Handler<Conn = S>>(&mut self, handler: &mut H, key: usize) {
        let id = ConnId(key);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        if conn.doomed {
            return;
        }
        if !conn.has_pending_output() {
            if conn.shutdown_write_when_drained || conn.state == State::Flushing {
                self.on_drained(handler, key);
            } else if conn.read_paused {
                self.resume_reading(key);
            }
            // Written early (`Ctx::queue`) or dropped (`Ctx::drop_oldest`)
            // since the last flush: WRITABLE may still be registered.
            self.after_output_change(key);
            return;
        }
        match conn.write_out() {
            Ok(n) => {
                trace!(
                    self.tracer,
                    "{id}: wrote {n} B, {} B still queued",
                    conn.out.len()
                );
                if !conn.has_pending_output() {
                    self.on_drained(handler, key);
                } else if conn.read_paused && conn.out.len() < self.config.out_limit {
                    self.resume_reading(key);
                }
                self.after_output_change(key);
            }
            Err(e) => {
                let reason = write_failure(conn.state, e);
                self.close(id, reason);
            }
        }
    }

    pub(super) fn on_drained<H: Handler<Conn = S>>(&mut self, handler: &mut H, key: usize) {
        let conn = &mut self.conns[key];
        if conn.read_paused {
            self.resume_reading(key);
        }
        let conn = &mut self.conns[key];
        if conn.tls_handshaking() {
            // Plaintext written during the handshake waits inside rustls: not drained yet.
            return;
        }
        if conn.state == State::Flushing {
            if conn.tls.is_some() && !conn.tls_close_sent {
                if let Some(tls) = conn.tls.as_mut() {
                    tls.send_close_notify();
                }
                conn.tls_close_sent = true;
                self.mark_dirty(key);
                return;
            }
            self.close_gently(key);
            return;
        }
        if conn.shutdown_write_when_drained {
            match conn.tls.as_mut() {
                // Not before the handshake ends: its last flight drains again.
                Some(tls) if tls.is_handshaking() => {}
                // TLS says goodbye after the last plaintext; the socket follows once that is out.
                Some(tls) if !conn.tls_close_sent => {
                    tls.send_close_notify();
                    conn.tls_close_sent = true;
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(key);
                    }
                    return;
                }
                _ => {
                    conn.shutdown_write_when_drained = false;
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    trace!(self.tracer, "conn#{key}: drained, write side shut down");
                }
            }
        }
        handler.handle(self, Event::Drained(ConnId(key)));
    }

    /// Everything owed to the peer has been handed to the kernel: shut our
    /// write side, read and drop whatever the peer sent that nobody will
    /// read, then close. Closing with unread bytes in the receive queue
    /// would make the kernel send a reset, and a reset makes the peer's
    /// kernel throw away what the peer has not read yet: our last words.
    pub(super) fn close_gently(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let _ = conn.stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 4096];
        let mut budget = self.config.read_budget;
        while budget > 0 {
            match conn.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
        self.close(ConnId(key), CloseReason::Done);
    }

    /// A closing connection's grace ran out: close it now, whatever is left.
    /// `since` is when it began closing; a connection in the table that was
    /// opened after that reused the key of the one the deadline was for.
    pub(super) fn end_close_grace(&mut self, key: usize, since: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.state == State::Flushing && conn.since <= since {
            self.close(
                ConnId(key),
                CloseReason::Local("the peer did not take its last output in time"),
            );
        }
    }

    /// A rate-limit pause is over: read the connection again, at once (its
    /// readable edge may be long spent). Stale ids are harmless: a connection
    /// that is not throttled is left alone, one still in debt pauses again.
    pub(super) fn end_throttle(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.throttled {
                conn.throttled = false;
                self.ready.push(Source::Conn(key));
                trace!(
                    self.tracer,
                    "conn#{key}: rate-limit pause over, reads resumed"
                );
            }
        }
    }

    /// Puts a connection on the list written at the end of this turn.
    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Trap (a): the paused connection's readable edge is already spent, so
    /// it goes on the ready list to be read at once.
    pub(super) fn resume_reading(&mut self, key: usize) {
        self.conns[key].read_paused = false;
        self.ready.push(Source::Conn(key));
        trace!(
            self.tracer,
            "conn#{key}: output drained below the limit, reads resumed"
        );
    }

    /// Registers WRITABLE exactly while output is pending (or a connect is under way).
    pub(super) fn after_output_change(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let wanted = conn.wants_write();
        if wanted == conn.writable_registered || conn.doomed {
            return;
        }
        let interest = if wanted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self
            .poll
            .registry()
            .reregister(&mut conn.stream, Source::Conn(key).token(), interest)
        {
            Ok(()) => {
                conn.writable_registered = wanted;
                trace!(
                    self.tracer,
                    "conn#{key}: interest {}",
                    if wanted { "READ+WRITE" } else { "READ" }
                );
            }
            Err(e) => self.close(ConnId(key), CloseReason::Io(e)),
        }
    }

    /// Removes the connections marked this turn, a batch at a time: each
    /// command hears `Closed` while its connection is still in the table;
    /// then the batch is removed, and the ready and dirty lists are swept
    /// once for the whole batch (one pass each, not one per connection: a
    /// thousand clients leaving at once must not cost a million steps).
    /// Keys freed here are reused only after the sweep, so it cannot remove
    /// a new connection's entries.
    pub(super) fn reap<H: Handler<Conn = S>>(&mut self, handler: &mut H) {
        while !self.closing.is_empty() {
            let closing = std::mem::take(&mut self.closing);
            for (key, reason) in &closing {
                if self.config.last_words {
                    self.last_words(handler, *key, reason);
                }
                handler.handle(self, Event::Closed(ConnId(*key), reason));
            }
            let mut removed = Vec::with_capacity(closing.len());
            for (key, reason) in closing {
                let mut conn = self.conns.remove(key);
                let _ = self.poll.registry().deregister(&mut conn.stream);
                if conn.counted_per_ip {
                    let ip = conn.peer.ip();
                    if let Some(count) = self.per_ip.get_mut(&ip) {
                        *count -= 1;
                        if *count == 0 {
                            self.per_ip.remove(&ip);
                        }
                    }
                }
                trace!(self.tracer, "conn#{key} {}: closed ({reason})", conn.peer);
                removed.push(key);
            }
            removed.sort_unstable();
            let gone = |key: &usize| removed.binary_search(key).is_ok();
            self.ready.retain(|source| match source {
                Source::Conn(key) => !gone(key),
                _ => true,
            });
            self.dirty.retain(|key| !gone(key));
            // Descriptors are free again: a listener paused for lack of them may go on.
            for (index, listener) in self.listeners.iter_mut().enumerate() {
                if listener.paused {
                    listener.paused = false;
                    self.ready.push(Source::Listener(index));
                    log::info!("a descriptor is free: accepting again");
                }
            }
            if self.spare_fd.is_none() {
                self.spare_fd = File::open("/dev/null").ok();
            }
        }
    }
}

impl<S> Ctx<S> {
    /// [`Config::last_words`](super::Config::last_words): what a plain-TCP
    /// peer sent before a reset or a broken pipe ended the connection, still
    /// in the kernel's receive queue, handed over before [`Event::Closed`].
    fn last_words<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        key: usize,
        reason: &CloseReason,
    ) {
        let CloseReason::Io(error) = reason else {
            return;
        };
        if !matches!(
            error.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut budget = self.config.read_budget;
        while budget > 0 {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.tls.is_some() {
                return;
            }
            match conn.stream.read(&mut buf) {
                Ok(n) if n > 0 => {
                    budget = budget.saturating_sub(n);
                    trace!(
                        self.tracer,
                        "conn#{key}: read {n} B the peer sent before it went"
                    );
                    handler.handle(self, Event::Data(ConnId(key), &buf[..n]));
                }
                _ => return,
            }
        }
    }
}

/// Why a connection ends when a write fails: a peer that already closed its
/// side simply left before taking everything; otherwise it is an I/O error.
pub(super) fn write_failure(state: State, error: io::Error) -> CloseReason {
    if state == State::ReadClosed {
        CloseReason::PeerGone
    } else {
        CloseReason::Io(error)
    }
}
