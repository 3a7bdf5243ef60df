//! The command line as someone used to nc, iperf3 and wrk types it: units on
//! every size and duration, nc's `HOST PORT` answered with a hint, the same
//! short flags everywhere, `--rate 0` meaning one thing, and outcomes that
//! say what happened — a full server, a TLS mismatch, a certificate from
//! someone else, nothing listening — with the right exit code and no noise.
//!
//! Each test runs the real binary on loopback; every run has a deadline.

mod support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const SHORT: Duration = Duration::from_secs(20);

/// Runs `sockloop ARGS` with `input` on stdin: (exit code, stdout, stderr).
fn run(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let (code, out, err) = run_with_input(args, input.to_vec(), SHORT);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// A TCP port on 127.0.0.1 held by the test, so a server told to listen
/// there fails at once (exit 1) — after its options were all accepted.
fn busy_tcp_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    (listener, port)
}

/// The same for UDP.
fn busy_udp_port() -> (UdpSocket, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port().to_string();
    (socket, port)
}

/// Options were accepted: no usage error (exit 2) and no clap complaint.
fn assert_accepted(what: &str, code: i32, err: &str) {
    assert_ne!(code, 2, "{what}: a usage error:\n{err}");
    assert!(
        !err.contains("invalid value"),
        "{what}: a value was refused:\n{err}"
    );
}

#[test]
fn sizes_and_durations_take_units_on_every_command() {
    let (_held, port) = busy_tcp_port();
    let (_held_udp, udp_port) = busy_udp_port();
    let (_refusing, nobody) = refusing_addr();
    let nobody = nobody.to_string();
    let bind = ["--bind", "127.0.0.1", "--port", &port];

    let mut echo_server = vec!["echo", "server", "--max-output", "64K", "--rate-limit"];
    echo_server.extend(["100/s,64K/s"]);
    echo_server.extend(bind);
    let (code, _, err) = run(&echo_server, b"");
    assert_accepted("echo server", code, &err);
    assert!(err.contains("cannot listen"), "{err}");

    let mut chat_server = vec![
        "chat",
        "server",
        "--relay-only",
        "--max-frame",
        "1K",
        "--max-backlog",
        "64K",
        "--idle-timeout",
        "10m",
        "--udp-port",
        "0",
        "--udp-peer-timeout",
        "90s",
        "--web-port",
        "0",
        "--web-ping",
        "45s",
    ];
    chat_server.extend(bind);
    let (code, _, err) = run(&chat_server, b"");
    assert_accepted("chat server", code, &err);
    assert!(err.contains("cannot listen"), "{err}");

    let mut tcp_chat = vec![
        "tcp-chat",
        "--name",
        "Ann",
        "--retry-max",
        "1500ms",
        "--max-frame",
        "2K",
        "--max-backlog",
        "1M",
    ];
    tcp_chat.extend(bind);
    let (code, _, err) = run(&tcp_chat, b"");
    assert_accepted("tcp-chat", code, &err);
    assert!(err.contains("cannot listen"), "{err}");

    let (code, _, err) = run(
        &[
            "udp-chat",
            "--name",
            "Ann",
            "--bind",
            "127.0.0.1",
            "--port",
            &udp_port,
        ],
        b"",
    );
    assert_accepted("udp-chat", code, &err);

    let (code, _, err) = run(
        &["echo", "client", &nobody, "--naive", "--watchdog", "500ms"],
        b"",
    );
    assert_accepted("echo client", code, &err);
    assert_eq!(code, 1, "{err}");

    let (code, _, err) = run(
        &[
            "chat",
            "client",
            &nobody,
            "--name",
            "Bob",
            "--max-frame",
            "4K",
        ],
        b"",
    );
    assert_accepted("chat client", code, &err);
    assert_eq!(code, 1, "{err}");

    // Short runs that finish by themselves: the units took effect.
    let (code, out, err) = run(
        &[
            "udp-sink",
            "--bind",
            "127.0.0.1",
            "--duration",
            "300ms",
            "--idle-timeout",
            "100ms",
            "--rcvbuf",
            "256K",
            "--json",
        ],
        b"",
    );
    assert_eq!(code, 0, "udp-sink: {err}");
    let report: Value = serde_json::from_str(out.trim()).expect("udp-sink JSON");
    assert!(report["elapsed_s"].as_f64().unwrap() < 60.0, "{report}");

    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap().to_string();
    let (code, _, err) = run(
        &[
            "udp-stream",
            "--count",
            "3",
            "--size",
            "1K",
            "--rate",
            "1k",
            &to,
        ],
        b"",
    );
    assert_eq!(code, 0, "udp-stream: {err}");
    let mut buf = [0u8; 4096];
    sink.set_read_timeout(Some(SHORT)).unwrap();
    let n = sink.recv(&mut buf).expect("a datagram");
    assert!(n >= 1024, "--size 1K gave a {n}-byte datagram");

    for mode in [
        vec![
            "stress",
            "echo",
            &nobody,
            "-c",
            "2",
            "-d",
            "500ms",
            "--drain",
            "1s",
            "--warmup",
            "0s",
            "--size",
            "1K",
            "--connect-timeout",
            "2s",
        ],
        vec![
            "stress", "chat", &nobody, "-c", "2", "-d", "1s", "--settle", "100ms", "--drain",
            "500ms", "--size", "1K",
        ],
        vec!["stress", "conns", &nobody, "-c", "2", "--hold", "1s"],
    ] {
        let (code, _, err) = run(&mode, b"");
        assert_accepted(&mode.join(" "), code, &err);
        assert_eq!(code, 1, "{err}");
    }
    let (code, _, err) = run(
        &[
            "stress", "udp", "--count", "20", "--rate", "0", "--size", "1K", "--drain", "200ms",
        ],
        b"",
    );
    assert_eq!(code, 0, "stress udp: {err}");
}

#[test]
fn a_bad_unit_is_a_usage_error_that_says_what_is_expected() {
    let (code, _, err) = run(&["echo", "server", "--max-output", "64Q"], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("sockloop: "), "{err}");
    assert!(err.contains("K, M or G"), "{err}");
    let (code, _, err) = run(&["udp-sink", "--idle-timeout", "2 fortnights"], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("500ms"), "{err}");
}

#[test]
fn host_and_port_as_two_words_get_a_hint() {
    for args in [
        &["echo", "client", "localhost", "8080"][..],
        &["chat", "client", "localhost", "8080", "--name", "Bob"][..],
        &["stress", "echo", "localhost", "8080", "-d", "1"][..],
        &["stress", "conns", "localhost", "8080"][..],
        &["udp-stream", "--count", "1", "localhost", "8080"][..],
    ] {
        let (code, out, err) = run(args, b"");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(
            err.starts_with("sockloop: ") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(
            err.contains("did you mean localhost:8080?"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn short_flags_are_the_same_everywhere() {
    let (_held, port) = busy_tcp_port();
    let (code, _, err) = run(
        &[
            "chat",
            "server",
            "-n",
            "Ann",
            "-p",
            &port,
            "--bind",
            "127.0.0.1",
        ],
        b"",
    );
    assert_accepted("chat server -n -p", code, &err);
    assert!(err.contains("cannot listen"), "{err}");
    let (_refusing, nobody) = refusing_addr();
    let nobody = nobody.to_string();
    let (code, _, err) = run(&["chat", "client", "-n", "Bob", &nobody], b"");
    assert_accepted("chat client -n", code, &err);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run(&["stress", "conns", &nobody, "-c", "2", "-d", "500ms"], b"");
    assert_accepted("stress conns -c -d", code, &err);
    let (code, _, err) = run(
        &[
            "stress", "udp", "-R", "0", "--count", "10", "--drain", "100ms",
        ],
        b"",
    );
    assert_eq!(code, 0, "stress udp -R: {err}");
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap().to_string();
    let (code, _, err) = run(
        &["udp-stream", "-c", "2", "-R", "100", "-n", "Eve", &to],
        b"",
    );
    assert_eq!(code, 0, "udp-stream -c -R -n: {err}");
}

#[test]
fn help_lists_the_commands_own_options_before_the_global_ones() {
    for command in [
        &["echo", "server"][..],
        &["echo", "client"][..],
        &["chat", "client"][..],
        &["stress", "echo"][..],
        &["udp-sink"][..],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let (code, out, _) = run(&args, b"");
        assert_eq!(code, 0);
        let heading = out
            .find("Global options:")
            .unwrap_or_else(|| panic!("{command:?}: no 'Global options:' heading:\n{out}"));
        for global in ["--trace", "--verbose", "--quiet"] {
            let at = out.find(global).unwrap();
            assert!(at > heading, "{command:?}: {global} before its heading");
        }
        let own = out.find("Options:").unwrap();
        assert!(
            own < heading,
            "{command:?}: own options after the global ones"
        );
    }
}

#[test]
fn rate_zero_means_unpaced_in_every_command() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["udp-stream", "--count", "5", "--rate", "0", &to], b"");
    assert_eq!(code, 0, "udp-stream --rate 0: {err}");

    let (_echo, addr) = echo_server(&[]);
    let (code, out, err) = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "-c",
            "2",
            "-d",
            "300ms",
            "-R",
            "0",
            "--json",
        ],
        b"",
    );
    assert_eq!(code, 0, "stress echo -R 0: {err}");
    let json: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(json["rate_per_conn"], Value::Null, "closed loop: {json}");
    assert!(json["msgs"].as_f64().unwrap() > 0.0, "{json}");

    let (_chat, addr) = chat_server_with(&[], |_| {});
    let (code, out, err) = run(
        &[
            "stress",
            "chat",
            &addr.to_string(),
            "-c",
            "3",
            "--senders",
            "1",
            "-d",
            "300ms",
            "-R",
            "0",
            "--json",
        ],
        b"",
    );
    assert_eq!(code, 0, "stress chat -R 0: {err}");
    let json: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(json["asked_per_s"], Value::Null, "unpaced: {json}");
    assert!(json["sent"].as_f64().unwrap() > 0.0, "{json}");
    assert!(err.contains("unpaced"), "{err}");

    let (code, out, err) = run(
        &["stress", "udp", "--count", "100", "--rate", "0", "--json"],
        b"",
    );
    assert_eq!(code, 0, "stress udp --rate 0: {err}");
    let json: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(json["asked_per_s"], Value::Null, "{json}");
}

/// A server that takes one client, holding its one place with a raw connection.
fn full_echo_server() -> (Proc, SocketAddr, std::net::TcpStream) {
    let (server, addr) = echo_server(&["--max-conns", "1"]);
    let mut holder = connect(addr);
    write_all(&mut holder, b"x");
    assert_eq!(read_exact(&mut holder, 1), b"x");
    (server, addr, holder)
}

#[test]
fn a_client_refused_by_a_full_server_says_so_and_exits_1() {
    let (_server, addr, _holder) = full_echo_server();
    let (code, out, err) = run(&["echo", "client", &addr.to_string()], b"hello\n");
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "the notice went to stdout: {out:?}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("sockloop: ") && last.contains("full"),
        "{err}"
    );

    let (mut chat, addr) = chat_server_with(&["--max-conns", "1"], |_| {});
    let _holder = connect(addr);
    chat.wait_line("connected", SHORT);
    let (code, out, err) = run(
        &["chat", "client", &addr.to_string(), "--name", "Bob"],
        b"hi\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "the notice went to stdout: {out:?}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("sockloop: ") && last.contains("full"),
        "{err}"
    );
}

#[test]
fn an_echo_of_the_full_notice_is_still_an_echo() {
    let (_server, addr) = echo_server(&[]);
    let notice = b"sockloop: server full, try again later\n";
    let (code, out, err) = run(&["echo", "client", &addr.to_string()], notice);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.as_bytes(), notice);
}

/// A fresh certificate and key in a temporary directory.
fn certificate(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sockloop-cli-{tag}-{}", std::process::id()));
    let out = Command::new(bin())
        .args(["tls-selfsigned", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// No line a library logged reaches the user (rustls logs through `log`).
fn assert_no_library_lines(err: &str) {
    for line in err.lines() {
        assert!(
            !line.contains("ClientHello") && !line.contains("while expecting"),
            "a library's log line leaked: {line}\n{err}"
        );
    }
}

#[test]
fn tls_mismatches_are_named_with_the_fix() {
    let (cert, key) = certificate("a");
    let (other_cert, _) = certificate("b");
    let tls_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (_tls_server, tls_addr) = echo_server(&tls_args);
    let (_plain_server, plain_addr) = echo_server(&[]);

    // Plain text to a TLS port: the alert is not echoed data.
    let (code, out, err) = run(&["echo", "client", &tls_addr.to_string()], b"hello\n");
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "alert bytes on stdout: {out:?}");
    assert!(err.contains("the server speaks TLS: add --tls"), "{err}");

    // TLS to a plain port.
    let (code, out, err) = run(
        &[
            "echo",
            "client",
            &plain_addr.to_string(),
            "--tls",
            "--insecure",
        ],
        b"hello\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out:?}");
    assert!(err.contains("the server does not speak TLS"), "{err}");
    assert_no_library_lines(&err);

    // A certificate the given CA did not sign.
    let other = other_cert.to_str().unwrap();
    let (code, _, err) = run(
        &[
            "echo",
            "client",
            &tls_addr.to_string(),
            "--tls",
            "--tls-ca",
            other,
        ],
        b"hello\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("is not signed by --tls-ca {other}")),
        "{err}"
    );
    assert!(!err.contains("BadSignature"), "{err}");
    assert_no_library_lines(&err);

    // The chat client: plain text to a TLS chat server.
    let mut chat_args = vec!["--max-conns", "10"];
    chat_args.extend(tls_args);
    let (_chat, chat_addr) = chat_server_with(&chat_args, |_| {});
    let (code, out, err) = run(
        &["chat", "client", &chat_addr.to_string(), "--name", "Bob"],
        b"hi\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out:?}");
    assert!(err.contains("the server speaks TLS: add --tls"), "{err}");
}

#[test]
fn a_client_leaving_with_its_echo_unread_is_not_an_error_on_the_server() {
    let mut cmd = sockloop(&["echo", "server", "--bind", "127.0.0.1", "--port", "0"]);
    cmd.env("RUST_LOG", "debug");
    let mut server = Proc::start(cmd);
    let addr = server.listening_addr();
    let mut client = connect(addr);
    let me = client.local_addr().unwrap().to_string();
    server.wait_line(&format!("{me}: connected"), SHORT);
    let from = server.seen.len();
    write_all(&mut client, b"an echo nobody reads\n");
    wait_readable(&client, SHORT);
    // Closed with its echo unread: the kernel resets the connection, as
    // when `sockloop rand | sockloop echo client ... | head` ends.
    drop(client);
    let closed = server.wait_line_after(from, &me, SHORT);
    assert!(
        closed.starts_with("debug:"),
        "a client's reset was logged at the default level: {closed}"
    );
    assert!(!closed.contains("i/o error"), "{closed}");
}

/// Waits until `stream` has bytes to read, or `within` passes.
fn wait_readable(stream: &std::net::TcpStream, within: Duration) {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor the stream owns.
    let ready = unsafe { libc::poll(&mut poll, 1, within.as_millis() as libc::c_int) };
    assert_eq!(ready, 1, "no echo within {within:?}");
}

#[test]
fn stress_against_nothing_gives_one_explanation() {
    let (_refusing, nobody) = refusing_addr();
    let nobody = nobody.to_string();
    for mode in ["echo", "chat", "conns"] {
        let (code, _, err) = run(&["stress", mode, &nobody, "-c", "3", "-d", "1"], b"");
        assert_eq!(code, 1, "{mode}: {err}");
        assert_eq!(
            err.matches("nothing accepts connections").count(),
            1,
            "{mode}: {err}"
        );
        for noise in ["loop busy", "rate:", "throughput", "latency", "warning"] {
            assert!(!err.contains(noise), "{mode}: {noise:?} in\n{err}");
        }
        let last = err.lines().last().unwrap();
        assert!(last.starts_with("sockloop: "), "{mode}: {err}");
    }
}

#[test]
fn udp_sink_and_stress_udp_name_their_counts_alike() {
    let (code, out, err) = run(
        &[
            "udp-sink",
            "--bind",
            "127.0.0.1",
            "--duration",
            "100ms",
            "--json",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let sink: Value = serde_json::from_str(out.trim()).unwrap();
    let (code, out, err) = run(
        &["stress", "udp", "--count", "200", "--rate", "0", "--json"],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let stress: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(stress["schema"], 2, "{stress}");
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let in_sink = keys(&sink);
    let in_stress = keys(&stress["sink"]);
    for name in [
        "received",
        "unique",
        "expected",
        "lost",
        "lost_to_rcvbuf",
        "rcvbuf_drops",
        "reordered",
        "max_reorder_distance",
        "duplicated",
        "not_stream",
        "jitter_ms",
        "jitter_samples",
    ] {
        assert!(in_sink.contains(name), "udp-sink lacks {name}: {sink}");
        assert!(
            in_stress.contains(name),
            "stress udp lacks sink.{name}: {stress}"
        );
    }
    assert!(
        in_stress.is_subset(&in_sink),
        "stress udp names counts udp-sink does not: {:?}",
        in_stress.difference(&in_sink).collect::<Vec<_>>()
    );
    assert_eq!(stress["sink"]["expected"], stress["sent"], "{stress}");
}
