//! Shared test helpers: run the real `sockloop` binary, wait for the line it
//! prints when ready (with a deadline), and always kill and reap it.
//!
//! Every wait here has a deadline, so a hang fails the test instead of
//! stalling the suite.

#![allow(dead_code)]

pub mod room;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockloop")
}

/// A `Command` for `sockloop ARGS` with stdin from /dev/null, stdout and stderr piped.
pub fn sockloop(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info");
    cmd
}

/// A running sockloop process. Its stderr lines are collected on a thread so
/// the pipe never fills; dropping it kills and reaps the process.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts the command (its stderr must be piped).
    pub fn start(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn sockloop");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Takes charge of a child started elsewhere, whose stderr the caller
    /// handles itself (no stderr line reaches [`Proc::wait_line`]).
    pub fn adopt(child: Child) -> Proc {
        let (_, lines) = mpsc::channel();
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; panics with everything seen after `within`.
    pub fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        self.wait_line_after(0, needle, within)
    }

    /// Like [`Proc::wait_line`], looking only at lines from index `from` of
    /// [`Proc::seen`] on (so a line printed earlier does not count).
    pub fn wait_line_after(&mut self, from: usize, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        if let Some(line) = self.seen.iter().skip(from).find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line containing {needle:?} within {within:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Collects the stderr lines that arrived so far, without waiting.
    pub fn drain_lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Waits for the `... listening on IP:PORT` line and returns the address.
    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_line("listening on", Duration::from_secs(10));
        last_word_addr(&line)
    }

    /// Waits for the process to exit, killing it after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "process did not exit within {within:?}; stderr:\n{}",
                    self.drain_lines().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Takes the child's stdin, to write to it.
    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin piped")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sockloop ARGS` with `input` piped to stdin, collecting stdout and
/// stderr; returns (exit code, stdout, stderr). Kills it and fails the test
/// after `within`.
pub fn run_with_input(args: &[&str], input: Vec<u8>, within: Duration) -> (i32, Vec<u8>, String) {
    let mut cmd = sockloop(args);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sockloop");
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sockloop {args:?} did not finish within {within:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    (
        status.code().unwrap_or(-1),
        reader.join().unwrap(),
        err_reader.join().unwrap(),
    )
}

/// A child's stdout, line by line, collected on a thread (so the pipe never
/// fills); every wait has a deadline.
pub struct OutLines {
    rx: Receiver<String>,
    /// Every line received so far, in order (tests may drain it).
    pub seen: Vec<String>,
}

impl OutLines {
    /// Takes the child's stdout (it must be piped).
    pub fn of(child: &mut Child) -> OutLines {
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        OutLines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Receives the next line into `seen`; false when none came by `deadline`.
    pub fn pull(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits (up to 20 s) for a line containing `needle`, seen before or now.
    pub fn wait(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut checked = 0;
        loop {
            if self.seen[checked..].iter().any(|l| l.contains(needle)) {
                return;
            }
            checked = self.seen.len();
            if !self.pull(deadline) {
                panic!("no stdout line containing {needle:?}; saw {:?}", self.seen);
            }
        }
    }
}

/// Starts `sockloop chat server --bind 127.0.0.1 --port 0 --relay-only EXTRA...`
/// with its stdout (the relayed messages) discarded, after `adjust` has had
/// its say on the command; returns it with its address.
pub fn chat_server_with(extra: &[&str], adjust: impl FnOnce(&mut Command)) -> (Proc, SocketAddr) {
    let mut args = vec![
        "chat",
        "server",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--relay-only",
    ];
    args.extend_from_slice(extra);
    let mut cmd = sockloop(&args);
    cmd.stdout(Stdio::null());
    adjust(&mut cmd);
    let mut server = Proc::start(cmd);
    let addr = server.listening_addr();
    (server, addr)
}

/// Parses the last word of a line as a socket address.
pub fn last_word_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address at the end of {line:?}"))
}

/// Starts `sockloop echo server --bind 127.0.0.1 --port 0 EXTRA...` and returns it with its address.
pub fn echo_server(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["echo", "server", "--bind", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    let mut server = Proc::start(sockloop(&args));
    let addr = server.listening_addr();
    (server, addr)
}

/// Connects with a deadline on every read and write, so a test cannot hang.
pub fn connect(addr: SocketAddr) -> TcpStream {
    with_deadlines(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
}

/// Connects from a chosen loopback source address (127.0.0.2, ...), with
/// the same deadlines as [`connect`].
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{source}:0").parse().expect("a source IP");
    socket.bind(&from.into()).expect("bind the source address");
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    with_deadlines(socket.into())
}

/// Gives a test's stream a 10 s deadline on every read and write.
pub fn with_deadlines(stream: TcpStream) -> TcpStream {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads exactly `n` bytes (the stream's read timeout is the deadline).
pub fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream
        .read_exact(&mut buf)
        .expect("read_exact within the timeout");
    buf
}

/// Writes everything (the stream's write timeout is the deadline).
pub fn write_all(stream: &mut TcpStream, bytes: &[u8]) {
    stream
        .write_all(bytes)
        .expect("write_all within the timeout");
}

/// Writes without reading until the server says (in its SIGUSR1 table) that
/// it has paused reading this client, bounded by `cap` bytes and 20 s;
/// returns what was sent. Each time the kernel takes no more, the server is
/// asked; if it has not paused, the write waits for the socket to become
/// writable again, so a server that is merely slow is never taken for one
/// that holds back.
pub fn fill_until_paused(
    server: &mut Proc,
    stream: &mut TcpStream,
    data: &[u8],
    cap: usize,
) -> usize {
    let me = stream.local_addr().unwrap().to_string();
    stream.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0usize;
    while sent < cap {
        let from = sent % data.len();
        match stream.write(&data[from..]) {
            Ok(n) => {
                sent += n;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
        if table_row(server, &me).contains("paused") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s the server neither read more nor paused reading"
        );
        wait_writable(stream, Duration::from_millis(200));
    }
    stream.set_nonblocking(false).unwrap();
    sent
}

/// Sends SIGUSR1 and returns the table row of the connection whose peer is `peer`.
pub fn table_row(server: &mut Proc, peer: &str) -> String {
    let before = server.drain_lines().len();
    server.signal(libc::SIGUSR1);
    let header = server.wait_line_after(before, "connection table:", Duration::from_secs(10));
    let at = server
        .seen
        .iter()
        .rposition(|l| *l == header)
        .unwrap_or(before);
    server.wait_line_after(at, &format!(" {peer} "), Duration::from_secs(10))
}

/// Waits until `stream` can take more bytes, or `within` passes.
pub fn wait_writable(stream: &TcpStream, within: Duration) {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor the stream owns.
    unsafe {
        libc::poll(&mut poll, 1, within.as_millis() as libc::c_int);
    }
}

/// An address where nothing accepts: a socket bound to a fresh loopback
/// port but not listening, held (so nobody else can listen there) until
/// the returned socket is dropped. A connect to it is refused at once.
pub fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind");
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// Deterministic pseudo-random bytes (xorshift), for payloads a test can regenerate.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls `check` every 10 ms until it returns Some, or panics after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A process's CPU time (user + system) in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// A process's resident set size in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A process's peak resident set size so far (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// A process's data segment and anonymous mappings in KiB (VmData): what
/// it has asked the kernel for, touched or not, so a reservation shows at once.
pub fn vm_data_kib(pid: u32) -> u64 {
    status_kib(pid, "VmData")
}

/// A `FIELD:   N kB` line of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}
