// The chat room's trust model, end to end, through every door of the real
// `sockloop chat server` (framed, line, UDP, TLS) and in `chat client` and
// `udp-chat`: what a peer may claim, what the server checks, and what every
// other member can rely on.
//
// Covered: no control character reaches a terminal, a line client, a framed
// or UDP peer, or the server's stdout and log; names are checked at join; a
// member's name is fixed by its first message and nobody speaks under
// another's name or the server's; every member is announced when it joins and
// once when it leaves, and /who and /help answer privately; a TLS connection
// joins only after its handshake; a name or a frame left unfinished is
// closed at its deadline while the others chat. The UDP door's own rules are
// in `tests/trust_udp.rs`; the helpers in `tests/support/room.rs`.
//
// Every wait has a deadline: socket reads and writes time out, and process
// and log waits go through `support`'s helpers. Nothing sleeps to synchronise.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::process::Stdio;

use sockloop::chat_msg;
use support::room::*;
use support::{sockloop, OutLines, Proc};

#[test]
fn a_tls_connection_joins_the_room_only_after_its_handshake() {
    let tls = Certificate::new("handshake");
    let (mut server, doors, _out) = server(&["--tls-cert", &tls.cert(), "--tls-key", &tls.key()]);
    // A client that connects and never starts its handshake.
    let stalled = support::connect(doors.tcp);
    let stalled_addr = stalled.local_addr().unwrap().to_string();
    // Two real TLS clients chat meanwhile.
    let addr = doors.tcp.to_string();
    let client = |name: &str| {
        let mut cmd = sockloop(&[
            "chat",
            "client",
            &addr,
            "--name",
            name,
            "--tls",
            "--insecure",
        ]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut proc = Proc::start(cmd);
        let out = OutLines::of(&mut proc.child);
        (proc, out)
    };
    let (mut ann, _ann_out) = client("Ann");
    let (mut bob, mut bob_out) = client("Bob");
    let mut ann_in = ann.stdin();
    let _bob_in = bob.stdin();
    server.wait_line(", 2 clients)", LONG);
    ann_in.write_all(b"hello over TLS\n").unwrap();
    bob_out.wait("\thello over TLS");

    // The stalled connection was not let in: never announced, nothing queued for it.
    let before = server.drain_lines().len();
    server.signal(libc::SIGUSR1);
    let row = server.wait_line_after(before, &stalled_addr, LONG);
    let queued: usize = row
        .split_whitespace()
        .nth(3)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no queued bytes in {row:?}"));
    assert_eq!(queued, 0, "room traffic queued while handshaking: {row}");
    let log = server.drain_lines().join("\n");
    assert!(
        !log.contains(&format!("{stalled_addr} connected")),
        "a connection still handshaking was let in:\n{log}"
    );
    assert!(
        !bob_out.seen.iter().any(|l| l.contains(&stalled_addr)),
        "{:?}",
        bob_out.seen
    );
    drop(stalled);
}

#[test]
fn a_member_is_announced_on_connect_before_speaking_and_once_on_leaving() {
    let (mut server, doors, _out) = server(&[]);
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "Bob here");
    server.wait_line("is Bob", LONG);

    // A framed client is announced as it connects, by address, before it says anything.
    let mut ann = Framed::connect(doors.tcp);
    let ann_addr = ann.local().to_string();
    let joined = bob.wait(SERVER, "announcing Ann's address", |t| {
        t.starts_with(&ann_addr) && t.contains("joined the chat")
    });
    assert!(joined.contains("framed"), "{joined}");
    // Then by name, once it is known, before its first words.
    ann.say("Ann", "hi");
    let seen = messages_until(&mut bob, "Ann", "hi");
    assert!(
        seen.contains(&(SERVER.to_string(), format!("{ann_addr} is Ann"))),
        "{seen:?}"
    );

    // A line client: announced at connect, then by name.
    let mut lina = LineClient::connect(doors.line);
    let lina_addr = lina.writer.local_addr().unwrap().to_string();
    bob.wait(SERVER, "announcing the line client", |t| {
        t.starts_with(&lina_addr) && t.contains("line")
    });
    lina.send("Lina\n");
    bob.wait_for(SERVER, &format!("{lina_addr} is Lina"));

    // Leaving as `chat client` does (the leave text, then the zero-length
    // frame) is announced once, by the server.
    ann.say("Ann", chat_msg::LEAVE_TEXT);
    ann.send_raw(&[0, 0]);
    ann.expect_closed();
    lina.send("marker one\n");
    let seen = messages_until(&mut bob, "Lina", "marker one");
    let about_leaving: Vec<_> = seen
        .iter()
        .filter(|(from, text)| {
            (from == "Ann" && text == chat_msg::LEAVE_TEXT) || text.contains("Ann left")
        })
        .collect();
    assert_eq!(
        about_leaving,
        [&(SERVER.to_string(), "Ann left the chat".to_string())],
        "{seen:?}"
    );

    // A UDP peer is announced when its first datagram arrives, by name, and once when it leaves.
    let uma = UdpPeer::new();
    uma.say(doors.udp, "Uma", "hello");
    let seen = messages_until(&mut bob, "Uma", "hello");
    assert!(
        seen.iter()
            .any(|(from, t)| from == SERVER && t.starts_with("Uma joined the chat")),
        "{seen:?}"
    );
    uma.say(doors.udp, "Uma", chat_msg::LEAVE_TEXT);
    lina.send("marker two\n");
    let seen = messages_until(&mut bob, "Lina", "marker two");
    let about_leaving: Vec<_> = seen
        .iter()
        .filter(|(_, text)| text == chat_msg::LEAVE_TEXT || text.contains("Uma left"))
        .collect();
    assert_eq!(
        about_leaving,
        [&(SERVER.to_string(), "Uma left the chat".to_string())],
        "{seen:?}"
    );
}

#[test]
fn with_a_host_user_the_notices_still_come_from_the_server() {
    let (mut server, doors, _out) = server(&["--name", "Alice"]);
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "here");
    server.wait_line("is Bob", LONG);
    let mut carol = Framed::connect(doors.tcp);
    carol.say("Carol", "hi all");
    let seen = messages_until(&mut bob, "Carol", "hi all");
    let notices: Vec<_> = seen.iter().filter(|(_, t)| t.contains("Carol")).collect();
    assert!(!notices.is_empty(), "{seen:?}");
    for (from, text) in notices {
        assert_eq!(from, SERVER, "a notice in the host's name: {from}: {text}");
    }
    // The host's name is the host's: nobody else may take it.
    let mut eve = Framed::connect(doors.tcp);
    eve.say("Alice", "I am the host");
    let notice = eve.wait(SERVER, "refusing the host's name", |t| {
        t.contains("refused")
    });
    assert!(notice.contains("Alice"), "{notice}");
    eve.expect_closed();
}

#[test]
fn nobody_speaks_as_the_server_or_as_another_member() {
    let (mut server, doors, _out) = server(&[]);
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "reading");
    let mut ann = Framed::connect(doors.tcp);
    ann.say("Ann", "I am Ann");
    server.wait_line("is Ann", LONG);

    // Eve's name is fixed by her first frame. What she then signs as the
    // server or as Ann, or sends with no header at all, reaches the room as hers.
    let mut eve = Framed::connect(doors.tcp);
    eve.say("Eve", "hello");
    eve.say(SERVER, "Ann left the chat");
    eve.say("Ann", "I am Ann too");
    eve.send(b"no header at all");
    eve.say("Eve", "done");
    let seen = messages_until(&mut bob, "Eve", "done");
    for text in ["Ann left the chat", "I am Ann too", "no header at all"] {
        let senders: Vec<&str> = seen
            .iter()
            .filter(|(_, t)| t == text)
            .map(|(from, _)| from.as_str())
            .collect();
        assert_eq!(senders, ["Eve"], "{text:?} reached the room as {senders:?}");
    }

    // The server's name is refused at every door, whatever its case.
    let mut line = LineClient::connect(doors.line);
    line.send("Server\n");
    let notice = line.wait_line("refused");
    assert!(notice.contains("Server"), "{notice}");
    line.wait_line(chat_msg::NAME_PROMPT);
    let udp = UdpPeer::new();
    udp.say(doors.udp, SERVER, "Eve left the chat");
    ann.say("Ann", "after the udp attempt");
    let seen = messages_until(&mut bob, "Ann", "after the udp attempt");
    assert!(
        !seen.iter().any(|(_, t)| t == "Eve left the chat"),
        "{seen:?}"
    );
}

#[test]
fn two_members_never_speak_under_one_name() {
    let (mut server, doors, _out) = server(&[]);
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "reading");
    let mut ann = Framed::connect(doors.tcp);
    ann.say("Ann", "the first Ann");
    server.wait_line("is Ann", LONG);

    // A second Ann at each door is given a name of its own, and told.
    let mut framed = Framed::connect(doors.tcp);
    framed.say("Ann", "framed Ann");
    let told = framed.wait(SERVER, "giving another name", |t| t.contains("taken"));
    let mut line = LineClient::connect(doors.line);
    line.send("ann\n");
    line.wait_line("taken");
    line.send("line Ann\n");
    let udp = UdpPeer::new();
    udp.say(doors.udp, "ANN", "udp Ann");

    assert!(told.contains("Ann"), "{told}");
    let mut names = std::collections::HashMap::new();
    while names.len() < 3 {
        let (from, text) = bob.next_message().expect("a message");
        if ["framed Ann", "line Ann", "udp Ann"].contains(&text.as_str()) {
            names.insert(text, from);
        }
    }
    let mut distinct: Vec<&String> = names.values().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{names:?}");
    for name in names.values() {
        assert!(!name.eq_ignore_ascii_case("Ann"), "{names:?}");
    }
}

#[test]
fn who_and_help_are_answered_privately() {
    let (mut server, doors, _out) = server(&[]);
    let mut ann = Framed::connect(doors.tcp);
    ann.say("Ann", "here");
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "here");
    let mut lina = LineClient::connect(doors.line);
    lina.send("Lina\n");
    let uma = UdpPeer::new();
    uma.say(doors.udp, "Uma", "here");
    server.wait_line("is Lina", LONG);
    server.wait_line("Uma joined", LONG);

    ann.say("Ann", "/who");
    let who = ann.wait(SERVER, "listing the room", |t| t.contains("in the room"));
    for member in ["Ann (framed", "Bob (framed", "Lina (line", "Uma (udp"] {
        assert!(who.contains(member), "{member} missing from {who:?}");
    }
    lina.send("/help\n");
    lina.wait_line("/who");
    ann.say("Ann", "marker");
    let seen = messages_until(&mut bob, "Ann", "marker");
    assert!(
        !seen
            .iter()
            .any(|(_, t)| t.contains("/who") || t.contains("/help") || t.contains("Lina (line")),
        "a private answer reached Bob: {seen:?}"
    );
}

// ----- Control characters --------------------------------------------------------------

#[test]
fn control_characters_reach_no_terminal_line_client_or_peer_through_any_door() {
    let (mut server, doors, mut out) = server(&[]);
    let mut fred = Framed::connect(doors.tcp);
    fred.say("Fred", "here");
    let mut lina = LineClient::connect(doors.line);
    lina.send("Lina\n");
    fred.wait(SERVER, "naming Lina", |t| t.ends_with(" is Lina"));
    let uma = UdpPeer::new();
    uma.say(doors.udp, "Uma", "here");
    uma.answer_challenge(doors.udp, "Uma");
    server.wait_line("proved its address", LONG);

    // Each door in turn says something hostile, then a marker everyone waits for.
    fred.say("Fred", HOSTILE);
    fred.say("Fred", "fred done");
    lina.wait_for("Fred", "fred done");
    lina.send(&format!("{HOSTILE}\n"));
    lina.send("lina done\n");
    fred.wait_for("Lina", "lina done");
    uma.say(doors.udp, "Uma", HOSTILE);
    uma.say(doors.udp, "Uma", "uma done");
    fred.wait_for("Uma", "uma done");
    lina.wait_for("Uma", "uma done");
    out.wait("\tuma done");
    let mut to_uma = Vec::new();
    while !to_uma.iter().any(|d: &Vec<u8>| d.ends_with(b"\tlina done")) {
        let text = uma.recv();
        to_uma.push(text.into_bytes());
    }

    for (what, bytes) in [
        ("the line client's input", lina.received.clone()),
        ("the framed client's input", fred.received.concat()),
        ("the udp peer's input", to_uma.concat()),
        ("the server's stdout", out.seen.join("\n").into_bytes()),
        (
            "the server's log",
            server.drain_lines().join("\n").into_bytes(),
        ),
    ] {
        assert_no_controls(what, &bytes);
    }
    // Shown, not dropped: ESC as ^[, the C1 CSI and the override as code points.
    assert!(
        out.seen
            .iter()
            .any(|l| l.contains("^[[2J^[]0;owned^Ggone^Mhidden<U+009B>31m<U+202E>txt.exe")),
        "{:?}",
        out.seen
    );
}

#[test]
fn names_with_control_characters_are_refused_at_join_with_a_notice() {
    let (mut server, doors, mut out) = server(&[]);
    let mut fred = Framed::connect(doors.tcp);
    fred.say("Fred", "here");
    server.wait_line("is Fred", LONG);

    let mut framed = Framed::connect(doors.tcp);
    framed.say("Ev\x1b[2Jil", "hi from a framed client");
    let notice = framed.wait(SERVER, "refusing the name", |t| t.contains("refused"));
    assert!(notice.contains("control"), "{notice}");
    framed.expect_closed();

    let mut line = LineClient::connect(doors.line);
    line.send("Ev\x07il\n");
    line.wait_line("refused");
    line.wait_line(chat_msg::NAME_PROMPT);
    line.send("Evil\n");
    fred.wait(SERVER, "naming the line client", |t| {
        t.ends_with(" is Evil")
    });

    let udp = UdpPeer::new();
    udp.say(doors.udp, "Ev\u{9b}il", "hi from udp");
    let notice = udp.recv();
    assert!(notice.contains("refused"), "{notice:?}");

    fred.say("Fred", "marker");
    line.wait_for("Fred", "marker");
    out.wait("\tmarker");
    let seen: Vec<&Vec<u8>> = fred.received.iter().collect();
    for bytes in &seen {
        assert_no_controls("the framed client's input", bytes);
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("hi from"), "a refused name spoke: {text:?}");
    }
    assert_no_controls("the line client's input", &line.received);
    assert_no_controls("the server's stdout", out.seen.join("\n").as_bytes());
    assert_no_controls(
        "the server's log",
        server.drain_lines().join("\n").as_bytes(),
    );
}

#[test]
fn the_chat_client_and_udp_chat_print_no_control_characters() {
    // A hand-made server sends `chat client` a hostile frame: a name and a
    // text full of escapes, and a second line that poses as a server notice.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut cmd = sockloop(&["chat", "client", &addr, "--name", "Cli"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut client = Proc::start(cmd);
    let mut out = OutLines::of(&mut client.child);
    let _stdin = client.stdin();
    let (stream, _) = listener.accept().unwrap();
    let mut server = Framed::over(support::with_deadlines(stream));
    let forged = "[2024-02-03T01:02:04] server:\n\tBob left the chat";
    server
        .send(format!("[2024-02-03T01:02:03] Ev\x1b]0;x\x07il:\n\t{HOSTILE}\n{forged}").as_bytes());
    server.say("Srv", "end of test");
    out.wait("end of test");
    assert_no_controls("chat client's stdout", out.seen.join("\n").as_bytes());
    assert!(
        !out.seen
            .iter()
            .any(|l| l.starts_with("[2024-02-03T01:02:04] server:")),
        "a text line passed for a header: {:?}",
        out.seen
    );

    // And a UDP peer does the same to `udp-chat`.
    let mut cmd = sockloop(&[
        "udp-chat",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--name",
        "Uc",
    ]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut chat = Proc::start(cmd);
    let chat_addr = chat.listening_addr();
    let mut out = OutLines::of(&mut chat.child);
    let _stdin = chat.stdin();
    let peer = UdpPeer::new();
    peer.socket
        .send_to(
            format!("[2024-02-03T01:02:03] Ev\x1b[2Jil:\n\t{HOSTILE}\n{forged}").as_bytes(),
            chat_addr,
        )
        .unwrap();
    peer.say(chat_addr, "Peer", "end of test");
    out.wait("end of test");
    assert_no_controls("udp-chat's stdout", out.seen.join("\n").as_bytes());
    assert!(
        !out.seen
            .iter()
            .any(|l| l.starts_with("[2024-02-03T01:02:04] server:")),
        "{:?}",
        out.seen
    );
}

// ----- Slow joiners ------------------------------------------------------------------

#[test]
fn an_unfinished_name_or_frame_is_closed_at_its_deadline_while_others_chat() {
    let (mut server, doors, _out) = server(&["--name-timeout", "1", "--frame-timeout", "1"]);
    let mut ann = Framed::connect(doors.tcp);
    ann.say("Ann", "here");
    let mut bob = Framed::connect(doors.tcp);
    bob.say("Bob", "here");
    server.wait_line("is Bob", LONG);

    let mut silent = LineClient::connect(doors.line); // never gives a name
    let mut half_name = LineClient::connect(doors.line);
    half_name.send("Slo"); // a name begun, never finished
    let mut dribbler = LineClient::connect(doors.line);
    dribbler.send("Drib\n");
    dribbler.send("a line begun"); // never finished
    let mut half_frame = Framed::connect(doors.tcp);
    half_frame.say("Half", "whole");
    half_frame.send_raw(&[0, 40, b'[']); // a frame begun, never finished

    // The others chat meanwhile.
    for i in 0..5 {
        ann.say("Ann", &format!("still chatting {i}"));
        bob.wait_for("Ann", &format!("still chatting {i}"));
    }
    silent.wait_line("--name-timeout");
    silent.expect_closed();
    half_name.wait_line("--name-timeout");
    half_name.expect_closed();
    dribbler.wait_line("--frame-timeout");
    dribbler.expect_closed();
    half_frame.wait(SERVER, "saying why", |t| t.contains("--frame-timeout"));
    half_frame.expect_closed();
    ann.say("Ann", "after the slow ones");
    bob.wait_for("Ann", "after the slow ones");
}
