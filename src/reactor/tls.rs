//! TLS on a connection: a client session started by the command, a server
//! session started at accept with a deadline for its handshake. The session
//! sits between the socket and the connection's buffers (see `crate::tls`).
//!
//! An accepted TLS connection is not the command's until its handshake is
//! over: only then does the command get `Event::Accepted`
//! (`Ctx::hand_over_if_ready`), so a server never counts, announces or
//! queues for a client that has not proven it speaks TLS. One that fails
//! its handshake is closed with `Event::Closed` and no `Accepted` before it.

use std::sync::Arc;
use std::time::Instant;

use crate::conn::CloseReason;

use super::timer::Deadline;
use super::{ConnId, Ctx, Event, Handler};

/// Plaintext a TLS session may hold before it refuses more (our `out` holds the rest).
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

impl<S> Ctx<S> {
    /// Makes a connection a TLS client session (after connecting): the
    /// handshake starts at the end of this turn, and the command sees only
    /// plaintext from then on. A handshake not finished within
    /// [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT) closes the
    /// connection (a server that does not speak TLS may never answer).
    pub fn start_tls(
        &mut self,
        id: ConnId,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Result<(), rustls::Error> {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return Ok(());
        };
        let mut session = rustls::ClientConnection::new(config, server_name)?;
        session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        conn.tls = Some(Box::new(session.into()));
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id.0);
        }
        self.timers.add(
            Instant::now() + crate::tls::HANDSHAKE_TIMEOUT,
            Deadline::Handshake(id.0),
        );
        Ok(())
    }

    /// Makes an accepted connection a TLS server session, with a deadline for its handshake.
    pub(super) fn start_tls_server(&mut self, id: ConnId, config: Arc<rustls::ServerConfig>) {
        match rustls::ServerConnection::new(config) {
            Ok(mut session) => {
                session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                self.conns[id.0].tls = Some(Box::new(session.into()));
                self.timers.add(
                    Instant::now() + crate::tls::HANDSHAKE_TIMEOUT,
                    Deadline::Handshake(id.0),
                );
            }
            Err(e) => self.close(id, CloseReason::Protocol(format!("tls: {e}"))),
        }
    }

    /// A TLS handshake deadline passed: a connection still handshaking is closed
    /// (a stalled client costs one descriptor for a bounded time, and nobody waits for it).
    pub(super) fn check_handshake(&mut self, key: usize) {
        let stalled = self.conns.get(key).is_some_and(|c| {
            c.tls_handshaking() && (Instant::now() - c.since) >= crate::tls::HANDSHAKE_TIMEOUT
        });
        if stalled {
            self.close(
                ConnId(key),
                CloseReason::Protocol(format!(
                    "tls handshake not finished within {} s",
                    crate::tls::HANDSHAKE_TIMEOUT.as_secs()
                )),
            );
        }
    }

    /// Hands an accepted TLS connection to the command (`Event::Accepted`)
    /// once its handshake is over. Called after each read, where the
    /// handshake ends. Returns false if the connection is gone or closing.
    pub(super) fn hand_over_if_ready<H: Handler<Conn = S>>(
        &mut self,
        handler: &mut H,
        key: usize,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.accept_pending.is_none() || conn.tls_handshaking() {
            return !conn.doomed;
        }
        let listener = usize::from(conn.accept_pending.take().unwrap_or(0));
        crate::trace!(self.tracer, "conn#{key}: tls handshake done, handed over");
        handler.handle(
            self,
            Event::Accepted {
                conn: ConnId(key),
                listener,
            },
        );
        self.conns.get(key).is_some_and(|c| !c.doomed)
    }
}
