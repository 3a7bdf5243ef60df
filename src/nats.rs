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
//! The encoders append to a caller's `Vec<u8>`, so a publisher can build a
//! run of commands in one buffer and write it with one call.
//!
//! **Invariant:** never touches a socket; an idle parser holds no allocation.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;

use crate::addr::{self, Endpoint};

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

// ----- What a server says about itself ---------------------------------------------

/// The parts of a server's `INFO` a client acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// The server's name (its id when it has none).
    pub server_name: String,
    /// Its version.
    pub version: String,
    /// The largest message it accepts, headers included.
    pub max_payload: usize,
    /// It understands `HPUB`/`HMSG`.
    pub headers: bool,
    /// It wants TLS before anything else.
    pub tls_required: bool,
    /// It wants credentials in `CONNECT`.
    pub auth_required: bool,
    /// Other servers of its cluster that take clients, `HOST:PORT` each.
    pub connect_urls: Vec<String>,
    /// It is about to shut down ("lame duck mode"): move elsewhere.
    pub lame_duck: bool,
}

impl ServerInfo {
    /// Reads the JSON of an `INFO` line. A missing field takes its protocol default.
    pub fn parse(json: &str) -> Result<ServerInfo, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("INFO is not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or_else(|| "INFO is not a JSON object".to_string())?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let flag = |key: &str| {
            object
                .get(key)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        let mut server_name = text("server_name");
        if server_name.is_empty() {
            server_name = text("server_id");
        }
        let max_payload = object
            .get("max_payload")
            .and_then(serde_json::Value::as_u64)
            .map_or(DEFAULT_MAX_PAYLOAD, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
        let connect_urls = object
            .get("connect_urls")
            .and_then(serde_json::Value::as_array)
            .map(|urls| {
                urls.iter()
                    .filter_map(serde_json::Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ServerInfo {
            server_name,
            version: text("version"),
            max_payload,
            headers: flag("headers"),
            tls_required: flag("tls_required"),
            auth_required: flag("auth_required"),
            connect_urls,
            lame_duck: flag("ldm"),
        })
    }
}

// ----- Where a server is ----------------------------------------------------------

/// A server address, `nats://[USER:PASS@|TOKEN@]HOST[:PORT]`, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Where it is (an IP address, or a name still to resolve).
    pub endpoint: Endpoint,
    /// User and password from the address, if it has both.
    pub user: Option<(String, String)>,
    /// A token from the address (`nats://TOKEN@HOST`), if it has one.
    pub token: Option<String>,
}

impl fmt::Debug for ServerUrl {
    /// Never shows credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ServerUrl {
    /// `nats://HOST:PORT`, credentials left out (it goes into logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Ip(addr) => write!(f, "nats://{addr}"),
            Endpoint::Host(host, port) => write!(f, "nats://{host}:{port}"),
        }
    }
}

impl ServerUrl {
    /// Parses `nats://HOST:PORT` (the scheme and the port may be left out;
    /// an `INFO`'s `connect_urls` name servers as bare `HOST:PORT`).
    /// `USER:PASS@` or `TOKEN@` before the host are credentials. Does no I/O.
    pub fn parse(text: &str) -> Result<ServerUrl, String> {
        let text = text.trim();
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("nats") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "'{scheme}://' is not supported: use nats://HOST:PORT (plain TCP)"
                ))
            }
            None => text,
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (user, token) = match userinfo {
            None => (None, None),
            Some("") => return Err("empty credentials before '@'".into()),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (Some((user.to_string(), pass.to_string())), None),
                None => (None, Some(info.to_string())),
            },
        };
        let has_port = if let Some(v6) = hostport.strip_prefix('[') {
            v6.contains("]:")
        } else {
            hostport.contains(':')
        };
        let with_port = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:{DEFAULT_PORT}")
        };
        let endpoint = addr::parse(&with_port).map_err(|e| e.to_string())?;
        Ok(ServerUrl {
            endpoint,
            user,
            token,
        })
    }

    /// The address, when the URL names an IP address (no lookup needed).
    pub fn ip(&self) -> Option<SocketAddr> {
        match self.endpoint {
            Endpoint::Ip(addr) => Some(addr),
            Endpoint::Host(..) => None,
        }
    }
}

// ----- What a client sends ------------------------------------------------------

/// The options of a `CONNECT`.
#[derive(Debug, Clone, Default)]
pub struct Connect<'a> {
    /// The client's name, as the server's monitoring shows it.
    pub name: &'a str,
    /// User and password, when the server wants them.
    pub user: Option<(&'a str, &'a str)>,
    /// A token, when the server wants one.
    pub token: Option<&'a str>,
    /// Have the server send us our own messages back (off: a publisher is
    /// not its own subscriber).
    pub echo: bool,
}

/// Appends `CONNECT {json}`: not verbose, headers on, protocol 1 (so the
/// server may send `INFO` again when its cluster changes).
pub fn connect(out: &mut Vec<u8>, options: &Connect<'_>) {
    let mut json = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "name": options.name,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": options.echo,
        "headers": true,
        "no_responders": false,
    });
    if let Some((user, pass)) = options.user {
        json["user"] = user.into();
        json["pass"] = pass.into();
    }
    if let Some(token) = options.token {
        json["auth_token"] = token.into();
    }
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(json.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `SUB subject sid`.
pub fn sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    let _ = write!(out, "SUB {subject} {sid}\r\n");
}

/// Appends `PUB subject [reply] size` and the payload.
pub fn publish(out: &mut Vec<u8>, subject: &str, reply: Option<&str>, payload: &[u8]) {
    let _ = match reply {
        Some(reply) => write!(out, "PUB {subject} {reply} {}\r\n", payload.len()),
        None => write!(out, "PUB {subject} {}\r\n", payload.len()),
    };
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `HPUB subject [reply] hdr-size total-size`, the header block
/// (made with [`HeaderBlock`]) and the payload.
pub fn publish_with_headers(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    headers: &[u8],
    payload: &[u8],
) {
    let total = headers.len() + payload.len();
    let _ = match reply {
        Some(reply) => write!(out, "HPUB {subject} {reply} {} {total}\r\n", headers.len()),
        None => write!(out, "HPUB {subject} {} {total}\r\n", headers.len()),
    };
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The bytes [`publish_with_headers`] adds for `payload_len` bytes of payload.
pub fn publish_len(
    subject: &str,
    reply: Option<&str>,
    headers: usize,
    payload_len: usize,
) -> usize {
    let total = headers + payload_len;
    let digits = |n: usize| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let line = "HPUB ".len()
        + subject.len()
        + reply.map_or(0, |r| r.len() + 1)
        + 1
        + digits(headers)
        + 1
        + digits(total)
        + 2;
    line + total + 2
}

/// A header block being built: `NATS/1.0\r\n`, then `Name: value\r\n` lines,
/// then an empty line. Reuses its buffer.
#[derive(Debug, Default)]
pub struct HeaderBlock(Vec<u8>);

impl HeaderBlock {
    /// Starts a new block in the same buffer.
    pub fn start(&mut self) -> &mut HeaderBlock {
        self.0.clear();
        self.0.extend_from_slice(b"NATS/1.0\r\n");
        self
    }

    /// Adds `name: value` (neither may hold CR or LF; a name no ':' either).
    pub fn field(&mut self, name: &str, value: impl fmt::Display) -> &mut HeaderBlock {
        debug_assert!(!name.contains([':', '\r', '\n']));
        let _ = write!(self.0, "{name}: {value}\r\n");
        self
    }

    /// Ends the block and returns it.
    pub fn finish(&mut self) -> &[u8] {
        self.0.extend_from_slice(b"\r\n");
        &self.0
    }
}

/// The value of header `name` (case-insensitive) in a header block, if present.
pub fn header<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// The status code of a header block (`NATS/1.0 503`), if it has one.
pub fn status(block: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(block).ok()?;
    let first = text.split("\r\n").next()?;
    first
        .strip_prefix("NATS/1.0")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// True for a subject token this program may put in a subject it makes (a
/// room name, a hub id): 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn is_token(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

    #[test]
    fn info_gives_what_a_client_acts_on() {
        let info = ServerInfo::parse(
            r#"{"server_id":"ID","version":"2.9.10","headers":true,"max_payload":4096,
               "connect_urls":["127.0.0.1:4222","127.0.0.1:4223"],"ldm":true}"#,
        )
        .unwrap();
        assert_eq!(info.server_name, "ID");
        assert_eq!(info.max_payload, 4096);
        assert!(info.headers && info.lame_duck && !info.tls_required);
        assert_eq!(info.connect_urls.len(), 2);
        assert_eq!(
            ServerInfo::parse("{}").unwrap().max_payload,
            DEFAULT_MAX_PAYLOAD
        );
        assert!(ServerInfo::parse("[1]").is_err());
        assert!(ServerInfo::parse("{").is_err());
    }

    #[test]
    fn urls_take_credentials_and_a_default_port() {
        let url = ServerUrl::parse("nats://ann:secret@127.0.0.1:4333").unwrap();
        assert_eq!(url.ip(), Some("127.0.0.1:4333".parse().unwrap()));
        assert_eq!(url.user, Some(("ann".into(), "secret".into())));
        assert_eq!(url.to_string(), "nats://127.0.0.1:4333");
        assert_eq!(format!("{url:?}"), "nats://127.0.0.1:4333");
        let url = ServerUrl::parse("nats://tok@[::1]").unwrap();
        assert_eq!(url.ip(), Some("[::1]:4222".parse().unwrap()));
        assert_eq!(url.token.as_deref(), Some("tok"));
        let url = ServerUrl::parse("localhost").unwrap();
        assert_eq!(url.endpoint, Endpoint::Host("localhost".into(), 4222));
        assert_eq!(
            ServerUrl::parse("10.0.0.5:4222").unwrap().ip(),
            Some("10.0.0.5:4222".parse().unwrap())
        );
        assert!(ServerUrl::parse("tls://127.0.0.1:4222").is_err());
        assert!(ServerUrl::parse("nats://@127.0.0.1").is_err());
        assert!(ServerUrl::parse("nats://127.0.0.1:99999").is_err());
    }

    #[test]
    fn client_commands_are_what_the_protocol_says() {
        let mut out = Vec::new();
        sub(&mut out, "sockloop.room.lobby", 1);
        publish(&mut out, "a.b", Some("in.1"), b"hi");
        let mut block = HeaderBlock::default();
        let headers = block
            .start()
            .field("Hub", "abc")
            .field("Seq", 7)
            .finish()
            .to_vec();
        let before = out.len();
        publish_with_headers(&mut out, "a.b", None, &headers, b"xyz");
        assert_eq!(
            out.len() - before,
            publish_len("a.b", None, headers.len(), 3)
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SUB sockloop.room.lobby 1\r\nPUB a.b in.1 2\r\nhi\r\n\
             HPUB a.b 30 33\r\nNATS/1.0\r\nHub: abc\r\nSeq: 7\r\n\r\nxyz\r\n"
        );
        assert_eq!(header(&headers, "hub"), Some("abc"));
        assert_eq!(header(&headers, "Seq"), Some("7"));
        assert_eq!(header(&headers, "Nope"), None);
        assert_eq!(status(b"NATS/1.0 503\r\n\r\n"), Some(503));
        assert_eq!(status(&headers), None);
    }

    #[test]
    fn connect_carries_credentials_as_json() {
        let mut out = Vec::new();
        connect(
            &mut out,
            &Connect {
                name: "hub \"x\"",
                user: Some(("ann", "p\"w")),
                token: None,
                echo: false,
            },
        );
        let text = String::from_utf8(out).unwrap();
        let json = text
            .strip_prefix("CONNECT ")
            .and_then(|t| t.strip_suffix("\r\n"))
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["user"], "ann");
        assert_eq!(value["pass"], "p\"w");
        assert_eq!(value["name"], "hub \"x\"");
        assert_eq!(value["echo"], false);
        assert_eq!(value["headers"], true);
        assert_eq!(value["verbose"], false);
    }

    #[test]
    fn tokens_for_subjects() {
        assert!(is_token("lobby"));
        assert!(is_token("room-2_b"));
        assert!(!is_token(""));
        assert!(!is_token("a.b"));
        assert!(!is_token("a b"));
        assert!(!is_token(&"x".repeat(65)));
    }
}
