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
//! How: `nix` sets the three options and does the `recvmsg`, decoding the
//! control messages into typed values (`sock_extended_err` and its offender,
//! the drop counter), so no pointer arithmetic over `cmsghdr`s is written here.
//! The one raw call left is `SO_MEMINFO`, which `nix` does not wrap; its
//! `unsafe` block sits next to its SAFETY note.
//!
//! What it must not do: decide anything. It does not remove peers, retry
//! beyond the one spoiled send, log, or know about commands or the poll.

use std::io::{self, IoSliceMut};
use std::mem;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use mio::net::UdpSocket;
use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, RecvMsg, SockaddrIn, SockaddrIn6,
    SockaddrStorage,
};
use socket2::SockRef;

/// The largest UDP payload over IPv4 (65,535 − 20 bytes of IP − 8 of UDP).
/// The reactor's scratch buffer holds it whole.
pub const MAX_DATAGRAM: usize = 65_507;

/// How many times [`send_to`] tries again when a send fails only because an
/// earlier ICMP report was still pending on the socket.
const SPOILED_SEND_RETRIES: usize = 3;

/// Room for the control messages of one receive: a `sock_extended_err` plus
/// its offender address, or the `SO_RXQ_OVFL` counter. Aligned for `cmsghdr`,
/// as `recvmsg` and the control-message walk require; it lives on the stack,
/// so a receive allocates nothing.
#[repr(C, align(8))]
struct ControlBuffer([u8; 256]);

impl ControlBuffer {
    fn new() -> ControlBuffer {
        ControlBuffer([0; 256])
    }
}

/// Asks the kernel for the two reports this module reads: ICMP errors on the
/// error queue (`IP_RECVERR`, and `IPV6_RECVERR` on an IPv6 socket) and the
/// drop counter on every datagram (`SO_RXQ_OVFL`).
pub fn enable_reports(socket: &impl AsFd, ipv6: bool) -> io::Result<()> {
    let fd = socket.as_fd();
    if ipv6 {
        setsockopt(&fd, sockopt::Ipv6RecvErr, &true)?;
        // IPv4 peers of a dual-stack socket report through the IPv4 option;
        // a v6-only socket may refuse it, which costs nothing.
        let _ = setsockopt(&fd, sockopt::Ipv4RecvErr, &true);
    } else {
        setsockopt(&fd, sockopt::Ipv4RecvErr, &true)?;
    }
    // The option is an int the kernel reads as a flag; 1 turns it on.
    setsockopt(&fd, sockopt::RxqOvfl, &1)?;
    Ok(())
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

/// Receives one datagram with `recvmsg`, reading the drop counter as well.
///
/// Errors are the socket's: `WouldBlock` when it is empty, and — once per
/// ICMP report — the report's error (say `ConnectionRefused`); then the
/// details wait on the error queue for [`recv_error`].
pub fn recv_datagram(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<Datagram> {
    let capacity = buf.len();
    let mut control = ControlBuffer::new();
    let mut iov = [IoSliceMut::new(buf)];
    let msg: RecvMsg<'_, '_, SockaddrStorage> = recvmsg(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut control.0),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let from = msg.address.as_ref().and_then(to_std).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address")
    })?;
    let mut drops = None;
    // A truncated control buffer (which 256 bytes never is for this one
    // message) leaves the count unknown rather than failing the datagram.
    for cmsg in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::RxqOvfl(count) = cmsg {
            drops = Some(count);
        }
    }
    Ok(Datagram {
        len: msg.bytes.min(capacity),
        from,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
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
pub fn recv_error(socket: &impl AsFd) -> io::Result<Option<QueuedError>> {
    let mut control = ControlBuffer::new();
    // The error queue hands back the head of the bounced datagram; it is not needed.
    let mut payload = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut payload)];
    // MSG_ERRQUEUE never blocks; MSG_DONTWAIT says so for certain.
    let received = recvmsg::<SockaddrStorage>(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut control.0),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    );
    let msg = match received {
        Ok(msg) => msg,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let peer = msg.address.as_ref().and_then(to_std);
    // The first extended-error message is the report; a truncated control
    // buffer leaves it without details rather than failing.
    let report = msg
        .cmsgs()
        .into_iter()
        .flatten()
        .find_map(|cmsg| match cmsg {
            ControlMessageOwned::Ipv4RecvErr(ee, offender) => Some((
                ee,
                offender
                    .filter(|sin| i32::from(sin.sin_family) == libc::AF_INET)
                    .map(|sin| SocketAddr::from(SocketAddrV4::from(SockaddrIn::from(sin)))),
            )),
            ControlMessageOwned::Ipv6RecvErr(ee, offender) => Some((
                ee,
                offender
                    .filter(|sin6| i32::from(sin6.sin6_family) == libc::AF_INET6)
                    .map(|sin6| SocketAddr::from(SocketAddrV6::from(SockaddrIn6::from(sin6)))),
            )),
            _ => None,
        });
    let Some((ee, offender)) = report else {
        return Ok(Some(QueuedError {
            peer,
            error: io::Error::other("error-queue report without details"),
            port_unreachable: false,
            offender: None,
        }));
    };
    let errno = ee.ee_errno as i32;
    let from_icmp =
        ee.ee_origin == libc::SO_EE_ORIGIN_ICMP || ee.ee_origin == libc::SO_EE_ORIGIN_ICMP6;
    Ok(Some(QueuedError {
        peer,
        error: io::Error::from_raw_os_error(errno),
        port_unreachable: from_icmp && errno == libc::ECONNREFUSED,
        offender,
    }))
}

/// Converts a socket address from the kernel into std's; `None` for non-IP
/// families.
fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(sin) = addr.as_sockaddr_in() {
        Some(SocketAddrV4::from(*sin).into())
    } else {
        addr.as_sockaddr_in6()
            .map(|sin6| SocketAddrV6::from(*sin6).into())
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
pub fn drops_now(socket: &impl AsFd) -> io::Result<u32> {
    let mut info = [0u32; 16];
    let mut len = mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info` and updates
    // `len`. (nix has no SO_MEMINFO option.)
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
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

/// The addresses a UDP socket bound to `local` answers at: a datagram "from"
/// one of them is from ourselves, which a sender can only have forged. A
/// program that took such a sender for a peer would send to itself, and two
/// hubs told of each other that way would pass every message round for ever.
#[derive(Debug, Clone)]
pub struct OwnAddress {
    port: u16,
    ips: Vec<IpAddr>,
}

impl OwnAddress {
    /// The socket's own addresses: its bound IP, or, bound to every interface,
    /// each interface's address and the loopback ones.
    pub fn new(local: SocketAddr) -> OwnAddress {
        let ip = unmapped(local.ip());
        let mut ips = vec![ip];
        if ip.is_unspecified() {
            ips.extend(
                if_addrs::get_if_addrs()
                    .unwrap_or_default()
                    .iter()
                    .map(|i| unmapped(i.ip())),
            );
            ips.push(IpAddr::from([127, 0, 0, 1]));
            ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        }
        OwnAddress {
            port: local.port(),
            ips,
        }
    }

    /// True when `from` is this socket itself.
    pub fn is(&self, from: SocketAddr) -> bool {
        from.port() == self.port && self.ips.contains(&unmapped(from.ip()))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; any other as it is.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
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
        // Loopback delivers (or drops) each datagram a little after the
        // send returns, later still on a busy machine: read and count until
        // all 200 are accounted for, received or dropped, not once at once.
        let mut buf = vec![0; 2048];
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let dropped = loop {
            while let Ok(d) = recv_datagram(&rx, &mut buf) {
                received += 1;
                assert!(d.drops.unwrap_or(0) <= drops_now(&rx).unwrap());
            }
            let dropped = drops_now(&rx).unwrap();
            if received + dropped >= 200 {
                break dropped;
            }
            assert!(
                Instant::now() < deadline,
                "{received} received and {dropped} dropped of 200"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        assert!(dropped > 0, "a tiny buffer must overflow");
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
