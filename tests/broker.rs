// One room across many hubs, through a real NATS broker: `chat server
// --broker nats://...` against `nats-server` processes started here on
// 127.0.0.1 (port chosen by the server, read from its log).
//
// Covered: two hubs on one broker, 500 messages from a member of each,
// every member of both hubs gets each exactly once and in order, and no
// sender gets its own back; the broker killed while members chat (the local
// room goes on) and restarted on the same port (traffic crosses again, the
// hubs untouched); a two-node NATS cluster with a hub on each node, the node
// of one hub killed and that hub failing over to the other node it learned
// from INFO; a hub that starts before its broker exists, with a tiny
// --broker-backlog that overflows (counted, shown by SIGUSR1); a broker that
// stops answering (SIGSTOP) found dead by PING/PONG; the broker's
// max_payload; credentials; `/who` across hubs; messages crossing to every
// door (framed, line, UDP, web) and a leave text kept from UDP peers; a stopping
// hub telling the others its members left; `stress chat` spread over two
// hubs; usage errors.
//
// These tests need `nats-server` (Debian package `nats-server`). Without
// it they fail, saying what to install; `scripts/test` installs it.
//
// Every wait has a deadline; nothing sleeps to synchronise: the tests wait
// for the lines the hubs and the broker print, and for messages.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sockloop::chat_msg;
use support::{chat_server_with, sockloop, Proc};
use tungstenite::client::IntoClientRequest;

const LONG: Duration = Duration::from_secs(20);

// ----- nats-server ----------------------------------------------------------------

/// Where `nats-server` is; fails the test, saying what to install, when it is nowhere.
fn nats_server_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "nats-server is not installed, and these tests need a real NATS broker: install the \
         Debian package (apt-get install -y nats-server), or run scripts/test, which does"
    );
}

/// A running `nats-server` and the port its clients use.
struct Nats {
    proc: Proc,
    port: u16,
    /// Its route port, when it is in a cluster.
    route_port: Option<u16>,
}

impl Nats {
    /// Starts `nats-server -a 127.0.0.1 -p PORT EXTRA...` (PORT -1: it picks
    /// one) and waits until it is ready.
    fn start(port: i32, extra: &[&str]) -> Nats {
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::start(cmd);
        let line = proc.wait_line("Listening for client connections on", LONG);
        let port = last_port(&line);
        let route_port = extra
            .contains(&"--cluster")
            .then(|| last_port(&proc.wait_line("Listening for route connections on", LONG)));
        proc.wait_line("Server is ready", LONG);
        Nats {
            proc,
            port,
            route_port,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it and waits until it is gone.
    fn kill(mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// The port at the end of a `... on 127.0.0.1:PORT` line.
fn last_port(line: &str) -> u16 {
    line.rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port at the end of {line:?}"))
}

// ----- Hubs -----------------------------------------------------------------------

/// `sockloop chat server --relay-only --broker URL EXTRA...`, once its
/// broker link is flowing (unless `wait_flowing` is false).
fn hub_with(broker: &str, extra: &[&str], wait_flowing: bool) -> (Proc, SocketAddr) {
    let mut args = vec!["--broker", broker];
    args.extend_from_slice(extra);
    let (mut hub, addr) = chat_server_with(&args, |_| {});
    if wait_flowing {
        hub.wait_line("broker: flowing", LONG);
    }
    (hub, addr)
}

fn hub(broker: &str) -> (Proc, SocketAddr) {
    hub_with(broker, &[], true)
}

/// Waits for the `n`th line (counting from 1) containing `needle`.
fn wait_nth(proc: &mut Proc, needle: &str, n: usize) {
    let deadline = Instant::now() + LONG;
    loop {
        let seen = proc
            .drain_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count();
        if seen >= n {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no line #{n} containing {needle:?}; saw:\n{}",
            proc.seen.join("\n")
        );
        let from = proc.seen.len();
        proc.wait_line_after(from, needle, left);
    }
}

// ----- Members --------------------------------------------------------------------

/// A framed chat client that keeps what it read, so a read that times out loses nothing.
struct Member {
    name: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Member {
    /// Connects to a hub and waits until the hub has taken it in.
    fn join(hub: &mut Proc, addr: SocketAddr, name: &str) -> Member {
        let stream = support::connect(addr);
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        hub.wait_line(&format!("{local} connected"), LONG);
        Member {
            name: name.to_string(),
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `[now] NAME:\n\tTEXT`.
    fn say(&mut self, text: &str) {
        let message = chat_msg::format_now(&self.name, text);
        let mut frame = (message.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(message.as_bytes());
        support::write_all(&mut self.stream, &frame);
    }

    /// The next message, waiting until `deadline`; `None` if none came.
    fn next_by(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if self.buf.len() >= 2 + len {
                    let frame: Vec<u8> = self.buf.drain(..2 + len).collect();
                    return Some(String::from_utf8(frame[2..].to_vec()).expect("utf-8"));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("{}: the hub closed the connection", self.name),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("{}: reading: {e}", self.name),
            }
        }
    }

    /// Reads messages until one from `sender` says `text`; returns what came before it.
    fn wait_for(&mut self, sender: &str, text: &str) -> Vec<String> {
        let deadline = Instant::now() + LONG;
        let mut seen = Vec::new();
        while let Some(message) = self.next_by(deadline) {
            if chat_msg::parse(&message).is_some_and(|m| m.sender == sender && m.text == text) {
                return seen;
            }
            seen.push(message);
        }
        panic!(
            "{}: no message from {sender:?} saying {text:?}; saw {seen:?}",
            self.name
        );
    }

    /// The texts of the messages `sender` sent, read until `n` have come.
    fn texts_from(&mut self, sender: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + LONG;
        let mut texts = Vec::new();
        while texts.len() < n {
            let Some(message) = self.next_by(deadline) else {
                panic!(
                    "{}: {} of {n} messages from {sender} came; the last: {:?}",
                    self.name,
                    texts.len(),
                    texts.last()
                );
            };
            if let Some(m) = chat_msg::parse(&message).filter(|m| m.sender == sender) {
                texts.push(m.text.to_string());
            }
        }
        texts
    }

    /// Reads until each `(sender, n)` has sent `n` messages; returns the
    /// texts by sender (in the order they came), and every other message.
    fn collect(&mut self, want: &[(&str, usize)]) -> (HashMap<String, Vec<String>>, Vec<String>) {
        let deadline = Instant::now() + LONG;
        let mut by: HashMap<String, Vec<String>> = HashMap::new();
        let mut others = Vec::new();
        let done = |by: &HashMap<String, Vec<String>>| {
            want.iter()
                .all(|(s, n)| by.get(*s).map_or(0, Vec::len) >= *n)
        };
        while !done(&by) {
            let Some(message) = self.next_by(deadline) else {
                let counts: Vec<_> = by.iter().map(|(s, t)| (s.clone(), t.len())).collect();
                panic!("{}: wanted {want:?}, got {counts:?}", self.name);
            };
            match chat_msg::parse(&message) {
                Some(m) if want.iter().any(|(s, _)| *s == m.sender) => {
                    by.entry(m.sender.to_string())
                        .or_default()
                        .push(m.text.to_string());
                }
                _ => others.push(message),
            }
        }
        (by, others)
    }

    /// Every message that comes within `quiet` of the last.
    fn rest(&mut self, quiet: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(message) = self.next_by(Instant::now() + quiet) {
            seen.push(message);
        }
        seen
    }
}

/// `from` says `probe N` until `to` hears one (the room crosses the broker
/// once both hubs' subscriptions have reached the servers involved); returns
/// the number of the first that arrived.
fn probe_until_heard(from: &mut Member, to: &mut Member) -> u32 {
    let deadline = Instant::now() + LONG;
    let sender = from.name.clone();
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "{} never heard {sender} across the broker",
            to.name
        );
        from.say(&format!("probe {n}"));
        let wait = Instant::now() + Duration::from_millis(200);
        while let Some(message) = to.next_by(wait) {
            if let Some(m) = chat_msg::parse(&message).filter(|m| m.sender == sender) {
                if let Some(k) = m.text.strip_prefix("probe ") {
                    return k.parse().unwrap();
                }
            }
        }
    }
    unreachable!()
}

// ----- The tests --------------------------------------------------------------------

#[test]
fn two_hubs_on_one_broker_deliver_every_message_once_and_in_order() {
    const N: usize = 500;
    let nats = Nats::start(-1, &[]);
    let (mut hub_a, addr_a) = hub(&nats.url());
    let (mut hub_b, addr_b) = hub(&nats.url());
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut al = Member::join(&mut hub_a, addr_a, "Al");
    let mut bob = Member::join(&mut hub_b, addr_b, "Bob");
    let mut bea = Member::join(&mut hub_b, addr_b, "Bea");

    for i in 0..N {
        ann.say(&format!("ann {i}"));
        bob.say(&format!("bob {i}"));
    }
    let want = |who: &str| (0..N).map(|i| format!("{who} {i}")).collect::<Vec<_>>();
    for listener in [&mut al, &mut bea] {
        let (by, others) = listener.collect(&[("Ann", N), ("Bob", N)]);
        assert_eq!(by["Ann"], want("ann"), "{} hears Ann", listener.name);
        assert_eq!(by["Bob"], want("bob"), "{} hears Bob", listener.name);
        // Joins cross hubs: whichever hub Ann and Bob are on, both are
        // announced (by address, then by name).
        for joined in [" is Ann", " is Bob"] {
            assert!(
                others.iter().any(|m| m.ends_with(joined)),
                "{} was not told {joined:?}: {others:?}",
                listener.name
            );
        }
    }
    let (by, _) = ann.collect(&[("Bob", N)]);
    assert_eq!(by["Bob"], want("bob"), "Ann hears Bob (other hub)");
    let (by, _) = bob.collect(&[("Ann", N)]);
    assert_eq!(by["Ann"], want("ann"), "Bob hears Ann (other hub)");

    // Nothing more: no duplicates, and no sender hears itself.
    ann.say("end");
    for member in [&mut al, &mut bob, &mut bea] {
        let before = member.wait_for("Ann", "end");
        let stray: Vec<_> = before
            .iter()
            .filter(|m| chat_msg::parse(m).is_some_and(|m| m.sender == "Ann" || m.sender == "Bob"))
            .collect();
        assert!(stray.is_empty(), "{} got more: {stray:?}", member.name);
    }
    let back: Vec<_> = ann
        .rest(Duration::from_millis(300))
        .into_iter()
        .filter(|m| chat_msg::parse(m).is_some_and(|m| m.sender == "Ann"))
        .collect();
    assert!(back.is_empty(), "Ann got her own messages back: {back:?}");
    hub_b.signal(libc::SIGUSR1);
    let line = hub_b.wait_line("published", LONG);
    // Hub A's notices (Ann and Al came in, Ann is Ann; Al never spoke), Ann's
    // N messages and "end": each received once.
    assert!(line.contains(&format!("received {}", N + 4)), "{line}");
    let _ = (nats, hub_a);
}

#[test]
fn a_killed_broker_leaves_the_room_up_and_its_restart_joins_the_hubs_again() {
    let nats = Nats::start(-1, &[]);
    let port = nats.port;
    let url = nats.url();
    let fast = ["--broker-reconnect-max", "0.3"];
    let (mut hub_a, addr_a) = hub_with(&url, &fast, true);
    let (mut hub_b, addr_b) = hub_with(&url, &fast, true);
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut cy = Member::join(&mut hub_a, addr_a, "Cy");
    let mut bob = Member::join(&mut hub_b, addr_b, "Bob");
    ann.say("before");
    bob.wait_for("Ann", "before");
    cy.wait_for("Ann", "before");

    nats.kill();
    hub_a.wait_line("broker: link to", LONG);
    hub_b.wait_line("broker: link to", LONG);
    // The local room goes on without the broker.
    ann.say("while the broker is down");
    cy.wait_for("Ann", "while the broker is down");
    cy.say("still here");
    ann.wait_for("Cy", "still here");

    let _nats = Nats::start(i32::from(port), &[]);
    wait_nth(&mut hub_a, "broker: flowing", 2);
    wait_nth(&mut hub_b, "broker: flowing", 2);
    ann.say("after");
    let before = bob.wait_for("Ann", "after");
    // What waited in hub A's backlog may have crossed, or been lost
    // (at most once); never twice, never out of order.
    let texts: Vec<_> = before
        .iter()
        .filter_map(|m| chat_msg::parse(m))
        .filter(|m| m.sender == "Ann" || m.sender == "Cy")
        .map(|m| m.text.to_string())
        .collect();
    let allowed = [
        "while the broker is down".to_string(),
        "still here".to_string(),
    ];
    assert!(
        texts.iter().all(|t| allowed.contains(t)) && texts.len() <= 2,
        "Bob got {texts:?}"
    );
    if texts.len() == 2 {
        assert_eq!(texts, allowed.to_vec(), "in order");
    }
    bob.say("welcome back");
    ann.wait_for("Bob", "welcome back");
}

#[test]
fn a_hub_fails_over_to_the_other_node_of_a_nats_cluster() {
    let cluster = [
        "--cluster",
        "nats://127.0.0.1:-1",
        "--cluster_name",
        "sockloop",
    ];
    let node1 = Nats::start(-1, &cluster);
    let route = format!("nats://127.0.0.1:{}", node1.route_port.unwrap());
    let mut extra = cluster.to_vec();
    extra.extend(["--routes", &route]);
    let node2 = Nats::start(-1, &extra);
    let fast = ["--broker-reconnect-max", "0.3"];
    // Hub A is told of node 1 only: it learns node 2 from the broker.
    let (mut hub_a, addr_a) = hub_with(&node1.url(), &fast, true);
    let (mut hub_b, addr_b) = hub_with(&node2.url(), &fast, true);
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut bob = Member::join(&mut hub_b, addr_b, "Bob");
    probe_until_heard(&mut ann, &mut bob);
    bob.say("hello from node 2");
    ann.wait_for("Bob", "hello from node 2");
    hub_a.wait_line(
        &format!("broker: learned of server nats://127.0.0.1:{}", node2.port),
        LONG,
    );

    node1.kill();
    hub_a.wait_line("broker: link to", LONG);
    hub_a.wait_line(&format!("through nats://127.0.0.1:{}", node2.port), LONG);
    probe_until_heard(&mut ann, &mut bob);
    bob.say("you moved");
    ann.wait_for("Bob", "you moved");
    let _ = (node2, hub_b);
}

#[test]
fn a_hub_serves_its_room_before_its_broker_exists_and_counts_what_overflowed() {
    // A port nothing listens on yet: take one, and let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let (mut hub_a, addr_a) = hub_with(
        &url,
        &["--broker-backlog", "2K", "--broker-reconnect-max", "0.3"],
        false,
    );
    hub_a.wait_line("not reached", LONG);
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut cy = Member::join(&mut hub_a, addr_a, "Cy");
    for i in 0..40 {
        ann.say(&format!(
            "message {i} padded to take room in the backlog ........"
        ));
    }
    let texts = cy.texts_from("Ann", 40);
    assert_eq!(texts.len(), 40, "the local room got everything");
    hub_a.wait_line("--broker-backlog full", LONG);
    hub_a.signal(libc::SIGUSR1);
    let line = hub_a.wait_line("(backlog full)", LONG);
    assert!(!line.contains("dropped 0 "), "{line}");
    hub_a.wait_line("broker: waiting to reconnect", LONG);

    let nats = Nats::start(i32::from(port), &[]);
    hub_a.wait_line("broker: flowing", LONG);
    let (mut hub_b, addr_b) = hub(&nats.url());
    let mut bob = Member::join(&mut hub_b, addr_b, "Bob");
    probe_until_heard(&mut ann, &mut bob);
}

#[test]
fn a_broker_that_stops_answering_is_found_dead_by_ping() {
    let nats = Nats::start(-1, &[]);
    let (mut hub_a, addr_a) = hub_with(
        &nats.url(),
        &["--broker-ping", "0.3", "--broker-reconnect-max", "0.3"],
        true,
    );
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut cy = Member::join(&mut hub_a, addr_a, "Cy");
    nats.proc.signal(libc::SIGSTOP);
    hub_a.wait_line("did not answer a PING", LONG);
    ann.say("nobody upstream");
    cy.wait_for("Ann", "nobody upstream");
    nats.proc.signal(libc::SIGCONT);
    wait_nth(&mut hub_a, "broker: flowing", 2);
}

#[test]
fn a_message_over_the_brokers_max_payload_stays_local_and_the_link_stays_up() {
    let dir = std::env::temp_dir().join(format!("sockloop-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("small.conf");
    std::fs::write(&conf, "max_payload: 1024\n").unwrap();
    let nats = Nats::start(-1, &["-c", conf.to_str().unwrap()]);
    let (mut hub_a, addr_a) = hub(&nats.url());
    let (mut hub_b, addr_b) = hub(&nats.url());
    hub_a.wait_line("max_payload 1024 B", LONG);
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut cy = Member::join(&mut hub_a, addr_a, "Cy");
    let mut bob = Member::join(&mut hub_b, addr_b, "Bob");
    let big = "x".repeat(2000);
    ann.say(&big);
    cy.wait_for("Ann", &big);
    hub_a.wait_line("over the broker's max_payload", LONG);
    // Small messages from the same read's neighbours still cross, and the link never dropped.
    for i in 0..20 {
        ann.say(&format!("small {i}"));
    }
    assert_eq!(bob.texts_from("Ann", 20).len(), 20);
    let lost: Vec<_> = hub_a
        .drain_lines()
        .iter()
        .filter(|l| l.contains("broker: link to"))
        .cloned()
        .collect();
    assert!(lost.is_empty(), "the link dropped: {lost:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn credentials_in_the_url_or_flags_open_the_broker_and_wrong_ones_do_not() {
    let nats = Nats::start(-1, &["--user", "hub", "--pass", "s3cret"]);
    let good = format!("nats://hub:s3cret@127.0.0.1:{}", nats.port);
    let (hub_a, _) = hub(&good);
    let (hub_b, _) = hub_with(
        &nats.url(),
        &["--broker-user", "hub", "--broker-password", "s3cret"],
        true,
    );
    let bad = format!("nats://hub:wrong@127.0.0.1:{}", nats.port);
    let (mut hub_c, addr_c) = hub_with(&bad, &[], false);
    hub_c.wait_line("Authorization Violation", LONG);
    // Its own room still works.
    let mut ann = Member::join(&mut hub_c, addr_c, "Ann");
    let mut cy = Member::join(&mut hub_c, addr_c, "Cy");
    ann.say("local only");
    cy.wait_for("Ann", "local only");
    // The password never reaches the log.
    let logs = hub_c.drain_lines().join("\n");
    assert!(!logs.contains("wrong"), "{logs}");
    let _ = (hub_a, hub_b);
}

#[test]
fn who_lists_the_members_of_every_hub_and_goes_to_no_one_else() {
    let nats = Nats::start(-1, &[]);
    let (mut hub_a, addr_a) = hub_with(&nats.url(), &["--hub-id", "east"], true);
    let (mut hub_b, addr_b) = hub_with(&nats.url(), &["--hub-id", "west"], true);
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut bob = Member::join(&mut hub_b, addr_b, "Bob");
    ann.say("hi");
    bob.wait_for("Ann", "hi");
    bob.say("hi Ann");
    ann.wait_for("Bob", "hi Ann");
    ann.say("/who");
    let deadline = Instant::now() + LONG;
    let answer = loop {
        let message = ann.next_by(deadline).expect("an answer to /who");
        if let Some(m) = chat_msg::parse(&message).filter(|m| m.text.contains("in the room")) {
            break m.text.to_string();
        }
    };
    assert!(answer.contains("Ann (framed)"), "{answer}");
    assert!(answer.contains("hub west: Bob (framed)"), "{answer}");
    bob.say("after");
    let before = ann.wait_for("Bob", "after");
    assert!(before.is_empty(), "{before:?}");
    let at_bob = bob.rest(Duration::from_millis(300));
    assert!(
        !at_bob.iter().any(|m| m.contains("/who")),
        "the request went to the room: {at_bob:?}"
    );
}

#[test]
fn broker_options_are_checked() {
    for (args, needle) in [
        (
            &["--broker", "nats://127.0.0.1:4222", "--room", "a.b"][..],
            "--room",
        ),
        (&["--room", "ops"][..], "--broker"),
        (&["--broker", "tls://127.0.0.1:4222"][..], "not supported"),
        (
            &["--broker", "nats://127.0.0.1:4222", "--broker-ping", "0"][..],
            "--broker-ping",
        ),
    ] {
        let mut full = vec!["chat", "server", "--relay-only", "--port", "0"];
        full.extend_from_slice(args);
        let out = sockloop(&full).output().expect("run sockloop");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("sockloop:") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let mut hub = Proc::start(sockloop(&["chat", "server", "--help"]));
    let status = hub.wait_exit(LONG);
    assert!(status.success());
    let mut out = String::new();
    hub.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("--broker-backlog"), "{out}");
    let _ = std::io::stdout().flush();
}

#[test]
fn stress_chat_spreads_its_clients_over_the_hubs_and_checks_them_all() {
    let nats = Nats::start(-1, &[]);
    let (hub_a, addr_a) = hub(&nats.url());
    let (hub_b, addr_b) = hub(&nats.url());
    let (a, b) = (addr_a.to_string(), addr_b.to_string());
    let args = [
        "stress",
        "chat",
        &a,
        &b,
        "--conns",
        "20",
        "--senders",
        "4",
        "--rate",
        "100",
        "--duration",
        "1",
        "--drain",
        "5",
        "--spread",
        "off",
        "--json",
    ];
    let out = sockloop(&args).output().expect("run stress chat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(json["hubs"], 2);
    assert!(json["expected"].as_u64().unwrap() > 0);
    assert_eq!(json["delivered"], json["expected"], "{stdout}");
    assert_eq!(json["out_of_order"], 0);
    assert!(
        json["latency_cross_hub"]["count"].as_u64().unwrap() > 0,
        "{stdout}"
    );
    assert!(stderr.contains("and 1 more hub(s)"), "{stderr}");
    let _ = (hub_a, hub_b);
}

#[test]
fn a_hub_that_stops_tells_the_other_hubs_its_members_left() {
    let nats = Nats::start(-1, &[]);
    let (mut hub_a, addr_a) = hub(&nats.url());
    let (mut hub_b, addr_b) = hub(&nats.url());
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");
    let mut bob = Member::join(&mut hub_b, addr_b, "Bob");
    ann.say("bye soon");
    bob.wait_for("Ann", "bye soon");
    hub_a.signal(libc::SIGTERM);
    assert!(hub_a.wait_exit(LONG).success());
    bob.wait_for("server", "Ann left the chat (its server stopped)");
}

#[test]
fn messages_cross_hubs_to_every_door_and_a_leave_text_never_reaches_udp_peers() {
    let nats = Nats::start(-1, &[]);
    let (mut hub_a, addr_a) = hub_with(&nats.url(), &["--line-port", "0"], true);
    let line_a = support::last_word_addr(&hub_a.wait_line("line door listening on", LONG));
    let (mut hub_b, _) = hub_with(&nats.url(), &["--udp-port", "0", "--web-port", "0"], true);
    let udp_b = support::last_word_addr(&hub_b.wait_line("udp door listening on", LONG));
    let web_b = support::last_word_addr(&hub_b.wait_line("web door listening on", LONG));
    let mut ann = Member::join(&mut hub_a, addr_a, "Ann");

    // Wes, a browser on hub B, and Ann (framed, hub A) hear each other.
    let request = format!("ws://{web_b}/ws").into_client_request().unwrap();
    let (mut wes, _) = tungstenite::client(request, support::connect(web_b)).expect("handshake");
    wes.send(tungstenite::Message::text(chat_msg::format_now(
        "Wes",
        "hi from a browser",
    )))
    .unwrap();
    ann.wait_for("Wes", "hi from a browser");
    ann.say("hi Wes");
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "Wes never heard Ann");
        if let tungstenite::Message::Text(text) = wes.read().expect("a message for Wes") {
            if chat_msg::parse(text.as_str())
                .is_some_and(|m| m.sender == "Ann" && m.text == "hi Wes")
            {
                break;
            }
        }
    }

    // Eve, a UDP peer of hub B, joins by speaking; Ann (framed, hub A) hears her.
    let eve = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    eve.set_read_timeout(Some(LONG)).unwrap();
    let hello = chat_msg::format_now("Eve", "hello from udp");
    eve.send_to(hello.as_bytes(), udp_b).unwrap();
    ann.wait_for("Eve", "hello from udp");
    // She proves her address, as udp-chat does by itself, so she hears the room in full.
    let mut datagram = [0u8; 65536];
    let token = loop {
        let (n, _) = eve.recv_from(&mut datagram).expect("a challenge");
        let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
        if let Some(token) =
            chat_msg::parse(&text).and_then(|m| sockloop::routability::parse_challenge(m.text))
        {
            break token;
        }
    };
    let answer = chat_msg::format_now("Eve", &sockloop::routability::answer_text(token));
    eve.send_to(answer.as_bytes(), udp_b).unwrap();
    hub_b.wait_line("proved its address", LONG);

    // Cy, a line client of hub A, hears Eve's next message, and Eve hears Ann.
    let mut cy = support::connect(line_a);
    let local = cy.local_addr().unwrap();
    hub_a.wait_line(&format!("{local} connected"), LONG);
    support::write_all(&mut cy, b"Cy\n");
    hub_a.wait_line("is Cy", LONG);
    eve.send_to(chat_msg::format_now("Eve", "again").as_bytes(), udp_b)
        .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\tagain\n") {
        let n = cy.read(&mut chunk).expect("Cy reads Eve's message");
        assert!(n > 0, "hub A closed Cy");
        seen.extend_from_slice(&chunk[..n]);
    }
    // Cy leaves with the leave text (the room hears it once, from the
    // server); Ann says one more thing.
    support::write_all(&mut cy, format!("{}\n", chat_msg::LEAVE_TEXT).as_bytes());
    ann.wait_for("server", "Cy left the chat");
    ann.say("still here");
    loop {
        let (n, _) = eve
            .recv_from(&mut datagram)
            .expect("Eve hears hub A's room");
        let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
        assert!(
            !chat_msg::is_leave(&text),
            "a leave text reached a UDP peer: {text:?}"
        );
        if chat_msg::parse(&text).is_some_and(|m| m.sender == "Ann" && m.text == "still here") {
            break;
        }
    }
}
