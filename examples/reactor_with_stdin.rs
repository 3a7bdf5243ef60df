//! Step 4 of the progression: the reactor loop with stdin as a second source.
//!
//! What it demonstrates: a TCP echo client that cannot deadlock. It waits for
//! the socket and for stdin with a single `poll`, and moves bytes in both
//! directions as they become ready: stdin to the socket, the socket to
//! stdout. It reads the echo while it is still sending, which is exactly
//! what the client of `deadlocking_echo_client` failed to do.
//!
//! New compared to `minimal_reactor`:
//!
//! - stdin is registered with the poll through `mio::unix::SourceFd`, after
//!   being switched to non-blocking mode; a guard restores its original mode
//!   on every way out of the program;
//! - a stdin that epoll refuses (a regular file, `/dev/null`) is read in
//!   bounded chunks between polls instead;
//! - backpressure on the input side: stdin is not read while more than
//!   64 KiB wait to be sent;
//! - a half close: at end of input the client shuts down its sending half,
//!   keeps printing what comes back, and exits 0 when the server closes.
//!
//! How to run it, with an echo server such as `minimal_reactor` running:
//!
//! ```text
//! cargo run --example minimal_reactor -- 8080
//! cargo run --example reactor_with_stdin -- 127.0.0.1:8080
//! head -c 20000000 /dev/urandom | cargo run --example reactor_with_stdin -- 127.0.0.1:8080 | wc -c
//! ```
//!
//! Arguments: `ADDR`, the server as `HOST:PORT`. Type lines and see them come
//! back; end the input with Ctrl+D.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// The token of the connection to the server.
const SOCKET: Token = Token(0);

/// The token of standard input.
const STDIN: Token = Token(1);

/// Stop reading stdin while more than this many bytes wait for the socket.
const MAX_PENDING: usize = 64 * 1024;

/// The size of one read, from stdin or from the socket.
const CHUNK: usize = 16 * 1024;

fn main() -> io::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr] = args.as_slice() else {
        eprintln!("usage: reactor_with_stdin ADDR");
        return Ok(ExitCode::from(2));
    };

    // Connecting is the one step we let block: nothing else is going on yet,
    // and a refused connection is reported right here. Afterwards the socket
    // is switched to non-blocking mode and handed to mio.
    let std_socket = std::net::TcpStream::connect(addr.as_str())?;
    std_socket.set_nonblocking(true)?;
    let mut socket = TcpStream::from_std(std_socket);

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(16);
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)?;

    // From here on stdin is non-blocking. The guard lives until `main`
    // returns, whether by `?` or normally (or by a panic, which unwinds), and
    // puts the original flags back then. Only a signal such as Ctrl+C ends
    // the program without running it; the full `sockloop` handles signals
    // inside the loop for that reason.
    let _stdin_mode = NonBlockingStdin::enable()?;

    // Registering stdin. epoll watches things that can be "not ready yet":
    // sockets, pipes, terminals. A regular file is always ready (a read
    // returns data or end of file at once), so epoll refuses it with EPERM,
    // and so it does for `/dev/null`. Such a stdin is simply not registered:
    // we treat it as always readable and read one bounded chunk per turn,
    // polling the socket with a zero timeout in between, so a large file can
    // neither starve the socket nor fill memory.
    let stdin_registered = match poll.registry().register(
        &mut SourceFd(&libc::STDIN_FILENO),
        STDIN,
        Interest::READABLE,
    ) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => false,
        Err(e) => return Err(e),
    };

    // Unbuffered handles on fd 0 and fd 1. `File` reads and writes exactly
    // what we ask, with no buffer of its own hiding bytes from the loop.
    // They are duplicates of the descriptors, so dropping them leaves the
    // real stdin and stdout open.
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);

    // Bytes read from stdin that the socket has not accepted yet.
    let mut to_socket: Vec<u8> = Vec::new();
    // False once stdin has reached end of input.
    let mut stdin_open = true;
    // "Stdin may have bytes for us." A stdin event sets it, and only a read
    // that returns `WouldBlock` clears it. Reading can also stop because
    // `to_socket` is full; then this stays true, because that data has
    // already been announced and no new event will come for it.
    let mut stdin_ready = true;
    // True until we shut down our sending half of the connection.
    let mut sending = true;
    // Whether `WRITABLE` is part of the socket's registered interest.
    let mut wants_writable = false;

    loop {
        // Wait for events, unless stdin has bytes we have room for: then
        // only look at what is ready (timeout zero) and carry on reading.
        let work_waiting = stdin_open && stdin_ready && to_socket.len() < MAX_PENDING;
        let timeout = work_waiting.then_some(Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }

        let mut socket_event = false;
        for event in events.iter() {
            match event.token() {
                STDIN => stdin_ready = true,
                SOCKET => socket_event = true,
                _ => {}
            }
        }

        // 1. Socket to stdout: everything that has arrived, until WouldBlock.
        if socket_event && !copy_socket_to_stdout(&mut socket, &mut stdout)? {
            // The server closed the connection: we are done.
            if stdin_open || !to_socket.is_empty() {
                eprintln!("the server closed the connection before all input was sent");
            }
            return Ok(ExitCode::SUCCESS);
        }

        // 2. Stdin to the pending buffer, while there is room.
        if stdin_open && stdin_ready {
            match read_stdin(&mut stdin, &mut to_socket)? {
                // Only a registered stdin will tell us when it has more.
                // One we could not register sends no events, so it must stay
                // "ready" (a file never says WouldBlock anyway).
                StdinRead::Drained => stdin_ready = !stdin_registered,
                // Backpressure: stop here, but stay "ready" (see above), so
                // reading resumes as soon as the socket has taken some bytes.
                StdinRead::BufferFull => {}
                StdinRead::EndOfInput => {
                    stdin_open = false;
                    if stdin_registered {
                        poll.registry()
                            .deregister(&mut SourceFd(&libc::STDIN_FILENO))?;
                    }
                }
            }
        }

        // 3. The pending buffer to the socket, as much as it takes now.
        write_until_blocked(&mut socket, &mut to_socket)?;

        // 4. All input is sent: shut down our sending half. The server sees
        //    end of stream after the last byte, finishes the echo and closes,
        //    which step 1 notices.
        if sending && !stdin_open && to_socket.is_empty() {
            socket.shutdown(Shutdown::Write)?;
            sending = false;
        }

        // 5. Ask for WRITABLE only while bytes wait for the socket.
        let wants_writable_now = !to_socket.is_empty();
        if wants_writable_now != wants_writable {
            let interest = if wants_writable_now {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry().reregister(&mut socket, SOCKET, interest)?;
            wants_writable = wants_writable_now;
        }
    }
}

/// Puts stdin into non-blocking mode and back.
///
/// The `O_NONBLOCK` flag belongs to the open file, which stdin shares with
/// the shell that started us and often with stdout and stderr (all three are
/// the same terminal). Left behind, it would make the next program reading
/// this terminal or pipe fail with "Resource temporarily unavailable". So
/// the original flags are restored in `Drop`.
struct NonBlockingStdin {
    original_flags: libc::c_int,
}

impl NonBlockingStdin {
    fn enable() -> io::Result<Self> {
        // SAFETY: F_GETFL and F_SETFL take no pointers; fcntl only reads and
        // sets the flags of fd 0 and reports failure as -1.
        let original_flags = unsafe { libc::fcntl(libc::STDIN_FILENO, libc::F_GETFL) };
        if original_flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let nonblocking = original_flags | libc::O_NONBLOCK;
        // SAFETY: as above.
        if unsafe { libc::fcntl(libc::STDIN_FILENO, libc::F_SETFL, nonblocking) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { original_flags })
    }
}

impl Drop for NonBlockingStdin {
    fn drop(&mut self) {
        // SAFETY: as in `enable`. If this fails there is nothing better to
        // do on the way out, so the result is ignored.
        unsafe {
            libc::fcntl(libc::STDIN_FILENO, libc::F_SETFL, self.original_flags);
        }
    }
}

/// Why `read_stdin` stopped.
enum StdinRead {
    /// Stdin has nothing more right now (`WouldBlock`).
    Drained,
    /// The pending buffer reached `MAX_PENDING`; stdin may have more.
    BufferFull,
    /// Stdin reached end of input.
    EndOfInput,
}

/// Reads stdin into `to_socket` until it blocks, ends, or the buffer is full.
fn read_stdin(stdin: &mut File, to_socket: &mut Vec<u8>) -> io::Result<StdinRead> {
    let mut chunk = [0u8; CHUNK];
    while to_socket.len() < MAX_PENDING {
        // Never read more than fits: the limit is a promise about memory.
        let room = (MAX_PENDING - to_socket.len()).min(CHUNK);
        match stdin.read(&mut chunk[..room]) {
            Ok(0) => return Ok(StdinRead::EndOfInput),
            Ok(n) => to_socket.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(StdinRead::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(StdinRead::BufferFull)
}

/// Copies what the socket has received to stdout, until the socket would
/// block (edge-triggered: anything left unread now would get no new event).
/// Returns `false` when the server has closed the connection.
fn copy_socket_to_stdout(socket: &mut TcpStream, stdout: &mut File) -> io::Result<bool> {
    let mut chunk = [0u8; CHUNK];
    loop {
        match socket.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => write_stdout(stdout, &chunk[..n])?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes the pending buffer to the socket until it is empty or the socket
/// would block. The bytes a short write did not take stay at the front.
fn write_until_blocked(socket: &mut TcpStream, to_socket: &mut Vec<u8>) -> io::Result<()> {
    while !to_socket.is_empty() {
        match socket.write(to_socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                to_socket.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bytes` to stdout.
///
/// Stdout is not part of the loop: a client may wait for its own terminal
/// or pipe. But when stdin and stdout are the same terminal they share the
/// non-blocking flag set above, and a write may then say `WouldBlock`; in
/// that case we wait for stdout alone with poll(2) and try again.
fn write_stdout(stdout: &mut File, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stdout.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_until_stdout_writable()?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Blocks until stdout can take more bytes.
fn wait_until_stdout_writable() -> io::Result<()> {
    let mut stdout_fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, no timeout (-1 waits).
    if unsafe { libc::poll(&mut stdout_fd, 1, -1) } < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}
