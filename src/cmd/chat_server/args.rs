//! The `chat server` command line: its options, their defaults, and the
//! long `--help` text.
//!
//! Every limit the server keeps (clients, backlog, UDP peers, timeouts) is
//! an option here with its default in `--help`. What one option decides
//! alone is checked as it is parsed (a byte count is at least 1, a timeout
//! at least a second); a rule that needs two options at once
//! (`--max-backlog` must hold a `--max-frame` frame and a notice) is checked
//! by `run`, which knows the notice's size.
//!
//! What it must not do: hold any state of the running server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};

use super::broker::{Link, LinkConfig};
use super::udp_room;
use super::web::WebArgs;
use crate::addr;
use crate::cmd::access_args::AccessArgs;
use crate::cmd::chat::FramingArgs;
use crate::error::{Error, Result};
use crate::nats::{self, ServerUrl};
use crate::tls::ServerTlsArgs;

/// The long `--help` text of `chat server` (also used by `cli.rs`, whose doc
/// comment on the subcommand would otherwise replace it).
pub const LONG_ABOUT: &str =
    "TCP group chat server: relays every framed message from one client to every \
    other client (never back to the sender) and prints it on stdout. With one client it \
    is the lecture's 1-to-1 chat.\n\n\
    Stdout is a copy for whoever watches: when its reader falls behind (a paused pager, \
    a full pipe) messages are relayed but not printed, and stderr says how many now and \
    then. --no-stdout turns the copy off (for benchmarks).\n\n\
    The server's own user types messages on stdin (the first line is the name unless \
    --name is given); end of input ends the chat. With --relay-only the server only \
    relays.\n\n\
    Frames are a big-endian length (2 bytes, or 4 with --length-bytes 4) and that many \
    bytes of UTF-8 text '[TIMESTAMP] NAME:\\n\\tTEXT'; length 0 means 'I am leaving'. A \
    bad frame closes only that client's connection. Each client may have at most \
    --max-backlog bytes waiting; a client that does not read is disconnected (or, with \
    --on-backlog drop-oldest, loses its oldest messages and is told so), so it never \
    slows the others.\n\n\
    Who is who: a client's name is fixed by its first message and checked (1-32 \
    characters, no control character, no ':'); 'server' and the server user's name are \
    reserved; a name already in the room is made unique ('Ann-2') and its client told. \
    A message signed with another name, or none, or holding control characters, reaches \
    the room re-stamped under its sender's own name and cleaned (escape codes shown as \
    '^['); one that needs nothing goes out as it came. Everyone is announced by 'server' \
    as they come in (by address, then by name) and once as they go. A message that is \
    exactly '/who' or '/help' is answered to its sender alone.\n\n\
    More doors into the same room, all served by the same one-thread loop:\n\
    --line-port P: newline-terminated clients such as 'nc' or 'telnet'. They are asked \
    'Enter your username to start the chat:'; their first line is their name (within \
    --name-timeout), each later line a message (the server stamps it \
    '[TIMESTAMP] NAME:\\n\\tTEXT' and frames it for framed clients); they receive every \
    message as text ending in a newline. A line longer than --max-frame closes that \
    client; --max-backlog and --on-backlog apply.\n\
    --udp-port P: 'sockloop udp-chat' peers (one datagram = one message text). A peer \
    joins by sending, and leaves with '<LEAVES THE CHAT>', by being silent for \
    --udp-peer-timeout seconds (an empty datagram keeps it in, but never lets one in), \
    or when its port is reported unreachable. A new address is asked to echo a token \
    (udp-chat does by itself) and, until it has, is sent at most three times the bytes \
    it sent, so a forged datagram cannot make the server flood its victim; \
    --udp-trust-senders lifts that on a LAN whose Python peers cannot answer. At most \
    --udp-max-peers at once and --udp-max-peers-per-ip from one address; when full, a \
    newcomer takes the place of a peer that has not proven its address.\n\
    --web-port P: browsers. GET / serves the chat page (compiled into the binary; it asks \
    for a name and reconnects by itself), GET /ws is a WebSocket (RFC 6455) whose text \
    messages are chat messages, both ways, exactly as a framed client's frames. Only pages \
    this server served may open it (--web-origin adds origins); frames must be masked, a \
    message is at most --max-frame bytes, a silent browser is pinged after --web-ping \
    seconds. A bad frame closes only that browser, with a WebSocket close code.\n\n\
    Slow clients: --frame-timeout bounds how long a frame or line may take once begun, \
    --name-timeout how long a line client may take to give its name, --idle-timeout how \
    long a client may send no whole message.\n\n\
    Access control (--allow, --deny, --max-conns-per-ip) is checked when a client \
    connects; --allow/--deny also filter UDP datagrams. --rate-limit slows a TCP client \
    over its rate (each frame or line is one message; its reads pause, it is not \
    disconnected); for a UDP peer, which cannot be slowed, datagrams over the rate are \
    dropped. --tls-cert/--tls-key make every TCP port speak TLS, the line port \
    included (use 'ncat --ssl' or 'openssl s_client' there) and the web port (https, \
    wss); a TLS client joins once its handshake is over. Refusals and closes are logged \
    at most once a second per cause, with counts.\n\n\
    One room across many hubs: with --broker nats://HOST:PORT (a NATS server; several, \
    comma-separated, for a cluster), every message that enters this hub by any door is \
    published once on the subject sockloop.room.ROOM (--room, default lobby), and every \
    message other hubs publish there reaches every member here, on every door; joins and \
    leaves cross too, and '/who' lists the members of every hub. The broker link is one \
    more connection in the same loop: when the broker is absent, killed or restarted the \
    local room goes on, messages for the other hubs wait in --broker-backlog (then are \
    dropped and counted), and the hub reconnects (backoff from 100 ms to \
    --broker-reconnect-max, with jitter) to the listed servers and those the broker \
    announces. Delivery across hubs is at most once: what a broker outage loses is counted \
    and logged, never duplicated. SIGUSR1 shows the link.\n\n\
    Prints 'chat server listening on IP:PORT' on stderr when ready (then one line for \
    each extra door). Ctrl+C or SIGTERM: stop accepting, flush what is queued (at most \
    2 s), exit 0; UDP peers are sent the leave text, so they forget the server.";

/// Command-line options of `chat server`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "TCP group chat server: relays every message to every other client",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop chat server --port 8080 --name Alice\n  \
        sockloop chat server --port 8080 --relay-only --max-backlog 256K --idle-timeout 600\n  \
        sockloop chat client localhost:8080 --name Bob      (in another terminal)\n  \
        sockloop chat server --port 8080 --relay-only --line-port 8081 --udp-port 8082\n  \
        nc localhost 8081                                   (a plain-text client)\n  \
        sockloop udp-chat --name Eve 127.0.0.1:8082         (a UDP peer)\n  \
        sockloop chat server --port 8080 --relay-only --web-port 8000\n  \
        (then open http://localhost:8000/ in a browser)\n  \
        sockloop chat server --port 8443 --tls-cert /tmp/tls/cert.pem --tls-key /tmp/tls/key.pem\n  \
        sockloop chat server --port 8080 --deny 10.0.0.0/8 --max-conns-per-ip 4 --rate-limit 20/s\n  \
        sockloop chat server --port 8080 --relay-only --broker nats://127.0.0.1:4222 --room ops\n  \
        sockloop chat server --port 8081 --relay-only --broker nats://10.0.0.1:4222,nats://10.0.0.2:4222\n\n\
        Send SIGUSR1 to print the connection table with each client's queued bytes."
)]
pub struct Args {
    /// TCP port to listen on (0: the system picks one, printed at start).
    #[arg(long, short, default_value_t = 0)]
    pub port: u16,
    /// Local address to listen on: an IP (0.0.0.0: every IPv4 interface; :: for IPv6;
    /// [::1] works too) or a host name such as localhost.
    #[arg(long, default_value = "0.0.0.0", value_parser = crate::units::parse_bind)]
    pub bind: IpAddr,
    /// Your name in the chat (asked for on stdin when missing); no client may
    /// take it. The room's notices still come from "server".
    #[arg(long, short, conflicts_with = "relay_only")]
    pub name: Option<String>,
    /// Only relay between clients: no local user, stdin is not read.
    #[arg(long)]
    pub relay_only: bool,
    /// Do not print relayed messages on stdout (for benchmarks). Without it,
    /// a stdout that does not keep up loses its copy (counted on stderr),
    /// never slowing the relay.
    #[arg(long)]
    pub no_stdout: bool,
    /// Most clients at once; an extra one is sent a "server full" chat message and closed.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns: u32,
    /// Bytes that may wait for one client (suffixes K, M, G: binary multiples).
    #[arg(long, default_value = "1M", value_parser = crate::units::parse_size_min1)]
    pub max_backlog: usize,
    /// What to do with a client whose backlog is full.
    #[arg(long, value_enum, default_value_t = OnBacklog::Disconnect)]
    pub on_backlog: OnBacklog,
    /// Close a client that has sent no complete message for this long (600,
    /// 10m, 30s; a bare number is seconds; default: never). Bytes of a message
    /// still arriving do not count.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration_nonzero)]
    pub idle_timeout: Option<Duration>,
    /// How long a line client may take to give its name after connecting
    /// (60s, 2m; a bare number is seconds); it is then told why and closed.
    #[arg(long, value_name = "DURATION", default_value = "60s",
          value_parser = crate::units::parse_duration_nonzero)]
    pub name_timeout: Duration,
    /// How long a frame or line may take to arrive whole once its first byte
    /// has, at every door (30s; a bare number is seconds); a client that
    /// dribbles is told why and closed.
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = crate::units::parse_duration_nonzero)]
    pub frame_timeout: Duration,
    /// Also open a plain-text door on this TCP port (same --bind) for
    /// newline-terminated clients such as nc and telnet (0: the system picks one).
    #[arg(long, value_name = "PORT")]
    pub line_port: Option<u16>,
    /// Also let udp-chat peers into the room through this UDP port (same --bind;
    /// 0: the system picks one).
    #[arg(long, value_name = "PORT")]
    pub udp_port: Option<u16>,
    /// How long a UDP peer may be silent before it is taken out of the room
    /// (60s, 2m; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "60s",
          value_parser = crate::units::parse_duration_nonzero, requires = "udp_port")]
    pub udp_peer_timeout: Duration,
    /// Most UDP peers in the room at once. When full, a newcomer takes the
    /// place of the peer that has waited longest without proving its address;
    /// while every peer has proven it, newcomers are ignored.
    #[arg(long, value_name = "N", default_value_t = udp_room::DEFAULT_MAX_PEERS,
          value_parser = clap::value_parser!(u32).range(1..), requires = "udp_port")]
    pub udp_max_peers: u32,
    /// Most UDP peers from one IP address; newcomers from it are ignored beyond that.
    #[arg(long, value_name = "N", default_value_t = udp_room::DEFAULT_MAX_PEERS_PER_IP,
          value_parser = clap::value_parser!(u32).range(1..), requires = "udp_port")]
    pub udp_max_peers_per_ip: u32,
    /// Take every UDP sender's address as its own: send a peer the room at
    /// once, without the 3x limit that holds until it answers a challenge.
    /// Only where addresses cannot be forged, such as a lab LAN whose Python
    /// peers cannot answer one.
    #[arg(long, requires = "udp_port")]
    pub udp_trust_senders: bool,
    /// The framing both ends agreed on.
    #[command(flatten)]
    pub framing: FramingArgs,
    /// Who may connect, and how fast each client may send.
    #[command(flatten)]
    pub access: AccessArgs,
    /// TLS (applies to every TCP port of the server).
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// The web door: a page and a WebSocket for browsers.
    #[command(flatten)]
    pub web: WebArgs,
    /// One room across many hubs, through a NATS broker (boxed: most
    /// servers run without one).
    #[command(flatten)]
    pub broker: Box<BrokerArgs>,
}

/// The options of the broker link (`--broker` and the flags that need it).
#[derive(Debug, Clone, ClapArgs)]
pub struct BrokerArgs {
    /// Join this hub's room to other hubs' through a NATS broker:
    /// nats://[USER:PASS@|TOKEN@]HOST[:PORT] (port 4222 if none), several
    /// comma-separated for a cluster's servers (default: no broker).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub broker: Vec<String>,
    /// The room's name on the broker: hubs with the same room share it
    /// (subject sockloop.room.NAME; letters, digits, '-', '_').
    #[arg(long, value_name = "NAME", default_value = "lobby", value_parser = parse_token,
          requires = "broker")]
    pub room: String,
    /// This hub's id on the broker, carried by every message it publishes so
    /// no hub takes its own back (default: random; letters, digits, '-', '_').
    #[arg(long, value_name = "ID", value_parser = parse_token, requires = "broker")]
    pub hub_id: Option<String>,
    /// Bytes of messages that may wait for the broker while its link is
    /// down or slow (suffixes K, M, G); beyond it messages for other hubs are
    /// dropped, counted and logged; the local room never waits.
    #[arg(long, value_name = "BYTES", default_value = "4M",
          value_parser = crate::units::parse_size_min1, requires = "broker")]
    pub broker_backlog: usize,
    /// Time between PINGs to the broker (500ms, 2s, ...; a bare number is
    /// seconds); a link that has not answered one by the next is dropped and
    /// reconnected (dead within two intervals).
    #[arg(long, value_name = "TIME", default_value = "2s", value_parser = parse_interval,
          requires = "broker")]
    pub broker_ping: Duration,
    /// Longest wait between reconnect attempts: the wait doubles from 100ms
    /// after each failure up to this, each drawn between half and all of it.
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = parse_interval,
          requires = "broker")]
    pub broker_reconnect_max: Duration,
    /// User name for the broker (instead of USER:PASS@ in the URL).
    #[arg(long, value_name = "USER", requires = "broker_password")]
    pub broker_user: Option<String>,
    /// Password for --broker-user.
    #[arg(long, value_name = "PASS", requires = "broker_user")]
    pub broker_password: Option<String>,
    /// Token for the broker (instead of TOKEN@ in the URL).
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "broker",
        conflicts_with = "broker_user"
    )]
    pub broker_token: Option<String>,
}

impl BrokerArgs {
    /// The link's settings, with its servers resolved; `None` without `--broker`.
    /// A server name that does not resolve is skipped with a warning (a
    /// cluster may have others); none at all is an error.
    pub(super) fn link_config(&self) -> Result<Option<LinkConfig>> {
        if self.broker.is_empty() {
            if self.broker_user.is_some() || self.broker_token.is_some() {
                return Err(Error::Usage("broker credentials need --broker".into()));
            }
            return Ok(None);
        }
        let mut servers: Vec<SocketAddr> = Vec::new();
        let mut user = None;
        let mut token = None;
        let mut unresolved = None;
        for text in &self.broker {
            let url =
                ServerUrl::parse(text).map_err(|why| Error::Usage(format!("--broker: {why}")))?;
            user = user.or(url.user.clone());
            token = token.or(url.token.clone());
            let found = match url.ip() {
                Some(addr) => vec![addr],
                None => match addr::resolve_all(&url.to_string()["nats://".len()..]) {
                    Ok(found) => found,
                    Err(e) => {
                        log::warn!("--broker {url}: {e}; skipped");
                        unresolved = Some(e);
                        continue;
                    }
                },
            };
            for addr in found {
                if !servers.contains(&addr) {
                    servers.push(addr);
                }
            }
        }
        if let (true, Some(error)) = (servers.is_empty(), unresolved) {
            return Err(error);
        }
        if let (Some(name), Some(pass)) = (&self.broker_user, &self.broker_password) {
            user = Some((name.clone(), pass.clone()));
        }
        token = self.broker_token.clone().or(token);
        Ok(Some(LinkConfig {
            servers,
            user,
            token,
            hub_id: self.hub_id.clone().unwrap_or_else(Link::random_id),
            room: self.room.clone(),
            backlog: self.broker_backlog,
            ping_every: self.broker_ping,
            reconnect_max: self.broker_reconnect_max,
        }))
    }
}

/// Parses a subject token (a room name, a hub id).
fn parse_token(text: &str) -> std::result::Result<String, String> {
    if nats::is_token(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "'{text}' must be 1 to 64 letters, digits, '-' or '_' (it becomes part of a subject)"
        ))
    }
}

/// Parses a broker interval: a duration from 50ms to 1h.
fn parse_interval(text: &str) -> std::result::Result<Duration, String> {
    let interval = crate::units::parse_duration(text)?;
    if (Duration::from_millis(50)..=Duration::from_secs(3600)).contains(&interval) {
        Ok(interval)
    } else {
        Err(format!("'{text}' is not between 50ms and 1h"))
    }
}

/// The policy for a client that does not keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnBacklog {
    /// Close its connection (logged with its address); the others go on.
    Disconnect,
    /// Drop its oldest queued messages and send it a notice of how many it missed.
    DropOldest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_and_seconds_are_checked() {
        assert_eq!(parse_token("lobby"), Ok("lobby".to_string()));
        assert!(parse_token("a.b").is_err());
        assert!(parse_token("").is_err());
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("1us").is_err());
        assert!(parse_interval("2h").is_err());
    }
}
