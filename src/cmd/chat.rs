//! What the two ends of the TCP chat share: the framing options and the
//! local user's typing.
//!
//! `chat server` and `chat client` both take `--length-bytes` and
//! `--max-frame`, and both turn what their user types on stdin into chat
//! messages: the first line is the name when none was given, empty lines are
//! not sent, a line that is exactly the leave text is refused with a hint,
//! and an over-long line is skipped without stopping the input.
//!
//! No sockets here, and no decision about where a message goes: that is the
//! command's business. Bytes in, names and lines out.

use std::borrow::Cow;
use std::io::IsTerminal;

use clap::{Args as ClapArgs, ValueEnum};

use crate::chat_msg;
use crate::error::{Error, Result};
use crate::framing::{FrameConfig, PrefixLen};
use crate::lines::LineDecoder;
use crate::safe_text::check_name;

/// The width of a frame's length prefix, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LengthBytes {
    /// Two bytes: what the course's Python `Connection` class sends.
    #[value(name = "2")]
    Two,
    /// Four bytes: the lecture's framing slide.
    #[value(name = "4")]
    Four,
}

/// The framing options both chat commands take.
#[derive(Debug, Clone, ClapArgs)]
pub struct FramingArgs {
    /// Bytes in each frame's length prefix: 2 (the course's Python) or 4 (the
    /// lecture's framing slide). Both ends must agree.
    #[arg(long, value_enum, default_value = "2")]
    pub length_bytes: LengthBytes,
    /// Longest message in bytes, received or sent. A longer incoming frame is a
    /// protocol error that closes that one connection; a longer typed line is not sent.
    #[arg(long, default_value_t = 65_535, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_frame: u32,
}

impl FramingArgs {
    /// The codec's settings, once `--max-frame` is known to fit the prefix.
    pub fn config(&self) -> Result<FrameConfig> {
        let prefix = match self.length_bytes {
            LengthBytes::Two => PrefixLen::Two,
            LengthBytes::Four => PrefixLen::Four,
        };
        let max_frame = self.max_frame as usize;
        if max_frame > prefix.max_len() {
            return Err(Error::Usage(format!(
                "--max-frame {max_frame} does not fit a {}-byte length prefix (at most {}); \
                 lower it or use --length-bytes 4",
                prefix.bytes(),
                prefix.max_len()
            )));
        }
        Ok(FrameConfig { prefix, max_frame })
    }
}

/// One thing the user typed, as [`ChatInput`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typed<'a> {
    /// The user's name (the first non-empty line, when no `--name` was given).
    Name(&'a str),
    /// A line to send as a chat message: not empty, not the leave text.
    Text {
        /// Who is speaking.
        name: &'a str,
        /// What was typed, without the line ending and trailing blanks.
        text: &'a str,
    },
}

/// Standard input, turned into a name and then messages.
#[derive(Debug)]
pub struct ChatInput {
    /// Splits stdin into lines; replaced by a fresh one after an over-long line.
    lines: LineDecoder,
    /// The longest line accepted; longer ones are skipped with a warning.
    max_line: usize,
    /// Set while the rest of an over-long line is being thrown away.
    skipping: bool,
    /// The user's name: from `--name`, or the first line typed.
    name: Option<Box<str>>,
    /// A typed name must pass `safe_text::check_name` (see [`ChatInput::checking_names`]).
    check_names: bool,
}

impl ChatInput {
    /// Input for a user called `name`; without one, asks for it on stderr
    /// (the first line typed will be the name).
    pub fn new(name: Option<&str>, max_line: usize) -> ChatInput {
        let input = ChatInput {
            lines: LineDecoder::new(max_line),
            max_line,
            skipping: false,
            name: name.map(Box::from),
            check_names: false,
        };
        if input.name.is_none() {
            crate::errln!("{}", chat_msg::NAME_PROMPT);
        }
        input
    }

    /// The user's name, once known.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// From now on a typed name must pass [`check_name`]: one that does not
    /// is refused with the reason, and the next line is asked for instead.
    pub fn checking_names(mut self) -> ChatInput {
        self.check_names = true;
        self
    }

    /// Takes bytes read from stdin; calls `on_typed` for the name and for
    /// every line worth sending, in order.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_typed: impl FnMut(Typed<'_>)) {
        loop {
            if self.skipping {
                match bytes.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        self.skipping = false;
                        bytes = &bytes[end + 1..];
                    }
                    None => return,
                }
            }
            let ChatInput {
                lines,
                name,
                check_names,
                ..
            } = self;
            let mut n_lines = 0;
            let result = lines.feed(bytes, |line| {
                n_lines += 1;
                take_line(name, *check_names, line, &mut on_typed);
            });
            if result.is_ok() {
                return;
            }
            // The line after the `n_lines` that came out is the over-long one:
            // it ends at the next newline, if that has arrived yet.
            log::warn!(
                "a line longer than {} bytes was typed: not sent",
                self.max_line
            );
            self.lines = LineDecoder::new(self.max_line);
            match bytes
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .nth(n_lines)
            {
                Some((end, _)) => bytes = &bytes[end + 1..],
                None => {
                    self.skipping = true;
                    return;
                }
            }
        }
    }

    /// At the end of stdin: the last line, if it had no newline.
    pub fn finish(&mut self, mut on_typed: impl FnMut(Typed<'_>)) {
        if self.skipping {
            return;
        }
        if let Some(line) = self.lines.finish() {
            take_line(&mut self.name, self.check_names, &line, &mut on_typed);
        }
    }
}

/// Prints a hint for a person at a terminal on stderr; scripts feeding
/// stdin from a pipe or a file do not need it.
pub fn hint(text: &str) {
    if std::io::stdin().is_terminal() {
        crate::errln!("{text}");
    }
}

/// One whole typed line: the name if none is known yet, else a message.
fn take_line(
    name: &mut Option<Box<str>>,
    check_names: bool,
    line: &[u8],
    on_typed: &mut impl FnMut(Typed<'_>),
) {
    let text: Cow<'_, str> = String::from_utf8_lossy(line);
    let text = text.trim_end();
    match name {
        None => {
            let typed = text.trim();
            if typed.is_empty() {
                crate::errln!("{}", chat_msg::NAME_PROMPT);
                return;
            }
            if check_names {
                if let Err(why) = check_name(typed) {
                    crate::errln!("{why}");
                    crate::errln!("{}", chat_msg::NAME_PROMPT);
                    return;
                }
            }
            let name = name.insert(Box::from(typed));
            on_typed(Typed::Name(name));
        }
        Some(_) if text.trim_start().is_empty() => {}
        Some(_) if text.trim_start() == chat_msg::LEAVE_TEXT => log::warn!(
            "'{}' is what leaving sends, so it is not sent as a message; \
             end your input (Ctrl+D) to leave",
            chat_msg::LEAVE_TEXT
        ),
        Some(name) => on_typed(Typed::Text { name, text }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(name: Option<&str>, max_line: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut input = ChatInput::new(name, max_line);
        let mut got = Vec::new();
        let mut record = |t: Typed<'_>| {
            got.push(match t {
                Typed::Name(n) => format!("name:{n}"),
                Typed::Text { name, text } => format!("text:{text} ({name})"),
            })
        };
        for chunk in chunks {
            input.feed(chunk, &mut record);
        }
        input.finish(&mut record);
        got
    }

    #[test]
    fn first_line_is_the_name_then_lines_are_messages() {
        let got = typed(None, 100, &[b"\n  Ann  \nhello\n\n   \nbye\r\n", b"last"]);
        assert_eq!(
            got,
            [
                "name:Ann",
                "text:hello (Ann)",
                "text:bye (Ann)",
                "text:last (Ann)"
            ]
        );
    }

    #[test]
    fn the_exact_leave_text_is_not_sent_but_lines_containing_it_are() {
        let got = typed(
            Some("Bo"),
            100,
            &[b"<LEAVES THE CHAT>\nI say <LEAVES THE CHAT>\n"],
        );
        assert_eq!(got, ["text:I say <LEAVES THE CHAT> (Bo)"]);
    }

    #[test]
    fn an_over_long_line_is_skipped_and_input_goes_on() {
        let got = typed(Some("Bo"), 5, &[b"ok\nfar too long\nfine\n"]);
        assert_eq!(got, ["text:ok (Bo)", "text:fine (Bo)"]);
        let got = typed(
            Some("Bo"),
            5,
            &[b"ok\nfar too", b" long", b" still\nfine\n"],
        );
        assert_eq!(got, ["text:ok (Bo)", "text:fine (Bo)"]);
        let got = typed(Some("Bo"), 5, &[b"abcdefgh\nabcdefgh\nyes\n"]);
        assert_eq!(got, ["text:yes (Bo)"]);
    }

    #[test]
    fn a_checked_name_that_fails_is_asked_for_again() {
        let mut input = ChatInput::new(None, 100).checking_names();
        let mut got = Vec::new();
        input.feed(b"Ann: hi\nAnn\nhello\n", |t| {
            got.push(match t {
                Typed::Name(n) => format!("name:{n}"),
                Typed::Text { name, text } => format!("text:{text} ({name})"),
            })
        });
        assert_eq!(got, ["name:Ann", "text:hello (Ann)"]);
        // Unchecked (the default), the same first line is the name.
        assert_eq!(typed(None, 100, &[b"Ann: hi\n"]), ["name:Ann: hi"]);
    }

    #[test]
    fn invalid_utf8_is_sent_lossily() {
        let got = typed(Some("Bo"), 100, &[b"caf\xe9\n"]);
        assert_eq!(got, ["text:caf\u{fffd} (Bo)"]);
    }

    #[test]
    fn max_frame_must_fit_the_prefix() {
        let args = FramingArgs {
            length_bytes: LengthBytes::Two,
            max_frame: 70_000,
        };
        assert_eq!(args.config().unwrap_err().exit_code(), 2);
        let args = FramingArgs {
            length_bytes: LengthBytes::Four,
            max_frame: 70_000,
        };
        assert_eq!(args.config().unwrap().max_frame, 70_000);
    }
}
