//! The loop never waits anywhere but in its poll: not on a stdout or stderr
//! nobody reads, not on a stdin whose non-blocking flag was cleared behind
//! its back (as a shell does around Ctrl+Z), not on a terminal it may not
//! read from the background, not on a connect the server never answers.
//! Each test drives the real binary into one of those corners and checks
//! that messages keep flowing and that a signal still ends it.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{ChildStderr, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use sockloop::chat_msg;
use support::{chat_server_with, eventually, sockloop, OutLines, Proc};

/// How long a signalled program may take to exit before the test calls it stuck.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

// ----- helpers -----------------------------------------------------------------

/// A length-prefixed frame (2-byte prefix), made here independently of the crate.
fn frame(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// Reads frames from a chat server until one contains `needle` (the
/// stream's read timeout is the deadline); returns how many were read.
fn read_frames_until(stream: &mut BufReader<TcpStream>, needle: &str) -> usize {
    let mut n = 0;
    loop {
        let text = read_frame(stream);
        n += 1;
        if text.contains(needle) {
            return n;
        }
    }
}

fn read_frame(stream: &mut BufReader<TcpStream>) -> String {
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .expect("a frame within the timeout");
    let mut payload = vec![0; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).expect("a frame's payload");
    String::from_utf8(payload).expect("UTF-8")
}

/// Starts `cmd` with stdout and stderr piped; reads stderr only until the
/// `listening on` line, then leaves both pipes unread (and open) for as long
/// as the returned handles live.
fn start_with_unread_output(mut cmd: Command) -> (Proc, SocketAddr, BufReader<ChildStderr>) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sockloop");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.contains("listening on") => {
                    let _ = tx.send((support::last_word_addr(line.trim()), reader));
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    let proc = Proc::adopt(child);
    let (addr, stderr) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a 'listening on' line within 10 s");
    (proc, addr, stderr)
}

/// True when the pipe whose read end is `fd` is full: its writer would
/// get `EAGAIN` (or block). Asked the kernel's way: a second write end of
/// the same pipe, opened through /proc, polled for room without waiting.
fn is_full(fd: &impl AsRawFd) -> bool {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("a second write end of the pipe");
    let mut fds = [nix::poll::PollFd::new(
        writer.as_fd(),
        nix::poll::PollFlags::POLLOUT,
    )];
    nix::poll::poll(&mut fds, 0u16).expect("poll") == 0
}

/// Waits until the pipe whose read end is `fd` is full.
fn wait_until_full(fd: &impl AsRawFd, what: &str) {
    eventually(Duration::from_secs(20), what, || is_full(fd).then_some(()));
}

/// The state letter of a process (`R`, `S`, `T`, `Z`, ...), from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

fn signal_pid(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// A pipe with close-on-exec set on both ends (a child gets one end through
/// `Stdio`, which dups it; no other child inherits it).
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2")
}

fn flags(fd: &impl AsFd) -> OFlag {
    OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL).expect("F_GETFL"))
}

/// Clears `O_NONBLOCK` on an open file description, as a shell does to its
/// terminal while a job is stopped.
fn clear_nonblocking(fd: &impl AsFd) {
    let cleared = flags(fd) & !OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(cleared)).expect("F_SETFL");
    assert!(!flags(fd).contains(OFlag::O_NONBLOCK));
}

/// A listener with a backlog of 0 that never accepts, made full by one
/// connection: the kernel drops every further SYN, so a connect to it
/// waits for an answer that never comes. Keep both for the test's length.
fn full_backlog() -> (socket2::Socket, TcpStream, SocketAddr) {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("the filler");
    (listener, filler, addr)
}

/// True while some socket on this machine is in SYN_SENT towards `port` on
/// 127.0.0.1: a connect that waits for an answer.
fn syn_sent_to(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let remote = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"02")
    })
}

// ----- stdout and stderr nobody reads -------------------------------------------

#[test]
fn a_chat_server_whose_stdout_and_stderr_nobody_reads_keeps_relaying_and_ends_on_sigterm() {
    // --trace and trace logging write several lines per message to stderr,
    // and every message is printed on stdout: both pipes fill at once.
    let mut cmd = sockloop(&[
        "--trace",
        "chat",
        "server",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--relay-only",
    ]);
    cmd.env("RUST_LOG", "trace");
    let (mut server, addr, _stderr_unread) = start_with_unread_output(cmd);
    let _stdout_unread = server.child.stdout.take();

    let mut ann = support::connect(addr);
    let mut bob = BufReader::new(support::connect(addr));
    // Bob is in the room once Ann hears that he joined (the server says so).
    bob.get_mut()
        .write_all(&frame(&chat_msg::format_now("Bob", "here")))
        .unwrap();
    let mut ann_reader = BufReader::new(ann.try_clone().unwrap());
    read_frames_until(&mut ann_reader, "here");

    const N: usize = 20_000;
    let receiver =
        thread::spawn(move || read_frames_until(&mut bob, &format!("message {}", N - 1)));
    let mut burst = Vec::new();
    for i in 0..N {
        burst.extend_from_slice(&frame(&chat_msg::format_now(
            "Ann",
            &format!("message {i} padded to make the console copy larger than any pipe"),
        )));
    }
    ann.write_all(&burst).expect("the server reads Ann");
    let got = receiver.join().expect("Bob received every message");
    assert!(got >= N, "Bob read {got} frames");

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(EXIT_DEADLINE);
    assert!(status.success(), "{status}");
}

#[test]
fn a_chat_server_says_how_many_messages_its_stuck_stdout_did_not_print() {
    let (mut server, addr) = chat_server_with(&[], |cmd| {
        cmd.stdout(Stdio::piped());
    });
    // Nobody reads the server's stdout from here on.
    let stdout = server.child.stdout.take().unwrap();

    let mut ann = support::connect(addr);
    let mut bob = BufReader::new(support::connect(addr));
    bob.get_mut()
        .write_all(&frame(&chat_msg::format_now("Bob", "here")))
        .unwrap();
    read_frames_until(&mut BufReader::new(ann.try_clone().unwrap()), "here");

    const N: usize = 20_000;
    let receiver =
        thread::spawn(move || read_frames_until(&mut bob, &format!("message {}", N - 1)));
    let mut burst = Vec::new();
    for i in 0..N {
        burst.extend_from_slice(&frame(&chat_msg::format_now(
            "Ann",
            &format!("message {i} padded to make the console copy larger than any pipe"),
        )));
    }
    ann.write_all(&burst).expect("the server reads Ann");
    receiver.join().expect("Bob received every message");
    wait_until_full(&stdout, "the server's stdout pipe to fill");

    server.signal(libc::SIGTERM);
    let line = server.wait_line("not printed", EXIT_DEADLINE);
    assert!(line.contains("relayed message(s) not printed"), "{line}");
    let status = server.wait_exit(EXIT_DEADLINE);
    assert!(status.success(), "{status}");
}

#[test]
fn an_echo_client_whose_stdout_nobody_reads_ends_on_sigint() {
    let (_server, addr) = support::echo_server(&[]);
    let mut cmd = sockloop(&["echo", "client", &addr.to_string()]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut client = Proc::start(cmd);
    let stdout = client.child.stdout.take().unwrap();
    let mut stdin = client.stdin();
    // Far more than the pipes and every buffer on the way hold.
    let feeder = thread::spawn(move || {
        let chunk = support::pattern(64 * 1024, 7);
        for _ in 0..256 {
            if stdin.write_all(&chunk).is_err() {
                return; // the client exited
            }
        }
    });
    wait_until_full(&stdout, "the echo client's stdout pipe to fill");

    client.signal(libc::SIGINT);
    client.wait_exit(EXIT_DEADLINE);
    drop(stdout);
    feeder.join().unwrap();
}

#[test]
fn a_chat_client_whose_stdout_nobody_reads_ends_on_sigint() {
    let (_server, addr) = chat_server_with(&[], |_| {});
    let mut cmd = sockloop(&["chat", "client", &addr.to_string(), "--name", "Cy"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut client = Proc::start(cmd);
    let stdout = client.child.stdout.take().unwrap();
    let _stdin_open = client.stdin();
    client.wait_line("connected to", Duration::from_secs(10));

    let mut ann = support::connect(addr);
    let text = format!("{:-<200}", "a line to print");
    let mut burst = Vec::new();
    for _ in 0..100 {
        burst.extend_from_slice(&frame(&chat_msg::format_now("Ann", &text)));
    }
    // Ann talks until the client's stdout is full (bounded in messages and time).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while !is_full(&stdout) {
        assert!(
            sent < 50_000 && Instant::now() < deadline,
            "the chat client's stdout never filled ({sent} messages sent)"
        );
        ann.write_all(&burst).expect("the server reads Ann");
        sent += 100;
    }

    client.signal(libc::SIGINT);
    client.wait_exit(EXIT_DEADLINE);
}

#[test]
fn udp_chat_whose_stdout_nobody_reads_ends_on_sigint() {
    let mut cmd = sockloop(&[
        "udp-chat",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--name",
        "Ann",
    ]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut chat = Proc::start(cmd);
    let addr = chat.listening_addr();
    let stdout = chat.child.stdout.take().unwrap();
    let _stdin_open = chat.stdin();

    let bob = UdpSocket::bind("127.0.0.1:0").unwrap();
    let message = chat_msg::format_now("Bob", &format!("{:-<300}", "hello"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_full(&stdout) {
        assert!(Instant::now() < deadline, "udp-chat's stdout never filled");
        for _ in 0..50 {
            let _ = bob.send_to(message.as_bytes(), addr);
        }
        thread::sleep(Duration::from_millis(1));
    }

    chat.signal(libc::SIGINT);
    chat.wait_exit(EXIT_DEADLINE);
}

// ----- stdin made blocking behind the program's back ------------------------------

/// A chat client whose stdin is a pipe this test shares (the same open file
/// description), a server and a raw framed peer; hands the test what it
/// needs to clear the flag and see messages go both ways.
struct SharedStdin {
    _server: Proc,
    client: Proc,
    client_out: OutLines,
    /// Our copy of the client's stdin: the same open file, so the same flags.
    stdin_read: OwnedFd,
    stdin_write: File,
    peer: BufReader<TcpStream>,
}

impl SharedStdin {
    fn start() -> SharedStdin {
        let (_server, addr) = chat_server_with(&[], |_| {});
        let (read, write) = pipe();
        let mut cmd = sockloop(&["chat", "client", &addr.to_string(), "--name", "Ann"]);
        cmd.stdin(Stdio::from(read.try_clone().unwrap()))
            .stdout(Stdio::piped());
        let mut client = Proc::start(cmd);
        let client_out = OutLines::of(&mut client.child);
        client.wait_line("connected to", Duration::from_secs(10));
        let mut peer = BufReader::new(support::connect(addr));
        peer.get_mut()
            .write_all(&frame(&chat_msg::format_now("Bob", "bob is here")))
            .unwrap();
        let mut setup = SharedStdin {
            _server,
            client,
            client_out,
            stdin_read: read,
            stdin_write: File::from(write),
            peer,
        };
        setup.client_out.wait("bob is here");
        assert!(
            flags(&setup.stdin_read).contains(OFlag::O_NONBLOCK),
            "the client made its stdin non-blocking"
        );
        setup
    }

    /// Types a line into the client and waits for the peer to receive it.
    fn type_line(&mut self, text: &str) {
        writeln!(self.stdin_write, "{text}").unwrap();
        read_frames_until(&mut self.peer, text);
    }

    /// The peer speaks; the client must print it.
    fn hear(&mut self, text: &str) {
        self.peer
            .get_mut()
            .write_all(&frame(&chat_msg::format_now("Bob", text)))
            .unwrap();
        self.client_out.wait(text);
    }
}

#[test]
fn stdin_made_blocking_while_the_client_was_stopped_does_not_freeze_it() {
    let mut chat = SharedStdin::start();
    chat.type_line("before the stop");

    // Ctrl+Z, as a shell does it: stop the job, and clear the flag on the
    // terminal (here: the pipe) while it is stopped; then `fg`.
    let pid = chat.client.pid();
    signal_pid(pid, libc::SIGSTOP);
    eventually(Duration::from_secs(10), "the client to stop", || {
        (proc_state(pid) == Some('T')).then_some(())
    });
    clear_nonblocking(&chat.stdin_read);
    signal_pid(pid, libc::SIGCONT);

    // A line typed after `fg`, and a message the other way, both get through.
    chat.type_line("after the continue");
    chat.hear("still listening");
    chat.type_line("and typing");
    assert!(
        flags(&chat.stdin_read).contains(OFlag::O_NONBLOCK),
        "stdin is non-blocking again"
    );

    chat.client.signal(libc::SIGINT);
    chat.client.wait_exit(EXIT_DEADLINE);
}

#[test]
fn stdin_made_blocking_while_the_client_runs_does_not_freeze_it() {
    // No stop and no SIGCONT: only the check before every read stands
    // between the loop and a read that would block.
    let mut chat = SharedStdin::start();
    chat.type_line("first");
    clear_nonblocking(&chat.stdin_read);
    chat.type_line("second");
    chat.hear("heard you");
    chat.type_line("third");

    chat.client.signal(libc::SIGINT);
    chat.client.wait_exit(EXIT_DEADLINE);
}

// ----- a job in the background of its terminal ------------------------------------

#[test]
fn a_chat_server_started_in_the_background_of_its_terminal_says_how_to_run_it_and_ends_on_sigterm()
{
    // A terminal of our own, a shell with job control as its session leader,
    // and `chat server &` (without --relay-only) in the background of it.
    let pty = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(
            fd.as_fd(),
            FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("sockloop-bg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err_file = dir.join("stderr");
    let pid_file = dir.join("pid");
    let script = "set -m; \"$0\" chat server --bind 127.0.0.1 --port 0 --name Ann 2>\"$1\" & \
                  echo $! > \"$2\"; wait";
    let mut shell = Command::new("sh");
    shell
        .args(["-c", script, support::bin()])
        .arg(&err_file)
        .arg(&pid_file)
        .env("RUST_LOG", "info")
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    // SAFETY: between fork and exec the child only calls setsid(2) and
    // ioctl(2), both async-signal-safe, on its own descriptors.
    unsafe {
        use std::os::unix::process::CommandExt;
        shell.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut job = Job {
        shell: shell.spawn().expect("spawn sh"),
        pid: None,
        dir: dir.clone(),
    };
    let pid: u32 = eventually(Duration::from_secs(10), "the job's pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    job.pid = Some(pid);
    let stderr_text = || std::fs::read_to_string(&err_file).unwrap_or_default();
    eventually(Duration::from_secs(10), "the server to listen", || {
        stderr_text().contains("listening on").then_some(())
    });
    // Typing at the terminal makes the background job's stdin readable.
    let mut master = File::from(pty.master);
    master.write_all(b"hello\n").unwrap();
    let told = eventually(
        Duration::from_secs(10),
        "a word on running in the background",
        || {
            let text = stderr_text();
            text.contains("in the background").then_some(text)
        },
    );
    assert!(
        told.contains("--relay-only") && told.contains("fg"),
        "{told}"
    );
    assert_ne!(proc_state(pid), Some('T'), "the job was stopped");

    signal_pid(pid, libc::SIGTERM);
    eventually(EXIT_DEADLINE, "the job to end on SIGTERM", || {
        matches!(proc_state(pid), None | Some('Z')).then_some(())
    });
    let status = job.shell.wait().expect("the shell ends with its job");
    assert!(status.success(), "{status}");
    job.pid = None;
}

/// A shell, its background job and their files; the processes are killed
/// if the test fails, the files removed in any case.
struct Job {
    shell: std::process::Child,
    pid: Option<u32>,
    dir: std::path::PathBuf,
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            signal_pid(pid, libc::SIGKILL);
        }
        let _ = self.shell.kill();
        let _ = self.shell.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ----- connecting --------------------------------------------------------------------

/// Starts a client command towards a listener whose backlog is full, waits
/// until its connect is under way, and interrupts it.
fn interrupt_a_stuck_connect(args: &[&str]) {
    let (_listener, _filler, addr) = full_backlog();
    let target = addr.to_string();
    let mut full_args = args.to_vec();
    full_args.insert(2, &target);
    let mut cmd = sockloop(&full_args);
    cmd.stdin(Stdio::piped());
    let mut client = Proc::start(cmd);
    let _stdin_open: ChildStdin = client.stdin();
    eventually(
        Duration::from_secs(10),
        "a SYN waiting for an answer",
        || syn_sent_to(addr.port()).then_some(()),
    );
    client.signal(libc::SIGINT);
    let status = client.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{status}");
    let line = client.wait_line("sockloop:", Duration::from_secs(5));
    assert_eq!(
        line,
        format!("sockloop: SIGINT: stopped while connecting to {addr}")
    );
}

#[test]
fn a_chat_client_connecting_to_a_full_backlog_ends_on_sigint() {
    interrupt_a_stuck_connect(&["chat", "client", "--name", "Ann"]);
}

#[test]
fn an_echo_client_connecting_to_a_full_backlog_ends_on_sigint() {
    interrupt_a_stuck_connect(&["echo", "client"]);
}

#[test]
fn connect_timeout_gives_up_with_one_clear_line() {
    let (_listener, _filler, addr) = full_backlog();
    let (code, _, err) = support::run_with_input(
        &[
            "chat",
            "client",
            &addr.to_string(),
            "--name",
            "Ann",
            "--connect-timeout",
            "500ms",
        ],
        Vec::new(),
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("sockloop: cannot connect to {addr}: no answer within 500ms (--connect-timeout)")
    );

    let (code, _, err) = support::run_with_input(
        &["echo", "client", "127.0.0.1:9", "--connect-timeout", "0"],
        Vec::new(),
        Duration::from_secs(20),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("sockloop: "), "{err}");
}
