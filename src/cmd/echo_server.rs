//! `sockloop echo server`: TCP echo for many clients at once.
//!
//! Raw bytes, no framing, so `nc` is a client. Every byte read from a
//! client is written straight back from the reactor's scratch buffer; only
//! what the kernel does not take is kept, in that client's output buffer,
//! and while that buffer is full the server reads nothing more from that
//! client (backpressure). A client that never reads therefore costs at most
//! the output limit, and never slows anyone else.

use std::net::IpAddr;

use clap::Args as ClapArgs;
use nix::sys::resource::{getrusage, UsageWho};

use crate::cmd::access_args::AccessArgs;
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::net;
use crate::reactor::{Config, Ctx, Event, Handler, Reactor};
use crate::sys;
use crate::tls::ServerTlsArgs;

/// The long `--help` text of `echo server` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str = "TCP echo server: every byte a client sends comes straight back.\n\n\
        Serves any number of clients on one thread. Each client has a bounded output \
        buffer (--max-output); when a client does not read its echo, the server stops \
        reading from that client until it does (backpressure), so memory stays bounded \
        and other clients are not slowed.\n\n\
        Prints '... listening on IP:PORT' on stderr when ready.";

/// Command-line options of `echo server`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "TCP echo server: every byte a client sends comes straight back",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop echo server --port 8080\n  \
        sockloop rand | sockloop echo client 127.0.0.1:8080 --verify | head\n  \
        nc 127.0.0.1 8080\n\nSend SIGUSR1 to print the connection table."
)]
pub struct Args {
    /// TCP port to listen on (0: the system picks one, printed at start).
    #[arg(long, short, default_value_t = 0)]
    pub port: u16,
    /// Local address to listen on: an IP (0.0.0.0: every IPv4 interface; :: for IPv6;
    /// [::1] works too) or a host name such as localhost.
    #[arg(long, default_value = "0.0.0.0", value_parser = crate::units::parse_bind)]
    pub bind: IpAddr,
    /// Most clients at once; extra ones are told the server is full and closed.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns: u32,
    /// Bytes of echo a client may have waiting before the server stops reading from it.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_output: u32,
    /// Teaching only: no output limit, no backpressure. Watch memory grow under a
    /// client that never reads (see the "what you just saw" note at exit).
    #[arg(long)]
    pub unbounded: bool,
    /// Who may connect.
    #[command(flatten)]
    pub access: AccessArgs,
    /// TLS.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// The echo handler. It keeps no per-connection state at all.
struct Echo {
    served: u64,
}

impl Handler for Echo {
    type Conn = ();

    fn handle(&mut self, cx: &mut Ctx<()>, event: Event<'_>) {
        match event {
            Event::Accepted { conn, .. } => {
                self.served += 1;
                if let Some(c) = cx.conn(conn) {
                    log::debug!("{conn} {}: connected", c.peer());
                }
            }
            Event::Data(conn, bytes) => {
                // Never refused: the reactor read no more than the output room left.
                let _ = cx.send(conn, bytes);
                cx.charge_messages(conn, 1);
            }
            Event::PeerClosed(conn) => cx.close_after_flush(conn),
            Event::Closed(conn, reason) => {
                if let Some(c) = cx.conn(conn) {
                    match reason {
                        CloseReason::Done => log::debug!("{conn} {}: {reason}", c.peer()),
                        _ => log::info!("{conn} {}: {reason}", c.peer()),
                    }
                }
            }
            Event::Signal(signal) => {
                log::info!(
                    "{}: stopping ({} clients served, {} connected)",
                    crate::reactor::signals::name(signal),
                    self.served,
                    cx.n_conns()
                );
                cx.stop();
            }
            _ => {}
        }
    }
}

/// Runs the echo server until SIGINT or SIGTERM.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    let limit = raise_fd_limit();
    let mut config = Config {
        out_limit: if args.unbounded {
            usize::MAX
        } else {
            args.max_output as usize
        },
        pause_reads_when_full: !args.unbounded,
        max_conns: args.max_conns as usize,
        trace,
        ..Config::default()
    };
    args.access.apply(&mut config);
    config.tls_server = args.tls.config()?;
    let mut reactor = Reactor::new(config).map_err(|e| Error::io("starting the event loop", e))?;
    let (_, addr) = reactor.cx().listen(args.bind, args.port)?;
    log::debug!(
        "open-file limit {limit}: up to about {} clients",
        limit.saturating_sub(16)
    );
    if args.unbounded {
        log::warn!(
            "--unbounded: no output limit; a client that never reads makes this process grow"
        );
    }
    net::announce(
        if config_is_tls(args) {
            "echo server (TLS)"
        } else {
            "echo server"
        },
        addr,
    );
    let mut echo = Echo { served: 0 };
    reactor
        .run(&mut echo)
        .map_err(|e| Error::io("polling", e))?;
    if args.unbounded {
        crate::errln!(
            "{}",
            UNBOUNDED_LESSON
                .replace("{peak}", &mib(peak_rss_kib()))
                .replace("{rss}", &mib(sys::rss_kib()))
        );
    }
    Ok(())
}

const UNBOUNDED_LESSON: &str = "what you just saw: with --unbounded the server kept reading from \
clients that did not read their echo, and queued every byte for them in its own memory \
(peak resident size: {peak}; {rss} at exit, once those clients had gone). Without --unbounded \
each client may have at most --max-output bytes waiting; then the server stops reading from \
it, the client's kernel buffers fill, and the client is slowed instead of the server growing.";

/// The most memory this process has had resident at once, in KiB
/// (`getrusage`'s `ru_maxrss`, which Linux counts in KiB): what the queues
/// cost at their worst, not what is left when the lesson is printed.
fn peak_rss_kib() -> Option<u64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    u64::try_from(usage.max_rss()).ok()
}

/// A size in KiB as MiB text.
fn mib(kib: Option<u64>) -> String {
    match kib {
        Some(kib) => format!("{:.1} MiB", kib as f64 / 1024.0),
        None => "unknown".to_string(),
    }
}

/// Raises the open-file soft limit to the hard limit; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    match sys::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            sys::nofile_limit().map(|(soft, _)| soft).unwrap_or(1024)
        }
    }
}

fn config_is_tls(args: &Args) -> bool {
    args.tls.tls_cert.is_some()
}
