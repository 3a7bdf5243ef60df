//! sockloop: every socket program of a distributed-systems lecture — UDP
//! group chat, a UDP streamer, TCP echo, TCP 1-to-1 and group chat — and a
//! load generator, all on **one thread**, through a hand-written reactor over
//! a single `mio::Poll`.
//!
//! The parts, from the bottom up:
//!
//! * [`reactor`] — the event loop: poll, dispatch, finish. Owns the poll, the
//!   connection table, the listeners, the UDP socket, stdin, signals and
//!   deadlines. Start reading here.
//! * [`conn`] — one TCP connection: socket, bounded output buffer, state.
//! * [`framing`], [`lines`] — the length-prefix and newline codecs; no I/O.
//!   Both hold an incomplete frame or line by one rule, [`hold`].
//! * [`addr`], [`chat_msg`] — address parsing and the chat message text; no I/O.
//! * [`stream`] — the UDP stream's `Number I` text and the template that writes
//!   it, exact loss/reorder/duplicate accounting and jitter; no I/O.
//! * [`sink_counts`] — what a receiver counts of a stream, and the one set of
//!   names `udp-sink` and `stress udp` report it by; no I/O.
//! * [`udp_batch`], [`stream_io`] — UDP in batches (`sendmmsg` with segmentation
//!   offload, `recvmmsg`), and the stream's paced sender and draining receiver
//!   built on them.
//! * [`addr`], [`chat_msg`], [`framing`], [`lines`] — address parsing, the chat
//!   message text, the TCP chat's length-prefixed frames and stdin lines; no I/O.
//! * [`loglimit`] — log lines for what can happen thousands of times a
//!   second: one a second per cause, with counts; no I/O.
//! * [`nats`] — the NATS client protocol (the chat server's broker link) as a
//!   codec: bytes in, operations out; no I/O.
//! * [`routability`] — UDP return routability: tokens an address echoes to
//!   prove it receives our datagrams, and the 3x budget until it has; no I/O.
//! * [`safe_text`] — the trust rules for text a peer chose: what may reach a
//!   terminal, a line client or a log, and what a name may be; no I/O.
//! * [`cmd`] — the commands; each is a [`reactor::Handler`].
//! * [`error`] — the error a command can end with, and its exit code.
//! * [`sys`] — the few raw system calls std and mio do not offer.
//! * [`websocket`] — WebSocket frames (RFC 6455) for the chat's web door; no I/O.
//! * [`udp`] — UDP receive details: which peer vanished (ICMP error queue),
//!   how many datagrams the kernel dropped.
//!
//! See ARCHITECTURE.md for the map, the invariants and a byte's journey.

pub mod access;
pub mod addr;
pub mod backoff;
pub mod chat_msg;
pub mod cli;
pub mod cmd;
pub mod conn;
pub mod error;
pub mod framing;
pub mod hold;
pub mod lines;
pub mod loglimit;
pub mod nats;
pub mod net;
pub mod ratelimit;
pub mod reactor;
pub mod routability;
pub mod safe_text;
pub mod sink_counts;
pub mod stream;
pub mod stream_io;
pub mod sys;
pub mod tls;
pub mod udp;
pub mod udp_batch;
pub mod units;
pub mod websocket;
