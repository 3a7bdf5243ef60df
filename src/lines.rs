//! Newline-delimited input: bytes in, lines out.
//!
//! The chat programs read their user's messages from standard input a line at
//! a time, and the chat server's plain-text door serves `nc` and `telnet`
//! clients, which send lines instead of frames. Both hand whatever one `read`
//! returned to [`LineDecoder::feed`] and get whole lines back.
//!
//! Like [`framing`](crate::framing), this module never touches a file
//! descriptor or a socket, so bytes alone test it. Lines are bytes: whether
//! they must be UTF-8 is the caller's decision. A line has a maximum length,
//! checked before its bytes are buffered, so a peer that never sends a newline
//! cannot grow the buffer; between lines no buffer is held at all.

use std::fmt;

use crate::hold;

/// A line broke the configured maximum; the source of the lines cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// A line was longer than `max` bytes, not counting its line ending.
    TooLong {
        /// The largest line length allowed.
        max: usize,
    },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { max } => write!(f, "line longer than the {max}-byte maximum"),
        }
    }
}

impl std::error::Error for LineError {}

/// Turns a byte stream, split anywhere, into lines ending in `"\n"` or `"\r\n"`.
#[derive(Debug)]
pub struct LineDecoder {
    /// The longest line accepted, line ending excluded.
    max_line: usize,
    /// The start of a line whose newline has not arrived yet. Empty and
    /// unallocated between lines; never more than `max_line + 1` bytes (the
    /// extra one may be the `"\r"` of a `"\r\n"`).
    partial: Vec<u8>,
    /// Set at the first over-long line; every later call reports it again.
    failed: Option<LineError>,
}

impl LineDecoder {
    /// A decoder for lines of at most `max_line` bytes, holding no buffer.
    pub fn new(max_line: usize) -> LineDecoder {
        LineDecoder {
            max_line,
            partial: Vec::new(),
            failed: None,
        }
    }

    /// Calls `on_line` for each complete line, without its `"\n"` and without
    /// a trailing `"\r"`.
    ///
    /// Lines wholly inside `input` are passed borrowed from it; only the
    /// incomplete tail is copied. A line longer than `max_line` (line ending
    /// excluded) is an error, found as soon as the buffered tail would exceed
    /// `max_line`, before those bytes are buffered; the caller stops reading
    /// from this source, and any later call returns the same error.
    pub fn feed(&mut self, input: &[u8], mut on_line: impl FnMut(&[u8])) -> Result<(), LineError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.feed_open(input, &mut on_line);
        if let Err(error) = &result {
            self.partial = Vec::new();
            self.failed = Some(error.clone());
        }
        result
    }

    /// At end of input: the unterminated last line, if any, without a trailing
    /// `"\r"`. The buffer is emptied.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let mut line = std::mem::take(&mut self.partial);
        if line.is_empty() {
            return None;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(line)
    }

    /// Bytes held for an incomplete line.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Bytes allocated by the decoder; 0 whenever no line is incomplete.
    pub fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// [`LineDecoder::feed`] before any error.
    fn feed_open(
        &mut self,
        mut input: &[u8],
        on_line: &mut impl FnMut(&[u8]),
    ) -> Result<(), LineError> {
        if !self.partial.is_empty() {
            let Some(end) = find_newline(input) else {
                return self.buffer_tail(input);
            };
            let ends_in_cr = match end {
                0 => self.partial.last() == Some(&b'\r'),
                _ => input[end - 1] == b'\r',
            };
            let line_len = self.partial.len() + end - usize::from(ends_in_cr);
            if line_len > self.max_line {
                return Err(self.too_long());
            }
            self.partial.extend_from_slice(&input[..end]);
            on_line(strip_cr(&self.partial));
            self.partial = Vec::new();
            input = &input[end + 1..];
        }
        while let Some(end) = find_newline(input) {
            let line = strip_cr(&input[..end]);
            if line.len() > self.max_line {
                return Err(self.too_long());
            }
            on_line(line);
            input = &input[end + 1..];
        }
        self.buffer_tail(input)
    }

    /// Copies the start of a line into `partial`, unless that makes it too long.
    fn buffer_tail(&mut self, tail: &[u8]) -> Result<(), LineError> {
        if tail.is_empty() {
            return Ok(());
        }
        let new_len = self.partial.len() + tail.len();
        // A last "\r" may be the start of "\r\n", so it does not count yet.
        let ends_in_cr = tail.last() == Some(&b'\r');
        if new_len - usize::from(ends_in_cr) > self.max_line {
            return Err(self.too_long());
        }
        // Never past the longest line plus its "\r".
        hold::grow_within(&mut self.partial, tail, self.max_line.saturating_add(1));
        Ok(())
    }

    fn too_long(&self) -> LineError {
        LineError::TooLong { max: self.max_line }
    }
}

/// The index of the first `"\n"` in `bytes`.
fn find_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&byte| byte == b'\n')
}

/// `line` without one trailing `"\r"`.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` into a fresh decoder with the given maximum; returns the
    /// lines as text, the first error, and the decoder for `finish`.
    fn check(
        max_line: usize,
        chunks: &[&str],
    ) -> (Vec<String>, Result<(), LineError>, LineDecoder) {
        let mut decoder = LineDecoder::new(max_line);
        let mut lines = Vec::new();
        for chunk in chunks {
            let result = decoder.feed(chunk.as_bytes(), |line| {
                lines.push(String::from_utf8(line.to_vec()).unwrap())
            });
            if result.is_err() {
                return (lines, result, decoder);
            }
        }
        (lines, Ok(()), decoder)
    }

    #[test]
    fn several_lines_in_one_read_and_split_lines() {
        let (lines, result, decoder) = check(100, &["one\ntw", "o\n\nthr", "ee\n"]);
        assert_eq!(lines, ["one", "two", "", "three"]);
        assert_eq!(result, Ok(()));
        assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
    }

    #[test]
    fn crlf_lines() {
        let (lines, _, _) = check(100, &["a\r\nb\r", "\nc\r\r\n", "\r\n"]);
        assert_eq!(lines, ["a", "b", "c\r", ""]);
    }

    #[test]
    fn unterminated_final_line() {
        let (lines, _, mut decoder) = check(100, &["first\nsec", "ond"]);
        assert_eq!(lines, ["first"]);
        assert_eq!(decoder.buffered(), 6);
        assert_eq!(decoder.finish(), Some(b"second".to_vec()));
        assert_eq!((decoder.buffered(), decoder.capacity()), (0, 0));
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn unterminated_final_line_drops_its_carriage_return() {
        let (_, _, mut decoder) = check(100, &["last\r"]);
        assert_eq!(decoder.finish(), Some(b"last".to_vec()));
    }

    #[test]
    fn over_long_line_in_one_read() {
        let (lines, result, _) = check(3, &["abc\nabcd\nab\n"]);
        assert_eq!(lines, ["abc"]);
        assert_eq!(result, Err(LineError::TooLong { max: 3 }));
        assert_eq!(
            result.unwrap_err().to_string(),
            "line longer than the 3-byte maximum"
        );
    }

    #[test]
    fn over_long_line_found_before_its_newline_arrives() {
        let (lines, result, decoder) = check(3, &["ok\nab", "cd"]);
        assert_eq!(lines, ["ok"]);
        assert_eq!(result, Err(LineError::TooLong { max: 3 }));
        assert_eq!(decoder.capacity(), 0);
    }

    #[test]
    fn a_full_length_line_may_end_in_crlf_split_after_the_cr() {
        let (lines, result, _) = check(3, &["abc\r", "\n"]);
        assert_eq!(lines, ["abc"]);
        assert_eq!(result, Ok(()));
        let (_, result, _) = check(3, &["abc\r", "x"]);
        assert_eq!(result, Err(LineError::TooLong { max: 3 }));
    }

    #[test]
    fn the_buffer_never_outgrows_the_longest_line() {
        let mut decoder = LineDecoder::new(10);
        for _ in 0..10 {
            decoder.feed(b"a", |_| unreachable!()).unwrap();
        }
        assert!(decoder.capacity() <= 11);
        assert_eq!(
            decoder.feed(b"a", |_| {}),
            Err(LineError::TooLong { max: 10 })
        );
        assert_eq!(
            decoder.feed(b"\n", |_| {}),
            Err(LineError::TooLong { max: 10 })
        );
    }
}
