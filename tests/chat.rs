// The TCP chat, end to end: the real `sockloop` binary on 127.0.0.1, port 0,
// talked to by test-side framed clients (blocking std sockets with deadlines)
// and by `sockloop chat client` and the course-style Python client.
//
// Covered: relaying to every other client exactly once and in each sender's
// order; slow readers (disconnected, or with drop-oldest kept and told what
// they missed) without hurting the others or the server's memory; hostile
// frames (huge lengths, invalid UTF-8, the zero-length "leaving" frame)
// closing only their own connection; frames split anywhere or packed a
// thousand to a write; a dribbling client not delaying the others; a
// connection flood beyond a low open-file limit; join and leave
// announcements; shared fan-out measured from /proc; shutdown; the client's
// own life cycle; and wire compatibility with Python.
//
// Every wait has a deadline: socket reads and writes time out, and process
// and log waits go through `support`'s helpers.

mod support;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sockloop::chat_msg;
use support::{
    chat_server_with, cpu_seconds, eventually, peak_rss_kib, rss_kib, sockloop, vm_data_kib,
    OutLines as Lines, Proc,
};

const LONG: Duration = Duration::from_secs(20);

// ----- The server ------------------------------------------------------------

/// `sockloop chat server --relay-only` on 127.0.0.1 with `extra` options;
/// stdout (the relayed messages) is discarded.
fn chat_server(extra: &[&str]) -> (Proc, SocketAddr) {
    chat_server_with(extra, |_| {})
}

/// Waits until the server has logged `n` connected clients.
fn wait_clients(server: &mut Proc, n: usize) {
    let needle = if n == 1 {
        ", 1 client)".to_string()
    } else {
        format!(", {n} clients)")
    };
    server.wait_line(&needle, LONG);
}

/// Waits until `needle` has appeared in `count` stderr lines.
fn wait_count(server: &mut Proc, needle: &str, count: usize) {
    eventually(
        LONG,
        &format!("{count} lines containing {needle:?}"),
        || {
            let n = server
                .drain_lines()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            (n >= count).then_some(())
        },
    );
}

/// Bytes queued per connection, from the table SIGUSR1 prints.
fn connection_table(server: &mut Proc) -> Vec<(String, usize)> {
    table_rows(server)
        .into_iter()
        .map(|row| (row.peer, row.out))
        .collect()
}

/// One row of the connection table.
struct Row {
    peer: String,
    /// Bytes queued for the peer.
    out: usize,
    /// Bytes the server holds from the peer (half a frame).
    held: usize,
}

/// The rows of the table SIGUSR1 prints.
fn table_rows(server: &mut Proc) -> Vec<Row> {
    let start = server.drain_lines().len();
    server.signal(libc::SIGUSR1);
    let (header, n) = eventually(LONG, "the connection table", || {
        let lines = server.drain_lines();
        lines[start..]
            .iter()
            .position(|l| l.starts_with("connection table:"))
            .map(|i| {
                let line = &lines[start + i];
                let n: usize = line["connection table: ".len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.parse().ok())
                    .expect("a count in the table header");
                (start + i, n)
            })
    });
    eventually(LONG, "the table's rows", || {
        let lines = server.drain_lines();
        let rows: Vec<Row> = lines[header + 1..]
            .iter()
            .filter(|l| l.trim_start().starts_with("conn#"))
            .take(n)
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                Row {
                    peer: words[1].to_string(),
                    out: words[3].parse().expect("out B"),
                    held: words[4].parse().expect("in B"),
                }
            })
            .collect();
        (rows.len() == n).then_some(rows)
    })
}

// ----- A framed client on a blocking socket ------------------------------------

/// Prefix + payload, written here independently of the crate's encoder.
fn frame(prefix: usize, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_be_bytes();
    let mut out = len[8 - prefix..].to_vec();
    out.extend_from_slice(payload);
    out
}

/// A chat participant speaking raw frames, with a deadline on every read and write.
struct Peer {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    prefix: usize,
}

/// What one frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Frame(String),
    CloseFrame,
    Eof,
}

impl Peer {
    fn connect(addr: SocketAddr) -> Peer {
        Peer::over(support::connect(addr), 2)
    }

    fn connect4(addr: SocketAddr) -> Peer {
        Peer::over(support::connect(addr), 4)
    }

    /// A peer whose receive buffer is tiny, so what it does not read stays in the server.
    fn connect_small_rcvbuf(addr: SocketAddr) -> Peer {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .expect("connect");
        Peer::over(support::with_deadlines(socket.into()), 2)
    }

    fn over(stream: TcpStream, prefix: usize) -> Peer {
        stream.set_nodelay(true).unwrap();
        Peer {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::with_capacity(64 * 1024, stream),
            prefix,
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.writer.local_addr().unwrap()
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .expect("write within the timeout");
    }

    fn send(&mut self, text: &str) {
        let bytes = frame(self.prefix, text.as_bytes());
        self.send_raw(&bytes);
    }

    /// Sends `[now] NAME:\n\tTEXT`.
    fn say(&mut self, name: &str, text: &str) {
        self.send(&chat_msg::format_now(name, text));
    }

    /// Like [`Peer::next`], but `None` when nothing came within the read timeout.
    fn try_next(&mut self) -> Option<Got> {
        match self.reader.fill_buf() {
            Ok(_) => Some(self.next()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(_) => Some(Got::Eof),
        }
    }

    /// The next frame, the close frame, or the end of the stream.
    fn next(&mut self) -> Got {
        let mut prefix = [0u8; 4];
        let prefix = &mut prefix[..self.prefix];
        match self.reader.read_exact(prefix) {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Got::Eof,
            Err(e) => panic!("reading a frame: {e}"),
        }
        let len = prefix.iter().fold(0usize, |n, &b| n << 8 | b as usize);
        if len == 0 {
            return Got::CloseFrame;
        }
        let mut payload = vec![0; len];
        self.reader
            .read_exact(&mut payload)
            .expect("a whole frame within the timeout");
        Got::Frame(String::from_utf8(payload).expect("utf-8 from the server"))
    }

    /// The next message's text; panics on anything else.
    fn recv(&mut self) -> String {
        match self.next() {
            Got::Frame(text) => text,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next message that is not from the server itself, as (sender, text).
    fn recv_chat(&mut self) -> (String, String) {
        loop {
            let text = self.recv();
            let parsed = chat_msg::parse(&text).expect("a chat message");
            if parsed.sender != "server" {
                return (parsed.sender.to_string(), parsed.text.to_string());
            }
        }
    }

    /// Reads and discards until the server closes; panics after `within`.
    fn expect_closed(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "connection still open after {within:?}");
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.reader.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if is_gone(&e) => return,
                Err(e) => panic!("connection still open after {within:?}: {e}"),
            }
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// `count` chat messages `m0`, `m1`, ... from `name`, framed and packed into one buffer.
fn numbered(name: &str, count: usize, pad: usize) -> Vec<u8> {
    let padding = "x".repeat(pad);
    let mut out = Vec::new();
    for i in 0..count {
        let text = chat_msg::format_now(name, &format!("m{i} {padding}"));
        out.extend_from_slice(&frame(2, text.as_bytes()));
    }
    out
}

/// The number in a message text `mN ...`.
fn number(text: &str) -> usize {
    text[1..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered message: {text:?}"))
}

// ----- Output of child processes -------------------------------------------------

// ----- Relaying -----------------------------------------------------------------

#[test]
fn fifty_clients_get_every_message_once_in_order_and_never_their_own() {
    const CLIENTS: usize = 50;
    const EACH: usize = 20;
    let (mut server, addr) = chat_server(&[]);
    let mut peers: Vec<Peer> = (0..CLIENTS).map(|_| Peer::connect(addr)).collect();
    wait_clients(&mut server, CLIENTS);

    for (i, peer) in peers.iter_mut().enumerate() {
        peer.send_raw(&numbered(&format!("c{i}"), EACH, 0));
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        let me = format!("c{i}");
        let mut next: HashMap<String, usize> = HashMap::new();
        for _ in 0..(CLIENTS - 1) * EACH {
            let (sender, text) = peer.recv_chat();
            assert_ne!(sender, me, "{me} got its own message back");
            let expected = next.entry(sender.clone()).or_insert(0);
            assert_eq!(
                number(&text),
                *expected,
                "{me}: {sender}'s messages out of order"
            );
            *expected += 1;
        }
        assert_eq!(next.len(), CLIENTS - 1);
        assert!(next.values().all(|&n| n == EACH), "{me}: {next:?}");
    }
    // Nothing more: the next frame would be a duplicate. A new message from
    // c0 must be the very next chat message c1 sees.
    peers[0].say("c0", "m999 end");
    assert_eq!(
        peers[1].recv_chat(),
        ("c0".to_string(), "m999 end".to_string())
    );
}

#[test]
fn a_thousand_frames_in_one_write_and_frames_split_at_every_byte_all_arrive() {
    let (mut server, addr) = chat_server(&[]);
    let mut sender = Peer::connect(addr);
    let mut reader = Peer::connect(addr);
    wait_clients(&mut server, 2);

    sender.send_raw(&numbered("s", 1000, 10));
    for i in 0..1000 {
        let (_, text) = reader.recv_chat();
        assert_eq!(number(&text), i);
    }

    // Three frames, cut at every byte boundary in turn.
    let mut bytes = Vec::new();
    for text in ["one", "twö", "three ✓"] {
        bytes.extend_from_slice(&frame(2, chat_msg::format_now("s", text).as_bytes()));
    }
    for cut in 1..bytes.len() {
        sender.send_raw(&bytes[..cut]);
        sender.send_raw(&bytes[cut..]);
        for expected in ["one", "twö", "three ✓"] {
            assert_eq!(reader.recv_chat().1, expected, "cut at byte {cut}");
        }
    }
    // And one byte per write.
    for byte in &bytes {
        sender.send_raw(std::slice::from_ref(byte));
    }
    for expected in ["one", "twö", "three ✓"] {
        assert_eq!(reader.recv_chat().1, expected, "byte by byte");
    }
}

#[test]
fn a_frame_dribbled_byte_by_byte_does_not_delay_the_others() {
    let (mut server, addr) = chat_server(&[]);
    let mut dribbler = Peer::connect(addr);
    let mut sender = Peer::connect(addr);
    let mut reader = Peer::connect(addr);
    wait_clients(&mut server, 3);

    // One byte of the dribbler's frame, then a whole message from another
    // client, which must come through while the dribbled frame is still
    // incomplete; and so on for every byte. No clock: if the server waited
    // for the rest of the dribbler's frame, the message would never arrive
    // (the test's read deadline would fail it).
    let slow = frame(
        2,
        chat_msg::format_now("dribbler", "slow but whole").as_bytes(),
    );
    let (last, bytes) = slow.split_last().unwrap();
    for (round, byte) in bytes.iter().enumerate() {
        dribbler.send_raw(std::slice::from_ref(byte));
        sender.say("sender", &format!("m{round} ping"));
        let (who, text) = reader.recv_chat();
        assert_eq!(
            who, "sender",
            "the dribbled frame came out before its last byte"
        );
        assert_eq!(number(&text), round);
    }
    dribbler.send_raw(std::slice::from_ref(last));
    assert_eq!(
        reader.recv_chat(),
        ("dribbler".to_string(), "slow but whole".to_string())
    );
}

#[test]
fn joins_and_leaves_are_announced_with_names_as_written() {
    let (mut server, addr) = chat_server(&[]);
    let name = "Zoë O'Brien the 2nd";
    let mut bob = Peer::connect(addr);
    let mut ann = Peer::connect(addr);
    wait_clients(&mut server, 2);
    // Each is announced as it comes in, by its address; then by its name.
    let mut zoe = Peer::connect(addr);
    let zoe_addr = zoe.local_addr();
    for peer in [&mut bob, &mut ann] {
        loop {
            let text = peer.recv();
            let parsed = chat_msg::parse(&text).unwrap();
            assert_eq!(parsed.sender, "server");
            if parsed.text.starts_with(&zoe_addr.to_string()) {
                assert!(parsed.text.contains("joined the chat"), "{text}");
                break;
            }
        }
    }
    zoe.say(name, "hello");
    for peer in [&mut bob, &mut ann] {
        let named = peer.recv();
        let parsed = chat_msg::parse(&named).unwrap();
        assert_eq!(parsed.sender, "server");
        assert_eq!(parsed.text, format!("{zoe_addr} is {name}"));
        assert_eq!(peer.recv_chat(), (name.to_string(), "hello".to_string()));
    }
    server.wait_line(&format!("is {name}"), LONG);

    // Bob speaks (and so is named), then leaves with the zero-length frame.
    bob.say("bob", "bye");
    assert_eq!(zoe.recv_chat(), ("bob".to_string(), "bye".to_string()));
    bob.send_raw(&[0, 0]);
    bob.expect_closed(LONG);
    for peer in [&mut zoe, &mut ann] {
        let leave = loop {
            let text = peer.recv();
            let parsed = chat_msg::parse(&text).unwrap();
            if parsed.sender == "server" && parsed.text.contains("left") {
                break parsed.text.to_string();
            }
        };
        assert_eq!(leave, "bob left the chat");
    }
    // Zoë's connection just drops: a leave as well.
    drop(zoe);
    let leave = ann.recv();
    assert_eq!(
        chat_msg::parse(&leave).unwrap().text,
        format!("{name} left the chat")
    );
    // Logged by name, or counted with bob's if it came within the same second.
    eventually(LONG, "Zoë's leaving in the log", || {
        server
            .drain_lines()
            .iter()
            .any(|l| {
                l.contains(&format!("{name} (127.0.0.1:")) || l.contains("1 more client(s) left")
            })
            .then_some(())
    });
}

// ----- Hostile and broken clients ---------------------------------------------------

#[test]
fn an_over_long_length_closes_that_connection_at_once_without_allocating_it() {
    let (mut server, addr) = chat_server(&["--length-bytes", "4"]);
    let mut hostile = Peer::connect4(addr);
    let mut a = Peer::connect4(addr);
    let mut b = Peer::connect4(addr);
    wait_clients(&mut server, 3);
    let before = rss_kib(server.pid());

    // Closed on the header alone: nothing more is sent, so a server that
    // waited for the payload would never close it (the deadline would fail).
    hostile.send_raw(&[0xff, 0xff, 0xff, 0xf0]);
    hostile.expect_closed(LONG);
    server.wait_line("protocol error: frame of 4294967280 bytes", LONG);
    let grown = peak_rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 1024, "peak RSS grew by {grown} KiB");

    a.say("a", "still here");
    assert_eq!(b.recv_chat(), ("a".to_string(), "still here".to_string()));
}

#[test]
fn memory_follows_the_bytes_a_peer_sent_not_the_length_it_announced() {
    // Each client announces a long frame and sends one byte of it. The
    // server may hold those bytes, not what was announced: 300 x 64 KiB
    // (19 MiB) with 2-byte lengths, 50 x 100 MB (5 GB) with 4-byte ones.
    let cases: [(&[&str], Vec<u8>, usize); 2] = [
        (&[], vec![0xff, 0xff, b'x'], 300),
        (
            &[
                "--length-bytes",
                "4",
                "--max-frame",
                "100000000",
                "--max-backlog",
                "200M",
            ],
            [&100_000_000u32.to_be_bytes()[..], b"x"].concat(),
            50,
        ),
    ];
    for (extra, header, n) in cases {
        let (mut server, addr) = chat_server(extra);
        let mut peers: Vec<TcpStream> = (0..n).map(|_| support::connect(addr)).collect();
        wait_clients(&mut server, n);
        table_rows(&mut server); // the table's own allocations, before measuring
        let before = vm_data_kib(server.pid());
        for peer in &mut peers {
            peer.write_all(&header).expect("write within the timeout");
        }
        // Every connection's bytes have been read when the table says so.
        eventually(LONG, "every partial frame read", || {
            let rows = table_rows(&mut server);
            (rows.len() == n && rows.iter().all(|r| r.held == header.len())).then_some(())
        });
        let grown = vm_data_kib(server.pid()).saturating_sub(before);
        assert!(
            grown < 2048,
            "{extra:?}: VmData grew by {grown} KiB for {n} clients holding {} bytes each",
            header.len()
        );
    }
}

#[test]
fn invalid_utf8_and_zero_length_frames_close_only_their_connection() {
    let (mut server, addr) = chat_server(&[]);
    let mut garbled = Peer::connect(addr);
    let mut leaver = Peer::connect(addr);
    let mut a = Peer::connect(addr);
    let mut b = Peer::connect(addr);
    wait_clients(&mut server, 4);

    garbled.send_raw(&frame(2, b"caf\xe9 \xff\xfe"));
    garbled.expect_closed(LONG);
    server.wait_line("protocol error: frame is not valid utf-8", LONG);

    leaver.send_raw(&[0, 0]);
    leaver.expect_closed(LONG);
    wait_count(&mut server, " left (", 1);

    // Neither frame reached anyone, and the others go on.
    a.say("a", "still here");
    assert_eq!(b.recv_chat(), ("a".to_string(), "still here".to_string()));
    b.say("b", "me too");
    assert_eq!(a.recv_chat(), ("b".to_string(), "me too".to_string()));
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_the_others_get_everything() {
    const FRAMES: usize = 320; // 320 × 64,000 B ≈ 20 MB
    const SIZE: usize = 64_000;
    const BACKLOG: usize = 512 * 1024;
    let (mut server, addr) = chat_server(&["--max-backlog", "512K"]);
    let mut sleeper = Peer::connect(addr);
    let readers: Vec<Peer> = (0..2).map(|_| Peer::connect(addr)).collect();
    let mut sender = Peer::connect(addr);
    wait_clients(&mut server, 4);
    let baseline = rss_kib(server.pid());

    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut peer| {
            thread::spawn(move || {
                for i in 0..FRAMES {
                    let (_, text) = peer.recv_chat();
                    assert_eq!(text.len(), SIZE);
                    assert_eq!(number(&text), i, "frames lost or reordered");
                }
                peer
            })
        })
        .collect();
    let progress = Arc::new(AtomicUsize::new(0));
    let sent = Arc::clone(&progress);
    let sending = thread::spawn(move || {
        for i in 0..FRAMES {
            let mut text = format!("m{i} ");
            text.extend(std::iter::repeat('x').take(SIZE - text.len()));
            sender.say("sender", &text);
            sent.store(i + 1, Ordering::SeqCst);
        }
        sender
    });

    // Half-way through, nobody's queue is over the limit.
    eventually(LONG, "half the frames sent", || {
        (progress.load(Ordering::SeqCst) >= FRAMES / 2).then_some(())
    });
    for (conn, queued) in connection_table(&mut server) {
        assert!(queued <= BACKLOG, "{conn} has {queued} B queued");
    }

    let _sender = sending.join().unwrap();
    for reader in readers {
        reader.join().expect("every reader got every frame");
    }
    let line = server.wait_line("slow reader", LONG);
    assert!(
        line.contains(&sleeper.local_addr().to_string()),
        "the wrong client was disconnected: {line}"
    );
    sleeper.expect_closed(LONG);
    let peak = peak_rss_kib(server.pid());
    assert!(
        peak < baseline + 6 * 1024,
        "peak RSS {peak} KiB, {baseline} KiB before 20 MB went through"
    );
}

#[test]
fn drop_oldest_keeps_a_slow_client_and_tells_it_what_it_missed() {
    const FRAMES: usize = 3000; // 3000 × 4,000 B = 12 MB
    const SIZE: usize = 4000;
    let (mut server, addr) = chat_server(&[
        "--on-backlog",
        "drop-oldest",
        "--max-backlog",
        "64K",
        "--max-frame",
        "8192",
    ]);
    let mut slow = Peer::connect_small_rcvbuf(addr);
    let mut reader = Peer::connect(addr);
    let mut sender = Peer::connect(addr);
    wait_clients(&mut server, 3);
    // The room's notices about who came in are read before the flood.
    sender.say("sender", "hello");
    for peer in [&mut slow, &mut reader] {
        assert_eq!(peer.recv_chat().1, "hello");
    }
    let baseline = rss_kib(server.pid());

    let reading = thread::spawn(move || {
        let mut reader = reader;
        for i in 0..FRAMES {
            assert_eq!(
                number(&reader.recv_chat().1),
                i,
                "the fast reader lost frames"
            );
        }
        reader
    });
    let mut text = String::new();
    for i in 0..FRAMES {
        text.clear();
        text.push_str(&format!("m{i} "));
        text.extend(std::iter::repeat('x').take(SIZE - text.len()));
        sender.say("sender", &text);
    }
    let mut reader = reading.join().unwrap();
    server.wait_line("frame(s) dropped (drop-oldest)", LONG);
    let peak = peak_rss_kib(server.pid());
    assert!(
        peak < baseline + 4 * 1024,
        "peak RSS {peak} KiB, {baseline} KiB before 12 MB went through"
    );

    // Now the slow client reads: some frames in order, and notices whose
    // running total makes up for the rest. The last notice is sent when its queue
    // has drained, so it may come after "last": read on to "after".
    sender.say("sender", "m999999 last");
    assert_eq!(number(&reader.recv_chat().1), 999_999);
    let (mut received, mut missed, mut notices) = (0, 0, 0);
    let mut previous = None;
    loop {
        let message = slow.recv();
        let parsed = chat_msg::parse(&message).expect("a chat message");
        if parsed.sender == "server" {
            let total: usize = parsed
                .text
                .strip_prefix("you have missed ")
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a notice: {message:?}"));
            assert!(total > missed, "totals go up: {total} after {missed}");
            missed = total;
            notices += 1;
            continue;
        }
        match number(parsed.text) {
            999_999 => sender.say("sender", "m1000000 after"),
            1_000_000 => break,
            n => {
                assert!(
                    previous.map_or(true, |p| n > p),
                    "out of order: {n} after {previous:?}"
                );
                previous = Some(n);
                received += 1;
            }
        }
    }
    assert!(notices >= 1, "no notice of missed frames");
    assert!(
        received < FRAMES,
        "nothing was dropped; the test measured nothing"
    );
    // A notice that was itself dropped counts as a missed message in the
    // next one's total; there are only a few notices.
    assert!(
        received + missed >= FRAMES && received + missed <= FRAMES + 3,
        "received {received} + missed {missed} (after {notices} notice(s)) do not account for {FRAMES} frames"
    );
    // Still connected, and served like anyone else.
    assert_eq!(number(&reader.recv_chat().1), 1_000_000);
    assert!(!server
        .drain_lines()
        .iter()
        .any(|l| l.contains("disconnected")));
}

#[test]
fn a_frame_for_a_hundred_clients_is_stored_once() {
    const CLIENTS: usize = 100;
    let (mut server, addr) = chat_server(&[]);
    let mut readers: Vec<Peer> = (0..CLIENTS)
        .map(|_| Peer::connect_small_rcvbuf(addr))
        .collect();
    let mut sender = Peer::connect(addr);
    wait_clients(&mut server, CLIENTS + 1);
    let before = rss_kib(server.pid());

    let mut big = "m0 ".to_string();
    big.extend(std::iter::repeat('y').take(60_000 - big.len()));
    sender.say("sender", &big);
    for reader in &mut readers {
        assert_eq!(reader.recv_chat().1, big);
    }
    // The peak, not the current size: a copy per recipient would have
    // existed, all at once, between the read and the end of the turn.
    let grown = peak_rss_kib(server.pid()).saturating_sub(before);
    assert!(
        grown < 1536,
        "peak RSS grew by {grown} KiB (100 copies of the frame would be 5,860 KiB)"
    );
}

#[test]
fn a_connection_flood_beyond_the_open_file_limit_neither_crashes_nor_spins() {
    const FLOOD: usize = 300;
    let (mut server, addr) = chat_server_with(&[], |cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child yet.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let pid = server.pid();
    let cpu_before = cpu_seconds(pid);
    let flood: Vec<TcpStream> = (0..FLOOD).map(|_| support::connect(addr)).collect();
    wait_count(&mut server, "out of file descriptors", 1);
    // Held open for a second: the server must be asleep, not spinning.
    thread::sleep(Duration::from_secs(1));
    let cpu = cpu_seconds(pid) - cpu_before;
    assert!(
        cpu < 0.5,
        "the server used {cpu:.2} s of CPU over the flood"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );

    // A refused client was told, in a frame it can read, and closed.
    let mut last = flood.last().unwrap().try_clone().unwrap();
    let mut refusal = Vec::new();
    if let Err(e) = last.read_to_end(&mut refusal) {
        panic!(
            "reading the refusal: {e}; got {refusal:?}; server: {:?}",
            server.drain_lines()
        );
    }
    let text = String::from_utf8_lossy(&refusal[2..]);
    assert_eq!(
        usize::from(refusal[0]) << 8 | usize::from(refusal[1]),
        text.len()
    );
    assert!(
        text.ends_with("the server is full; try again later"),
        "{text}"
    );

    drop(flood);
    let (mut a, mut b) = eventually(LONG, "two clients served after the flood", || {
        // Either the join arrives or, while descriptors are still short, a
        // refusal and the end of the stream: both come without waiting.
        let mut a = Peer::connect(addr);
        let mut b = Peer::connect(addr);
        b.say("b", "hello?");
        // A hears of b as it comes in, then by name; if b was the one
        // refused, a hears nothing of it: try again.
        a.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        loop {
            match a.try_next()? {
                Got::Frame(text) if text.ends_with(" is b") => {
                    a.reader.get_ref().set_read_timeout(Some(LONG)).unwrap();
                    return Some((a, b));
                }
                Got::Frame(_) => continue,
                _ => return None,
            }
        }
    });
    assert_eq!(a.recv_chat().1, "hello?");
    a.say("a", "served");
    assert_eq!(b.recv_chat(), ("a".to_string(), "served".to_string()));
}

#[test]
fn max_conns_refuses_extra_clients_with_a_framed_notice() {
    let (mut server, addr) = chat_server(&["--max-conns", "2"]);
    let _a = Peer::connect(addr);
    let _b = Peer::connect(addr);
    wait_clients(&mut server, 2);
    let mut extra = Peer::connect(addr);
    let notice = extra.recv();
    assert!(
        notice.ends_with("the server is full; try again later"),
        "{notice}"
    );
    extra.expect_closed(LONG);
    server.wait_line("--max-conns", LONG);
}

#[test]
fn idle_clients_are_closed_and_talkative_ones_kept() {
    let (mut server, addr) = chat_server(&["--idle-timeout", "3"]);
    let mut silent = Peer::connect(addr);
    let mut talker = Peer::connect(addr);
    let mut listener_of_talk = Peer::connect(addr);
    wait_clients(&mut server, 3);
    // The talkers speak in turn, each message waiting for the last to be
    // relayed, until the server closes the silent one. Only a test stalled
    // for the whole three seconds could make a talker look idle.
    let silent_addr = silent.local_addr().to_string();
    let mut i = 0;
    loop {
        talker.say("talker", &format!("m{i}"));
        assert_eq!(
            listener_of_talk.recv_chat(),
            ("talker".to_string(), format!("m{i}"))
        );
        listener_of_talk.say("listener", &format!("m{i}"));
        assert_eq!(
            talker.recv_chat(),
            ("listener".to_string(), format!("m{i}"))
        );
        i += 1;
        if server
            .drain_lines()
            .iter()
            .any(|l| l.contains("idle timeout") && l.contains(&silent_addr))
        {
            break;
        }
        assert!(i < 100_000, "the silent client was never closed");
        thread::sleep(Duration::from_millis(20));
    }
    silent.expect_closed(LONG);
    talker.say("talker", "m999 still here");
    loop {
        let (who, text) = listener_of_talk.recv_chat();
        if who == "talker" && text == "m999 still here" {
            break;
        }
    }
    assert!(
        !server
            .drain_lines()
            .iter()
            .any(|l| l.contains("idle timeout") && !l.contains(&silent_addr)),
        "a talker was closed as idle"
    );
}

// ----- Shutdown and the local user -------------------------------------------------

#[test]
fn sigterm_flushes_closes_and_exits_zero_within_the_grace() {
    let (mut server, addr) = chat_server(&["--max-backlog", "8M"]);
    let mut reader = Peer::connect(addr);
    let stuck = Peer::connect_small_rcvbuf(addr); // never reads
    let stuck_addr = stuck.local_addr().to_string();
    let mut sender = Peer::connect(addr);
    wait_clients(&mut server, 3);
    // Send until the kernel holds no more for the stuck client and the
    // server has to keep some of it (well under the backlog).
    let mut sent = 0;
    loop {
        for _ in 0..10 {
            sender.say("sender", &format!("m{sent} {}", "z".repeat(60_000)));
            sent += 1;
        }
        for _ in 0..10 {
            reader.recv_chat();
        }
        let table = connection_table(&mut server);
        if table
            .iter()
            .any(|(peer, queued)| *peer == stuck_addr && *queued > 0)
        {
            break;
        }
        assert!(
            sent < 120,
            "the kernel took 7 MB for a client that never reads?"
        );
    }
    // The grace is the server's own 2 s, which its log line states; the
    // deadline here only bounds a hang.
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(LONG);
    assert!(status.success(), "{status:?}");
    server.wait_line("did not take their output within 2s", LONG);
    // The reader, flushed in time, got the closing frame and the end of the stream.
    assert_eq!(reader.next(), Got::CloseFrame);
    assert_eq!(reader.next(), Got::Eof);
}

#[test]
fn the_servers_own_user_asks_for_a_name_speaks_and_ends_the_chat_at_eof() {
    let mut cmd = sockloop(&["chat", "server", "--bind", "127.0.0.1", "--port", "0"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut server = Proc::start(cmd);
    let addr = server.listening_addr();
    server.wait_line(chat_msg::NAME_PROMPT, LONG);
    let mut out = Lines::of(&mut server.child);
    let mut stdin = server.stdin();
    // Sockets are served while the name is awaited.
    let mut ann = Peer::connect(addr);
    let mut bob = Peer::connect(addr);
    wait_clients(&mut server, 2);
    ann.say("Ann", "before the host has a name");
    assert_eq!(bob.recv_chat().1, "before the host has a name");
    out.wait("before the host has a name");

    stdin.write_all(b"Host\n\nwelcome\n").unwrap();
    for peer in [&mut ann, &mut bob] {
        assert_eq!(
            peer.recv_chat(),
            ("Host".to_string(), "welcome".to_string())
        );
    }
    drop(stdin);
    for peer in [&mut ann, &mut bob] {
        assert_eq!(
            peer.recv_chat(),
            ("Host".to_string(), chat_msg::LEAVE_TEXT.to_string())
        );
        assert_eq!(peer.next(), Got::CloseFrame);
    }
    assert!(server.wait_exit(LONG).success());
}

// ----- The sockloop chat client -------------------------------------------------------

/// `sockloop chat client ADDR --name NAME`, stdin and stdout piped.
fn chat_client(addr: SocketAddr, name: &str) -> (Proc, Lines) {
    let addr = addr.to_string();
    let mut cmd = sockloop(&["chat", "client", &addr, "--name", name]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut client = Proc::start(cmd);
    let lines = Lines::of(&mut client.child);
    client.wait_line("connected to", LONG);
    (client, lines)
}

#[test]
fn the_chat_client_sends_lines_leaves_cleanly_and_exits_zero() {
    let (mut server, addr) = chat_server(&[]);
    let mut peer = Peer::connect(addr);
    let (mut client, mut out) = chat_client(addr, "Cli");
    wait_clients(&mut server, 2);
    let mut stdin = client.stdin();
    stdin
        .write_all(b"first line\n\n<LEAVES THE CHAT>\nsecond line\nno newline")
        .unwrap();
    assert_eq!(
        peer.recv_chat(),
        ("Cli".to_string(), "first line".to_string())
    );
    // The empty line and the bare leave text were not sent.
    assert_eq!(
        peer.recv_chat(),
        ("Cli".to_string(), "second line".to_string())
    );
    client.wait_line("is what leaving sends", LONG);
    peer.say("Peer", "hello, Cli");
    out.wait("hello, Cli");
    drop(stdin);
    assert_eq!(
        peer.recv_chat(),
        ("Cli".to_string(), "no newline".to_string())
    );
    // Its leaving is announced once, by the server.
    assert_eq!(
        chat_msg::parse(&peer.recv()).map(|m| (m.sender.to_string(), m.text.to_string())),
        Some(("server".to_string(), "Cli left the chat".to_string()))
    );
    assert!(client.wait_exit(LONG).success());
    server.wait_line("Cli (127.0.0.1:", LONG);
}

#[test]
fn the_chat_client_says_when_the_server_goes_and_exits_zero() {
    let (mut server, addr) = chat_server(&[]);
    let (mut client, _out) = chat_client(addr, "Cli");
    let _stdin = client.stdin();
    wait_clients(&mut server, 1);
    server.signal(libc::SIGINT);
    assert!(server.wait_exit(LONG).success());
    client.wait_line("the server closed", LONG);
    assert!(client.wait_exit(LONG).success());
}

#[test]
fn mistakes_exit_2_or_1_with_one_line() {
    let (_held, nobody) = support::refusing_addr();
    let nobody = nobody.to_string();
    let cannot = format!("cannot connect to {nobody}");
    for (args, code, says) in [
        (
            vec!["chat", "server", "--max-frame", "70000"],
            2,
            "does not fit a 2-byte length prefix",
        ),
        (
            vec!["chat", "server", "--max-backlog", "1K"],
            2,
            "--max-backlog 1024 is too small",
        ),
        (
            vec!["chat", "server", "--name", "x", "--relay-only"],
            2,
            "cannot be used with",
        ),
        (vec!["chat", "client", &nobody, "--name", "x"], 1, &cannot),
    ] {
        let output = sockloop(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

// ----- Wire compatibility with the course's Python -------------------------------------

#[test]
fn a_python_client_and_a_sockloop_client_chat_through_the_server() {
    if Command::new("python3").arg("--version").output().is_err() {
        panic!("python3 is not on PATH: install it (scripts/test does) to run the Python compatibility test");
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/chat_client.py");
    let (mut server, addr) = chat_server_with(&[], |cmd| {
        cmd.stdout(Stdio::piped());
    });
    let mut server_out = Lines::of(&mut server.child);

    let mut python = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(addr.port().to_string())
        .arg("Py Thon")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the python client");
    let mut python_out = Lines::of(&mut python);
    let mut python_in = python.stdin.take().unwrap();
    wait_clients(&mut server, 1);
    let (mut rust, mut rust_out) = chat_client(addr, "Rusty");
    let mut rust_in = rust.stdin();
    wait_clients(&mut server, 2);

    python_in
        .write_all("hello from python ✓\n".as_bytes())
        .unwrap();
    python_in.flush().unwrap();
    rust_out.wait("] Py Thon:");
    rust_out.wait("\thello from python ✓");
    rust_in.write_all(b"hello from rust\n").unwrap();
    python_out.wait("] Rusty:");
    python_out.wait("\thello from rust");
    server_out.wait("\thello from python ✓");
    server_out.wait("\thello from rust");

    drop(python_in);
    rust_out.wait("Py Thon left the chat");
    let status = wait_child(&mut python, LONG);
    assert!(status.success(), "python client: {status:?}");
    drop(rust_in);
    assert!(rust.wait_exit(LONG).success());
}

fn wait_child(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("child did not exit within {within:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}
