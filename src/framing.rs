//! The TCP chat's wire format: a length prefix, then that many bytes of text.
//!
//! Each frame is a big-endian unsigned length (2 bytes, as the course's Python
//! `Connection` class sends, or 4 bytes, as on the lecture's framing slide),
//! followed by that many bytes of UTF-8 message text. A frame of length 0 means
//! "the peer is closing".
//!
//! This module turns bytes into frames and frames into bytes, and nothing else:
//! it never touches a socket and never reads or writes. The connection code
//! hands [`Decoder::feed`] whatever one `read` returned, however it was split,
//! and gets whole frames back; so the decoder can be tested with bytes alone.
//!
//! Three rules keep a hostile or broken peer from costing memory:
//! - the announced length is checked against [`FrameConfig::max_frame`] before
//!   anything is buffered or allocated for it;
//! - memory follows the bytes that arrived, never the length announced: an
//!   incomplete frame is held in a buffer that grows with what came (doubling,
//!   at most up to the checked frame length), so a peer that announces 64 KiB
//!   or 4 GiB and sends one byte costs a few dozen bytes;
//! - only an incomplete frame is ever copied, and an idle connection holds no
//!   buffer at all.
//!
//! Frames that arrive whole inside one read are handed out borrowed from that
//! read, together with their exact wire bytes, so a relay can forward a frame
//! without decoding or re-encoding it.

use std::fmt;
use std::rc::Rc;

use crate::hold;

pub use crate::hold::MIN_HOLD;

/// How many bytes the length prefix takes; both ends must agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixLen {
    /// A 2-byte prefix, what the course's Python `Connection` class sends (the default).
    Two,
    /// A 4-byte prefix, as on the lecture's framing slide (`--length-bytes 4`).
    Four,
}

impl PrefixLen {
    /// The number of bytes the prefix takes on the wire.
    pub fn bytes(self) -> usize {
        match self {
            PrefixLen::Two => 2,
            PrefixLen::Four => 4,
        }
    }

    /// The largest payload length this prefix can express.
    pub fn max_len(self) -> usize {
        match self {
            PrefixLen::Two => u16::MAX as usize,
            PrefixLen::Four => u32::MAX as usize,
        }
    }
}

/// The framing both ends of a connection agreed on.
#[derive(Clone, Copy, Debug)]
pub struct FrameConfig {
    /// The width of the length prefix.
    pub prefix: PrefixLen,
    /// The largest payload accepted or sent (`--max-frame`); a longer one is a protocol error.
    pub max_frame: usize,
}

impl Default for FrameConfig {
    /// A 2-byte prefix and frames of at most 65,535 bytes, like the course's Python.
    fn default() -> FrameConfig {
        FrameConfig {
            prefix: PrefixLen::Two,
            max_frame: 65_535,
        }
    }
}

impl FrameConfig {
    /// The largest payload length allowed by both `max_frame` and the prefix width.
    fn limit(self) -> usize {
        self.max_frame.min(self.prefix.max_len())
    }
}

/// A protocol error: the connection it came from cannot go on and is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced (or a sender tried to send) more bytes than allowed.
    TooLong {
        /// The length that was announced or asked for.
        len: u64,
        /// The largest length allowed.
        max: usize,
    },
    /// A frame's payload is not UTF-8 text.
    InvalidUtf8 {
        /// How many leading bytes of the payload were valid.
        valid_up_to: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte maximum")
            }
            FrameError::InvalidUtf8 { valid_up_to } => write!(
                f,
                "frame is not valid utf-8 after its first {valid_up_to} bytes"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// One whole frame out of the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message.
    Message {
        /// The payload as text (already checked to be UTF-8).
        text: &'a str,
        /// Prefix and payload exactly as received, so a relay can forward the
        /// frame without re-encoding it.
        wire: &'a [u8],
    },
    /// The zero-length frame: the peer is closing.
    Close,
}

/// Where the decoder is in the stream.
#[derive(Debug)]
enum State {
    /// Between frames or inside one; `partial` holds an incomplete frame, if any.
    Open,
    /// A close frame arrived; everything after it is ignored.
    Closed,
    /// A protocol error was found; the stream cannot be resynchronised.
    Failed(FrameError),
}

/// Turns a byte stream, split anywhere, into frames.
#[derive(Debug)]
pub struct Decoder {
    /// The framing agreed for this connection.
    config: FrameConfig,
    /// An incomplete frame: its prefix (maybe only part of it) and the payload
    /// bytes so far. Empty and unallocated between frames. Its capacity grows
    /// with the bytes held (see [`Decoder::hold`]): at most twice what it
    /// holds, or [`MIN_HOLD`], and never more than the whole frame, whose
    /// length was checked against the maximum before anything was held.
    partial: Vec<u8>,
    /// Open until a close frame or a protocol error.
    state: State,
}

impl Decoder {
    /// A decoder at the start of a stream, holding no buffer.
    pub fn new(config: FrameConfig) -> Decoder {
        Decoder {
            config,
            partial: Vec::new(),
            state: State::Open,
        }
    }

    /// Feeds bytes; calls `on_frame` for every whole frame, in order.
    ///
    /// Frames lying wholly inside `input` are passed borrowed from `input`
    /// (no copy); only an incomplete tail is copied into the decoder. Needing
    /// more bytes is not an error: the call just returns `Ok(())`.
    ///
    /// Returns `Err` at the first protocol error; the caller closes the
    /// connection, and any later call returns the same error. After a
    /// [`Frame::Close`] the rest of `input`, and anything fed later, is ignored.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), FrameError> {
        match &self.state {
            State::Open => {}
            State::Closed => return Ok(()),
            State::Failed(error) => return Err(error.clone()),
        }
        let result = self.feed_open(input, &mut on_frame);
        if let Err(error) = &result {
            self.partial = Vec::new();
            self.state = State::Failed(error.clone());
        }
        result
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Bytes allocated by the decoder; 0 whenever no frame is incomplete.
    pub fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// [`Decoder::feed`] while the stream is open.
    fn feed_open(
        &mut self,
        mut input: &[u8],
        on_frame: &mut impl FnMut(Frame<'_>),
    ) -> Result<(), FrameError> {
        if !self.partial.is_empty() {
            input = match self.continue_partial(input, on_frame)? {
                Some(rest) => rest,
                None => return Ok(()),
            };
        }
        let prefix_bytes = self.config.prefix.bytes();
        // The fast path: whole frames straight out of `input`, no copying.
        while !input.is_empty() {
            if input.len() < prefix_bytes {
                self.hold(input, prefix_bytes);
                return Ok(());
            }
            let payload_len = read_prefix(&input[..prefix_bytes]);
            let frame_len = self.check_len(payload_len)?;
            if payload_len == 0 {
                self.state = State::Closed;
                on_frame(Frame::Close);
                return Ok(());
            }
            if input.len() < frame_len {
                self.hold(input, frame_len);
                return Ok(());
            }
            let (wire, rest) = input.split_at(frame_len);
            on_frame(message(wire, prefix_bytes)?);
            input = rest;
        }
        Ok(())
    }

    /// Adds bytes to the incomplete frame in `partial`. Returns the input left
    /// over once that frame is done, or `None` when all input was consumed
    /// (the frame is still incomplete, or it was a close frame).
    fn continue_partial<'i>(
        &mut self,
        mut input: &'i [u8],
        on_frame: &mut impl FnMut(Frame<'_>),
    ) -> Result<Option<&'i [u8]>, FrameError> {
        let prefix_bytes = self.config.prefix.bytes();
        if self.partial.len() < prefix_bytes {
            let take = (prefix_bytes - self.partial.len()).min(input.len());
            self.hold(&input[..take], prefix_bytes);
            input = &input[take..];
            if self.partial.len() < prefix_bytes {
                return Ok(None);
            }
            let payload_len = read_prefix(&self.partial);
            self.check_len(payload_len)?;
            if payload_len == 0 {
                self.partial = Vec::new();
                self.state = State::Closed;
                on_frame(Frame::Close);
                return Ok(None);
            }
        }
        let frame_len = prefix_bytes + read_prefix(&self.partial[..prefix_bytes]);
        let take = (frame_len - self.partial.len()).min(input.len());
        self.hold(&input[..take], frame_len);
        if self.partial.len() < frame_len {
            return Ok(None);
        }
        on_frame(message(&self.partial, prefix_bytes)?);
        self.partial = Vec::new();
        Ok(Some(&input[take..]))
    }

    /// Appends `bytes` to the incomplete frame. The buffer grows with what
    /// arrived, doubling (from [`MIN_HOLD`]) so that a frame trickling in
    /// costs few reallocations, and never past `most`: the whole frame once
    /// its length is known and checked, the prefix before that. What the peer
    /// *announced* never decides an allocation.
    fn hold(&mut self, bytes: &[u8], most: usize) {
        hold::grow_within(&mut self.partial, bytes, most);
    }

    /// Checks an announced payload length and returns the whole frame's length.
    fn check_len(&self, payload_len: usize) -> Result<usize, FrameError> {
        let too_long = FrameError::TooLong {
            len: payload_len as u64,
            max: self.config.max_frame,
        };
        if payload_len > self.config.max_frame {
            return Err(too_long);
        }
        // Only reachable where usize is 32 bits and the limit is near u32::MAX.
        payload_len
            .checked_add(self.config.prefix.bytes())
            .ok_or(too_long)
    }
}

/// The payload length announced by a whole prefix (big-endian).
fn read_prefix(prefix: &[u8]) -> usize {
    prefix
        .iter()
        .fold(0usize, |len, &byte| (len << 8) | usize::from(byte))
}

/// A whole non-empty frame as a [`Frame::Message`], once its payload is checked.
fn message(wire: &[u8], prefix_bytes: usize) -> Result<Frame<'_>, FrameError> {
    match std::str::from_utf8(&wire[prefix_bytes..]) {
        Ok(text) => Ok(Frame::Message { text, wire }),
        Err(error) => Err(FrameError::InvalidUtf8 {
            valid_up_to: error.valid_up_to(),
        }),
    }
}

/// `payload_len` as four big-endian bytes, once checked against the configured
/// maximum; the prefix is the last [`PrefixLen::bytes`] of them.
fn prefix_for(payload_len: usize, config: FrameConfig) -> Result<[u8; 4], FrameError> {
    let max = config.limit();
    if payload_len > max {
        return Err(FrameError::TooLong {
            len: payload_len as u64,
            max,
        });
    }
    // Fits in 32 bits: the limit is at most u32::MAX.
    Ok((payload_len as u32).to_be_bytes())
}

/// The number of bytes a payload of `payload_len` bytes takes on the wire.
pub fn encoded_len(payload_len: usize, config: FrameConfig) -> usize {
    config.prefix.bytes() + payload_len
}

/// Appends the frame for `payload` (prefix, then payload) to `out`.
///
/// Fails with [`FrameError::TooLong`], appending nothing, when the payload is
/// longer than `max_frame` or than the prefix can express.
pub fn encode_into(
    out: &mut Vec<u8>,
    payload: &[u8],
    config: FrameConfig,
) -> Result<(), FrameError> {
    let prefix = prefix_for(payload.len(), config)?;
    out.reserve(encoded_len(payload.len(), config));
    out.extend_from_slice(&prefix[4 - config.prefix.bytes()..]);
    out.extend_from_slice(payload);
    Ok(())
}

/// The frame for `payload` in one shared allocation, meant to be queued for
/// many recipients without copying it per recipient.
///
/// Fails with [`FrameError::TooLong`] like [`encode_into`].
pub fn encode(payload: &[u8], config: FrameConfig) -> Result<Rc<[u8]>, FrameError> {
    let prefix = prefix_for(payload.len(), config)?;
    let prefix = &prefix[4 - config.prefix.bytes()..];
    // Collecting an iterator of known length allocates once at the right size,
    // and filling with zeros compiles to a memset; then two plain copies. (Our
    // minimum Rust version predates `Rc::new_uninit_slice`.)
    let mut frame: Rc<[u8]> = std::iter::repeat(0)
        .take(encoded_len(payload.len(), config))
        .collect();
    let bytes = Rc::get_mut(&mut frame).expect("a new Rc is not shared");
    bytes[..prefix.len()].copy_from_slice(prefix);
    bytes[prefix.len()..].copy_from_slice(payload);
    Ok(frame)
}

/// The zero-length frame that says "I am closing".
pub fn close_frame(config: FrameConfig) -> &'static [u8] {
    match config.prefix {
        PrefixLen::Two => &[0; 2],
        PrefixLen::Four => &[0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: FrameConfig = FrameConfig {
        prefix: PrefixLen::Two,
        max_frame: 65_535,
    };
    const FOUR: FrameConfig = FrameConfig {
        prefix: PrefixLen::Four,
        max_frame: 65_535,
    };

    /// What one frame decoded to, owned so it outlives the feed.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Message(String),
        Close,
    }

    /// Feeds `chunks` one after the other into a fresh decoder and returns the
    /// frames, checking on the way that every `wire` is the frame re-encoded.
    fn check(config: FrameConfig, chunks: &[&[u8]]) -> (Vec<Got>, Result<(), FrameError>, Decoder) {
        let mut decoder = Decoder::new(config);
        let mut got = Vec::new();
        for chunk in chunks {
            let result = decoder.feed(chunk, |frame| match frame {
                Frame::Message { text, wire } => {
                    assert_eq!(&*encode(text.as_bytes(), config).unwrap(), wire);
                    got.push(Got::Message(text.to_string()));
                }
                Frame::Close => got.push(Got::Close),
            });
            if result.is_err() {
                return (got, result, decoder);
            }
        }
        (got, Ok(()), decoder)
    }

    fn msg(text: &str) -> Got {
        Got::Message(text.to_string())
    }

    #[test]
    fn split_two_byte_prefix() {
        let (got, result, decoder) = check(TWO, &[b"\x00", b"\x05hel", b"lo"]);
        assert_eq!(got, [msg("hello")]);
        assert_eq!(result, Ok(()));
        assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }

    #[test]
    fn split_four_byte_prefix_byte_by_byte() {
        let wire = b"\x00\x00\x00\x02hi";
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        let (got, result, _) = check(FOUR, &chunks);
        assert_eq!(got, [msg("hi")]);
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn several_frames_in_one_read() {
        let (got, result, decoder) = check(TWO, &[b"\x00\x01a\x00\x02bc\x00\x03def\x00"]);
        assert_eq!(got, [msg("a"), msg("bc"), msg("def")]);
        assert_eq!(result, Ok(()));
        assert_eq!(decoder.buffered(), 1);
    }

    #[test]
    fn a_split_frame_then_whole_frames_in_the_same_read() {
        let (got, _, decoder) = check(TWO, &[b"\x00\x03ab", b"c\x00\x01d\x00\x02e", b"f"]);
        assert_eq!(got, [msg("abc"), msg("d"), msg("ef")]);
        assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }

    #[test]
    fn an_incomplete_frame_holds_what_arrived_not_what_was_announced() {
        // Small frame: never more than the frame itself.
        let mut decoder = Decoder::new(TWO);
        decoder.feed(b"\x00\x0aabc", |_| unreachable!()).unwrap();
        assert_eq!(decoder.buffered(), 5);
        assert_eq!(decoder.capacity(), 12);
        // A 65,535-byte frame announced, one byte of it sent.
        let mut decoder = Decoder::new(TWO);
        decoder.feed(b"\xff\xff!", |_| unreachable!()).unwrap();
        assert_eq!(decoder.buffered(), 3);
        assert_eq!(decoder.capacity(), MIN_HOLD);
        // Four gigabytes may be announced where the maximum allows it.
        let wide = FrameConfig {
            prefix: PrefixLen::Four,
            max_frame: u32::MAX as usize - 4,
        };
        let mut decoder = Decoder::new(wide);
        decoder
            .feed(b"\xff\xff\xff\xfa!", |_| unreachable!())
            .unwrap();
        assert_eq!(decoder.capacity(), MIN_HOLD);
        // Then it grows by doubling as the bytes come.
        decoder.feed(&[b'a'; 100], |_| unreachable!()).unwrap();
        assert_eq!(decoder.capacity(), 2 * MIN_HOLD);
        decoder.feed(&[b'a'; 1000], |_| unreachable!()).unwrap();
        assert_eq!(decoder.capacity(), 1105);
    }

    #[test]
    fn zero_length_frame_closes_and_the_rest_is_ignored() {
        let (got, result, _) = check(TWO, &[b"\x00\x01a\x00\x00\x00\x01b", b"\x00\x01c"]);
        assert_eq!(got, [msg("a"), Got::Close]);
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn zero_length_frame_split_across_reads() {
        let (got, result, decoder) = check(FOUR, &[b"\x00\x00", b"\x00\x00garbage"]);
        assert_eq!(got, [Got::Close]);
        assert_eq!(result, Ok(()));
        assert_eq!(decoder.capacity(), 0);
    }

    #[test]
    fn oversize_two_byte_frame() {
        let config = FrameConfig {
            prefix: PrefixLen::Two,
            max_frame: 100,
        };
        let (got, result, decoder) = check(config, &[b"\x00\x01a\x00\x65"]);
        assert_eq!(got, [msg("a")]);
        assert_eq!(result, Err(FrameError::TooLong { len: 101, max: 100 }));
        assert_eq!(decoder.capacity(), 0);
    }

    #[test]
    fn oversize_four_byte_frame_fails_before_allocating() {
        let (got, result, decoder) = check(FOUR, &[b"\xff\xff", b"\xff\xf0"]);
        assert!(got.is_empty());
        let error = result.unwrap_err();
        assert_eq!(
            error,
            FrameError::TooLong {
                len: 0xFFFF_FFF0,
                max: 65_535
            }
        );
        assert_eq!(
            error.to_string(),
            "frame of 4294967280 bytes exceeds the 65535-byte maximum"
        );
        assert_eq!(decoder.capacity(), 0);
    }

    #[test]
    fn a_failed_decoder_keeps_failing() {
        let mut decoder = Decoder::new(FOUR);
        let first = decoder.feed(b"\x01\x00\x00\x00", |_| {}).unwrap_err();
        let again = decoder.feed(b"\x00\x00\x00\x01a", |_| panic!("decoded after an error"));
        assert_eq!(again, Err(first));
    }

    #[test]
    fn invalid_utf8() {
        let (got, result, _) = check(TWO, &[b"\x00\x01a\x00\x03ab\xff\x00\x01c"]);
        assert_eq!(got, [msg("a")]);
        assert_eq!(result, Err(FrameError::InvalidUtf8 { valid_up_to: 2 }));
        assert_eq!(
            result.unwrap_err().to_string(),
            "frame is not valid utf-8 after its first 2 bytes"
        );
    }

    #[test]
    fn invalid_utf8_in_a_buffered_frame() {
        let (_, result, _) = check(TWO, &[b"\x00\x02\xc3", b"\x28"]);
        assert_eq!(result, Err(FrameError::InvalidUtf8 { valid_up_to: 0 }));
    }

    #[test]
    fn multibyte_text_split_inside_a_character() {
        let wire = encode("grüße ✓".as_bytes(), TWO).unwrap();
        let (first, second) = wire.split_at(5);
        let (got, _, _) = check(TWO, &[first, second]);
        assert_eq!(got, [msg("grüße ✓")]);
    }

    #[test]
    fn encode_writes_big_endian_prefixes() {
        assert_eq!(&*encode(b"hi", TWO).unwrap(), b"\x00\x02hi");
        assert_eq!(&*encode(b"hi", FOUR).unwrap(), b"\x00\x00\x00\x02hi");
        let mut out = b"x".to_vec();
        encode_into(&mut out, &[7; 258], TWO).unwrap();
        assert_eq!(&out[..3], b"x\x01\x02");
        assert_eq!(out.len(), 1 + encoded_len(258, TWO));
        assert_eq!(close_frame(TWO), b"\x00\x00");
        assert_eq!(close_frame(FOUR), b"\x00\x00\x00\x00");
    }

    #[test]
    fn encode_refuses_what_the_prefix_or_maximum_cannot_carry() {
        let big = vec![b'a'; 65_536];
        let wide = FrameConfig {
            prefix: PrefixLen::Two,
            max_frame: usize::MAX,
        };
        let expected = FrameError::TooLong {
            len: 65_536,
            max: 65_535,
        };
        assert_eq!(encode(&big, wide).unwrap_err(), expected);
        let mut out = Vec::new();
        assert_eq!(encode_into(&mut out, &big, FOUR), Err(expected));
        assert!(out.is_empty());
        let four_wide = FrameConfig {
            prefix: PrefixLen::Four,
            max_frame: 100_000,
        };
        assert_eq!(encode(&big, four_wide).unwrap().len(), 65_540);
    }
}
