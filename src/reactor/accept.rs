//! Listeners and admission: accepting until `WouldBlock`, the access rules
//! and per-IP limits, refusals, and the spare descriptor that lets a server
//! out of descriptors still turn a client away instead of spinning.
//!
//! The rule it keeps: a listener is drained on every edge, and when an error
//! stops the draining early, the listener is tried again without waiting
//! for an edge (clients already in the backlog raise none): at once, through
//! the ready list, after errors that were one client's; after a backoff
//! deadline (10 ms doubling to 1 s) after errors that may last, such as the
//! kernel running out of memory; and when a connection closes, after the
//! descriptors ran out. Never in a loop that spins.
//!
//! A refusal is logged at most once a second per cause ([`Refusals`]): the
//! first in full, with the client's address, the rest as one line with their
//! count when the second is over, so a flood of connections cannot flood the log.

use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::Interest;

use crate::loglimit::{Note, RateLog};
use crate::ratelimit::Throttle;
use crate::trace;

use super::timer::{Backoff, Deadline};
use super::token::Source;
use super::{Ctx, Event, Handler};

/// Accept errors that were one client's (it is gone) handled in a row before
/// the listener goes on the ready list, so other sources get their turn.
const CLIENT_ERRORS_AT_ONCE: usize = 64;

/// Why a connection was refused at accept: one log cause each.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// `--allow`/`--deny`.
    Rule,
    /// `--max-conns-per-ip`.
    PerIp,
    /// `--max-conns`.
    Full,
    /// The open-file limit.
    NoDescriptors,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::Rule,
        Refusal::PerIp,
        Refusal::Full,
        Refusal::NoDescriptors,
    ];

    /// The cause, as the summary line gives it.
    fn cause(self) -> &'static str {
        match self {
            Refusal::Rule => "by --allow/--deny",
            Refusal::PerIp => "over --max-conns-per-ip",
            Refusal::Full => "the server is full (--max-conns)",
            Refusal::NoDescriptors => "out of file descriptors",
        }
    }
}

/// The log of refusals, one [`RateLog`] per cause.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    logs: [RateLog; 4],
}

pub(super) struct Listener {
    pub(super) socket: TcpListener,
    /// Accepting stopped because descriptors ran out; resumed when a connection closes.
    pub(super) paused: bool,
    /// What a client refused at this listener is told, if not `Config::full_notice`.
    pub(super) full_notice: Option<Vec<u8>>,
    /// Accepting failed for a reason that may pass: when to try again.
    pub(super) backoff: Backoff,
}

impl<S> Ctx<S> {
    /// Adds a listening socket; returns its number for [`Event::Accepted`].
    pub fn add_listener(&mut self, mut socket: TcpListener) -> io::Result<usize> {
        let index = self.listeners.len();
        self.poll.registry().register(
            &mut socket,
            Source::Listener(index).token(),
            Interest::READABLE,
        )?;
        self.listeners.push(Listener {
            socket,
            paused: false,
            full_notice: None,
            backoff: Backoff::default(),
        });
        Ok(index)
    }

    /// Binds a TCP listener on `bind:port` (see [`crate::net::listen_tcp`]) and adds
    /// it; returns its number and the address it got (the port, when 0 was asked).
    pub fn listen(&mut self, bind: IpAddr, port: u16) -> crate::error::Result<(usize, SocketAddr)> {
        use crate::error::Error;
        let socket = crate::net::listen_tcp(bind, port)?;
        let index = self
            .add_listener(socket)
            .map_err(|e| Error::io("registering the listener", e))?;
        let addr = self
            .listener_addr(index)
            .map_err(|e| Error::io("reading the listener address", e))?;
        Ok((index, addr))
    }

    /// Sets what a client refused at listener `index` is told (a listener
    /// whose clients speak another protocol than the server's main one).
    pub fn set_full_notice(&mut self, index: usize, notice: Vec<u8>) {
        if let Some(listener) = self.listeners.get_mut(index) {
            listener.full_notice = Some(notice);
        }
    }

    /// What a client refused at listener `index` is told: nothing on a TLS
    /// server, whose clients expect a handshake (plain text there would only
    /// read as a broken one; the closed connection says enough).
    pub(super) fn full_notice(&self, index: usize) -> &[u8] {
        if self.config.tls_server.is_some() {
            return &[];
        }
        self.listeners
            .get(index)
            .and_then(|l| l.full_notice.as_deref())
            .unwrap_or(&self.config.full_notice)
    }

    /// The local address of listener `index`.
    pub fn listener_addr(&self, index: usize) -> io::Result<SocketAddr> {
        self.listeners[index].socket.local_addr()
    }

    /// Stops accepting: the listeners are closed (used at shutdown).
    pub fn stop_accepting(&mut self) {
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        self.ready.retain(|s| !matches!(s, Source::Listener(_)));
    }

    pub(super) fn accept_all<H: Handler<Conn = S>>(&mut self, handler: &mut H, index: usize)
    where
        S: Default,
    {
        let mut client_errors = 0;
        loop {
            let Some(listener) = self.listeners.get_mut(index) else {
                return;
            };
            if listener.paused || listener.backoff.waiting() {
                return;
            }
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    listener.backoff.succeeded();
                    if !self.admit(peer) {
                        drop(stream);
                        continue;
                    }
                    if self.conns.len() >= self.config.max_conns {
                        self.stats.refused += 1;
                        if self.log_refusal(Refusal::Full) {
                            log::warn!(
                                "refused {peer}: {} connections is the limit (--max-conns)",
                                self.config.max_conns
                            );
                        }
                        refuse(stream, self.full_notice(index));
                        continue;
                    }
                    self.stats.accepted += 1;
                    let _ = stream.set_nodelay(true);
                    match self.adopt(stream, peer, S::default(), false) {
                        Ok(id) => {
                            if self.config.max_conns_per_ip > 0 {
                                *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
                                self.conns[id.0].counted_per_ip = true;
                            }
                            if let Some(limit) = self.config.rate_limit {
                                self.conns[id.0].throttle =
                                    Some(Box::new(Throttle::new(limit, Instant::now())));
                            }
                            trace!(
                                self.tracer,
                                "listener#{index}: accepted {id} from {peer} ({} open)",
                                self.conns.len()
                            );
                            if let Some(config) = self.config.tls_server.clone() {
                                // The command hears of it once the handshake is
                                // over (`tls.rs`): until then it is nobody's client.
                                self.conns[id.0].accept_pending = Some(index as u8);
                                self.start_tls_server(id, config);
                                continue;
                            }
                            handler.handle(
                                self,
                                Event::Accepted {
                                    conn: id,
                                    listener: index,
                                },
                            );
                        }
                        Err(e) => log::warn!("cannot register connection from {peer}: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => {
                    if !self.refuse_with_spare(index, &e) {
                        return;
                    }
                }
                Err(e) if is_one_clients_error(&e) => {
                    // That client is gone (or was refused by a firewall rule);
                    // the listener is fine and the next one may be waiting.
                    log::debug!("accept on listener#{index}: {e}");
                    client_errors += 1;
                    if client_errors == CLIENT_ERRORS_AT_ONCE {
                        self.ready.push(Source::Listener(index));
                        return;
                    }
                }
                Err(e) => {
                    // The listener itself could not accept (say, ENOBUFS or
                    // ENOMEM). Clients may be waiting in the backlog, and
                    // they raise no new edge: come back after a backoff.
                    self.retry_accept_later(index, &e);
                    return;
                }
            }
        }
    }

    /// Sets listener `index` aside after an error that may pass, with a
    /// deadline to try it again (see [`Backoff`]).
    pub(super) fn retry_accept_later(&mut self, index: usize, error: &io::Error) {
        let Some(listener) = self.listeners.get_mut(index) else {
            return;
        };
        let Some(wait) = listener.backoff.fail() else {
            return;
        };
        self.stats.accept_errors += 1;
        if wait == Backoff::FIRST {
            log::warn!("accept on listener#{index}: {error}; trying again in {wait:?}");
        } else {
            log::debug!("accept on listener#{index}: {error}; trying again in {wait:?}");
        }
        self.timers
            .add(Instant::now() + wait, Deadline::RetryAccept(index));
    }

    /// A listener's retry deadline: accept again, whatever stopped it.
    pub(super) fn retry_accept<H: Handler<Conn = S>>(&mut self, handler: &mut H, index: usize)
    where
        S: Default,
    {
        let Some(listener) = self.listeners.get_mut(index) else {
            return;
        };
        listener.backoff.retry_due();
        listener.paused = false;
        trace!(self.tracer, "listener#{index}: retrying accept");
        self.accept_all(handler, index);
    }

    /// Access rules and the per-IP limit, checked at accept. A refused
    /// client is logged with its address and counted; it is closed without a word.
    pub(super) fn admit(&mut self, peer: SocketAddr) -> bool {
        if let Err(why) = self.config.access.check(peer.ip()) {
            self.stats.refused_by_rule += 1;
            if self.log_refusal(Refusal::Rule) {
                log::warn!("refused {peer}: {why}");
            }
            return false;
        }
        let limit = self.config.max_conns_per_ip;
        if limit > 0 && self.per_ip.get(&peer.ip()).copied().unwrap_or(0) as usize >= limit {
            self.stats.refused_per_ip += 1;
            if self.log_refusal(Refusal::PerIp) {
                log::warn!(
                    "refused {peer}: {limit} connections from {} already (--max-conns-per-ip)",
                    peer.ip()
                );
            }
            return false;
        }
        true
    }

    /// Counts one refusal; true when it should be logged now, in full. The
    /// first one a second is; the others are counted, and a deadline at the
    /// end of that second logs their number (`log_refusal_summaries`).
    fn log_refusal(&mut self, refusal: Refusal) -> bool {
        match self.refusals.logs[refusal as usize].note(Instant::now()) {
            Note::Log => true,
            Note::CountedFirst(at) => {
                self.timers.add(at, Deadline::RefusalSummary);
                false
            }
            Note::Counted => false,
        }
    }

    /// A second of refusals is over: one line per cause with how many were
    /// not logged on their own.
    pub(super) fn log_refusal_summaries(&mut self) {
        let now = Instant::now();
        for refusal in Refusal::ALL {
            if let Some(n) = self.refusals.logs[refusal as usize].summary(now) {
                log::warn!(
                    "refused {n} more connection(s) in the last second: {}",
                    refusal.cause()
                );
            }
        }
    }

    /// Out of descriptors: free the spare, accept one waiting client, tell it
    /// the server is full, close it, take the spare back. Without a spare,
    /// pause the listener until a connection closes. Returns whether to go on
    /// accepting.
    pub(super) fn refuse_with_spare(&mut self, index: usize, error: &io::Error) -> bool {
        let Some(spare) = self.spare_fd.take() else {
            self.pause_accepting(index, error);
            return false;
        };
        drop(spare);
        let go_on = match self.listeners[index].socket.accept() {
            Ok((stream, peer)) => {
                self.stats.refused += 1;
                if self.log_refusal(Refusal::NoDescriptors) {
                    log::warn!("refused {peer}: out of file descriptors ({error})");
                }
                refuse(stream, self.full_notice(index));
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                self.retry_accept_later(index, &e);
                false
            }
        };
        // Only now, with the refused client's descriptor closed, is there one
        // to take back; taken earlier, the refused socket would still hold it
        // and the next client would find no spare.
        self.spare_fd = File::open("/dev/null").ok();
        if self.spare_fd.is_none() {
            self.pause_accepting(index, error);
            return false;
        }
        go_on
    }

    /// Out of descriptors with no spare to refuse a client with: stop
    /// accepting until a connection closes, or the retry deadline finds a
    /// descriptor free again (something other than a connection may free one).
    fn pause_accepting(&mut self, index: usize, error: &io::Error) {
        if !self.listeners[index].paused {
            log::warn!(
                "out of file descriptors ({error}); accepting paused until a connection closes"
            );
            self.listeners[index].paused = true;
        }
        self.retry_accept_later(index, error);
    }
}

/// Tells a client it cannot be served, best effort, and closes it.
fn refuse(mut stream: TcpStream, notice: &[u8]) {
    let _ = stream.write(notice);
    let _ = stream.shutdown(Shutdown::Write);
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Errors that end one waiting connection, not the listener: the client
/// aborted, a firewall rule refused it, or (as accept(2) warns for TCP on
/// Linux) a network error already pending on the new socket. The next
/// client in the backlog may be fine.
fn is_one_clients_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}
