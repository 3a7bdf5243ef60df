//! Opening sockets the way every command wants them, with errors that name
//! the address: listeners with a deep accept queue, non-blocking connects,
//! and the "ready" line scripts wait for.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::sys;

/// Accept-queue length asked of the kernel (it caps it at `net.core.somaxconn`).
/// Deep enough that a burst of thousands of connects is not answered with SYN retries.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds a non-blocking TCP listener (SO_REUSEADDR, backlog [`LISTEN_BACKLOG`]).
pub fn listen_tcp(bind: IpAddr, port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::new(bind, port);
    let fail = |source| Error::Bind {
        addr,
        source,
        door: None,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        // Let [::] take IPv4 clients as well, as most servers do.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Binds a non-blocking UDP socket.
pub fn bind_udp(bind: IpAddr, port: u16) -> Result<UdpSocket> {
    let addr = SocketAddr::new(bind, port);
    UdpSocket::bind(addr).map_err(|source| Error::Bind {
        addr,
        source,
        door: None,
    })
}

/// Connects to a server with a blocking handshake of at most `timeout`, then
/// hands back a non-blocking stream. Only for code without a loop (the
/// teaching `echo client --naive`): clients connect inside the reactor
/// (`cmd::dial`).
pub fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let fail = |source| Error::Connect { addr, source };
    let stream = StdTcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_nodelay(true).map_err(fail)?;
    stream.set_nonblocking(true).map_err(fail)?;
    Ok(TcpStream::from_std(stream))
}

/// Resolves `input` (HOST:PORT) and connects, blocking, to the first of its
/// addresses that accepts. Returns the stream and the address it reached.
pub fn connect_to(input: &str, timeout: Duration) -> Result<(TcpStream, SocketAddr)> {
    let mut last = None;
    for addr in crate::addr::resolve_all(input)? {
        match connect_tcp(addr, timeout) {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("resolve_all never returns an empty list"))
}

/// Starts a non-blocking connect to `addr` for the reactor to finish
/// (`Ctx::adopt` with `connecting`), optionally from a chosen `source`
/// address. The source is bound with `IP_BIND_ADDRESS_NO_PORT`: the port is
/// picked at `connect()` from the whole 4-tuple, so the bind itself uses up
/// no ephemeral port. `EINPROGRESS` is the normal answer and not an error.
pub fn connect_nonblocking(addr: SocketAddr, source: Option<SocketAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if let Some(source) = source {
        sys::set_bind_address_no_port(socket.as_raw_fd())?;
        socket.bind(&source.into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Prints the line scripts wait for: `<what> listening on IP:PORT` (stderr,
/// through its sink: never waited for). The address is always the last word.
pub fn announce(what: &str, addr: SocketAddr) {
    crate::errln!("{what} listening on {addr}");
}
