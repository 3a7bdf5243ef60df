// The chat's web page in a real browser: Debian's chromium, driven through
// chromedriver by Selenium from `tests/python/web_page.py`, against the real
// `sockloop chat server --web-port` on 127.0.0.1, port 0.
//
// Covered: the page asks for a name and connects; a message typed in the
// page reaches a framed TCP client under that name; a framed client's
// message appears in the page; a message carrying `<script>` and `<b>` is
// shown as text, and no script from it runs; when the server goes away and
// comes back on the same port, the page reconnects by itself and hears the
// room again.
//
// This test needs chromium, chromium-driver and the selenium Python package.
// Without them it FAILS, saying what to install: `scripts/test` installs them
// and then runs `cargo test`. Every wait has a deadline.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sockloop::chat_msg;
use support::{chat_server_with, last_word_addr, OutLines};

const LONG: Duration = Duration::from_secs(30);

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/web_page.py");

const INSTALL: &str = "this test drives a real browser: install chromium, chromium-driver and \
    Selenium (apt-get install -y chromium chromium-driver && pip install selenium), or run \
    scripts/test, which installs them and runs cargo test";

/// A framed chat client (2-byte prefix) with deadlines.
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

    fn wait(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            let mut prefix = [0u8; 2];
            self.0.read_exact(&mut prefix).expect("a frame's prefix");
            let mut payload = vec![0; u16::from_be_bytes(prefix) as usize];
            self.0.read_exact(&mut payload).expect("a frame's payload");
            let text = String::from_utf8(payload).expect("utf-8");
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no frame containing {needle:?}");
        }
    }
}

/// Fails (never skips) when the browser or Selenium is missing, saying what to install.
fn require_browser() {
    let mut missing = Vec::new();
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !std::path::Path::new(tool).exists() {
            missing.push(tool.to_string());
        }
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !selenium.is_ok_and(|s| s.success()) {
        missing.push("python3 with the selenium package".to_string());
    }
    assert!(
        missing.is_empty(),
        "missing {}: {INSTALL}",
        missing.join(", ")
    );
}

#[test]
fn a_real_browser_chats_shows_markup_as_text_and_reconnects_by_itself() {
    require_browser();
    let (mut server, tcp) = chat_server_with(&["--web-port", "0"], |_| {});
    let web = last_word_addr(&server.wait_line("web door listening on", LONG));
    let mut framed = Framed::connect(tcp);
    framed.say("Fred", "hello, I am the framed client");
    server.wait_line("is Fred", LONG);

    let hostile = "<script>window.__pwned = 1</script><b>not bold</b>";
    let greeting = "hi browser, from the framed door";
    let mut browser = Command::new("python3")
        .args([
            SCRIPT,
            &format!("http://{web}/"),
            "--name",
            "Wendy",
            "--send",
            "hello from a real browser",
            "--expect",
            greeting,
            "--expect",
            hostile,
            "--reconnect-expect",
            "welcome back",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python3 tests/python/web_page.py");
    let mut steps = OutLines::of(&mut browser);
    let finish = |browser: &mut std::process::Child| {
        let _ = browser.kill();
        let _ = browser.wait();
    };

    // The page asked for a name, connected, and its message reached the framed client.
    steps.wait("SENT");
    let got = framed.wait("hello from a real browser");
    let parsed = chat_msg::parse(&got).expect("the chat format");
    assert_eq!(
        (parsed.sender, parsed.text),
        ("Wendy", "hello from a real browser")
    );
    assert!(
        chat_msg::parse_timestamp(parsed.timestamp).is_some(),
        "{got:?}"
    );
    server.wait_line("is Wendy", LONG);

    // The framed client's messages appear in the page, markup as text.
    framed.say("Fred", greeting);
    framed.say("Mallory", hostile);
    steps.wait(&format!("SEEN {greeting}"));
    steps.wait(&format!("SEEN {hostile}"));
    steps.wait("TEXT-ONLY");

    // The server goes away; a new one comes up on the same web port; the page finds it.
    drop(framed);
    drop(server);
    steps.wait("OFFLINE");
    let port = web.port().to_string();
    let (mut server, tcp) = chat_server_with(&["--web-port", &port], |_| {});
    server.wait_line("web door listening on", LONG);
    let mut framed = Framed::connect(tcp);
    steps.wait("RECONNECTED");
    server.wait_line("connected by the web door", LONG);
    framed.say("Fred", "welcome back");
    steps.wait("SEEN welcome back");
    steps.wait("DONE");
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = browser.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            finish(&mut browser);
            panic!("the browser script did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "web_page.py: {status}");
    // Closing the browser closed its WebSocket, and the server saw it go.
    server.wait_line("left (1 client)", LONG);
}
