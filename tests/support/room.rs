//! A chat room with all its doors, and clients for each, for the tests of
//! what a room's members may claim and rely on (`tests/trust*.rs`): a
//! `chat server` on 127.0.0.1 with its framed, line and UDP doors, a framed
//! client and a line client on blocking sockets, a UDP peer on a plain
//! socket that can answer the server's challenge, and `udp-chat` processes.
//!
//! Every read has a deadline (the sockets' timeouts), so a test that waits
//! for something that never comes fails instead of hanging.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sockloop::chat_msg;

use super::{last_word_addr, sockloop, OutLines, Proc};

pub const LONG: Duration = Duration::from_secs(20);

/// The server's own name: its notices come from it.
pub const SERVER: &str = "server";

// ----- The server ------------------------------------------------------------------

/// Where a running chat server can be reached.
pub struct Doors {
    pub tcp: SocketAddr,
    pub line: SocketAddr,
    pub udp: SocketAddr,
}

/// `sockloop chat server --relay-only` on 127.0.0.1 with all three doors and
/// `extra` options; its stdout is piped and read into the returned lines.
pub fn server(extra: &[&str]) -> (Proc, Doors, OutLines) {
    let mut args = vec![
        "chat",
        "server",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--line-port",
        "0",
        "--udp-port",
        "0",
    ];
    if !extra.contains(&"--name") {
        args.push("--relay-only");
    }
    args.extend_from_slice(extra);
    let mut cmd = sockloop(&args);
    cmd.stdout(Stdio::piped());
    if extra.contains(&"--name") {
        cmd.stdin(Stdio::piped());
    }
    let mut server = Proc::start(cmd);
    let out = OutLines::of(&mut server.child);
    let tcp = server.listening_addr();
    let line = last_word_addr(&server.wait_line("line door", LONG));
    let udp = last_word_addr(&server.wait_line("udp door", LONG));
    (server, Doors { tcp, line, udp }, out)
}

pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A control character other than the chat format's own `\n` and `\t`:
/// C0, DEL, C1, or a bidi override or isolate.
pub fn is_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Panics if `bytes` hold a raw control character (other than `\n`, `\t`).
pub fn assert_no_controls(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Some(c) = text.chars().find(|&c| is_control(c)) {
        panic!("{what} holds the raw control character {c:?}: {text:?}");
    }
}

/// Text full of what a terminal would obey: clear the screen, retitle the
/// window, ring, return to the line's start, a C1 CSI, a bidi override.
pub const HOSTILE: &str = "\x1b[2J\x1b]0;owned\x07gone\rhidden\u{9b}31m\u{202e}txt.exe";

// ----- A framed client -------------------------------------------------------------

/// A chat participant speaking raw 2-byte-prefixed frames.
pub struct Framed {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
    /// Every payload received, as bytes.
    pub received: Vec<Vec<u8>>,
}

impl Framed {
    pub fn connect(addr: SocketAddr) -> Framed {
        Framed::over(super::connect(addr))
    }

    pub fn over(stream: TcpStream) -> Framed {
        stream.set_nodelay(true).unwrap();
        Framed {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
            received: Vec::new(),
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.writer.local_addr().unwrap()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .expect("write within the timeout");
    }

    pub fn send(&mut self, payload: &[u8]) {
        let mut bytes = (payload.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes);
    }

    /// Sends `[now] NAME:\n\tTEXT`.
    pub fn say(&mut self, name: &str, text: &str) {
        self.send(chat_msg::format_now(name, text).as_bytes());
    }

    /// The next payload; `None` at the close frame or the end of the stream.
    pub fn next(&mut self) -> Option<String> {
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
        self.received.push(payload.clone());
        Some(String::from_utf8(payload).expect("utf-8 from the server"))
    }

    /// The next message as (sender, text).
    pub fn next_message(&mut self) -> Option<(String, String)> {
        let message = self.next()?;
        let parsed = chat_msg::parse(&message)
            .unwrap_or_else(|| panic!("not in the chat format: {message:?}"));
        Some((parsed.sender.to_string(), parsed.text.to_string()))
    }

    /// Reads messages until one from `sender` satisfies `check`; returns its text.
    pub fn wait(&mut self, sender: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        while let Some((from, text)) = self.next_message() {
            if from == sender && check(&text) {
                return text;
            }
            seen.push((from, text));
        }
        panic!("framed client: no message from {sender:?} {what}; saw {seen:?}");
    }

    /// Reads messages until one from `sender` says `text`.
    pub fn wait_for(&mut self, sender: &str, text: &str) {
        self.wait(sender, &format!("saying {text:?}"), |t| t == text);
    }

    /// Reads until the server closes the connection.
    pub fn expect_closed(&mut self) {
        while self.next().is_some() {}
    }
}

// ----- A line client (what nc does) ---------------------------------------------------

/// A client of the plain-text door.
pub struct LineClient {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
    /// Every byte received.
    pub received: Vec<u8>,
}

impl LineClient {
    /// Connects and reads the name prompt.
    pub fn connect(addr: SocketAddr) -> LineClient {
        let stream = super::connect(addr);
        let mut client = LineClient {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
            received: Vec::new(),
        };
        assert_eq!(client.line().as_deref(), Some(chat_msg::NAME_PROMPT));
        client
    }

    pub fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .expect("write within the timeout");
    }

    /// The next line without its newline; `None` at the end of the stream.
    pub fn line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                self.received.extend_from_slice(&line);
                assert_eq!(line.pop(), Some(b'\n'), "a line ends with a newline");
                Some(String::from_utf8(line).expect("utf-8 from the server"))
            }
            Err(e) if is_gone(&e) => None,
            Err(e) => panic!("line client: reading: {e}"),
        }
    }

    /// Reads lines until one contains `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        while let Some(line) = self.line() {
            if line.contains(needle) {
                return line;
            }
            seen.push(line);
        }
        panic!("line client: no line containing {needle:?}; saw {seen:?}");
    }

    /// Reads until the two lines of a message from `sender` saying `text`.
    pub fn wait_for(&mut self, sender: &str, text: &str) {
        let mut seen: Vec<String> = Vec::new();
        while let Some(line) = self.line() {
            let header = seen
                .last()
                .is_some_and(|l| l.starts_with('[') && l.ends_with(&format!("] {sender}:")));
            if header && line == format!("\t{text}") {
                return;
            }
            seen.push(line);
        }
        panic!("line client: no message from {sender:?} saying {text:?}; saw {seen:?}");
    }

    /// Reads until the server closes the connection.
    pub fn expect_closed(&mut self) {
        while self.line().is_some() {}
    }
}

// ----- A UDP peer on a plain socket -----------------------------------------------------

/// A UDP peer: a plain socket with a deadline on every read.
pub struct UdpPeer {
    pub socket: UdpSocket,
}

impl UdpPeer {
    pub fn new() -> UdpPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP peer");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        UdpPeer { socket }
    }

    pub fn say(&self, to: SocketAddr, name: &str, text: &str) -> usize {
        let datagram = chat_msg::format_now(name, text);
        self.socket.send_to(datagram.as_bytes(), to).unwrap()
    }

    /// The next datagram's text; panics after the read timeout.
    pub fn recv(&self) -> String {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = self.socket.recv_from(&mut buf).expect("a datagram in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Reads until the server asks this address to prove itself, and answers
    /// as `udp-chat` does: the token, echoed in a chat message.
    pub fn answer_challenge(&self, to: SocketAddr, name: &str) {
        loop {
            let text = self.recv();
            if let Some(token) = echo_token(&text) {
                self.say(to, name, &token);
                return;
            }
        }
    }

    /// Everything that has arrived so far, without waiting.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        self.socket.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        self.socket.set_nonblocking(false).unwrap();
        got
    }
}

/// The `<ECHO ...>` a challenge asks to be sent back, if `text` is one.
pub fn echo_token(text: &str) -> Option<String> {
    let start = text.find("<ECHO ")?;
    let end = start + text[start..].find('>')?;
    Some(text[start..=end].to_string())
}

// ----- Certificates ---------------------------------------------------------------------

/// A fresh certificate and key, removed on drop.
pub struct Certificate(pub PathBuf);

impl Certificate {
    pub fn new(tag: &str) -> Certificate {
        let dir = std::env::temp_dir().join(format!(
            "sockloop-trust-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().subsec_nanos()
        ));
        let out = sockloop(&["tls-selfsigned", "--out", dir.to_str().unwrap()])
            .output()
            .expect("run tls-selfsigned");
        assert!(out.status.success(), "{out:?}");
        Certificate(dir)
    }

    pub fn cert(&self) -> String {
        self.0.join("cert.pem").to_string_lossy().into_owned()
    }

    pub fn key(&self) -> String {
        self.0.join("key.pem").to_string_lossy().into_owned()
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads `client`'s messages until `sender` says `text`; returns all of them.
pub fn messages_until(client: &mut Framed, sender: &str, text: &str) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Some((from, said)) = client.next_message() {
        let done = from == sender && said == text;
        seen.push((from, said));
        if done {
            return seen;
        }
    }
    panic!("framed client: no message from {sender:?} saying {text:?}; saw {seen:?}");
}

/// `sockloop udp-chat --name NAME EXTRA... PEERS...` on 127.0.0.1, piped.
pub fn udp_chat(name: &str, extra: &[&str], peers: &[SocketAddr]) -> (Proc, SocketAddr, OutLines) {
    let peers: Vec<String> = peers.iter().map(SocketAddr::to_string).collect();
    let mut args = vec![
        "udp-chat",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    args.extend(peers.iter().map(String::as_str));
    let mut cmd = sockloop(&args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut proc = Proc::start(cmd);
    let addr = proc.listening_addr();
    let out = OutLines::of(&mut proc.child);
    (proc, addr, out)
}
