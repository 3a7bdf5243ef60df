//! `sockloop tcp-chat`: group chat over TCP without a hub, tested with real
//! processes on 127.0.0.1.
//!
//! - three members, the third knowing only the first, chat all ways, and every
//!   message is printed once by every other member, with the right sender;
//! - a member that ends its input is noticed by the others, who go on; one
//!   that is killed is noticed once, and reconnected when it comes back;
//! - a member started before the one it dials reaches it once it is up, and
//!   `--trace` and SIGUSR1 show it dialing again;
//! - a plain framed client (the course's `Connection` framing) and the
//!   course's Python client are served like members;
//! - two links between the same two members end as one, the one dialed by
//!   the smaller id, whichever end learns of them first (a fake member plays
//!   the other end, byte for byte), and two real members, stopped and resumed
//!   so that both dials are under way at once, agree on it;
//! - names are checked (given, typed, or claimed by a guest) and texts shown,
//!   never obeyed;
//! - the room's bounds: a guest that does not read is disconnected at
//!   `--max-backlog` while members get everything; a frame over `--max-frame`
//!   closes only its connection; `--max-guests` counts listening guests too;
//!   a member that does not read slows piped input down, and input goes on
//!   once that member is gone; addresses given up make room in a full
//!   address book.
//!
//! Every wait has a deadline; processes are killed and reaped when dropped.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use support::{connect, sockloop, OutLines, Proc};

/// How long any one thing may take to happen.
const LONG: Duration = Duration::from_secs(20);

/// One `tcp-chat` process: its stderr (log), stdout (messages) and stdin.
struct Member {
    proc: Proc,
    out: OutLines,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

/// Starts `sockloop tcp-chat --bind 127.0.0.1 --port PORT --name NAME EXTRA... PEERS...`.
fn member_on(port: u16, name: &str, peers: &[SocketAddr], extra: &[&str]) -> Member {
    let port = port.to_string();
    let mut args = vec![
        "tcp-chat",
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    args.extend(peers.iter().map(String::as_str));
    let mut cmd = sockloop(&args);
    cmd.stdin(Stdio::piped());
    let mut proc = Proc::start(cmd);
    let out = OutLines::of(&mut proc.child);
    let stdin = Some(proc.stdin());
    let addr = proc.listening_addr();
    Member {
        proc,
        out,
        stdin,
        addr,
    }
}

/// A member on a port the system picks.
fn member(name: &str, peers: &[SocketAddr]) -> Member {
    member_on(0, name, peers, &[])
}

impl Member {
    /// Types a line.
    fn say(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(format!("{text}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Ends the input (Ctrl+D).
    fn end_input(&mut self) {
        self.stdin = None;
    }

    /// Waits for the log line saying the chat has `n` members (itself included).
    fn wait_members(&mut self, n: usize) {
        self.proc.wait_line(&format!("{n} members now"), LONG);
    }

    /// Waits for the message `text` from `sender` on stdout.
    fn wait_message(&mut self, sender: &str, text: &str) {
        self.out.wait(&format!("\t{text}"));
        let at = self
            .out
            .seen
            .iter()
            .position(|l| l == &format!("\t{text}"))
            .expect("the line just seen");
        assert!(
            at > 0 && self.out.seen[at - 1].ends_with(&format!("] {sender}:")),
            "'{text}' not from {sender}: {:?}",
            self.out.seen
        );
    }

    /// Ends the input and waits for the process to exit; then every line it printed.
    fn leave_and_collect(&mut self) -> Vec<String> {
        self.end_input();
        let status = self.proc.wait_exit(LONG);
        assert!(status.success(), "exit status {status:?}");
        let deadline = Instant::now() + LONG;
        while self.out.pull(deadline) {}
        self.out.seen.clone()
    }
}

/// How many times `text` was printed as a message body.
fn times(lines: &[String], text: &str) -> usize {
    lines.iter().filter(|l| *l == &format!("\t{text}")).count()
}

/// A loopback port held for a member started later (or started again), with
/// no window in which another test could take it.
///
/// The port is picked by the kernel (port 0) for a socket that is bound with
/// `SO_REUSEADDR` but never listens. While that socket is open: a connect to
/// the port is refused, as to a port nobody uses; no other test's bind to port
/// 0, and no outgoing connect, is given the port (the kernel skips bound
/// ports); and a member started with `--port PORT` may still bind and listen
/// there, because its listener sets `SO_REUSEADDR` too and the holder is not
/// listening. So the port is handed over, not freed and hoped for. Keep the
/// returned socket until the test ends.
fn reserved_port() -> (socket2::Socket, u16) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind");
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

// ----- Framed bytes, as the course's `Connection` speaks them --------------------

fn write_frame(stream: &mut TcpStream, text: &str) {
    let mut bytes = (text.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    stream.write_all(&bytes).unwrap();
}

/// The next frame's text; `None` at end of stream (or a reset), `Some("")` for a close frame.
fn read_frame(stream: &mut TcpStream) -> Option<String> {
    let mut prefix = [0u8; 2];
    match stream.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return None
        }
        Err(e) => panic!("reading a frame: {e}"),
    }
    let mut text = vec![0u8; u16::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut text).expect("a whole frame");
    Some(String::from_utf8(text).expect("utf-8"))
}

/// Reads frames until one contains `needle`; panics at end of stream.
fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    loop {
        match read_frame(stream) {
            Some(text) if text.contains(needle) => return text,
            Some(_) => {}
            None => panic!("end of stream before a frame with {needle:?}"),
        }
    }
}

fn chat_text(name: &str, text: &str) -> String {
    format!("[2026-01-02T03:04:05.678901] {name}:\n\t{text}")
}

// ----- The acceptance scenarios --------------------------------------------

#[test]
fn three_members_where_the_third_knows_only_the_first_chat_all_ways_once() {
    let mut ann = member("Ann", &[]);
    let mut bob = member("Bob", &[ann.addr]);
    let mut cy = member("Cy", &[ann.addr]);
    for m in [&mut ann, &mut bob, &mut cy] {
        m.wait_members(3);
    }
    ann.say("from Ann");
    bob.say("from Bob");
    cy.say("from Cy");
    for (m, others) in [
        (&mut ann, [("Bob", "from Bob"), ("Cy", "from Cy")]),
        (&mut bob, [("Ann", "from Ann"), ("Cy", "from Cy")]),
        (&mut cy, [("Ann", "from Ann"), ("Bob", "from Bob")]),
    ] {
        for (sender, text) in others {
            m.wait_message(sender, text);
        }
    }
    let ann_saw = ann.leave_and_collect();
    let bob_saw = bob.leave_and_collect();
    let cy_saw = cy.leave_and_collect();
    for (saw, own, others) in [
        (&ann_saw, "from Ann", ["from Bob", "from Cy"]),
        (&bob_saw, "from Bob", ["from Ann", "from Cy"]),
        (&cy_saw, "from Cy", ["from Ann", "from Bob"]),
    ] {
        assert_eq!(times(saw, own), 0, "its own message printed: {saw:?}");
        for text in others {
            assert_eq!(times(saw, text), 1, "{text} not printed once: {saw:?}");
        }
    }
}

#[test]
fn a_member_that_ends_its_input_is_noticed_by_the_others_who_go_on() {
    let mut ann = member("Ann", &[]);
    let mut bob = member("Bob", &[ann.addr]);
    let mut cy = member("Cy", &[bob.addr]);
    for m in [&mut ann, &mut bob, &mut cy] {
        m.wait_members(3);
    }
    bob.end_input();
    assert!(bob.proc.wait_exit(LONG).success());
    for m in [&mut ann, &mut cy] {
        m.wait_message("Bob", "<LEAVES THE CHAT>");
        m.proc.wait_line("Bob left the chat; 2 members now", LONG);
    }
    ann.say("still here");
    cy.wait_message("Ann", "still here");
    cy.say("me too");
    ann.wait_message("Cy", "me too");
    let ann_saw = ann.leave_and_collect();
    assert_eq!(times(&ann_saw, "<LEAVES THE CHAT>"), 1, "{ann_saw:?}");
    let log = ann.proc.drain_lines();
    assert!(
        !log.iter().any(|l| l.contains("vanished")),
        "a member that left is not said to have vanished: {log:?}"
    );
    let said = log.iter().filter(|l| l.contains("Bob left")).count();
    assert_eq!(said, 1, "Bob's leaving is reported once: {log:?}");
}

#[test]
fn a_member_started_before_the_one_it_dials_reaches_it_once_it_comes_up() {
    let (_held, port) = reserved_port();
    let later: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut bob = member_on(0, "Bob", &[later], &["--trace", "--retry-max", "1"]);
    bob.proc.wait_line("dialing again with backoff", LONG);
    bob.proc.wait_line("mesh: dialing 127.0.0.1", LONG);
    bob.proc.wait_line("next dial in", LONG);
    // SIGUSR1 shows the address being retried.
    let from = bob.proc.seen.len();
    bob.proc.signal(libc::SIGUSR1);
    bob.proc
        .wait_line_after(from, &format!("address {later}"), LONG);
    let mut ann = member_on(port, "Ann", &[], &[]);
    bob.wait_members(2);
    ann.wait_members(2);
    bob.say("you are up");
    ann.wait_message("Bob", "you are up");
    ann.say("I am");
    bob.wait_message("Ann", "I am");
    let from = bob.proc.seen.len();
    bob.proc.signal(libc::SIGUSR1);
    bob.proc.wait_line_after(from, "member Ann", LONG);
}

#[test]
fn a_member_that_vanishes_is_noticed_once_and_reconnected_when_it_comes_back() {
    // Ann comes back on the same port; it stays held while she is away.
    let (_held, port) = reserved_port();
    let mut ann = member_on(port, "Ann", &[], &[]);
    let mut bob = member("Bob", &[ann.addr]);
    bob.wait_members(2);
    ann.proc.signal(libc::SIGKILL);
    let _ = ann.proc.wait_exit(LONG);
    bob.proc.wait_line("Ann (member at", LONG);
    let vanished_at = bob.proc.seen.len();
    let mut ann = member_on(port, "Ann", &[], &[]);
    ann.wait_members(2);
    bob.proc
        .wait_line_after(vanished_at, "Ann joined the chat", LONG);
    ann.say("back again");
    bob.wait_message("Ann", "back again");
    let vanished = bob
        .proc
        .drain_lines()
        .iter()
        .filter(|l| l.contains("vanished"))
        .count();
    assert_eq!(vanished, 1, "{:?}", bob.proc.seen);
}

#[test]
fn a_plain_framed_client_is_served_like_a_member() {
    let mut ann = member("Ann", &[]);
    let mut bob = member("Bob", &[ann.addr]);
    ann.wait_members(2);
    bob.wait_members(2);
    let mut dee = connect(bob.addr);
    write_frame(&mut dee, &chat_text("Dee", "hi from a plain client"));
    ann.wait_message("Dee", "hi from a plain client");
    bob.wait_message("Dee", "hi from a plain client");
    ann.say("hello Dee");
    let got = read_until(&mut dee, "hello Dee");
    assert!(got.ends_with("] Ann:\n\thello Dee"), "{got:?}");
    // Dee goes without a word: its hub says goodbye for it, once.
    drop(dee);
    ann.wait_message("Dee", "<LEAVES THE CHAT>");
    bob.wait_message("Dee", "<LEAVES THE CHAT>");
    let ann_saw = ann.leave_and_collect();
    assert_eq!(times(&ann_saw, "hi from a plain client"), 1, "{ann_saw:?}");
}

#[test]
fn a_silent_framed_client_hears_what_was_said_since_it_connected() {
    let mut ann = member("Ann", &[]);
    let mut listener = connect(ann.addr);
    // Before the client has said anything, it is neither member nor guest yet.
    ann.say("are you there");
    let got = read_until(&mut listener, "are you there");
    assert!(got.ends_with("] Ann:\n\tare you there"), "{got:?}");
    ann.proc.wait_line("is listening", LONG);
}

#[test]
fn the_course_python_client_chats_through_a_member() {
    assert!(
        Command::new("python3").arg("--version").output().is_ok(),
        "python3 is needed for this test: install it (scripts/test does)"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/chat_client.py");
    let mut ann = member("Ann", &[]);
    let bob = member("Bob", &[ann.addr]);
    ann.wait_members(2);
    let mut python = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(bob.addr.port().to_string())
        .arg("Py Thon")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the python client");
    let mut python_out = OutLines::of(&mut python);
    let mut python_in = python.stdin.take().unwrap();
    python_in
        .write_all("hello from python \u{2713}\n".as_bytes())
        .unwrap();
    python_in.flush().unwrap();
    ann.wait_message("Py Thon", "hello from python \u{2713}");
    ann.say("hello Python");
    python_out.wait("] Ann:");
    python_out.wait("\thello Python");
    drop(python_in);
    ann.wait_message("Py Thon", "<LEAVES THE CHAT>");
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = python.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = python.kill();
            panic!("the python client did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "python client: {status:?}");
}

// ----- Simultaneous dials: a fake member plays the other end -----------------------

/// The id a member logged at start.
fn member_id(m: &mut Member) -> u64 {
    let line = m.proc.wait_line("member id ", LONG);
    let hex = line
        .split("member id ")
        .nth(1)
        .and_then(|r| r.get(..16))
        .expect("16 hex digits");
    u64::from_str_radix(hex, 16).unwrap()
}

/// Ann dials the fake member F (link X) while F dials Ann (link Y), and both
/// handshakes complete. Ann must keep the link dialed by the smaller id,
/// retire the other (a `retire` frame, then end of stream), and send only on
/// the one it kept.
fn simultaneous_dials(fake_id: u64, fake_is_smaller: bool) {
    let fake_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake_listener.local_addr().unwrap();
    let mut ann = member_on(0, "Ann", &[fake_addr], &["--trace"]);
    let ann_id = member_id(&mut ann);
    assert_eq!(fake_id < ann_id, fake_is_smaller, "pick another fake id");
    let (x, _) = fake_listener.accept().unwrap();
    let mut x = support::with_deadlines(x);
    let hello = read_frame(&mut x).expect("Ann's hello");
    assert!(
        hello.starts_with(&format!("sockloop-mesh/1 hello id={ann_id:016x} dial=")),
        "{hello}"
    );
    let mut y = connect(ann.addr);
    write_frame(
        &mut y,
        &format!("sockloop-mesh/1 hello id={fake_id:016x} dial=1 listen={fake_addr} name=Fay"),
    );
    let welcome = read_frame(&mut y).expect("Ann's welcome on Y");
    assert!(welcome.starts_with("sockloop-mesh/1 welcome"), "{welcome}");
    write_frame(
        &mut x,
        &format!("sockloop-mesh/1 welcome id={fake_id:016x} listen={fake_addr} name=Fay"),
    );
    ann.proc.wait_line("mesh: two links to Fay", LONG);
    let (kept, retired) = if fake_is_smaller {
        (&mut y, &mut x)
    } else {
        (&mut x, &mut y)
    };
    assert_eq!(
        read_frame(retired).as_deref(),
        Some("sockloop-mesh/1 retire")
    );
    assert_eq!(read_frame(retired), None, "the retired link ends");
    ann.say("on the kept link");
    let got = read_until(kept, "on the kept link");
    assert!(got.ends_with("] Ann:\n\ton the kept link"), "{got:?}");
    // Fay's words still count on the link Ann kept, and are printed once.
    write_frame(kept, &chat_text("Fay", "heard you"));
    ann.wait_message("Fay", "heard you");
    let saw = ann.leave_and_collect();
    assert_eq!(times(&saw, "heard you"), 1);
}

#[test]
fn two_links_between_the_same_members_end_as_the_one_the_smaller_id_dialed() {
    simultaneous_dials(1, true);
    simultaneous_dials(u64::MAX, false);
}

/// Waits for the `--trace` line, after the line `after`, saying connection
/// `conn` (`conn#N`) was closed; returns it.
fn wait_closed(proc: &mut Proc, after: &str, conn: &str) -> String {
    let mut from = proc
        .seen
        .iter()
        .position(|l| l == after)
        .map_or(0, |i| i + 1);
    loop {
        let line = proc.wait_line_after(from, ": closed (", LONG);
        from = proc.seen.iter().position(|l| *l == line).unwrap_or(from) + 1;
        if line.contains(&format!(" {conn} ")) {
            return line;
        }
    }
}

/// Two real members dial each other at once. Ann, refused by Bob's empty
/// port, is stopped (SIGSTOP) until her next dial is due; Bob starts, dials
/// her (her kernel completes the handshake meanwhile) and says hello. When
/// Ann goes on (SIGCONT) she accepts Bob's link and, in the same turn, dials
/// Bob: two links, each already under way. Both must end with one member and
/// every message once.
#[test]
fn two_real_members_dialing_each_other_at_once_end_with_one_link() {
    let (_held, bob_port) = reserved_port();
    let at = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let mut ann = member_on(0, "Ann", &[at(bob_port)], &["--trace", "--retry-max", "1"]);
    let line = ann.proc.wait_line("next dial in", LONG);
    let seen = Instant::now();
    let wait: f64 = line
        .rsplit("next dial in ")
        .next()
        .and_then(|w| w.trim_end_matches(" s").parse().ok())
        .expect("the wait in seconds");
    ann.proc.signal(libc::SIGSTOP);
    // Her dial is due once that wait has passed (counted from when we saw the line, later).
    let due = seen + Duration::from_secs_f64(wait);
    std::thread::sleep(due.saturating_duration_since(Instant::now()));
    let mut bob = member_on(bob_port, "Bob", &[ann.addr], &["--trace"]);
    bob.proc.wait_line("hello sent", LONG);
    ann.proc.signal(libc::SIGCONT);
    ann.wait_members(2);
    bob.wait_members(2);
    // Both ends see both links complete, and each resolves them on its own;
    // they agree, so the link each retires is closed by the other end too
    // (not left half-open until the retire grace runs out).
    for (m, other) in [(&mut ann, "Bob"), (&mut bob, "Ann")] {
        let line = m
            .proc
            .wait_line(&format!("mesh: two links to {other}"), LONG);
        let retired = line
            .split("retiring ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("the retired connection")
            .to_string();
        let closed = wait_closed(&mut m.proc, &line, &retired);
        assert!(
            closed.contains("closed (closed by peer)"),
            "{other}'s retired link: {closed}"
        );
    }
    ann.say("one link");
    bob.wait_message("Ann", "one link");
    bob.say("one indeed");
    ann.wait_message("Bob", "one indeed");
    let ann_saw = ann.leave_and_collect();
    let bob_saw = bob.leave_and_collect();
    assert_eq!(times(&ann_saw, "one indeed"), 1, "{ann_saw:?}");
    assert_eq!(times(&bob_saw, "one link"), 1, "{bob_saw:?}");
    for m in [&mut ann, &mut bob] {
        let log = m.proc.drain_lines();
        assert!(!log.iter().any(|l| l.contains("vanished")), "{log:?}");
        assert_eq!(
            log.iter().filter(|l| l.contains("joined the chat")).count(),
            1,
            "{log:?}"
        );
    }
}

// ----- Trust -----------------------------------------------------------------------

#[test]
fn control_characters_are_shown_not_obeyed_and_bad_names_are_refused() {
    let mut ann = member("Ann", &[]);
    let mut bob = member("Bob", &[ann.addr]);
    ann.wait_members(2);
    bob.wait_members(2);
    let mut eve = connect(ann.addr);
    write_frame(&mut eve, &chat_text("Eve", "\x1b[2Jgone\x07\u{202e}"));
    let shown = "^[[2Jgone^G<U+202E>";
    ann.wait_message("Eve", shown);
    bob.wait_message("Eve", shown);
    // Eve may not change her name afterwards.
    write_frame(&mut eve, &chat_text("Bob", "it is me, Bob"));
    let notice = read_until(&mut eve, "was refused");
    assert!(notice.contains("you joined as Eve"), "{notice}");
    assert_eq!(read_frame(&mut eve), None);
    for (name, says) in [
        ("Mal\x1b]0;x", "control characters"),
        ("Mal: hi", "cannot contain ':'"),
        ("Ann", "already in this chat"),
        ("Bob", "already in this chat"),
    ] {
        let mut mal = connect(ann.addr);
        write_frame(&mut mal, &chat_text(name, "let me in"));
        let notice = read_frame(&mut mal).expect("a notice");
        assert!(notice.contains(says), "{name:?}: {notice}");
        assert!(!notice.contains('\x1b'), "{notice:?}");
        assert_eq!(read_frame(&mut mal), None, "{name:?} is closed");
    }
    let ann_saw = ann.leave_and_collect();
    assert!(
        ann_saw
            .iter()
            .all(|l| !l.contains('\x1b') && !l.contains("let me in")),
        "{ann_saw:?}"
    );
    assert!(!ann_saw.iter().any(|l| l.contains("it is me, Bob")));
}

#[test]
fn a_typed_name_is_checked_and_the_mesh_starts_once_it_is_good() {
    let mut cmd = sockloop(&["tcp-chat", "--bind", "127.0.0.1", "--port", "0"]);
    cmd.stdin(Stdio::piped());
    let mut ann = Proc::start(cmd);
    let mut typing = ann.stdin();
    ann.wait_line("Enter your username", LONG);
    // Both lines in one write: the second is the name only if the first was refused.
    typing.write_all(b"Ann\x1b[31m\nAnn\n").unwrap();
    ann.wait_line(
        "a name cannot contain control characters (it contains ^[)",
        LONG,
    );
    let addr = ann.listening_addr();
    let mut bob = member("Bob", &[addr]);
    bob.proc.wait_line("Ann joined the chat", LONG);
    typing.write_all(b"hi Bob\n").unwrap();
    bob.wait_message("Ann", "hi Bob");
}

#[test]
fn a_guest_that_does_not_read_is_disconnected_and_members_get_everything() {
    let mut ann = member_on(0, "Ann", &[], &["--max-backlog", "64K"]);
    let mut bob = member("Bob", &[ann.addr]);
    ann.wait_members(2);
    bob.wait_members(2);
    let mut slow = connect(ann.addr);
    write_frame(&mut slow, &chat_text("Slow", "I will not read"));
    bob.wait_message("Slow", "I will not read");
    // 8 MB of typing: far more than the guest's socket buffers and its 64 KiB backlog.
    let line = "x".repeat(999);
    let mut typing = ann.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..8000 {
            writeln!(typing, "{i} {line}").unwrap();
        }
        typing
    });
    ann.proc.wait_line("does not read", LONG);
    let typing = writer.join().unwrap();
    bob.wait_message("Ann", &format!("7999 {}", "x".repeat(999)));
    ann.stdin = Some(typing);
    let bob_saw = bob.leave_and_collect();
    let lines = bob_saw
        .iter()
        .filter(|l| l.ends_with(&"x".repeat(999)))
        .count();
    assert_eq!(lines, 8000, "Bob got every line once");
    drop(slow);
}

/// A member that does not read pauses Ann's stdin (piped input goes at the
/// pace of the slowest member). When that member goes, nothing is left to
/// wait for: Ann must read her input again, although no link drains and her
/// paused stdin brings no event of its own.
#[test]
fn stdin_resumes_when_the_member_that_paused_it_is_gone() {
    let mut ann = member_on(0, "Ann", &[], &["--max-backlog", "256K", "--trace"]);
    // A fake member, Fay, says hello and then reads nothing; a small receive
    // buffer makes Ann's queue for her grow soon. She listens nowhere: a dial
    // to her address is refused at once.
    let (_nobody, fay_listen) = support::refusing_addr();
    let fay = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    fay.set_recv_buffer_size(4096).unwrap();
    fay.connect_timeout(&ann.addr.into(), LONG).unwrap();
    let mut fay = support::with_deadlines(fay.into());
    write_frame(
        &mut fay,
        &format!("sockloop-mesh/1 hello id=0000000000000001 dial=1 listen={fay_listen} name=Fay"),
    );
    let welcome = read_frame(&mut fay).expect("Ann's welcome");
    assert!(welcome.starts_with("sockloop-mesh/1 welcome"), "{welcome}");
    ann.wait_members(2);
    // Far more typing than Fay's socket buffers and half Ann's backlog hold.
    let line = "x".repeat(999);
    let mut typing = ann.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..20_000 {
            if writeln!(typing, "{i} {line}").is_err() {
                break;
            }
        }
    });
    ann.proc.wait_line("stdin: paused", LONG);
    // Fay goes with unread bytes: her end resets the link.
    fay.set_nonblocking(true).unwrap();
    drop(fay);
    let gone = ann.proc.wait_line("Fay (member at", LONG);
    let from = ann.proc.seen.iter().position(|l| *l == gone).unwrap();
    ann.proc
        .wait_line_after(from, "nobody else is in the chat yet", LONG);
    ann.proc.wait_line_after(from, "stdin: resumed", LONG);
    writer.join().unwrap();
}

/// `--max-guests` counts every guest, the silent ones that only listen
/// too: neither a named guest nor another silent connection gets past it.
#[test]
fn listening_guests_count_toward_max_guests() {
    let mut ann = member_on(0, "Ann", &[], &["--max-guests", "1"]);
    let _quiet = connect(ann.addr);
    ann.proc.wait_line("is listening", LONG);
    let mut dee = connect(ann.addr);
    write_frame(&mut dee, &chat_text("Dee", "room for me?"));
    let notice = read_frame(&mut dee).expect("a notice");
    assert!(notice.contains("room for 1 guests"), "{notice}");
    assert_eq!(read_frame(&mut dee), None, "Dee is closed");
    // Another silent one is refused once it has been silent long enough.
    let mut silent = connect(ann.addr);
    let notice = read_frame(&mut silent).expect("a notice");
    assert!(notice.contains("room for 1 guests"), "{notice}");
    assert_eq!(
        read_frame(&mut silent),
        None,
        "the second listener is closed"
    );
    let from = ann.proc.drain_lines().len();
    ann.proc.signal(libc::SIGUSR1);
    ann.proc
        .wait_line_after(from, "0 member(s), 1 guest(s)", LONG);
}

/// Addresses Ann has stopped dialing do not keep the address book full: a
/// member that links to her later still has its listen address recorded, so
/// she can dial it again if it vanishes.
#[test]
fn stopped_addresses_make_room_in_a_full_address_book() {
    // With --max-peers 1 the book holds 4 addresses: four PEERs that refuse
    // Ann for good fill it with addresses she will not dial again.
    let refusers: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<SocketAddr> = refusers.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut ann = member_on(0, "Ann", &peers, &["--max-peers", "1"]);
    for listener in &refusers {
        let (link, _) = listener.accept().unwrap();
        let mut link = support::with_deadlines(link);
        let hello = read_frame(&mut link).expect("Ann's hello");
        assert!(hello.starts_with("sockloop-mesh/1 hello"), "{hello}");
        write_frame(&mut link, "sockloop-mesh/1 bye retry=no why=not you");
        assert_eq!(read_frame(&mut link), None, "Ann closes a refused dial");
    }
    for peer in &peers {
        ann.proc
            .wait_line(&format!("{peer} refused us: not you"), LONG);
    }
    // Fay links to Ann; where Fay listens goes into the book.
    let (_nobody, fay_listen) = support::refusing_addr();
    let mut fay = connect(ann.addr);
    write_frame(
        &mut fay,
        &format!("sockloop-mesh/1 hello id=0000000000000001 dial=1 listen={fay_listen} name=Fay"),
    );
    let welcome = read_frame(&mut fay).expect("Ann's welcome");
    assert!(welcome.starts_with("sockloop-mesh/1 welcome"), "{welcome}");
    ann.wait_members(2);
    let from = ann.proc.drain_lines().len();
    ann.proc.signal(libc::SIGUSR1);
    ann.proc
        .wait_line_after(from, "1 member(s), 0 guest(s), 4 address(es)", LONG);
    ann.proc
        .wait_line_after(from, &format!("address {fay_listen}"), LONG);
}

#[test]
fn an_over_long_frame_closes_only_that_guest() {
    let mut ann = member_on(0, "Ann", &[], &["--max-frame", "1024"]);
    let mut big = connect(ann.addr);
    let mut fine = connect(ann.addr);
    write_frame(&mut fine, &chat_text("Fine", "hello"));
    ann.wait_message("Fine", "hello");
    write_frame(&mut big, &chat_text("Big", &"y".repeat(2000)));
    assert_eq!(
        read_frame(&mut big),
        None,
        "the over-long frame closes its connection"
    );
    ann.proc.wait_line("exceeds the 1024-byte maximum", LONG);
    write_frame(&mut fine, &chat_text("Fine", "still here"));
    ann.wait_message("Fine", "still here");
}

#[test]
fn a_member_given_its_own_address_stops_dialing_it() {
    let (_held, port) = reserved_port();
    let own: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ann = member_on(port, "Ann", &[own], &[]);
    ann.proc
        .wait_line("is this member's own listener; not dialing it", LONG);
    ann.say("alone");
    ann.proc.wait_line("nobody else is in the chat yet", LONG);
}

#[test]
fn mistakes_exit_2_with_one_line() {
    for (args, says) in [
        (
            vec!["tcp-chat", "--name", "a:b"],
            "--name: a name cannot contain ':'",
        ),
        (
            vec!["tcp-chat", "--name", &"x".repeat(40)],
            "at most 32 characters",
        ),
        (
            vec!["tcp-chat", "--name", "x", "--max-frame", "100"],
            "--max-frame 512 or more",
        ),
        (
            vec!["tcp-chat", "--name", "x", "nowhere"],
            "missing ':PORT'",
        ),
    ] {
        let output = sockloop(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("sockloop: "), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
