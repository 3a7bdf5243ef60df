//! UDP: `udp-chat`, `udp-stream` and `udp-sink` as real processes on
//! 127.0.0.1, port 0.
//!
//! The chat tests run several chats (and plain std sockets playing peers)
//! and read what each prints: messages on stdout, peers joining, leaving and
//! vanishing on stderr. The stream tests run a sink and a streamer and read
//! the sink's JSON report; one puts a relay in between that reorders and
//! duplicates on purpose, so the sink's counts can be checked exactly.
//!
//! Every wait has a deadline; nothing sleeps to synchronise.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use support::{sockloop, Proc};

const WAIT: Duration = Duration::from_secs(10);
const LEAVE: &str = "<LEAVES THE CHAT>";

// ----- Helpers ---------------------------------------------------------------

/// A process's stdout, collected on a thread so its pipe never fills.
struct Stdout {
    chunks: Receiver<Vec<u8>>,
    bytes: Vec<u8>,
}

impl Stdout {
    fn collect(proc: &mut Proc) -> Stdout {
        let mut pipe = proc.child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0; 128 * 1024];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Stdout {
            chunks: rx,
            bytes: Vec::new(),
        }
    }

    /// Waits until what was printed so far satisfies `check`.
    fn wait_until(&mut self, what: &str, check: impl Fn(&[u8]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(&self.bytes) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.bytes.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "stdout never showed {what} within {WAIT:?}; it holds:\n{}",
                    String::from_utf8_lossy(&self.bytes)
                ),
            }
        }
    }

    /// Waits for a chat message from `name` with exactly `text`, checking
    /// the whole format `[TIMESTAMP] NAME:\n\tTEXT\n`.
    fn wait_message(&mut self, name: &str, text: &str) {
        self.wait_until(&format!("{name}: {text:?}"), |out| {
            has_message(&String::from_utf8_lossy(out), name, text)
        });
    }

    /// Everything printed so far, without waiting.
    fn text(&mut self) -> String {
        while let Ok(chunk) = self.chunks.try_recv() {
            self.bytes.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// True when `out` holds a line-started `[TIMESTAMP] NAME:\n\tTEXT\n`, with
/// TIMESTAMP as Python's isoformat writes it.
fn has_message(out: &str, name: &str, text: &str) -> bool {
    let tail = format!("] {name}:\n\t{text}\n");
    let mut from = 0;
    while let Some(found) = out[from..].find(&tail) {
        let end = from + found;
        from = end + 1;
        let Some(open) = out[..end].rfind('[') else {
            continue;
        };
        let line_start = open == 0 || out.as_bytes()[open - 1] == b'\n';
        if line_start && is_isoformat(&out[open + 1..end]) {
            return true;
        }
    }
    false
}

/// `YYYY-MM-DDTHH:MM:SS` with an optional `.ffffff`.
fn is_isoformat(ts: &str) -> bool {
    let shape = |s: &str| {
        s.len() == 19
            && s.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                _ => b.is_ascii_digit(),
            })
    };
    match ts.len() {
        19 => shape(ts),
        26 => {
            shape(&ts[..19])
                && ts.as_bytes()[19] == b'.'
                && ts[20..].bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// A running `udp-chat` with its address, stdin and stdout.
struct Chat {
    proc: Proc,
    addr: SocketAddr,
    stdin: Option<ChildStdin>,
    out: Stdout,
}

impl Chat {
    /// Starts `udp-chat --port 0 --bind 127.0.0.1 EXTRA... PEERS...` (EXTRA may bind elsewhere).
    fn start(extra: &[&str], peers: &[SocketAddr]) -> Chat {
        let mut args = vec!["udp-chat".to_string(), "--port".into(), "0".into()];
        if !extra.contains(&"--bind") {
            args.extend(["--bind".into(), "127.0.0.1".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(peers.iter().map(|p| p.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = sockloop(&args);
        cmd.stdin(Stdio::piped());
        let mut proc = Proc::start(cmd);
        let addr = proc.listening_addr();
        let stdin = Some(proc.stdin());
        let out = Stdout::collect(&mut proc);
        Chat {
            proc,
            addr,
            stdin,
            out,
        }
    }

    fn named(name: &str, peers: &[SocketAddr]) -> Chat {
        Chat::start(&["--name", name], peers)
    }

    /// Types one line.
    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the chat's stdin");
        stdin.flush().expect("flush");
    }

    /// Ends the chat's input (Ctrl+D).
    fn end_input(&mut self) {
        self.stdin = None;
    }

    fn log(&mut self, needle: &str) -> String {
        self.proc.wait_line(needle, WAIT)
    }

    fn still_running(&mut self) -> bool {
        self.proc.child.try_wait().expect("try_wait").is_none()
    }
}

/// A std socket on 127.0.0.1 playing a peer, with a receive deadline.
fn std_peer() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// Receives one datagram (the socket's read timeout is the deadline).
fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 65_536];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("a datagram within the timeout");
    buf.truncate(n);
    (buf, from)
}

/// Reads until the chat asks this socket to prove its address, and answers
/// as `udp-chat` would: the token, echoed in a chat message.
fn answer_challenge(socket: &UdpSocket) {
    loop {
        let (got, from) = recv(socket);
        let text = String::from_utf8_lossy(&got);
        if let Some(token) = sockloop::chat_msg::parse(&text)
            .and_then(|m| sockloop::routability::parse_challenge(m.text))
        {
            let answer = sockloop::routability::answer_text(token);
            socket
                .send_to(&chat_datagram("peer", &answer), from)
                .unwrap();
            return;
        }
    }
}

fn chat_datagram(name: &str, text: &str) -> Vec<u8> {
    format!("[2024-02-03T12:15:00.000001] {name}:\n\t{text}").into_bytes()
}

/// Reads an unsigned number field of a one-line JSON object.
fn field(json: &str, key: &str) -> u64 {
    let pattern = format!("\"{key}\":");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let digits: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// Starts `udp-sink --bind 127.0.0.1 --port 0 --json EXTRA...`.
fn sink(extra: &[&str]) -> (Proc, Stdout, SocketAddr) {
    let mut args = vec!["udp-sink", "--bind", "127.0.0.1", "--port", "0", "--json"];
    args.extend_from_slice(extra);
    let mut proc = Proc::start(sockloop(&args));
    let addr = proc.listening_addr();
    let out = Stdout::collect(&mut proc);
    (proc, out, addr)
}

/// Waits for the sink to finish and returns its JSON report.
fn report(mut proc: Proc, mut out: Stdout) -> String {
    let status = proc.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "udp-sink failed: {status}");
    out.wait_until("the JSON report", |bytes| bytes.ends_with(b"}\n"));
    let json = out.text().trim().to_string();
    assert!(json.starts_with("{\"schema\":1,"), "{json}");
    json
}

/// Runs `udp-stream ARGS...` to the end and returns its stderr.
fn stream(args: &[&str]) -> Vec<String> {
    let mut all = vec!["udp-stream"];
    all.extend_from_slice(args);
    let mut proc = Proc::start(sockloop(&all));
    let status = proc.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "udp-stream failed: {status}");
    proc.wait_line("udp-stream: sent", WAIT);
    proc.wait_line("segmentation offload", WAIT);
    proc.seen.clone()
}

/// The number before `marker` on a line of `lines`, e.g. `123 sendmmsg call(s)`.
fn count_before(lines: &[String], marker: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| {
            let before = l.split(marker).next().filter(|_| l.contains(marker))?;
            before.split_whitespace().last()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no line with {marker:?}: {lines:?}"))
}

/// `ENOBUFS`: the kernel had no buffer for a datagram although the socket
/// had room, as when the device's queue is full. Provoked for real: the
/// stream runs in a network namespace of its own (so nothing else on this
/// machine sees it) whose loopback device sends through a small, slow queue
/// (a token bucket at 4 Mbit/s). The socket stays writable, so a sender that
/// waits for room is woken at once, again and again, with a failed
/// `sendmmsg` each time (before the fix: ten calls per datagram). It must
/// wait a little instead: every datagram still goes out, the waits are
/// counted, and `sendmmsg` carries more than one datagram per call.
/// (`--no-gso`: a segmented run is queued as one large packet, which a
/// token bucket may pass or drop whole; single datagrams fill the queue
/// the same way on every kernel.)
#[test]
fn a_full_device_queue_makes_the_stream_wait_a_little_not_spin() {
    for tool in ["unshare", "ip", "tc"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "this test needs {tool} (packages util-linux and iproute2; scripts/test installs them)"
        );
    }
    let script = format!(
        "ip link set lo up && \
         tc qdisc replace dev lo root tbf rate 4mbit burst 16kb limit 16kb && \
         exec {} udp-stream --count 5000 --size 100 --no-gso 127.0.0.1:9",
        support::bin()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--net", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info");
    let mut proc = Proc::start(cmd);
    let status = proc.wait_exit(Duration::from_secs(60));
    if status.success() {
        // The summary's lines are the last written; the reader may be behind.
        // The ENOBUFS line comes last, and only when the queue did fill.
        proc.wait_line("sendmmsg call(s)", WAIT);
        proc.wait_line("time(s) (ENOBUFS", WAIT);
    }
    let lines = proc.seen.clone();
    assert!(
        status.success(),
        "the stream in its own network namespace failed ({status}); it needs unshare \
         --user --net to be allowed (root, or unprivileged user namespaces): {lines:?}"
    );
    let sent = count_before(&lines, "datagrams,");
    let calls = count_before(&lines, "sendmmsg call(s)");
    assert_eq!(sent, 5000, "{lines:?}");
    assert!(
        calls < sent,
        "{calls} sendmmsg calls for {sent} datagrams: {lines:?}"
    );
    let no_buffers = count_before(&lines, "time(s) (ENOBUFS");
    assert!(no_buffers > 0, "the queue never filled: {lines:?}");
}

// ----- Chat ------------------------------------------------------------------

#[test]
fn two_chats_exchange_messages_both_ways() {
    let mut alice = Chat::named("alice", &[]);
    let mut bob = Chat::named("bob", &[alice.addr]);
    bob.say("hello from bob");
    alice.out.wait_message("bob", "hello from bob");
    alice.log(&format!("new peer {}", bob.addr));
    // Bob's udp-chat echoed alice's token by itself: his address is his own.
    alice.log(&format!("peer {} proved its address", bob.addr));
    // Alice learned bob from his datagram, so her reply reaches him.
    alice.say("hi bob, üñí");
    bob.out.wait_message("alice", "hi bob, üñí");
    // Stdout holds the messages only: nothing else was printed there.
    assert!(bob.out.text().starts_with('['), "{}", bob.out.text());
}

#[test]
fn three_chats_learn_each_other_and_a_leaver_is_removed() {
    let mut a = Chat::named("a", &[]);
    let mut b = Chat::named("b", &[a.addr]);
    let mut c = Chat::named("c", &[a.addr, b.addr]);
    b.say("b here");
    a.out.wait_message("b", "b here");
    c.say("c here");
    a.out.wait_message("c", "c here");
    b.out.wait_message("c", "c here");
    // Peers learned from a datagram hear everything once they echo their token.
    a.log(&format!("peer {} proved its address", b.addr));
    a.log(&format!("peer {} proved its address", c.addr));
    b.log(&format!("peer {} proved its address", c.addr));
    a.say("from a");
    b.out.wait_message("a", "from a");
    c.out.wait_message("a", "from a");
    b.say("from b");
    a.out.wait_message("b", "from b");
    c.out.wait_message("b", "from b");

    c.end_input();
    assert!(c.proc.wait_exit(WAIT).success());
    a.out.wait_message("c", LEAVE);
    b.out.wait_message("c", LEAVE);
    a.log(&format!("peer {} left", c.addr));
    b.log(&format!("peer {} left", c.addr));

    // The others no longer send to c: had they, its closed port would bounce
    // back as "unreachable" by the time a later message has gone round.
    for round in ["after c left", "once more"] {
        a.say(round);
        b.out.wait_message("a", round);
        b.say(round);
        a.out.wait_message("b", round);
    }
    for chat in [&mut a, &mut b] {
        let lines = chat.proc.drain_lines().join("\n");
        assert!(!lines.contains("unreachable"), "{lines}");
    }
}

#[test]
fn only_the_exact_leave_text_removes_a_peer() {
    let mut alice = Chat::named("alice", &[]);
    let (eve, eve_addr) = std_peer();
    let almost = format!("I say {LEAVE}");
    eve.send_to(&chat_datagram("eve", &almost), alice.addr)
        .unwrap();
    alice.out.wait_message("eve", &almost);
    answer_challenge(&eve);
    alice.log("proved its address");
    // Still a peer: alice's next message reaches eve.
    alice.say("still there?");
    let (got, _) = recv(&eve);
    assert!(String::from_utf8_lossy(&got).ends_with("alice:\n\tstill there?"));
    eve.send_to(&chat_datagram("eve", LEAVE), alice.addr)
        .unwrap();
    alice.log(&format!("peer {eve_addr} left"));
    // A typed leave text is not sent: it only earns a hint.
    alice.say(LEAVE);
    alice.log("is how leaving is announced");
}

#[test]
fn a_maximal_datagram_arrives_whole_both_ways() {
    let mut alice = Chat::named("alice", &[]);
    let (peer, peer_addr) = std_peer();
    // 65,507 bytes: the largest UDP payload over IPv4.
    let mut big = chat_datagram("big", "");
    let text_len = 65_507 - big.len();
    big.extend((0..text_len).map(|i| b'a' + (i % 26) as u8));
    assert_eq!(big.len(), 65_507);
    peer.send_to(&big, alice.addr).unwrap();
    let mut expected = big.clone();
    expected.push(b'\n');
    alice
        .out
        .wait_until("the 65,507-byte datagram", |out| out == expected.as_slice());

    // And a long typed line leaves as one datagram, whole.
    answer_challenge(&peer);
    alice.log("proved its address");
    let line: String = (0..60_000)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect();
    alice.say(&line);
    let (got, from) = recv(&peer);
    assert_eq!(from, alice.addr);
    let got = String::from_utf8(got).unwrap();
    assert!(
        got.ends_with(&format!("alice:\n\t{line}")),
        "{} bytes",
        got.len()
    );
    let _ = peer_addr;
}

#[test]
fn a_line_too_long_for_any_datagram_ends_the_input_cleanly() {
    let (peer, _) = std_peer();
    let mut alice = Chat::named("alice", &[peer.local_addr().unwrap()]);
    // The chat stops reading once the line is too long and may be gone
    // before the rest is written, so a broken pipe here is expected.
    let mut stdin = alice.stdin.take().expect("stdin");
    let _ = stdin.write_all("x".repeat(70_000).as_bytes());
    // Nothing of the long line is sent; the peer hears that alice leaves.
    let (got, _) = recv(&peer);
    let got = String::from_utf8(got).unwrap();
    assert!(has_message(&format!("{got}\n"), "alice", LEAVE), "{got:?}");
    assert_eq!(alice.proc.wait_exit(WAIT).code(), Some(1));
    alice.log("sockloop: standard input: line longer than");
}

#[test]
fn invalid_utf8_is_shown_and_is_not_fatal() {
    let mut alice = Chat::named("alice", &[]);
    let (mallory, _) = std_peer();
    let mut bad = chat_datagram("mallory", "");
    bad.extend_from_slice(b"\xff\xfe broken");
    mallory.send_to(&bad, alice.addr).unwrap();
    alice.out.wait_message("mallory", "\u{fffd}\u{fffd} broken");
    mallory
        .send_to(&chat_datagram("mallory", "fine now"), alice.addr)
        .unwrap();
    alice.out.wait_message("mallory", "fine now");
    assert!(alice.still_running());
}

#[test]
fn a_vanished_peer_is_removed_and_the_sender_goes_on() {
    let mut a = Chat::named("a", &[]);
    let mut b = Chat::named("b", &[a.addr]);
    let mut c = Chat::named("c", &[a.addr]);
    b.say("b here");
    a.out.wait_message("b", "b here");
    c.say("c here");
    a.out.wait_message("c", "c here");
    a.log(&format!("peer {} proved its address", b.addr));
    a.log(&format!("peer {} proved its address", c.addr));

    // b dies without a word: no leave message, just a closed port.
    let gone = b.addr;
    drop(b);
    a.say("anyone?");
    c.out.wait_message("a", "anyone?");
    a.log(&format!("peer {gone} is unreachable"));
    a.log("removed");
    a.say("still here");
    c.out.wait_message("a", "still here");
    assert!(a.still_running());
}

#[test]
fn an_ipv6_peer_that_vanished_is_named_exactly() {
    let Ok(socket) = UdpSocket::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let gone = socket.local_addr().unwrap();
    drop(socket); // Nothing listens there any more.
    let mut chat = Chat::start(&["--name", "six", "--bind", "::1"], &[gone]);
    chat.say("hello?");
    chat.log(&format!("peer {gone} is unreachable"));
    assert!(chat.still_running());
}

#[test]
fn sigterm_and_sigint_send_the_leave_message_and_exit_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (peer, _) = std_peer();
        let mut alice = Chat::named("alice", &[peer.local_addr().unwrap()]);
        alice.log("type a message");
        alice.proc.signal(signal);
        let (got, from) = recv(&peer);
        assert_eq!(from, alice.addr);
        let got = String::from_utf8(got).unwrap();
        assert!(has_message(&format!("{got}\n"), "alice", LEAVE), "{got:?}");
        assert!(alice.proc.wait_exit(WAIT).success());
    }
}

#[test]
fn without_a_name_the_first_line_is_the_name() {
    let (peer, _) = std_peer();
    let mut chat = Chat::start(&[], &[peer.local_addr().unwrap()]);
    chat.log("Enter your username to start the chat:");
    // Sockets are served while the chat waits for a name.
    peer.send_to(&chat_datagram("early", "before the name"), chat.addr)
        .unwrap();
    chat.out.wait_message("early", "before the name");
    chat.say("zoe");
    chat.say("");
    chat.say("hello");
    let (got, _) = recv(&peer);
    let got = String::from_utf8(got).unwrap();
    assert!(has_message(&format!("{got}\n"), "zoe", "hello"), "{got:?}");
}

#[test]
fn the_peer_set_is_bounded_and_forgets_the_longest_silent() {
    let mut chat = Chat::start(&["--name", "hub", "--max-peers", "2"], &[]);
    let peers: Vec<(UdpSocket, SocketAddr)> = (0..3).map(|_| std_peer()).collect();
    for (i, (socket, addr)) in peers.iter().enumerate() {
        let text = format!("peer {i}");
        socket
            .send_to(&chat_datagram("p", &text), chat.addr)
            .unwrap();
        chat.out.wait_message("p", &text);
        // The first peer never proves its address; the others do.
        if i == 0 {
            recv(socket);
        } else {
            answer_challenge(socket);
            chat.log(&format!("peer {addr} proved its address"));
        }
    }
    chat.log(&format!("{}, silent the longest, is forgotten", peers[0].1));
    chat.say("to the two I know");
    for (socket, _) in &peers[1..] {
        recv(socket);
    }
    // Sends to the forgotten peer would have come first; nothing is there.
    peers[0].0.set_nonblocking(true).unwrap();
    let mut buf = [0; 64];
    assert!(peers[0].0.recv_from(&mut buf).is_err());
}

#[test]
fn user_mistakes_get_one_line_and_exit_code() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["udp-chat", "--name", "x", "[::1]:5"],
            2,
            "sockloop: peer [::1]:5 is IPv6",
        ),
        (
            &["udp-chat", "--name", "x", "nowhere"],
            2,
            "sockloop: bad address",
        ),
        (
            &[
                "udp-stream",
                "--count",
                "1",
                "--rate",
                "fast",
                "127.0.0.1:9",
            ],
            2,
            "'fast' is not a rate",
        ),
        (
            &[
                "udp-stream",
                "--count",
                "1",
                "--size",
                "70000",
                "127.0.0.1:9",
            ],
            2,
            "would not fit in one datagram",
        ),
        (
            &["udp-sink", "--idle-timeout=-1"],
            2,
            "for '--idle-timeout <DURATION>': '-1' is not a duration",
        ),
        (
            &[
                "udp-sink",
                "--bind",
                "127.0.0.1",
                "--duration",
                "10000000000000000000",
            ],
            2,
            "sockloop: --duration",
        ),
        (
            &[
                "udp-sink",
                "--bind",
                "127.0.0.1",
                "--idle-timeout",
                "100000000000",
            ],
            2,
            "sockloop: --idle-timeout",
        ),
        (
            &[
                "udp-stream",
                "--count",
                "2",
                "--rate",
                "1e-30",
                "127.0.0.1:9",
            ],
            2,
            "sockloop: --rate is too slow",
        ),
    ];
    for (args, code, message) in cases {
        let mut proc = Proc::start(sockloop(args));
        let status = proc.wait_exit(WAIT);
        assert_eq!(status.code(), Some(*code), "{args:?}");
        // The error line is the process's last words: everything before it has arrived too.
        let line = proc.wait_line("sockloop:", WAIT);
        assert!(line.contains(message), "{args:?}: {line}");
        assert_eq!(proc.seen.len(), 1, "{args:?}: {:?}", proc.seen);
    }
    // A port in use is a runtime error.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut proc = Proc::start(sockloop(&[
        "udp-sink",
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
    ]));
    assert_eq!(proc.wait_exit(WAIT).code(), Some(1));
    proc.wait_line("sockloop: cannot listen on", WAIT);
}

// ----- Stream and sink --------------------------------------------------------

#[test]
fn a_stream_of_10000_is_fully_accounted_for() {
    let (proc, out, addr) = sink(&["--count", "10000", "--idle-timeout", "1"]);
    let lines = stream(&["--count", "10000", &addr.to_string()]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sent 10000 of 10000 message(s)")),
        "{lines:?}"
    );
    let json = report(proc, out);
    assert_eq!(
        field(&json, "received") + field(&json, "lost"),
        10_000,
        "{json}"
    );
    assert_eq!(field(&json, "duplicated"), 0, "{json}");
    assert_eq!(field(&json, "reordered"), 0, "{json}");
    // Whatever loopback lost, the sink's own buffer accounts for it.
    assert_eq!(
        field(&json, "lost_to_rcvbuf"),
        field(&json, "lost"),
        "{json}"
    );
}

/// Streams `count` messages padded to `size` at `rate` into a sink started
/// with `sink_extra`, from a streamer given `stream_extra`; returns the
/// streamer's stderr and the sink's report.
fn stream_into_sink(
    count: u64,
    size: u64,
    rate: u64,
    sink_extra: &[&str],
    stream_extra: &[&str],
) -> (Vec<String>, String) {
    let (count_s, size_s, rate_s) = (count.to_string(), size.to_string(), rate.to_string());
    let mut extra = vec![
        "--count",
        &count_s,
        "--idle-timeout",
        "1",
        "--rcvbuf",
        "4000000",
    ];
    extra.extend_from_slice(sink_extra);
    let (proc, out, addr) = sink(&extra);
    let addr = addr.to_string();
    let mut args = vec!["--count", &count_s, "--size", &size_s, "--rate", &rate_s];
    args.extend_from_slice(stream_extra);
    args.push(&addr);
    let lines = stream(&args);
    (lines, report(proc, out))
}

/// Every message is accounted for exactly once, and nothing else came.
fn assert_exact(json: &str, count: u64) {
    assert_eq!(field(json, "unique") + field(json, "lost"), count, "{json}");
    assert_eq!(field(json, "received"), field(json, "unique"), "{json}");
    assert_eq!(field(json, "duplicated"), 0, "{json}");
    assert_eq!(field(json, "reordered"), 0, "{json}");
    assert_eq!(field(json, "not_stream"), 0, "{json}");
}

#[test]
fn segmented_and_plain_streams_are_counted_alike() {
    // Padded to one size, the messages leave in runs of 64 (UDP_SEGMENT)
    // by default, and one per datagram with --no-gso; the sink must see the
    // same stream either way.
    for (stream_extra, offload) in [
        (&[][..], "segmentation offload on"),
        (
            &["--no-gso"][..],
            "segmentation offload off, turned off (--no-gso)",
        ),
    ] {
        let (lines, json) = stream_into_sink(20_000, 40, 40_000, &[], stream_extra);
        assert!(
            lines.iter().any(|l| l.contains(offload)),
            "the summary names the offload: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("sendmmsg call(s)")),
            "{lines:?}"
        );
        assert_exact(&json, 20_000);
        assert_eq!(
            field(&json, "lost_to_rcvbuf"),
            field(&json, "lost"),
            "{json}"
        );
    }
}

#[test]
fn a_sink_with_gro_cuts_coalesced_runs_back_into_messages() {
    // With --gro the kernel hands the sink whole runs of the streamer's
    // segmented sends; each message must still be counted once, including
    // those in the run the reactor itself read first.
    let (_, json) = stream_into_sink(20_000, 40, 40_000, &["--gro"], &[]);
    assert_exact(&json, 20_000);
    assert!(field(&json, "received") > 0, "{json}");
}

#[test]
fn flooding_a_tiny_receive_buffer_is_counted_as_the_sinks_own_loss() {
    let (proc, out, addr) = sink(&[
        "--rcvbuf",
        "4096",
        "--count",
        "20000",
        "--idle-timeout",
        "1",
    ]);
    stream(&["--count", "20000", "--size", "1000", &addr.to_string()]);
    let json = report(proc, out);
    let lost = field(&json, "lost");
    assert!(lost > 0, "a tiny buffer must drop some of a flood: {json}");
    assert_eq!(field(&json, "received") + lost, 20_000, "{json}");
    assert!(field(&json, "rcvbuf_drops") >= lost, "{json}");
    assert_eq!(field(&json, "lost_to_rcvbuf"), lost, "{json}");
}

/// What the relay did to the stream it passed on.
#[derive(Debug, Default)]
struct RelayLog {
    received: u64,
    reordered: u64,
    max_distance: u64,
    duplicated: u64,
}

/// Passes the stream on from `socket` to `to`, reordering and duplicating on
/// purpose:
/// * number `i` with `i % 10 == 3` is held and sent after `i + 1` (a swap, distance 1);
/// * number `i` with `i % 50 == 20` is held and sent after `i + 5` (distance 5);
/// * number `i` with `i % 10 == 7` is sent twice.
///
/// It counts what it did the way the sink should: an arrival after a higher
/// number is a reorder (its distance below the highest so far); a repeat is
/// a duplicate.
fn relay(socket: UdpSocket, to: SocketAddr, count: u64) -> RelayLog {
    let mut log = RelayLog::default();
    let mut highest: Option<u64> = None;
    let mut send = |datagram: &[u8], i: u64, log: &mut RelayLog, first: bool| {
        socket.send_to(datagram, to).expect("relay send");
        if !first {
            log.duplicated += 1;
        } else if let Some(h) = highest.filter(|h| *h > i) {
            log.reordered += 1;
            log.max_distance = log.max_distance.max(h - i);
        } else {
            highest = Some(i);
        }
    };
    let mut swap: Option<(Vec<u8>, u64)> = None;
    let mut long: Option<(Vec<u8>, u64)> = None;
    while log.received < count {
        let (datagram, _) = recv(&socket);
        let text = String::from_utf8(datagram.clone()).unwrap();
        let number = text.rsplit("\tNumber ").next().unwrap();
        let i: u64 = number.split(' ').next().unwrap().parse().unwrap();
        log.received += 1;
        if i % 10 == 3 {
            swap = Some((datagram, i));
            continue;
        }
        if i % 50 == 20 {
            long = Some((datagram, i));
            continue;
        }
        send(&datagram, i, &mut log, true);
        if i % 10 == 7 {
            send(&datagram, i, &mut log, false);
        }
        for (slot, after) in [(&mut swap, 1), (&mut long, 5)] {
            if slot.as_ref().is_some_and(|(_, j)| j + after == i) {
                let (held, j) = slot.take().unwrap();
                send(&held, j, &mut log, true);
            }
        }
    }
    assert!(
        swap.is_none() && long.is_none(),
        "the relay held something back"
    );
    log
}

#[test]
fn a_reordering_duplicating_relay_is_measured_exactly() {
    const COUNT: u64 = 400;
    let (proc, out, sink_addr) = sink(&["--idle-timeout", "1"]);
    let (relay_socket, relay_addr) = std_peer();
    let relay = thread::spawn(move || relay(relay_socket, sink_addr, COUNT));
    stream(&[
        "--count",
        &COUNT.to_string(),
        "--rate",
        "4000",
        &relay_addr.to_string(),
    ]);
    let did = relay.join().expect("relay");
    // 40 swaps plus 8 long holds; 40 duplicates.
    assert_eq!(
        (did.reordered, did.max_distance, did.duplicated),
        (48, 5, 40)
    );
    let json = report(proc, out);
    assert_eq!(field(&json, "reordered"), did.reordered, "{json}");
    assert_eq!(
        field(&json, "max_reorder_distance"),
        did.max_distance,
        "{json}"
    );
    assert_eq!(field(&json, "duplicated"), did.duplicated, "{json}");
    assert_eq!(field(&json, "lost"), 0, "{json}");
    assert_eq!(field(&json, "received"), COUNT + did.duplicated, "{json}");
    assert_eq!(field(&json, "unique"), COUNT, "{json}");
}

#[test]
fn the_stream_reaches_a_chat_as_chat_messages() {
    let mut chat = Chat::named("reader", &[]);
    stream(&["--count", "3", "--size", "12", &chat.addr.to_string()]);
    chat.out.wait_message("streamer", "Number 0 ...");
    chat.out.wait_message("streamer", "Number 2 ...");
}
