//! The command line: clap derive structs. Each command's options live in its
//! own file under `cmd/`; this file only names the commands and the global flags.

use clap::{Parser, Subcommand};

use crate::cmd;

/// The heading of the options every command takes, listed after the
/// command's own.
const GLOBAL: &str = "Global options";

/// Every socket program of the lecture, on one thread.
#[derive(Debug, Parser)]
#[command(
    name = "sockloop",
    version,
    about = "Every socket program of a distributed-systems lecture, on one thread",
    long_about = "sockloop runs the lecture's socket programs — UDP group chat, a UDP streamer, \
        TCP echo, TCP 1-to-1 and group chat — and a load generator, all on one thread, \
        through a hand-written reactor over a single poll.\n\n\
        Status lines go to stderr; chat and echo payloads to stdout. Exit codes: 0 ok, \
        1 runtime error, 2 usage error.",
    after_help = "Start with:\n  sockloop echo server --port 8080      (in one terminal)\n  \
        sockloop echo client localhost:8080   (in another)\n\n\
        Add --trace before the command to watch the event loop work."
)]
pub struct Cli {
    /// Print one line on stderr for every poll wake-up and what the loop did with it.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub trace: bool,
    /// More log detail (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Less log detail: only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose", help_heading = GLOBAL)]
    pub quiet: bool,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// TCP echo: a server for many clients, and a client that never deadlocks.
    #[command(subcommand)]
    Echo(EchoCommand),
    /// TCP group chat: a hub that relays framed messages, and a participant.
    #[command(subcommand)]
    Chat(ChatCommand),
    /// Print this machine's IPv4 addresses, one a line.
    Ips,
    /// Print endless random 32-bit signed integers, one a line.
    Rand,
    // A doc comment on a variant replaces the long help its Args declare, so
    // each variant below names that long help again explicitly.
    /// Make a self-signed certificate and key for local TLS tests.
    #[command(long_about = crate::tls::LONG_ABOUT)]
    TlsSelfsigned(crate::tls::SelfSignedArgs),
    /// Peer-to-peer group chat over UDP (lecture lab 2).
    #[command(long_about = cmd::udp_chat::LONG_ABOUT)]
    UdpChat(cmd::udp_chat::Args),
    /// Group chat over TCP without a hub: members listen and dial in one poll.
    #[command(long_about = cmd::tcp_chat::LONG_ABOUT)]
    TcpChat(cmd::tcp_chat::Args),
    /// Send N numbered chat messages to every peer (lecture lab 2 streamer).
    #[command(long_about = cmd::udp_stream::LONG_ABOUT)]
    UdpStream(cmd::udp_stream::Args),
    /// Receive a udp-stream and report loss, reordering, duplication, rate and jitter.
    #[command(long_about = cmd::udp_sink::LONG_ABOUT)]
    UdpSink(cmd::udp_sink::Args),
    /// Load generator: thousands of connections from one thread, honest numbers.
    #[command(subcommand)]
    Stress(StressCommand),
}

/// `sockloop echo ...`
#[derive(Debug, Subcommand)]
pub enum EchoCommand {
    /// Run a TCP echo server for many clients at once.
    #[command(long_about = cmd::echo_server::LONG_ABOUT)]
    Server(cmd::echo_server::Args),
    /// Send stdin to an echo server and print the echo, never deadlocking.
    #[command(long_about = cmd::echo_client::LONG_ABOUT)]
    Client(cmd::echo_client::Args),
}

/// `sockloop chat ...`
#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Run a TCP group chat server (one client: the lecture's 1-to-1 chat).
    #[command(long_about = cmd::chat_server::LONG_ABOUT)]
    Server(Box<cmd::chat_server::Args>),
    /// Join a chat server: stdin lines out, messages to stdout.
    #[command(long_about = cmd::chat_client::LONG_ABOUT)]
    Client(cmd::chat_client::Args),
}

/// `sockloop stress ...`: the load generator's modes.
#[derive(Debug, Subcommand)]
pub enum StressCommand {
    /// Request/response load on an echo server, every byte verified.
    #[command(long_about = cmd::stress::echo::LONG_ABOUT)]
    Echo(cmd::stress::echo::Args),
    /// Framed group-chat load: senders at a fixed rate, fan-out latency at every receiver.
    #[command(long_about = cmd::stress::chat::LONG_ABOUT)]
    Chat(cmd::stress::chat::Args),
    /// Open and hold many idle connections, then check the server still answers.
    #[command(long_about = cmd::stress::conns::LONG_ABOUT)]
    Conns(cmd::stress::conns::Args),
    /// UDP streamer with a built-in sink: sent, received, lost, reordered, duplicated.
    #[command(long_about = cmd::stress::udp::LONG_ABOUT)]
    Udp(cmd::stress::udp::Args),
    /// One report from several generators' interval logs (--hist-log).
    #[command(long_about = cmd::stress::merge::LONG_ABOUT)]
    Merge(cmd::stress::merge::Args),
    /// Draw interval logs (from --hist-log) as one SVG file.
    #[command(long_about = cmd::stress::plot::LONG_ABOUT)]
    Plot(cmd::stress::plot::Args),
}

/// Folds clap's rendering of a command-line mistake into the one line
/// `main` prints after `sockloop: `: clap's message and any tip, joined, and
/// which `--help` to read. Help and version output never come here.
pub fn mistake_line(rendered: &str) -> String {
    let mut line = String::new();
    let mut command = None;
    for paragraph in rendered.split("\n\n") {
        let text = paragraph
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(usage) = text.strip_prefix("Usage: ") {
            let words: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['-', '[', '<']))
                .collect();
            command = Some(words.join(" "));
        } else if text.starts_with("For more information") || text.is_empty() {
            continue;
        } else if line.is_empty() {
            line = text.trim_start_matches("error: ").to_string();
        } else {
            line.push_str("; ");
            line.push_str(&text);
        }
    }
    match command {
        Some(command) => format!("{line} (see '{command} --help')"),
        None => format!("{line} (see --help)"),
    }
}

/// nc and telnet take the host and the port as two words (`nc localhost
/// 8080`); sockloop takes one, `HOST:PORT`. When `word` — the argument the
/// parser stumbled on, a stray port or a host without one — stands next to
/// its other half in `args`, returns the hint `did you mean HOST:PORT?`.
pub fn two_words_hint(args: &[String], word: &str) -> Option<String> {
    let at = args.iter().position(|a| a == word)?;
    let pairs = [at.checked_sub(1).map(|h| (h, at)), Some((at, at + 1))];
    pairs.into_iter().flatten().find_map(|(h, p)| {
        let (host, port) = (args.get(h)?, args.get(p)?);
        let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
        let host = host_word(host)?;
        port_ok.then(|| {
            format!(
                "'{} {port}': did you mean {host}:{port}? (sockloop takes the address as one word, HOST:PORT)",
                args[h]
            )
        })
    })
}

/// A host as it is written before `:PORT` (IPv6 in brackets), if `word` is
/// one: a name, an IPv4 address or an IPv6 address.
fn host_word(word: &str) -> Option<String> {
    if word.starts_with('-') || word.is_empty() {
        return None;
    }
    let bare = word
        .strip_prefix('[')
        .and_then(|w| w.strip_suffix(']'))
        .unwrap_or(word);
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(format!("[{bare}]"));
    }
    let name = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    let has_letter_or_dot = word.chars().any(|c| c.is_ascii_alphabetic() || c == '.');
    (name && has_letter_or_dot).then(|| word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn two_words_of_nc_get_the_one_word_sockloop_takes() {
        let args = words("sockloop echo client localhost 8080");
        let hint = two_words_hint(&args, "8080").unwrap();
        assert!(hint.contains("did you mean localhost:8080?"), "{hint}");
        let hint = two_words_hint(&args, "localhost").unwrap();
        assert!(hint.contains("did you mean localhost:8080?"), "{hint}");
        let args = words("sockloop udp-stream --count 1 ::1 9000");
        let hint = two_words_hint(&args, "::1").unwrap();
        assert!(hint.contains("did you mean [::1]:9000?"), "{hint}");
        assert!(two_words_hint(&words("sockloop stress echo -c 100"), "100").is_none());
        assert!(two_words_hint(&words("sockloop echo client 8080 8081"), "8081").is_none());
        assert!(two_words_hint(&words("sockloop echo client host 99999"), "host").is_none());
    }

    fn mistake(args: &[&str]) -> String {
        let Err(error) =
            Cli::try_parse_from(std::iter::once("sockloop").chain(args.iter().copied()))
        else {
            panic!("{args:?} parsed");
        };
        mistake_line(&error.render().to_string())
    }

    #[test]
    fn a_mistake_is_one_line_with_the_tip_and_the_help_to_read() {
        let line = mistake(&["echo", "server", "--prot", "5"]);
        assert_eq!(
            line,
            "unexpected argument '--prot' found; tip: a similar argument exists: '--port' \
             (see 'sockloop echo server --help')"
        );
        let line = mistake(&["echo", "client"]);
        assert_eq!(
            line,
            "the following required arguments were not provided: <SERVER> \
             (see 'sockloop echo client --help')"
        );
        let line = mistake(&["chat", "server", "--on-backlog", "later"]);
        assert!(
            line.starts_with("invalid value 'later' for '--on-backlog"),
            "{line}"
        );
        assert!(
            line.contains("[possible values: disconnect, drop-oldest]"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}
