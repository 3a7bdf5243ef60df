// The TCP chat's framing and the line decoder, through their public API only:
// messages survive encoding, any cutting of the stream into reads, and
// decoding; over-long lengths are refused before anything is allocated for
// them; and decoding frames that arrive whole allocates nothing at all.
//
// A counting global allocator (per thread, since tests run in parallel)
// proves the allocation claims instead of trusting them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use sockloop::framing::{
    close_frame, encode, encode_into, encoded_len, Decoder, Frame, FrameConfig, FrameError,
    PrefixLen, MIN_HOLD,
};
use sockloop::lines::{LineDecoder, LineError};

/// The system allocator, counting allocations made by the current thread.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// How many allocations `work` made on this thread.
fn allocations_in<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = work();
    (result, ALLOCATIONS.with(Cell::get) - before)
}

fn config(prefix: PrefixLen) -> FrameConfig {
    FrameConfig {
        prefix,
        ..FrameConfig::default()
    }
}

/// One decoded frame, owned: the text and the wire bytes, or a close.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Message { text: String, wire: Vec<u8> },
    Close,
}

/// Feeds `chunks` in order into one fresh decoder; returns every frame, the
/// first error (feeding stops there) and the decoder.
fn decode<'a>(
    config: FrameConfig,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Got>, Result<(), FrameError>, Decoder) {
    let mut decoder = Decoder::new(config);
    let mut got = Vec::new();
    for chunk in chunks {
        let result = decoder.feed(chunk, |frame| {
            got.push(match frame {
                Frame::Message { text, wire } => Got::Message {
                    text: text.to_string(),
                    wire: wire.to_vec(),
                },
                Frame::Close => Got::Close,
            })
        });
        if result.is_err() {
            return (got, result, decoder);
        }
    }
    (got, Ok(()), decoder)
}

/// The frames each message should decode to.
fn expected(messages: &[String], config: FrameConfig) -> Vec<Got> {
    messages
        .iter()
        .map(|text| Got::Message {
            text: text.clone(),
            wire: encode(text.as_bytes(), config).unwrap().to_vec(),
        })
        .collect()
}

/// `stream` cut at the given points (taken modulo its length, in any order).
fn cut<'a>(stream: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

fn any_prefix() -> impl Strategy<Value = PrefixLen> {
    prop_oneof![Just(PrefixLen::Two), Just(PrefixLen::Four)]
}

/// Text of 1 to 1999 characters, any of them multibyte.
fn any_message() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 1..2000).prop_map(String::from_iter)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn messages_survive_any_cutting_of_the_stream(
        prefix in any_prefix(),
        messages in prop::collection::vec(any_message(), 0..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let config = config(prefix);
        let mut stream = Vec::new();
        for text in &messages {
            encode_into(&mut stream, text.as_bytes(), config).unwrap();
        }
        let (got, result, decoder) = decode(config, cut(&stream, &cuts));
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(got, expected(&messages, config));
        prop_assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }

    #[test]
    fn a_close_frame_ends_the_stream_wherever_it_is_cut(
        prefix in any_prefix(),
        messages in prop::collection::vec(any_message(), 0..4),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let config = config(prefix);
        let mut stream = Vec::new();
        for text in &messages {
            encode_into(&mut stream, text.as_bytes(), config).unwrap();
        }
        stream.extend_from_slice(close_frame(config));
        encode_into(&mut stream, b"after the close", config).unwrap();
        let (got, result, _) = decode(config, cut(&stream, &cuts));
        prop_assert_eq!(result, Ok(()));
        let mut want = expected(&messages, config);
        want.push(Got::Close);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn four_byte_lengths_above_the_maximum_are_refused_unallocated(
        max_frame in 0usize..200_000,
        excess in 1u64..=u64::from(u32::MAX),
        split in 0usize..=4,
    ) {
        let len = (max_frame as u64 + excess).min(u64::from(u32::MAX));
        let config = FrameConfig { prefix: PrefixLen::Four, max_frame };
        let header = (len as u32).to_be_bytes();
        let (first, second) = header.split_at(split);
        let (got, result, decoder) = decode(config, [first, second]);
        prop_assert!(got.is_empty());
        prop_assert_eq!(result, Err(FrameError::TooLong { len, max: max_frame }));
        prop_assert!(decoder.capacity() < 64);
    }

    #[test]
    fn two_byte_lengths_above_the_maximum_are_refused_unallocated(
        (max_frame, len) in (20u16..u16::MAX)
            .prop_flat_map(|max_frame| (Just(usize::from(max_frame)), max_frame + 1..=u16::MAX)),
        before in prop::collection::vec("[a-z]{1,20}", 0..3),
    ) {
        let config = FrameConfig { prefix: PrefixLen::Two, max_frame };
        let mut stream = Vec::new();
        for text in &before {
            encode_into(&mut stream, text.as_bytes(), config).unwrap();
        }
        stream.extend_from_slice(&len.to_be_bytes());
        let (got, result, decoder) = decode(config, stream.chunks(1));
        prop_assert_eq!(got, expected(&before, config));
        prop_assert_eq!(
            result,
            Err(FrameError::TooLong { len: u64::from(len), max: config.max_frame })
        );
        prop_assert!(decoder.capacity() < 64);
    }

    /// Whatever a peer announces and however its bytes are cut, the decoder
    /// never holds more than about twice what it was actually sent.
    #[test]
    fn memory_follows_the_bytes_held_not_the_length_announced(
        prefix in any_prefix(),
        messages in prop::collection::vec(any_message(), 0..6),
        announced in 1u32..(1 << 24),
        sent_of_it in 0usize..5000,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let config = FrameConfig { prefix, max_frame: prefix.max_len() };
        let mut stream = Vec::new();
        for text in &messages {
            encode_into(&mut stream, text.as_bytes(), config).unwrap();
        }
        // Then a frame that announces `announced` bytes and sends only some.
        let announced = (announced as usize).min(prefix.max_len());
        let header = (announced as u32).to_be_bytes();
        stream.extend_from_slice(&header[4 - prefix.bytes()..]);
        stream.extend(std::iter::repeat(b'a').take(sent_of_it.min(announced - 1)));
        let mut decoder = Decoder::new(config);
        for chunk in cut(&stream, &cuts) {
            prop_assert_eq!(decoder.feed(chunk, |_| {}), Ok(()));
            let (held, capacity) = (decoder.buffered(), decoder.capacity());
            prop_assert!(
                capacity <= 2 * held.max(MIN_HOLD),
                "{} bytes allocated for {} held", capacity, held
            );
        }
    }

    #[test]
    fn encoding_refuses_payloads_above_the_maximum(
        prefix in any_prefix(),
        max_frame in 0usize..1000,
        len in 0usize..1100,
    ) {
        let config = FrameConfig { prefix, max_frame };
        let payload = vec![b'x'; len];
        let mut out = Vec::new();
        let result = encode_into(&mut out, &payload, config);
        if len > max_frame {
            let too_long = FrameError::TooLong { len: len as u64, max: max_frame };
            prop_assert_eq!(result, Err(too_long.clone()));
            prop_assert!(out.is_empty());
            prop_assert_eq!(encode(&payload, config).unwrap_err(), too_long);
        } else {
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(out.len(), encoded_len(len, config));
            prop_assert_eq!(&out[..], &*encode(&payload, config).unwrap());
        }
    }
}

#[test]
fn a_thousand_frames_in_one_feed_allocate_nothing() {
    for prefix in [PrefixLen::Two, PrefixLen::Four] {
        let config = config(prefix);
        let messages: Vec<String> = (0..1000).map(|i| format!("message {i} · ✓")).collect();
        let mut stream = Vec::new();
        for text in &messages {
            encode_into(&mut stream, text.as_bytes(), config).unwrap();
        }
        let mut decoder = Decoder::new(config);
        let mut n_frames = 0;
        let mut wire_bytes = 0;
        let (result, n_allocations) = allocations_in(|| {
            decoder.feed(&stream, |frame| {
                if let Frame::Message { wire, .. } = frame {
                    n_frames += 1;
                    wire_bytes += wire.len();
                }
            })
        });
        assert_eq!(result, Ok(()));
        assert_eq!((n_frames, wire_bytes), (1000, stream.len()));
        assert_eq!(n_allocations, 0, "decoding whole frames must not allocate");
        assert_eq!(decoder.capacity(), 0);
        let (got, _, _) = decode(config, [&stream[..]]);
        assert_eq!(got, expected(&messages, config));
    }
}

#[test]
fn frames_fed_one_byte_at_a_time() {
    for prefix in [PrefixLen::Two, PrefixLen::Four] {
        let config = config(prefix);
        let messages: Vec<String> = ["a", "grüße", "✓✓✓", &"long ".repeat(3000)]
            .iter()
            .map(|text| text.to_string())
            .collect();
        let mut stream = Vec::new();
        for text in &messages {
            encode_into(&mut stream, text.as_bytes(), config).unwrap();
        }
        let (got, result, decoder) = decode(config, stream.chunks(1));
        assert_eq!(result, Ok(()));
        assert_eq!(got, expected(&messages, config));
        assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }
}

#[test]
fn a_split_frame_grows_with_what_arrived_in_few_allocations() {
    let config = config(PrefixLen::Four);
    let frame = encode(&[b'z'; 60_000], config).unwrap();
    let mut decoder = Decoder::new(config);
    let (n_frames, n_allocations) = allocations_in(|| {
        let mut n_frames = 0;
        decoder.feed(&frame[..10], |_| n_frames += 1).unwrap();
        for bytes in frame[10..].chunks(7) {
            decoder.feed(bytes, |_| n_frames += 1).unwrap();
            assert!(decoder.capacity() <= frame.len());
            assert!(decoder.capacity() <= 2 * decoder.buffered().max(MIN_HOLD));
        }
        n_frames
    });
    // Doubling from 64 bytes to 60,004: eleven allocations, not one per read.
    assert_eq!(n_frames, 1);
    assert!(n_allocations <= 12, "{n_allocations} allocations");
    assert_eq!(decoder.capacity(), 0);
}

#[test]
fn encode_makes_one_allocation() {
    for prefix in [PrefixLen::Two, PrefixLen::Four] {
        let payload = vec![b'q'; 65_535];
        let (frame, n_allocations) = allocations_in(|| encode(&payload, config(prefix)).unwrap());
        assert_eq!(n_allocations, 1);
        assert_eq!(frame.len(), encoded_len(payload.len(), config(prefix)));
    }
}

/// What a line decoder made of a whole input.
struct Lines {
    /// Every complete line, in order.
    lines: Vec<Vec<u8>>,
    /// The unterminated last line, from `finish` (not called after an error).
    last: Option<Vec<u8>>,
    /// The first error; feeding stopped there.
    result: Result<(), LineError>,
    decoder: LineDecoder,
}

/// Feeds `chunks` in order into one fresh line decoder, then calls `finish`.
fn lines<'a>(max_line: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Lines {
    let mut decoder = LineDecoder::new(max_line);
    let mut lines = Vec::new();
    for chunk in chunks {
        let result = decoder.feed(chunk, |line| lines.push(line.to_vec()));
        if result.is_err() {
            return Lines {
                lines,
                last: None,
                result,
                decoder,
            };
        }
    }
    let last = decoder.finish();
    Lines {
        lines,
        last,
        result: Ok(()),
        decoder,
    }
}

/// A line's bytes without a newline, often with carriage returns.
fn any_line_content() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        1 => Just(b'\r'),
        8 => any::<u8>().prop_map(|b| if b == b'\n' { b'n' } else { b }),
    ];
    prop::collection::vec(byte, 0..300)
}

fn without_cr(line: &[u8]) -> Vec<u8> {
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn lines_survive_any_cutting_of_the_stream(
        terminated in prop::collection::vec((any_line_content(), any::<bool>()), 0..12),
        last in any_line_content(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let mut stream = Vec::new();
        for (content, crlf) in &terminated {
            stream.extend_from_slice(content);
            stream.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
        }
        stream.extend_from_slice(&last);
        let Lines { lines: got, last: got_last, result, decoder } = lines(300, cut(&stream, &cuts));
        prop_assert_eq!(result, Ok(()));
        let want: Vec<Vec<u8>> = terminated
            .iter()
            .map(|(content, crlf)| if *crlf { content.clone() } else { without_cr(content) })
            .collect();
        prop_assert_eq!(got, want);
        let want_last = (!last.is_empty()).then(|| without_cr(&last));
        prop_assert_eq!(got_last, want_last);
        prop_assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }

    #[test]
    fn over_long_lines_are_refused_without_buffering_them(
        max_line in 4usize..100,
        excess in 1usize..200,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        newline in any::<bool>(),
    ) {
        let mut stream = b"fine\n".to_vec();
        stream.resize(stream.len() + max_line + excess, b'y');
        if newline {
            stream.push(b'\n');
        }
        let Lines { lines: got, result, decoder, .. } = lines(max_line, cut(&stream, &cuts));
        prop_assert_eq!(got, vec![b"fine".to_vec()]);
        prop_assert_eq!(result, Err(LineError::TooLong { max: max_line }));
        prop_assert_eq!(decoder.capacity(), 0);
    }
}

#[test]
fn a_thousand_lines_in_one_feed_allocate_nothing() {
    let stream: Vec<u8> = (0..1000)
        .flat_map(|i| format!("line {i}\r\n").into_bytes())
        .collect();
    let mut decoder = LineDecoder::new(100);
    let mut n_lines = 0;
    let (result, n_allocations) = allocations_in(|| decoder.feed(&stream, |_| n_lines += 1));
    assert_eq!(result, Ok(()));
    assert_eq!((n_lines, n_allocations), (1000, 0));
}

#[test]
fn lines_fed_one_byte_at_a_time() {
    let stream = b"one\r\ntwo\n\nfour\r\r\nfive";
    let Lines {
        lines: got,
        last,
        result,
        ..
    } = lines(10, stream.chunks(1));
    assert_eq!(result, Ok(()));
    let want: Vec<&[u8]> = vec![b"one", b"two", b"", b"four\r"];
    assert_eq!(got, want);
    assert_eq!(last, Some(b"five".to_vec()));
}
