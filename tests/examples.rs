//! The learning progression in `examples/`, run the way a student runs it.
//!
//! Each test starts example binaries as child processes and checks what the
//! example is there to teach:
//!
//! - `minimal_reactor` echoes 1 MB byte for byte to a client that writes and
//!   reads at the same time;
//! - `reactor_with_stdin` sends its stdin through `minimal_reactor` and
//!   prints the echo, whether stdin is a pipe, a regular file (which epoll
//!   refuses) or `/dev/null`, exits 0, and leaves stdin's flags as it found
//!   them;
//! - `deadlocking_echo_client` really deadlocks, and its watchdog says so and
//!   exits with code 3;
//! - `blocking_udp_chat` stalls: a line typed to one peer is printed by the
//!   other only after the other's user has typed something;
//! - `listen_and_dial` is refused, dials again at its deadline, and when two
//!   peers dial each other at once both keep the link the smaller id dialed.
//!
//! The examples are built once per run, with the same cargo and profile as
//! this test. Every wait has a deadline, synchronisation happens on printed
//! lines, and every child is killed and reaped when its guard drops.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// How long any single scenario may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The scenarios.
// ---------------------------------------------------------------------------

#[test]
fn minimal_reactor_echoes_one_megabyte() {
    let deadline = start_clock();
    let (_server, addr) = start_minimal_reactor(deadline);

    let payload = pattern(1_000_000);
    let echo = echo_through(addr, &payload, deadline);

    assert_eq!(echo.len(), payload.len(), "echo length");
    assert!(echo == payload, "the echo differs from what was sent");
}

#[test]
fn reactor_with_stdin_echoes_a_pipe() {
    let deadline = start_clock();
    let (_server, addr) = start_minimal_reactor(deadline);
    let payload = pattern(2_000_000);

    let (status, stdout) = run_stdin_client(addr, Stdio::piped(), Some(payload.clone()), deadline);

    assert_eq!(status.code(), Some(0), "exit status");
    assert_eq!(stdout.len(), payload.len(), "stdout length");
    assert!(stdout == payload, "stdout differs from stdin");
}

#[test]
fn reactor_with_stdin_echoes_a_regular_file() {
    let deadline = start_clock();
    let (_server, addr) = start_minimal_reactor(deadline);
    let payload = pattern(2_000_000);
    let input = TempFile::with_contents("regular-file", &payload);
    // A second handle on the same open file, to look at its flags afterwards.
    let file = File::open(&input.path).expect("open the input file");
    let same_open_file = file.try_clone().expect("clone the file handle");

    let (status, stdout) = run_stdin_client(addr, Stdio::from(file), None, deadline);

    assert_eq!(status.code(), Some(0), "exit status");
    assert_eq!(stdout.len(), payload.len(), "stdout length");
    assert!(stdout == payload, "stdout differs from the file");
    assert!(
        !is_nonblocking(&same_open_file),
        "stdin was left in non-blocking mode"
    );
}

#[test]
fn reactor_with_stdin_handles_dev_null() {
    let deadline = start_clock();
    let (_server, addr) = start_minimal_reactor(deadline);
    let dev_null = File::open("/dev/null").expect("open /dev/null");

    let (status, stdout) = run_stdin_client(addr, Stdio::from(dev_null), None, deadline);

    assert_eq!(status.code(), Some(0), "exit status");
    assert!(
        stdout.is_empty(),
        "expected no output, got {} bytes",
        stdout.len()
    );
}

#[test]
fn deadlocking_echo_client_is_stopped_by_its_watchdog() {
    let deadline = start_clock();
    let mut client = Running::start(
        Command::new(example("deadlocking_echo_client")).args(["--watchdog", "2"]),
        "deadlocking_echo_client",
    );

    client
        .stderr
        .wait_for("watchdog: no progress for 2 s — deadlock", deadline);
    client.stderr.wait_for("nobody reads", deadline);
    let status = client.wait(deadline);

    assert_eq!(status.code(), Some(3), "exit status");
}

#[test]
fn blocking_udp_chat_stalls_until_the_other_user_types() {
    let deadline = start_clock();
    let (port_a, port_b) = two_free_udp_ports();
    let mut b = start_chat(port_b, port_a);
    let mut a = start_chat(port_a, port_b);
    b.stderr.wait_for("[blocked in stdin read_line]", deadline);
    a.stderr.wait_for("[blocked in stdin read_line]", deadline);

    // A's user types. A sends the line, and then it can only wait for B.
    a.type_line("hello from A");
    a.stderr.wait_for("[blocked in recv_from]", deadline);

    // The datagram has arrived at B, but B is stuck reading its own
    // keyboard: it prints nothing, and its last word is still the stdin block.
    b.stdout.collect_available();
    assert!(b.stdout.seen.is_empty(), "B printed {:?}", b.stdout.seen);
    b.stderr.collect_available();
    assert_eq!(
        b.stderr.seen.last().map(String::as_str),
        Some("[blocked in stdin read_line]"),
        "B's stderr: {:?}",
        b.stderr.seen
    );

    // Only when B's user types something does B get round to receiving,
    // and A's message, waiting all along, is printed at last.
    b.type_line("hello from B");
    let printed_by_b = b.stdout.wait_for("hello from A", deadline);
    assert_eq!(printed_by_b, format!("127.0.0.1:{port_a}: hello from A"));
    b.stderr.wait_for("[blocked in stdin read_line]", deadline);

    // A was blocked in recv_from until then; now it prints B's line and goes
    // back to waiting for its user.
    a.stdout.wait_for("hello from B", deadline);
    a.stderr.wait_for("[blocked in stdin read_line]", deadline);

    // The whole story in B's stderr: waiting for input while A's message
    // arrived, then receiving it.
    assert_eq!(
        without_bound_line(&b.stderr.seen),
        [
            "[blocked in stdin read_line]",
            "[blocked in recv_from]",
            "[blocked in stdin read_line]"
        ]
    );

    // End of input ends both chats with exit code 0.
    for chat in [&mut a, &mut b] {
        drop(chat.stdin.take());
        assert_eq!(
            chat.wait(deadline).code(),
            Some(0),
            "{} exit status",
            chat.name
        );
    }
}

#[test]
fn listen_and_dial_retries_then_both_peers_keep_the_link_the_smaller_id_dialed() {
    let deadline = start_clock();
    let mut story = Running::start(
        &mut Command::new(example("listen_and_dial")),
        "listen_and_dial",
    );
    story
        .stdout
        .wait_for("peer 1's dial: Connection refused", deadline);
    story.stdout.wait_for("2. peer 2 comes up", deadline);
    let status = story.wait(deadline);
    assert_eq!(status.code(), Some(0), "exit status");
    // The story's last line; the reader may still be behind the exit.
    story
        .stdout
        .wait_for("5. done: one link between the two peers", deadline);
    story.stdout.collect_available();
    let said = |needle: &str| {
        story
            .stdout
            .seen
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    };
    for peer in [1, 2] {
        assert_eq!(
            said(&format!("4. peer {peer} has")),
            1,
            "{:?}",
            story.stdout.seen
        );
        assert_eq!(said(&format!("5. peer {peer} hears 'hi from peer")), 1);
    }
    assert_eq!(said("keeps the one dialed by peer 1, the smaller id"), 2);
    assert_eq!(said("3. peer 1's dial is connected"), 1);
    assert_eq!(said("3. peer 2's dial is connected"), 1);
    assert!(said("5. done: one link between the two peers") == 1);
}

// ---------------------------------------------------------------------------
// Helpers: one per example, then the shared machinery.
// ---------------------------------------------------------------------------

/// Starts `minimal_reactor` on a free port and returns it with its address,
/// once it has said it is listening.
fn start_minimal_reactor(deadline: Instant) -> (Running, SocketAddr) {
    let mut server = Running::start(
        Command::new(example("minimal_reactor")).arg("0"),
        "minimal_reactor",
    );
    let line = server.stderr.wait_for("listening on ", deadline);
    let addr = line
        .trim_start_matches("listening on ")
        .parse()
        .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"));
    (server, addr)
}

/// Runs `reactor_with_stdin ADDR` to completion with the given stdin (and,
/// for a pipe, the bytes to feed it). Returns the exit status and stdout.
fn run_stdin_client(
    addr: SocketAddr,
    stdin: Stdio,
    input: Option<Vec<u8>>,
    deadline: Instant,
) -> (ExitStatus, Vec<u8>) {
    let mut command = Command::new(example("reactor_with_stdin"));
    command
        .arg(addr.to_string())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut client = ChildGuard::spawn(&mut command, "reactor_with_stdin");

    // Feed stdin and collect stdout at the same time, so neither pipe can
    // fill up and stall the child while the test waits on the other.
    if let Some(input) = input {
        let mut pipe = client.0.stdin.take().expect("stdin is piped");
        thread::spawn(move || {
            // Closing the pipe at the end is the client's end of input. An
            // error means the client died early, which the exit status shows.
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = read_to_end_in_background(client.0.stdout.take().expect("stdout is piped"));

    let status = client.wait(deadline);
    let output = stdout
        .recv_timeout(remaining(deadline))
        .expect("stdout was not closed in time");
    (status, output)
}

/// Starts `blocking_udp_chat PORT PEER_PORT`.
fn start_chat(port: u16, peer_port: u16) -> Running {
    Running::start(
        Command::new(example("blocking_udp_chat")).args([port.to_string(), peer_port.to_string()]),
        "blocking_udp_chat",
    )
}

/// Two UDP ports that were free a moment ago. Both are held at once so they
/// differ; another program could take one before the chat binds it, but the
/// kernel hands out ephemeral ports in a way that makes that unlikely.
fn two_free_udp_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    let port = |s: &UdpSocket| s.local_addr().expect("local address").port();
    (port(&a), port(&b))
}

/// The stderr lines of a chat, without the first `bound to ...` line.
fn without_bound_line(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(String::as_str)
        .filter(|line| !line.starts_with("bound to "))
        .collect()
}

/// Sends `payload` through an echo server at `addr` while reading the echo,
/// from two threads, and returns what came back.
fn echo_through(addr: SocketAddr, payload: &[u8], deadline: Instant) -> Vec<u8> {
    let mut reader = TcpStream::connect(addr).expect("connect to the echo server");
    reader
        .set_read_timeout(Some(remaining(deadline)))
        .expect("set read timeout");
    let mut writer = reader.try_clone().expect("clone the stream");
    writer
        .set_write_timeout(Some(remaining(deadline)))
        .expect("set write timeout");

    let to_send = payload.to_vec();
    let sending = thread::spawn(move || {
        writer.write_all(&to_send)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut echo = Vec::with_capacity(payload.len());
    reader
        .read_to_end(&mut echo)
        .expect("read the echo before the deadline");
    sending
        .join()
        .expect("writer thread panicked")
        .expect("send the payload before the deadline");
    echo
}

/// A payload that is easy to check: byte `i` is `i % 251`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Whether an open file has `O_NONBLOCK` set.
fn is_nonblocking(file: &File) -> bool {
    // SAFETY: F_GETFL takes no pointer; the descriptor is open.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    assert!(flags >= 0, "fcntl(F_GETFL) failed");
    flags & libc::O_NONBLOCK != 0
}

/// The deadline for one scenario. The examples are built first, so that
/// compiling them does not eat into the time the scenario is given.
fn start_clock() -> Instant {
    examples_dir();
    Instant::now() + DEADLINE
}

/// The path of an example binary. The first call builds all examples.
///
/// `cargo test --test examples` builds only this test, not the examples, so
/// the test asks cargo to build them: the same cargo, target directory and
/// profile that built this test binary, which lives in
/// `<target>/<profile>/deps/`; the examples land in
/// `<target>/<profile>/examples/`.
fn example(name: &str) -> PathBuf {
    examples_dir().join(name)
}

/// The directory of the example binaries, built on first use.
fn examples_dir() -> &'static Path {
    static EXAMPLES_DIR: OnceLock<PathBuf> = OnceLock::new();
    EXAMPLES_DIR.get_or_init(build_examples)
}

fn build_examples() -> PathBuf {
    let test_exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target> directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("unexpected profile directory {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--examples", "--profile", profile])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .expect("run cargo build --examples");
    assert!(status.success(), "cargo build --examples failed: {status}");
    profile_dir.join("examples")
}

/// A child process that is killed and reaped when dropped, whatever the test
/// did before.
struct ChildGuard(Child, &'static str);

impl ChildGuard {
    fn spawn(command: &mut Command, name: &'static str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        ChildGuard(child, name)
    }

    /// Waits for the child to exit, polling until the deadline.
    fn wait(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => panic!("{} did not exit before the deadline", self.1),
                Err(e) => panic!("wait for {}: {e}", self.1),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Killing an exited child fails harmlessly; wait reaps it either way.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running example: stdin is a pipe the test can type into, and stdout
/// and stderr are read line by line in the background.
struct Running {
    name: &'static str,
    /// Dropping it closes the pipe, which the example sees as end of input.
    stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
    // Declared last, so it drops last: the pipes close, then the child is
    // killed and reaped.
    child: ChildGuard,
}

impl Running {
    fn start(command: &mut Command, name: &'static str) -> Self {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(command, name);
        Running {
            name,
            stdin: child.0.stdin.take(),
            stdout: Lines::from(child.0.stdout.take().expect("stdout is piped")),
            stderr: Lines::from(child.0.stderr.take().expect("stderr is piped")),
            child,
        }
    }

    /// Types one line into the program's stdin, as a user pressing Enter.
    fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{text}").expect("write to the child's stdin");
        stdin.flush().expect("flush the child's stdin");
    }

    fn wait(&mut self, deadline: Instant) -> ExitStatus {
        self.child.wait(deadline)
    }
}

/// The lines of one output stream of a child, as they arrive.
struct Lines {
    incoming: Receiver<String>,
    /// Every line received so far, in order.
    seen: Vec<String>,
    /// Lines before this index have been matched by `wait_for` already.
    matched: usize,
}

impl Lines {
    fn from(stream: impl Read + Send + 'static) -> Self {
        let (sender, incoming) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            incoming,
            seen: Vec::new(),
            matched: 0,
        }
    }

    /// Returns the next line, after the last match, that contains `needle`,
    /// waiting for it until the deadline.
    fn wait_for(&mut self, needle: &str, deadline: Instant) -> String {
        loop {
            if let Some(offset) = self.seen[self.matched..]
                .iter()
                .position(|line| line.contains(needle))
            {
                self.matched += offset + 1;
                return self.seen[self.matched - 1].clone();
            }
            match self.incoming.recv_timeout(remaining(deadline)) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {needle:?} before the deadline; saw {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "stream ended without a line with {needle:?}; saw {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Takes in every line that has arrived so far, without waiting.
    fn collect_available(&mut self) {
        self.seen.extend(self.incoming.try_iter());
    }
}

/// Reads a stream to its end on a thread; the bytes arrive on the channel.
fn read_to_end_in_background(mut stream: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error just ends the stream early; the comparison shows it.
        let _ = stream.read_to_end(&mut bytes);
        let _ = sender.send(bytes);
    });
    receiver
}

/// Time left until `deadline`, never zero (a zero timeout means "no timeout"
/// for socket options).
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// A file in the temporary directory, removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn with_contents(tag: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sockloop-examples-{}-{tag}.bin",
            std::process::id()
        ));
        fs::write(&path, contents).expect("write the temporary file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
