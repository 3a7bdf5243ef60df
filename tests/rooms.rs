// One chat room for everyone: the chat server's TLS, access control and rate
// limit, its plain-text door (`--line-port`) and its UDP door (`--udp-port`),
// end to end against the real `sockloop` binary on 127.0.0.1, port 0.
//
// Covered: two `sockloop chat client --tls` processes chatting through a TLS
// server whose certificate comes from `sockloop tls-selfsigned`; a raw line
// client (what `nc` does) and a framed client talking both ways, and an
// over-long line closing only its own client; a `sockloop udp-chat` peer, a
// framed client and a line client in one room; UDP peers leaving by silence
// and by vanishing (ICMP port unreachable); `--deny` refusing one source
// address while another is served; and `--rate-limit` slowing one client to
// its rate while another's messages flow.
//
// Every wait has a deadline: socket reads and writes time out, and process
// and log waits go through `support`'s helpers. Nothing sleeps to synchronise.

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sockloop::chat_msg;
use support::{chat_server_with, connect_from, last_word_addr, sockloop, OutLines, Proc};

const LONG: Duration = Duration::from_secs(20);

// ----- The server and its doors ---------------------------------------------------

/// Where a running chat server can be reached.
struct Doors {
    tcp: SocketAddr,
    line: Option<SocketAddr>,
    udp: Option<SocketAddr>,
}

/// `sockloop chat server --relay-only` on 127.0.0.1 with `extra` options;
/// stdout (the relayed messages) is discarded.
fn room_server(extra: &[&str]) -> (Proc, Doors) {
    let (mut server, tcp) = chat_server_with(extra, |_| {});
    let line = extra
        .contains(&"--line-port")
        .then(|| last_word_addr(&server.wait_line("line door listening on", LONG)));
    let udp = extra
        .contains(&"--udp-port")
        .then(|| last_word_addr(&server.wait_line("udp door listening on", LONG)));
    (server, Doors { tcp, line, udp })
}

/// A fresh, empty directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "sockloop-rooms-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- A framed client on a blocking socket ----------------------------------------

/// A chat participant speaking raw 2-byte-prefixed frames, with a deadline on every read.
struct Framed {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Framed {
    fn connect(addr: SocketAddr) -> Framed {
        Framed::over(support::connect(addr))
    }

    fn over(stream: TcpStream) -> Framed {
        stream.set_nodelay(true).unwrap();
        Framed {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, text: &str) {
        let mut bytes = (text.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        self.writer
            .write_all(&bytes)
            .expect("write within the timeout");
    }

    /// Sends `[now] NAME:\n\tTEXT`.
    fn say(&mut self, name: &str, text: &str) {
        self.send(&chat_msg::format_now(name, text));
    }

    /// The next message's text; `None` at the close frame or the end of the stream.
    fn next(&mut self) -> Option<String> {
        let mut prefix = [0u8; 2];
        match self.reader.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return None,
            Err(e) => panic!("framed client: reading: {e}"),
        }
        let len = u16::from_be_bytes(prefix) as usize;
        if len == 0 {
            return None;
        }
        let mut payload = vec![0; len];
        self.reader
            .read_exact(&mut payload)
            .expect("a whole frame within the timeout");
        Some(String::from_utf8(payload).expect("utf-8 from the server"))
    }

    /// Reads messages until the server says who `name` is (an address first
    /// announced when it came in).
    fn wait_named(&mut self, name: &str) {
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            let Some(message) = self.next() else { break };
            if chat_msg::parse(&message)
                .is_some_and(|m| m.sender == "server" && m.text.ends_with(&format!(" is {name}")))
            {
                return;
            }
        }
        panic!("framed client: {name} was never named");
    }

    /// Reads messages until one from `sender` says `text`; returns the whole message.
    fn wait_for(&mut self, sender: &str, text: &str) -> String {
        let deadline = Instant::now() + LONG;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Some(message) = self.next() else { break };
            if chat_msg::parse(&message).is_some_and(|m| m.sender == sender && m.text == text) {
                return message;
            }
            seen.push(message);
        }
        panic!("framed client: no message from {sender:?} saying {text:?}; saw {seen:?}");
    }
}

// ----- A line client (what nc does) --------------------------------------------------

/// A client of the plain-text door: raw lines, a deadline on every read.
struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    /// Connects and reads the name prompt.
    fn connect(addr: SocketAddr) -> LineClient {
        let stream = support::connect(addr);
        let mut client = LineClient {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        };
        assert_eq!(client.line().as_deref(), Some(chat_msg::NAME_PROMPT));
        client
    }

    /// Connects and gives its name.
    fn join(addr: SocketAddr, name: &str) -> LineClient {
        let mut client = LineClient::connect(addr);
        client.send(&format!("{name}\n"));
        client
    }

    fn send(&mut self, bytes: &str) {
        self.writer
            .write_all(bytes.as_bytes())
            .expect("write within the timeout");
    }

    /// The next line without its newline; `None` at the end of the stream.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                assert!(line.ends_with('\n'), "a line ends with a newline: {line:?}");
                line.pop();
                Some(line)
            }
            Err(e) if is_gone(&e) => None,
            Err(e) => panic!("line client: reading: {e}"),
        }
    }

    /// Reads lines until the two of a message from `sender` saying `text` have come.
    fn wait_for(&mut self, sender: &str, text: &str) {
        let deadline = Instant::now() + LONG;
        let mut seen: Vec<String> = Vec::new();
        while Instant::now() < deadline {
            let Some(line) = self.line() else { break };
            let header = seen
                .last()
                .is_some_and(|l| l.ends_with(&format!("] {sender}:")));
            if header && line == format!("\t{text}") {
                return;
            }
            seen.push(line);
        }
        panic!("line client: no message from {sender:?} saying {text:?}; saw {seen:?}");
    }

    /// Reads until the server closes the connection.
    fn expect_closed(&mut self) {
        let deadline = Instant::now() + LONG;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.reader.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if is_gone(&e) => return,
                Err(e) => panic!("line client: still open: {e}"),
            }
        }
        panic!("line client: still open after {LONG:?}");
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

// ----- A child's stdout, line by line -------------------------------------------------

/// A child's stdout, line by line.
type Stdout = OutLines;

trait WaitFor {
    fn wait_for(&mut self, sender: &str, text: &str) -> String;
}

impl WaitFor for OutLines {
    /// Waits for the two lines of a message from `sender` saying `text`;
    /// returns the message as printed (`[TIMESTAMP] SENDER:\n\tTEXT`).
    fn wait_for(&mut self, sender: &str, text: &str) -> String {
        let deadline = Instant::now() + LONG;
        let mut start = 0;
        loop {
            let found = self.seen[start..].windows(2).position(|pair| {
                pair[0].ends_with(&format!("] {sender}:")) && pair[1] == format!("\t{text}")
            });
            if let Some(i) = found {
                let at = start + i;
                let message = format!("{}\n{}", self.seen[at], self.seen[at + 1]);
                self.seen.drain(..at + 2);
                return message;
            }
            start = self.seen.len().saturating_sub(1);
            if !self.pull(deadline) {
                panic!(
                    "stdout: no message from {sender:?} saying {text:?}; saw {:?}",
                    self.seen
                );
            }
        }
    }
}

/// `sockloop ARGS` with stdin and stdout piped, started.
fn spawn_piped(args: &[&str]) -> (Proc, Stdout) {
    let mut cmd = sockloop(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut proc = Proc::start(cmd);
    let stdout = Stdout::of(&mut proc.child);
    (proc, stdout)
}

// ----- TLS -------------------------------------------------------------------------

#[test]
fn two_chat_clients_exchange_identical_text_over_tls() {
    let dir = TempDir::new("tls");
    let made = sockloop(&["tls-selfsigned", "--out", &dir.0.to_string_lossy()])
        .output()
        .expect("run tls-selfsigned");
    assert!(made.status.success(), "tls-selfsigned failed: {made:?}");
    let (cert, key) = (dir.file("cert.pem"), dir.file("key.pem"));
    let (mut server, doors) = room_server(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(server.seen[0].contains("(TLS)"), "{:?}", server.seen);

    // By name, so every address of localhost is tried and the certificate is checked.
    let addr = format!("localhost:{}", doors.tcp.port());
    let client = |name: &str| {
        spawn_piped(&[
            "chat", "client", &addr, "--name", name, "--tls", "--tls-ca", &cert,
        ])
    };
    let (mut ann, mut ann_out) = client("Ann");
    let (mut bob, mut bob_out) = client("Bob");
    server.wait_line(", 2 clients)", LONG);

    let mut ann_in = ann.stdin();
    let mut bob_in = bob.stdin();
    ann_in
        .write_all("hello over TLS ✓ — Ann\n".as_bytes())
        .unwrap();
    let got = bob_out.wait_for("Ann", "hello over TLS ✓ — Ann");
    bob_in.write_all(b"and back, Bob\n").unwrap();
    ann_out.wait_for("Bob", "and back, Bob");
    // The text Bob printed is exactly what Ann's client stamped and sent: the
    // server relays the frame as it came, and the timestamp parses back.
    let parsed = chat_msg::parse(&got).expect("chat format");
    assert!(chat_msg::parse_timestamp(parsed.timestamp).is_some());

    drop(ann_in);
    // Ann's leaving is announced once, by the server.
    bob_out.wait_for("server", "Ann left the chat");
    assert!(ann.wait_exit(LONG).success());
    drop(bob_in);
    assert!(bob.wait_exit(LONG).success());
}

// ----- The plain-text door --------------------------------------------------------------

#[test]
fn a_line_client_and_a_framed_client_chat_both_ways_and_a_long_line_closes_only_its_client() {
    let (mut server, doors) = room_server(&["--line-port", "0", "--max-frame", "200"]);
    let line_door = doors.line.expect("line door");
    let mut fred = Framed::connect(doors.tcp);
    fred.say("Fred", "first, before anyone");
    server.wait_line("is Fred", LONG);

    let mut lina = LineClient::connect(line_door);
    // An empty line is not a name: the prompt comes again.
    lina.send("\n");
    assert_eq!(lina.line().as_deref(), Some(chat_msg::NAME_PROMPT));
    lina.send("  Lina  \r\n");
    fred.wait_named("Lina");

    lina.send("hello from a line ✓\r\n");
    let message = fred.wait_for("Lina", "hello from a line ✓");
    assert!(chat_msg::parse_timestamp(chat_msg::parse(&message).unwrap().timestamp).is_some());
    fred.say("Fred", "hi Lina");
    lina.wait_for("Fred", "hi Lina");

    // A second line client sends a line over --max-frame: it alone is closed.
    let mut long = LineClient::join(line_door, "Long");
    fred.wait_named("Long");
    long.send(&format!("{}\n", "x".repeat(500)));
    long.expect_closed();
    server.wait_line("protocol error", LONG);
    fred.wait_for("server", "Long was disconnected: protocol error");
    lina.send("still here\n");
    fred.wait_for("Lina", "still here");
    fred.say("Fred", "me too");
    lina.wait_for("Fred", "me too");

    // End of stream: the last line counts even without a newline, then Lina leaves.
    lina.send("bye without newline");
    lina.writer.shutdown(std::net::Shutdown::Write).unwrap();
    fred.wait_for("Lina", "bye without newline");
    fred.wait_for("server", "Lina left the chat");
    lina.expect_closed();
}

// ----- One room for datagrams and streams --------------------------------------------------

#[test]
fn a_udp_chat_peer_a_framed_client_and_a_line_client_share_one_room() {
    let (mut server, doors) = room_server(&["--line-port", "0", "--udp-port", "0"]);
    let mut fred = Framed::connect(doors.tcp);
    fred.say("Fred", "anyone?");
    server.wait_line("is Fred", LONG);
    let mut lina = LineClient::join(doors.line.expect("line door"), "Lina");
    fred.wait_named("Lina");

    let udp_door = doors.udp.expect("udp door").to_string();
    let (mut uma, mut uma_out) = spawn_piped(&[
        "udp-chat",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--name",
        "Uma",
        &udp_door,
    ]);
    uma.wait_line("udp-chat listening on", LONG);
    let mut uma_in = uma.stdin();

    // The UDP peer joins by speaking; the TCP clients hear it. Its udp-chat
    // answers the server's challenge by itself, so it hears the room too.
    uma_in.write_all(b"hello from UDP\n").unwrap();
    fred.wait_for("Uma", "hello from UDP");
    lina.wait_for("Uma", "hello from UDP");
    server.wait_line("udp peer 127.0.0.1:", LONG);
    server.wait_line("proved its address", LONG);

    // The framed client and the line client reach the UDP peer and each other.
    fred.say("Fred", "hello from a frame");
    uma_out.wait_for("Fred", "hello from a frame");
    lina.wait_for("Fred", "hello from a frame");
    lina.send("hello from a line\n");
    uma_out.wait_for("Lina", "hello from a line");
    fred.wait_for("Lina", "hello from a line");

    // The UDP peer leaves with the leave text: everyone hears it once, from
    // the server, and it hears no more.
    drop(uma_in);
    fred.wait_for("server", "Uma left the chat");
    lina.wait_for("server", "Uma left the chat");
    assert!(uma.wait_exit(LONG).success());
    server.wait_line("Uma (udp 127.0.0.1:", LONG);
}

#[test]
fn udp_peers_leave_by_silence_and_by_vanishing() {
    let (mut server, doors) = room_server(&["--udp-port", "0", "--udp-peer-timeout", "1"]);
    let udp_door = doors.udp.expect("udp door");
    let mut fred = Framed::connect(doors.tcp);
    fred.say("Fred", "here");
    server.wait_line("is Fred", LONG);

    // Quiet speaks once and then says nothing: after the timeout it is out.
    let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hello = chat_msg::format_now("Quiet", "one word");
    quiet.send_to(hello.as_bytes(), udp_door).unwrap();
    fred.wait_for("Quiet", "one word");
    let started = Instant::now();
    fred.wait_for("server", "Quiet left the chat (silent for 1 s)");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Ghost speaks and proves its address (as udp-chat does by itself: the
    // room is sent only three times what an unproven address sent), then its
    // socket closes without a word: the next room message to it comes back
    // as ICMP "port unreachable", and it is out.
    let ghost = UdpSocket::bind("127.0.0.1:0").unwrap();
    ghost
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ghost
        .send_to(chat_msg::format_now("Ghost", "boo").as_bytes(), udp_door)
        .unwrap();
    fred.wait_for("Ghost", "boo");
    let mut buf = vec![0u8; 65_536];
    let (n, _) = ghost.recv_from(&mut buf).expect("a challenge");
    let challenge = String::from_utf8_lossy(&buf[..n]).into_owned();
    let token = chat_msg::parse(&challenge)
        .and_then(|m| sockloop::routability::parse_challenge(m.text))
        .expect("a token");
    let answer = chat_msg::format_now("Ghost", &sockloop::routability::answer_text(token));
    ghost.send_to(answer.as_bytes(), udp_door).unwrap();
    server.wait_line("proved its address", LONG);
    drop(ghost);
    fred.say("Fred", "is anyone there?");
    fred.wait_for(
        "server",
        "Ghost left the chat (unreachable: nothing listens on its port)",
    );
}

// ----- Access control and rate limits ---------------------------------------------------------

/// A framed client connected from a chosen loopback source address.
fn framed_from(source: &str, addr: SocketAddr) -> Framed {
    Framed::over(connect_from(source, addr))
}

#[test]
fn a_denied_address_is_refused_while_another_chats() {
    let (mut server, doors) = room_server(&["--deny", "127.0.0.2/32"]);
    let mut denied = framed_from("127.0.0.2", doors.tcp);
    denied.say("Mallory", "let me in");
    assert_eq!(denied.next(), None, "a denied client is closed unserved");
    server.wait_line("refused 127.0.0.2:", LONG);

    let mut ann = framed_from("127.0.0.1", doors.tcp);
    let mut bob = framed_from("127.0.0.1", doors.tcp);
    server.wait_line(", 2 clients)", LONG);
    ann.say("Ann", "served");
    bob.wait_for("Ann", "served");
}

#[test]
fn a_client_over_its_rate_is_slowed_to_it_while_another_client_flows() {
    const RATE: usize = 10;
    const WINDOW: Duration = Duration::from_secs(3);
    let rate = format!("{RATE}/s");
    let (mut server, doors) = room_server(&["--rate-limit", &rate]);
    let mut reader = Framed::connect(doors.tcp);
    let mut fast = Framed::connect(doors.tcp);
    let mut ann = Framed::connect(doors.tcp);
    server.wait_line(", 3 clients)", LONG);

    // Fast sends 300 messages at once, far over its rate; Ann sends a few,
    // within hers, right after.
    let burst: Vec<u8> = (0..300)
        .flat_map(|i| {
            let text = chat_msg::format_now("Fast", &format!("m{i}"));
            let mut frame = (text.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(text.as_bytes());
            frame
        })
        .collect();
    let started = Instant::now();
    fast.writer.write_all(&burst).unwrap();
    for i in 0..5 {
        ann.say("Ann", &format!("a{i}"));
    }

    // Count what reaches the reader within the window.
    reader
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut from_fast, mut ann_last) = (Vec::new(), None);
    let mut n_ann = 0;
    while started.elapsed() < WINDOW {
        let mut prefix = [0u8; 2];
        match reader.reader.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => panic!("reader: {e}"),
        }
        let mut payload = vec![0; u16::from_be_bytes(prefix) as usize];
        reader
            .reader
            .get_ref()
            .set_read_timeout(Some(LONG))
            .unwrap();
        reader.reader.read_exact(&mut payload).unwrap();
        reader
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let text = String::from_utf8(payload).unwrap();
        let parsed = chat_msg::parse(&text).expect("chat format");
        match parsed.sender {
            "Fast" => from_fast.push(parsed.text.to_string()),
            "Ann" => {
                assert_eq!(parsed.text, format!("a{n_ann}"));
                n_ann += 1;
                ann_last = Some(started.elapsed());
            }
            _ => {}
        }
    }
    // In order, none lost so far, and no more than a full bucket plus the
    // rate over the window (with a little room for timing).
    let expected: Vec<String> = (0..from_fast.len()).map(|i| format!("m{i}")).collect();
    assert_eq!(from_fast, expected);
    let most = RATE + RATE * WINDOW.as_secs() as usize + 3;
    let least = RATE * WINDOW.as_secs() as usize - 5;
    assert!(
        (least..=most).contains(&from_fast.len()),
        "{} of Fast's messages in {WINDOW:?}: expected {least}..={most} at {RATE}/s",
        from_fast.len()
    );
    // Ann was not held up behind Fast.
    assert_eq!(n_ann, 5, "Ann's messages did not all arrive");
    let ann_last = ann_last.unwrap();
    assert!(
        ann_last < Duration::from_secs(1),
        "Ann's messages took {ann_last:?}"
    );
    // Fast is slowed, not disconnected: its next messages are still coming.
    assert!(fast.writer.peer_addr().is_ok());
    reader
        .reader
        .get_ref()
        .set_read_timeout(Some(LONG))
        .unwrap();
    reader.wait_for("Fast", &format!("m{}", from_fast.len()));
}

#[test]
fn a_line_client_turned_away_when_full_reads_plain_text() {
    let (mut server, doors) = room_server(&["--line-port", "0", "--max-conns", "1"]);
    let mut first = Framed::connect(doors.tcp);
    first.say("Ann", "here first");
    server.wait_line("is Ann", LONG);
    let line = doors.line.expect("line door");
    // The second client, at the line door, is over --max-conns: it reads one
    // plain line, with no length prefix in front, and the connection ends.
    let stream = support::connect(line);
    let mut reader = BufReader::new(stream);
    let mut text = String::new();
    reader.read_line(&mut text).expect("the notice");
    assert_eq!(text, "server full, try again later\n");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "more after the notice: {rest:?}");
}

#[test]
fn sigusr1_lists_the_udp_peers_too() {
    let (mut server, doors) = room_server(&["--udp-port", "0"]);
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP peer");
    let message = chat_msg::format_now("Uma", "hello from udp");
    peer.send_to(message.as_bytes(), doors.udp.expect("udp door"))
        .expect("send");
    server.wait_line("Uma joined the chat (udp", LONG);
    let before = server.drain_lines().len();
    server.signal(libc::SIGUSR1);
    server.wait_line_after(before, "udp door: 1 peer(s)", LONG);
    let row = server.wait_line_after(before, "Uma", LONG);
    assert!(
        row.contains(&peer.local_addr().unwrap().to_string()),
        "row without the peer's address: {row}"
    );
}
