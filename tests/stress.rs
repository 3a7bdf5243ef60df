// The load generator, `sockloop stress`, run as a user runs it: the real
// binary against real servers on loopback (sockloop's own, or a small
// misbehaving server written here: one that corrupts a byte, one that stalls,
// a chat relay), reading its `--json` line the way a script would.
//
// Every run is short (2-3 s of measuring) and every wait has a deadline.

mod stress_support;
mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use stress_support::{assert_documented, run, Outcome};
use support::{echo_server, sockloop, Proc};

/// The fields the README's JSON appendix promises in every TCP mode's line.
const COMMON_FIELDS: &[&str] = &[
    "schema",
    "type",
    "mode",
    "target",
    "duration_s",
    "interrupted",
    "conns",
    "connected",
    "connect",
    "generator",
];

fn assert_fields(outcome: &Outcome, fields: &[&str]) {
    assert_documented(outcome.json());
    let object = outcome.json().as_object().expect("a JSON object");
    for field in COMMON_FIELDS.iter().chain(fields) {
        assert!(
            object.contains_key(*field),
            "JSON lacks {field:?}: {}",
            outcome.stdout
        );
    }
    assert_eq!(outcome.json()["schema"], 1);
    assert_eq!(outcome.json()["type"], "summary");
    for key in [
        "refused",
        "timed_out",
        "reset",
        "no_ports",
        "no_files",
        "no_system_files",
    ] {
        assert!(
            outcome.json()["connect"]["failures"].get(key).is_some(),
            "connect.failures lacks {key}"
        );
    }
    for key in ["loop_utilisation", "cpu_s", "bottleneck", "fd_limit"] {
        assert!(
            outcome.json()["generator"].get(key).is_some(),
            "generator lacks {key}"
        );
    }
}

#[test]
fn echo_with_500_connections_verifies_every_byte_and_reports() {
    let (_server, addr) = echo_server(&[]);
    let outcome = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "--conns",
            "500",
            "--duration",
            "2",
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_fields(
        &outcome,
        &[
            "size",
            "pipeline",
            "msgs",
            "msgs_per_s",
            "mb_per_s",
            "latency",
            "latency_uncorrected",
            "errors",
            "first_error",
        ],
    );
    assert_eq!(outcome.num("connected"), 500.0);
    assert_eq!(outcome.num("errors/total"), 0.0);
    assert!(outcome.num("msgs") > 0.0);
    assert!(outcome.num("latency/p99_us") > 0.0);
    assert!(
        outcome
            .stderr
            .lines()
            .any(|l| l.contains("echo: 500/500 up") && l.contains("msgs/s")),
        "no progress line:\n{}",
        outcome.stderr
    );
    for word in ["p50", "p90", "p99", "p99.9", "max", "loop busy"] {
        assert!(outcome.stderr.contains(word), "summary lacks {word}");
    }
}

/// An echo server (a thread per client) that changes the byte at stream
/// offset `at` of its first client, once.
fn corrupting_server(at: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let corrupted = Arc::new(AtomicBool::new(false));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let corrupted = Arc::clone(&corrupted);
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let mut offset = 0u64;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let range = offset..offset + n as u64;
                    if range.contains(&at) && !corrupted.swap(true, Ordering::SeqCst) {
                        buf[(at - offset) as usize] ^= 0x20;
                    }
                    offset += n as u64;
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Runs `stress echo` against a server that corrupts stream offset `at` and
/// checks the report names the connection and that offset.
fn check_corruption_is_caught(at: u64, extra: &[&str]) {
    let addr = corrupting_server(at);
    let target = addr.to_string();
    let mut args = vec!["stress", "echo", &target, "--duration", "1", "--json"];
    args.extend_from_slice(extra);
    let outcome = run(&args, Duration::from_secs(20));
    assert_eq!(outcome.code, Some(1), "stderr:\n{}", outcome.stderr);
    assert!(outcome.num("errors/mismatch") >= 1.0);
    let first = outcome.json()["first_error"].as_str().unwrap().to_string();
    assert!(
        first.starts_with("connection ") && first.contains(&format!("byte offset {at} ")),
        "{first}"
    );
    assert!(
        outcome
            .stderr
            .contains(&format!("echo mismatch at byte offset {at}")),
        "stderr:\n{}",
        outcome.stderr
    );
    let last = outcome.stderr.lines().last().unwrap();
    assert!(last.starts_with("sockloop: stress echo: 1 error"), "{last}");
}

#[test]
fn a_corrupted_byte_is_reported_with_its_connection_and_offset() {
    check_corruption_is_caught(1000, &["--conns", "4"]);
}

#[test]
fn a_corrupted_byte_is_caught_in_pipelined_bulk_echo_too() {
    check_corruption_is_caught(
        300_001,
        &["--conns", "2", "--size", "16384", "--pipeline", "8"],
    );
}

#[test]
fn conns_holds_2000_connections_and_the_server_still_answers() {
    // Thousands, not the benchmark's 10,000 (README, Performance): enough
    // to need the generator's machinery, few enough that a loaded 2-core
    // machine opens them all; the connect deadline is generous for the same
    // reason (a dropped SYN is retried after 1 s, then 3 s).
    let (server, addr) = echo_server(&[]);
    let outcome = run(
        &[
            "stress",
            "conns",
            &addr.to_string(),
            "--conns",
            "2000",
            "--hold",
            "2",
            "--connect-timeout",
            "30",
            "--json",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_fields(&outcome, &["hold_s", "held", "closed_by_server", "probe"]);
    assert_eq!(outcome.num("connected"), 2000.0);
    assert_eq!(outcome.num("connect/failures/total"), 0.0);
    assert_eq!(outcome.num("held"), 2000.0);
    assert_eq!(outcome.num("closed_by_server/total"), 0.0);
    assert_eq!(outcome.json()["probe"]["ok"], true, "{}", outcome.stdout);
    assert!(outcome.num("connect/latency/p99_us") > 0.0);
    drop(server);
}

/// An echo server that, once `after` has passed since its first client,
/// stops answering everyone for `stall` (the first read after that moment
/// starts the stall).
fn stalling_server(after: Duration, stall: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = Arc::new(Mutex::new(None::<Instant>));
    // Nanoseconds after the origin when the stall ends; 0 = not started.
    let stall_until = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let origin = *origin.lock().unwrap().get_or_insert_with(Instant::now);
            let stall_until = Arc::clone(&stall_until);
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let now = origin.elapsed();
                    if now >= after {
                        let until = (now + stall).as_nanos() as u64;
                        let _ = stall_until.compare_exchange(
                            0,
                            until,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                        let until = Duration::from_nanos(stall_until.load(Ordering::SeqCst));
                        let now = origin.elapsed();
                        if now < until {
                            thread::sleep(until - now);
                        }
                    }
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn open_loop_rate_shows_a_stall_as_latency_not_as_missing_samples() {
    let addr = stalling_server(Duration::from_millis(1000), Duration::from_secs(1));
    let outcome = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "--conns",
            "10",
            "--rate",
            "1000",
            "--duration",
            "3",
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    let corrected_max = outcome.num("latency/max_us");
    let corrected_p99 = outcome.num("latency/p99_us");
    let plain_p99 = outcome.num("latency_uncorrected/p99_us");
    assert!(corrected_max >= 1e6, "corrected max {corrected_max} µs");
    assert!(corrected_p99 >= 0.9e6, "corrected p99 {corrected_p99} µs");
    assert!(
        plain_p99 * 5.0 < corrected_p99,
        "uncorrected p99 {plain_p99} µs is not far below {corrected_p99} µs"
    );
    assert!(outcome.num("asked_per_s") > 0.0);
    assert!(
        outcome
            .stderr
            .contains("corrected for coordinated omission"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn more_connections_than_descriptors_is_refused_up_front() {
    let outcome = run(
        &["stress", "conns", "127.0.0.1:9", "--conns", "1000000"],
        Duration::from_secs(10),
    );
    assert_eq!(outcome.code, Some(2));
    let line = outcome.stderr.trim();
    assert!(
        line.starts_with("sockloop: --conns 1000000 needs") && line.contains("room for"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
}

/// Seconds no clock can hold, or centuries of them, are a typo: one usage
/// line and exit 2, before any connection, never an internal error.
#[test]
fn absurd_durations_and_start_times_are_usage_errors() {
    let (_held, target) = support::refusing_addr();
    let target = target.to_string();
    let huge = "100000000000000000000"; // 1e20 s: more than a Duration holds
    let past_the_clock = "10000000000000000000"; // 1e19 s: a Duration, but no Instant
    let centuries = "100000000000"; // about 3,000 years
    let cases: &[&[&str]] = &[
        &["echo", "--start-at", "@1e30"],
        &["echo", "--start-at", "@1e19"],
        &["echo", "-d", huge],
        &["echo", "-d", centuries],
        &["echo", "--drain", huge],
        &["echo", "--warmup", huge],
        &["echo", "--connect-timeout", "1e30"],
        &["echo", "--connect-timeout", past_the_clock],
        &["chat", "-d", huge],
        &["chat", "--settle", huge],
        &["chat", "--drain", centuries],
        &["conns", "--hold", "1e30"],
        &["conns", "--hold", past_the_clock],
        &["udp", "--drain", "1e30"],
        &["udp", "--drain", centuries],
        // A rate so slow that the second message is due after centuries.
        &["echo", "--rate", "1e-30"],
        &["echo", "--rate-per-conn", "1e-300"],
        &["chat", "--rate", "1e-30"],
        &["conns", "--connect-rate", "1e-30"],
        &["udp", "--rate", "1e-30"],
    ];
    for case in cases {
        let mut args = vec!["stress"];
        args.extend_from_slice(case);
        args.push(&target);
        let outcome = run(&args, Duration::from_secs(10));
        let stderr = outcome.stderr.trim();
        assert_eq!(outcome.code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("sockloop: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("internal error"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn a_refused_target_is_counted_by_cause_and_explained() {
    // A port nobody listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let outcome = run(
        &[
            "stress",
            "echo",
            &target,
            "--conns",
            "3",
            "--duration",
            "1",
            "--json",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(outcome.code, Some(1));
    assert_eq!(outcome.num("connect/failures/refused"), 3.0);
    assert!(
        outcome.stderr.contains("nothing accepts connections"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn ctrl_c_ends_the_run_early_and_still_prints_the_summary() {
    let (_server, addr) = echo_server(&[]);
    let mut cmd: Command = sockloop(&[
        "stress",
        "echo",
        &addr.to_string(),
        "--conns",
        "20",
        "--duration",
        "60",
        "--json",
    ]);
    cmd.stdout(Stdio::piped());
    let mut stress = Proc::start(cmd);
    stress.wait_line("echo: 20/20 up", Duration::from_secs(20));
    stress.signal(libc::SIGINT);
    // Long before --duration 60 ends it; the deadline only bounds a hang.
    let status = stress.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let mut stdout = String::new();
    stress
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let json: Value = serde_json::from_str(stdout.trim()).expect("JSON summary");
    assert_eq!(json["interrupted"], true);
    assert!(json["msgs"].as_u64().unwrap() > 0);
    stress.wait_line("(interrupted)", Duration::from_secs(2));
}

/// A chat relay (a thread per client, 2-byte length prefix) that relays
/// every frame to every other client, except that the `drop_frame`-th frame
/// it relays is not delivered to one of its recipients.
fn lossy_relay(drop_frame: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Arc<Mutex<Vec<(usize, TcpStream)>>> = Arc::default();
    let relayed = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for (id, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let _ = stream.set_nodelay(true);
            clients
                .lock()
                .unwrap()
                .push((id, stream.try_clone().unwrap()));
            let clients = Arc::clone(&clients);
            let relayed = Arc::clone(&relayed);
            thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut frame = vec![0u8; 2];
                    if reader.read_exact(&mut frame).is_err() {
                        break;
                    }
                    let len = u16::from_be_bytes([frame[0], frame[1]]) as usize;
                    if len == 0 {
                        break;
                    }
                    frame.resize(2 + len, 0);
                    if reader.read_exact(&mut frame[2..]).is_err() {
                        break;
                    }
                    let number = relayed.fetch_add(1, Ordering::SeqCst);
                    let mut skip = drop_frame == number;
                    for (other, stream) in clients.lock().unwrap().iter_mut() {
                        if *other == id {
                            continue;
                        }
                        if skip {
                            skip = false;
                            continue;
                        }
                        let _ = stream.write_all(&frame);
                    }
                }
                clients.lock().unwrap().retain(|(other, _)| *other != id);
            });
        }
    });
    addr
}

fn chat_run(addr: SocketAddr) -> Outcome {
    run(
        &[
            "stress",
            "chat",
            &addr.to_string(),
            "--conns",
            "50",
            "--senders",
            "5",
            "--rate",
            "500",
            "--duration",
            "2",
            "--json",
        ],
        Duration::from_secs(30),
    )
}

#[test]
fn chat_delivers_every_frame_to_every_other_client_in_order() {
    // The server prints every message it relays; nobody reads that here.
    let mut cmd = sockloop(&[
        "chat",
        "server",
        "--relay-only",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    cmd.stdout(std::process::Stdio::null());
    let mut server = Proc::start(cmd);
    let outcome = chat_run(server.listening_addr());
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_fields(
        &outcome,
        &[
            "senders",
            "rate_per_sender",
            "sent",
            "expected",
            "delivered",
            "delivered_per_s",
            "delivered_ratio",
            "lost",
            "out_of_order",
            "latency",
            "latency_uncorrected",
            "send_lag",
            "errors",
        ],
    );
    let sent = outcome.num("sent");
    assert!(sent >= 900.0, "sent {sent}");
    assert_eq!(outcome.num("expected"), sent * 49.0);
    assert_eq!(outcome.num("delivered"), outcome.num("expected"));
    assert_eq!(outcome.num("out_of_order"), 0.0);
    assert_eq!(outcome.num("errors/total"), 0.0);
    assert!(outcome.num("latency/p99_us") > 0.0);
}

#[test]
fn chat_catches_a_relay_that_drops_one_frame() {
    let outcome = chat_run(lossy_relay(200));
    assert_eq!(outcome.code, Some(1), "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.num("lost"), 1.0);
    assert_eq!(outcome.num("out_of_order"), 1.0);
    assert_eq!(outcome.num("delivered") + 1.0, outcome.num("expected"));
    assert!(
        outcome.stderr.contains("expected (1 frame(s) skipped)"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn udp_to_its_own_socket_sees_every_datagram() {
    let outcome = run(
        &[
            "stress", "udp", "--count", "10000", "--rate", "20000", "--json",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.json()["to_self"], true);
    assert_documented(outcome.json());
    assert_eq!(outcome.num("sent"), 10000.0);
    assert_eq!(outcome.num("sink/unique"), 10000.0);
    assert_eq!(outcome.num("sink/lost"), 0.0);
    assert_eq!(outcome.num("sink/duplicated"), 0.0);
    assert!(outcome.num("generator/loop_utilisation") >= 0.0);
}

#[test]
fn udp_without_segmentation_sees_every_datagram_too() {
    let outcome = run(
        &[
            "stress", "udp", "--count", "10000", "--rate", "20000", "--size", "50", "--no-gso",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("segmentation offload off"),
        "{}",
        outcome.stderr
    );
    assert_eq!(outcome.num("sent"), 10000.0);
    assert_eq!(outcome.num("sink/unique"), 10000.0);
    assert_eq!(outcome.num("sink/duplicated"), 0.0);
    assert_eq!(outcome.num("sink/not_stream"), 0.0);
}

#[test]
fn udp_to_sockloop_udp_sink_agrees_with_the_sink_report() {
    let mut sink = Proc::start(sockloop(&[
        "udp-sink",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--count",
        "10000",
        "--rcvbuf",
        "4000000",
        "--json",
    ]));
    let addr = sink.listening_addr();
    let outcome = run(
        &[
            "stress",
            "udp",
            &addr.to_string(),
            "--count",
            "10000",
            "--rate",
            "10000",
            "--size",
            "100",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_documented(outcome.json());
    assert_eq!(outcome.json()["to_self"], false);
    assert_eq!(outcome.json()["sink"], Value::Null);
    assert_eq!(outcome.num("send_errors/total"), 0.0);
    // The sink ends by itself once all 10,000 numbers arrived.
    let status = sink.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let mut report = String::new();
    sink.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    let report: Value = serde_json::from_str(report.trim()).expect("udp-sink JSON");
    let sent = outcome.num("sent");
    assert_eq!(sent, 10000.0);
    assert_eq!(report["received"].as_f64(), Some(sent), "{report}");
    assert_eq!(report["unique"].as_f64(), Some(sent), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(
        report["not_stream"], 0,
        "the sink read every message: {report}"
    );
}

#[test]
fn connects_lost_to_a_full_listen_backlog_time_out_and_are_explained() {
    // A server that listens with a backlog of 1 and never accepts: once its
    // accept queue is full, the kernel drops further SYNs.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(1).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let outcome = run(
        &[
            "stress",
            "conns",
            &addr.to_string(),
            "--conns",
            "20",
            "--hold",
            "0",
            "--connect-timeout",
            "1",
            "--probe",
            "none",
            "--json",
        ],
        Duration::from_secs(20),
    );
    // Failed connects are counted, never fatal.
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    let connected = outcome.num("connected");
    let timed_out = outcome.num("connect/failures/timed_out");
    assert!(connected >= 1.0 && timed_out >= 1.0, "{}", outcome.stdout);
    assert_eq!(connected + timed_out, 20.0, "{}", outcome.stdout);
    let limit = outcome.json()["connect"]["limit"].as_str().unwrap();
    assert!(
        limit.contains("listen backlog") && limit.contains("somaxconn is "),
        "{limit}"
    );
    drop(listener);
}

#[test]
fn connect_rate_paces_the_opening_of_connections() {
    let (_server, addr) = echo_server(&[]);
    let outcome = run(
        &[
            "stress",
            "conns",
            &addr.to_string(),
            "--conns",
            "300",
            "--connect-rate",
            "500",
            "--hold",
            "0",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.num("connected"), 300.0);
    // 300 connections at 500/s: the last one may start at 598 ms, not before.
    let total = outcome.num("connect/total_s");
    assert!((0.55..3.0).contains(&total), "opened in {total} s");
}
