//! The UDP socket details that std and mio leave out, so the reactor can tell
//! a command *which* peer vanished and how many datagrams the kernel threw
//! away.
//!
//! Why it exists: a plain `recv_from` cannot answer either question.
//!
//! * **Who vanished.** On Linux an unconnected UDP socket hears about an ICMP
//!   "port unreachable" only when `IP_RECVERR` (`IPV6_RECVERR`) is set. The
//!   kernel then keeps one report per ICMP message on the socket's *error
//!   queue*, readable with `recvmsg(MSG_ERRQUEUE)`; each report's address
//!   (`msg_name`) is the destination of the datagram that bounced — the exact
//!   peer — and its `sock_extended_err` says what happened. The same error
//!   is also left pending on the socket, so the next ordinary `recvmsg` or
//!   `sendto` fails once with `ECONNREFUSED`; [`recv_datagram`] callers read
//!   the error queue then, and [`send_to`] retries the send it spoiled.
//! * **What the kernel dropped.** With `SO_RXQ_OVFL` set, every datagram
//!   carries a control message with the socket's running count of datagrams
//!   dropped because the receive buffer was full ([`Datagram::drops`]);
//!   [`drops_now`] reads the same counter directly.
//!
//! What it must not do: decide anything. It does not remove peers, retry
//! beyond the one spoiled send, log, or know about commands or the poll. Every
//! `unsafe` block of the UDP path lives here, next to its SAFETY note.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use mio::net::UdpSocket;
use socket2::SockRef;

/// The largest UDP payload over IPv4 (65,535 − 20 bytes of IP − 8 of UDP).
/// The reactor's scratch buffer holds it whole.
pub const MAX_DATAGRAM: usize = 65_507;

/// How many times [`send_to`] tries again when a send fails only because an
/// earlier ICMP report was still pending on the socket.
const SPOILED_SEND_RETRIES: usize = 3;

/// Room for the control messages of one receive: a `sock_extended_err` plus
/// its offender address, or the `SO_RXQ_OVFL` counter. `u64`s keep it aligned
/// for `cmsghdr`.
const CONTROL_WORDS: usize = 32;

/// Asks the kernel for the two reports this module reads: ICMP errors on the
/// error queue (`IP_RECVERR`, and `IPV6_RECVERR` on an IPv6 socket) and the
/// drop counter on every datagram (`SO_RXQ_OVFL`).
pub fn enable_reports(socket: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    if ipv6 {
        set_int_option(fd, libc::SOL_IPV6, libc::IPV6_RECVERR, 1)?;
        // IPv4 peers of a dual-stack socket report through the IPv4 option;
        // a v6-only socket may refuse it, which costs nothing.
        let _ = set_int_option(fd, libc::SOL_IP, libc::IP_RECVERR, 1);
    } else {
        set_int_option(fd, libc::SOL_IP, libc::IP_RECVERR, 1)?;
    }
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

/// One datagram, received into the front of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes of the datagram now at the start of the buffer.
    pub len: usize,
    /// Who sent it.
    pub from: SocketAddr,
    /// The datagram was longer than the buffer and its tail was cut off.
    pub truncated: bool,
    /// The socket's running count of datagrams the kernel dropped (receive
    /// buffer full) before this one was queued, when `SO_RXQ_OVFL` is on and
    /// the count is not zero (the kernel omits a zero count).
    pub drops: Option<u32>,
}

/// A `recvmsg` header over one data buffer, a slot for the sender's address
/// and a control buffer, all owned by the caller (who must keep them alive
/// while the header is used).
fn recv_header(
    name: &mut libc::sockaddr_storage,
    iov: &mut libc::iovec,
    control: &mut [u64; CONTROL_WORDS],
) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header (and
    // fills any padding fields some libcs add).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(control) as _;
    msg
}

/// Receives one datagram with `recvmsg`, reading the drop counter as well.
///
/// Errors are the socket's: `WouldBlock` when it is empty, and — once per
/// ICMP report — the report's error (say `ConnectionRefused`); then the
/// details wait on the error queue for [`recv_error`].
pub fn recv_datagram(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    let mut name = zeroed_storage();
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg = recv_header(&mut name, &mut iov, &mut control);
    // SAFETY: every pointer in `msg` points at a live local buffer of the
    // length stated next to it; the kernel writes within those lengths.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = sockaddr_to_std(&name, msg.msg_namelen as usize).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address")
    })?;
    let mut drops = None;
    for_each_cmsg(&msg, |level, kind, data| {
        if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL && data.len() >= 4 {
            drops = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
        }
    });
    Ok(Datagram {
        len: (n as usize).min(buf.len()),
        from,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        drops,
    })
}

/// One report taken from the socket's error queue.
#[derive(Debug)]
pub struct QueuedError {
    /// The destination of the datagram the report is about — for an ICMP
    /// error, the peer that could not be reached. `None` if the kernel gave
    /// no usable address.
    pub peer: Option<SocketAddr>,
    /// What happened, as an errno (`ConnectionRefused` for port unreachable).
    pub error: io::Error,
    /// The report came from an ICMP (or ICMPv6) "port unreachable": nothing
    /// listens on the peer's port any more.
    pub port_unreachable: bool,
    /// Who sent the ICMP message (`SO_EE_OFFENDER`), when known.
    pub offender: Option<SocketAddr>,
}

/// Takes the oldest report off the socket's error queue; `Ok(None)` when the
/// queue is empty. Datagrams are not touched.
pub fn recv_error(socket: &impl AsRawFd) -> io::Result<Option<QueuedError>> {
    let mut name = zeroed_storage();
    let mut control = [0u64; CONTROL_WORDS];
    // The error queue hands back the head of the bounced datagram; it is not needed.
    let mut payload = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut msg = recv_header(&mut name, &mut iov, &mut control);
    // SAFETY: every pointer in `msg` points at a live local buffer of the
    // stated length. MSG_ERRQUEUE never blocks.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let peer = sockaddr_to_std(&name, msg.msg_namelen as usize);
    let mut report = None;
    for_each_cmsg(&msg, |level, kind, data| {
        let is_recverr = (level == libc::SOL_IP && kind == libc::IP_RECVERR)
            || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR);
        if is_recverr && report.is_none() {
            report = parse_extended_err(data);
        }
    });
    let Some((errno, origin, offender)) = report else {
        return Ok(Some(QueuedError {
            peer,
            error: io::Error::other("error-queue report without details"),
            port_unreachable: false,
            offender: None,
        }));
    };
    let from_icmp = origin == libc::SO_EE_ORIGIN_ICMP || origin == libc::SO_EE_ORIGIN_ICMP6;
    Ok(Some(QueuedError {
        peer,
        error: io::Error::from_raw_os_error(errno),
        port_unreachable: from_icmp && errno == libc::ECONNREFUSED,
        offender,
    }))
}

/// Reads a `sock_extended_err` and the offender address that follows it:
/// (errno, origin, offender).
fn parse_extended_err(data: &[u8]) -> Option<(i32, u8, Option<SocketAddr>)> {
    let size = mem::size_of::<libc::sock_extended_err>();
    if data.len() < size {
        return None;
    }
    // SAFETY: `data` holds at least one sock_extended_err (checked above);
    // read_unaligned copes with any alignment.
    let ee: libc::sock_extended_err = unsafe {
        data.as_ptr()
            .cast::<libc::sock_extended_err>()
            .read_unaligned()
    };
    let rest = &data[size..];
    let mut storage = zeroed_storage();
    let len = rest.len().min(mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `len` bytes, no more than either side holds, into a
    // sockaddr_storage we own; any bytes are a valid value for its fields.
    unsafe {
        std::ptr::copy_nonoverlapping(
            rest.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    let offender = sockaddr_to_std(&storage, len);
    Some((ee.ee_errno as i32, ee.ee_origin, offender))
}

/// Calls `f(level, type, data)` for each control message of a received `msg`.
fn for_each_cmsg(msg: &libc::msghdr, mut f: impl FnMut(i32, i32, &[u8])) {
    // SAFETY: `msg` was just filled by recvmsg, so msg_control/msg_controllen
    // describe a live buffer of control messages; the CMSG_* macros walk it
    // without reading past msg_controllen, and each cmsg_len is bounded by it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let header = libc::CMSG_LEN(0) as usize;
            let len = ((*cmsg).cmsg_len as usize).saturating_sub(header);
            let data = std::slice::from_raw_parts(libc::CMSG_DATA(cmsg), len);
            f((*cmsg).cmsg_level, (*cmsg).cmsg_type, data);
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// An all-zero socket address buffer, for the kernel to fill.
fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain integers; all zeros is a valid value.
    unsafe { mem::zeroed() }
}

/// Converts the first `len` bytes of a kernel socket address into std's;
/// `None` for non-IP families or a length too short for the family.
fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    let base = (storage as *const libc::sockaddr_storage).cast::<u8>();
    match storage.ss_family as i32 {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is large and aligned enough for every
            // socket address type, is fully initialised, and its family says
            // it holds a sockaddr_in.
            let sin = unsafe { base.cast::<libc::sockaddr_in>().read() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe { base.cast::<libc::sockaddr_in6>().read() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// True for the errors an ICMP report leaves pending on a socket: a receive or
/// send that fails with one of these has consumed that pending error, and the
/// report itself waits on the error queue.
pub fn is_icmp_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EPROTO
                | libc::ENOPROTOOPT
        )
    )
}

/// What became of one [`send_to`].
#[derive(Debug)]
pub enum Sent {
    /// The kernel took the whole datagram.
    Yes,
    /// The kernel has no room now (`WouldBlock` or `ENOBUFS`): keep the
    /// datagram and send it again when the socket is writable.
    Full,
    /// The datagram cannot be sent (e.g. too large, no route).
    Failed(io::Error),
}

/// Sends one datagram, classifying the outcome.
///
/// An ICMP report about some *other* datagram, still pending on the socket,
/// makes the kernel fail this send before anything goes out; the report
/// stays on the error queue for the reader, and the send is tried again.
pub fn send_to(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) -> Sent {
    let mut spoiled = 0;
    loop {
        match socket.send_to(datagram, to) {
            Ok(_) => return Sent::Yes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Sent::Full,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Sent::Full,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_icmp_error(&e) && spoiled < SPOILED_SEND_RETRIES => spoiled += 1,
            Err(e) => return Sent::Failed(e),
        }
    }
}

/// The socket's count of dropped datagrams right now, from `SO_MEMINFO`
/// (the same counter `SO_RXQ_OVFL` reports, without waiting for a datagram
/// to carry it).
pub fn drops_now(socket: &impl AsRawFd) -> io::Result<u32> {
    let mut info = [0u32; 16];
    let mut len = mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    let index = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (index + 1) * mem::size_of::<u32>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's SO_MEMINFO has no drop count",
        ));
    }
    Ok(info[index])
}

/// Asks for a receive buffer of `bytes` (`SO_RCVBUF`) and returns what the
/// kernel granted: Linux doubles the request for its bookkeeping and clamps
/// it between a minimum and `net.core.rmem_max`.
pub fn set_recv_buffer(socket: &impl AsFd, bytes: usize) -> io::Result<usize> {
    let socket = SockRef::from(socket);
    socket.set_recv_buffer_size(bytes)?;
    socket.recv_buffer_size()
}

/// The socket's receive buffer size in bytes (`SO_RCVBUF`).
pub fn recv_buffer(socket: &impl AsFd) -> io::Result<usize> {
    SockRef::from(socket).recv_buffer_size()
}

/// The address to send to from a socket bound to `local`: an IPv4 peer is
/// written as `::ffff:a.b.c.d` for an IPv6 socket. `None` when an IPv4
/// socket is asked to reach an IPv6 peer, which it cannot.
pub fn peer_for_socket(peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
    match (peer, local) {
        (SocketAddr::V4(v4), SocketAddr::V6(_)) => Some(SocketAddr::V6(SocketAddrV6::new(
            v4.ip().to_ipv6_mapped(),
            v4.port(),
            0,
            0,
        ))),
        (SocketAddr::V6(_), SocketAddr::V4(_)) => None,
        _ => Some(peer),
    }
}

fn set_int_option(fd: RawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one int from the pointer we pass, of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdUdpSocket;
    use std::time::{Duration, Instant};

    fn bound() -> StdUdpSocket {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        enable_reports(&socket, false).unwrap();
        socket
    }

    /// Polls `f` until it gives something other than WouldBlock, for up to 5 s.
    fn soon<T>(mut f: impl FnMut() -> io::Result<Option<T>>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match f() {
                Ok(Some(v)) => return v,
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "nothing arrived within 5 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn receives_a_whole_maximal_datagram_and_its_sender() {
        let rx = bound();
        let tx = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let payload: Vec<u8> = (0..MAX_DATAGRAM).map(|i| i as u8).collect();
        tx.send_to(&payload, rx.local_addr().unwrap()).unwrap();
        let mut buf = vec![0; 64 * 1024];
        let got = soon(|| recv_datagram(&rx, &mut buf).map(Some));
        assert_eq!(got.len, MAX_DATAGRAM);
        assert!(!got.truncated);
        assert_eq!(got.from, tx.local_addr().unwrap());
        assert_eq!(&buf[..got.len], &payload[..]);
    }

    #[test]
    fn names_the_peer_that_is_gone() {
        let socket = bound();
        // A port that was bound a moment ago and is free now: nobody listens.
        let gone = StdUdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        socket.send_to(b"anyone?", gone).unwrap();
        let report = soon(|| recv_error(&socket));
        assert_eq!(report.peer, Some(gone));
        assert!(report.port_unreachable, "{report:?}");
        assert_eq!(report.error.kind(), io::ErrorKind::ConnectionRefused);
        // The report has been taken; the queue is empty again.
        assert!(recv_error(&socket).unwrap().is_none());
    }

    #[test]
    fn a_report_names_who_sent_the_icmp_message() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let socket = StdUdpSocket::bind(local).unwrap();
            socket.set_nonblocking(true).unwrap();
            let ipv6 = socket.local_addr().unwrap().is_ipv6();
            enable_reports(&socket, ipv6).unwrap();
            let gone = StdUdpSocket::bind(local).unwrap().local_addr().unwrap();
            socket.send_to(b"anyone?", gone).unwrap();
            let report = soon(|| recv_error(&socket));
            assert_eq!(report.peer, Some(gone));
            assert!(report.port_unreachable, "{report:?}");
            // On loopback the ICMP message comes from the host itself.
            assert_eq!(report.offender, Some(SocketAddr::new(gone.ip(), 0)));
        }
    }

    #[test]
    fn a_pending_icmp_report_does_not_spoil_the_next_send() {
        let mio_socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        enable_reports(&mio_socket, false).unwrap();
        let live = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let gone = StdUdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(send_to(&mio_socket, b"1", gone), Sent::Yes));
        assert!(matches!(
            send_to(&mio_socket, b"2", live.local_addr().unwrap()),
            Sent::Yes
        ));
        live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0; 8];
        let (n, _) = live.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"2");
        let report = soon(|| recv_error(&mio_socket));
        assert_eq!(report.peer, Some(gone));
    }

    #[test]
    fn counts_what_a_full_receive_buffer_dropped() {
        let rx = bound();
        set_recv_buffer(&rx, 1).unwrap();
        let tx = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for _ in 0..200 {
            tx.send_to(&[7; 1000], to).unwrap();
        }
        let dropped = drops_now(&rx).unwrap();
        assert!(dropped > 0, "a tiny buffer must overflow");
        let mut buf = vec![0; 2048];
        let mut received = 0;
        while let Ok(d) = recv_datagram(&rx, &mut buf) {
            received += 1;
            assert!(d.drops.unwrap_or(0) <= dropped);
        }
        assert_eq!(received + dropped, 200);
        // One more datagram now carries the final count.
        tx.send_to(b"x", to).unwrap();
        let last = soon(|| recv_datagram(&rx, &mut buf).map(Some));
        assert_eq!(last.drops, Some(dropped));
    }

    #[test]
    fn maps_ipv4_peers_for_an_ipv6_socket() {
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let any6: SocketAddr = "[::]:0".parse().unwrap();
        assert_eq!(peer_for_socket(v4, any4), Some(v4));
        assert_eq!(
            peer_for_socket(v4, any6),
            Some("[::ffff:127.0.0.1]:9".parse().unwrap())
        );
        assert_eq!(peer_for_socket(v6, any4), None);
        assert_eq!(peer_for_socket(v6, any6), Some(v6));
    }
}
