//! The stamp `stress chat` puts in every frame: who sent it, its sequence
//! number, when it was due and when it left, as fixed-width ASCII digits
//! (valid UTF-8, as the chat requires):
//!
//! ```text
//! SLS1 00003 0000000000001042 0000001234567890 0000001234599123 ..
//!      sender sequence         intended (ns)    actual (ns)      padding to --size
//! ```
//!
//! On the framed door the stamp is the text of a chat message from
//! `stress-SSSSS` (`chat_header`, [`HEADER_LEN`] bytes in front of it),
//! whose header a chat server checks before it relays the frame as it came;
//! a receiver reads the stamp after whatever header arrives (a server that
//! re-stamps a frame keeps its text).
//!
//! Bytes only: no I/O, no clock. A sender patches digits into its one
//! preallocated frame; a receiver reads them back without any shared table.

/// The stamp's first bytes; a frame without them is not ours (a join notice, say).
pub(super) const MAGIC: &[u8] = b"SLS1 ";
/// Stamp layout: `SLS1 SSSSS QQQQQQQQQQQQQQQQ IIIIIIIIIIIIIIII AAAAAAAAAAAAAAAA `.
/// The three numbers a receiver reads per frame are 16 digits wide, so they
/// parse as two 8-byte words each (see [`parse16`]).
pub(super) const SENDER: std::ops::Range<usize> = 5..10;
pub(super) const SEQ: std::ops::Range<usize> = 11..27;
pub(super) const INTENDED: std::ops::Range<usize> = 28..44;
pub(super) const ACTUAL: std::ops::Range<usize> = 45..61;
/// Bytes the stamp takes; the smallest `--size`.
pub const STAMP_LEN: usize = 62;
/// Bytes of the chat header in front of a framed stamp:
/// `[YYYY-MM-DDTHH:MM:SS] stress-SSSSS:\n\t`.
pub const HEADER_LEN: usize = 37;

/// The chat header of sender `sender`'s frames, stamped `at`: [`HEADER_LEN`] bytes.
pub(super) fn chat_header(sender: u32, at: &chrono::NaiveDateTime) -> String {
    format!(
        "[{}] stress-{sender:05}:\n\t",
        at.format("%Y-%m-%dT%H:%M:%S")
    )
}

/// Writes `value` as fixed-width decimal into `out` (leading zeros; the
/// high digits are dropped if it does not fit, which the widths rule out).
pub(super) fn put_digits(out: &mut [u8], mut value: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Reads fixed-width decimal digits; `None` if any byte is not a digit.
pub(super) fn get_digits(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Eight ASCII digits (the first the most significant) as a number, checked
/// and converted a word at a time instead of a digit at a time: a receiver
/// reads three 16-digit numbers per frame, millions of frames per second.
#[inline]
pub(super) fn parse8(bytes: [u8; 8]) -> Option<u64> {
    let word = u64::from_le_bytes(bytes);
    // Every byte 0x30..=0x3f, and adding 6 keeps it there: '0'..='9'.
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    if word & HIGH != ZEROS || (word + 0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    // Combine neighbours: pairs of digits, then fours, then all eight.
    let mut x = word - ZEROS;
    x = (x * 10 + (x >> 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x * 100 + (x >> 16)) & 0x0000_ffff_0000_ffff;
    x = (x * 10_000 + (x >> 32)) & 0x0000_0000_ffff_ffff;
    Some(x)
}

/// Sixteen ASCII digits as a number (see [`parse8`]).
#[inline]
pub(super) fn parse16(bytes: &[u8]) -> Option<u64> {
    let high = parse8(bytes.get(..8)?.try_into().ok()?)?;
    let low = parse8(bytes.get(8..16)?.try_into().ok()?)?;
    Some(high * 100_000_000 + low)
}

/// A stamp taken apart: (sender, sequence, intended ns, actual ns). The
/// stamp is the message text: after a chat header, if there is one.
pub(super) fn parse_stamp(payload: &[u8]) -> Option<(u64, u64, u64, u64)> {
    let payload = match payload.first() {
        Some(b'[') => {
            let end = payload.windows(3).position(|w| w == b":\n\t")?;
            &payload[end + 3..]
        }
        _ => payload,
    };
    if payload.len() < STAMP_LEN || !payload.starts_with(MAGIC) {
        return None;
    }
    Some((
        get_digits(&payload[SENDER])?,
        parse16(&payload[SEQ])?,
        parse16(&payload[INTENDED])?,
        parse16(&payload[ACTUAL])?,
    ))
}

/// The payload of sender `sender`'s frames with zeroed numbers, padded to `size`.
pub(super) fn stamp_template(sender: u32, size: usize) -> Vec<u8> {
    let mut payload = vec![b'.'; size];
    payload[..MAGIC.len()].copy_from_slice(MAGIC);
    put_digits(&mut payload[SENDER], u64::from(sender));
    for range in [SEQ, INTENDED, ACTUAL] {
        put_digits(&mut payload[range.clone()], 0);
        payload[range.end] = b' ';
    }
    payload[SENDER.end] = b' ';
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_what_was_written() {
        let mut payload = stamp_template(3, 64);
        put_digits(&mut payload[SEQ], 1042);
        put_digits(&mut payload[INTENDED], 1_234_567_890);
        put_digits(&mut payload[ACTUAL], 1_234_599_123);
        let text = std::str::from_utf8(&payload).expect("ASCII");
        assert_eq!(
            text,
            "SLS1 00003 0000000000001042 0000001234567890 0000001234599123 ..",
        );
        assert_eq!(
            parse_stamp(&payload),
            Some((3, 1042, 1_234_567_890, 1_234_599_123))
        );
        assert_eq!(parse_stamp(b"[2026-01-01T00:00:00] server:\n\thello"), None);
        // With the chat header in front, as frames go out, or re-stamped by a server.
        let at = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
            .unwrap();
        let header = chat_header(3, &at);
        assert_eq!(header.len(), HEADER_LEN);
        let mut framed = header.into_bytes();
        framed.extend_from_slice(&payload);
        let stamp = Some((3, 1042, 1_234_567_890, 1_234_599_123));
        assert_eq!(parse_stamp(&framed), stamp);
        let mut restamped = b"[2026-01-02T03:04:05.000006] guest-4:\n\t".to_vec();
        restamped.extend_from_slice(&payload);
        assert_eq!(parse_stamp(&restamped), stamp);
    }

    #[test]
    fn eight_digits_at_a_time_agree_with_one_at_a_time() {
        for value in [0u64, 7, 42, 1_000_000, 12_345_678, 99_999_999] {
            let text = format!("{value:08}");
            assert_eq!(parse8(text.as_bytes().try_into().unwrap()), Some(value));
        }
        for bad in [
            *b"1234567a",
            *b"1234/678",
            *b"12345:78",
            *b" 1234567",
            *b"\x7f1234567",
        ] {
            assert_eq!(parse8(bad), None, "{:?}", String::from_utf8_lossy(&bad));
        }
        assert_eq!(parse16(b"0000001234567890"), Some(1_234_567_890));
        assert_eq!(parse16(b"9999999999999999"), Some(9_999_999_999_999_999));
        assert_eq!(parse16(b"00000012345678"), None);
    }
}
