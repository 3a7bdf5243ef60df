//! `sockloop echo client`: stdin → server → stdout, both directions at once.
//!
//! The lecture's echo client deadlocks because it sends all its input before
//! it reads: the server blocks writing the echo into the client's full
//! receive buffer, the client blocks writing into the server's. Here stdin
//! and the socket are sources of one poll, and bytes move each way as soon
//! as they can, so the same input always finishes.
//!
//! Bounds: reading stdin pauses while the socket's output buffer is full, and
//! (with `--verify`) while more than [`VERIFY_WINDOW`] bytes are still
//! waiting for their echo, so `sockloop rand | sockloop echo client` runs for
//! ever in constant memory. Stdout is the client's data: when its reader
//! falls behind, the client stops reading the socket (the server then stops
//! reading it, and stdin pauses in turn) until stdout has room again, and at
//! the end it waits for stdout to take everything (Ctrl+C ends that wait).

use std::collections::VecDeque;

use clap::Args as ClapArgs;

use super::dial::{DialArgs, Dialed, Dialer};
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::reactor::{console, ConnId, Ctx, Event, Handler, Queued, StdoutRoom, SCRATCH_SIZE};
use crate::sys;
use crate::tls::ClientTlsArgs;

/// Bytes sent and not yet echoed that `--verify` keeps before it pauses stdin.
pub const VERIFY_WINDOW: usize = 16 * 1024 * 1024;

/// Output queued for the server before stdin is paused.
const OUT_LIMIT: usize = 64 * 1024;

/// The connection's bound on queued output: [`OUT_LIMIT`] plus the one chunk
/// of stdin (at most [`SCRATCH_SIZE`]) read before the pause, so no byte of
/// the stream is ever refused.
const QUEUE_LIMIT: usize = OUT_LIMIT + SCRATCH_SIZE;

/// The long `--help` text of `echo client` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str =
    "TCP echo client: sends stdin to an echo server and prints what comes back, \
        moving bytes both ways as they become ready, so it never deadlocks however much \
        input there is.\n\n\
        At the end of stdin it shuts down its sending side, prints every byte still coming \
        back, and exits 0 once the server closes.";

/// Command-line options of `echo client`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "TCP echo client: stdin to the server, the echo to stdout, interleaved",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  echo hello | sockloop echo client localhost:8080\n  \
        head -c 20000000 /dev/urandom | sockloop echo client 127.0.0.1:8080 --verify > /dev/null\n  \
        sockloop rand | sockloop echo client [::1]:8080 | head"
)]
pub struct Args {
    /// The server: HOST:PORT, [IPv6]:PORT or IPv4:PORT.
    pub server: String,
    /// Check every echoed byte against what was sent; exit 1 at the first difference.
    #[arg(long, conflicts_with = "naive")]
    pub verify: bool,
    /// Teaching only: behave like the lecture's first client — send all of stdin,
    /// then read. With enough input it deadlocks; a watchdog explains why.
    #[arg(long)]
    pub naive: bool,
    /// TLS.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Connecting.
    #[command(flatten)]
    pub dial: DialArgs,
    /// With --naive: seconds without progress before the watchdog steps in.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub watchdog: u64,
}

/// The echo client's handler: one connection, plus stdin and stdout.
struct EchoClient {
    /// Makes the connection; hands it over once it is up.
    dialer: Dialer,
    /// The connection, once up.
    conn: Option<ConnId>,
    verify: bool,
    /// Bytes sent and not yet echoed (only with `--verify`).
    pending: VecDeque<u8>,
    /// Offset in the stream of the first byte of `pending`.
    verified: u64,
    stdin_done: bool,
    outcome: Result<()>,
}

impl EchoClient {
    fn finish(&mut self, cx: &mut Ctx<()>, outcome: Result<()>) {
        if self.outcome.is_ok() {
            self.outcome = outcome;
        }
        cx.stop();
    }

    /// Pauses stdin while the socket or the verify window is full.
    fn regulate_stdin(&mut self, cx: &mut Ctx<()>) {
        let Some(conn) = self.conn else {
            return;
        };
        let queued = cx.conn(conn).map_or(0, |c| c.out_len());
        if queued >= OUT_LIMIT || self.pending.len() >= VERIFY_WINDOW {
            cx.pause_stdin();
        } else {
            cx.resume_stdin();
        }
    }

    fn check_echo(&mut self, bytes: &[u8]) -> Result<()> {
        for (i, &got) in bytes.iter().enumerate() {
            let offset = self.verified + i as u64;
            match self.pending.pop_front() {
                Some(sent) if sent == got => {}
                Some(sent) => return Err(Error::Mismatch { offset, sent, got }),
                None => {
                    return Err(Error::Failed(format!(
                        "echo check: the server sent byte {offset}, which was never sent to it"
                    )))
                }
            }
        }
        self.verified += bytes.len() as u64;
        Ok(())
    }
}

impl Handler for EchoClient {
    type Conn = ();

    fn handle(&mut self, cx: &mut Ctx<()>, event: Event<'_>) {
        match self.dialer.on_event(cx, &event) {
            Dialed::NotMine => {}
            Dialed::Waiting => return,
            Dialed::Connected(conn) => {
                self.conn = Some(conn);
                return self.regulate_stdin(cx);
            }
            Dialed::Failed(error) => return self.finish(cx, Err(error)),
        }
        let Some(conn) = self.conn else {
            return;
        };
        match event {
            Event::Stdin(bytes) => {
                if self.verify {
                    self.pending.extend(bytes);
                }
                if let Queued::OverLimit { queued } = cx.send(conn, bytes) {
                    // Stdin pauses at OUT_LIMIT, so this means a bug, not a slow server.
                    return self.finish(
                        cx,
                        Err(Error::Failed(format!(
                            "{} bytes of input refused with {queued} bytes queued",
                            bytes.len()
                        ))),
                    );
                }
                self.regulate_stdin(cx);
            }
            Event::StdinEof => {
                self.stdin_done = true;
                cx.shutdown_write(conn);
            }
            Event::Drained(_) => self.regulate_stdin(cx),
            Event::Data(_, bytes) => {
                if self.verify {
                    if let Err(e) = self.check_echo(bytes) {
                        return self.finish(cx, Err(e));
                    }
                    self.regulate_stdin(cx);
                }
                match cx.stdout_data(bytes) {
                    StdoutRoom::Room => {}
                    // Backpressure: no more echo until stdout has taken this.
                    StdoutRoom::Full => cx.hold_reads(conn),
                    StdoutRoom::Closed => self.finish(cx, stdout_outcome()),
                }
            }
            Event::StdoutReady => cx.release_reads(conn),
            Event::StdoutClosed => self.finish(cx, stdout_outcome()),
            Event::PeerClosed(conn) => {
                let outcome = if !self.stdin_done {
                    Err(Error::Failed(
                        "the server closed the connection before the input ended".into(),
                    ))
                } else if self.verify && !self.pending.is_empty() {
                    Err(Error::Failed(format!(
                        "the server closed the connection with {} bytes not echoed (from offset {})",
                        self.pending.len(),
                        self.verified
                    )))
                } else {
                    Ok(())
                };
                cx.close(conn, CloseReason::Done);
                self.finish(cx, outcome);
            }
            Event::Closed(_, reason) => {
                let outcome = match reason {
                    CloseReason::Done => Ok(()),
                    other => Err(Error::Failed(format!(
                        "connection to the server lost: {other}"
                    ))),
                };
                self.finish(cx, outcome);
            }
            Event::Signal(_) => self.finish(cx, Ok(())),
            _ => {}
        }
    }
}

/// Runs the echo client until the server closes after the end of stdin.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    if args.naive {
        if args.tls.tls {
            return Err(Error::Usage(
                "--naive speaks plain TCP only; drop --tls".into(),
            ));
        }
        return run_naive(args);
    }
    let (mut reactor, dialer) =
        super::open_client(&args.server, &args.dial, &args.tls, QUEUE_LIMIT, trace)?;
    let mut client = EchoClient {
        dialer,
        conn: None,
        verify: args.verify,
        pending: VecDeque::new(),
        verified: 0,
        stdin_done: false,
        outcome: Ok(()),
    };
    reactor
        .run(&mut client)
        .map_err(|e| Error::io("polling", e))?;
    // What stdout holds is the echo the user asked for: wait for its reader.
    reactor
        .drain_stdout()
        .map_err(|e| Error::io("polling", e))?;
    if client.verify && client.outcome.is_ok() {
        log::info!("verified {} bytes", client.verified);
    }
    client.outcome
}

/// Standard output failed: a reader that closed the pipe has had enough
/// (exit 0); anything else is an error.
fn stdout_outcome() -> Result<()> {
    match console::stdout_failure() {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing to stdout", e))
        }
        _ => Ok(()),
    }
}

/// `--naive`: the lecture's deadlocking client, on purpose. Blocking calls,
/// no poll, no reactor (so no signal handlers: Ctrl+C ends it as it ends any
/// blocking program): write everything, then read. The write timeout is the watchdog.
fn run_naive(args: &Args) -> Result<()> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    let (stream, server) = crate::net::connect_to(&args.server, args.dial.connect_timeout)?;
    let mut stream: std::net::TcpStream = stream.into();
    let io_err = |what: &str| {
        let what = what.to_string();
        move |e| Error::io(what, e)
    };
    stream
        .set_nonblocking(false)
        .map_err(io_err("socket mode"))?;
    let watchdog = std::time::Duration::from_secs(args.watchdog);
    stream
        .set_write_timeout(Some(watchdog))
        .map_err(io_err("socket timeout"))?;
    let mut stdin = std::io::stdin().lock();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    loop {
        let n = match stdin.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading stdin", e)),
        };
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            match stream.write(rest) {
                Ok(written) => {
                    sent += written as u64;
                    rest = &rest[written..];
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let queues = sys::socket_queues(stream.as_raw_fd()).ok();
                    explain_deadlock(server, args.watchdog, sent, queues);
                    return Err(Error::Failed(format!(
                        "deadlock: no progress for {} s after sending {sent} bytes (--naive)",
                        args.watchdog
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("sending", e)),
            }
        }
    }
    // Measured now, while the echo still waits in them: the buffers this
    // end had when everything was sent.
    let buffers = kernel_buffers(&stream);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut echo = Vec::new();
    stream
        .set_read_timeout(Some(watchdog))
        .map_err(io_err("socket timeout"))?;
    stream
        .read_to_end(&mut echo)
        .map_err(io_err("reading the echo"))?;
    match std::io::stdout().write_all(&echo) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(Error::io("writing to stdout", e)),
    }
    let _ = writeln!(std::io::stderr(), "{}", no_deadlock_lesson(sent, buffers));
    Ok(())
}

/// The most the kernel buffers between us and the server can hold: our
/// send and receive buffers as they are now, and the server's at the
/// system's maximum (it reads, so its receive buffer may have grown to it).
/// `None` when a size cannot be read.
fn kernel_buffers(stream: &std::net::TcpStream) -> Option<u64> {
    let socket = socket2::SockRef::from(stream);
    let ours = socket.send_buffer_size().ok()? + socket.recv_buffer_size().ok()?;
    let most = |setting: &str| -> Option<u64> {
        sys::proc_sys(setting)?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    let theirs = most("net/ipv4/tcp_rmem")? + most("net/ipv4/tcp_wmem")?;
    Some(ours as u64 + theirs)
}

/// What `--naive` says when everything was sent without a stall: either it
/// all fitted in the kernel buffers, or the server held it in its memory.
fn no_deadlock_lesson(sent: u64, buffers: Option<u64>) -> String {
    match buffers {
        Some(room) if sent > room => format!(
            "what you just saw: the server took all {sent} bytes while we read none of its echo, \
             but the kernel buffers between us hold at most about {room} (ours now, the server's \
             at the system maximum). So the server kept reading without being able to send, and \
             queued the echo in its own memory: it applies no backpressure (like `sockloop echo \
             server --unbounded`). Sending everything before reading worked only because that \
             server grew; with enough input it runs out of memory instead. Against a server with \
             backpressure the same input deadlocks."
        ),
        _ => format!(
            "what you just saw: all {sent} bytes fitted in the kernel buffers, so sending everything \
             before reading happened to work. Try more input (e.g. 20 MB) to see it stall."
        ),
    }
}

/// The watchdog's diagnosis, with the kernel's queues as evidence.
fn explain_deadlock(
    server: std::net::SocketAddr,
    secs: u64,
    sent: u64,
    queues: Option<(usize, usize)>,
) {
    let evidence = match queues {
        Some((inq, outq)) => format!(
            "  our receive queue holds {inq} bytes of echo nobody reads (SIOCINQ),\n  \
             our send queue holds {outq} bytes the server has not taken (SIOCOUTQ)."
        ),
        None => "  (the kernel's queue sizes could not be read)".to_string(),
    };
    // Plain blocking writes: this mode has no loop, and leaves the
    // descriptors' flags alone.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "watchdog: no progress for {secs} s — deadlock\n\
         We sent {sent} bytes to {server} and read nothing back, as the lecture's first client does.\n\
         {evidence}\n\
         The server cannot send us its echo: our receive buffer is full because we are not\n\
         reading. So it stops reading what we send (a blocking server is stuck in its write;\n\
         sockloop's server pauses that client by backpressure) and its receive buffer fills.\n\
         We are blocked writing into it. Each side waits for the other; neither can move.\n\
         what you just saw: sending everything before reading deadlocks once the input is larger\n\
         than the kernel buffers. Without --naive, stdin and the socket share one poll and bytes\n\
         move both ways as they become ready, so the same input finishes."
    );
}
