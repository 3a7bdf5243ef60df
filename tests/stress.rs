// The load generator, `sockloop stress`, run as a user runs it: the real
// binary against real servers on loopback (sockloop's own, or a small
// misbehaving server written here: one that corrupts a byte, one that stalls,
// a chat relay), reading its `--json` line the way a script would.
//
// Every run is short (2-3 s of measuring) and every wait has a deadline.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{echo_server, run_with_input, sockloop, Proc};

/// What one `sockloop stress ...` run left behind.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    json: Option<Value>,
}

/// Runs `sockloop ARGS` to the end (killed after `within`) and collects its output.
fn run(args: &[&str], within: Duration) -> Outcome {
    let (code, stdout, stderr) = run_with_input(args, Vec::new(), within);
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    // The summary is the last JSON line (interval lines may come before it).
    let json = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("the --json line is JSON"));
    Outcome {
        code: Some(code).filter(|c| *c >= 0),
        stdout,
        stderr,
        json,
    }
}

impl Outcome {
    fn json(&self) -> &Value {
        self.json.as_ref().unwrap_or_else(|| {
            panic!(
                "no JSON line on stdout {:?}; stderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// A number at a `/`-separated path of the JSON line, e.g.
    /// `"connect/failures/total"` (a number indexes an array: `"logs/0/count"`).
    fn num(&self, path: &str) -> f64 {
        let mut v = self.json();
        for key in path.split('/') {
            v = key
                .parse::<usize>()
                .ok()
                .and_then(|i| v.get(i))
                .or_else(|| v.get(key))
                .unwrap_or_else(|| panic!("JSON has no {path:?}: {}", self.stdout.trim()));
        }
        v.as_f64()
            .unwrap_or_else(|| panic!("JSON {path:?} is not a number: {v}"))
    }
}

/// The fields the README's JSON appendix promises in every TCP mode's line.
const COMMON_FIELDS: &[&str] = &[
    "schema",
    "mode",
    "target",
    "duration_s",
    "interrupted",
    "conns",
    "connected",
    "connect",
    "generator",
];

/// Every field of the JSON line, at any depth, is described in the README's JSON appendix.
fn assert_documented(value: &Value) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut stack = vec![value];
    while let Some(Value::Object(map)) = stack.pop() {
        for (key, inner) in map {
            assert!(
                doc.contains(&format!("`{key}`"))
                    || doc.contains(&format!(".{key}`"))
                    || doc.contains(&format!("`{key}.")),
                "field {key:?} is not documented in the README's JSON appendix"
            );
            stack.push(inner);
        }
    }
}

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
fn conns_holds_5000_connections_and_the_server_still_answers() {
    let (server, addr) = echo_server(&[]);
    let outcome = run(
        &[
            "stress",
            "conns",
            &addr.to_string(),
            "--conns",
            "5000",
            "--hold",
            "2",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_fields(&outcome, &["hold_s", "held", "closed_by_server", "probe"]);
    assert_eq!(outcome.num("connected"), 5000.0);
    assert_eq!(outcome.num("connect/failures/total"), 0.0);
    assert_eq!(outcome.num("held"), 5000.0);
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
    stress.wait_line("echo: 20/20 up", Duration::from_secs(10));
    let started = Instant::now();
    stress.signal(libc::SIGINT);
    let status = stress.wait_exit(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(5));
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
    let mut server = Proc::start(sockloop(&[
        "chat",
        "server",
        "--relay-only",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
    ]));
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

// ---- Past one machine: interval logs, merging, plots, wrk2's habits ----

/// A fresh, empty directory for one test's files (removed first if a
/// previous run left it).
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sockloop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Reads an interval log with the Python `hdrhistogram` package's own log
/// reader (HdrHistogram's reference reader for Python) and returns, per tag
/// ("" for untagged), the number of interval histograms and their total count.
fn python_reads_log(path: &std::path::Path) -> Value {
    const SCRIPT: &str = r#"
import json, sys
try:
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader
except ImportError:
    print("MISSING")
    sys.exit(3)
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 60 * 10**9, 3))
tags = {}
while True:
    hist = reader.get_next_interval_histogram()
    if hist is None:
        break
    tag = hist.get_tag() or ""
    entry = tags.setdefault(tag, {"intervals": 0, "count": 0, "max_ns": 0})
    entry["intervals"] += 1
    entry["count"] += hist.get_total_count()
    entry["max_ns"] = max(entry["max_ns"], hist.get_max_value())
print(json.dumps({"start_s": reader.get_start_time_sec(), "tags": tags}))
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is needed to read the interval log ({e}); scripts/test installs it")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("MISSING"),
        "the Python package 'hdrhistogram' is needed to check the interval log: \
         pip install hdrhistogram (scripts/test installs it)"
    );
    assert!(
        output.status.success(),
        "the Python reader failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("the reader's JSON")
}

/// Every `{...}` line of a run's stdout, parsed.
fn json_lines(outcome: &Outcome) -> Vec<Value> {
    outcome
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect()
}

#[test]
fn hist_log_holds_a_histogram_a_second_that_hdrhistograms_own_reader_reads() {
    let (_server, addr) = echo_server(&[]);
    let dir = scratch_dir("histlog");
    let log = dir.join("run.hlog");
    let outcome = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "-c",
            "10",
            "-R",
            "1000",
            "-d",
            "3",
            "--hist-log",
            log.to_str().unwrap(),
            "--json-intervals",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    let lines = json_lines(&outcome);
    let summary = lines.last().expect("a summary line");
    assert_eq!(summary["type"], "summary", "{}", outcome.stdout);
    let msgs = summary["msgs"].as_u64().unwrap();
    assert!(msgs > 0);
    // What HdrHistogram's own reader finds: one histogram a second (the
    // last may be a short one), every completed echo in them, corrected
    // and uncorrected alike.
    let read = python_reads_log(&log);
    let tags = &read["tags"];
    let corrected = &tags[""];
    let uncorrected = &tags["uncorrected"];
    assert!(corrected["intervals"].as_u64().unwrap() >= 2, "{read}");
    assert_eq!(corrected["count"].as_u64(), Some(msgs), "{read}");
    assert_eq!(uncorrected["count"].as_u64(), Some(msgs), "{read}");
    assert_eq!(uncorrected["intervals"], corrected["intervals"], "{read}");
    let start = summary["start_unix_s"].as_f64().unwrap();
    assert!(
        (read["start_s"].as_f64().unwrap() - start).abs() < 0.002,
        "{read}"
    );
    // The same seconds as JSON lines, before the summary.
    let intervals: Vec<&Value> = lines.iter().filter(|l| l["type"] == "interval").collect();
    assert_eq!(
        intervals.len() as u64,
        corrected["intervals"].as_u64().unwrap()
    );
    let counted: u64 = intervals.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, msgs);
    for line in &intervals {
        assert_documented(line);
        assert_eq!(line["mode"], "echo");
        assert!(line["latency_uncorrected"]["count"].as_u64().is_some());
    }
    assert_documented(summary);
    assert!(
        outcome.stderr.contains("interval log: "),
        "{}",
        outcome.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An echo server (a thread per client) that holds every message `delay`
/// before echoing it.
fn slow_echo_server(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    thread::sleep(delay);
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
fn merge_adds_the_histograms_of_two_generators_started_together() {
    // Two generators, started for the same second: one against a fast
    // server, one (with three times the load) against a server that holds
    // every echo 5 ms. Three quarters of all samples take 5 ms or more, so
    // the merged median must too; an average of the two medians would not.
    let (_fast_server, fast) = echo_server(&[]);
    let slow = slow_echo_server(Duration::from_millis(5));
    let dir = scratch_dir("merge");
    let (log_a, log_b) = (dir.join("a.hlog"), dir.join("b.hlog"));
    let start_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3;
    let start_at = format!("@{start_at}");
    let generator = |target: SocketAddr, rate: &str, log: &std::path::Path| {
        let (target, rate, log, start_at) = (
            target.to_string(),
            rate.to_string(),
            log.to_str().unwrap().to_string(),
            start_at.clone(),
        );
        thread::spawn(move || {
            run(
                &[
                    "stress",
                    "echo",
                    &target,
                    "-c",
                    "4",
                    "-R",
                    &rate,
                    "-d",
                    "2",
                    "--start-at",
                    &start_at,
                    "--hist-log",
                    &log,
                    "--json",
                ],
                Duration::from_secs(40),
            )
        })
    };
    let a = generator(fast, "100", &log_a);
    let b = generator(slow, "300", &log_b);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    for outcome in [&a, &b] {
        assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
        let asked = outcome.num("start_at_unix_s");
        assert_eq!(format!("@{asked}"), start_at);
        assert!(outcome.num("start_unix_s") >= asked - 0.001);
    }
    let merged = run(
        &[
            "stress",
            "merge",
            log_a.to_str().unwrap(),
            log_b.to_str().unwrap(),
            "--json",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(merged.code, Some(0), "stderr:\n{}", merged.stderr);
    assert_documented(merged.json());
    assert_eq!(merged.json()["type"], "merge");
    let (msgs_a, msgs_b) = (a.num("msgs"), b.num("msgs"));
    assert_eq!(merged.num("logs/0/count"), msgs_a);
    assert_eq!(merged.num("logs/1/count"), msgs_b);
    assert_eq!(merged.num("total/count"), msgs_a + msgs_b);
    assert_eq!(merged.num("total/latency/count"), msgs_a + msgs_b);
    assert_eq!(
        merged.num("total/latency_uncorrected/count"),
        msgs_a + msgs_b
    );
    let per_s = merged.num("logs/0/per_s") + merged.num("logs/1/per_s");
    assert!((merged.num("total/per_s") - per_s).abs() <= 1.0);
    let (p50_a, p50_b) = (a.num("latency/p50_us"), b.num("latency/p50_us"));
    let merged_p50 = merged.num("total/latency/p50_us");
    assert!(p50_b >= 5000.0, "the slow server's median is {p50_b} µs");
    assert!(
        merged_p50 >= 5000.0 && merged_p50 > (p50_a + p50_b) / 2.0,
        "merged p50 {merged_p50} µs from {p50_a} and {p50_b}"
    );
    let max = a.num("latency/max_us").max(b.num("latency/max_us"));
    assert_eq!(merged.num("total/latency/max_us"), max);
    let spread = (a.num("start_unix_s") - b.num("start_unix_s")).abs();
    assert!((merged.num("start_spread_s") - spread).abs() < 0.002);
    for word in ["all", "a.hlog", "b.hlog", "histograms added"] {
        assert!(merged.stderr.contains(word), "{}", merged.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SVG's elements balance (each opened tag is closed, in order).
fn assert_well_formed_svg(svg: &str) {
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(at) = rest.find('<') {
        let end = rest[at..].find('>').expect("every tag ends") + at;
        let tag = &rest[at + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name = tag.split_whitespace().next().unwrap_or("");
        if let Some(closing) = name.strip_prefix('/') {
            assert_eq!(open.pop(), Some(closing), "unbalanced SVG at </{closing}>");
        } else {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed SVG elements: {open:?}");
}

/// The number of points of the longest `<polyline>` in `svg`.
fn longest_polyline(svg: &str) -> usize {
    svg.split("<polyline")
        .skip(1)
        .filter_map(|element| {
            let points = element.split("points=\"").nth(1)?;
            Some(points[..points.find('"')?].split_whitespace().count())
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn plot_draws_a_run_and_its_log_as_svg() {
    let (_server, addr) = echo_server(&[]);
    let dir = scratch_dir("plot");
    let (log, run_svg, log_svg) = (
        dir.join("run.hlog"),
        dir.join("run.svg"),
        dir.join("log.svg"),
    );
    let outcome = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "-c",
            "5",
            "-R",
            "500",
            "-d",
            "2",
            "--hist-log",
            log.to_str().unwrap(),
            "--plot",
            run_svg.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    let plotted = run(
        &[
            "stress",
            "plot",
            log.to_str().unwrap(),
            "--out",
            log_svg.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(plotted.code, Some(0), "stderr:\n{}", plotted.stderr);
    for (svg, legend) in [(&run_svg, "latency"), (&log_svg, "run.hlog")] {
        let svg = std::fs::read_to_string(svg).expect("the SVG file");
        assert_well_formed_svg(&svg);
        for text in [
            "latency by percentile",
            "99.9%",
            "throughput per second",
            legend,
        ] {
            assert!(svg.contains(text), "the SVG lacks {text:?}");
        }
        // The percentile curve has a point per step of the spectrum.
        assert!(longest_polyline(&svg) >= 20, "too few points drawn");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rate_is_the_total_and_the_warmup_is_loaded_but_not_counted() {
    let (_server, addr) = echo_server(&[]);
    // wrk2's flags: 10 connections, 1000 messages/s in all, 1 s measured
    // after a 1 s warmup.
    let outcome = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "-c",
            "10",
            "-R",
            "1000",
            "-d",
            "1",
            "--warmup",
            "1",
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.num("rate_per_conn"), 100.0);
    assert_eq!(outcome.num("asked_per_s"), 1000.0);
    assert_eq!(outcome.num("warmup_s"), 1.0);
    // The schedule holds 1000 messages in the measured second, and as many
    // in the warmup before it: only the former are counted.
    let sent = outcome.num("sent");
    assert!(sent > 0.0 && sent <= 1010.0, "sent {sent}");
    assert!(outcome.num("msgs") <= 1010.0);
    assert!(
        outcome.stderr.contains("warming up for 1.0 s")
            && outcome
                .stderr
                .contains("open loop at 1,000 msgs/s (100 per connection)"),
        "{}",
        outcome.stderr
    );
    assert_documented(outcome.json());
    // The old meaning is still there, by its own name.
    let per_conn = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "-c",
            "10",
            "--rate-per-conn",
            "20",
            "-d",
            "1",
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(per_conn.code, Some(0), "stderr:\n{}", per_conn.stderr);
    assert_eq!(per_conn.num("rate_per_conn"), 20.0);
    assert_eq!(per_conn.num("asked_per_s"), 200.0);
}

#[test]
fn a_start_time_in_the_past_or_an_unwritable_log_is_refused_before_connecting() {
    let outcome = run(
        &["stress", "echo", "127.0.0.1:9", "--start-at", "@1"],
        Duration::from_secs(10),
    );
    assert_eq!(outcome.code, Some(2));
    let line = outcome.stderr.trim();
    assert!(
        line.starts_with("sockloop: invalid value '@1' for '--start-at <TIME>'")
            && line.contains("in the past"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
    let outcome = run(
        &[
            "stress",
            "echo",
            "127.0.0.1:9",
            "--hist-log",
            "/nonexistent-dir/run.hlog",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(outcome.code, Some(1));
    let line = outcome.stderr.trim();
    assert!(
        line.starts_with("sockloop: creating --hist-log /nonexistent-dir/run.hlog"),
        "{line}"
    );
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let outcome = run(&["stress", "merge", readme], Duration::from_secs(10));
    assert_eq!(outcome.code, Some(1));
    assert!(
        outcome
            .stderr
            .contains("README.md: not an HdrHistogram interval log"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn chat_drives_the_chat_servers_line_door() {
    let (mut server, _) = support::chat_server_with(&["--line-port", "0"], |_| {});
    let door = support::last_word_addr(
        &server.wait_line("line door listening on", Duration::from_secs(10)),
    );
    let outcome = run(
        &[
            "stress",
            "chat",
            &door.to_string(),
            "--lines",
            "-c",
            "10",
            "--senders",
            "2",
            "-R",
            "100",
            "-d",
            "1",
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.json()["door"], "line");
    assert_eq!(outcome.num("rate_per_sender"), 50.0);
    let sent = outcome.num("sent");
    assert!(sent >= 90.0, "sent {sent}");
    assert_eq!(outcome.num("expected"), sent * 9.0);
    assert_eq!(outcome.num("delivered"), outcome.num("expected"));
    assert_eq!(outcome.num("out_of_order"), 0.0);
    assert_eq!(outcome.num("errors/total"), 0.0);
    assert!(outcome.num("latency/p50_us") > 0.0);
    assert_documented(outcome.json());
}
