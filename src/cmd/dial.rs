//! A client's connection to its server, made inside the loop.
//!
//! The server's name is resolved first (the resolver blocks, so it runs
//! before the reactor installs its signal handlers: Ctrl+C still ends the
//! program there). Then each address it resolved to is tried in turn with a
//! non-blocking connect, each for at most `--connect-timeout`, while the loop
//! runs: SIGINT or SIGTERM ends the attempt at once, and nothing waits
//! anywhere but in the poll. Stdin is not read until the connection is up,
//! so nothing typed meanwhile is lost between two attempts.
//!
//! What it must not do: block in `connect(2)`, or hand the command a
//! connection before its handshake is done.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args as ClapArgs;

use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::reactor::{signals, ConnId, Ctx, Event};

/// Default of `--connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest `--connect-timeout` taken: a day.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Timer ids of the dialer: this bit plus the attempt's number, so that the
/// deadline of an attempt already over is told apart.
const TIMER_DIAL: u64 = 1 << 48;

/// The connect options every client command takes.
#[derive(Debug, Clone, ClapArgs)]
pub struct DialArgs {
    /// How long to wait for each of the server's addresses to answer before
    /// the next is tried: 500ms, 10s, 2m (a bare number is seconds), at most
    /// a day. Ctrl+C ends the wait at once.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub connect_timeout: Duration,
}

/// Parses `--connect-timeout`: a duration above zero, at most a day.
fn parse_timeout(text: &str) -> std::result::Result<Duration, String> {
    let timeout = crate::units::parse_duration_nonzero(text)?;
    if timeout > MAX_CONNECT_TIMEOUT {
        return Err(format!("'{text}' is more than a day"));
    }
    Ok(timeout)
}

/// TLS for the connection once it is up: the configuration and the name to check.
pub type ClientTls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// Where the dialer stands after an event.
#[derive(Debug)]
pub enum Dialed {
    /// The event was not the dialer's: the command handles it.
    NotMine,
    /// Still trying.
    Waiting,
    /// Connected (and TLS started, if asked for); stdin is read from now on.
    Connected(ConnId),
    /// Every address failed, or a signal ended the attempt.
    Failed(Error),
}

/// The addresses to try, the one being tried and what went wrong so far.
#[derive(Debug)]
pub struct Dialer {
    addrs: Vec<SocketAddr>,
    next: usize,
    timeout: Duration,
    tls: Option<ClientTls>,
    /// Counts attempts; names the current attempt's deadline.
    attempt: u64,
    /// The connection being tried and its address.
    trying: Option<(ConnId, SocketAddr)>,
    /// The current attempt ran out of time (its close is ours).
    timed_out: bool,
    /// Why the latest attempt failed.
    last_error: Option<Error>,
    connected: bool,
}

impl Dialer {
    /// Resolves `server` (HOST:PORT) and prepares to try its addresses in turn.
    pub fn new(server: &str, args: &DialArgs, tls: Option<ClientTls>) -> Result<Dialer> {
        Ok(Dialer {
            addrs: crate::addr::resolve_all(server)?,
            next: 0,
            timeout: args.connect_timeout,
            tls,
            attempt: 0,
            trying: None,
            timed_out: false,
            last_error: None,
            connected: false,
        })
    }

    /// True once the connection is up.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Starts the first attempt; stdin waits until the connection is up.
    /// Fails at once only if no address could even start a connect.
    pub fn start<S: Default>(&mut self, cx: &mut Ctx<S>) -> Result<()> {
        cx.pause_stdin();
        match self.try_next(cx) {
            Dialed::Failed(error) => Err(error),
            _ => Ok(()),
        }
    }

    /// Takes the events that belong to connecting; see [`Dialed`].
    pub fn on_event<S: Default>(&mut self, cx: &mut Ctx<S>, event: &Event<'_>) -> Dialed {
        if self.connected {
            return Dialed::NotMine;
        }
        let Some((trying, addr)) = self.trying else {
            return Dialed::NotMine;
        };
        match event {
            Event::Connected(id) if *id == trying => self.on_connected(cx, trying, addr),
            Event::Closed(id, reason) if *id == trying => {
                self.last_error = Some(Error::Connect {
                    addr,
                    source: self.why(reason),
                });
                self.trying = None;
                self.try_next(cx)
            }
            Event::Timer(id) if *id == TIMER_DIAL + self.attempt => {
                self.timed_out = true;
                cx.close(trying, CloseReason::Local("connect timed out"));
                Dialed::Waiting
            }
            Event::Timer(id) if id & TIMER_DIAL != 0 => Dialed::Waiting,
            Event::Signal(signal) => {
                cx.close(trying, CloseReason::Local("interrupted"));
                self.trying = None;
                Dialed::Failed(Error::Failed(format!(
                    "{}: stopped while connecting to {addr}",
                    signals::name(*signal)
                )))
            }
            _ => Dialed::NotMine,
        }
    }

    fn on_connected<S: Default>(
        &mut self,
        cx: &mut Ctx<S>,
        conn: ConnId,
        addr: SocketAddr,
    ) -> Dialed {
        self.connected = true;
        log::info!("connected to {addr}");
        if let Some((config, name)) = self.tls.take() {
            if let Err(e) = cx.start_tls(conn, config, name) {
                cx.close(conn, CloseReason::Local("tls setup failed"));
                return Dialed::Failed(Error::Failed(format!("tls: {e}")));
            }
        }
        cx.resume_stdin();
        Dialed::Connected(conn)
    }

    /// Starts a connect to the next address that accepts one; `Failed` when none is left.
    fn try_next<S: Default>(&mut self, cx: &mut Ctx<S>) -> Dialed {
        while let Some(&addr) = self.addrs.get(self.next) {
            self.next += 1;
            if let Some(error) = &self.last_error {
                log::info!("{error}; trying {addr}");
            }
            match cx.connect(addr, S::default()) {
                Ok(conn) => {
                    log::debug!("connecting to {addr}");
                    self.attempt += 1;
                    self.timed_out = false;
                    self.trying = Some((conn, addr));
                    cx.set_timer_in(self.timeout, TIMER_DIAL + self.attempt);
                    return Dialed::Waiting;
                }
                Err(source) => self.last_error = Some(Error::Connect { addr, source }),
            }
        }
        Dialed::Failed(
            self.last_error.take().unwrap_or_else(|| {
                Error::Failed("the server's name resolved to no address".into())
            }),
        )
    }

    /// Why an attempt's connection closed, as an OS error for the message.
    fn why(&self, reason: &CloseReason) -> io::Error {
        if self.timed_out {
            return io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?} (--connect-timeout)", self.timeout),
            );
        }
        match reason {
            CloseReason::ConnectFailed(e) | CloseReason::Io(e) => match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            },
            other => io::Error::other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_a_duration_above_zero_and_at_most_a_day() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("25h").is_err());
        assert_eq!(
            parse_timeout(&DEFAULT_CONNECT_TIMEOUT.as_secs().to_string()),
            Ok(DEFAULT_CONNECT_TIMEOUT)
        );
    }
}
