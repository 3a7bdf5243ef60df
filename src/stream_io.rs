//! The stream on the wire, shared by `udp-stream`, `udp-sink` and
//! `stress udp`: a paced sender that writes its messages from a
//! [`Template`] into batches and sends them with [`udp_batch`], and a
//! receiver that drains the socket in batches.
//!
//! **Sending.** [`StreamSender::pump`] finishes the batch in flight, then
//! builds one batch of the messages due by now (all of them up to
//! [`BATCH_MESSAGES`] when unpaced) and sends it to every peer. Message I is
//! due at start + I/rate; a tick that comes late sends everything that fell
//! due meanwhile in one batch, so the average rate holds whatever the timer's
//! granularity. The command turns the answer ([`Next`]) into a reactor
//! deadline or a wait for room; this file never sleeps and never spins. A
//! send the kernel refuses for lack of buffers (`ENOBUFS`, a full device
//! queue) is not a full socket: the socket stays writable, so waiting for
//! room would wake at once, again and again. The sender comes back after a
//! short wait instead, doubling while it lasts ([`NoBuffersWait`]).
//!
//! **Receiving.** The reactor reads the first datagram of each wake-up
//! itself and hands it over as `Event::Datagram`; the command then calls
//! [`StreamReceiver::drain`], which takes what else is queued with
//! `recvmmsg`, at most [`DRAIN_PER_TURN`] datagrams per turn of the loop so
//! timers and signals are still served under a flood. With `UDP_GRO` on,
//! the reactor's own read may be a coalesced run whose segment size it did
//! not ask for; [`StreamReceiver::datagrams_in`] recognises a run of stream
//! messages by its first message and cuts it (any other coalesced run
//! counts as one datagram: the one inexactness `--gro` brings besides the
//! kernel's drop count, see `udp-sink --help`).
//!
//! Invariant: every message number goes to every peer exactly once, in
//! order, unless the kernel refuses it (then it is counted as failed), and
//! every datagram received is handed to the caller exactly once.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::stream::{self, Stamp, Template};
use crate::udp_batch::{self, Batch, Cursor, Gso, Peer, Receiver, Sender};

/// Most messages in one batch (fewer when they are large: a batch holds at
/// most [`udp_batch::BATCH_BYTES`]). A batch lands in a receiver's buffer
/// all at once, so it is kept to what a default Linux receive buffer
/// (208 KiB, about 270 small datagrams) holds; and the loop reads its own
/// arrivals between two batches.
pub const BATCH_MESSAGES: u64 = 256;

/// Most datagrams [`StreamReceiver::drain`] takes per turn of the loop.
pub const DRAIN_PER_TURN: u64 = 8192;

/// The first wait after the kernel had no buffer for a send (`ENOBUFS`).
pub const NO_BUFFERS_FIRST: Duration = Duration::from_millis(1);

/// The longest wait after `ENOBUFS` (reached after eight in a row).
pub const NO_BUFFERS_MOST: Duration = Duration::from_millis(128);

/// How long the sender waits after `ENOBUFS`: [`NO_BUFFERS_FIRST`], twice
/// that each time it happens again with nothing sent in between, at most
/// [`NO_BUFFERS_MOST`]; back to the first wait once the kernel takes a
/// datagram again (so a queue that drains steadily is refilled every
/// millisecond, and one that is stuck is asked less and less often).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoBuffersWait {
    /// The next wait; zero until `ENOBUFS` is met.
    next: Duration,
}

impl NoBuffersWait {
    /// `ENOBUFS` again: how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        let wait = self.next.max(NO_BUFFERS_FIRST);
        self.next = (wait * 2).min(NO_BUFFERS_MOST);
        wait
    }

    /// The kernel took a datagram: the next `ENOBUFS` starts over.
    pub fn succeeded(&mut self) {
        self.next = Duration::ZERO;
    }
}

/// What the sender wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Every message went to every peer.
    Done,
    /// Call [`StreamSender::pump`] again at this instant (now, when more is
    /// due already; a little later after `ENOBUFS`).
    At(Instant),
    /// The socket is full: call again once it is writable.
    Writable,
}

/// The sender's running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel accepted.
    pub datagrams: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// `sendmmsg` calls.
    pub calls: u64,
    /// Times the socket was full (`EAGAIN`) and the sender waited for room.
    pub waits: u64,
    /// Times the kernel had no buffer for a send (`ENOBUFS`: a full device
    /// queue while the socket had room) and the sender waited a little.
    pub no_buffers: u64,
    /// Datagrams the kernel refused (skipped).
    pub failed: u64,
}

/// A paced, batched stream of `Number I` messages to a set of peers.
pub struct StreamSender {
    peers: Vec<Peer>,
    template: Template,
    stamp: Stamp,
    batch: Batch,
    cursor: Cursor,
    sender: Sender,
    count: u64,
    rate: Option<f64>,
    started: Instant,
    /// Messages put into batches so far (the next number to write).
    built: u64,
    sent: Sent,
    no_buffers: NoBuffersWait,
}

impl StreamSender {
    /// A stream of `count` messages from `name`, TEXT padded to `size`, at
    /// `rate` messages per second to each peer (`None`: as fast as the
    /// socket takes them), sent from `socket`; `gso` false never segments.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        socket: &impl AsFd,
        peers: &[SocketAddr],
        name: &str,
        size: usize,
        count: u64,
        rate: Option<f64>,
        gso: bool,
        started: Instant,
    ) -> StreamSender {
        StreamSender {
            peers: peers.iter().copied().map(Peer::new).collect(),
            template: Template::new(name, size, 0),
            stamp: Stamp::default(),
            batch: Batch::new(),
            cursor: Cursor::default(),
            sender: Sender::new(socket, gso),
            count,
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
            started,
            built: 0,
            sent: Sent::default(),
            no_buffers: NoBuffersWait::default(),
        }
    }

    /// When message `i` is due.
    fn due_at(&self, i: u64) -> Instant {
        match self.rate {
            Some(rate) => self.started + Duration::from_secs_f64(i as f64 / rate),
            None => self.started,
        }
    }

    /// How many messages are due by `now` (numbers below it).
    fn due_by(&self, now: Instant) -> u64 {
        match self.rate {
            Some(rate) => {
                let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
                ((elapsed * rate) as u64).saturating_add(1).min(self.count)
            }
            None => self.count,
        }
    }

    /// Sends what is due (see the module docs) and says when to come back.
    /// Datagrams the kernel refuses are reported to `failed` with their
    /// peer and count, and skipped.
    pub fn pump(
        &mut self,
        socket: &impl AsFd,
        mut failed: impl FnMut(&io::Error, SocketAddr, u64),
    ) -> Next {
        if let Err(wait) = self.flush(socket, &mut failed) {
            return wait;
        }
        if self.built >= self.count {
            return Next::Done;
        }
        let now = Instant::now();
        let due = self.due_by(now);
        if due <= self.built {
            return Next::At(self.due_at(self.built));
        }
        self.build(due - self.built);
        if let Err(wait) = self.flush(socket, &mut failed) {
            return wait;
        }
        if self.built >= self.count {
            Next::Done
        } else if self.due_by(Instant::now()) > self.built {
            Next::At(now)
        } else {
            Next::At(self.due_at(self.built))
        }
    }

    /// Writes up to `n` messages (at most one batch) into the batch, all
    /// stamped with the time now.
    fn build(&mut self, n: u64) {
        self.batch.clear();
        self.cursor = Cursor::default();
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.template.set_stamp(&self.stamp.at(micros));
        let n = n.min(BATCH_MESSAGES);
        for _ in 0..n {
            if !self.batch.has_room(self.template.next_len()) {
                break;
            }
            self.batch.push_with(|out| self.template.write_next(out));
            self.built += 1;
        }
    }

    /// Sends the rest of the batch in flight; when the kernel took only part
    /// of it, the error is when to come back: once the socket is writable, or
    /// after a short wait for `ENOBUFS`.
    fn flush(
        &mut self,
        socket: &impl AsFd,
        failed: &mut impl FnMut(&io::Error, SocketAddr, u64),
    ) -> Result<(), Next> {
        if self.cursor.is_done(&self.batch) {
            return Ok(());
        }
        let sent = &mut self.sent;
        let flushed = self.sender.send(
            socket,
            &self.batch,
            &self.peers,
            &mut self.cursor,
            |e, peer, n| {
                sent.failed += n;
                failed(e, peer, n);
            },
        );
        self.sent.datagrams += flushed.datagrams;
        self.sent.bytes += flushed.bytes;
        self.sent.calls += flushed.calls;
        if flushed.datagrams > 0 {
            self.no_buffers.succeeded();
        }
        if flushed.full {
            self.sent.waits += 1;
            return Err(Next::Writable);
        }
        if flushed.no_buffers {
            self.sent.no_buffers += 1;
            return Err(Next::At(Instant::now() + self.no_buffers.fail()));
        }
        Ok(())
    }

    /// Messages that went to every peer (or were refused), the batch in flight not included.
    pub fn messages_done(&self) -> u64 {
        if self.cursor.is_done(&self.batch) {
            self.built
        } else {
            self.built - self.batch.len() as u64
        }
    }

    /// The running totals.
    pub fn sent(&self) -> Sent {
        self.sent
    }

    /// Whether runs leave segmented, and why not.
    pub fn gso(&self) -> &Gso {
        self.sender.gso()
    }

    /// The peers, as resolved.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().map(|p| p.addr)
    }
}

/// What one [`StreamReceiver::drain`] did.
#[derive(Debug, Default)]
pub struct Drained {
    /// Datagrams handed over.
    pub datagrams: u64,
    /// `recvmmsg` calls that returned something.
    pub calls: u64,
    /// Datagrams cut short (longer than 64 KiB: cannot happen with UDP over IP).
    pub truncated: u64,
    /// The error that ended the drain, other than the socket being empty.
    pub error: Option<io::Error>,
}

/// Drains a socket in batches after the reactor's first read of a wake-up.
pub struct StreamReceiver {
    receiver: Receiver,
    /// The loop turn (its poll count) of the last drain, and what it took.
    turn: (u64, u64),
}

impl StreamReceiver {
    /// A receiver for `socket`; `gro` asks the kernel to coalesce runs
    /// (see [`udp_batch::Receiver`]).
    pub fn new(socket: &impl AsFd, gro: bool) -> StreamReceiver {
        StreamReceiver {
            receiver: Receiver::new(socket, gro),
            turn: (u64::MAX, 0),
        }
    }

    /// True when the kernel coalesces runs for this socket.
    pub fn gro(&self) -> bool {
        self.receiver.gro()
    }

    /// The datagrams in what the reactor read: with `UDP_GRO` on, its plain
    /// read may have taken a coalesced run without the segment size, so a
    /// run of stream messages ([`stream::run_size`]) is cut back into them;
    /// anything else is one datagram, as read.
    pub fn datagrams_in<'a>(&self, read: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        let size = if self.gro() {
            stream::run_size(read)
        } else {
            None
        };
        let (whole, run) = match size {
            Some(size) => (None, Some(read.chunks(size))),
            None => (Some(read), None),
        };
        whole.into_iter().chain(run.into_iter().flatten())
    }

    /// Takes what is queued on `socket`, calling `each(datagram, sender,
    /// arrival)` per datagram (arrival in microseconds since the Unix epoch,
    /// read once per batch), until the socket is empty, an error, or
    /// [`DRAIN_PER_TURN`] datagrams in loop turn `turn`.
    pub fn drain(
        &mut self,
        socket: &impl AsFd,
        turn: u64,
        mut each: impl FnMut(&[u8], SocketAddr, i64),
    ) -> Drained {
        if self.turn.0 != turn {
            self.turn = (turn, 0);
        }
        let mut drained = Drained::default();
        while self.turn.1 < DRAIN_PER_TURN {
            let arrival = now_micros();
            match self.receiver.recv(socket, |d, from| each(d, from, arrival)) {
                Ok(received) => {
                    drained.calls += 1;
                    drained.datagrams += received.datagrams as u64;
                    drained.truncated += received.truncated as u64;
                    self.turn.1 += received.datagrams as u64;
                    if received.buffers < udp_batch::RECV_SLOTS {
                        // A short batch: the socket was empty.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    drained.error = Some(e);
                    break;
                }
            }
        }
        drained
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_after_enobufs_doubles_to_its_cap_and_starts_over_after_a_success() {
        let mut wait = NoBuffersWait::default();
        let waits: Vec<u128> = (0..10).map(|_| wait.fail().as_millis()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 128, 128]);
        wait.succeeded();
        assert_eq!(wait.fail(), NO_BUFFERS_FIRST);
    }
}
