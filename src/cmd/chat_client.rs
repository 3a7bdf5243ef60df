//! `sockloop chat client`: one participant of the TCP chat.
//!
//! Stdin and the socket are sources of one poll: every line typed goes out
//! as a framed chat message as soon as it is complete, and every message
//! that arrives is printed at once, whichever comes first. At the end of
//! stdin the client says it leaves (the `<LEAVES THE CHAT>` message, then the
//! zero-length frame), shuts down its sending side, prints whatever still
//! arrives and exits 0 when the server closes. If the server goes first, the
//! client says so on stderr and exits 0.
//!
//! Reading stdin pauses once [`OUT_LIMIT`] bytes of messages wait to be
//! sent, until the server takes them; what one more read of stdin can add
//! keeps the total under [`queue_limit`], the connection's hard bound.
//! Stdout is its data the other way: when stdout's reader falls behind, the
//! client stops reading the server until stdout has room again (the server
//! then applies its own `--on-backlog` policy to this slow reader), and at
//! the end it waits for stdout to take everything, which Ctrl+C cuts short.
//!
//! It connects inside the loop (`dial.rs`): each address of the server in
//! turn, each for at most `--connect-timeout`; Ctrl+C ends the attempt at once.
//!
//! As soon as it is connected and its name is known (`--name`, or the first
//! line typed) it introduces itself with a message whose text is empty: a
//! sockloop server takes it as the client's name, relays nothing, and so the
//! room knows who has joined before they say anything. Every message printed
//! is shown, not obeyed ([`chat_msg::display`]): another participant's
//! control characters cannot clear the screen, retitle the terminal or forge
//! a line.

use std::time::Duration;

use clap::Args as ClapArgs;

use super::chat::{hint, ChatInput, FramingArgs, Typed};
use super::client_outcome::{self, Opening, Seen};
use super::dial::{DialArgs, Dialed, Dialer};
use crate::chat_msg;
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::framing::{self, Decoder, Frame, FrameConfig};
use crate::reactor::{console, ConnId, Ctx, Event, Handler, Queued, StdoutRoom, SCRATCH_SIZE};
use crate::tls::ClientTlsArgs;

/// Unsent output at which reading stdin pauses.
pub const OUT_LIMIT: usize = 1024 * 1024;

/// Most bytes a line of stdin can grow to as a frame, per byte of the line:
/// the shortest line sent is two bytes (a character and its newline), and
/// its frame adds the length prefix (4), the timestamp and brackets (29),
/// the name (at most 32 characters, 128 bytes) and `":\n\t"` (3).
const FRAME_GROWTH: usize = (1 + 4 + 29 + 128 + 3) / 2 + 1;

/// The most unsent output the client ever holds (the connection's
/// `out_limit`): [`OUT_LIMIT`], where stdin pauses, plus what the one read of
/// stdin before the pause can become (a [`SCRATCH_SIZE`] chunk of short
/// lines, and a line of up to `--max-frame` that it completes). A message
/// that would go over it is not sent, with a warning; with stdin paused at
/// [`OUT_LIMIT`] that does not happen.
pub fn queue_limit(frames: FrameConfig) -> usize {
    OUT_LIMIT + FRAME_GROWTH * SCRATCH_SIZE + framing::encoded_len(frames.max_frame, frames)
}

/// How long to wait, after leaving, for the server to close the connection.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Shown once the name is known (at a terminal only).
const HINT: &str = "Type a message and press Enter to send it; end input (Ctrl+D) to leave.";

/// Timer: the server did not close after we left.
const TIMER_LEAVE: u64 = 1;

/// The long `--help` text of `chat client` (also used by `cli.rs`, whose doc
/// comment on the subcommand would otherwise replace it).
pub const LONG_ABOUT: &str =
    "TCP chat client: sends each line typed on stdin to a chat server as a framed \
    chat message '[TIMESTAMP] NAME:\\n\\tTEXT', and prints every message that arrives on \
    stdout, as soon as it arrives.\n\n\
    Without --name it asks for one ('Enter your username to start the chat:') and takes \
    the first line (1-32 characters, no control character, no ':'); once it has a name \
    it introduces itself with a message whose text is empty, which a sockloop server \
    relays to no one, so the room knows who joined. Empty lines are not sent. Messages \
    are printed with control characters shown ('^['), never obeyed, and every further \
    line of a message indented. At the end of input (Ctrl+D) it sends \
    '<LEAVES THE CHAT>' and the zero-length frame, prints what still arrives and exits 0 \
    once the server closes. When the server goes away first it says so and exits 0.\n\n\
    The server's name may resolve to several addresses (say, ::1 and 127.0.0.1): each is \
    tried in turn until one accepts. With --tls the chat is encrypted; trust a \
    self-signed server with --tls-ca DIR/cert.pem (from 'sockloop tls-selfsigned'), or \
    skip the check with --insecure (local tests only).";

/// Command-line options of `chat client`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "TCP chat client: your lines to the chat, everyone's messages to stdout",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop chat client localhost:8080 --name Bob\n  \
        printf 'hello\\nbye\\n' | sockloop chat client 127.0.0.1:8080 --name script\n  \
        sockloop chat client [::1]:8080 --length-bytes 4\n  \
        sockloop chat client localhost:8443 --name Bob --tls --tls-ca /tmp/tls/cert.pem"
)]
pub struct Args {
    /// The server: HOST:PORT, [IPv6]:PORT or IPv4:PORT.
    pub server: String,
    /// Your name in the chat (asked for on stdin when missing).
    #[arg(long, short)]
    pub name: Option<String>,
    /// The framing both ends agreed on.
    #[command(flatten)]
    pub framing: FramingArgs,
    /// TLS.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Connecting.
    #[command(flatten)]
    pub dial: DialArgs,
}

/// The client's handler: one connection, stdin and stdout.
struct ChatClient {
    /// Makes the connection; hands it over once it is up.
    dialer: Dialer,
    /// The connection, once up (a placeholder until then).
    conn: ConnId,
    frames: FrameConfig,
    /// Splits what the server sends into frames.
    decoder: Decoder,
    /// The name given with `--name`, until the input is made.
    name: Option<String>,
    /// The user's name and lines; made once connected (it asks for the
    /// name then, as the lecture's client does).
    input: Option<ChatInput>,
    /// Scratch buffer for one outgoing frame; reused.
    wire: Vec<u8>,
    /// The messages of one read, printed with one write; reused.
    stdout: Vec<u8>,
    /// We said goodbye: the zero-length frame is sent, our side shut down.
    leaving: bool,
    outcome: Result<()>,
    /// The server's first bytes, until they are known not to be a TLS alert.
    opening: Opening,
    /// No message has arrived yet.
    first: bool,
    /// The first message, held back because it is a full server's notice;
    /// printed if anything else follows, reported if the connection ends.
    notice: Option<String>,
    /// The server as given, for messages.
    server: String,
    /// The TLS options, to explain a failed session.
    tls: ClientTlsArgs,
}

impl Handler for ChatClient {
    type Conn = ();

    fn handle(&mut self, cx: &mut Ctx<()>, event: Event<'_>) {
        match self.dialer.on_event(cx, &event) {
            Dialed::NotMine => {}
            Dialed::Waiting => return,
            Dialed::Connected(conn) => return self.on_connected(cx, conn),
            Dialed::Failed(error) => {
                self.outcome = Err(error);
                return cx.stop();
            }
        }
        if !self.dialer.connected() {
            return;
        }
        match event {
            Event::Stdin(bytes) => {
                if self.leaving {
                    return;
                }
                let ChatClient {
                    conn,
                    frames,
                    input,
                    wire,
                    ..
                } = self;
                if let Some(input) = input {
                    input.feed(bytes, |typed| on_typed(cx, *conn, *frames, wire, typed));
                }
                self.regulate_stdin(cx);
            }
            Event::Drained(_) => self.regulate_stdin(cx),
            Event::StdinEof => self.leave(cx),
            Event::Data(_, bytes) => match self.opening.feed(bytes) {
                Seen::Pass => self.on_data(cx, bytes),
                Seen::Release(held) => self.on_data(cx, &held),
                Seen::Hold => {}
                Seen::SpeaksTls => {
                    self.outcome = Err(client_outcome::speaks_tls());
                    cx.close(self.conn, CloseReason::Local("the server speaks TLS"));
                    cx.stop();
                }
            },
            Event::PeerClosed(conn) => {
                if !self.refused(cx, &CloseReason::Done) && !self.leaving {
                    log::warn!("the server closed the connection");
                }
                cx.close(conn, CloseReason::Done);
                cx.stop();
            }
            Event::Closed(_, reason) => {
                if !self.refused(cx, reason) && self.outcome.is_ok() {
                    match reason {
                        CloseReason::Done | CloseReason::Protocol(_) => {}
                        other if self.leaving => log::debug!("connection closed: {other}"),
                        other => log::warn!("connection to the server lost: {other}"),
                    }
                }
                cx.stop();
            }
            Event::Timer(TIMER_LEAVE) => {
                let stalled = CloseReason::Local("no answer to the TLS handshake");
                if !self.refused(cx, &stalled) {
                    log::warn!(
                        "the server did not close the connection within {LEAVE_TIMEOUT:?} of our leaving; closing it"
                    );
                }
                cx.stop();
            }
            Event::Signal(_) => {
                self.leave(cx);
                cx.stop();
            }
            Event::StdoutReady => cx.release_reads(self.conn),
            Event::StdoutClosed => self.stdout_gone(cx),
            _ => {}
        }
    }
}

/// One thing typed: a name is remembered by the input; a line is sent.
fn on_typed(cx: &mut Ctx<()>, conn: ConnId, frames: FrameConfig, wire: &mut Vec<u8>, typed: Typed) {
    match typed {
        Typed::Name(name) => {
            hint(HINT);
            introduce(cx, conn, frames, wire, name);
        }
        Typed::Text { name, text } => send_message(cx, conn, frames, wire, name, text),
    }
}

/// Tells the server our name before we say anything: a message with an
/// empty text, which a sockloop server relays to no one.
fn introduce(cx: &mut Ctx<()>, conn: ConnId, frames: FrameConfig, wire: &mut Vec<u8>, name: &str) {
    send_message(cx, conn, frames, wire, name, "");
}

/// Frames `[now] NAME:\n\tTEXT` and sends it; a message over `--max-frame` is not sent.
fn send_message(
    cx: &mut Ctx<()>,
    conn: ConnId,
    frames: FrameConfig,
    wire: &mut Vec<u8>,
    name: &str,
    text: &str,
) {
    let message = chat_msg::format_now(name, text);
    wire.clear();
    match framing::encode_into(wire, message.as_bytes(), frames) {
        Ok(()) => {
            if let Queued::OverLimit { queued } = cx.send(conn, wire) {
                log::warn!("not sent: the server is not taking our messages ({queued} bytes wait)");
            }
        }
        Err(error) => log::warn!("not sent: {error} (--max-frame)"),
    }
}

impl ChatClient {
    /// Connected: now the input, and the name prompt when there is no `--name`.
    fn on_connected(&mut self, cx: &mut Ctx<()>, conn: ConnId) {
        self.conn = conn;
        let input = ChatInput::new(self.name.as_deref(), self.frames.max_frame).checking_names();
        if let Some(name) = input.name() {
            hint(HINT);
            introduce(cx, conn, self.frames, &mut self.wire, name);
        }
        self.input = Some(input);
    }

    /// The connection is ending with `reason`: true, with the outcome set,
    /// when that means the server turned us away (its full notice and
    /// nothing else) or never spoke TLS with us.
    fn refused(&mut self, cx: &mut Ctx<()>, reason: &CloseReason) -> bool {
        let handshaking = cx.conn(self.conn).is_some_and(|c| c.tls_handshaking());
        let stalled;
        let reason = match reason {
            CloseReason::Local(why) if handshaking => {
                stalled = CloseReason::Protocol(why.to_string());
                &stalled
            }
            CloseReason::Local(_) => return false,
            other => other,
        };
        let error = match client_outcome::tls_failure(reason, handshaking, &self.tls) {
            Some(e) => e,
            None if self.notice.is_some() => client_outcome::full(&self.server),
            None => return false,
        };
        if self.outcome.is_ok() {
            self.outcome = Err(error);
        }
        true
    }

    /// Messages from the server: print them (one write per read); a
    /// zero-length frame means it is closing. A first message that is a
    /// full server's notice is held back (see [`ChatClient::refused`]).
    fn on_data(&mut self, cx: &mut Ctx<()>, bytes: &[u8]) {
        let mut closing = false;
        let ChatClient {
            decoder,
            stdout,
            first,
            notice,
            ..
        } = self;
        stdout.clear();
        let result = decoder.feed(bytes, |frame| match frame {
            Frame::Message { text, .. } => {
                if std::mem::take(first)
                    && chat_msg::parse(text).is_some_and(|m| m.text == chat_msg::FULL_TEXT)
                {
                    *notice = Some(text.to_string());
                    return;
                }
                if let Some(held) = notice.take() {
                    stdout.extend_from_slice(held.as_bytes());
                    stdout.push(b'\n');
                }
                stdout.extend_from_slice(chat_msg::display(text).as_bytes());
                stdout.push(b'\n');
            }
            Frame::Close => closing = true,
        });
        match cx.stdout_data(&self.stdout) {
            StdoutRoom::Room => {}
            // Backpressure: read no more until stdout has taken this.
            StdoutRoom::Full => cx.hold_reads(self.conn),
            StdoutRoom::Closed => return self.stdout_gone(cx),
        }
        if let Err(error) = result {
            self.outcome = Err(Error::Failed(format!(
                "the server sent a bad frame: {error}"
            )));
            cx.close(self.conn, CloseReason::Protocol(error.to_string()));
            cx.stop();
            return;
        }
        if closing {
            if !self.leaving {
                log::warn!("the server closed the chat");
            }
            cx.close(self.conn, CloseReason::Done);
            cx.stop();
        }
    }

    /// Stdout failed. A closed pipe: whoever read our output has had enough.
    fn stdout_gone(&mut self, cx: &mut Ctx<()>) {
        match console::stdout_failure() {
            Some(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                self.outcome = Err(Error::io("writing to stdout", error));
            }
            _ => {}
        }
        cx.close(self.conn, CloseReason::Local("stdout closed"));
        cx.stop();
    }

    /// Says goodbye: the last unterminated line, the leave message, the
    /// zero-length frame; then shuts down our sending side and waits for the
    /// server to close (at most [`LEAVE_TIMEOUT`]).
    fn leave(&mut self, cx: &mut Ctx<()>) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        let ChatClient {
            conn,
            frames,
            input,
            wire,
            ..
        } = self;
        let Some(input) = input else {
            return;
        };
        input.finish(|typed| on_typed(cx, *conn, *frames, wire, typed));
        if let Some(name) = input.name() {
            send_message(cx, *conn, *frames, wire, name, chat_msg::LEAVE_TEXT);
        }
        // Refused only when the server takes nothing: then the end of our
        // stream (below) is all it will see of our leaving.
        let _ = cx.send(self.conn, framing::close_frame(self.frames));
        cx.shutdown_write(self.conn);
        cx.set_timer_in(LEAVE_TIMEOUT, TIMER_LEAVE);
    }

    /// Pauses stdin while too much is waiting to go out.
    fn regulate_stdin(&mut self, cx: &mut Ctx<()>) {
        let queued = cx.conn(self.conn).map_or(0, |c| c.out_len());
        if queued >= OUT_LIMIT {
            cx.pause_stdin();
        } else {
            cx.resume_stdin();
        }
    }
}

/// Runs the chat client until the chat ends (see the module docs).
pub fn run(args: &Args, trace: bool) -> Result<()> {
    let frames = args.framing.config()?;
    if let Some(name) = &args.name {
        crate::safe_text::check_name(name.trim())
            .map_err(|why| Error::Usage(format!("--name: {why}")))?;
    }
    let (mut reactor, dialer) = super::open_client(
        &args.server,
        &args.dial,
        &args.tls,
        queue_limit(frames),
        trace,
    )?;
    let mut client = ChatClient {
        dialer,
        conn: ConnId(usize::MAX),
        frames,
        decoder: Decoder::new(frames),
        name: args.name.clone(),
        input: None,
        wire: Vec::new(),
        stdout: Vec::new(),
        leaving: false,
        outcome: Ok(()),
        opening: if args.tls.tls {
            Opening::settled()
        } else {
            Opening::tls_alert_only()
        },
        first: true,
        notice: None,
        server: args.server.clone(),
        tls: args.tls.clone(),
    };
    reactor
        .run(&mut client)
        .map_err(|e| Error::io("polling", e))?;
    // What stdout holds are messages the user has not seen yet.
    reactor
        .drain_stdout()
        .map_err(|e| Error::io("polling", e))?;
    client.outcome
}
