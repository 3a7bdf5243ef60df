//! What a NATS client sends (`CONNECT`, `SUB`, `PUB`, `HPUB` and their
//! header blocks), and reading a header block back. No I/O: everything is
//! appended to a caller's buffer.

use std::fmt;
use std::io::Write;

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
