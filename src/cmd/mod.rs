//! The commands. Each file holds one command's protocol logic as a
//! [`Handler`](crate::reactor::Handler) plus the function that sets up its
//! reactor; none of them touches readiness or `WouldBlock`.

pub mod access_args;
pub mod chat;
pub mod chat_client;
pub mod chat_server;
pub mod dial;
pub mod echo_client;
pub mod echo_server;
pub mod ips;
pub mod rand;
pub mod stress;
pub mod tcp_chat;
pub mod udp_chat;
pub mod udp_sink;
pub mod udp_stream;

use crate::error::{Error, Result};
use crate::reactor::{Config, Reactor};
use crate::tls::{self, ClientTlsArgs};
use dial::{DialArgs, Dialer};

/// Sets up a client's loop, the same for every client command: a reactor
/// that serves stdin and never pauses reading the server (reading is what
/// lets the server make progress), and a [`Dialer`] already trying the
/// server's first address (then each other one in turn, TLS on top when
/// asked for). The command passes its events to the dialer until it says
/// `Connected`. `out_limit` bounds what the client queues for the server.
pub fn open_client(
    server: &str,
    dial_args: &DialArgs,
    tls_args: &ClientTlsArgs,
    out_limit: usize,
    trace: bool,
) -> Result<(Reactor<()>, Dialer)> {
    let tls_config = tls_args.config()?;
    let tls = match tls_config {
        Some(config) => Some((config, tls::server_name(server)?)),
        None => None,
    };
    // Resolve before the reactor exists: the resolver may block, and until
    // the reactor installs its handlers, Ctrl+C simply ends the program.
    let mut dialer = Dialer::new(server, dial_args, tls)?;
    let config = Config {
        stdin: true,
        trace,
        out_limit,
        pause_reads_when_full: false,
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    dialer.start(reactor.cx())?;
    Ok((reactor, dialer))
}
