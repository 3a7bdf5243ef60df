//! The NATS client protocol as a codec: bytes in, operations out; requests
//! in, bytes out. No I/O.
//!
//! NATS speaks lines of text ending in `\r\n`, some followed by a payload
//! whose length the line announces. A server sends `INFO {json}`,
//! `MSG subject sid [reply] size`, `HMSG subject sid [reply] hdr-size
//! total-size`, `PING`, `PONG`, `+OK` and `-ERR 'text'`; a client sends
//! `CONNECT {json}`, `PUB`, `HPUB`, `SUB`, `UNSUB`, `PING` and `PONG`
//! (<https://docs.nats.io/reference/reference-protocols/nats-protocol>).
//!
//! [`Parser::feed`] takes whatever one read returned, split anywhere, and
//! hands back whole [`ServerOp`]s. As in [`crate::framing`], an operation
//! that lies wholly inside the input is handed out borrowed from it; only an
//! incomplete one is copied, and what it holds grows with the bytes that
//! arrived, never with a length a peer announced. A control line longer than
//! [`MAX_CONTROL_LINE`] or a payload over the parser's maximum is a protocol
//! error before anything is buffered for it.
//!
//! The encoders (`client.rs`) append to a caller's `Vec<u8>`, so a publisher
//! can build a run of commands in one buffer and write it with one call;
//! `server.rs` reads what a server says about itself (`INFO`) and where
//! servers are (`nats://` addresses).
//!
//! **Invariant:** never touches a socket; an idle parser holds no allocation.

mod client;
mod server;

use std::fmt;

pub use client::{
    connect, header, is_token, publish, publish_len, publish_with_headers, status, sub, Connect,
    HeaderBlock,
};
pub use server::{ServerInfo, ServerUrl};

/// The port a `nats://` address means when it names none.
pub const DEFAULT_PORT: u16 = 4222;

/// The longest control line accepted (an `INFO` that lists a large cluster's
/// `connect_urls` is the longest a server sends).
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// What a server says when `INFO` does not (its default `max_payload`).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A `PING`, as either side sends it.
pub const PING: &[u8] = b"PING\r\n";
/// A `PONG`, as either side sends it.
pub const PONG: &[u8] = b"PONG\r\n";

/// One operation from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO {json}`: the server describes itself (see [`ServerInfo::parse`]).
    Info(&'a str),
    /// `MSG` or `HMSG`: a message for one of our subscriptions.
    Msg(Msg<'a>),
    /// `PING`: answer with [`PONG`].
    Ping,
    /// `PONG`: the answer to our `PING`.
    Pong,
    /// `+OK` (only in verbose mode).
    Ok,
    /// `-ERR 'text'`, the quotes taken off.
    Err(&'a str),
}

/// A message delivered to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// The subscription it is for.
    pub sid: u64,
    /// Where the publisher wants an answer, if anywhere.
    pub reply: Option<&'a str>,
    /// The header block (`NATS/1.0\r\n...\r\n\r\n`); empty for a plain `MSG`.
    pub headers: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

/// A protocol error: the connection cannot go on and is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// A control line longer than [`MAX_CONTROL_LINE`].
    LineTooLong,
    /// A message announced more payload than allowed.
    PayloadTooLarge {
        /// The announced size.
        size: usize,
        /// The largest accepted.
        max: usize,
    },
    /// An operation this client does not know.
    UnknownOp(String),
    /// A known operation with arguments that do not parse.
    Malformed(String),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::LineTooLong => {
                write!(f, "a control line longer than {MAX_CONTROL_LINE} bytes")
            }
            ProtoError::PayloadTooLarge { size, max } => {
                write!(f, "a message of {size} bytes, over the {max}-byte maximum")
            }
            ProtoError::UnknownOp(op) => write!(f, "unknown operation {op:?}"),
            ProtoError::Malformed(why) => write!(f, "malformed {why}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// A control line, parsed; its payload (if any) follows it.
enum Line<'a> {
    Info(&'a str),
    Msg {
        subject: &'a str,
        sid: u64,
        reply: Option<&'a str>,
        header_len: usize,
        total_len: usize,
    },
    Ping,
    Pong,
    Ok,
    Err(&'a str),
}

/// Turns the bytes a server sends, split anywhere, into [`ServerOp`]s.
#[derive(Debug)]
pub struct Parser {
    /// An incomplete operation, from the start of its control line. Empty
    /// and unallocated between operations.
    partial: Vec<u8>,
    /// The largest payload accepted (headers included).
    max_payload: usize,
    /// Set at the first protocol error; every later call returns it.
    failed: Option<ProtoError>,
}

impl Parser {
    /// A parser at the start of a connection that accepts payloads of at
    /// most `max_payload` bytes (headers included).
    pub fn new(max_payload: usize) -> Parser {
        Parser {
            partial: Vec::new(),
            max_payload,
            failed: None,
        }
    }

    /// Changes the largest payload accepted from now on (say, after `INFO`).
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Bytes held for an incomplete operation.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes; calls `on_op` for every whole operation, in order.
    ///
    /// Operations lying wholly inside `input` are passed borrowed from it;
    /// only an incomplete tail is copied. Needing more bytes is not an error.
    /// Returns `Err` at the first protocol error, and the same error from
    /// every later call.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_op: impl FnMut(ServerOp<'_>),
    ) -> Result<(), ProtoError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.feed_ok(input, &mut on_op);
        if let Err(error) = &result {
            self.partial = Vec::new();
            self.failed = Some(error.clone());
        }
        result
    }

    fn feed_ok(
        &mut self,
        mut input: &[u8],
        on_op: &mut impl FnMut(ServerOp<'_>),
    ) -> Result<(), ProtoError> {
        if !self.partial.is_empty() {
            input = match self.continue_partial(input, on_op)? {
                Some(rest) => rest,
                None => return Ok(()),
            };
        }
        while !input.is_empty() {
            match op_len(input, self.max_payload)? {
                Some(len) if len <= input.len() => {
                    let (op, rest) = input.split_at(len);
                    emit(op, on_op)?;
                    input = rest;
                }
                _ => {
                    self.partial.extend_from_slice(input);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Adds bytes to the incomplete operation. Returns the input left over
    /// once it is done, or `None` when all input went into it.
    fn continue_partial<'i>(
        &mut self,
        mut input: &'i [u8],
        on_op: &mut impl FnMut(ServerOp<'_>),
    ) -> Result<Option<&'i [u8]>, ProtoError> {
        loop {
            match op_len(&self.partial, self.max_payload)? {
                None => {
                    // The control line is not whole yet: take up to its end.
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        if self.partial.len() + input.len() > MAX_CONTROL_LINE + 2 {
                            return Err(ProtoError::LineTooLong);
                        }
                        self.partial.extend_from_slice(input);
                        return Ok(None);
                    };
                    self.partial.extend_from_slice(&input[..=nl]);
                    input = &input[nl + 1..];
                }
                Some(len) => {
                    let take = (len - self.partial.len()).min(input.len());
                    self.partial.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.partial.len() < len {
                        return Ok(None);
                    }
                    let op = std::mem::take(&mut self.partial);
                    emit(&op, on_op)?;
                    return Ok(Some(input));
                }
            }
        }
    }
}

/// The length of the operation at the start of `buf` (control line, payload
/// and their line ends), once its control line is whole; `None` before.
fn op_len(buf: &[u8], max_payload: usize) -> Result<Option<usize>, ProtoError> {
    let search = &buf[..buf.len().min(MAX_CONTROL_LINE + 2)];
    let Some(nl) = search.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_CONTROL_LINE + 1 {
            return Err(ProtoError::LineTooLong);
        }
        return Ok(None);
    };
    let after_line = nl + 1;
    match parse_line(&buf[..nl])? {
        Line::Msg { total_len, .. } => {
            if total_len > max_payload {
                return Err(ProtoError::PayloadTooLarge {
                    size: total_len,
                    max: max_payload,
                });
            }
            Ok(Some(after_line + total_len + 2))
        }
        _ => Ok(Some(after_line)),
    }
}

/// Parses one whole operation and hands it on.
fn emit(op: &[u8], on_op: &mut impl FnMut(ServerOp<'_>)) -> Result<(), ProtoError> {
    let nl = op
        .iter()
        .position(|&b| b == b'\n')
        .expect("a whole operation has its line end");
    let out = match parse_line(&op[..nl])? {
        Line::Info(json) => ServerOp::Info(json),
        Line::Ping => ServerOp::Ping,
        Line::Pong => ServerOp::Pong,
        Line::Ok => ServerOp::Ok,
        Line::Err(text) => ServerOp::Err(text),
        Line::Msg {
            subject,
            sid,
            reply,
            header_len,
            total_len,
        } => {
            let body = &op[nl + 1..];
            if &body[total_len..] != b"\r\n" {
                return Err(ProtoError::Malformed(
                    "message: its payload does not end with CRLF".into(),
                ));
            }
            ServerOp::Msg(Msg {
                subject,
                sid,
                reply,
                headers: &body[..header_len],
                payload: &body[header_len..total_len],
            })
        }
    };
    on_op(out);
    Ok(())
}

/// Parses a control line (without its `\n`; a `\r` before it is dropped).
fn parse_line(line: &[u8]) -> Result<Line<'_>, ProtoError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line)
        .map_err(|_| ProtoError::Malformed("control line: not UTF-8".into()))?;
    let (op, rest) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let mut args = rest.split_ascii_whitespace();
    let mut next = |what: &str| {
        args.next()
            .ok_or_else(|| ProtoError::Malformed(format!("{op}: missing {what}")))
    };
    if op.eq_ignore_ascii_case("MSG") || op.eq_ignore_ascii_case("HMSG") {
        let with_headers = op.len() == 4;
        let subject = next("subject")?;
        let sid = number(next("sid")?, op)? as u64;
        let counts: Vec<&str> = rest.split_ascii_whitespace().skip(2).collect();
        let (reply, header_len, total_len) = match (with_headers, counts.as_slice()) {
            (false, [size]) => (None, 0, number(size, op)?),
            (false, [reply, size]) => (Some(*reply), 0, number(size, op)?),
            (true, [hdr, total]) => (None, number(hdr, op)?, number(total, op)?),
            (true, [reply, hdr, total]) => (Some(*reply), number(hdr, op)?, number(total, op)?),
            _ => {
                return Err(ProtoError::Malformed(format!(
                    "{op}: wrong number of arguments"
                )))
            }
        };
        if header_len > total_len {
            return Err(ProtoError::Malformed(format!(
                "{op}: header size {header_len} over total size {total_len}"
            )));
        }
        return Ok(Line::Msg {
            subject,
            sid,
            reply,
            header_len,
            total_len,
        });
    }
    if op.eq_ignore_ascii_case("INFO") {
        Ok(Line::Info(rest))
    } else if op.eq_ignore_ascii_case("PING") {
        Ok(Line::Ping)
    } else if op.eq_ignore_ascii_case("PONG") {
        Ok(Line::Pong)
    } else if op.eq_ignore_ascii_case("+OK") {
        Ok(Line::Ok)
    } else if op.eq_ignore_ascii_case("-ERR") {
        let text = rest
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(rest);
        Ok(Line::Err(text))
    } else {
        let shown: String = op.chars().take(16).collect();
        Err(ProtoError::UnknownOp(shown))
    }
}

/// A decimal count from a control line.
fn number(text: &str, op: &str) -> Result<usize, ProtoError> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtoError::Malformed(format!(
            "{op}: {text:?} is not a count"
        )));
    }
    text.parse()
        .map_err(|_| ProtoError::Malformed(format!("{op}: {text:?} is not a count")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An operation, owned, for comparing what the parser gave.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Op {
        Info(String),
        Msg {
            subject: String,
            sid: u64,
            reply: Option<String>,
            headers: Vec<u8>,
            payload: Vec<u8>,
        },
        Ping,
        Pong,
        Ok,
        Err(String),
    }

    fn own(op: ServerOp<'_>) -> Op {
        match op {
            ServerOp::Info(json) => Op::Info(json.into()),
            ServerOp::Msg(m) => Op::Msg {
                subject: m.subject.into(),
                sid: m.sid,
                reply: m.reply.map(Into::into),
                headers: m.headers.to_vec(),
                payload: m.payload.to_vec(),
            },
            ServerOp::Ping => Op::Ping,
            ServerOp::Pong => Op::Pong,
            ServerOp::Ok => Op::Ok,
            ServerOp::Err(text) => Op::Err(text.into()),
        }
    }

    /// Feeds `chunks` one after another; every operation, or the error.
    fn check(chunks: &[&[u8]], max_payload: usize) -> Result<Vec<Op>, ProtoError> {
        let mut parser = Parser::new(max_payload);
        let mut ops = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |op| ops.push(own(op)))?;
        }
        Ok(ops)
    }

    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1024}\r\n\
        PING\r\n\
        MSG a.b 1 5\r\nhello\r\n\
        MSG a.b 2 reply.to 0\r\n\r\n\
        HMSG room 7 20 25\r\nNATS/1.0\r\nA-B: 1\r\n\r\nworld\r\n\
        hmsg room 7 in.box 12 12\r\nNATS/1.0\r\n\r\n\r\n\
        +OK\r\n\
        -ERR 'Slow Consumer'\r\n\
        PONG\r\n";

    fn stream_ops() -> Vec<Op> {
        vec![
            Op::Info("{\"server_id\":\"x\",\"max_payload\":1024}".into()),
            Op::Ping,
            Op::Msg {
                subject: "a.b".into(),
                sid: 1,
                reply: None,
                headers: vec![],
                payload: b"hello".to_vec(),
            },
            Op::Msg {
                subject: "a.b".into(),
                sid: 2,
                reply: Some("reply.to".into()),
                headers: vec![],
                payload: vec![],
            },
            Op::Msg {
                subject: "room".into(),
                sid: 7,
                reply: None,
                headers: b"NATS/1.0\r\nA-B: 1\r\n\r\n".to_vec(),
                payload: b"world".to_vec(),
            },
            Op::Msg {
                subject: "room".into(),
                sid: 7,
                reply: Some("in.box".into()),
                headers: b"NATS/1.0\r\n\r\n".to_vec(),
                payload: vec![],
            },
            Op::Ok,
            Op::Err("Slow Consumer".into()),
            Op::Pong,
        ]
    }

    #[test]
    fn every_server_operation_in_one_read() {
        assert_eq!(check(&[STREAM], 1024), Ok(stream_ops()));
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(check(&chunks, 1024), Ok(stream_ops()));
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same(cuts in proptest::collection::vec(0..STREAM.len(), 0..8)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts {
                chunks.push(&STREAM[from..cut]);
                from = cut;
            }
            chunks.push(&STREAM[from..]);
            prop_assert_eq!(check(&chunks, 1024), Ok(stream_ops()));
        }
    }

    #[test]
    fn an_idle_parser_holds_nothing() {
        let mut parser = Parser::new(1024);
        parser.feed(b"MSG a 1 5\r\nhel", |_| {}).unwrap();
        assert!(parser.buffered() > 0);
        parser.feed(b"lo\r\n", |_| {}).unwrap();
        assert_eq!(parser.buffered(), 0);
        assert_eq!(parser.partial.capacity(), 0);
    }

    #[test]
    fn a_payload_over_the_maximum_is_refused_before_it_arrives() {
        assert_eq!(
            check(&[b"MSG a 1 2000\r\n"], 1024),
            Err(ProtoError::PayloadTooLarge {
                size: 2000,
                max: 1024
            })
        );
        // Split inside the line, too.
        assert!(check(&[b"MSG a 1 20", b"00\r\nxx"], 1024).is_err());
    }

    #[test]
    fn an_endless_control_line_is_refused() {
        let long = vec![b'x'; MAX_CONTROL_LINE + 10];
        assert_eq!(check(&[&long], 1024), Err(ProtoError::LineTooLong));
        let mut parser = Parser::new(1024);
        let mut result = Ok(());
        for chunk in long.chunks(1000) {
            result = parser.feed(chunk, |_| {});
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ProtoError::LineTooLong));
        assert!(parser.buffered() == 0);
    }

    #[test]
    fn bad_input_is_an_error_and_stays_one() {
        assert!(matches!(
            check(&[b"HELLO\r\n"], 1024),
            Err(ProtoError::UnknownOp(_))
        ));
        assert!(check(&[b"MSG a 1\r\n"], 1024).is_err());
        assert!(check(&[b"MSG a 1 x\r\n"], 1024).is_err());
        assert!(check(&[b"HMSG a 1 9 5\r\n"], 1024).is_err());
        assert!(check(&[b"MSG a 1 3\r\nabcXY"], 1024).is_err());
        let mut parser = Parser::new(1024);
        assert!(parser.feed(b"BOGUS\r\n", |_| {}).is_err());
        assert!(parser.feed(b"PING\r\n", |_| {}).is_err());
    }
}
