//! `sockloop chat server`: the TCP group-chat hub (the lecture's 1-to-1 chat
//! is the case of one client).
//!
//! Every frame a client sends is relayed to every *other* client and its
//! text printed on stdout; the server's own user, unless `--relay-only`,
//! types on stdin and speaks to everyone. Joins and leaves are printed on
//! stderr and announced to the others as chat messages from the server's name.
//!
//! What keeps one client from hurting the others:
//!
//! * **Fan-out stores a frame once.** The received wire bytes become one
//!   `Rc<[u8]>` that every recipient's output buffer shares; memory is
//!   O(message), not O(message × clients), and nothing is formatted or
//!   allocated per recipient.
//! * **A bounded backlog per client** (`--max-backlog`). A client that does
//!   not read is disconnected when it would exceed it, or, with
//!   `--on-backlog drop-oldest`, loses its oldest queued frames and is told
//!   how many it missed. Either way the others are not slowed.
//! * **A malformed frame closes only its connection**, with the reason logged:
//!   an over-long length is refused before anything is allocated for it.
//!
//! What it must not do: block on any one client, copy a frame per recipient,
//! or log per frame unless trace logging is on.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use clap::{Args as ClapArgs, ValueEnum};

use super::access_args::AccessArgs;
use super::chat::{hint, ChatInput, FramingArgs, Typed};
use crate::chat_msg;
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::framing::{self, Decoder, Frame, FrameConfig};
use crate::net;
use crate::reactor::{signals, Config, ConnId, Ctx, Event, Handler, Queued, Reactor};
use crate::sys;
use crate::tls::ServerTlsArgs;

/// The name the server speaks with when it has none of its own (`--relay-only`,
/// or before its user has typed one).
pub const DEFAULT_NAME: &str = "server";

/// How long a shutdown waits for clients to take what is queued for them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Shown to the server's user once its name is known (at a terminal only).
const HINT: &str =
    "Type a message and press Enter to send it to everyone; end input (Ctrl+D) to stop the server.";

/// Printed messages are written to stdout at the end of each read, or
/// sooner when this many bytes are waiting.
const STDOUT_BATCH: usize = 64 * 1024;

/// Timer: look for idle clients.
const TIMER_IDLE_SWEEP: u64 = 1;
/// Timer: the shutdown grace period is over.
const TIMER_GRACE: u64 = 2;

/// The long `--help` text of `chat server` (also used by `cli.rs`, whose doc
/// comment on the subcommand would otherwise replace it).
pub const LONG_ABOUT: &str =
    "TCP group chat server: relays every framed message from one client to every \
    other client (never back to the sender) and prints it on stdout. With one client it \
    is the lecture's 1-to-1 chat.\n\n\
    The server's own user types messages on stdin (the first line is the name unless \
    --name is given); end of input ends the chat. With --relay-only the server only \
    relays. Joins and leaves are printed on stderr and announced to the others.\n\n\
    Frames are a big-endian length (2 bytes, or 4 with --length-bytes 4) and that many \
    bytes of UTF-8 text '[TIMESTAMP] NAME:\\n\\tTEXT'; length 0 means 'I am leaving'. A \
    bad frame closes only that client's connection. Each client may have at most \
    --max-backlog bytes waiting; a client that does not read is disconnected (or, with \
    --on-backlog drop-oldest, loses its oldest messages and is told so), so it never \
    slows the others.\n\n\
    Prints 'chat server listening on IP:PORT' on stderr when ready. Ctrl+C or SIGTERM: \
    stop accepting, flush what is queued (at most 2 s), exit 0.";

/// Command-line options of `chat server`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "TCP group chat server: relays every message to every other client",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop chat server --port 8080 --name Alice\n  \
        sockloop chat server --port 8080 --relay-only --max-backlog 256K --idle-timeout 600\n  \
        sockloop chat client localhost:8080 --name Bob      (in another terminal)\n\n\
        Send SIGUSR1 to print the connection table with each client's queued bytes."
)]
pub struct Args {
    /// TCP port to listen on (0: the system picks one, printed at start).
    #[arg(long, short, default_value_t = 0)]
    pub port: u16,
    /// Local address to listen on (0.0.0.0: every IPv4 interface; :: for IPv6).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Your name in the chat (asked for on stdin when missing).
    #[arg(long, conflicts_with = "relay_only")]
    pub name: Option<String>,
    /// Only relay between clients: no local user, stdin is not read; announcements
    /// come from "server".
    #[arg(long)]
    pub relay_only: bool,
    /// Most clients at once; an extra one is sent a "server full" chat message and closed.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns: u32,
    /// Bytes that may wait for one client (suffixes K, M, G: binary multiples).
    #[arg(long, default_value = "1M", value_parser = parse_bytes)]
    pub max_backlog: usize,
    /// What to do with a client whose backlog is full.
    #[arg(long, value_enum, default_value_t = OnBacklog::Disconnect)]
    pub on_backlog: OnBacklog,
    /// Close a client that has sent nothing for this many seconds (default: never).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: Option<u64>,
    /// The framing both ends agreed on.
    #[command(flatten)]
    pub framing: FramingArgs,
    /// Who may connect, and how fast each client may send.
    #[command(flatten)]
    pub access: AccessArgs,
    /// TLS (applies to every TCP port of the server).
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// The policy for a client that does not keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnBacklog {
    /// Close its connection (logged with its address); the others go on.
    Disconnect,
    /// Drop its oldest queued messages and send it a notice of how many it missed.
    DropOldest,
}

/// Parses a byte count: `65536`, `64K`, `1M`, `1MiB`, `2G`.
fn parse_bytes(text: &str) -> std::result::Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count (e.g. 65536, 64K, 1M)"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in '{text}' (use K, M or G)")),
    };
    match number.checked_mul(scale) {
        Some(0) => Err("the backlog must be at least 1 byte".to_string()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("'{text}' is too large")),
    }
}

/// One client, as the hub sees it. Small on purpose: a server may hold
/// tens of thousands, and an idle one owns no heap buffer.
#[derive(Debug)]
pub struct Member {
    /// Splits its bytes into frames; holds memory only for an incomplete frame.
    /// Set when the connection is accepted; taken out for the length of a
    /// `feed` (so relaying may use the rest of the table) and put back.
    decoder: Option<Decoder>,
    /// Its name, as it wrote it in the sender field of its messages; `None`
    /// until its first message in the chat format.
    name: Option<Box<str>>,
    /// When it last sent anything (kept only with `--idle-timeout`).
    last_heard: Instant,
    /// It said it is leaving (a zero-length frame, or end of stream): its
    /// output is flushed, then it is closed; it gets no new messages.
    leaving: bool,
    /// Frames dropped from its queue since it connected (drop-oldest),
    /// including any notice that was itself dropped.
    missed: u64,
    /// `missed` as the last notice queued for it reported it. Notices carry
    /// the running total, so one that is dropped loses nothing: the next
    /// one says it all.
    reported: u64,
    /// A notice may still be in its queue: no second one until the queue
    /// drains, so a client that does not read is not sent a stream of notices.
    notice_queued: bool,
}

impl Default for Member {
    fn default() -> Member {
        Member {
            decoder: None,
            name: None,
            last_heard: Instant::now(),
            leaving: false,
            missed: 0,
            reported: 0,
            notice_queued: false,
        }
    }
}

/// The hub: the relay, the server's own user, and the shutdown.
struct Hub {
    frames: FrameConfig,
    on_backlog: OnBacklog,
    max_backlog: usize,
    /// `--idle-timeout`, and how often idleness is checked.
    idle: Option<(Duration, Duration)>,
    /// The local user's typing; `None` with `--relay-only`, and while a
    /// `feed` is under way (so relaying may borrow the hub).
    input: Option<ChatInput>,
    /// The name the server speaks with.
    name: Box<str>,
    /// Room kept for a missed-frames notice (its largest encoded size).
    notice_reserve: usize,
    /// Clients accepted and not yet closed.
    n_members: usize,
    /// Scratch list of connection ids for fan-out; reused, never shrunk.
    ids: Vec<ConnId>,
    /// Messages to print, written at the end of each read (see `flush_stdout`);
    /// reused.
    stdout: Vec<u8>,
    /// False once stdout failed (say, a closed pipe): the relay goes on, silently.
    printing: bool,
    /// Shutting down: not accepting, clients flushing, no more announcements.
    stopping: bool,
}

impl Handler for Hub {
    type Conn = Member;

    fn handle(&mut self, cx: &mut Ctx<Member>, event: Event<'_>) {
        match event {
            Event::Accepted { conn, .. } => self.on_accepted(cx, conn),
            Event::Data(conn, bytes) => self.on_data(cx, conn, bytes),
            Event::PeerClosed(conn) => self.on_leaving(cx, conn),
            Event::Drained(conn) => self.on_drained(cx, conn),
            Event::Closed(conn, reason) => self.on_closed(cx, conn, reason),
            Event::Stdin(bytes) => self.on_stdin(cx, bytes),
            Event::StdinEof => self.on_stdin_eof(cx),
            Event::Timer(TIMER_IDLE_SWEEP) => self.sweep_idle(cx),
            Event::Timer(TIMER_GRACE) => {
                log::warn!(
                    "shutdown: {} did not take their output within {:?}; closing anyway",
                    Clients(self.n_members),
                    SHUTDOWN_GRACE
                );
                cx.stop();
            }
            Event::Signal(signal) => {
                if self.stopping {
                    log::info!("{}: stopping now", signals::name(signal));
                    cx.stop();
                } else {
                    self.shut_down(cx, signals::name(signal));
                }
            }
            _ => {}
        }
    }

    fn buffered_in(&self, member: &Member) -> usize {
        member.decoder.as_ref().map_or(0, Decoder::buffered)
    }
}

impl Hub {
    fn on_accepted(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        self.n_members += 1;
        if let Some(member) = cx.state_mut(conn) {
            member.decoder = Some(Decoder::new(self.frames));
        }
        if let Some(c) = cx.conn(conn) {
            log::info!(
                "{} connected ({conn}, {})",
                c.peer(),
                Clients(self.n_members)
            );
        }
    }

    /// Bytes from a client: decode its frames and relay each one.
    fn on_data(&mut self, cx: &mut Ctx<Member>, conn: ConnId, bytes: &[u8]) {
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        if self.idle.is_some() {
            member.last_heard = Instant::now();
        }
        let Some(mut decoder) = member.decoder.take() else {
            return;
        };
        let mut leaving = false;
        let result = decoder.feed(bytes, |frame| match frame {
            Frame::Message { text, wire } => {
                cx.charge_messages(conn, 1);
                self.relay(cx, conn, text, wire)
            }
            Frame::Close => leaving = true,
        });
        self.flush_stdout();
        if let Some(member) = cx.state_mut(conn) {
            member.decoder = Some(decoder);
        }
        match result {
            Err(error) => cx.close(conn, CloseReason::Protocol(error.to_string())),
            Ok(()) if leaving => self.on_leaving(cx, conn),
            Ok(()) => {}
        }
    }

    /// One whole message from `from`: learn its sender's name, pass the
    /// frame to everyone else as it came, and print it.
    fn relay(&mut self, cx: &mut Ctx<Member>, from: ConnId, text: &str, wire: &[u8]) {
        if let Some(parsed) = chat_msg::parse(text) {
            if let Some(member) = cx.state_mut(from) {
                if member.name.as_deref() != Some(parsed.sender) {
                    let first = member.name.is_none();
                    member.name = Some(Box::from(parsed.sender));
                    if first {
                        self.on_joined(cx, from, parsed.sender);
                    }
                }
            }
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("{from}: frame of {} B to relay", wire.len());
        }
        let frame: Rc<[u8]> = Rc::from(wire);
        self.fan_out(cx, Some(from), &frame);
        self.print(text);
    }

    /// Queues one shared frame for every client but `except`. Nothing is
    /// copied or formatted per recipient; a recipient whose backlog is full
    /// is dealt with by the `--on-backlog` policy.
    fn fan_out(&mut self, cx: &mut Ctx<Member>, except: Option<ConnId>, frame: &Rc<[u8]>) {
        cx.conn_ids(&mut self.ids);
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            if Some(id) == except || cx.state(id).map_or(true, |m| m.leaving) {
                continue;
            }
            if let Queued::OverLimit { queued } = cx.queue(id, frame) {
                self.over_limit(cx, id, frame, queued);
            }
        }
    }

    /// `id` cannot take `frame` without exceeding its backlog.
    fn over_limit(&mut self, cx: &mut Ctx<Member>, id: ConnId, frame: &Rc<[u8]>, queued: usize) {
        match self.on_backlog {
            OnBacklog::Disconnect => cx.close(
                id,
                CloseReason::Backlog {
                    queued,
                    limit: self.max_backlog,
                },
            ),
            OnBacklog::DropOldest => {
                let notice_due = cx.state(id).is_some_and(|m| !m.notice_queued);
                let room = frame.len() + if notice_due { self.notice_reserve } else { 0 };
                let dropped = cx.drop_oldest(id, room) as u64;
                if let Some(member) = cx.state_mut(id) {
                    member.missed += dropped;
                }
                if notice_due {
                    self.send_notice(cx, id);
                }
                if cx.queue(id, frame) != Queued::Yes {
                    // Only when a frame that has started to go out fills the backlog.
                    if let Some(member) = cx.state_mut(id) {
                        member.missed += 1;
                    }
                }
            }
        }
    }

    /// Tells `id` how many frames it has missed so far, if that is news,
    /// within its backlog.
    fn send_notice(&mut self, cx: &mut Ctx<Member>, id: ConnId) {
        let Some(&Member {
            missed, reported, ..
        }) = cx.state(id)
        else {
            return;
        };
        if missed == reported {
            return;
        }
        let Some(notice) = self.frame_for(&notice_text(missed)) else {
            return;
        };
        if cx.queue(id, &notice) == Queued::Yes {
            if let Some(member) = cx.state_mut(id) {
                member.reported = missed;
                member.notice_queued = true;
            }
            if let Some(c) = cx.conn(id) {
                log::info!(
                    "{id} {}: too slow, {} more frame(s) dropped (drop-oldest), {missed} in all; told it so",
                    c.peer(),
                    missed - reported
                );
            }
        }
    }

    /// A client's queue is empty: the last notice went out (or was dropped,
    /// and counted), and what was dropped since can be reported.
    fn on_drained(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        let Some(member) = cx.state_mut(conn) else {
            return;
        };
        if !member.notice_queued && member.missed == member.reported {
            return;
        }
        member.notice_queued = false;
        self.send_notice(cx, conn);
    }

    /// A client's first message in the chat format: now it has a name.
    fn on_joined(&mut self, cx: &mut Ctx<Member>, conn: ConnId, name: &str) {
        let peer = cx.conn(conn).map(|c| c.peer().to_string());
        log::info!(
            "{name} joined the chat ({}, {conn})",
            peer.as_deref().unwrap_or("?")
        );
        self.announce(cx, Some(conn), &format!("{name} joined the chat"));
    }

    /// The client said it is leaving (zero-length frame or end of stream):
    /// write what it is owed, then close.
    fn on_leaving(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        if let Some(member) = cx.state_mut(conn) {
            member.leaving = true;
        }
        cx.close_after_flush(conn);
    }

    fn on_closed(&mut self, cx: &mut Ctx<Member>, conn: ConnId, reason: &CloseReason) {
        self.n_members = self.n_members.saturating_sub(1);
        let Some(c) = cx.conn(conn) else {
            return;
        };
        let member = &c.state_of_app;
        let name = member.name.clone();
        let who = match &name {
            Some(name) => format!("{name} ({}, {conn})", c.peer()),
            None => format!("{} ({conn})", c.peer()),
        };
        let n = Clients(self.n_members);
        if self.stopping {
            log::info!("{who} closed at shutdown: {reason} ({n})");
            if self.n_members == 0 {
                cx.stop();
            }
            return;
        }
        let announcement = if member.leaving || matches!(reason, CloseReason::Done) {
            log::info!("{who} left ({n})");
            "left the chat"
        } else {
            match reason {
                CloseReason::Backlog { .. } | CloseReason::Protocol(_) => {
                    log::warn!("{who} disconnected: {reason} ({n})")
                }
                _ => log::info!("{who} disconnected: {reason} ({n})"),
            }
            match reason {
                CloseReason::Backlog { .. } => "was disconnected: not reading fast enough",
                CloseReason::Protocol(_) => "was disconnected: protocol error",
                CloseReason::Idle => "was disconnected: idle for too long",
                _ => "left the chat (connection lost)",
            }
        };
        if let Some(name) = name {
            self.announce(cx, Some(conn), &format!("{name} {announcement}"));
        }
    }

    /// Says `text` to every client but `except`, as the server.
    fn announce(&mut self, cx: &mut Ctx<Member>, except: Option<ConnId>, text: &str) {
        if let Some(frame) = self.frame_for(text) {
            self.fan_out(cx, except, &frame);
        }
    }

    /// A chat message from the server's name, framed; `None` (logged) when it
    /// is longer than `--max-frame`.
    fn frame_for(&self, text: &str) -> Option<Rc<[u8]>> {
        let message = chat_msg::format_now(&self.name, text);
        match framing::encode(message.as_bytes(), self.frames) {
            Ok(frame) => Some(frame),
            Err(error) => {
                log::warn!("not sent: {error} (--max-frame)");
                None
            }
        }
    }

    fn on_stdin(&mut self, cx: &mut Ctx<Member>, bytes: &[u8]) {
        if self.stopping {
            return;
        }
        let Some(mut input) = self.input.take() else {
            return;
        };
        input.feed(bytes, |typed| self.on_typed(cx, typed));
        self.input = Some(input);
    }

    fn on_stdin_eof(&mut self, cx: &mut Ctx<Member>) {
        if let Some(mut input) = self.input.take() {
            if !self.stopping {
                input.finish(|typed| self.on_typed(cx, typed));
            }
            self.input = Some(input);
        }
        // As in the lecture: the server's user leaving ends the chat.
        self.shut_down(
            cx,
            "end of input: the server's user left (--relay-only serves without one)",
        );
    }

    fn on_typed(&mut self, cx: &mut Ctx<Member>, typed: Typed<'_>) {
        match typed {
            Typed::Name(name) => {
                self.name = Box::from(name);
                hint(HINT);
            }
            Typed::Text { text, .. } => {
                let Some(frame) = self.frame_for(text) else {
                    return;
                };
                if self.n_members == 0 {
                    log::warn!("nobody is connected: the message went to no one");
                }
                self.fan_out(cx, None, &frame);
            }
        }
    }

    /// Closes clients that have sent nothing for the idle timeout.
    fn sweep_idle(&mut self, cx: &mut Ctx<Member>) {
        let Some((timeout, every)) = self.idle else {
            return;
        };
        if self.stopping {
            return;
        }
        let now = Instant::now();
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            let idle = cx
                .state(id)
                .is_some_and(|m| !m.leaving && now.duration_since(m.last_heard) >= timeout);
            if idle {
                cx.close(id, CloseReason::Idle);
            }
        }
        cx.set_timer_in(every, TIMER_IDLE_SWEEP);
    }

    /// Stops accepting, says goodbye, flushes every client and closes it;
    /// the loop ends when all are gone or the grace period is over.
    fn shut_down(&mut self, cx: &mut Ctx<Member>, why: &str) {
        if self.stopping {
            return;
        }
        cx.stop_accepting();
        if self.n_members == 0 {
            log::info!("{why}: stopping (no clients connected)");
            self.stopping = true;
            cx.stop();
            return;
        }
        log::info!(
            "{why}: no longer accepting; closing {} (waiting at most {:?} for their output)",
            Clients(self.n_members),
            SHUTDOWN_GRACE
        );
        if self.input.is_some() {
            self.announce(cx, None, chat_msg::LEAVE_TEXT);
        }
        self.stopping = true;
        let close: Rc<[u8]> = Rc::from(framing::close_frame(self.frames));
        cx.conn_ids(&mut self.ids);
        for &id in &self.ids {
            let _ = cx.queue(id, &close);
            cx.close_after_flush(id);
        }
        cx.set_timer_in(SHUTDOWN_GRACE, TIMER_GRACE);
    }

    /// Adds one message and a newline to what goes to stdout after this read.
    fn print(&mut self, text: &str) {
        if !self.printing {
            return;
        }
        if self.stdout.len() + text.len() >= STDOUT_BATCH {
            self.flush_stdout();
        }
        self.stdout.extend_from_slice(text.as_bytes());
        self.stdout.push(b'\n');
    }

    /// Writes the messages printed since the last call: one `write` per
    /// read from a client, not one per message.
    fn flush_stdout(&mut self) {
        if self.stdout.is_empty() {
            return;
        }
        if let Err(error) = sys::write_all_fd(1, &self.stdout) {
            self.printing = false;
            log::warn!("stdout: {error}; messages are relayed but no longer printed");
        }
        self.stdout.clear();
    }
}

/// "1 client", "3 clients": a count for log lines, formatted without allocating.
struct Clients(usize);

impl std::fmt::Display for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1 => write!(f, "1 client"),
            n => write!(f, "{n} clients"),
        }
    }
}

/// What a client that missed frames is told: the running total.
fn notice_text(missed: u64) -> String {
    format!("you have missed {missed} message(s) so far: your connection did not keep up")
}

/// The largest encoded size of a missed-frames notice from `name`.
fn notice_reserve(name: &str, frames: FrameConfig) -> usize {
    let longest_time = NaiveDate::from_ymd_opt(2000, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .expect("a valid date");
    let text = chat_msg::format_at(&longest_time, name, &notice_text(u64::MAX));
    framing::encoded_len(text.len(), frames)
}

/// Runs the chat server until SIGINT, SIGTERM or (unless `--relay-only`) the end of stdin.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    let frames = args.framing.config()?;
    let name: Box<str> = Box::from(args.name.as_deref().unwrap_or(DEFAULT_NAME));
    let notice_reserve = notice_reserve(&name, frames);
    let smallest_backlog = framing::encoded_len(frames.max_frame, frames) + notice_reserve;
    if args.max_backlog < smallest_backlog {
        return Err(Error::Usage(format!(
            "--max-backlog {} is too small: one frame of --max-frame {} bytes and a notice \
             take {smallest_backlog} bytes; raise --max-backlog or lower --max-frame",
            args.max_backlog, frames.max_frame
        )));
    }
    let limit = super::echo_server::raise_fd_limit();
    let full_notice = match framing::encode(
        chat_msg::format_now(&name, "the server is full; try again later").as_bytes(),
        frames,
    ) {
        Ok(frame) => frame.to_vec(),
        Err(_) => framing::close_frame(frames).to_vec(),
    };
    let mut config = Config {
        out_limit: args.max_backlog,
        pause_reads_when_full: false,
        max_conns: args.max_conns as usize,
        stdin: !args.relay_only,
        trace,
        full_notice,
        ..Config::default()
    };
    args.access.apply(&mut config);
    config.tls_server = args.tls.config()?;
    let tls = config.tls_server.is_some();
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let listener = net::listen_tcp(args.bind, args.port)?;
    let index = reactor
        .cx()
        .add_listener(listener)
        .map_err(|e| Error::io("registering the listener", e))?;
    let addr = reactor
        .cx()
        .listener_addr(index)
        .map_err(|e| Error::io("reading the listener address", e))?;
    log::debug!(
        "open-file limit {limit}: up to about {} clients",
        limit.saturating_sub(16)
    );
    let idle = args.idle_timeout.map(|secs| {
        let timeout = Duration::from_secs(secs);
        let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        (timeout, every)
    });
    if let Some((_, every)) = idle {
        reactor.cx().set_timer_in(every, TIMER_IDLE_SWEEP);
    }
    net::announce(
        if tls {
            "chat server (TLS)"
        } else {
            "chat server"
        },
        addr,
    );
    let input = if args.relay_only {
        None
    } else {
        let input = ChatInput::new(args.name.as_deref(), frames.max_frame);
        if input.name().is_some() {
            hint(HINT);
        }
        Some(input)
    };
    let mut hub = Hub {
        frames,
        on_backlog: args.on_backlog,
        max_backlog: args.max_backlog,
        idle,
        input,
        name,
        notice_reserve,
        n_members: 0,
        ids: Vec::new(),
        stdout: Vec::new(),
        printing: true,
        stopping: false,
    };
    reactor.run(&mut hub).map_err(|e| Error::io("polling", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("64K"), Ok(65_536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1T").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn the_notice_reserve_covers_any_notice() {
        let frames = FrameConfig::default();
        let now = chat_msg::format_now("Ann", &notice_text(u64::MAX));
        assert!(framing::encoded_len(now.len(), frames) <= notice_reserve("Ann", frames));
    }
}
