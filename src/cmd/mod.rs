//! The commands. Each file holds one command's protocol logic as a
//! [`Handler`](crate::reactor::Handler) plus the function that sets up its
//! reactor; none of them touches readiness or `WouldBlock`.

pub mod access_args;
pub mod chat;
pub mod chat_client;
pub mod chat_server;
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
use crate::reactor::{Config, ConnId, Reactor};
use crate::tls::{self, ClientTlsArgs};

/// Sets up a client's loop, the same for every client command: a reactor
/// that serves stdin and never pauses reading the server (reading is what
/// lets the server make progress), one connection to `server` (every
/// address it resolves to, in turn), and TLS on it when asked for.
/// `out_limit` bounds what the client queues for the server.
pub fn open_client(
    server: &str,
    tls_args: &ClientTlsArgs,
    out_limit: usize,
    trace: bool,
) -> Result<(Reactor<()>, ConnId)> {
    let tls_config = tls_args.config()?;
    let server_name = match tls_config {
        Some(_) => Some(tls::server_name(server)?),
        None => None,
    };
    let config = Config {
        stdin: true,
        trace,
        out_limit,
        pause_reads_when_full: false,
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let (stream, addr) = crate::net::connect_to(server)?;
    log::info!("connected to {addr}");
    let conn = reactor
        .cx()
        .adopt(stream, addr, (), false)
        .map_err(|e| Error::io("registering the connection", e))?;
    if let (Some(config), Some(name)) = (tls_config, server_name) {
        reactor
            .cx()
            .start_tls(conn, config, name)
            .map_err(|e| Error::Failed(format!("tls: {e}")))?;
    }
    Ok((reactor, conn))
}
