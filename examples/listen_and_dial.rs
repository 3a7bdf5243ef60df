//! Step 5 of the progression: listening and dialing in one poll, and what
//! happens at the moment two peers dial each other.
//!
//! A `sockloop tcp-chat` member accepts and dials at once: its one poll holds
//! a listener, connections still connecting, accepted connections and stdin.
//! This example shows the first three with two peers living in ONE process
//! and ONE poll, so that the moment that matters can be staged exactly: both
//! dials are in flight before either is accepted.
//!
//! What it demonstrates:
//!
//! - a non-blocking `connect` returns at once; the socket reports `WRITABLE`
//!   when the handshake is over, and `take_error` says how it went
//!   (`ECONNREFUSED` when nobody listens yet);
//! - dialing again later is a deadline, and a deadline is the poll's timeout,
//!   not a sleep: the loop stays free to accept and read meanwhile;
//! - a listener is one more source: `READABLE` means "accept until `WouldBlock`";
//! - two peers that dial each other at the same moment get two links. Each
//!   end learns of them in its own order, so "the first link" or "the newest
//!   link" are not things both ends agree on. What both agree on is who
//!   dialed each link: keep the link dialed by the peer with the smaller id
//!   (here peer 1) and close the other. No message decides it, and no timing.
//!
//! The story it prints, step by step:
//!
//! 1. peer 1 listens; peer 2 is not up. Peer 1 dials peer 2 and is refused;
//!    it will dial again in 200 ms, when the poll's timeout says so.
//! 2. peer 2 comes up, and in that same turn, before the next poll, both
//!    dial: two connects in flight.
//! 3. the dials complete (`WRITABLE`) and the listeners accept; each dialer
//!    says `hello N`, which is how an accepting peer learns who dialed.
//! 4. each peer keeps the link dialed by peer 1 and closes the other (or
//!    finds it already closed by the other end, which decided first).
//! 5. over the kept link each says hi and prints what the other said; exit 0.
//!
//! One simplification `tcp-chat` cannot make: here neither peer sends a chat
//! message before it has decided. Real members decide at different moments
//! and may already have sent on the link that loses, so `tcp-chat` *retires*
//! that link (a `retire` frame, then its write side closes) and keeps reading
//! it until the other end closes it too: nothing in flight is lost. See
//! `src/cmd/tcp_chat/links.rs` and the tcp-chat section of ARCHITECTURE.md.
//!
//! How to run it:
//!
//! ```text
//! cargo run --example listen_and_dial
//! ```
//!
//! No arguments; everything happens on 127.0.0.1, on ports the system picks.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// The two listeners' tokens, at the top of the range where no slab key reaches.
const LISTENER: [Token; 2] = [Token(usize::MAX), Token(usize::MAX - 1)];

/// How long to wait before dialing again after a refusal.
const RETRY: Duration = Duration::from_millis(200);

/// The whole story must be over by then.
const WATCHDOG: Duration = Duration::from_secs(10);

/// One end of one link: a socket owned by one of the two peers.
struct End {
    stream: TcpStream,
    /// Which peer holds this end (0 or 1: peers 1 and 2).
    owner: usize,
    /// Which peer dialed the link: known at once for our own dials, from the
    /// `hello` line for accepted ones.
    dialer: Option<usize>,
    /// Our dial is still connecting.
    connecting: bool,
    /// Both ends know who dialed: the dial completed, or the hello arrived.
    up: bool,
    /// Bytes read but not yet a whole line.
    input: Vec<u8>,
}

/// What each peer knows.
struct Peer {
    /// Where it listens (peer 2's port is chosen now, listened on later).
    addr: SocketAddr,
    listener: Option<TcpListener>,
    /// When to dial the other peer again, if a dial failed.
    dial_at: Option<Instant>,
    /// The end it kept, once it decided.
    kept: Option<usize>,
    /// What the other peer said over the kept link.
    heard: Option<String>,
}

fn main() -> io::Result<ExitCode> {
    let started = Instant::now();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(64);
    let mut ends: Slab<End> = Slab::new();

    // Peer 2's port: taken from the system now, listened on only later.
    let later = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
    let mut first = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    poll.registry()
        .register(&mut first, LISTENER[0], Interest::READABLE)?;
    let mut peers = [
        Peer {
            addr: first.local_addr()?,
            listener: Some(first),
            dial_at: None,
            kept: None,
            heard: None,
        },
        Peer {
            addr: later,
            listener: None,
            dial_at: None,
            kept: None,
            heard: None,
        },
    ];
    println!(
        "1. peer 1 listens on {}; peer 2 is not up yet",
        peers[0].addr
    );
    dial(&poll, &mut ends, &mut peers, 0)?;

    loop {
        if started.elapsed() > WATCHDOG {
            eprintln!("watchdog: the story did not end within {WATCHDOG:?}");
            return Ok(ExitCode::from(1));
        }
        // The poll waits for a socket or for the nearest dial deadline.
        let now = Instant::now();
        let timeout = peers
            .iter()
            .filter_map(|p| p.dial_at)
            .min()
            .map(|at| at.saturating_duration_since(now))
            .unwrap_or(WATCHDOG);
        poll.poll(&mut events, Some(timeout))?;

        for event in events.iter() {
            match event.token() {
                token if token == LISTENER[0] || token == LISTENER[1] => {
                    let owner = usize::from(token == LISTENER[1]);
                    accept_all(&poll, &mut ends, &mut peers, owner)?;
                }
                Token(key) => on_end_event(&poll, &mut ends, &mut peers, key, event)?,
            }
        }

        // Deadlines: a peer whose dial was refused dials again. The first
        // time peer 1 does, peer 2 comes up and dials too, in this same turn:
        // both connects are in flight before either is accepted.
        let now = Instant::now();
        if peers[0].dial_at.is_some_and(|at| at <= now) {
            peers[0].dial_at = None;
            if peers[1].listener.is_none() {
                let mut listener = TcpListener::bind(peers[1].addr)?;
                poll.registry()
                    .register(&mut listener, LISTENER[1], Interest::READABLE)?;
                peers[1].listener = Some(listener);
                println!(
                    "2. peer 2 comes up on {}; both peers dial, at the same moment",
                    peers[1].addr
                );
                dial(&poll, &mut ends, &mut peers, 1)?;
            }
            dial(&poll, &mut ends, &mut peers, 0)?;
        }

        for owner in 0..2 {
            decide(&poll, &mut ends, &mut peers, owner)?;
        }
        if peers.iter().all(|p| p.heard.is_some()) {
            println!("5. done: one link between the two peers, the one peer 1 dialed");
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Starts a non-blocking dial from peer `owner` to the other peer.
fn dial(poll: &Poll, ends: &mut Slab<End>, peers: &mut [Peer; 2], owner: usize) -> io::Result<()> {
    // Returns at once: the handshake goes on in the kernel. (A refusal may
    // also come back right here, without an event.)
    let mut stream = match TcpStream::connect(peers[1 - owner].addr) {
        Ok(stream) => stream,
        Err(error) => {
            println!(
                "   peer {}'s dial: {error}; dialing again in {RETRY:?}",
                owner + 1
            );
            peers[owner].dial_at = Some(Instant::now() + RETRY);
            return Ok(());
        }
    };
    let entry = ends.vacant_entry();
    // WRITABLE tells when the handshake is over, whichever way it went.
    poll.registry().register(
        &mut stream,
        Token(entry.key()),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    entry.insert(End {
        stream,
        owner,
        dialer: Some(owner),
        connecting: true,
        up: false,
        input: Vec::new(),
    });
    Ok(())
}

/// Accepts every waiting connection on peer `owner`'s listener.
fn accept_all(
    poll: &Poll,
    ends: &mut Slab<End>,
    peers: &mut [Peer; 2],
    owner: usize,
) -> io::Result<()> {
    let Some(listener) = peers[owner].listener.as_ref() else {
        return Ok(());
    };
    loop {
        match listener.accept() {
            Ok((mut stream, from)) => {
                let entry = ends.vacant_entry();
                poll.registry()
                    .register(&mut stream, Token(entry.key()), Interest::READABLE)?;
                println!(
                    "3. peer {} accepts a link from {from}; who dialed it? its hello will say",
                    owner + 1
                );
                entry.insert(End {
                    stream,
                    owner,
                    dialer: None,
                    connecting: false,
                    up: false,
                    input: Vec::new(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// A connecting dial finished, or bytes (or the end) arrived.
fn on_end_event(
    poll: &Poll,
    ends: &mut Slab<End>,
    peers: &mut [Peer; 2],
    key: usize,
    event: &mio::event::Event,
) -> io::Result<()> {
    let Some(end) = ends.get_mut(key) else {
        return Ok(());
    };
    let owner = end.owner;
    if end.connecting && (event.is_writable() || event.is_error()) {
        // The handshake is over. take_error says how it went.
        if let Some(error) = end.stream.take_error()? {
            println!(
                "   peer {}'s dial: {error}; dialing again in {RETRY:?}",
                owner + 1
            );
            let mut end = ends.remove(key);
            poll.registry().deregister(&mut end.stream)?;
            peers[owner].dial_at = Some(Instant::now() + RETRY);
            return Ok(());
        }
        end.connecting = false;
        end.up = true;
        poll.registry()
            .reregister(&mut end.stream, Token(key), Interest::READABLE)?;
        // Eight bytes on a fresh socket: the kernel takes them whole (a real
        // program queues what it does not take; see minimal_reactor).
        end.stream
            .write_all(format!("hello {}\n", owner + 1).as_bytes())?;
        println!(
            "3. peer {}'s dial is connected (writable): it says hello {}",
            owner + 1,
            owner + 1
        );
    }
    if !event.is_readable() && !event.is_read_closed() {
        return Ok(());
    }
    let mut buf = [0u8; 256];
    loop {
        match end.stream.read(&mut buf) {
            Ok(0) => {
                println!(
                    "4. peer {}: the link dialed by peer {} was closed by the other end (it lost)",
                    owner + 1,
                    end.dialer.map_or(0, |d| d + 1)
                );
                let mut end = ends.remove(key);
                poll.registry().deregister(&mut end.stream)?;
                return Ok(());
            }
            Ok(n) => end.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    while let Some(newline) = end.input.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = end.input.drain(..=newline).collect();
        let line = String::from_utf8_lossy(&line).trim().to_string();
        if let Some(id) = line.strip_prefix("hello ") {
            let dialer = id.parse::<usize>().unwrap_or(0).saturating_sub(1);
            end.dialer = Some(dialer);
            end.up = true;
            println!(
                "3. peer {} reads '{line}': this link was dialed by peer {}",
                owner + 1,
                dialer + 1
            );
        } else {
            println!("5. peer {} hears '{line}' over the kept link", owner + 1);
            peers[owner].heard = Some(line);
        }
    }
    Ok(())
}

/// Once a peer has the link dialed by peer 1 (the smaller id) up, it keeps
/// that one, closes any other, and says hi over it.
fn decide(
    poll: &Poll,
    ends: &mut Slab<End>,
    peers: &mut [Peer; 2],
    owner: usize,
) -> io::Result<()> {
    if peers[owner].kept.is_some() {
        // Decided already: a losing link that shows up late is closed too.
        close_losers(poll, ends, peers, owner)?;
        return Ok(());
    }
    let mine: Vec<(usize, Option<usize>, bool)> = ends
        .iter()
        .filter(|(_, e)| e.owner == owner)
        .map(|(key, e)| (key, e.dialer, e.up))
        .collect();
    let Some(&(winner, _, _)) = mine
        .iter()
        .find(|(_, dialer, up)| *dialer == Some(0) && *up)
    else {
        return Ok(());
    };
    if mine.iter().any(|(_, dialer, _)| dialer.is_none()) {
        // An accepted link has not said who dialed it yet: wait for its hello,
        // so that every link is counted (and closed) below.
        return Ok(());
    }
    let others = mine.iter().filter(|(key, _, _)| *key != winner).count();
    println!(
        "4. peer {} has {} link(s) to the other peer; keeps the one dialed by peer 1, the smaller id",
        owner + 1,
        others + 1
    );
    peers[owner].kept = Some(winner);
    close_losers(poll, ends, peers, owner)?;
    ends[winner]
        .stream
        .write_all(format!("hi from peer {}\n", owner + 1).as_bytes())?;
    Ok(())
}

/// Closes every end of `owner` but the one it kept.
fn close_losers(
    poll: &Poll,
    ends: &mut Slab<End>,
    peers: &[Peer; 2],
    owner: usize,
) -> io::Result<()> {
    let losers: Vec<usize> = ends
        .iter()
        // An accepted end whose hello has not come yet waits: it is closed
        // once its hello says who dialed it.
        .filter(|(key, e)| {
            e.owner == owner && e.dialer.is_some() && Some(*key) != peers[owner].kept
        })
        .map(|(key, _)| key)
        .collect();
    for key in losers {
        let mut end = ends.remove(key);
        poll.registry().deregister(&mut end.stream)?;
        println!(
            "4. peer {} closes the link dialed by peer {}",
            owner + 1,
            end.dialer.map_or(0, |d| d + 1)
        );
    }
    Ok(())
}
