//! The command line: clap derive structs. Each command's options live in its
//! own file under `cmd/`; this file only names the commands and the global flags.

use clap::{Parser, Subcommand};

use crate::cmd;

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
    #[arg(long, global = true)]
    pub trace: bool,
    /// More log detail (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log detail: only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
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
    // The commands below declare their own help (about, long about, examples)
    // on their Args; a doc comment here would replace it.
    TlsSelfsigned(crate::tls::SelfSignedArgs),
    UdpChat(cmd::udp_chat::Args),
    UdpStream(cmd::udp_stream::Args),
    UdpSink(cmd::udp_sink::Args),
    /// Load generator: thousands of connections from one thread, honest numbers.
    #[command(subcommand)]
    Stress(StressCommand),
}

/// `sockloop echo ...`
#[derive(Debug, Subcommand)]
pub enum EchoCommand {
    // No doc comments here: they would replace the long help each command's
    // Args declares for itself.
    Server(cmd::echo_server::Args),
    Client(cmd::echo_client::Args),
}

/// `sockloop chat ...`
#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Run a TCP group chat server (one client: the lecture's 1-to-1 chat).
    #[command(long_about = cmd::chat_server::LONG_ABOUT)]
    Server(cmd::chat_server::Args),
    /// Join a chat server: stdin lines out, messages to stdout.
    #[command(long_about = cmd::chat_client::LONG_ABOUT)]
    Client(cmd::chat_client::Args),
}

/// `sockloop stress ...`: the load generator's modes.
#[derive(Debug, Subcommand)]
pub enum StressCommand {
    // Each mode declares its own help on its Args (see `Command`).
    Echo(cmd::stress::echo::Args),
    Chat(cmd::stress::chat::Args),
    Conns(cmd::stress::conns::Args),
    Udp(cmd::stress::udp::Args),
}
