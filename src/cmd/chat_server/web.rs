//! The web door (`--web-port`): browsers in the room.
//!
//! A connection on the web port first speaks HTTP/1.1: its request head
//! (parsed by `httparse`, at most [`MAX_REQUEST_HEAD`] bytes, within
//! [`REQUEST_TIMEOUT`]) asks for the chat page (`GET /`, its script and
//! style, all compiled into the binary: nothing is loaded from elsewhere), or
//! to become a WebSocket (`GET /ws`). A page is answered and the connection
//! closed; an upgrade that passes the checks (version 13, a valid key, an
//! allowed `Origin`: see [`Origins`]) is answered `101` and the same
//! connection becomes a member of the room, decoded by
//! [`crate::websocket::Decoder`]. From then on a text message is one chat
//! message `[TIMESTAMP] NAME:\n\tTEXT`, both ways, exactly as a framed
//! client's frame: it goes through `relay` (names, rate limit, fan-out) as
//! the frame it would have been, and the room reaches it as one text frame
//! per message, made once per message and shared (`Wire::Web`).
//!
//! A connection still speaking HTTP is not a member: it hears nothing of the
//! room, is not counted or announced, and is closed at its deadline. A
//! member that breaks the protocol is sent a close frame with the code
//! (1002, 1003, 1007, 1009) and closed after it, and the room is told it was
//! disconnected for a protocol error. A silent member is pinged after
//! `--web-ping` seconds and closed if it is still silent as long again.
//!
//! What it must not do: read, write or wait on a socket itself (the reactor
//! does: this file only decides bytes), let a connection that has not
//! upgraded hear the room, or log a byte a peer chose without
//! [`safe_text::visible_line`].

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::member::{door_name, Input, Member, Wire};
use super::{Clients, Hub, TIMER_WEB_SWEEP};
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::framing;
use crate::reactor::{ConnId, Ctx};
use crate::safe_text;
use crate::websocket::{self, code, Message, Role};

/// The most bytes of an HTTP request head; a longer one is answered `431`.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The most header lines in a request head; more is answered `431`.
const MAX_HEADERS: usize = 32;

/// How long a connection may take to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often deadlines and keepalives of the web door are checked.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The chat page, its script and its style, compiled in.
const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/chat.js");
const PAGE_CSS: &str = include_str!("page/chat.css");

/// Where the page is told the longest message it may send.
const MAX_BYTES_MARK: &str = "data-max-bytes=\"65535\"";

/// What the page may load and connect to: only this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The web door's options.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct WebArgs {
    /// Also open a web door on this TCP port (same --bind): GET / serves the chat
    /// page, GET /ws is a WebSocket into the room (0: the system picks one).
    #[arg(long, value_name = "PORT")]
    pub web_port: Option<u16>,
    /// A page origin allowed to open the WebSocket, as scheme://host[:port]
    /// (repeatable); '*' allows any. Default: only pages this server served (the
    /// Origin must name the host the request was sent to); a client that sends no
    /// Origin is not a browser and is let in.
    #[arg(long, value_name = "ORIGIN", requires = "web_port")]
    pub web_origin: Vec<String>,
    /// Silence after which a web client is pinged (30s, 2m; a bare number is
    /// seconds); one still silent as long again is closed.
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = crate::units::parse_duration_nonzero, requires = "web_port")]
    pub web_ping: Duration,
}

/// Which page origins may open a WebSocket (`--web-origin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origins {
    /// Any origin at all (`--web-origin '*'`).
    Any,
    /// The server's own pages, and these origins (lower case, no trailing `/`).
    SameAnd(Vec<String>),
}

impl Origins {
    /// From the `--web-origin` values; a usage error names a malformed one.
    pub(super) fn parse(values: &[String]) -> Result<Origins> {
        let mut listed = Vec::new();
        for value in values {
            let value = value.trim();
            if value == "*" {
                return Ok(Origins::Any);
            }
            let lower = value.trim_end_matches('/').to_ascii_lowercase();
            let host = lower
                .strip_prefix("http://")
                .or_else(|| lower.strip_prefix("https://"));
            match host {
                Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => {
                    listed.push(lower)
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "--web-origin {value}: expected scheme://host[:port] such as \
                         https://chat.example.org, or '*'"
                    )))
                }
            }
        }
        Ok(Origins::SameAnd(listed))
    }

    /// Whether a WebSocket opened from `origin` (the header, if any) to
    /// `host` (the `Host` header) may go on. `tls`: the door speaks https.
    pub(super) fn allows(&self, origin: Option<&str>, host: Option<&str>, tls: bool) -> bool {
        let Some(origin) = origin else {
            return true; // Not a browser: a browser always sends Origin.
        };
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        match self {
            Origins::Any => true,
            Origins::SameAnd(listed) => {
                if listed.contains(&origin) {
                    return true;
                }
                let scheme = if tls { "https://" } else { "http://" };
                match (origin.strip_prefix(scheme), host) {
                    (Some(origin_host), Some(host)) => {
                        origin_host.eq_ignore_ascii_case(host.trim())
                    }
                    _ => false,
                }
            }
        }
    }
}

/// A web connection's stage, as the rest of the hub needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WebStage {
    /// Still speaking HTTP: not a member, hears nothing.
    Http,
    /// A WebSocket: a member of the room.
    Socket,
}

/// One web connection's protocol state (boxed in `Input::Web`).
#[derive(Debug)]
pub(super) struct WebConn {
    /// The request head so far, while it is incomplete; empty (and
    /// unallocated) when it came in one read, and after it.
    head: Vec<u8>,
    /// The frame decoder, once the connection is a WebSocket.
    decoder: Option<websocket::Decoder>,
    /// When it was accepted (as an HTTP connection), then when it last sent a frame.
    heard: Instant,
    /// A ping went out since it last sent anything.
    pinged: bool,
    /// Why the server closed it (a protocol error), once it did.
    failure: Option<Box<str>>,
    /// Whole WebSocket messages it has sent (for `--frame-timeout`: a read
    /// that completed one began whatever is half-sent after it).
    pub(super) messages: u64,
}

impl WebConn {
    fn new() -> WebConn {
        WebConn {
            head: Vec::new(),
            decoder: None,
            heard: Instant::now(),
            pinged: false,
            failure: None,
            messages: 0,
        }
    }

    /// Bytes held for an incomplete request head, frame or message.
    pub(super) fn buffered(&self) -> usize {
        self.head.len() + self.decoder.as_ref().map_or(0, |d| d.buffered())
    }
}

/// Answers made once, at start, and shared by every request for them.
struct Answers {
    page: Rc<[u8]>,
    page_head: Rc<[u8]>,
    script: Rc<[u8]>,
    script_head: Rc<[u8]>,
    style: Rc<[u8]>,
    style_head: Rc<[u8]>,
}

/// The web door's settings and shared bytes (the hub's `web` field).
pub(super) struct WebDoor {
    /// The web port's listener number.
    pub(super) listener: usize,
    origins: Origins,
    /// The door speaks TLS (https, wss).
    tls: bool,
    /// `--web-ping`.
    ping_after: Duration,
    answers: Answers,
    /// A ping, shared by every member that is pinged.
    ping: Rc<[u8]>,
    /// Where a message that arrived whole is unmasked; reused.
    scratch: Vec<u8>,
    /// A web message as the frame a framed client would have sent; reused.
    wire: Vec<u8>,
}

/// An HTTP response head (and body) with the headers every answer carries.
fn response(
    status: &str,
    content_type: &str,
    body: &[u8],
    extra: &str,
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// A short plain-text error answer.
fn error_response(status: &str, why: &str, extra: &str) -> Vec<u8> {
    let body = format!("{why}\n");
    response(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        extra,
        false,
    )
}

/// What a client turned away at the web port (server full) is told.
pub(super) fn full_notice() -> Vec<u8> {
    error_response(
        "503 Service Unavailable",
        "the chat server is full; try again later",
        "Retry-After: 5\r\n",
    )
}

impl WebDoor {
    /// The door for `listener`, with its answers made once.
    fn new(
        listener: usize,
        origins: Origins,
        args: &WebArgs,
        tls: bool,
        max_frame: usize,
    ) -> WebDoor {
        let html = PAGE_HTML.replace(MAX_BYTES_MARK, &format!("data-max-bytes=\"{max_frame}\""));
        let pair = |content_type: &str, body: &[u8], extra: &str| {
            (
                Rc::from(response("200 OK", content_type, body, extra, false)),
                Rc::from(response("200 OK", content_type, body, extra, true)),
            )
        };
        let csp = format!(
            "Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\nX-Frame-Options: DENY\r\n"
        );
        let (page, page_head) = pair("text/html; charset=utf-8", html.as_bytes(), &csp);
        let (script, script_head) = pair("text/javascript; charset=utf-8", PAGE_JS.as_bytes(), "");
        let (style, style_head) = pair("text/css; charset=utf-8", PAGE_CSS.as_bytes(), "");
        WebDoor {
            listener,
            origins,
            tls,
            ping_after: args.web_ping,
            answers: Answers {
                page,
                page_head,
                script,
                script_head,
                style,
                style_head,
            },
            ping: Rc::from(websocket::ping(b"")),
            scratch: Vec::new(),
            wire: Vec::new(),
        }
    }
}

/// What one request asked for, once its head is complete.
enum Route {
    /// A compiled-in file (already a whole response).
    File(Rc<[u8]>),
    /// A WebSocket upgrade that passed every check: the accept key.
    Upgrade(String),
    /// An error answer, and what to log at which level.
    Refuse {
        answer: Vec<u8>,
        why: String,
        warn: bool,
    },
}

/// The value of header `name` (case-insensitive), as text; `None` if absent or not UTF-8.
fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

impl WebDoor {
    /// Decides what a complete request gets.
    fn route(&self, request: &httparse::Request<'_, '_>) -> Route {
        let method = request.method.unwrap_or("");
        let path = request.path.unwrap_or("");
        let path = path.split(['?', '#']).next().unwrap_or("");
        let head_only = method == "HEAD";
        if method != "GET" && !head_only {
            return Route::Refuse {
                answer: error_response(
                    "405 Method Not Allowed",
                    "only GET and HEAD are served here",
                    "Allow: GET, HEAD\r\n",
                ),
                why: format!("method {} not allowed", safe_text::visible_line(method)),
                warn: false,
            };
        }
        let a = &self.answers;
        let file = |get: &Rc<[u8]>, head: &Rc<[u8]>| {
            Route::File(Rc::clone(if head_only { head } else { get }))
        };
        match path {
            "/" | "/index.html" => file(&a.page, &a.page_head),
            "/chat.js" => file(&a.script, &a.script_head),
            "/chat.css" => file(&a.style, &a.style_head),
            "/ws" if !head_only => self.upgrade(request.headers),
            _ => Route::Refuse {
                answer: error_response("404 Not Found", "no such page: try /", ""),
                why: format!("{} not found", safe_text::visible_line(path)),
                warn: false,
            },
        }
    }

    /// Checks a WebSocket upgrade request (RFC 6455, section 4.2.1).
    fn upgrade(&self, headers: &[httparse::Header<'_>]) -> Route {
        let refuse = |status: &str, why: &str, extra: &str, warn: bool| Route::Refuse {
            answer: error_response(status, why, extra),
            why: why.to_string(),
            warn,
        };
        if !has_token(header(headers, "Upgrade"), "websocket")
            || !has_token(header(headers, "Connection"), "upgrade")
        {
            return refuse(
                "426 Upgrade Required",
                "this is the chat's WebSocket: it needs Upgrade: websocket",
                "Upgrade: websocket\r\nConnection: Upgrade\r\n",
                false,
            );
        }
        if header(headers, "Sec-WebSocket-Version").map(str::trim) != Some("13") {
            return refuse(
                "426 Upgrade Required",
                "only WebSocket version 13 is spoken here",
                "Sec-WebSocket-Version: 13\r\n",
                false,
            );
        }
        let key = match header(headers, "Sec-WebSocket-Key") {
            Some(key) if websocket::valid_key(key) => key,
            _ => {
                return refuse(
                    "400 Bad Request",
                    "Sec-WebSocket-Key is missing or is not base64 of 16 bytes",
                    "",
                    false,
                )
            }
        };
        let origin = header(headers, "Origin");
        if !self
            .origins
            .allows(origin, header(headers, "Host"), self.tls)
        {
            let origin = safe_text::visible_line(origin.unwrap_or(""));
            return Route::Refuse {
                answer: error_response(
                    "403 Forbidden",
                    "pages from this origin may not open the chat (--web-origin)",
                    "",
                ),
                why: format!("a WebSocket from origin {origin} refused (--web-origin)"),
                warn: true,
            };
        }
        Route::Upgrade(websocket::accept_key(key))
    }
}

impl Hub {
    /// Opens the web door's listener when `--web-port` was given.
    pub(super) fn open_web_door(
        cx: &mut Ctx<Member>,
        bind: IpAddr,
        args: &WebArgs,
        tls: bool,
        max_frame: usize,
    ) -> Result<Option<(WebDoor, SocketAddr)>> {
        let Some(port) = args.web_port else {
            return Ok(None);
        };
        let origins = Origins::parse(&args.web_origin)?;
        let (index, addr) = cx.listen(bind, port).map_err(|e| e.at_door("--web-port"))?;
        cx.set_full_notice(index, full_notice());
        let door = WebDoor::new(index, origins, args, tls, max_frame);
        cx.set_timer_in(SWEEP_EVERY, TIMER_WEB_SWEEP);
        Ok(Some((door, addr)))
    }

    /// A connection on the web port: it speaks HTTP until it asks to upgrade.
    pub(super) fn on_web_accepted(&mut self, cx: &mut Ctx<Member>, conn: ConnId) {
        if let Some(member) = cx.state_mut(conn) {
            member.web = Some(WebStage::Http);
            member.input = Some(Input::Web(Box::new(WebConn::new())));
        }
        if let Some(c) = cx.conn(conn) {
            log::debug!("{} connected to the web door ({conn})", c.peer());
        }
    }

    /// Bytes from a web connection: its request head, or WebSocket frames.
    /// Messages go to `relay` like a framed client's frames, within its
    /// rate (the rest `held`, in order, with `wait` till the next is due);
    /// a close from the client sets `leaving`. A protocol error is answered
    /// here (a close frame, then the connection is closed after it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_web_data(
        &mut self,
        cx: &mut Ctx<Member>,
        conn: ConnId,
        web: &mut WebConn,
        bytes: &[u8],
        held: &mut Vec<u8>,
        wait: &mut Option<Duration>,
        leaving: &mut bool,
    ) {
        if web.failure.is_some() {
            return;
        }
        if web.decoder.is_some() {
            self.on_web_frames(cx, conn, web, bytes, held, wait, leaving);
            return;
        }
        let Some(door) = self.web.as_ref() else {
            return;
        };
        // The head, from this read alone when it came whole (no copy), else
        // from what was kept of earlier reads.
        let kept = web.head.len();
        let taken = if kept == 0 {
            bytes.len()
        } else {
            bytes.len().min(MAX_REQUEST_HEAD.saturating_sub(kept))
        };
        if kept > 0 {
            web.head.extend_from_slice(&bytes[..taken]);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let source: &[u8] = if kept > 0 { &web.head } else { bytes };
        let parsed = request.parse(source);
        let (route, used) = match parsed {
            Ok(httparse::Status::Complete(used)) if used <= MAX_REQUEST_HEAD => {
                (door.route(&request), used)
            }
            Ok(httparse::Status::Partial) if source.len() < MAX_REQUEST_HEAD => {
                if kept == 0 {
                    web.head
                        .extend_from_slice(&bytes[..bytes.len().min(MAX_REQUEST_HEAD)]);
                }
                return;
            }
            Ok(_) | Err(httparse::Error::TooManyHeaders) => (
                Route::Refuse {
                    answer: error_response(
                        "431 Request Header Fields Too Large",
                        &format!(
                            "a request head may have at most {MAX_REQUEST_HEAD} bytes and \
                             {MAX_HEADERS} header lines"
                        ),
                        "",
                    ),
                    why: "request head too large".to_string(),
                    warn: false,
                },
                0,
            ),
            Err(error) => (
                Route::Refuse {
                    answer: error_response("400 Bad Request", &format!("bad request: {error}"), ""),
                    why: format!("bad request: {error}"),
                    warn: false,
                },
                0,
            ),
        };
        let what = format!(
            "{} {}",
            request.method.unwrap_or("?"),
            safe_text::visible_line(request.path.unwrap_or("?"))
        );
        // Bytes after the head: the first frames of a client in a hurry.
        let rest: Vec<u8> = if kept > 0 {
            let mut rest = web.head.get(used..).unwrap_or(&[]).to_vec();
            rest.extend_from_slice(&bytes[taken..]);
            rest
        } else {
            bytes.get(used..).unwrap_or(&[]).to_vec()
        };
        web.head = Vec::new();
        let peer = cx.conn(conn).map(|c| c.peer());
        let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
        match route {
            Route::File(answer) => {
                log::debug!("{peer} ({conn}): {what}: 200");
                let _ = cx.queue(conn, &answer);
                cx.close_after_flush(conn);
            }
            Route::Refuse { answer, why, warn } => {
                if warn {
                    log::warn!("{peer} ({conn}): {what}: {why}");
                } else {
                    log::info!("{peer} ({conn}): {what}: {why}");
                }
                cx.send(conn, &answer);
                cx.close_after_flush(conn);
            }
            Route::Upgrade(accept) => {
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                cx.send(conn, answer.as_bytes());
                web.decoder = Some(websocket::Decoder::new(Role::Server, self.frames.max_frame));
                web.heard = Instant::now();
                if let Some(member) = cx.state_mut(conn) {
                    member.web = Some(WebStage::Socket);
                    member.joined = true;
                }
                self.n_members += 1;
                log::info!(
                    "{peer} connected by the web door ({conn}, {})",
                    Clients(self.n_members)
                );
                if let Some(c) = cx.conn(conn) {
                    let (addr, door) = (c.peer(), door_name(Wire::Web, c.is_tls()));
                    self.announce_joined(cx, conn, addr, door);
                }
                if !rest.is_empty() {
                    self.on_web_frames(cx, conn, web, &rest, held, wait, leaving);
                }
            }
        }
    }

    /// WebSocket frames from a member.
    #[allow(clippy::too_many_arguments)]
    fn on_web_frames(
        &mut self,
        cx: &mut Ctx<Member>,
        conn: ConnId,
        web: &mut WebConn,
        bytes: &[u8],
        held: &mut Vec<u8>,
        wait: &mut Option<Duration>,
        leaving: &mut bool,
    ) {
        let Some(door) = self.web.as_mut() else {
            return;
        };
        let Some(decoder) = web.decoder.as_mut() else {
            return;
        };
        web.heard = Instant::now();
        web.pinged = false;
        let mut scratch = std::mem::take(&mut door.scratch);
        let mut wire = std::mem::take(&mut door.wire);
        let frames = self.frames;
        let messages = &mut web.messages;
        let result = decoder.feed(bytes, &mut scratch, |message| match message {
            Message::Text(text) => {
                *messages += 1;
                wire.clear();
                if framing::encode_into(&mut wire, text.as_bytes(), frames).is_err() {
                    return; // Cannot happen: the decoder holds messages to --max-frame.
                }
                if held.is_empty() {
                    match cx.take_message(conn) {
                        Ok(()) => return self.relay(cx, conn, text, &wire),
                        Err(until) => *wait = Some(until),
                    }
                }
                held.extend_from_slice(&wire);
            }
            Message::Ping(payload) => {
                let _ = cx.send(conn, &websocket::pong(payload));
            }
            Message::Pong(_) => {}
            Message::Close(status) => {
                // Answer with the same status (section 5.5.1), then leave.
                let status = status.map_or(code::NORMAL, |(status, _)| status);
                cx.send(conn, &websocket::close_frame(status, ""));
                *leaving = true;
            }
        });
        if let Some(door) = self.web.as_mut() {
            door.scratch = scratch;
            door.wire = wire;
        }
        if let Err(error) = result {
            self.web_fail(cx, conn, web, error.code, &error.why);
        }
    }

    /// Ends a member's WebSocket for a protocol error: a close frame with
    /// `status`, then the connection closes once it is written.
    fn web_fail(
        &mut self,
        cx: &mut Ctx<Member>,
        conn: ConnId,
        web: &mut WebConn,
        status: u16,
        why: &str,
    ) {
        cx.send(conn, &websocket::close_frame(status, why));
        web.failure = Some(Box::from(why));
        cx.close_after_flush(conn);
    }

    /// Pings members silent for `--web-ping`, closes those silent twice as
    /// long, and closes connections that have not finished their request in time.
    pub(super) fn sweep_web(&mut self, cx: &mut Ctx<Member>) {
        let Some(door) = self.web.as_ref() else {
            return;
        };
        let (ping_after, ping) = (door.ping_after, Rc::clone(&door.ping));
        let now = Instant::now();
        cx.conn_ids(&mut self.ids);
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            let Some(member) = cx.state_mut(id) else {
                continue;
            };
            if member.leaving {
                continue;
            }
            let Some(Input::Web(web)) = member.input.as_mut() else {
                continue;
            };
            if web.failure.is_some() {
                continue;
            }
            let silent = now.saturating_duration_since(web.heard);
            if web.decoder.is_none() {
                if silent >= REQUEST_TIMEOUT {
                    cx.close(
                        id,
                        CloseReason::Protocol(format!(
                            "no complete request within {} s",
                            REQUEST_TIMEOUT.as_secs()
                        )),
                    );
                }
            } else if web.pinged && silent >= 2 * ping_after {
                let why = format!("no answer to a ping within {} s", ping_after.as_secs());
                let mut web = match member.input.take() {
                    Some(Input::Web(web)) => web,
                    _ => continue,
                };
                self.web_fail(cx, id, &mut web, code::POLICY, &why);
                if let Some(member) = cx.state_mut(id) {
                    member.input = Some(Input::Web(web));
                }
            } else if !web.pinged && silent >= ping_after {
                web.pinged = true;
                let _ = cx.queue(id, &ping);
            }
        }
        cx.set_timer_in(SWEEP_EVERY, TIMER_WEB_SWEEP);
    }

    /// The close frame a member is sent when the server shuts down.
    pub(super) fn web_goodbye(&self) -> Rc<[u8]> {
        Rc::from(websocket::close_frame(
            code::GOING_AWAY,
            "the server is shutting down",
        ))
    }
}

/// Says on stderr where a browser finds the page.
pub(super) fn tell_where(addr: SocketAddr, tls: bool) {
    let scheme = if tls { "https" } else { "http" };
    let host = if addr.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        }
    };
    log::info!(
        "web door: open {scheme}://{host}:{}/ in a browser",
        addr.port()
    );
}

/// Why a web member was closed, when the server closed it for a protocol
/// error after a close frame (the reactor saw a gentle close).
pub(super) fn failure_of(member: &Member) -> Option<CloseReason> {
    match &member.input {
        Some(Input::Web(web)) => web
            .failure
            .as_deref()
            .map(|why| CloseReason::Protocol(format!("websocket: {why}"))),
        _ => None,
    }
}

/// A room message for web members: one text frame, shared.
pub(super) fn text_frame(text: &str) -> Rc<[u8]> {
    Rc::from(websocket::text_frame(text))
}

/// Whole frames, as framed clients send them, turned into one run of text
/// frames (one per frame) for web members.
pub(super) fn frames_as_web(frames: &[u8], prefix: usize) -> Rc<[u8]> {
    let mut out = Vec::with_capacity(frames.len() + frames.len() / 8 + 16);
    let mut rest = frames;
    while rest.len() >= prefix {
        let len = rest[..prefix]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        let end = (prefix + len).min(rest.len());
        websocket::encode_into(&mut out, websocket::Opcode::Text, &rest[prefix..end], None);
        rest = &rest[end..];
    }
    Rc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_default_to_the_servers_own_pages() {
        let same = Origins::parse(&[]).unwrap();
        assert!(same.allows(None, Some("127.0.0.1:8080"), false));
        assert!(same.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), false));
        assert!(same.allows(Some("HTTP://LocalHost:8080"), Some("localhost:8080"), false));
        assert!(!same.allows(Some("http://evil.example"), Some("127.0.0.1:8080"), false));
        assert!(!same.allows(
            Some("https://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            false
        ));
        assert!(same.allows(Some("https://127.0.0.1:8080"), Some("127.0.0.1:8080"), true));
        assert!(!same.allows(Some("null"), Some("127.0.0.1:8080"), false));
        assert!(!same.allows(Some("http://127.0.0.1:8080"), None, false));
    }

    #[test]
    fn listed_origins_and_any() {
        let listed = Origins::parse(&["https://Chat.Example.org/".to_string()]).unwrap();
        assert!(listed.allows(Some("https://chat.example.org"), Some("10.1.1.1"), false));
        assert!(!listed.allows(Some("https://other.example.org"), Some("10.1.1.1"), false));
        let any = Origins::parse(&["*".to_string()]).unwrap();
        assert!(any.allows(Some("http://anything"), None, false));
        for bad in ["chat.example.org", "ftp://x", "https://", "https://x/path"] {
            assert!(Origins::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn frames_become_text_frames() {
        let frames = b"\x00\x02hi\x00\x03you";
        assert_eq!(&*frames_as_web(frames, 2), b"\x81\x02hi\x81\x03you");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_never_parses_html_from_peers() {
        for text in [PAGE_HTML, PAGE_JS, PAGE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn") && !text.contains("@import"));
        }
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE_JS.contains(sink), "chat.js uses {sink}");
        }
        assert!(PAGE_HTML.contains(MAX_BYTES_MARK));
    }
}
