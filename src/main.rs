//! The `sockloop` binary: parse the command line, set up logging, run the
//! command, print at most one error line, exit with its code.
//!
//! Logging goes through stderr's sink (`reactor::console`), as everything
//! the running loop prints does; at exit, what the sinks still hold is
//! written with a bounded wait.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
use clap::Parser;

use sockloop::cli::{ChatCommand, Cli, Command, EchoCommand, StressCommand};
use sockloop::cmd;
use sockloop::error::Result;
use sockloop::reactor::console;

fn main() -> ExitCode {
    // Before anything opens a descriptor: are fds 0, 1 and 2 really ours?
    sockloop::reactor::stdin::probe();
    console::probe();
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and a bare `sockloop stress`: what clap prints is the answer.
        Err(e) if !e.use_stderr() || e.kind() == DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            let line = sockloop::cli::mistake_line(&e.render().to_string());
            let _ = writeln!(std::io::stderr(), "sockloop: {line}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cli);
    let code = match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            sockloop::errln!("sockloop: {err}");
            ExitCode::from(err.exit_code() as u8)
        }
    };
    console::finish();
    code
}

fn run(cli: &Cli) -> Result<()> {
    let trace = cli.trace;
    match &cli.command {
        Command::Echo(EchoCommand::Server(args)) => cmd::echo_server::run(args, trace),
        Command::Echo(EchoCommand::Client(args)) => cmd::echo_client::run(args, trace),
        Command::Chat(ChatCommand::Server(args)) => cmd::chat_server::run(args, trace),
        Command::Chat(ChatCommand::Client(args)) => cmd::chat_client::run(args, trace),
        Command::Ips => cmd::ips::run(),
        Command::Rand => cmd::rand::run(),
        Command::TlsSelfsigned(args) => sockloop::tls::run_self_signed(args),
        Command::UdpChat(args) => cmd::udp_chat::run(args, trace),
        Command::TcpChat(args) => cmd::tcp_chat::run(args, trace),
        Command::UdpStream(args) => cmd::udp_stream::run(args, trace),
        Command::UdpSink(args) => cmd::udp_sink::run(args, trace),
        Command::Stress(StressCommand::Echo(args)) => cmd::stress::echo::run(args, trace),
        Command::Stress(StressCommand::Chat(args)) => cmd::stress::chat::run(args, trace),
        Command::Stress(StressCommand::Conns(args)) => cmd::stress::conns::run(args, trace),
        Command::Stress(StressCommand::Udp(args)) => cmd::stress::udp::run(args, trace),
        Command::Stress(StressCommand::Merge(args)) => cmd::stress::merge::run(args),
        Command::Stress(StressCommand::Plot(args)) => cmd::stress::plot::run(args),
    }
}

/// Log lines look like `info: ...` on stderr. Default level: info; `-q` warn,
/// `-v` debug, `-vv` trace; `RUST_LOG` wins over all of them. They are
/// written through stderr's sink: never waited for, dropped (and counted)
/// when nobody reads them.
fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .target(env_logger::Target::Pipe(Box::new(console::LogWriter)))
        .format(|buf, record| {
            writeln!(
                buf,
                "{}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            )
        })
        .init();
}

/// A bug must not greet the user with a backtrace: one line, exit 1.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_string());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        console::restore();
        let _ = writeln!(
            std::io::stderr(),
            "sockloop: internal error: {what}{place} (please report this)"
        );
    }));
}
