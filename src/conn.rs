//! One TCP connection: its socket, its bounded output buffer and its state.
//!
//! A `Conn` never decides what bytes mean; the command does. It knows how to
//! write what is queued, how much more it may queue, and where it is in its
//! life (see [`State`]). The reactor (`reactor/mod.rs`) drives it; commands
//! reach it only through [`Ctx`](crate::reactor::Ctx).
//!
//! **Invariant:** an idle connection owns no heap buffer. [`OutBuf`] starts
//! empty and releases its allocation every time it drains.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;

/// Where a connection is in its life.
///
/// ```text
///   Connecting ──connected──▶ Open ──peer sent FIN──▶ ReadClosed
///                              │                          │
///                   close_after_flush               close_after_flush
///                              ▼                          ▼
///                           Flushing ───output empty───▶ (closed gently: write side
///                              │                        shut, unread input drained)
///                              └──CLOSE_GRACE passed──▶ (closed)
///   any state ──error, protocol error, close()──▶ (closed, with a CloseReason)
/// ```
/// "Closed" is not a state a live `Conn` is in: a closed connection is
/// reaped at the end of the turn (see `Ctx::close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// An outgoing connection whose handshake has not finished.
    Connecting,
    /// Reading and writing.
    Open,
    /// The peer shut down its write side: nothing more to read; we may still write.
    ReadClosed,
    /// We are done: write what is queued, then close. No more reading.
    Flushing,
}

impl State {
    /// Lower-case name, as the trace and the connection table print it.
    pub fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Open => "open",
            State::ReadClosed => "read-closed",
            State::Flushing => "flushing",
        }
    }
}

/// Why a connection ended. Logged with the peer address; never fatal to the program.
#[derive(Debug)]
pub enum CloseReason {
    /// The peer closed and everything owed to it was written.
    Done,
    /// The peer closed its side while we still had bytes for it.
    PeerGone,
    /// An outgoing connection could not be established.
    ConnectFailed(io::Error),
    /// A read or write failed (reset, broken pipe, ...).
    Io(io::Error),
    /// The peer broke the protocol (bad frame, over-long line, invalid UTF-8).
    Protocol(String),
    /// The TLS session failed: bytes that are not TLS, an alert from the
    /// peer, a certificate that is not trusted. Kept typed, so a client can
    /// say which of these it was in words its user can act on.
    Tls(rustls::Error),
    /// The peer did not read: its output would have exceeded the limit.
    Backlog {
        /// Bytes it already had queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing heard for the idle timeout.
    Idle,
    /// Refused at accept: the server is full.
    Full,
    /// The program is shutting down.
    Shutdown,
    /// The local side decided to close (a command's own reason).
    Local(&'static str),
}

impl CloseReason {
    /// The reason for a connection whose read failed with invalid data: the
    /// TLS session's own error when there is one (see `Conn::read_plain`),
    /// else a protocol error with the text.
    pub fn invalid_data(error: &io::Error) -> CloseReason {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => CloseReason::Tls(tls.clone()),
            None => CloseReason::Protocol(error.to_string()),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Done => write!(f, "closed by peer"),
            CloseReason::PeerGone => write!(f, "peer went away with output pending"),
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            CloseReason::Io(e) => write!(f, "i/o error: {e}"),
            CloseReason::Protocol(why) => write!(f, "protocol error: {why}"),
            CloseReason::Tls(e) => write!(f, "protocol error: tls: {e}"),
            CloseReason::Backlog { queued, limit } => write!(
                f,
                "slow reader: {queued} bytes queued, over the {limit}-byte backlog limit"
            ),
            CloseReason::Idle => write!(f, "idle timeout"),
            CloseReason::Full => write!(f, "server full"),
            CloseReason::Shutdown => write!(f, "shutting down"),
            CloseReason::Local(why) => write!(f, "{why}"),
        }
    }
}

/// One piece of queued output: bytes of our own, or a frame shared with other
/// recipients (fan-out stores a frame once, whatever the number of readers).
enum Segment {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(v) => v,
            Segment::Shared(r) => r,
        }
    }
}

/// Plaintext into a TLS session: "buffer full" (a write of 0) reads as
/// `WouldBlock`, so [`OutBuf::write_to`] stops instead of failing.
struct TlsPlaintext<'a>(rustls::Writer<'a>);

impl Write for TlsPlaintext<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The most segments handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// A connection's queued output: bytes the kernel did not take yet.
///
/// Bounded by whoever pushes into it (see `Ctx::send` and `Ctx::queue`); it
/// holds no allocation while empty. The oldest segment is held inline, so a
/// connection with one frame pending (the common case in a chat fan-out)
/// needs no allocation either; only a second segment opens the queue behind it.
#[derive(Default)]
pub struct OutBuf {
    /// The oldest segment, the one being written.
    head: Option<Segment>,
    /// The segments behind `head`, oldest first (empty when `head` is `None`).
    tail: VecDeque<Segment>,
    /// Bytes of `head` already written.
    head_written: usize,
    /// Bytes queued and not yet written.
    len: usize,
}

impl OutBuf {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of whole segments waiting (frames, for a chat connection).
    pub fn segments(&self) -> usize {
        usize::from(self.head.is_some()) + self.tail.len()
    }

    fn push(&mut self, segment: Segment) {
        if self.head.is_none() {
            self.head = Some(segment);
        } else {
            self.tail.push_back(segment);
        }
    }

    /// Copies `bytes` onto the end, extending the last owned segment when it has room.
    pub fn push_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        let last = match self.tail.back_mut() {
            Some(last) => Some(last),
            None => self.head.as_mut(),
        };
        if let Some(Segment::Owned(last)) = last {
            last.extend_from_slice(bytes);
            return;
        }
        self.push(Segment::Owned(bytes.to_vec()));
    }

    /// Queues a shared frame without copying it.
    pub fn push_shared(&mut self, frame: Rc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.push(Segment::Shared(frame));
    }

    /// Drops queued segments that have not started to go out, oldest first,
    /// until at least `need` bytes are free under `limit`. Returns how many
    /// segments were dropped. A partly written head is kept, so the peer
    /// never sees half a frame.
    pub fn drop_oldest(&mut self, need: usize, limit: usize) -> usize {
        let mut dropped = 0;
        while self.len + need > limit {
            if self.head_written > 0 {
                match self.tail.pop_front() {
                    Some(seg) => self.len -= seg.bytes().len(),
                    None => break,
                }
            } else {
                match self.head.take() {
                    Some(seg) => {
                        self.len -= seg.bytes().len();
                        self.head = self.tail.pop_front();
                    }
                    None => break,
                }
            }
            dropped += 1;
        }
        if self.head.is_none() {
            self.release();
        }
        dropped
    }

    /// Writes as much as the socket takes, with one `writev` per call of up to
    /// [`MAX_IOVECS`] segments, until done or `WouldBlock`. Returns bytes
    /// written (0 when the socket was full); what is left stays queued.
    pub fn write_to(&mut self, stream: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while let Some(head) = &self.head {
            let n = {
                let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                slices[0] = IoSlice::new(&head.bytes()[self.head_written..]);
                let mut count = 1;
                for seg in self.tail.iter().take(MAX_IOVECS - 1) {
                    slices[count] = IoSlice::new(seg.bytes());
                    count += 1;
                }
                match stream.write_vectored(&slices[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            };
            total += n;
            self.advance(n);
        }
        Ok(total)
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(head) = &self.head else { break };
            let head_left = head.bytes().len() - self.head_written;
            if n >= head_left {
                n -= head_left;
                self.head = self.tail.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
        if self.head.is_none() {
            self.release();
        }
    }

    /// Gives the memory back: an idle connection holds no buffer.
    fn release(&mut self) {
        self.head = None;
        self.tail = VecDeque::new();
        self.head_written = 0;
        self.len = 0;
    }
}

/// One TCP connection in the reactor's table, with the command's own state `S`.
pub struct Conn<S> {
    /// The non-blocking socket.
    pub(crate) stream: TcpStream,
    /// Who is at the other end.
    pub(crate) peer: SocketAddr,
    /// Output the kernel has not taken yet.
    pub(crate) out: OutBuf,
    /// Where the connection is in its life.
    pub(crate) state: State,
    /// When it was accepted or connected, for the connection table.
    pub(crate) since: Instant,
    /// Reading stopped because `out` reached the output limit (backpressure).
    /// Cleared, and the connection read at once, when `out` drains below it.
    pub(crate) read_paused: bool,
    /// The kernel told us the peer shut down its write side (EPOLLRDHUP): read until EOF.
    pub(crate) peer_hup: bool,
    /// WRITABLE interest is registered with the poll.
    pub(crate) writable_registered: bool,
    /// Shut our write side down once `out` drains (half-close).
    pub(crate) shutdown_write_when_drained: bool,
    /// Marked for removal at the end of this turn (see `Ctx::close`).
    pub(crate) doomed: bool,
    /// On the reactor's list of connections to write at the end of the turn.
    pub(crate) dirty: bool,
    /// Counted in the reactor's per-IP table (accepted under `--max-conns-per-ip`).
    pub(crate) counted_per_ip: bool,
    /// Reading paused by the rate limit until a reactor deadline ends it.
    pub(crate) throttled: bool,
    /// Reading paused by the command (`Ctx::hold_reads`) until it calls
    /// `Ctx::release_reads`, say while it holds input it may not use yet.
    pub(crate) held: bool,
    /// The connection's `--rate-limit` buckets (boxed: most servers have none,
    /// and an idle connection should stay small).
    pub(crate) throttle: Option<Box<crate::ratelimit::Throttle>>,
    /// The TLS session, when this connection speaks TLS. Plaintext goes
    /// through it; see [`Conn::read_plain`] and [`Conn::write_out`].
    pub(crate) tls: Option<Box<rustls::Connection>>,
    /// The TLS peer's raw stream ended (its records may still hold plaintext).
    pub(crate) tls_eof: bool,
    /// Our TLS close_notify has been queued.
    pub(crate) tls_close_sent: bool,
    /// Accepted by listener N, and the command not told yet: a TLS
    /// connection is handed over only once its handshake is over.
    pub(crate) accept_pending: Option<u8>,
    /// The command's per-connection state.
    pub state_of_app: S,
}

impl<S> Conn<S> {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, state: State, app: S) -> Conn<S> {
        Conn {
            stream,
            peer,
            out: OutBuf::default(),
            state,
            since: Instant::now(),
            read_paused: false,
            peer_hup: false,
            writable_registered: false,
            shutdown_write_when_drained: false,
            doomed: false,
            dirty: false,
            counted_per_ip: false,
            throttled: false,
            held: false,
            throttle: None,
            tls: None,
            tls_eof: false,
            tls_close_sent: false,
            accept_pending: None,
            state_of_app: app,
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Our own end's address (for a client: the source address and port the
    /// kernel chose), to name a connection the way the peer's logs do.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes queued for the peer and not yet taken by the kernel.
    pub fn out_len(&self) -> usize {
        self.out.len()
    }

    /// Frames (segments) queued for the peer.
    pub fn out_segments(&self) -> usize {
        self.out.segments()
    }

    /// When the connection was accepted or connected.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// True while the reactor should read from this connection.
    pub(crate) fn wants_read(&self) -> bool {
        match self.state {
            State::Open => !self.read_paused && !self.throttled && !self.held,
            _ => false,
        }
    }

    /// True while the socket must be watched for WRITABLE: output is pending
    /// (ours, or TLS records), or an outgoing connect waits for its result.
    pub(crate) fn wants_write(&self) -> bool {
        self.state == State::Connecting || self.has_pending_output()
    }

    /// True while bytes wait to be written: queued plaintext, or TLS records.
    pub(crate) fn has_pending_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// True when the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True while a TLS handshake is under way.
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Reads the peer's next bytes into `buf`: straight from the socket, or,
    /// for TLS, by feeding records to the session until it yields plaintext.
    /// `Ok(0)` is end of stream; `WouldBlock` means nothing more for now.
    /// A TLS protocol failure is `InvalidData` (the alert is sent first).
    pub(crate) fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.stream.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without a close_notify: an end of stream all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.tls_eof {
                return Ok(0);
            }
            if tls.read_tls(&mut self.stream)? == 0 {
                self.tls_eof = true;
            }
            if let Err(e) = tls.process_new_packets() {
                let _ = tls.write_tls(&mut self.stream); // the alert, best effort
                                                         // The rustls error itself travels inside: see `tls_error`.
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages to answer go out now, not at the next writable edge.
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Writes what is queued: straight to the socket, or, for TLS, through the
    /// session (its own buffer bounded) and out as records. Returns how many
    /// queued bytes were consumed; stops at `WouldBlock`.
    pub(crate) fn write_out(&mut self) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.out.write_to(&mut self.stream);
        };
        let mut consumed = 0;
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(consumed),
                    Err(e) => return Err(e),
                }
            }
            if self.out.is_empty() {
                return Ok(consumed);
            }
            let n = self.out.write_to(&mut TlsPlaintext(tls.writer()))?;
            if n == 0 {
                return Ok(consumed);
            }
            consumed += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `room` bytes, then says WouldBlock.
    struct Pipe {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.taken.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_the_tail_and_release_memory_when_drained() {
        let mut out = OutBuf::default();
        out.push_copy(b"hello ");
        out.push_shared(Rc::from(&b"shared "[..]));
        out.push_copy(b"world");
        let mut pipe = Pipe {
            taken: vec![],
            room: 8,
        };
        assert_eq!(out.write_to(&mut pipe).unwrap(), 8);
        assert_eq!(out.len(), 10);
        pipe.room = 100;
        assert_eq!(out.write_to(&mut pipe).unwrap(), 10);
        assert_eq!(pipe.taken, b"hello shared world");
        assert!(out.is_empty());
        assert!(out.head.is_none());
        assert_eq!(out.tail.capacity(), 0);
    }

    #[test]
    fn one_pending_frame_needs_no_queue_allocation() {
        let mut out = OutBuf::default();
        out.push_shared(Rc::from(&b"frame"[..]));
        assert_eq!(out.segments(), 1);
        assert_eq!(out.tail.capacity(), 0);
        out.push_shared(Rc::from(&b"second"[..]));
        assert_eq!(out.segments(), 2);
        assert_eq!(out.len(), 11);
    }

    #[test]
    fn drop_oldest_never_cuts_a_frame_in_half() {
        let mut out = OutBuf::default();
        for _ in 0..4 {
            out.push_shared(Rc::from(&[7u8; 10][..]));
        }
        let mut pipe = Pipe {
            taken: vec![],
            room: 3,
        };
        out.write_to(&mut pipe).unwrap();
        // 37 queued, limit 25, need 10 more: drop until 37 - k*10 + 10 <= 25.
        assert_eq!(out.drop_oldest(10, 25), 3);
        assert_eq!(out.len(), 7);
        assert_eq!(out.segments(), 1);
    }
}
