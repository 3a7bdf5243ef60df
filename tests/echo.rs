//! TCP echo, end to end: the real `sockloop echo server` and `echo client`
//! over 127.0.0.1, including the lecture's deadlock case, backpressure, the
//! two edge-triggered traps, stdin of every kind, running out of descriptors,
//! and what the user sees when something is wrong.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// Runs `sockloop echo client ADDR EXTRA` with `input` piped to stdin;
/// returns (exit code, stdout, stderr). Fails the test after `within`.
fn run_client(
    addr: &str,
    extra: &[&str],
    input: Vec<u8>,
    within: Duration,
) -> (i32, Vec<u8>, String) {
    let mut args = vec!["echo", "client", addr];
    args.extend_from_slice(extra);
    run_with_input(&args, input, within)
}

/// Sends SIGUSR1 and returns the connection table's rows (`conn#...` lines).
fn table_rows(server: &mut Proc) -> Vec<String> {
    let before = server.drain_lines().len();
    server.signal(libc::SIGUSR1);
    let header = server.wait_line_after(before, "connection table:", Duration::from_secs(5));
    let count: usize = header
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("count in the table header");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = server.drain_lines();
        let start = seen[before..]
            .iter()
            .rposition(|l| l.contains("connection table:"))
            .map(|i| i + before)
            .unwrap();
        let rows: Vec<String> = seen[start..]
            .iter()
            .filter(|l| l.trim_start().starts_with("conn#"))
            .cloned()
            .collect();
        if rows.len() >= count || Instant::now() > deadline {
            return rows;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The "out B" column of a table row.
fn queued_bytes(row: &str) -> usize {
    row.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn twenty_megabytes_through_the_client_come_back_identical() {
    // The lecture's deadlock case: far more input than the kernel buffers hold.
    let (_server, addr) = echo_server(&[]);
    let input = pattern(20 * 1024 * 1024, 1);
    let (code, out, err) = run_client(
        &addr.to_string(),
        &[],
        input.clone(),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out.len(), input.len());
    assert!(out == input, "echoed bytes differ");
}

#[test]
fn verify_passes_on_a_faithful_server() {
    let (_server, addr) = echo_server(&[]);
    let input = pattern(20 * 1024 * 1024, 2);
    let (code, out, err) = run_client(
        &addr.to_string(),
        &["--verify"],
        input.clone(),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out == input);
}

#[test]
fn verify_names_the_offset_a_corrupting_server_changed() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut offset = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                if offset + i == 100_000 {
                    *byte ^= 0x20;
                }
            }
            offset += n;
            if stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let input = pattern(300_000, 3);
    let (code, _out, err) = run_client(
        &addr.to_string(),
        &["--verify"],
        input,
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains("offset 100000"), "stderr: {err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("sockloop:")).count(),
        1
    );
    server.join().unwrap();
}

#[test]
fn two_hundred_clients_each_get_their_own_bytes_back() {
    let (_server, addr) = echo_server(&[]);
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                let data = pattern(100_000, 1000 + i);
                let mut back = Vec::with_capacity(data.len());
                // Interleave: write a chunk, read what has come back so far.
                for chunk in data.chunks(10_000) {
                    write_all(&mut stream, chunk);
                    let got = read_exact(&mut stream, chunk.len());
                    back.extend_from_slice(&got);
                }
                assert!(back == data, "client {i} got other bytes back");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
}

#[test]
fn a_client_that_never_reads_is_held_to_the_output_limit() {
    let (mut server, addr) = echo_server(&[]);
    let mut hog = connect(addr);
    // Send up to 64 MB without reading; the kernel stops taking them once
    // the server, held by backpressure, stops reading. (Loopback buffers
    // autotune to tens of megabytes on both ends, so the cap is well above
    // what they can hold: reaching it means the server read everything.)
    let cap = 64 * 1024 * 1024;
    let sent = fill_until_paused(&mut server, &mut hog, &pattern(64 * 1024, 4), cap);
    assert!(sent < cap, "the server read everything: no backpressure");

    // Meanwhile another client is served normally.
    let mut other = connect(addr);
    write_all(&mut other, b"still here?");
    assert_eq!(read_exact(&mut other, 11), b"still here?");

    let rows = table_rows(&mut server);
    assert_eq!(rows.len(), 2, "rows: {rows:?}");
    for row in &rows {
        assert!(queued_bytes(row) <= 64 * 1024, "over the limit: {row}");
    }
    assert!(
        rows.iter().any(|r| r.contains("paused")),
        "no paused reader: {rows:?}"
    );
}

#[test]
fn a_reader_paused_by_backpressure_resumes_when_its_output_drains() {
    // Trap (a): the paused connection's readable edge is spent; only the
    // reactor's ready list brings it back once its output drains. The
    // client writes until the server stops reading, then only reads, so no
    // new byte arrives to raise a fresh edge: a server that forgot to resume
    // leaves the rest of our bytes in its receive queue for ever.
    let (mut server, addr) = echo_server(&[]);
    let mut client = connect(addr);
    let data = pattern(1024 * 1024, 5);
    let sent = fill_until_paused(&mut server, &mut client, &data, 64 * 1024 * 1024);
    assert!(sent < 64 * 1024 * 1024, "the server never held back");
    let rows = table_rows(&mut server);
    assert!(
        rows.iter().any(|r| r.contains("paused")),
        "not paused: {rows:?}"
    );
    // Now read everything: the server must resume reading on its own.
    let back = read_exact(&mut client, sent);
    for (i, chunk) in back.chunks(data.len()).enumerate() {
        assert!(chunk == &data[..chunk.len()], "chunk {i} differs");
    }
}

#[test]
fn a_client_sending_flat_out_does_not_starve_another() {
    // Trap (b): without a read budget, a client that always has more bytes
    // waiting would keep the loop on its socket.
    let (_server, addr) = echo_server(&[]);
    let flood = connect(addr);
    let mut flood_reader = flood.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let mut flood_writer = flood;
    let writer = thread::spawn(move || {
        let chunk = pattern(256 * 1024, 6);
        while !stop_w.load(std::sync::atomic::Ordering::Relaxed) {
            if flood_writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let stop_r = stop.clone();
    let reader = thread::spawn(move || {
        let mut buf = vec![0; 256 * 1024];
        while !stop_r.load(std::sync::atomic::Ordering::Relaxed) {
            if flood_reader.read(&mut buf).unwrap_or(0) == 0 {
                break;
            }
        }
    });
    let mut small = connect(addr);
    small
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for round in 0..50u8 {
        write_all(&mut small, &[round; 32]);
        let mut got = [0u8; 32];
        small.read_exact(&mut got).unwrap_or_else(|e| {
            panic!("round {round}: no echo within 2 s while another client floods: {e}")
        });
        assert_eq!(got, [round; 32]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(small);
    let _ = writer.join();
    let _ = reader.join();
}

#[test]
fn stdin_of_every_kind_ends_cleanly() {
    let (_server, addr) = echo_server(&[]);
    let addr = addr.to_string();
    let dir = std::env::temp_dir().join(format!("sockloop-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.bin");
    let data = pattern(1024 * 1024, 7);
    std::fs::write(&path, &data).unwrap();

    // A regular file: epoll refuses it; it must be read all the same.
    let out = Command::new(bin())
        .args(["echo", "client", &addr])
        .stdin(File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data, "file: echoed bytes differ");

    // /dev/null: end of input at once.
    let out = Command::new(bin())
        .args(["echo", "client", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "null: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // No stdin at all: fd 0 closed, so the socket itself may become fd 0.
    let mut cmd = Command::new(bin());
    cmd.args(["echo", "client", &addr]);
    // SAFETY: close(2) in the child between fork and exec touches nothing shared.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "closed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // A pipe.
    let (code, out, err) = run_client(&addr, &[], data.clone(), Duration::from_secs(30));
    assert_eq!(code, 0, "pipe: {err}");
    assert!(out == data);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs sockloop with `args`, returns (exit code, stderr).
fn outcome(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_clear_line(err: &str) {
    assert!(!err.contains("panicked"), "panic text: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "panic text: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("sockloop:")).collect();
    assert_eq!(lines.len(), 1, "want one 'sockloop:' line, got: {err}");
}

#[test]
fn usage_mistakes_exit_2_and_runtime_failures_exit_1() {
    let (code, err) = outcome(&["echo", "server", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    assert_one_clear_line(&err);
    assert!(err.contains("'--no-such-flag'"), "{err}");
    assert!(err.contains("'sockloop echo server --help'"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let (code, err) = outcome(&["echo", "server", "--port", "70000"]);
    assert_eq!(code, 2, "{err}");
    assert_one_clear_line(&err);
    assert!(err.contains("70000"), "{err}");

    let (code, err) = outcome(&["echo", "client", "127.0.0.1"]);
    assert_eq!(code, 2, "{err}");
    assert_one_clear_line(&err);
    assert!(err.contains("missing ':PORT'"), "{err}");

    let (code, err) = outcome(&["echo", "client", "127.0.0.1:99999"]);
    assert_eq!(code, 2, "{err}");
    assert_one_clear_line(&err);

    // A port in use.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = outcome(&["echo", "server", "--bind", "127.0.0.1", "--port", &port]);
    assert_eq!(code, 1, "{err}");
    assert_one_clear_line(&err);
    assert!(
        err.contains("address in use") || err.contains("address already in use"),
        "{err}"
    );

    // A refused connection: bind a port, then free it so nobody listens there.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, err) = outcome(&["echo", "client", &free.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert_one_clear_line(&err);
    assert!(err.contains("connection refused"), "{err}");
}

#[test]
fn ipv6_and_host_names_work() {
    let (_server, addr) = echo_server(&[]);
    let by_name = format!("localhost:{}", addr.port());
    let (code, out, err) = run_client(
        &by_name,
        &[],
        b"by name\n".to_vec(),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"by name\n");

    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping the [::1] half");
        return;
    }
    let mut server6 = Proc::start(sockloop(&[
        "echo", "server", "--bind", "::1", "--port", "0",
    ]));
    let addr6 = server6.listening_addr();
    assert!(addr6.is_ipv6());
    let (code, out, err) = run_client(
        &addr6.to_string(),
        &[],
        b"over v6\n".to_vec(),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"over v6\n");
}

#[test]
fn sigterm_under_traffic_exits_zero() {
    let (mut server, addr) = echo_server(&[]);
    let clients: Vec<_> = (0..4u64)
        .map(|i| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                let data = pattern(64 * 1024, 20 + i);
                for _ in 0..1000 {
                    if stream.write_all(&data).is_err() {
                        break;
                    }
                    let mut back = vec![0; data.len()];
                    if stream.read_exact(&mut back).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    // Wait until traffic flows: a fresh client gets an echo.
    let mut probe = connect(addr);
    write_all(&mut probe, b"x");
    assert_eq!(read_exact(&mut probe, 1), b"x");
    // How soon it stops is the benchmark's business (README, Performance);
    // the deadline here only bounds a hang.
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    for client in clients {
        let _ = client.join();
    }
}

#[test]
fn out_of_descriptors_neither_spins_nor_hangs_and_recovers() {
    let mut cmd = sockloop(&["echo", "server", "--bind", "127.0.0.1", "--port", "0"]);
    // SAFETY: setrlimit(2) in the child between fork and exec touches nothing shared.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Proc::start(cmd);
    let addr = server.listening_addr();
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();

    // 200 connection attempts against a limit of 64 descriptors.
    let mut held = Vec::new();
    for _ in 0..200 {
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            continue;
        };
        stream.set_nonblocking(true).unwrap();
        held.push(stream);
    }
    // The ones over the limit are told so and closed, not left hanging.
    let told_full = eventually(
        Duration::from_secs(10),
        "a client told the server is full",
        || {
            let mut told = 0;
            for stream in held.iter_mut() {
                let mut buf = [0u8; 64];
                if let Ok(n) = stream.peek(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n]).contains("server full") {
                        told += 1;
                    }
                }
            }
            (told > 0).then_some(told)
        },
    );
    assert!(told_full > 0);
    // Still responsive: an accepted connection (nothing to read yet: peek
    // says WouldBlock, where a refused one holds the notice) echoes.
    let mut served = false;
    for stream in held.iter_mut() {
        let waiting = stream.peek(&mut [0u8; 1]);
        if !waiting.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock) {
            continue;
        }
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        if stream.write_all(b"ping").is_ok() {
            let mut got = [0u8; 4];
            if stream.read_exact(&mut got).is_ok() && &got == b"ping" {
                served = true;
                break;
            }
        }
    }
    assert!(served, "no accepted connection was served");
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    assert!(
        cpu < 0.5 * wall + 0.2,
        "server used {cpu:.2}s CPU in {wall:.2}s: spinning?"
    );

    // Once the others close, a new client is served.
    drop(held);
    let mut fresh = eventually(
        Duration::from_secs(10),
        "a fresh client to be served",
        || {
            let mut stream = connect(addr);
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            stream.write_all(b"hello").ok()?;
            let mut got = [0u8; 5];
            stream.read_exact(&mut got).ok()?;
            (&got == b"hello").then_some(stream)
        },
    );
    write_all(&mut fresh, b"again");
    assert_eq!(read_exact(&mut fresh, 5), b"again");
}

#[test]
fn sigusr1_lists_one_row_per_client() {
    let (mut server, addr) = echo_server(&[]);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    for client in clients.iter_mut() {
        write_all(client, b"hi");
        assert_eq!(read_exact(client, 2), b"hi");
    }
    let rows = table_rows(&mut server);
    assert_eq!(rows.len(), 3, "rows: {rows:?}");
    for row in &rows {
        assert!(row.contains("127.0.0.1:"), "row without peer: {row}");
        assert!(row.contains("open"), "row without state: {row}");
    }
}

#[test]
fn an_idle_server_says_it_spends_its_time_blocked_in_poll() {
    // Each SIGUSR1 ends the poll it interrupts (EINTR): that wait must still
    // count as time blocked, or an idle server reports itself busy.
    let (mut server, _addr) = echo_server(&[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = server.drain_lines().len();
        server.signal(libc::SIGUSR1);
        let header = server.wait_line_after(before, "connection table:", Duration::from_secs(5));
        let share: f64 = header
            .split("% blocked in poll")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no share of time blocked in {header:?}"));
        if share >= 90.0 {
            assert!(share <= 100.0, "{header}");
            return;
        }
        // Idle a little longer, so startup weighs less; the deadline bounds it.
        assert!(
            Instant::now() < deadline,
            "still {share}% blocked: {header}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unbounded_reports_its_peak_memory_not_what_is_left_at_exit() {
    const SENT: usize = 64 * 1024 * 1024;
    let (mut server, addr) = echo_server(&["--unbounded"]);
    // A client that sends and never reads: the server queues its echo.
    let mut hog = connect(addr);
    write_all(&mut hog, &pattern(SENT, 3));
    // Gone with its echo unread: the server frees the queue before it exits.
    drop(hog);
    server.wait_line("conn#0 ", Duration::from_secs(20));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let lesson = server.wait_line("what you just saw", Duration::from_secs(5));
    let peak_mib: f64 = lesson
        .split(" MiB")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in MiB: {lesson}"));
    // Most of what was sent was held at once (the kernel's buffers hold the rest).
    assert!(peak_mib >= 40.0, "{lesson}");
    assert!(lesson.contains("peak"), "{lesson}");
}

#[test]
fn trace_shows_accept_read_write_and_close() {
    let mut server = Proc::start(sockloop(&[
        "--trace",
        "echo",
        "server",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
    ]));
    let addr = server.listening_addr();
    let mut client = connect(addr);
    write_all(&mut client, b"traced");
    assert_eq!(read_exact(&mut client, 6), b"traced");
    drop(client);
    server.wait_line("accepted conn#", Duration::from_secs(5));
    server.wait_line("read 6 B", Duration::from_secs(5));
    server.wait_line("wrote 6 B", Duration::from_secs(5));
    server.wait_line("closed (", Duration::from_secs(5));
}

#[test]
fn naive_client_deadlocks_and_explains_while_the_real_one_finishes() {
    let (_server, addr) = echo_server(&[]);
    let input = pattern(20 * 1024 * 1024, 8);
    let (code, _out, err) = run_client(
        &addr.to_string(),
        &["--naive", "--watchdog", "2"],
        input.clone(),
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("watchdog: no progress for 2 s"), "{err}");
    assert!(err.contains("SIOCINQ") && err.contains("SIOCOUTQ"), "{err}");
    assert!(err.contains("what you just saw"), "{err}");
    // The same input through the real client finishes.
    let (code, out, err) = run_client(
        &addr.to_string(),
        &[],
        input.clone(),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out == input);
}

#[test]
fn naive_client_against_an_unbounded_server_says_the_server_held_the_echo() {
    // No deadlock: the server reads everything and keeps the echo in its
    // own memory. The diagnosis must say so, not blame the kernel buffers.
    let (_server, addr) = echo_server(&["--unbounded"]);
    // More than the kernel buffers on both ends could ever hold.
    let most = |setting: &str| -> usize {
        let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{setting}")).unwrap();
        text.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let input = pattern(2 * (most("tcp_rmem") + most("tcp_wmem")) + (8 << 20), 9);
    let (code, out, err) = run_client(
        &addr.to_string(),
        &["--naive", "--watchdog", "10"],
        input.clone(),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out == input, "the echo differs");
    assert!(err.contains("what you just saw"), "{err}");
    assert!(!err.contains("fitted in the kernel buffers"), "{err}");
    assert!(err.contains("its own memory"), "{err}");
}
