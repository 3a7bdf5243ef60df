//! Step 1 of the progression: the lecture's first UDP chat, and why it stalls.
//!
//! What it demonstrates: a program with one thread and two blocking calls
//! can only wait for one thing at a time. Each turn of the loop below first
//! waits for you to type a line, sends it, and then waits for one datagram
//! from the peer. So:
//!
//! - while it waits for your input, it cannot receive: a message from the
//!   peer sits unread in the socket's receive buffer until you press Enter;
//! - while it waits to receive, it cannot send: whatever you type stays in
//!   the terminal until the peer says something first.
//!
//! The two peers end up taking strict turns, and if both wait to receive
//! (or both wait for input) at the same time, the chat stands still. To make
//! the waiting visible, the program prints a line on stderr right before
//! each blocking call: `[blocked in stdin read_line]` and
//! `[blocked in recv_from]`.
//!
//! How to run it, in two terminals:
//!
//! ```text
//! cargo run --example blocking_udp_chat -- 8080 8081
//! cargo run --example blocking_udp_chat -- 8081 8080
//! ```
//!
//! Arguments: `PORT [PEER_PORT]`. The chat binds `127.0.0.1:PORT` and sends
//! to `127.0.0.1:PEER_PORT`. Without `PEER_PORT` it learns its peer from the
//! first datagram that arrives, as the lecture's `Peer` class does; until
//! then, lines you type are not sent anywhere. End the chat with end of input
//! (Ctrl+D): the program then exits with code 0.
//!
//! The cure is in the later examples: wait for stdin and the socket at the
//! same time, with one poll call (`reactor_with_stdin`).

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;

/// Room for one datagram. A UDP payload cannot be larger than this.
const MAX_DATAGRAM: usize = 65_507;

fn main() -> io::Result<ExitCode> {
    let Some((port, peer_port)) = parse_args() else {
        eprintln!("usage: blocking_udp_chat PORT [PEER_PORT]");
        return Ok(ExitCode::from(2));
    };

    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?;
    eprintln!("bound to {}", socket.local_addr()?);

    // The peer we send to: given on the command line, or learnt later from
    // the sender address of the first datagram we receive.
    let mut peer: Option<SocketAddr> =
        peer_port.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)));

    let stdin = io::stdin();
    let mut stdout = io::stdout();
    let mut line = String::new();
    let mut datagram = vec![0u8; MAX_DATAGRAM];

    loop {
        // First blocking call: wait for the user. Nothing else can happen
        // while we sit here, however many datagrams arrive meanwhile.
        eprintln!("[blocked in stdin read_line]");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            // End of input (Ctrl+D, or the end of a piped file): we are done.
            return Ok(ExitCode::SUCCESS);
        }
        let text = line.trim_end_matches(['\r', '\n']);
        match peer {
            Some(peer) => {
                // Sending a datagram does not wait for the peer: the kernel
                // takes it, or drops it, and `send_to` returns at once.
                socket.send_to(text.as_bytes(), peer)?;
            }
            None => eprintln!("no peer yet: the line was not sent"),
        }

        // Second blocking call: wait for one datagram. Nothing the user
        // types is read while we sit here.
        eprintln!("[blocked in recv_from]");
        let (n, sender) = socket.recv_from(&mut datagram)?;
        peer.get_or_insert(sender);
        let message = String::from_utf8_lossy(&datagram[..n]);
        writeln!(stdout, "{sender}: {message}")?;
        stdout.flush()?;
    }
}

/// Parses `PORT [PEER_PORT]`; `None` when the arguments do not fit.
fn parse_args() -> Option<(u16, Option<u16>)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [port] => Some((port.parse().ok()?, None)),
        [port, peer_port] => Some((port.parse().ok()?, Some(peer_port.parse().ok()?))),
        _ => None,
    }
}
