//! What a command may do while it handles an event: look up connections,
//! send and queue output, close, open connections, set deadlines, count
//! against rate limits, stop the loop.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;

use crate::conn::{CloseReason, Conn, State};
use crate::trace;

use super::tcp::write_failure;
use super::timer::Deadline;
use super::token::Source;
use super::trace::Tracer;
use super::{Config, ConnId, Ctx, LoopStats, Queued, CLOSE_GRACE};

impl<S> Ctx<S> {
    /// Opens an outgoing connection (non-blocking); [`Event::Connected`](super::Event::Connected) or
    /// [`Event::Closed`](super::Event::Closed) tells how it went.
    pub fn connect(&mut self, addr: SocketAddr, state: S) -> io::Result<ConnId> {
        let stream = TcpStream::connect(addr)?;
        self.adopt(stream, addr, state, true)
    }

    /// Adds a connection made elsewhere (e.g. bound to a chosen source address
    /// first). `connecting`: the handshake is still under way.
    pub fn adopt(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        state: S,
        connecting: bool,
    ) -> io::Result<ConnId> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = if connecting {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .register(&mut stream, Source::Conn(key).token(), interest)?;
        let mut conn = Conn::new(
            stream,
            peer,
            if connecting {
                State::Connecting
            } else {
                State::Open
            },
            state,
        );
        conn.writable_registered = connecting;
        entry.insert(conn);
        trace!(
            self.tracer,
            "conn#{key} {peer}: opened (connecting: {connecting})"
        );
        Ok(ConnId(key))
    }

    /// A connection, if it is still in the table.
    pub fn conn(&self, id: ConnId) -> Option<&Conn<S>> {
        self.conns.get(id.0)
    }

    /// The command's state for a connection.
    pub fn state(&self, id: ConnId) -> Option<&S> {
        self.conns.get(id.0).map(|c| &c.state_of_app)
    }

    /// The command's state for a connection, to change.
    pub fn state_mut(&mut self, id: ConnId) -> Option<&mut S> {
        self.conns.get_mut(id.0).map(|c| &mut c.state_of_app)
    }

    /// Number of connections in the table (including ones closing this turn).
    pub fn n_conns(&self) -> usize {
        self.conns.len()
    }

    /// Fills `out` with the ids of the live connections (not closing), in key order.
    pub fn conn_ids(&self, out: &mut Vec<ConnId>) {
        out.clear();
        out.extend(
            self.conns
                .iter()
                .filter(|(_, c)| !c.doomed)
                .map(|(key, _)| ConnId(key)),
        );
    }

    /// Sends bytes now: written straight to the socket when nothing is queued
    /// ahead of them; what the kernel does not take is copied into the output
    /// buffer and written when the socket is writable.
    ///
    /// The output bound ([`Config::out_limit`]) holds here as in
    /// [`Ctx::queue`]: bytes that would take the connection's queue past it
    /// are refused whole — nothing is written — and the answer is
    /// [`Queued::OverLimit`], given only after what was queued has been
    /// offered to the kernel, so it means the peer is not reading. The
    /// command decides what follows (pause its own source, drop, close);
    /// a byte stream it must not cut should stop producing before that, as
    /// the clients do by pausing stdin below their limit. A command that
    /// sends back what it read under `pause_reads_when_full` never meets the
    /// bound: reads are sized to the room left. [`Queued::Gone`]: the
    /// connection is closed or closing.
    pub fn send(&mut self, id: ConnId, bytes: &[u8]) -> Queued {
        let limit = self.config.out_limit;
        let Some(conn) = self.conns.get_mut(id.0) else {
            return Queued::Gone;
        };
        if conn.doomed {
            return Queued::Gone;
        }
        if bytes.is_empty() {
            return Queued::Yes;
        }
        if conn.out.len().saturating_add(bytes.len()) > limit {
            if !conn.out.is_empty() && conn.state != State::Connecting {
                // As in `queue`: offer what waits first, so that `OverLimit`
                // means the peer is not reading, not that the turn is long.
                match conn.write_out() {
                    Ok(n) if n > 0 => self.mark_dirty(id.0),
                    Ok(_) => {}
                    Err(e) => {
                        let reason = write_failure(conn.state, e);
                        self.close(id, reason);
                        return Queued::Gone;
                    }
                }
            }
            let queued = self.conns[id.0].out.len();
            if queued.saturating_add(bytes.len()) > limit {
                trace!(
                    self.tracer,
                    "{id}: {} B refused, {queued} B queued of {limit} B",
                    bytes.len()
                );
                return Queued::OverLimit { queued };
            }
        }
        let conn = &mut self.conns[id.0];
        let mut rest = bytes;
        if conn.tls.is_some() {
            // Through the session: queue, and write it all at the end of the turn.
            conn.out.push_copy(rest);
            self.mark_dirty(id.0);
            return Queued::Yes;
        }
        if conn.out.is_empty() && conn.state != State::Connecting {
            loop {
                match conn.stream.write(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        if rest.is_empty() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.close(id, CloseReason::Io(e));
                        return Queued::Gone;
                    }
                }
            }
            trace!(
                self.tracer,
                "{id}: wrote {} B directly{}",
                bytes.len() - rest.len(),
                if rest.is_empty() {
                    String::new()
                } else {
                    format!(", kernel full: {} B queued", rest.len())
                }
            );
        }
        if !rest.is_empty() {
            conn.out.push_copy(rest);
            self.after_output_change(id.0);
        }
        Queued::Yes
    }

    /// Queues a shared frame for a connection, to be written at the end of the
    /// turn together with everything else queued for it (one `writev`). The
    /// frame is not copied: many connections can hold the same one.
    ///
    /// A frame that would take the connection over the output limit first
    /// makes the reactor write what is already queued (as much as the kernel
    /// takes, never blocking); only if it does not take enough is the
    /// answer [`Queued::OverLimit`]. So a peer that reads is never called slow
    /// just because one turn queued more than the limit for it.
    pub fn queue(&mut self, id: ConnId, frame: &Rc<[u8]>) -> Queued {
        let limit = self.config.out_limit;
        let Some(conn) = self.conns.get_mut(id.0) else {
            return Queued::Gone;
        };
        if conn.doomed || conn.state == State::Flushing && conn.out.is_empty() {
            return Queued::Gone;
        }
        if conn.out.len() + frame.len() > limit
            && frame.len() <= limit
            && conn.state != State::Connecting
        {
            // Frames queued earlier in this turn have not been offered to the
            // kernel yet. Offer them now, so that `OverLimit` means the peer
            // is not reading, not merely that the turn is long. What is left
            // stays queued (the connection is dirty or watched for WRITABLE,
            // and it is not empty, so the usual flush takes it from here).
            match conn.write_out() {
                Ok(n) => {
                    trace!(
                        self.tracer,
                        "{id}: at the output limit, wrote {n} B early, {} B still queued",
                        conn.out.len()
                    );
                    // The end-of-turn flush keeps the books: WRITABLE
                    // interest, a paused reader, even if nothing is queued below.
                    if n > 0 && !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(id.0);
                    }
                }
                Err(e) => {
                    let reason = write_failure(conn.state, e);
                    self.close(id, reason);
                    return Queued::Gone;
                }
            }
        }
        let queued = conn.out.len();
        if queued + frame.len() > limit {
            return Queued::OverLimit { queued };
        }
        conn.out.push_shared(Rc::clone(frame));
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id.0);
        }
        Queued::Yes
    }

    /// Drops a connection's oldest queued frames (not one already started)
    /// until `need` more bytes fit under the output limit. Returns how many.
    pub fn drop_oldest(&mut self, id: ConnId, need: usize) -> usize {
        let limit = self.config.out_limit;
        let Some(conn) = self.conns.get_mut(id.0) else {
            return 0;
        };
        let dropped = conn.out.drop_oldest(need, limit);
        if dropped > 0 {
            // The queue may now be empty: the end-of-turn flush drops
            // WRITABLE interest then.
            self.mark_dirty(id.0);
        }
        dropped
    }

    /// Closes a connection now (queued output is discarded). The command gets
    /// [`Event::Closed`](super::Event::Closed) at the end of the turn, then the connection is removed.
    pub fn close(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(conn) = self.conns.get_mut(id.0) {
            if !conn.doomed {
                conn.doomed = true;
                self.closing.push((id.0, reason));
            }
        }
    }

    /// Stops reading, writes what is queued, then closes.
    pub fn close_after_flush(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        if conn.tls_handshaking() {
            // Nothing can be delivered before the handshake ends.
            self.close(id, CloseReason::Local("closed during the tls handshake"));
            return;
        }
        if conn.state == State::Flushing {
            // Already closing: its grace runs from the first call.
            return;
        }
        conn.state = State::Flushing;
        let now = Instant::now();
        self.timers
            .add(now + CLOSE_GRACE, Deadline::CloseGrace(id.0, now));
        // Flushing with nothing left goes straight on (close_notify, then a gentle close).
        self.mark_dirty(id.0);
    }

    /// Shuts down our write side once the queued output is written (the
    /// peer sees end of stream; we keep reading until it closes).
    pub fn shutdown_write(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        if conn.tls.is_some() {
            // TLS: close_notify goes after the queued plaintext (see on_drained).
            conn.shutdown_write_when_drained = true;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id.0);
            }
        } else if conn.out.is_empty() {
            let _ = conn.stream.shutdown(Shutdown::Write);
            trace!(self.tracer, "{id}: write side shut down");
        } else {
            conn.shutdown_write_when_drained = true;
        }
    }

    /// Calls back with [`Event::Timer`](super::Event::Timer)`(id)` at `at`.
    /// Every id is the command's own: the reactor's deadlines are kept apart.
    pub fn set_timer(&mut self, at: Instant, id: u64) {
        self.timers.add(at, Deadline::Command(id));
    }

    /// Calls back with [`Event::Timer`](super::Event::Timer)`(id)` after `delay`.
    pub fn set_timer_in(&mut self, delay: Duration, id: u64) {
        self.set_timer(Instant::now() + delay, id);
    }

    /// Counts `n` messages against a connection's `--rate-limit`; once it is
    /// over its rate, reading from it pauses until its bucket refills.
    pub fn charge_messages(&mut self, id: ConnId, n: u32) {
        if let Some(throttle) = self.conns.get_mut(id.0).and_then(|c| c.throttle.as_mut()) {
            throttle.msgs.take(f64::from(n), Instant::now());
        }
    }

    /// Takes one message from a connection's `--rate-limit` if one is
    /// available now; otherwise takes nothing and says how long until one is.
    /// For a command that counts messages one at a time and holds back the
    /// ones over the rate (instead of [`Ctx::charge_messages`], which lets a
    /// whole read through and pauses afterwards). No limit: always `Ok`.
    pub fn take_message(&mut self, id: ConnId) -> Result<(), Duration> {
        let Some(throttle) = self.conns.get_mut(id.0).and_then(|c| c.throttle.as_mut()) else {
            return Ok(());
        };
        let now = Instant::now();
        let wait = throttle.msgs.wait(now);
        if wait.is_zero() {
            throttle.msgs.take(1.0, now);
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Stops reading from a connection until [`Ctx::release_reads`]: the
    /// command holds input it cannot use yet, and must not be given more.
    pub fn hold_reads(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.0) {
            if !conn.held {
                conn.held = true;
                trace!(self.tracer, "{id}: reads held by the command");
            }
        }
    }

    /// Reads a held connection again, at once (its readable edge may be long spent).
    pub fn release_reads(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.0) {
            if conn.held {
                conn.held = false;
                self.ready.push(Source::Conn(id.0));
                trace!(self.tracer, "{id}: reads released by the command");
            }
        }
    }

    /// Ends [`Reactor::run`](super::Reactor::run) after this turn.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// The loop's own figures so far.
    pub fn stats(&self) -> LoopStats {
        let mut stats = self.stats;
        stats.elapsed = self.started.elapsed();
        stats
    }

    /// The tracer, for a command's own trace lines.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The reactor's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }
}
