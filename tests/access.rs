//! Access control at accept: `--allow`/`--deny` blocks and
//! `--max-conns-per-ip`, against the real echo server on loopback. A refused
//! client is closed at once; everyone else is served as before.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// True when the server closed the connection without serving it.
fn was_refused(mut stream: TcpStream) -> bool {
    let _ = std::io::Write::write_all(&mut stream, b"anyone?");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

fn echoes(stream: &mut TcpStream) -> bool {
    write_all(stream, b"ping");
    read_exact(stream, 4) == b"ping"
}

#[test]
fn a_denied_block_is_refused_while_others_are_served() {
    let (mut server, addr) = echo_server(&["--deny", "127.0.0.2/32"]);
    assert!(was_refused(connect_from("127.0.0.2", addr)));
    server.wait_line("refused 127.0.0.2:", Duration::from_secs(5));
    let mut ok = connect_from("127.0.0.1", addr);
    assert!(echoes(&mut ok));
}

#[test]
fn allow_admits_only_its_block() {
    let (_server, addr) = echo_server(&["--allow", "127.0.0.1/32"]);
    assert!(was_refused(connect_from("127.0.0.3", addr)));
    let mut ok = connect_from("127.0.0.1", addr);
    assert!(echoes(&mut ok));
}

#[test]
fn the_fourth_connection_from_one_address_is_refused() {
    let (mut server, addr) = echo_server(&["--max-conns-per-ip", "3"]);
    let mut three: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", addr)).collect();
    for stream in three.iter_mut() {
        assert!(echoes(stream));
    }
    assert!(was_refused(connect_from("127.0.0.1", addr)));
    server.wait_line("--max-conns-per-ip", Duration::from_secs(5));
    // Another address is not affected, and a slot freed is a slot regained.
    let mut other = connect_from("127.0.0.5", addr);
    assert!(echoes(&mut other));
    drop(three.pop());
    let mut again = eventually(Duration::from_secs(5), "a freed per-IP slot", || {
        let mut stream = connect_from("127.0.0.1", addr);
        let _ = std::io::Write::write_all(&mut stream, b"ping");
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).ok()?;
        (&got == b"ping").then_some(stream)
    });
    assert!(echoes(&mut again));
}

#[test]
fn a_client_over_its_rate_is_slowed_to_it_while_another_flows() {
    const BYTES_PER_S: usize = 50_000;
    let (_server, addr) = echo_server(&["--rate-limit", "1000/s,50000/s"]);
    let fast = connect(addr);
    let mut fast_reader = fast.try_clone().unwrap();
    let mut fast_writer = fast;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        let chunk = pattern(16 * 1024, 9);
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
            if std::io::Write::write_all(&mut fast_writer, &chunk).is_err() {
                break;
            }
        }
    });
    // Count what comes back over three seconds.
    let started = std::time::Instant::now();
    let window = Duration::from_secs(3);
    let reader = std::thread::spawn(move || {
        fast_reader
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while started.elapsed() < window {
            match fast_reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(_) => {}
            }
        }
        total
    });
    // Another client's messages flow meanwhile.
    let mut other = connect(addr);
    for round in 0..20u8 {
        write_all(&mut other, &[round; 8]);
        assert_eq!(read_exact(&mut other, 8), [round; 8]);
    }
    let echoed = reader.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(other);
    // One second's burst plus three seconds at the rate, with room for timing noise.
    let most = BYTES_PER_S * 4 + BYTES_PER_S / 2;
    let least = BYTES_PER_S * 2;
    assert!(
        echoed <= most,
        "echoed {echoed} B in 3 s: not slowed to {BYTES_PER_S} B/s"
    );
    assert!(
        echoed >= least,
        "echoed {echoed} B in 3 s: slowed below the limit"
    );
    let _ = writer.join();
}

#[test]
fn a_rate_below_one_per_second_still_lets_messages_through() {
    // Half a message a second, or half a byte: each bucket must still fill
    // to one whole token, so the client is slowed, never starved.
    for limit in ["0.5/s", "100/s,0.5/s"] {
        let (_server, addr) = echo_server(&["--rate-limit", limit]);
        let mut client = connect(addr);
        for byte in [b'a', b'b'] {
            write_all(&mut client, &[byte]);
            assert_eq!(read_exact(&mut client, 1), [byte], "--rate-limit {limit}");
        }
    }
}

#[test]
fn a_rate_limit_slower_than_any_clock_slows_the_client_and_nothing_else() {
    // One message per 1e30 s: the wait after the first message is more than
    // a Duration holds. The client is held back; the server goes on.
    let (mut server, addr) = echo_server(&["--trace", "--rate-limit", "1e-30/s"]);
    let mut slow = connect(addr);
    write_all(&mut slow, b"a");
    assert_eq!(read_exact(&mut slow, 1), b"a");
    write_all(&mut slow, b"b");
    server.wait_line("over its rate limit, reads paused", Duration::from_secs(10));
    let mut other = connect(addr);
    write_all(&mut other, b"x");
    assert_eq!(read_exact(&mut other, 1), b"x");
    assert!(
        !server
            .drain_lines()
            .iter()
            .any(|l| l.contains("internal error")),
        "{:?}",
        server.seen
    );
}

#[test]
fn a_byte_rate_limit_never_lifts_backpressure() {
    // A generous byte rate that never binds: the client that does not read
    // must still be stopped by its full output buffer, not read a byte at a time.
    let (mut server, addr) = echo_server(&["--rate-limit", "100000/s,50000000/s"]);
    let mut hog = connect(addr);
    let data = pattern(64 * 1024, 12);
    let sent = fill_until_paused(&mut server, &mut hog, &data, 64 * 1024 * 1024);
    assert!(sent < 64 * 1024 * 1024, "the server never held back");
    let before = server.drain_lines().len();
    server.signal(libc::SIGUSR1);
    let row = server.wait_line_after(before, "conn#", Duration::from_secs(5));
    let queued: usize = row.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(queued <= 64 * 1024, "over the output limit: {row}");
    assert!(row.contains("paused"), "not paused by backpressure: {row}");
}

/// `sockloop echo server --bind BIND --port 0 EXTRA...`, started.
fn echo_server_on(bind: &str, extra: &[&str]) -> (Proc, std::net::SocketAddr) {
    let mut args = vec!["echo", "server", "--bind", bind, "--port", "0"];
    args.extend_from_slice(extra);
    let mut server = Proc::start(sockloop(&args));
    let addr = server.listening_addr();
    (server, addr)
}

#[test]
fn an_ipv4_mapped_deny_block_refuses_the_ipv4_clients_it_names() {
    // `::ffff:127.0.0.0/104` is 127.0.0.0/8 as an IPv6 listener sees it.
    let (mut server, addr) = echo_server_on("127.0.0.1", &["--deny", "::ffff:127.0.0.0/104"]);
    assert!(was_refused(connect_from("127.0.0.1", addr)));
    server.wait_line("refused 127.0.0.1:", Duration::from_secs(5));

    // A dual-stack listener sees the same client as ::ffff:127.0.0.1.
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("no IPv6 here: the dual-stack half is skipped");
        return;
    }
    let (mut server, addr) = echo_server_on("::", &["--deny", "::ffff:127.0.0.0/104"]);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert!(was_refused(connect_from("127.0.0.1", v4)));
    server.wait_line("refused ", Duration::from_secs(5));
    // A block that only an IPv6 address can be in still lets IPv4 through.
    let (_server, addr) = echo_server_on("::", &["--deny", "2001:db8::/32"]);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert!(echoes(&mut connect_from("127.0.0.1", v4)));
}

#[test]
fn a_flood_of_refusals_is_logged_at_most_once_a_second_with_its_count() {
    const FLOOD: usize = 200;
    let (mut server, addr) = echo_server(&["--deny", "127.0.0.2/32"]);
    for _ in 0..FLOOD {
        assert!(was_refused(connect_from("127.0.0.2", addr)));
    }
    // The first refusal is logged as it happens; the rest are counted and
    // reported together once their second is over.
    server.wait_line("refused 127.0.0.2:", Duration::from_secs(5));
    let summary = server.wait_line("more connection(s)", Duration::from_secs(5));
    assert!(summary.contains("--deny"), "{summary}");
    let lines = server.drain_lines().to_vec();
    let refusals: Vec<&String> = lines.iter().filter(|l| l.contains("refused")).collect();
    assert!(
        refusals.len() < 20,
        "{} log lines for {FLOOD} refusals:\n{}",
        refusals.len(),
        lines.join("\n")
    );
    let counted: u64 = refusals
        .iter()
        .map(|l| {
            l.split("refused ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(counted, FLOOD as u64, "{refusals:?}");
}
