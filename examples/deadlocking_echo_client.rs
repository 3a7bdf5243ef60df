//! Step 2 of the progression: the echo client that deadlocks.
//!
//! What it demonstrates: the lecture's first TCP echo client sends its whole
//! input before it reads a single byte of the echo. With a short input that
//! works. With a long one it hangs forever, and no line of the program is
//! wrong on its own: the client and the server each wait for the other.
//!
//! How the deadlock builds up, one buffer at a time:
//!
//! 1. The client writes. Its bytes go into its own send buffer, travel over
//!    loopback and land in the server's receive buffer.
//! 2. The server reads a chunk and writes it back. Those bytes fill the
//!    server's send buffer and then the client's receive buffer.
//! 3. The client never reads, so its receive buffer fills up. Now the
//!    server's write blocks: there is nowhere to put the echo.
//! 4. A server blocked in `write` does not `read` any more, so the server's
//!    receive buffer fills up, then the client's send buffer. Now the
//!    client's write blocks too.
//!
//! Both programs sit in `write`, each waiting for the other to `read`.
//! Nothing will ever move again. The number of bytes the client managed to
//! write is roughly the sum of the four kernel buffers on the path.
//!
//! A real deadlock would hang this example for ever, so a watchdog ends it:
//! the socket gets a write timeout (`SO_SNDTIMEO`), and a `write` that makes
//! no progress for that long returns an error instead of blocking. The
//! example then explains what happened on stderr and exits with code 3.
//!
//! How to run it:
//!
//! ```text
//! cargo run --example deadlocking_echo_client
//! cargo run --example deadlocking_echo_client -- --bytes 1000     # small: it works
//! cargo run --example deadlocking_echo_client -- 127.0.0.1:8080 --watchdog 5
//! ```
//!
//! Arguments: `[ADDR] [--bytes N] [--watchdog SECS]`. Without `ADDR` the
//! example starts its own naive echo server on `127.0.0.1` (a free port) in a
//! background thread. `--bytes` defaults to 20 MiB, `--watchdog` to 3 seconds.
//!
//! The cure is one poll loop that reads whenever the socket is readable and
//! writes whenever it is writable, so the echo is drained while sending. The
//! next example, `minimal_reactor`, builds that loop; `reactor_with_stdin`
//! and the `sockloop echo client` command are clients that use it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

/// How many bytes the client sends when `--bytes` is not given.
const DEFAULT_BYTES: usize = 20 * 1024 * 1024;

/// How long a write may make no progress before the watchdog calls it a deadlock.
const DEFAULT_WATCHDOG_SECS: u64 = 3;

/// The exit code that means "the watchdog saw the deadlock".
const EXIT_DEADLOCK: u8 = 3;

/// The size of one read on either side; the lecture's `BUFFER_SIZE` plays this part.
const CHUNK: usize = 4096;

fn main() -> io::Result<ExitCode> {
    let Some(args) = parse_args() else {
        eprintln!("usage: deadlocking_echo_client [ADDR] [--bytes N] [--watchdog SECS]");
        return Ok(ExitCode::from(2));
    };

    // Without an address we bring our own server, so the example runs alone.
    let server_addr = match args.server {
        Some(addr) => addr,
        None => spawn_naive_echo_server()?,
    };

    let mut stream = TcpStream::connect(server_addr)?;
    eprintln!(
        "connected to {server_addr}; sending {} bytes before reading anything",
        args.n_bytes
    );

    // The watchdog. With a write timeout set, a blocking `write` that cannot
    // hand a single byte to the kernel for this long returns `WouldBlock`
    // (or `TimedOut` on some systems) instead of waiting for ever.
    let watchdog = Duration::from_secs(args.watchdog_secs);
    stream.set_write_timeout(Some(watchdog))?;
    stream.set_read_timeout(Some(watchdog))?;

    // The payload is a pattern, not random bytes, so the echo can be checked
    // byte by byte. 251 is prime, so a shifted or repeated block shows up.
    let payload: Vec<u8> = (0..args.n_bytes).map(|i| (i % 251) as u8).collect();

    // This is what the lecture's `sock.sendall(data)` does: write, and if the
    // kernel took only part, write the rest, until everything is gone. We
    // spell the loop out instead of calling `write_all` so that we can count
    // how far we got when the watchdog fires.
    //
    // A call that has to wait and times out after getting rid of some bytes
    // returns that count as progress; only a call that moves no byte at all
    // for the whole timeout fails. Offering at most 64 KiB per call keeps
    // such partial rounds short, so the watchdog fires after one or two
    // timeouts.
    let mut n_written = 0;
    while n_written < payload.len() {
        let end = payload.len().min(n_written + 16 * CHUNK);
        match stream.write(&payload[n_written..end]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n_written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                explain_deadlock(&stream, args.watchdog_secs, n_written, payload.len());
                return Ok(ExitCode::from(EXIT_DEADLOCK));
            }
            Err(e) => return Err(e),
        }
    }

    // Everything fit into the buffers on the way, so no deadlock this time.
    // Tell the server we are done (it sees end of stream after the last
    // byte), then read the whole echo back, as the lecture's client does.
    stream.shutdown(Shutdown::Write)?;
    let mut echo = Vec::with_capacity(payload.len());
    if let Err(e) = stream.read_to_end(&mut echo) {
        if is_timeout(&e) {
            eprintln!(
                "watchdog: no progress for {} s while reading the echo ({} of {} bytes arrived)",
                args.watchdog_secs,
                echo.len(),
                payload.len()
            );
            return Ok(ExitCode::from(EXIT_DEADLOCK));
        }
        return Err(e);
    }
    if echo != payload {
        eprintln!(
            "the echo differs from what was sent ({} bytes back, {} sent)",
            echo.len(),
            payload.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "all {} bytes went out and came back intact: the input was small enough \
         to fit into the kernel buffers, so nobody had to wait for the other; \
         try a larger --bytes to see the deadlock",
        payload.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Starts the lecture's echo server in a background thread and returns its
/// address.
///
/// It is a thread-per-connection blocking server: the accept loop hands each
/// connection to a new thread, and that thread reads a chunk and writes the
/// same chunk back with a blocking `write_all`, until end of stream. It never
/// reads while it writes, which is half of the deadlock.
fn spawn_naive_echo_server() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            // A failed accept only loses that one connection.
            let Ok(stream) = stream else { continue };
            thread::spawn(move || {
                // Errors end this connection's thread; there is nobody to
                // report them to, and the client sees the closed socket.
                let _ = echo_until_end(stream);
            });
        }
    });
    eprintln!("naive blocking echo server listening on {addr}");
    Ok(addr)
}

/// One connection of the naive server: read a chunk, write it back, repeat.
fn echo_until_end(mut stream: TcpStream) -> io::Result<()> {
    let mut chunk = [0u8; CHUNK];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        // This is where the server gets stuck: the client's receive buffer
        // is full, so `write_all` waits, and while it waits nobody reads.
        stream.write_all(&chunk[..n])?;
    }
}

/// Whether an error is the write (or read) timeout expiring.
///
/// Unix reports an expired `SO_SNDTIMEO` as `EAGAIN`, which Rust maps to
/// `WouldBlock`; other systems say `TimedOut`.
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Prints, on stderr, what deadlocked and why. The first line is fixed so a
/// test can look for it.
fn explain_deadlock(stream: &TcpStream, watchdog_secs: u64, n_written: usize, n_total: usize) {
    let send_buffer = socket_buffer_size(stream, libc::SO_SNDBUF);
    let receive_buffer = socket_buffer_size(stream, libc::SO_RCVBUF);
    eprintln!("watchdog: no progress for {watchdog_secs} s — deadlock");
    eprintln!("  the client wrote {n_written} of {n_total} bytes and has read none of the echo.");
    eprintln!(
        "  the client's kernel buffers hold {send_buffer} bytes (send) and {receive_buffer} bytes \
         (receive); the server has a pair of its own. What was written sits in these four buffers."
    );
    eprintln!(
        "  the server is blocked writing the echo back: the client's receive buffer is full."
    );
    eprintln!("  the client is blocked writing more data: the server's receive buffer is full,");
    eprintln!("  because a server stuck in write never reads. Each waits for the other to read,");
    eprintln!("  and nobody reads.");
    eprintln!("  the fix: multiplex reading and writing in one poll loop, so the client drains");
    eprintln!("  the echo while it sends. See the `minimal_reactor` example for the loop, and");
    eprintln!("  `reactor_with_stdin` or `sockloop echo client` for a client built on it.");
}

/// Reads a socket buffer size (`SO_SNDBUF` or `SO_RCVBUF`); 0 if unknown.
///
/// The standard library has no getter for these, so we ask the kernel
/// directly. The numbers only decorate the explanation, so a failure is not
/// an error.
fn socket_buffer_size(stream: &TcpStream, option: libc::c_int) -> usize {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the file descriptor is open for the life of `stream`, and
    // `value`/`len` are valid for writes of an int, as getsockopt expects.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if result == 0 {
        usize::try_from(value).unwrap_or(0)
    } else {
        0
    }
}

/// The parsed command line.
struct Args {
    /// The server to talk to; `None` means "start our own".
    server: Option<SocketAddr>,
    /// How many bytes to send.
    n_bytes: usize,
    /// How many seconds without progress count as a deadlock.
    watchdog_secs: u64,
}

/// Parses `[ADDR] [--bytes N] [--watchdog SECS]`; `None` on any mistake.
fn parse_args() -> Option<Args> {
    let mut args = Args {
        server: None,
        n_bytes: DEFAULT_BYTES,
        watchdog_secs: DEFAULT_WATCHDOG_SECS,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--bytes" => args.n_bytes = words.next()?.parse().ok()?,
            "--watchdog" => args.watchdog_secs = words.next()?.parse().ok().filter(|&s| s > 0)?,
            _ if args.server.is_none() && !word.starts_with('-') => {
                args.server = Some(word.parse().ok()?)
            }
            _ => return None,
        }
    }
    Some(args)
}
