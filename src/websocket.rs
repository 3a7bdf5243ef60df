//! WebSocket frames (RFC 6455): bytes in, messages out, and messages into
//! frames. No I/O.
//!
//! The chat's web door speaks WebSocket inside the reactor's own connection:
//! the connection hands [`Decoder::feed`] whatever one read returned, split
//! anywhere, and gets whole messages back; replies are bytes the caller
//! queues. Like [`crate::framing`], this module never touches a socket, so
//! bytes alone test it.
//!
//! What the decoder enforces, each as a [`WsError`] that names the close code
//! to send:
//!
//! * **Masking.** A server's decoder refuses a client frame that is not
//!   masked (1002), as section 5.1 requires; a client's decoder refuses a
//!   masked one.
//! * **Frame rules.** Reserved bits (no extension is ever negotiated),
//!   unknown opcodes, a fragmented or over-long (over 125 bytes) control
//!   frame, a continuation with nothing to continue and a new message before
//!   the last one ended are protocol errors (1002). Binary messages are
//!   refused (1003): the chat carries text.
//! * **Size.** A data frame whose announced length would take its message
//!   over `max_message` is refused from its header (1009), before a byte of
//!   it is stored. Payload is stored only as it arrives, so memory grows
//!   with the bytes received, never with the length a peer announced.
//! * **UTF-8.** A text message, and a close reason, must be valid UTF-8 (1007).
//!
//! Fragments are reassembled; control frames (ping, pong, close) may arrive
//! between them and are handed out at once.
//!
//! *Invariant:* no I/O; an idle decoder holds no heap allocation (a message
//! buffer exists only while a message is incomplete, or is the caller's
//! scratch buffer).

use std::fmt;

/// The GUID a server appends to the client's key (section 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close status codes (section 7.4.1).
pub mod code {
    /// The purpose of the connection was fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A kind of data the endpoint does not accept (binary, for the chat).
    pub const UNSUPPORTED: u16 = 1003;
    /// Text that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A policy was broken (for instance a client that stopped answering pings).
    pub const POLICY: u16 = 1008;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
}

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a message.
    Continuation,
    /// A text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// The close handshake.
    Close,
    /// A ping, to be answered with a pong carrying the same payload.
    Ping,
    /// The answer to a ping (or an unsolicited heartbeat).
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One thing the peer said, borrowed from the decoder or the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A whole text message, fragments joined, checked to be UTF-8.
    Text(&'a str),
    /// A ping: answer with [`pong`] of the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer starts (or answers) the close handshake, with its status code
    /// and reason if it gave them. The decoder ignores everything after it.
    Close(Option<(u16, &'a str)>),
}

/// Why the connection cannot go on: the close code to send and a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsError {
    /// The close status code to send (see [`code`]).
    pub code: u16,
    /// What was wrong, for the log and the close frame's reason.
    pub why: String,
}

impl WsError {
    fn new(code: u16, why: impl Into<String>) -> WsError {
        WsError {
            code,
            why: why.into(),
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket: {} (close code {})", self.why, self.code)
    }
}

impl std::error::Error for WsError {}

/// Which end a decoder serves: it decides which masking is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes what a client sent: every frame must be masked.
    Server,
    /// Decodes what a server sent: no frame may be masked.
    Client,
}

/// The frame being received, once its header is complete.
#[derive(Debug, Clone, Copy)]
struct Head {
    opcode: Opcode,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Payload bytes received so far.
    got: u64,
    /// The payload goes to the caller's scratch buffer (a whole unfragmented
    /// message, or a whole control frame, inside one input), not to the
    /// decoder's own.
    in_scratch: bool,
}

/// Turns a byte stream into [`Message`]s, whatever way it is split.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message: usize,
    /// The header being received: at most 2 + 8 + 4 bytes.
    header: [u8; 14],
    header_len: u8,
    /// The frame whose payload is being received.
    frame: Option<Head>,
    /// An incomplete text message: fragments so far, unmasked. Empty and
    /// unallocated between messages.
    message: Vec<u8>,
    /// A fragmented text message is under way (`message` holds its start).
    continuing: bool,
    /// A control frame's payload (at most 125 bytes) split across inputs;
    /// empty and unallocated otherwise.
    control: Vec<u8>,
    /// A close frame was received: the rest of the stream is ignored.
    closed: bool,
}

impl Decoder {
    /// A decoder for `role` that accepts messages of at most `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> Decoder {
        Decoder {
            role,
            max_message,
            header: [0; 14],
            header_len: 0,
            frame: None,
            message: Vec::new(),
            continuing: false,
            control: Vec::new(),
            closed: false,
        }
    }

    /// Bytes held for an incomplete frame or message.
    pub fn buffered(&self) -> usize {
        usize::from(self.header_len) + self.message.len() + self.control.len()
    }

    /// The heap capacity the decoder holds (0 when idle).
    pub fn capacity(&self) -> usize {
        self.message.capacity() + self.control.capacity()
    }

    /// True once a close frame was received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Decodes `input`, calling `on_message` for every whole message and
    /// control frame, in order. `scratch` is the caller's reusable buffer:
    /// a message that arrives whole inside `input` is unmasked there, so the
    /// decoder itself allocates only for a message split across inputs.
    ///
    /// On an error, the messages before it have been handed out and the
    /// connection must be closed with [`WsError::code`].
    pub fn feed(
        &mut self,
        mut input: &[u8],
        scratch: &mut Vec<u8>,
        mut on_message: impl FnMut(Message<'_>),
    ) -> Result<(), WsError> {
        while !input.is_empty() && !self.closed {
            let mut head = match self.frame {
                Some(head) => head,
                None => {
                    let Some(head) = self.take_header(&mut input)? else {
                        return Ok(());
                    };
                    let mut head = head;
                    // A whole control frame, or a whole unfragmented data
                    // frame, inside this input: unmask it in the caller's
                    // scratch, not in a buffer of our own.
                    let whole = head.opcode.is_control() || (head.fin && !self.continuing);
                    head.in_scratch = whole && head.len <= input.len() as u64;
                    if head.in_scratch {
                        scratch.clear();
                    }
                    head
                }
            };
            let want = (head.len - head.got).min(input.len() as u64) as usize;
            let (chunk, rest) = input.split_at(want);
            input = rest;
            let start = head.got as usize;
            let buffer = if head.in_scratch {
                &mut *scratch
            } else if head.opcode.is_control() {
                &mut self.control
            } else {
                &mut self.message
            };
            let from = buffer.len();
            buffer.extend_from_slice(chunk);
            unmask(&mut buffer[from..], head.mask, start);
            head.got += want as u64;
            if head.got < head.len {
                self.frame = Some(head);
                return Ok(());
            }
            self.frame = None;
            self.complete(head, scratch, &mut on_message)?;
        }
        Ok(())
    }

    /// Takes header bytes from `input`; the header once it is whole and valid.
    fn take_header(&mut self, input: &mut &[u8]) -> Result<Option<Head>, WsError> {
        // The first two bytes say how long the rest of the header is.
        let need = |header: &[u8], have: usize| -> usize {
            if have < 2 {
                return 2;
            }
            let ext = match header[1] & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if header[1] & 0x80 != 0 { 4 } else { 0 };
            2 + ext + mask
        };
        loop {
            let total = need(&self.header, usize::from(self.header_len));
            if usize::from(self.header_len) == total {
                break;
            }
            if self.header_len == 2 {
                // Check what the first two bytes alone allow, before any more.
                self.check_start()?;
            }
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(None);
            };
            self.header[usize::from(self.header_len)] = byte;
            self.header_len += 1;
            *input = rest;
        }
        if self.header_len == 2 {
            self.check_start()?;
        }
        let header = &self.header[..usize::from(self.header_len)];
        let fin = header[0] & 0x80 != 0;
        let opcode = Opcode::from_bits(header[0] & 0x0F).expect("checked by check_start");
        let masked = header[1] & 0x80 != 0;
        let (len, at) = match header[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&header[2..10]);
                (u64::from_be_bytes(bytes), 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = masked.then(|| [header[at], header[at + 1], header[at + 2], header[at + 3]]);
        self.header_len = 0;
        if len >> 63 != 0 {
            return Err(WsError::new(
                code::PROTOCOL_ERROR,
                "a frame length with its most significant bit set",
            ));
        }
        if opcode.is_control() {
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::new(
                    code::PROTOCOL_ERROR,
                    format!("a control frame of {len} bytes (at most {MAX_CONTROL_PAYLOAD})"),
                ));
            }
        } else {
            let total = (self.message.len() as u64).saturating_add(len);
            if total > self.max_message as u64 {
                return Err(WsError::new(
                    code::TOO_BIG,
                    format!(
                        "a message of at least {total} bytes, over the {}-byte maximum",
                        self.max_message
                    ),
                ));
            }
        }
        Ok(Some(Head {
            opcode,
            fin,
            mask,
            len,
            got: 0,
            in_scratch: false,
        }))
    }

    /// The rules the first two header bytes decide on their own.
    fn check_start(&self) -> Result<(), WsError> {
        let (b0, b1) = (self.header[0], self.header[1]);
        if b0 & 0x70 != 0 {
            return Err(WsError::new(
                code::PROTOCOL_ERROR,
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let Some(opcode) = Opcode::from_bits(b0 & 0x0F) else {
            return Err(WsError::new(
                code::PROTOCOL_ERROR,
                format!("unknown opcode {:#x}", b0 & 0x0F),
            ));
        };
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(WsError::new(
                    code::PROTOCOL_ERROR,
                    "a client frame that is not masked",
                ))
            }
            (Role::Client, true) => {
                return Err(WsError::new(
                    code::PROTOCOL_ERROR,
                    "a server frame that is masked",
                ))
            }
            _ => {}
        }
        let fin = b0 & 0x80 != 0;
        match opcode {
            Opcode::Binary => Err(WsError::new(
                code::UNSUPPORTED,
                "a binary message (the chat carries text)",
            )),
            _ if opcode.is_control() && !fin => Err(WsError::new(
                code::PROTOCOL_ERROR,
                "a fragmented control frame",
            )),
            Opcode::Continuation if !self.continuing => Err(WsError::new(
                code::PROTOCOL_ERROR,
                "a continuation frame with no message to continue",
            )),
            Opcode::Text if self.continuing => Err(WsError::new(
                code::PROTOCOL_ERROR,
                "a new message before the last one ended",
            )),
            _ => Ok(()),
        }
    }

    /// A frame's payload is all in: hand out what it completes.
    fn complete(
        &mut self,
        head: Head,
        scratch: &[u8],
        on_message: &mut impl FnMut(Message<'_>),
    ) -> Result<(), WsError> {
        if head.opcode.is_control() {
            // Taken, so an idle decoder holds no allocation.
            let control = std::mem::take(&mut self.control);
            let payload = if head.in_scratch {
                scratch
            } else {
                &control[..]
            };
            match head.opcode {
                Opcode::Ping => on_message(Message::Ping(payload)),
                Opcode::Pong => on_message(Message::Pong(payload)),
                _ => {
                    let close = parse_close(payload)?;
                    self.closed = true;
                    self.message = Vec::new();
                    on_message(Message::Close(close));
                }
            }
            return Ok(());
        }
        if !head.fin {
            self.continuing = true;
            return Ok(());
        }
        self.continuing = false;
        let bytes = if head.in_scratch {
            scratch
        } else {
            &self.message[..]
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            WsError::new(
                code::INVALID_DATA,
                format!(
                    "a text message that is not UTF-8 (at byte {})",
                    e.valid_up_to()
                ),
            )
        })?;
        on_message(Message::Text(text));
        // Between messages the decoder holds no allocation.
        self.message = Vec::new();
        Ok(())
    }
}

/// XORs `bytes`, which start at payload offset `offset`, with the mask.
fn unmask(bytes: &mut [u8], mask: Option<[u8; 4]>, offset: usize) {
    let Some(mask) = mask else {
        return;
    };
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

/// A close frame's payload: nothing, or a valid status code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, WsError> {
    match payload.len() {
        0 => return Ok(None),
        1 => {
            return Err(WsError::new(
                code::PROTOCOL_ERROR,
                "a close frame with a one-byte payload",
            ))
        }
        _ => {}
    }
    let status = u16::from_be_bytes([payload[0], payload[1]]);
    let valid = matches!(status, 1000..=1003 | 1007..=1011 | 3000..=4999);
    if !valid {
        return Err(WsError::new(
            code::PROTOCOL_ERROR,
            format!("close status code {status} may not be sent"),
        ));
    }
    let reason = std::str::from_utf8(&payload[2..])
        .map_err(|_| WsError::new(code::INVALID_DATA, "a close reason that is not UTF-8"))?;
    Ok(Some((status, reason)))
}

/// The bytes a frame with a payload of `payload_len` bytes takes, unmasked
/// (as a server sends it).
pub fn frame_len(payload_len: usize) -> usize {
    header_len(payload_len) + payload_len
}

fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Appends one whole frame (FIN set) to `out`; masked with `mask` if given
/// (a client must mask, a server must not).
pub fn encode_into(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) {
    encode_frame(out, opcode, true, payload, mask);
}

/// Appends one frame to `out`, with or without FIN (a fragment when without).
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: Opcode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let len = payload.len();
    out.reserve(header_len(len) + len + if mask.is_some() { 4 } else { 0 });
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask, 0);
}

/// A server's text frame for `text`, in one allocation.
pub fn text_frame(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_len(text.len()));
    encode_into(&mut out, Opcode::Text, text.as_bytes(), None);
    out
}

/// A server's close frame with `status` and `reason` (cut, at a character
/// boundary, to fit a control frame).
pub fn close_frame(status: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&status.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    let mut out = Vec::with_capacity(frame_len(payload.len()));
    encode_into(&mut out, Opcode::Close, &payload, None);
    out
}

/// A server's pong answering a ping with `payload` (at most 125 bytes).
pub fn pong(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_len(payload.len()));
    encode_into(&mut out, Opcode::Pong, payload, None);
    out
}

/// A server's ping with `payload` (at most 125 bytes).
pub fn ping(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_len(payload.len()));
    encode_into(&mut out, Opcode::Ping, payload, None);
    out
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: base64 of 16 bytes.
pub fn valid_key(key: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .is_ok_and(|bytes| bytes.len() == 16)
}

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`:
/// base64 of the SHA-1 of the key and the protocol's GUID.
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.trim().as_bytes());
    context.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

    /// What one feed handed out, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Text(String),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    /// Feeds `chunks` to a fresh server decoder; what came out, and how it ended.
    fn check(max: usize, chunks: &[&[u8]]) -> (Vec<Got>, Result<(), WsError>, Decoder) {
        let mut decoder = Decoder::new(Role::Server, max);
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        for chunk in chunks {
            let result = decoder.feed(chunk, &mut scratch, |m| {
                got.push(match m {
                    Message::Text(t) => Got::Text(t.to_string()),
                    Message::Ping(p) => Got::Ping(p.to_vec()),
                    Message::Pong(p) => Got::Pong(p.to_vec()),
                    Message::Close(c) => Got::Close(c.map(|(s, r)| (s, r.to_string()))),
                })
            });
            if result.is_err() {
                return (got, result, decoder);
            }
        }
        (got, Ok(()), decoder)
    }

    fn masked(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, fin, payload, MASK);
        out
    }

    fn text(t: &str) -> Got {
        Got::Text(t.to_string())
    }

    #[test]
    fn the_rfc_accept_key_example() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("c2hvcnQ="));
        assert!(!valid_key("not base64!"));
    }

    #[test]
    fn the_rfc_masked_hello() {
        // RFC 6455, section 5.7: a single-frame masked text message.
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (got, result, decoder) = check(100, &[&wire]);
        assert_eq!((got, result), (vec![text("Hello")], Ok(())));
        assert_eq!(decoder.capacity(), 0);
        assert_eq!(masked(Opcode::Text, true, b"Hello"), wire);
    }

    #[test]
    fn fragments_are_joined_and_control_frames_come_between() {
        let mut wire = masked(Opcode::Text, false, b"Hel");
        wire.extend(masked(Opcode::Ping, true, b"p"));
        wire.extend(masked(Opcode::Continuation, false, b"lo, "));
        wire.extend(masked(Opcode::Continuation, true, "wörld".as_bytes()));
        let (got, result, decoder) = check(100, &[&wire]);
        assert_eq!(result, Ok(()));
        assert_eq!(got, [Got::Ping(b"p".to_vec()), text("Hello, wörld")]);
        assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }

    #[test]
    fn a_control_frame_split_across_reads_comes_out_whole_and_leaves_nothing_held() {
        let mut wire = masked(Opcode::Text, false, b"a");
        wire.extend(masked(Opcode::Ping, true, b"split ping"));
        wire.extend(masked(Opcode::Continuation, true, b"b"));
        let chunks: Vec<&[u8]> = wire.chunks(3).collect();
        let (got, result, decoder) = check(100, &chunks);
        assert_eq!(result, Ok(()));
        assert_eq!(got, [Got::Ping(b"split ping".to_vec()), text("ab")]);
        assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }

    #[test]
    fn an_unmasked_client_frame_is_refused() {
        let mut wire = Vec::new();
        encode_into(&mut wire, Opcode::Text, b"hi", None);
        let (got, result, _) = check(100, &[&wire]);
        assert!(got.is_empty());
        assert_eq!(result.unwrap_err().code, code::PROTOCOL_ERROR);
    }

    #[test]
    fn a_huge_length_is_refused_from_its_header_alone() {
        // 2^62 bytes announced, and no payload: refused with nothing stored.
        let mut wire = vec![0x81, 0xFF];
        wire.extend_from_slice(&(1u64 << 62).to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3, 4]);
        let (got, result, decoder) = check(65_535, &[&wire]);
        assert!(got.is_empty());
        assert_eq!(result.unwrap_err().code, code::TOO_BIG);
        assert_eq!(decoder.capacity(), 0);
        // The most significant bit set is a protocol error.
        let mut wire = vec![0x81, 0xFF];
        wire.extend_from_slice(&u64::MAX.to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            check(65_535, &[&wire]).1.unwrap_err().code,
            code::PROTOCOL_ERROR
        );
    }

    #[test]
    fn fragments_together_over_the_limit_are_refused() {
        let mut wire = masked(Opcode::Text, false, &[b'a'; 60]);
        wire.extend(masked(Opcode::Continuation, true, &[b'b'; 60]));
        let (got, result, _) = check(100, &[&wire]);
        assert!(got.is_empty());
        assert_eq!(result.unwrap_err().code, code::TOO_BIG);
    }

    #[test]
    fn memory_grows_with_what_arrived_not_with_what_was_announced() {
        let payload = vec![b'x'; 60_000];
        let wire = masked(Opcode::Text, true, &payload);
        let mut decoder = Decoder::new(Role::Server, 65_535);
        let mut scratch = Vec::new();
        decoder
            .feed(&wire[..1_000], &mut scratch, |_| unreachable!())
            .unwrap();
        assert!(decoder.capacity() < 4_096, "{}", decoder.capacity());
        let mut n = 0;
        decoder
            .feed(&wire[1_000..], &mut scratch, |_| n += 1)
            .unwrap();
        assert_eq!((n, decoder.capacity()), (1, 0));
    }

    #[test]
    fn invalid_utf8_is_refused_with_1007() {
        let wire = masked(Opcode::Text, true, b"ok \xff\xfe");
        assert_eq!(check(100, &[&wire]).1.unwrap_err().code, code::INVALID_DATA);
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.push(0xff);
        let wire = masked(Opcode::Close, true, &close);
        assert_eq!(check(100, &[&wire]).1.unwrap_err().code, code::INVALID_DATA);
    }

    #[test]
    fn frame_rules_are_protocol_errors() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0xC1, 0x80, 0, 0, 0, 0], code::PROTOCOL_ERROR), // RSV1
            (vec![0x83, 0x80, 0, 0, 0, 0], code::PROTOCOL_ERROR), // opcode 3
            (masked(Opcode::Ping, false, b""), code::PROTOCOL_ERROR),
            (masked(Opcode::Ping, true, &[0; 126]), code::PROTOCOL_ERROR),
            (
                masked(Opcode::Continuation, true, b"x"),
                code::PROTOCOL_ERROR,
            ),
            (masked(Opcode::Binary, true, b"x"), code::UNSUPPORTED),
            (masked(Opcode::Close, true, &[3]), code::PROTOCOL_ERROR),
            (
                masked(Opcode::Close, true, &1005u16.to_be_bytes()),
                code::PROTOCOL_ERROR,
            ),
        ];
        for (wire, want) in cases {
            let (_, result, _) = check(100, &[&wire]);
            assert_eq!(result.map_err(|e| e.code), Err(want), "{wire:x?}");
        }
        let mut two_starts = masked(Opcode::Text, false, b"a");
        two_starts.extend(masked(Opcode::Text, true, b"b"));
        assert_eq!(
            check(100, &[&two_starts]).1.unwrap_err().code,
            code::PROTOCOL_ERROR
        );
    }

    #[test]
    fn a_close_frame_ends_the_stream() {
        let mut close = 1001u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let mut wire = masked(Opcode::Close, true, &close);
        wire.extend(masked(Opcode::Text, true, b"after"));
        let (got, result, decoder) = check(100, &[&wire]);
        assert_eq!(result, Ok(()));
        assert_eq!(got, [Got::Close(Some((1001, "bye".to_string())))]);
        assert!(decoder.is_closed());
        let (got, _, _) = check(100, &[&masked(Opcode::Close, true, b"")]);
        assert_eq!(got, [Got::Close(None)]);
    }

    #[test]
    fn server_frames_have_the_right_headers() {
        assert_eq!(text_frame("hi"), b"\x81\x02hi");
        let long = "x".repeat(300);
        let frame = text_frame(&long);
        assert_eq!(&frame[..4], &[0x81, 126, 1, 44]);
        assert_eq!(frame.len(), frame_len(300));
        let big = "y".repeat(70_000);
        let frame = text_frame(&big);
        assert_eq!(frame[1], 127);
        assert_eq!(frame.len(), frame_len(70_000));
        assert_eq!(close_frame(1000, ""), b"\x88\x02\x03\xe8");
        assert_eq!(pong(b"ab"), b"\x8a\x02ab");
        // A long close reason is cut to fit a control frame, at a character boundary.
        let frame = close_frame(1002, &"é".repeat(100));
        assert!(frame.len() <= 2 + MAX_CONTROL_PAYLOAD);
        let mut decoder = Decoder::new(Role::Client, 100);
        let mut got = None;
        decoder
            .feed(&frame, &mut Vec::new(), |m| {
                if let Message::Close(Some((status, reason))) = m {
                    got = Some((status, reason.chars().count()));
                }
            })
            .unwrap();
        assert_eq!(got, Some((1002, 61)));
    }

    proptest! {
        /// Messages, fragmented any way and cut at any points, come out whole and in order.
        #[test]
        fn any_split_of_any_fragmentation(
            texts in proptest::collection::vec("\\PC{0,40}", 1..6),
            fragments in proptest::collection::vec(1usize..4, 6),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut wire = Vec::new();
            for (text, &n) in texts.iter().zip(&fragments) {
                let bytes = text.as_bytes();
                let step = bytes.len() / n + 1;
                let pieces: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(step).collect() };
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 { Opcode::Text } else { Opcode::Continuation };
                    encode_frame(&mut wire, opcode, i + 1 == pieces.len(), piece, MASK);
                }
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts {
                chunks.push(&wire[from..cut]);
                from = cut;
            }
            chunks.push(&wire[from..]);
            let (got, result, decoder) = check(1_000, &chunks);
            prop_assert_eq!(result, Ok(()));
            let want: Vec<Got> = texts.iter().map(|t| text(t)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(decoder.capacity(), 0);
        }
    }
}
