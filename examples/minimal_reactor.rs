//! Step 3 of the progression: the smallest correct reactor, a TCP echo server.
//!
//! What it demonstrates: one thread serves any number of clients by never
//! blocking. It asks the kernel "which of my sockets can make progress?"
//! (`Poll::poll`), does only what each socket can do right now, and goes back
//! to asking. The pieces, each explained where it is used:
//!
//! - one `Poll`, one `Events`, and a `Slab` of connections keyed by `Token`;
//! - the listener on a fixed token that no slab key can ever take;
//! - edge-triggered readiness, and why every read and accept loop runs until
//!   `WouldBlock`;
//! - a pending-output buffer per connection: a short write keeps its tail,
//!   which goes out when the socket reports `WRITABLE`;
//! - `WRITABLE` interest only while output is pending;
//! - backpressure: a client that sends faster than it reads its echo is not
//!   read from while more than 64 KiB of echo waits for it.
//!
//! Note what the server cannot do: rescue the naive client of
//! `deadlocking_echo_client`. A client that never reads its echo fills the
//! 64 KiB, the server stops reading it, and that client's write stalls just
//! as before; the server is merely never stuck itself, and its other clients
//! go on. The client needs the same loop shape, which the next example,
//! `reactor_with_stdin`, gives it.
//!
//! How to run it:
//!
//! ```text
//! cargo run --example minimal_reactor -- 8080
//! ```
//!
//! Arguments: `[PORT]`, default 8080; port 0 picks a free port. The server
//! listens on `127.0.0.1` and prints `listening on 127.0.0.1:PORT` on stderr
//! once it is ready. Try it with `nc 127.0.0.1 8080`, or with the next
//! example, `reactor_with_stdin 127.0.0.1:8080`. Stop it with Ctrl+C.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// The listener's token. Connections use their slab key as token, and a
/// slab cannot hold `usize::MAX` entries, so no key ever equals this one.
const LISTENER: Token = Token(usize::MAX);

/// Stop reading from a client while more than this much echo waits for it.
const MAX_PENDING: usize = 64 * 1024;

/// The size of one read.
const CHUNK: usize = 4096;

/// One client connection.
struct Conn {
    stream: TcpStream,
    /// Echo bytes read from the client but not yet accepted by the kernel.
    /// Every write removes what it sent from the front; the tail stays.
    pending: Vec<u8>,
    /// Set when the client has closed its sending half (read returned 0).
    peer_done: bool,
    /// Whether `WRITABLE` is part of the registered interest right now.
    wants_writable: bool,
}

fn main() -> io::Result<ExitCode> {
    let port = match std::env::args().nth(1) {
        None => 8080,
        Some(text) => match text.parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("usage: minimal_reactor [PORT]");
                return Ok(ExitCode::from(2));
            }
        },
    };

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(128);
    let mut listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    eprintln!("listening on {}", listener.local_addr()?);

    loop {
        // Step 1: wait until at least one socket can make progress. A signal
        // arriving during the wait interrupts it; that is not an error.
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }

        // Step 2: handle each event. Connections that end are only noted
        // here and removed after the batch, so a slab key freed now cannot be
        // handed to a new connection while events for the old one may follow.
        let mut finished = Vec::new();
        for event in events.iter() {
            match event.token() {
                LISTENER => accept_all(&poll, &listener, &mut conns),
                Token(key) => {
                    // Keys are only removed after the batch, so every key
                    // here is known; the check keeps a slip from panicking.
                    let Some(conn) = conns.get_mut(key) else {
                        continue;
                    };
                    // A failing connection ends alone; the others go on.
                    match on_ready(&poll, conn, Token(key)) {
                        Ok(true) => {}
                        Ok(false) => finished.push(key),
                        Err(e) => {
                            eprintln!("connection {key}: {e}");
                            finished.push(key);
                        }
                    }
                }
            }
        }

        // Step 3: remove the finished connections. Dropping a mio stream
        // closes its socket, and the kernel forgets its registration with it.
        for key in finished {
            conns.remove(key);
            eprintln!("connection {key} closed");
        }
    }
}

/// Accepts every waiting connection.
///
/// Readiness is edge-triggered in mio: we hear "the listener is readable"
/// once, when the first client arrives, not once per client. If three clients
/// arrive together and we accept one, no new event tells us about the other
/// two. So we accept until the kernel says `WouldBlock`: only then is the
/// queue empty, and only then will the next arrival produce a new event.
fn accept_all(poll: &Poll, listener: &TcpListener, conns: &mut Slab<Conn>) {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // E.g. out of file descriptors. Serve the clients we have;
                // the ones still queued wait until the next arrival wakes us.
                eprintln!("accept failed: {e}");
                return;
            }
        };
        // The vacant entry tells us the key before we insert, so the
        // connection can be registered under its final token first.
        let entry = conns.vacant_entry();
        let token = Token(entry.key());
        if let Err(e) = poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            // Dropping the stream closes it; the slab entry stays free.
            eprintln!("cannot watch {peer}: {e}");
            continue;
        }
        eprintln!("connection {} from {peer}", token.0);
        entry.insert(Conn {
            stream,
            pending: Vec::new(),
            peer_done: false,
            wants_writable: false,
        });
    }
}

/// Handles an event for one connection: makes all the progress it can, then
/// adjusts what we ask to hear about. Returns `Ok(false)` when the
/// connection is finished and should be closed.
///
/// It does not look at whether the event said readable or writable: trying
/// both is cheap, and a read or write that cannot proceed just reports
/// `WouldBlock`. That also makes spurious events harmless.
fn on_ready(poll: &Poll, conn: &mut Conn, token: Token) -> io::Result<bool> {
    let open = drive(conn)?;
    if open {
        update_interest(poll, conn, token)?;
    }
    Ok(open)
}

/// Does everything a connection can do right now: read, echo, write.
/// Returns `Ok(false)` when the connection is finished.
///
/// The edge-triggered trap of backpressure: when reading stops because the
/// echo buffer is full, the data left in the socket has already been
/// announced, and no new `READABLE` event will come for it. So resuming
/// cannot wait for one. That is why every call starts with a read, even for
/// a `WRITABLE` event, and why we go round again as soon as a write has made
/// room below the limit.
fn drive(conn: &mut Conn) -> io::Result<bool> {
    loop {
        let stopped_at_limit = read_until_blocked(conn)?;
        write_until_blocked(conn)?;
        if !(stopped_at_limit && conn.pending.len() < MAX_PENDING) {
            break;
        }
    }
    // The client sent its last byte and got all of its echo: we are done.
    Ok(!(conn.peer_done && conn.pending.is_empty()))
}

/// Reads until `WouldBlock`, end of stream, or a full echo buffer.
/// Returns `true` if it stopped because of the full buffer.
///
/// Stopping at `WouldBlock` is what makes edge-triggered readiness work: the
/// next `READABLE` event is only produced for data that arrives after the
/// socket was found empty. Stop any earlier and the rest sits unread.
fn read_until_blocked(conn: &mut Conn) -> io::Result<bool> {
    let mut chunk = [0u8; CHUNK];
    while !conn.peer_done {
        if conn.pending.len() >= MAX_PENDING {
            return Ok(true);
        }
        match conn.stream.read(&mut chunk) {
            Ok(0) => conn.peer_done = true,
            Ok(n) => conn.pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Writes pending output until it is all gone or the kernel says `WouldBlock`.
/// A short write is normal: the part that did not fit stays in `pending`.
fn write_until_blocked(conn: &mut Conn) -> io::Result<()> {
    while !conn.pending.is_empty() {
        match conn.stream.write(&conn.pending) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Asks for `WRITABLE` events only while output is pending. A socket is
/// writable almost all the time: asking always would wake the loop whenever
/// the kernel frees send-buffer space, even with nothing to send; asking
/// never would leave the tail of a short write stuck.
fn update_interest(poll: &Poll, conn: &mut Conn, token: Token) -> io::Result<()> {
    let wants_writable = !conn.pending.is_empty();
    if wants_writable != conn.wants_writable {
        let interest = if wants_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut conn.stream, token, interest)?;
        conn.wants_writable = wants_writable;
    }
    Ok(())
}
