//! The reactor's edges, tested from the inside with real loopback sockets:
//! a source whose errors repeat is retried on a backoff deadline (never at
//! once, never not at all); WRITABLE interest follows the queue whatever
//! emptied it; `send` keeps the output bound; reaping a batch leaves no
//! stale entry; a close grace deadline belongs to the connection that set it.
//!
//! Every loop here is bounded in count, and every turn that could block has
//! a command deadline to wake it.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::{Config, ConnId, Event, Handler, Queued, Reactor};
use crate::conn::CloseReason;

/// Timer id that only wakes a turn that would otherwise block.
const WAKE: u64 = 1;

/// Counts what the tests look at.
#[derive(Default)]
struct Recorder {
    accepted: Vec<ConnId>,
    closed: Vec<ConnId>,
    udp_errors: usize,
    timers: usize,
}

impl Handler for Recorder {
    type Conn = ();

    fn handle(&mut self, _cx: &mut super::Ctx<()>, event: Event<'_>) {
        match event {
            Event::Accepted { conn, .. } => self.accepted.push(conn),
            Event::Closed(id, _) => self.closed.push(id),
            Event::UdpError(_) => self.udp_errors += 1,
            Event::Timer(_) => self.timers += 1,
            _ => {}
        }
    }
}

fn reactor(config: Config) -> Reactor<()> {
    Reactor::new(config).expect("a reactor")
}

fn loopback() -> std::net::IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// A client with a small receive buffer that never reads, and the server's
/// side of it, accepted by `reactor`.
fn accepted_client(reactor: &mut Reactor<()>, recorder: &mut Recorder) -> (TcpStream, ConnId) {
    let (_, addr) = reactor.cx().listen(loopback(), 0).expect("listen");
    let client = small_receiver(addr);
    reactor.cx().set_timer_in(Duration::from_secs(10), WAKE);
    for _ in 0..100 {
        if !recorder.accepted.is_empty() {
            break;
        }
        reactor.turn(recorder).unwrap();
    }
    let id = *recorder.accepted.last().expect("the client accepted");
    (client, id)
}

fn small_receiver(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    socket.into()
}

/// Writes straight into the server's socket until the kernel takes no more.
fn fill_kernel(reactor: &mut Reactor<()>, id: ConnId) {
    let conn = &mut reactor.cx().conns[id.0];
    let chunk = [0u8; 64 * 1024];
    for _ in 0..10_000 {
        match conn.stream.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("filling the socket: {e}"),
        }
    }
    panic!("the kernel took 640 MB for a client that never reads");
}

#[test]
fn a_listener_that_fails_to_accept_is_retried_after_a_backoff() {
    let mut reactor = reactor(Config::default());
    let mut recorder = Recorder::default();
    let (index, _) = reactor.cx().listen(loopback(), 0).unwrap();
    // Shut down, a listening socket fails every accept with EINVAL: an
    // error of the listener, not of one client. Clients that were waiting
    // in a backlog would raise no new edge; only a retry reaches them.
    let _ = SockRef::from(&reactor.cx().listeners[index].socket).shutdown(Shutdown::Both);
    reactor.cx().accept_all(&mut recorder, index);
    reactor.cx().set_timer_in(Duration::from_secs(10), WAKE);
    let started = Instant::now();
    let polls_before = reactor.cx().stats().polls;
    for _ in 0..1000 {
        if reactor.cx().stats().polls - polls_before >= 5 || recorder.timers > 0 {
            break;
        }
        reactor.turn(&mut recorder).unwrap();
    }
    assert_eq!(recorder.timers, 0, "accept was not tried again within 10 s");
    assert!(reactor.cx().stats().accept_errors >= 5);
    // Each retry waited its turn: 10 + 20 + 40 + 80 ms at least, not a spin.
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn a_udp_error_that_repeats_is_retried_after_a_backoff() {
    let mut reactor = reactor(Config::default());
    let mut recorder = Recorder::default();
    let socket = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    reactor.cx().set_udp(socket).unwrap();
    // Put something that is not a socket under the UDP socket's descriptor:
    // every receive now fails the same way (ENOTSOCK), for ever.
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = reactor.cx().udp().unwrap().as_raw_fd();
    // SAFETY: dup2 onto a descriptor this test owns (the reactor's UDP
    // socket, used by no other thread); the socket object closes it later.
    assert!(unsafe { libc::dup2(null.as_raw_fd(), fd) } == fd);
    let mut scratch = vec![0; super::SCRATCH_SIZE];
    reactor.cx().read_udp(&mut recorder, &mut scratch);
    assert_eq!(recorder.udp_errors, 1);
    reactor.cx().set_timer_in(Duration::from_secs(10), WAKE);
    let started = Instant::now();
    for _ in 0..100_000 {
        if recorder.udp_errors >= 5 || recorder.timers > 0 {
            break;
        }
        reactor.turn(&mut recorder).unwrap();
    }
    assert_eq!(
        recorder.udp_errors, 5,
        "the error was not read again within 10 s"
    );
    // Four waits between five failures: 10 + 20 + 40 + 80 ms at least.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "five errors in {took:?}"
    );
}

#[test]
fn writable_interest_goes_when_the_command_drops_what_was_queued() {
    let mut reactor = reactor(Config {
        pause_reads_when_full: false,
        ..Config::default()
    });
    let mut recorder = Recorder::default();
    let (_client, id) = accepted_client(&mut reactor, &mut recorder);
    fill_kernel(&mut reactor, id);
    // Frames the kernel cannot take: none of them is started.
    let frame: Rc<[u8]> = Rc::from(vec![7u8; 1000]);
    for _ in 0..10 {
        assert_eq!(reactor.cx().queue(id, &frame), Queued::Yes);
    }
    reactor.turn(&mut recorder).unwrap();
    let conn = &reactor.cx().conns[id.0];
    assert!(conn.writable_registered && conn.out.len() == 10_000);
    // The command drops them all (as drop-oldest may) and queues nothing.
    assert_eq!(reactor.cx().drop_oldest(id, 64 * 1024), 10);
    reactor.cx().set_timer_in(Duration::from_millis(200), WAKE);
    reactor.turn(&mut recorder).unwrap();
    let conn = &reactor.cx().conns[id.0];
    assert!(!conn.has_pending_output());
    assert!(
        !conn.writable_registered,
        "WRITABLE still registered on a connection with nothing to write"
    );
}

#[test]
fn send_refuses_whole_what_would_exceed_the_output_bound() {
    let mut reactor = reactor(Config {
        out_limit: 10_000,
        pause_reads_when_full: false,
        ..Config::default()
    });
    let mut recorder = Recorder::default();
    let (_client, id) = accepted_client(&mut reactor, &mut recorder);
    fill_kernel(&mut reactor, id);
    let cx = reactor.cx();
    assert_eq!(cx.send(id, &[1; 6_000]), Queued::Yes);
    assert_eq!(cx.conns[id.0].out.len(), 6_000);
    // 6,000 + 5,000 > 10,000: refused whole, nothing written or queued.
    assert_eq!(
        cx.send(id, &[2; 5_000]),
        Queued::OverLimit { queued: 6_000 }
    );
    assert_eq!(cx.conns[id.0].out.len(), 6_000);
    assert_eq!(cx.send(id, &[3; 4_000]), Queued::Yes);
    assert_eq!(cx.conns[id.0].out.len(), 10_000);
    assert_eq!(cx.send(id, &[4; 1]), Queued::OverLimit { queued: 10_000 });
    cx.close(id, CloseReason::Done);
    assert_eq!(cx.send(id, &[5; 1]), Queued::Gone);
}

#[test]
fn reaping_a_batch_removes_exactly_its_entries_from_the_ready_and_dirty_lists() {
    let mut reactor = reactor(Config::default());
    let mut recorder = Recorder::default();
    let (_, addr) = reactor.cx().listen(loopback(), 0).unwrap();
    let clients: Vec<TcpStream> = (0..40).map(|_| small_receiver(addr)).collect();
    reactor.cx().set_timer_in(Duration::from_secs(10), WAKE);
    for _ in 0..1000 {
        if recorder.accepted.len() == clients.len() || recorder.timers > 0 {
            break;
        }
        reactor.turn(&mut recorder).unwrap();
    }
    assert_eq!(recorder.accepted.len(), clients.len());
    let ids = recorder.accepted.clone();
    let cx = reactor.cx();
    for &id in &ids {
        cx.ready.push(super::Source::Conn(id.0));
        cx.mark_dirty(id.0);
    }
    // Every other connection closes in the same turn; the reaper runs
    // (before any write: only its sweep is under test).
    for id in ids.iter().step_by(2) {
        cx.close(*id, CloseReason::Done);
    }
    cx.reap(&mut recorder);
    let kept: Vec<usize> = ids.iter().skip(1).step_by(2).map(|id| id.0).collect();
    let ready: Vec<usize> = cx
        .ready
        .iter()
        .filter_map(|s| match s {
            super::Source::Conn(key) => Some(*key),
            _ => None,
        })
        .collect();
    assert_eq!(ready, kept);
    assert_eq!(cx.dirty, kept);
    assert_eq!(recorder.closed.len(), ids.len() / 2);
    assert_eq!(cx.n_conns(), kept.len());
}

#[test]
fn a_close_grace_deadline_belongs_to_the_connection_that_set_it() {
    let mut reactor = reactor(Config::default());
    let mut recorder = Recorder::default();
    let (_client, id) = accepted_client(&mut reactor, &mut recorder);
    let before = Instant::now();
    let cx = reactor.cx();
    // Opened after `before`: a deadline set then was another connection's.
    cx.conns[id.0].since = before + Duration::from_millis(1);
    fill_kernel(&mut reactor, id);
    let cx = reactor.cx();
    assert_eq!(cx.send(id, b"last words"), Queued::Yes);
    cx.close_after_flush(id);
    cx.end_close_grace(id.0, before);
    assert!(
        !cx.conns[id.0].doomed,
        "closed by a deadline it did not set"
    );
    let since = cx.conns[id.0].since;
    cx.end_close_grace(id.0, since);
    assert!(cx.conns[id.0].doomed, "its own deadline did not close it");
}
