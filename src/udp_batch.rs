//! Batched UDP I/O: many datagrams per system call, for the stream's sender
//! and receivers.
//!
//! One `sendto` or `recvfrom` per datagram costs a kernel crossing each; at
//! small sizes that crossing is most of the price of a datagram. This module
//! moves them in batches instead:
//!
//! * **Sending** ([`Sender`]): the datagrams of a [`Batch`] lie end to end in
//!   one buffer, in *runs* of equal size. With UDP generic segmentation
//!   offload (`UDP_SEGMENT`, Linux 4.18 and later) a whole run leaves as one
//!   message of up to [`MAX_SEGMENTS`] datagrams, which the kernel (or the
//!   network card) cuts into datagrams after routing it once; without it,
//!   each datagram is its own message. Either way `sendmmsg` hands the kernel
//!   up to [`MAX_MESSAGES`] messages per call. When the kernel or the route
//!   refuses segmentation (`EIO` on a device without checksum offload,
//!   `EINVAL` when a datagram exceeds the path's MTU, an old kernel), the
//!   sender says so once and goes on one datagram per message — nothing is
//!   lost or sent twice by the switch.
//! * **Receiving** ([`Receiver`]): `recvmmsg` fills up to [`RECV_SLOTS`]
//!   buffers per call. With `UDP_GRO` on, the kernel may hand over a run of
//!   equal-size datagrams as one buffer with its segment size attached; the
//!   receiver cuts it back into datagrams, so callers always see datagrams.
//!
//! Invariant: a caller sees exactly the datagrams that were sent or received,
//! one by one and in order, whatever the batching, segmentation and fallback
//! underneath. Every buffer here has a fixed bound: a batch holds at most
//! [`BATCH_BYTES`] (and at least one datagram), a receiver [`RECV_SLOTS`] ×
//! 64 KiB.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    self, recvmmsg, sendmmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders,
    SockaddrLike, SockaddrStorage,
};

/// Most datagrams in one segmented send. Linux's own limit
/// (`UDP_MAX_SEGMENTS`) is 64 on older kernels and 128 on newer ones.
pub const MAX_SEGMENTS: usize = 64;

/// Most bytes in one segmented send: one UDP payload's worth over IPv4.
pub const MAX_RUN_BYTES: usize = 65_507;

/// Most messages (runs, or single datagrams) in one `sendmmsg`.
pub const MAX_MESSAGES: usize = 64;

/// Most bytes one [`Batch`] holds (it always takes at least one datagram).
pub const BATCH_BYTES: usize = 1 << 20;

/// Buffers filled by one `recvmmsg`.
pub const RECV_SLOTS: usize = 64;

/// Bytes per receive buffer: any datagram, or a run the kernel coalesced,
/// fits whole.
const SLOT_BYTES: usize = 64 * 1024;

/// How many times a send is tried again when it failed only because an
/// earlier ICMP report was still pending on the socket.
const SPOILED_SEND_RETRIES: usize = 3;

/// A run of equal-size datagrams lying end to end in a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Where the run's first datagram starts in the batch's bytes.
    pub start: usize,
    /// Bytes per datagram.
    pub size: usize,
    /// Datagrams in the run, 1 to [`MAX_SEGMENTS`].
    pub count: usize,
}

impl Run {
    fn bytes(&self) -> usize {
        self.size * self.count
    }
}

/// Datagrams laid end to end in one buffer, grouped in runs of equal size:
/// what a [`Sender`] sends. Reused from batch to batch without allocating.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    runs: Vec<Run>,
    datagrams: usize,
}

impl Batch {
    /// An empty batch with room for [`BATCH_BYTES`].
    pub fn new() -> Batch {
        Batch {
            bytes: Vec::with_capacity(BATCH_BYTES),
            runs: Vec::with_capacity(BATCH_BYTES / 64),
            datagrams: 0,
        }
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.runs.clear();
        self.datagrams = 0;
    }

    /// True when a datagram of `size` bytes may still be added: the batch is
    /// empty, or it stays within [`BATCH_BYTES`].
    pub fn has_room(&self, size: usize) -> bool {
        self.datagrams == 0 || self.bytes.len() + size <= BATCH_BYTES
    }

    /// Appends one datagram, written by `write` at the end of the batch's
    /// bytes; it joins the last run when it has the same size and the run
    /// has room.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        let size = self.bytes.len() - start;
        match self.runs.last_mut() {
            Some(run)
                if run.size == size
                    && run.count < MAX_SEGMENTS
                    && run.bytes() + size <= MAX_RUN_BYTES =>
            {
                run.count += 1
            }
            _ => self.runs.push(Run {
                start,
                size,
                count: 1,
            }),
        }
        self.datagrams += 1;
    }

    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.datagrams
    }

    /// True when the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.datagrams == 0
    }

    /// The runs, in order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Datagram `index` of `run`.
    pub fn datagram(&self, run: &Run, index: usize) -> &[u8] {
        let start = run.start + index * run.size;
        &self.bytes[start..start + run.size]
    }
}

/// How far a batch has gone out: runs are sent in order, each to every peer
/// in order, each datagram of a run in order (one by one without
/// segmentation). The same position holds whichever way the rest is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    run: usize,
    peer: usize,
    datagram: usize,
}

impl Cursor {
    /// True when every run went to every peer.
    pub fn is_done(&self, batch: &Batch) -> bool {
        self.run >= batch.runs.len()
    }

    /// Moves past `n` datagrams of the current run and peer.
    fn advance(&mut self, n: usize, batch: &Batch, n_peers: usize) {
        self.datagram += n;
        if self.datagram >= batch.runs[self.run].count {
            self.datagram = 0;
            self.peer += 1;
            if self.peer >= n_peers {
                self.peer = 0;
                self.run += 1;
            }
        }
    }
}

/// What [`Sender::send`] achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel accepted.
    pub datagrams: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// `sendmmsg` calls made.
    pub calls: u64,
    /// The socket had no room (`EAGAIN`); the rest waits for it to be writable.
    pub full: bool,
    /// The kernel had no buffer for the packet (`ENOBUFS`: typically a full
    /// device queue, with `IP_RECVERR` on) although the socket had room. The
    /// socket stays writable, so waiting for that would spin: the rest waits
    /// for a short time instead (the caller's choice).
    pub no_buffers: bool,
}

/// A peer in both address forms: std's for people, the kernel's for `sendmmsg`.
#[derive(Clone, Copy)]
pub struct Peer {
    /// The address as std knows it.
    pub addr: SocketAddr,
    raw: SockaddrStorage,
}

impl Peer {
    /// Prepares `addr` for sending.
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            raw: SockaddrStorage::from(addr),
        }
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// Whether segmentation offload is used, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gso {
    /// Runs leave as one segmented message each.
    On,
    /// Not used; the reason, for the summary ("turned off", "not supported: ...").
    Off(String),
}

/// Sends [`Batch`]es to a set of peers with `sendmmsg`, segmented when the
/// kernel allows (see the module docs).
pub struct Sender {
    gso: Gso,
}

impl Sender {
    /// A sender for `socket`; `want_gso` false sends one datagram per
    /// message from the start. Support is probed once here; a send that the
    /// kernel refuses later turns it off as well.
    pub fn new(socket: &impl AsFd, want_gso: bool) -> Sender {
        let gso = if !want_gso {
            Gso::Off("turned off (--no-gso)".to_string())
        } else {
            // Reading the option tells whether this kernel knows it at all.
            match socket::getsockopt(socket, sockopt::UdpGsoSegment) {
                Ok(_) => Gso::On,
                Err(e) => Gso::Off(format!("not supported by this kernel ({e})")),
            }
        };
        Sender { gso }
    }

    /// Whether runs are being segmented.
    pub fn gso(&self) -> &Gso {
        &self.gso
    }

    /// Sends what is left of `batch` to every peer, from `cursor` on, until
    /// it is all sent or the socket is full (then `full` is set and `cursor`
    /// says where to go on). A datagram the kernel refuses for another
    /// reason is skipped and reported to `failed` with its peer and how many
    /// datagrams the refused message held.
    pub fn send(
        &mut self,
        socket: &impl AsFd,
        batch: &Batch,
        peers: &[Peer],
        cursor: &mut Cursor,
        mut failed: impl FnMut(&io::Error, SocketAddr, u64),
    ) -> Flushed {
        let mut flushed = Flushed::default();
        let mut spoiled = 0;
        while !cursor.is_done(batch) && !peers.is_empty() {
            let segmented = self.gso == Gso::On;
            let outcome = send_some(socket, batch, peers, *cursor, segmented);
            flushed.calls += 1;
            match outcome {
                Ok((messages, sizes)) => {
                    spoiled = 0;
                    flushed.bytes += sizes.1;
                    flushed.datagrams += sizes.0;
                    for _ in 0..messages {
                        let run = batch.runs[cursor.run];
                        let n = if segmented {
                            run.count - cursor.datagram
                        } else {
                            1
                        };
                        cursor.advance(n, batch, peers.len());
                    }
                }
                Err(Errno::EAGAIN) => {
                    flushed.full = true;
                    return flushed;
                }
                Err(Errno::ENOBUFS) => {
                    flushed.no_buffers = true;
                    return flushed;
                }
                Err(Errno::EINTR) => {}
                Err(e) if is_icmp_errno(e) && spoiled < SPOILED_SEND_RETRIES => spoiled += 1,
                Err(e) if segmented && refuses_segmentation(e) => {
                    log::info!(
                        "udp: the kernel refused a segmented send ({e}); sending one datagram per message from now on"
                    );
                    self.gso = Gso::Off(format!("refused by the kernel ({e})"));
                }
                Err(e) => {
                    let run = batch.runs[cursor.run];
                    let n = if segmented {
                        run.count - cursor.datagram
                    } else {
                        1
                    };
                    failed(&io::Error::from(e), peers[cursor.peer].addr, n as u64);
                    cursor.advance(n, batch, peers.len());
                }
            }
        }
        flushed
    }
}

/// One `sendmmsg` from `cursor` on: up to [`MAX_MESSAGES`] messages, all of
/// one segment size when segmenting (the size travels in a control message
/// shared by the call). Returns the messages sent and the (datagrams, bytes)
/// they carried.
fn send_some(
    socket: &impl AsFd,
    batch: &Batch,
    peers: &[Peer],
    cursor: Cursor,
    segmented: bool,
) -> Result<(usize, (u64, u64)), Errno> {
    let mut slices = [[IoSlice::new(&[])]; MAX_MESSAGES];
    let mut addrs = [None::<SockaddrStorage>; MAX_MESSAGES];
    // (datagrams, bytes) of each message, to count what the kernel took.
    let mut carried = [(0u64, 0u64); MAX_MESSAGES];
    let mut n = 0;
    let mut at = cursor;
    let segment = batch.runs[cursor.run].size;
    while n < MAX_MESSAGES && !at.is_done(batch) {
        let run = batch.runs[at.run];
        if segmented && run.size != segment {
            break;
        }
        let count = if segmented {
            run.count - at.datagram
        } else {
            1
        };
        let start = run.start + at.datagram * run.size;
        let bytes = &batch.bytes[start..start + count * run.size];
        slices[n] = [IoSlice::new(bytes)];
        addrs[n] = Some(peers[at.peer].raw);
        carried[n] = (count as u64, bytes.len() as u64);
        n += 1;
        at.advance(count, batch, peers.len());
    }
    // Segmenting adds one control message, the segment size, shared by every message.
    let segment = u16::try_from(segment).unwrap_or(u16::MAX);
    let gso = [ControlMessage::UdpGsoSegments(&segment)];
    let cmsgs: &[ControlMessage] = if segmented { &gso } else { &[] };
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(n, segmented.then(|| nix::cmsg_space!(u16)));
    let sent = sendmmsg(
        socket.as_fd().as_raw_fd(),
        &mut headers,
        &slices[..n],
        &addrs[..n],
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )?
    .count();
    let totals = carried[..sent]
        .iter()
        .fold((0, 0), |(d, b), (dn, bn)| (d + dn, b + bn));
    Ok((sent, totals))
}

/// The errors with which the kernel or the route refuses segmentation.
fn refuses_segmentation(e: Errno) -> bool {
    matches!(
        e,
        Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP | Errno::EMSGSIZE
    )
}

/// The errors an ICMP report leaves pending on a socket (see [`crate::udp`]).
fn is_icmp_errno(e: Errno) -> bool {
    crate::udp::is_icmp_error(&io::Error::from(e))
}

/// What one [`Receiver::recv`] took off the socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Datagrams handed to the caller (a coalesced run counts each of its datagrams).
    pub datagrams: usize,
    /// Buffers the kernel filled (each a datagram, or a coalesced run).
    pub buffers: usize,
    /// Datagrams longer than a buffer, cut short.
    pub truncated: usize,
}

/// Receives with `recvmmsg` into [`RECV_SLOTS`] buffers of 64 KiB, cutting
/// runs the kernel coalesced (`UDP_GRO`) back into datagrams.
///
/// The buffers take [`RECV_SLOTS`] × 64 KiB of address space, but only the
/// pages datagrams are written to are ever touched.
pub struct Receiver {
    buf: Vec<u8>,
    gro: bool,
}

impl Receiver {
    /// A receiver for `socket`; with `want_gro`, asks the kernel to coalesce
    /// (`UDP_GRO`) and says whether it agreed through [`Receiver::gro`].
    pub fn new(socket: &impl AsFd, want_gro: bool) -> Receiver {
        let gro = want_gro && socket::setsockopt(socket, sockopt::UdpGroSegment, &true).is_ok();
        Receiver {
            buf: vec![0; RECV_SLOTS * SLOT_BYTES],
            gro,
        }
    }

    /// True when the kernel coalesces runs for this socket.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// One `recvmmsg`, without waiting: calls `each(datagram, sender)` for
    /// every datagram taken, in order. Errors are the socket's, `WouldBlock`
    /// when it is empty.
    pub fn recv(
        &mut self,
        socket: &impl AsFd,
        mut each: impl FnMut(&[u8], SocketAddr),
    ) -> io::Result<Received> {
        let mut slices: Vec<[IoSliceMut; 1]> = self
            .buf
            .chunks_mut(SLOT_BYTES)
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        // Prepared afresh for every call: the kernel shrinks each header's
        // name and control lengths to what it wrote, and nix 0.32 does not
        // restore them, so reused headers would lose the segment size.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
            RECV_SLOTS,
            Some(nix::cmsg_space!(u32, i32, i32)),
        );
        let results = recvmmsg(
            socket.as_fd().as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut received = Received::default();
        for message in results {
            received.buffers += 1;
            let Some(from) = message.address.as_ref().and_then(to_std) else {
                continue;
            };
            let mut segment = None;
            if let Ok(cmsgs) = message.cmsgs() {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::UdpGroSegments(size) = cmsg {
                        segment = usize::try_from(size).ok().filter(|s| *s > 0);
                    }
                }
            }
            if message.flags.contains(MsgFlags::MSG_TRUNC) {
                received.truncated += 1;
            }
            let Some(data) = message.iovs().next() else {
                // A datagram with no payload.
                received.datagrams += 1;
                each(&[], from);
                continue;
            };
            match segment {
                Some(size) if data.len() > size => {
                    for datagram in data.chunks(size) {
                        received.datagrams += 1;
                        each(datagram, from);
                    }
                }
                _ => {
                    received.datagrams += 1;
                    each(data, from);
                }
            }
        }
        Ok(received)
    }
}

/// nix's socket address as std's; `None` for anything but IPv4 and IPv6.
fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
        .filter(|_| addr.family().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        (tx, rx)
    }

    /// A batch of `n` datagrams `"<i>:"` padded with `x` to `size(i)` bytes.
    fn batch(n: usize, size: impl Fn(usize) -> usize) -> Batch {
        let mut batch = Batch::new();
        for i in 0..n {
            batch.push_with(|out| {
                let start = out.len();
                out.extend_from_slice(format!("{i}:").as_bytes());
                out.resize(start + size(i).max(out.len() - start), b'x');
            });
        }
        batch
    }

    /// Receives until `n` datagrams came (5 s at most).
    fn receive(rx: &UdpSocket, receiver: &mut Receiver, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} arrived",
                got.len()
            );
            match receiver.recv(rx, |d, _| got.push(d.to_vec())) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn runs_group_equal_sizes_within_the_segment_limits() {
        let b = batch(200, |i| if i < 150 { 100 } else { 30 });
        let sizes: Vec<(usize, usize)> = b.runs().iter().map(|r| (r.size, r.count)).collect();
        assert_eq!(sizes, vec![(100, 64), (100, 64), (100, 22), (30, 50)]);
        let big = batch(3, |_| 30_000);
        assert_eq!(big.runs().len(), 2, "two 30 kB datagrams fill one run");
        assert_eq!(b.len(), 200);
        assert_eq!(
            b.datagram(&b.runs()[3], 0),
            format!("150:{}", "x".repeat(26)).as_bytes()
        );
    }

    fn sends_every_datagram_in_order(want_gso: bool, want_gro: bool) {
        let (tx, rx) = pair();
        let mut sender = Sender::new(&tx, want_gso);
        let mut receiver = Receiver::new(&rx, want_gro);
        assert_eq!(sender.gso() == &Gso::On, want_gso);
        assert_eq!(receiver.gro(), want_gro);
        // Sizes change mid-batch (a new run), as a stream's do when its
        // numbers grow a digit. Batches of 100 fit a default receive buffer.
        let b = batch(300, |i| if i < 100 { 64 } else { 65 });
        let peers = [Peer::new(rx.local_addr().unwrap())];
        let mut got = Vec::new();
        for part in 0..3 {
            let mut part_batch = Batch::new();
            for run in b.runs() {
                for i in 0..run.count {
                    let d = b.datagram(run, i);
                    let n: usize = std::str::from_utf8(d)
                        .unwrap()
                        .split(':')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    if n / 100 == part {
                        part_batch.push_with(|out| out.extend_from_slice(d));
                    }
                }
            }
            let mut cursor = Cursor::default();
            let flushed = sender.send(&tx, &part_batch, &peers, &mut cursor, |e, _, _| {
                panic!("{e}")
            });
            assert!(!flushed.full && cursor.is_done(&part_batch));
            assert_eq!(flushed.datagrams, 100);
            got.extend(receive(&rx, &mut receiver, 100));
        }
        for (i, datagram) in got.iter().enumerate() {
            assert!(
                datagram.starts_with(format!("{i}:").as_bytes()),
                "datagram {i}: {:?}",
                String::from_utf8_lossy(datagram)
            );
            assert_eq!(datagram.len(), if i < 100 { 64 } else { 65 });
        }
    }

    #[test]
    fn segmented_sends_arrive_as_single_datagrams() {
        sends_every_datagram_in_order(true, false);
    }

    #[test]
    fn coalesced_runs_are_cut_back_into_datagrams() {
        sends_every_datagram_in_order(true, true);
    }

    #[test]
    fn without_segmentation_every_datagram_is_its_own_message() {
        sends_every_datagram_in_order(false, false);
    }

    #[test]
    fn a_refused_segmented_send_falls_back_without_loss() {
        let (tx, rx) = pair();
        let mut sender = Sender::new(&tx, true);
        if sender.gso() != &Gso::On {
            return;
        }
        // Linux refuses to segment for a socket that sends without UDP
        // checksums (EINVAL), and sends its plain datagrams all the same.
        let off: libc::c_int = 1;
        // SAFETY: setsockopt reads one int from a live local of the size given.
        let rc = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let mut receiver = Receiver::new(&rx, false);
        let b = batch(100, |_| 50);
        let peers = [Peer::new(rx.local_addr().unwrap())];
        let mut cursor = Cursor::default();
        let flushed = sender.send(&tx, &b, &peers, &mut cursor, |e, _, _| panic!("{e}"));
        assert!(matches!(sender.gso(), Gso::Off(_)), "{:?}", sender.gso());
        assert_eq!(flushed.datagrams, 100);
        let got = receive(&rx, &mut receiver, 100);
        for (i, datagram) in got.iter().enumerate() {
            assert!(datagram.starts_with(format!("{i}:").as_bytes()));
        }
    }

    #[test]
    fn a_batch_goes_to_every_peer_in_run_order() {
        let (tx, rx1) = pair();
        let (_, rx2) = pair();
        let mut sender = Sender::new(&tx, true);
        let b = batch(70, |i| if i < 10 { 40 } else { 41 });
        let peers = [
            Peer::new(rx1.local_addr().unwrap()),
            Peer::new(rx2.local_addr().unwrap()),
        ];
        let mut cursor = Cursor::default();
        let flushed = sender.send(&tx, &b, &peers, &mut cursor, |e, _, _| panic!("{e}"));
        assert_eq!(flushed.datagrams, 140);
        assert!(cursor.is_done(&b));
        for rx in [&rx1, &rx2] {
            let got = receive(rx, &mut Receiver::new(rx, true), 70);
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, d)| d.starts_with(format!("{i}:").as_bytes())));
        }
    }
}
