// The chat's web door (`--web-port`), end to end against the real `sockloop`
// binary on 127.0.0.1, port 0: browsers' WebSockets in the same room as
// framed, line and UDP members.
//
// Covered: the page, its script and style served from the binary (and
// nothing loaded from elsewhere); the WebSocket handshake and its Origin
// check; web, framed, line and UDP members exchanging messages both ways;
// an unmasked frame, invalid UTF-8 and a huge frame header each closing only
// their own socket, with the right close code; a fragmented message (with a
// ping between its fragments) arriving whole; the close handshake; keepalive
// pings, and a client that never answers them being closed; a connection
// that never finishes its request closed at its deadline, and one still
// speaking HTTP hearing nothing of the room; the close frame at shutdown;
// the room's rules (--deny, --max-conns-per-ip, --rate-limit, the backlog)
// at the web door; wss over TLS; and 1,000 web clients in one room.
//
// The WebSocket client is tungstenite (an implementation independent of the
// server's codec); the hostile frames are written byte by byte. Every wait
// has a deadline: sockets time out, process and log waits go through
// `support`'s helpers. Nothing sleeps to synchronise.

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockloop::{chat_msg, routability};
use support::{chat_server_with, connect_from, last_word_addr, sockloop, Proc};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const LONG: Duration = Duration::from_secs(20);

// ----- The server and its doors ----------------------------------------------------

/// Where a running chat server can be reached.
struct Doors {
    tcp: SocketAddr,
    web: SocketAddr,
    line: Option<SocketAddr>,
    udp: Option<SocketAddr>,
}

/// `sockloop chat server --relay-only --web-port 0` on 127.0.0.1 with `extra` options.
fn web_server(extra: &[&str]) -> (Proc, Doors) {
    let mut args = vec!["--web-port", "0"];
    args.extend_from_slice(extra);
    let (mut server, tcp) = chat_server_with(&args, |_| {});
    let line = extra
        .contains(&"--line-port")
        .then(|| last_word_addr(&server.wait_line("line door listening on", LONG)));
    let udp = extra
        .contains(&"--udp-port")
        .then(|| last_word_addr(&server.wait_line("udp door listening on", LONG)));
    let web = last_word_addr(&server.wait_line("web door", LONG));
    (
        server,
        Doors {
            tcp,
            web,
            line,
            udp,
        },
    )
}

// ----- A WebSocket client (tungstenite) ----------------------------------------------

type Ws = WebSocket<TcpStream>;

/// Opens `ws://ADDR/ws` with tungstenite over a socket with deadlines.
fn web_client(addr: SocketAddr) -> Ws {
    web_client_over(support::connect(addr), addr, None)
        .unwrap_or_else(|e| panic!("WebSocket handshake with {addr}: {e}"))
}

/// The handshake over `stream`, with an `Origin` header if given.
fn web_client_over(
    stream: TcpStream,
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    tungstenite::client(request, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// The next text message (pings are answered by tungstenite on the way).
fn next_text<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
    loop {
        match ws.read().expect("a message within the deadline") {
            Message::Text(text) => return text.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads text messages until one contains `needle`.
fn wait_text<S: Read + Write>(ws: &mut WebSocket<S>, needle: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let text = next_text(ws);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no message containing {needle:?}"
        );
    }
}

fn say<S: Read + Write>(ws: &mut WebSocket<S>, name: &str, text: &str) {
    ws.send(Message::text(chat_msg::format_now(name, text)))
        .expect("send a message");
}

// ----- A framed TCP client -------------------------------------------------------------

/// A framed chat client speaking 2-byte-prefixed frames.
struct Framed(BufReader<TcpStream>, TcpStream);

impl Framed {
    fn connect(addr: SocketAddr) -> Framed {
        let stream = support::connect(addr);
        Framed(BufReader::new(stream.try_clone().unwrap()), stream)
    }

    fn say(&mut self, name: &str, text: &str) {
        let message = chat_msg::format_now(name, text);
        let mut frame = (message.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(message.as_bytes());
        self.1.write_all(&frame).expect("send a frame");
    }

    fn next(&mut self) -> String {
        let mut prefix = [0u8; 2];
        self.0.read_exact(&mut prefix).expect("a frame's prefix");
        let mut payload = vec![0; u16::from_be_bytes(prefix) as usize];
        self.0.read_exact(&mut payload).expect("a frame's payload");
        String::from_utf8(payload).expect("utf-8")
    }

    fn wait(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            let text = self.next();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no frame containing {needle:?}");
        }
    }
}

// ----- Raw WebSocket bytes, for what a polite client never sends ------------------------

/// Opens a TCP connection and does the upgrade by hand; returns the socket
/// just after the `101` answer.
fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = support::connect(addr);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    stream
}

/// Reads an HTTP response head, byte by byte, up to its blank line.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the response head ended early ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).unwrap()
}

/// One client frame, written out by hand: FIN, opcode, the mask bit, the
/// length in its shortest form, the mask key and the masked payload.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(mask_bit | payload.len() as u8);
    } else {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// One server frame: (opcode, payload); `None` at the end of the stream.
fn server_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if is_gone(&e) => return None,
        Err(e) => panic!("reading a frame: {e}"),
    }
    assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).unwrap();
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).unwrap();
    Some((head[0] & 0x0F, payload))
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    )
}

/// Reads server frames until a close frame; returns its status code, and
/// checks that the connection then ends.
fn expect_close(stream: &mut TcpStream) -> u16 {
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no close frame");
        match server_frame(stream) {
            Some((0x8, payload)) => {
                let status = u16::from_be_bytes([payload[0], payload[1]]);
                // After the close frame, the server closes the connection.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
                return status;
            }
            Some(_) => continue,
            None => panic!("the connection ended without a close frame"),
        }
    }
}

/// A plain HTTP GET (or another method); returns (status line, head, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (String, String, Vec<u8>) {
    let mut stream = support::connect(addr);
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("the whole response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, head, response[split + 4..].to_vec())
}

// ----- The page ----------------------------------------------------------------------------

#[test]
fn the_page_its_script_and_style_come_from_the_binary_and_nothing_from_elsewhere() {
    let (_server, doors) = web_server(&[]);
    let (status, head, body) = http(doors.web, "GET", "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("Content-Security-Policy: default-src 'none'"),
        "{head}"
    );
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<script src=\"chat.js\""), "{page}");
    assert!(page.contains("data-max-bytes=\"65535\""));
    for (path, kind) in [("/chat.js", "text/javascript"), ("/chat.css", "text/css")] {
        let (status, head, body) = http(doors.web, "GET", path);
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert!(head.contains(kind), "{head}");
        let text = String::from_utf8(body).unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path}"
        );
        if path == "/chat.js" {
            assert!(text.contains("textContent") && !text.contains("innerHTML"));
        }
    }
    let (status, head, body) = http(doors.web, "HEAD", "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("Content-Length: ") && body.is_empty());
    assert_eq!(
        http(doors.web, "GET", "/nothing").0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        http(doors.web, "POST", "/").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        http(doors.web, "GET", "/ws").0,
        "HTTP/1.1 426 Upgrade Required"
    );
}

#[test]
fn the_max_frame_is_told_to_the_page_and_a_huge_request_head_is_refused() {
    let (_server, doors) = web_server(&["--max-frame", "1000"]);
    let page = String::from_utf8(http(doors.web, "GET", "/").2).unwrap();
    assert!(page.contains("data-max-bytes=\"1000\""));
    let mut stream = support::connect(doors.web);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let _ = stream.write_all(huge.as_bytes());
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[test]
fn a_connection_still_speaking_http_hears_nothing_of_the_room() {
    let (_server, doors) = web_server(&[]);
    let mut waiting = support::connect(doors.web);
    waiting.write_all(b"GET / HT").unwrap(); // half a request line
    let mut witness = web_client(doors.web);
    let mut framed = Framed::connect(doors.tcp);
    framed.say("Fred", "not for page fetchers");
    wait_text(&mut witness, "not for page fetchers");
    waiting.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_head(&mut waiting);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
}

// ----- The handshake -----------------------------------------------------------------------

#[test]
fn only_the_pages_own_origin_and_listed_ones_may_open_the_websocket() {
    let (mut server, doors) = web_server(&["--web-origin", "https://chat.example.org"]);
    let addr = doors.web;
    let own = format!("http://{addr}");
    assert!(web_client_over(support::connect(addr), addr, Some(&own)).is_ok());
    assert!(web_client_over(
        support::connect(addr),
        addr,
        Some("https://chat.example.org")
    )
    .is_ok());
    let refused = web_client_over(support::connect(addr), addr, Some("http://evil.example"));
    assert!(
        refused.unwrap_err().contains("403"),
        "a foreign origin must get 403"
    );
    server.wait_line("origin http://evil.example refused", LONG);
    // A client that sends no Origin is not a browser, and is let in.
    assert!(web_client_over(support::connect(addr), addr, None).is_ok());
}

// ----- Four doors, one room ----------------------------------------------------------------

#[test]
fn web_framed_line_and_udp_members_exchange_messages_both_ways() {
    let (mut server, doors) = web_server(&["--line-port", "0", "--udp-port", "0"]);
    let mut web = web_client(doors.web);
    let mut framed = Framed::connect(doors.tcp);
    let line_stream = support::connect(doors.line.unwrap());
    let mut line_out = line_stream.try_clone().unwrap();
    let mut line_in = BufReader::new(line_stream);
    let mut prompt = String::new();
    line_in.read_line(&mut prompt).unwrap();
    line_out.write_all(b"Lin\n").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(LONG)).unwrap();
    // A UDP peer joins by speaking, and proves its address by echoing the
    // token it is sent (as udp-chat does), so it hears the room in full.
    let hello = chat_msg::format_now("Udo", "here");
    udp.send_to(hello.as_bytes(), doors.udp.unwrap()).unwrap();
    let mut buf = [0u8; 65_536];
    let token = loop {
        let (n, _) = udp.recv_from(&mut buf).expect("a challenge");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(token) =
            chat_msg::parse(&text).and_then(|m| routability::parse_challenge(m.text))
        {
            break token;
        }
    };
    let answer = chat_msg::format_now("Udo", &routability::answer_text(token));
    udp.send_to(answer.as_bytes(), doors.udp.unwrap()).unwrap();
    server.wait_line("udp peer", LONG);
    server.wait_line("proved its address", LONG);
    server.wait_line("is Lin", LONG);
    server.wait_line("connected by the web door", LONG);

    let wait_line = |line_in: &mut BufReader<TcpStream>, needle: &str| {
        let deadline = Instant::now() + LONG;
        loop {
            let mut line = String::new();
            line_in.read_line(&mut line).expect("a line");
            if line.contains(needle) {
                return line;
            }
            assert!(Instant::now() < deadline, "no line containing {needle:?}");
        }
    };
    let wait_datagram = |needle: &str| {
        let mut buf = [0u8; 65_536];
        loop {
            let (n, _) = udp.recv_from(&mut buf).expect("a datagram");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains(needle) {
                return text;
            }
        }
    };

    // From the browser to everyone.
    say(&mut web, "Wendy", "hello from the web");
    let got = framed.wait("hello from the web");
    assert_eq!(chat_msg::parse(&got).unwrap().sender, "Wendy");
    wait_line(&mut line_in, "hello from the web");
    wait_datagram("hello from the web");
    server.wait_line("is Wendy", LONG);

    // From everyone to the browser.
    framed.say("Fred", "from the framed door");
    let got = wait_text(&mut web, "from the framed door");
    let parsed = chat_msg::parse(&got).expect("the chat format");
    assert_eq!(
        (parsed.sender, parsed.text),
        ("Fred", "from the framed door")
    );
    line_out.write_all(b"from the line door\n").unwrap();
    let got = wait_text(&mut web, "from the line door");
    assert_eq!(chat_msg::parse(&got).unwrap().sender, "Lin");
    let datagram = chat_msg::format_now("Udo", "from the udp door");
    udp.send_to(datagram.as_bytes(), doors.udp.unwrap())
        .unwrap();
    assert_eq!(wait_text(&mut web, "from the udp door"), datagram);

    // Two browsers hear each other, never themselves.
    let mut second = web_client(doors.web);
    say(&mut second, "Wes", "browser to browser");
    assert!(wait_text(&mut web, "browser to browser").contains("Wes:\n\t"));
    say(&mut web, "Wendy", "and back");
    assert!(wait_text(&mut second, "and back").contains("Wendy:\n\t"));
}

// ----- Hostile frames close only their own socket ----------------------------------------

#[test]
fn an_unmasked_frame_invalid_utf8_and_a_huge_header_each_close_only_that_socket() {
    let (mut server, doors) = web_server(&[]);
    let mut good = web_client(doors.web);
    let mut framed = Framed::connect(doors.tcp);
    let mut huge_header = vec![0x81, 0xFF];
    huge_header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge_header.extend_from_slice(&[1, 2, 3, 4]);
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "unmasked",
            client_frame(true, 0x1, b"[2024-01-01T00:00:00] Eve:\n\tunmasked", false),
            1002,
        ),
        (
            "invalid utf-8",
            client_frame(true, 0x1, b"bad \xff\xfe bytes", true),
            1007,
        ),
        ("huge header", huge_header, 1009),
    ];
    for (what, bytes, want) in cases {
        let mut bad = raw_websocket(doors.web);
        bad.write_all(&bytes).unwrap();
        assert_eq!(expect_close(&mut bad), want, "{what}");
        // The others go on: both ways.
        say(&mut good, "Gail", &format!("still here after {what}"));
        framed.wait(&format!("still here after {what}"));
        framed.say("Fred", &format!("heard after {what}"));
        wait_text(&mut good, &format!("heard after {what}"));
    }
    // Each was logged, or, within a second of another, counted in the line
    // that sums that second up (closes are logged at most once a second per cause).
    server.wait_line("a client frame that is not masked", LONG);
    support::eventually(LONG, "the other two closes in the log", || {
        let lines = server.drain_lines();
        let own = lines
            .iter()
            .filter(|l| l.contains("not UTF-8") || l.contains("over the 65535-byte maximum"))
            .count();
        let counted: usize = lines
            .iter()
            .filter_map(|l| {
                l.split(" more client(s) were disconnected for a protocol error")
                    .next()
                    .filter(|_| l.contains("more client(s) were disconnected for a protocol error"))
            })
            .filter_map(|head| head.split_whitespace().last()?.parse::<usize>().ok())
            .sum();
        (own + counted >= 2).then_some(())
    });
}

#[test]
fn a_fragmented_message_arrives_whole_and_a_ping_between_its_fragments_is_answered() {
    let (_server, doors) = web_server(&[]);
    let mut framed = Framed::connect(doors.tcp);
    let mut raw = raw_websocket(doors.web);
    let message = chat_msg::format_now("Frag", "one message in three fragments, ünïcödé too");
    let bytes = message.as_bytes();
    let (a, rest) = bytes.split_at(10);
    // Cut inside a multi-byte character on purpose: only the whole must be UTF-8.
    let cut = rest.len() - 5;
    let (b, c) = rest.split_at(cut);
    let mut wire = client_frame(false, 0x1, a, true);
    wire.extend(client_frame(true, 0x9, b"are you there", true));
    wire.extend(client_frame(false, 0x0, b, true));
    wire.extend(client_frame(true, 0x0, c, true));
    // Byte by byte across writes, too: the server must not care how it is split.
    let (first, second) = wire.split_at(7);
    raw.write_all(first).unwrap();
    raw.flush().unwrap();
    raw.write_all(second).unwrap();
    assert_eq!(
        server_frame(&mut raw),
        Some((0xA, b"are you there".to_vec()))
    );
    assert_eq!(framed.wait("three fragments"), message);
}

// ----- Closing, and keeping alive ------------------------------------------------------------

#[test]
fn the_close_handshake_is_answered_and_the_room_hears_the_leave() {
    let (mut server, doors) = web_server(&[]);
    let mut framed = Framed::connect(doors.tcp);
    let mut raw = raw_websocket(doors.web);
    raw.write_all(&client_frame(
        true,
        0x1,
        chat_msg::format_now("Cleo", "hi").as_bytes(),
        true,
    ))
    .unwrap();
    framed.wait(" is Cleo");
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    raw.write_all(&client_frame(true, 0x8, &close, true))
        .unwrap();
    assert_eq!(expect_close(&mut raw), 1000);
    framed.wait("Cleo left the chat");
    server.wait_line("Cleo (127.0.0.1", LONG);
}

#[test]
fn a_silent_web_client_is_pinged_and_closed_when_it_never_answers() {
    let (mut server, doors) = web_server(&["--web-ping", "1"]);
    let mut framed = Framed::connect(doors.tcp);
    // A client that answers (tungstenite replies to pings as it reads) stays.
    let mut polite = web_client(doors.web);
    let polite = std::thread::spawn(move || wait_text(&mut polite, "still with us?"));
    let mut mute = raw_websocket(doors.web);
    mute.write_all(&client_frame(
        true,
        0x1,
        chat_msg::format_now("Mute", "hi").as_bytes(),
        true,
    ))
    .unwrap();
    framed.wait(" is Mute");
    assert_eq!(server_frame(&mut mute), Some((0x9, Vec::new())), "a ping");
    assert_eq!(expect_close(&mut mute), 1008);
    framed.wait("Mute was disconnected: protocol error");
    server.wait_line("no answer to a ping", LONG);
    // The polite one was pinged too, answered, and still hears the room.
    framed.say("Fred", "still with us?");
    assert!(polite.join().unwrap().contains("Fred"));
}

#[test]
fn a_connection_that_never_finishes_its_request_is_closed_at_the_deadline() {
    let (_server, doors) = web_server(&[]);
    let mut slow = support::connect(doors.web);
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(); // and never the blank line
    let mut witness = web_client(doors.web);
    let mut framed = Framed::connect(doors.tcp);
    // The read's own timeout (30 s) is the test's deadline: the server's is 10 s.
    let mut rest = Vec::new();
    let ended = slow.read_to_end(&mut rest);
    assert!(
        ended.is_ok() || ended.as_ref().is_err_and(is_gone),
        "{ended:?}"
    );
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // The room went on meanwhile.
    framed.say("Fred", "still going");
    wait_text(&mut witness, "still going");
}

#[test]
fn at_shutdown_web_members_are_told_the_server_is_going_away() {
    let (mut server, doors) = web_server(&[]);
    let mut raw = raw_websocket(doors.web);
    server.wait_line("connected by the web door", LONG);
    server.signal(libc::SIGTERM);
    assert_eq!(expect_close(&mut raw), 1001);
    assert!(server.wait_exit(LONG).success());
}

// ----- The room's rules at the web door ------------------------------------------------------

#[test]
fn deny_and_per_ip_limits_apply_at_the_web_door() {
    let (mut server, doors) = web_server(&["--deny", "127.0.0.2/32", "--max-conns-per-ip", "2"]);
    let denied = connect_from("127.0.0.2", doors.web);
    assert!(web_client_over(denied, doors.web, None).is_err());
    server.wait_line("refused 127.0.0.2", LONG);
    let _one = web_client_over(connect_from("127.0.0.3", doors.web), doors.web, None).unwrap();
    let _two = web_client_over(connect_from("127.0.0.3", doors.web), doors.web, None).unwrap();
    assert!(web_client_over(connect_from("127.0.0.3", doors.web), doors.web, None).is_err());
    server.wait_line("--max-conns-per-ip", LONG);
}

#[test]
fn a_web_client_over_its_rate_is_slowed_in_order_and_never_dropped() {
    let (_server, doors) = web_server(&["--rate-limit", "5/s"]);
    let mut framed = Framed::connect(doors.tcp);
    let mut web = web_client(doors.web);
    let n = 15;
    for i in 0..n {
        say(&mut web, "Rae", &format!("burst {i}"));
    }
    let started = Instant::now();
    for i in 0..n {
        let got = framed.wait("burst");
        assert!(got.ends_with(&format!("burst {i}")), "{got}");
    }
    // 15 messages at 5/s after a burst of at most 5: not all at once.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_web_client_that_does_not_read_is_disconnected_and_the_room_goes_on() {
    let (mut server, doors) = web_server(&["--max-backlog", "96K"]);
    let mut framed = Framed::connect(doors.tcp);
    let sleepy = support::connect(doors.web);
    sleepy.set_nonblocking(false).unwrap();
    socket2::SockRef::from(&sleepy)
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut sleepy = web_client_over(sleepy, doors.web, None).unwrap();
    say(&mut sleepy, "Sleepy", "I will not read");
    framed.wait(" is Sleepy");
    let mut reader = web_client(doors.web);
    let filler = "x".repeat(8_000);
    let deadline = Instant::now() + LONG;
    let mut sent = 0;
    while !server
        .drain_lines()
        .iter()
        .any(|l| l.contains("Sleepy") && l.contains("slow reader"))
    {
        assert!(
            Instant::now() < deadline,
            "the slow web reader was never disconnected"
        );
        framed.say("Fred", &filler);
        sent += 1;
        wait_text(&mut reader, "xxxx");
    }
    assert!(sent > 3);
    framed.wait("Sleepy was disconnected: not reading fast enough");
}

// ----- TLS -------------------------------------------------------------------------------------

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("sockloop-web-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn with_a_certificate_the_web_door_speaks_https_and_wss() {
    let dir = TempDir::new("tls");
    let out = dir.0.to_string_lossy().into_owned();
    let status = sockloop(&["tls-selfsigned", "--out", &out])
        .status()
        .unwrap();
    assert!(status.success());
    let cert = format!("{out}/cert.pem");
    let key = format!("{out}/key.pem");
    let (_server, doors) = web_server(&["--tls-cert", &cert, "--tls-key", &key]);
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let tls = |addr: SocketAddr| {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let session = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
        rustls::StreamOwned::new(session, support::connect(addr))
    };
    // https: the page.
    let mut stream = tls(doors.web);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut page = Vec::new();
    let _ = stream.read_to_end(&mut page);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.starts_with("HTTP/1.1 200 OK") && page.contains("chat.js"),
        "{page}"
    );
    // wss: two members of the room.
    let request = format!("wss://localhost:{}/ws", doors.web.port());
    let (mut tess, _) = tungstenite::client(&request, tls(doors.web)).expect("wss handshake");
    let (mut walt, _) = tungstenite::client(&request, tls(doors.web)).expect("wss handshake");
    say(&mut tess, "Tess", "over wss");
    assert!(wait_text(&mut walt, "over wss").contains("Tess"));
    say(&mut walt, "Walt", "back over wss");
    assert!(wait_text(&mut tess, "back over wss").contains("Walt"));
}

// ----- Many ------------------------------------------------------------------------------------

#[test]
fn a_thousand_web_clients_share_one_room() {
    let n = 1_000;
    let (mut server, doors) = web_server(&[]);
    let mut clients: Vec<Ws> = (0..n).map(|_| web_client(doors.web)).collect();
    server.wait_line(&format!(", {n} clients)"), LONG);
    let mut framed = Framed::connect(doors.tcp);
    // One framed message reaches all of them...
    framed.say("Fred", "to a thousand browsers");
    for ws in clients.iter_mut() {
        assert!(wait_text(ws, "to a thousand browsers").contains("Fred"));
    }
    // ...and one browser's message reaches the other 999 and the framed client.
    // (A member's first message fixes its name: the first browser is w0.)
    say(&mut clients[0], "w0", "from one browser to all");
    framed.wait("from one browser to all");
    for ws in clients.iter_mut().skip(1) {
        assert!(wait_text(ws, "from one browser to all").contains("w0"));
    }
    // Any of them can speak: every tenth one does, and the framed client hears each once.
    for (i, ws) in clients.iter_mut().enumerate().step_by(10) {
        say(ws, &format!("w{i}"), "roll call");
    }
    let mut heard = vec![false; n];
    for _ in 0..n / 10 {
        let got = framed.wait("roll call");
        let sender = chat_msg::parse(&got).unwrap().sender.to_string();
        let i: usize = sender[1..].parse().unwrap();
        assert!(i % 10 == 0 && !heard[i], "{sender} unexpected or twice");
        heard[i] = true;
    }
}
