// `sockloop stress` past one machine, as its users would drive it: interval
// logs read by HdrHistogram's own reader (the Python package), two
// generators started together and merged, plots, wrk2's flags and the
// chat server's line door — the real binary against real servers on
// loopback. Every run is short (1-3 s of measuring); every wait has a deadline.

mod stress_support;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use stress_support::{assert_documented, json_lines, run, scratch_dir};
use support::echo_server;
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

/// A log whose start time is garbled, beyond any clock, or before 1970 is
/// refused with the file named, by merge and plot alike (never a panic, never
/// silently dated 1970); a log with no start time at all is merged with its
/// start shown as unknown.
#[test]
fn a_log_with_a_bad_or_missing_start_time_is_named_or_shown_as_unknown() {
    let (_server, addr) = echo_server(&[]);
    let dir = scratch_dir("start-times");
    let good = dir.join("good.hlog");
    let outcome = run(
        &[
            "stress",
            "echo",
            &addr.to_string(),
            "-c",
            "1",
            "-R",
            "100",
            "-d",
            "1",
            "--hist-log",
            good.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(outcome.code, Some(0), "stderr:\n{}", outcome.stderr);
    let text = std::fs::read_to_string(&good).unwrap();
    let header = |name: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("#[{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in the log:\n{text}"))
            .to_string()
    };
    let (start, base) = (header("StartTime"), header("BaseTime"));
    let svg = dir.join("bad.svg");
    for (file, line, value) in [
        ("far.hlog", &start, "9000000000000000000.5"),
        ("garbled.hlog", &start, "1e19"),
        ("before-1970.hlog", &start, "-5"),
        ("far-base.hlog", &base, "1e30"),
    ] {
        let name = if line == &start {
            "StartTime"
        } else {
            "BaseTime"
        };
        let path = dir.join(file);
        let changed = text.replace(
            line.as_str(),
            &format!("#[{name}: {value} (seconds since epoch)]"),
        );
        std::fs::write(&path, changed).unwrap();
        let path = path.to_str().unwrap();
        for args in [
            vec!["stress", "merge", path],
            vec!["stress", "plot", path, "-o", svg.to_str().unwrap()],
        ] {
            let outcome = run(&args, Duration::from_secs(10));
            let stderr = outcome.stderr.trim();
            assert_eq!(outcome.code, Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.starts_with(&format!("sockloop: {path}: ")) && stderr.contains(name),
                "{args:?}: {stderr}"
            );
            assert!(!stderr.contains("internal error"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
    // Neither StartTime nor BaseTime, and the intervals count from 0: the
    // start is not known, and is not made up.
    let unknown = dir.join("unknown.hlog");
    let without: String = text
        .lines()
        .filter(|l| *l != start && *l != base)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&unknown, without).unwrap();
    let unknown = unknown.to_str().unwrap();
    let merged = run(
        &["stress", "merge", unknown, good.to_str().unwrap(), "--json"],
        Duration::from_secs(10),
    );
    assert_eq!(merged.code, Some(0), "stderr:\n{}", merged.stderr);
    assert_documented(merged.json());
    assert!(
        merged.json()["logs"][0]["start_unix_s"].is_null(),
        "{}",
        merged.stdout
    );
    assert!(merged.num("logs/1/start_unix_s") > 1.7e9);
    assert!(!merged.stderr.contains("1970"), "{}", merged.stderr);
    assert!(
        merged
            .stderr
            .contains(&format!("{unknown} has no start time")),
        "{}",
        merged.stderr
    );
    let plotted = run(
        &["stress", "plot", unknown, "-o", svg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(plotted.code, Some(0), "stderr:\n{}", plotted.stderr);
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
