//! What a command sees of the reactor: connection ids, settings, the events
//! it is handed and the trait it implements. Readiness never appears here.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::access::AccessList;
use crate::conn::CloseReason;
use crate::ratelimit::RateLimit;

use super::Ctx;

/// A connection's identity: its slab key, which is also its `mio::Token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Settings of one reactor. Every bound has a default; see [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes a connection may have queued for its peer. With
    /// `pause_reads_when_full`, reading stops when it is reached; otherwise
    /// [`Ctx::send`] and [`Ctx::queue`] refuse what would exceed it
    /// ([`Queued::OverLimit`]). Default 64 KiB.
    pub out_limit: usize,
    /// Backpressure: read from a connection only into the room its own output
    /// has left (an echo server's rule). Off: the command enforces its own
    /// policy through [`Ctx::queue`]'s answer (the chat's rule). Default on.
    pub pause_reads_when_full: bool,
    /// Most connections at once; more are refused with `full_notice`. Default 100,000
    /// (the open-file limit usually binds first; it is handled the same way).
    pub max_conns: usize,
    /// Bytes read from one source per event before others get their turn. Default 256 KiB.
    pub read_budget: usize,
    /// Serve standard input. Default off.
    pub stdin: bool,
    /// Print a trace line for everything the loop does. Default off.
    pub trace: bool,
    /// What a refused client is told before it is closed.
    pub full_notice: Vec<u8>,
    /// Who may connect (`--allow`/`--deny`). Default: everyone.
    pub access: AccessList,
    /// Most connections from one IP address at once; 0: no limit. Default 0.
    pub max_conns_per_ip: usize,
    /// Per-client rate limit for accepted connections (`--rate-limit`). Default none.
    pub rate_limit: Option<RateLimit>,
    /// Speak TLS on every accepted connection (`--tls-cert`/`--tls-key`). Default none.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Before a connection that failed on a reset or a broken pipe is
    /// removed, read what the peer sent before it went (at most the read
    /// budget) and hand it over as [`Event::Data`]: a server that turns a
    /// client away writes a notice and closes, and the client's own write
    /// may fail before it has read the notice. Default off (clients turn it on).
    pub last_words: bool,
    /// Added to the warning a job in the background gets when it tries to
    /// read its terminal: how this command runs without stdin (the chat
    /// server: `--relay-only`). Default empty.
    pub background_hint: &'static str,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            out_limit: 64 * 1024,
            pause_reads_when_full: true,
            max_conns: 100_000,
            read_budget: 256 * 1024,
            stdin: false,
            trace: false,
            full_notice: FULL_NOTICE.to_vec(),
            access: AccessList::default(),
            max_conns_per_ip: 0,
            rate_limit: None,
            tls_server: None,
            last_words: false,
            background_hint: "",
        }
    }
}

/// What a client refused by a full server is told before it is closed, by
/// default: one line of plain text. A sockloop client that receives exactly
/// this first, then the end of the connection, reports the refusal instead
/// of printing it as data.
pub const FULL_NOTICE: &[u8] = b"sockloop: server full, try again later\n";

/// What happened, as a command sees it. Readiness never reaches a command.
#[derive(Debug)]
pub enum Event<'a> {
    /// A listener accepted a connection; its state is `S::default()`. With
    /// TLS, only once its handshake is over: a connection that fails its
    /// handshake gets [`Event::Closed`] without ever being `Accepted`.
    Accepted {
        /// The new connection.
        conn: ConnId,
        /// Which listener, in the order they were added.
        listener: usize,
    },
    /// An outgoing connection finished its handshake.
    Connected(ConnId),
    /// Bytes arrived. They live in the shared scratch buffer: use them now.
    Data(ConnId, &'a [u8]),
    /// The peer shut down its write side; nothing more will be read.
    PeerClosed(ConnId),
    /// The connection's queued output has all been written.
    Drained(ConnId),
    /// The connection is about to be removed. Its state can still be read.
    Closed(ConnId, &'a CloseReason),
    /// Bytes from standard input.
    Stdin(&'a [u8]),
    /// Standard input ended (or was never open).
    StdinEof,
    /// A datagram arrived on the UDP socket.
    Datagram(&'a [u8], SocketAddr),
    /// An ICMP "port unreachable" came back for a datagram sent to this peer:
    /// nothing listens there any more. Read from the socket's error queue
    /// (see [`crate::udp`]), so the address is exact. Never fatal.
    PeerUnreachable(SocketAddr),
    /// The UDP socket reported another error (say, host unreachable, named in
    /// the message when the kernel said which peer). Never fatal.
    UdpError(io::Error),
    /// The UDP socket can take more datagrams (asked for with [`Ctx::udp_want_writable`]).
    UdpWritable,
    /// A deadline set with [`Ctx::set_timer`] passed.
    Timer(u64),
    /// SIGINT or SIGTERM arrived (the reactor answers SIGUSR1 and SIGCONT itself).
    Signal(i32),
    /// Standard output has taken everything it held, after
    /// [`Ctx::stdout`] refused bytes or [`Ctx::stdout_data`] answered
    /// [`StdoutRoom::Full`](super::StdoutRoom::Full): print (and read) again.
    StdoutReady,
    /// Standard output is gone (its reader closed the pipe, or a write
    /// failed): nothing more will be printed. Told once.
    StdoutClosed,
}

/// A command: what it does with each [`Event`].
pub trait Handler {
    /// The command's own per-connection state.
    type Conn: Default;

    /// Reacts to one event. Called once per event, one at a time.
    fn handle(&mut self, cx: &mut Ctx<Self::Conn>, event: Event<'_>);

    /// Bytes the command holds for a connection (say, half a frame), shown
    /// in the connection table. Default 0.
    fn buffered_in(&self, _conn: &Self::Conn) -> usize {
        0
    }

    /// Adds the command's own lines to the SIGUSR1 connection table (peers
    /// without a connection, counters). Default: nothing.
    fn describe(&self, _out: &mut String) {}
}

/// What [`Ctx::queue`] did with a frame, or [`Ctx::send`] with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Taken: queued to be written at the end of the turn (`queue`), or
    /// written, with any tail the kernel did not take queued (`send`).
    Yes,
    /// Not taken, nothing written: the connection already holds `queued`
    /// bytes and these would take it over the output limit, even after what
    /// was queued had been offered to the kernel. The command chooses the policy.
    OverLimit {
        /// Bytes already queued for that connection.
        queued: usize,
    },
    /// Not queued: the connection is gone or closing.
    Gone,
}
