//! `sockloop stress conns`: open many idle connections, hold them, then check
//! that the server still serves a fresh client.
//!
//! This is the test of a server's per-connection cost and of its accept
//! path: how fast it takes a burst of connects (a connect time near 1 s means
//! SYNs were dropped and retransmitted), whether it keeps every connection
//! while they sit idle, and whether it still answers afterwards. An idle
//! connection costs the generator one descriptor and a 24-byte slot; it
//! never wakes the loop.

use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};

use super::connect::Ended;
use super::report::{self, Tally};
use super::{
    outcome, positive, prepare, print_summary, zero_or_more, Run, TcpArgs, SECONDS, TIMER_END,
    TIMER_MODE, TIMER_PROGRESS,
};
use crate::conn::CloseReason;
use crate::error::{Error, Result};
use crate::reactor::{ConnId, Ctx, Event, Handler};
use crate::units;

/// What the fresh client sends and expects back.
const PROBE: &[u8] = b"sockloop-probe!\n";

/// How long the fresh client may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Timer: the fresh client took too long.
const TIMER_PROBE: u64 = TIMER_MODE;

/// Kinds of connection loss while holding (JSON keys under `closed_by_server`).
const LOSS_NAMES: &[&str] = &["closed", "reset"];

/// How to check that the server still answers after the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Probe {
    /// A fresh connection sends 16 bytes and must get them back (echo servers).
    Echo,
    /// A fresh connection must complete its handshake (any server).
    Connect,
    /// No check.
    None,
}

/// The long `--help` text of `stress conns` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str =
    "Open and hold many idle connections, then check the server still answers.\n\n\
        Opens --conns connections (spread over 127.0.0.x source addresses when the target \
        is IPv4 loopback, so more than the ~28k ephemeral ports of one address fit), holds \
        them idle for --hold seconds, counts the ones the server closed meanwhile, then \
        opens one fresh connection and checks it gets an echo (--probe). Reports connect \
        time percentiles, connects/s and failures by cause, naming the limit behind them \
        (ephemeral ports, open files, listen backlog) and its fix.";

/// Command-line options of `stress conns`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Open and hold many idle connections, then check the server still answers",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  sockloop echo server --port 9000 &\n  \
        sockloop stress conns 127.0.0.1:9000 --conns 10000 --hold 5\n  \
        sockloop stress conns 127.0.0.1:9000 --conns 19000 --connect-rate 5000 --json\n  \
        sockloop stress conns 127.0.0.1:9001 --conns 1000 --probe connect   (a chat server)"
)]
pub struct Args {
    /// Where to connect and how (shared by every TCP mode).
    #[command(flatten)]
    pub tcp: TcpArgs,
    /// Seconds to hold the connections open once every one was attempted.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub hold: f64,
    /// How to check the server after the hold: echo (16-byte round trip),
    /// connect (handshake only, for servers that are not echo servers), none.
    #[arg(long, value_enum, default_value_t = Probe::Echo)]
    pub probe: Probe,
}

/// One connection's state: idle connections need none; the fresh client
/// counts the echo bytes it got back.
#[derive(Debug, Default)]
pub struct ConnsConn {
    /// Probe bytes echoed so far.
    echoed: usize,
}

/// How the final check went.
#[derive(Debug, Clone)]
enum ProbeResult {
    NotRun,
    Running { since: Instant, id: Option<ConnId> },
    Passed { rtt: Duration },
    Failed(String),
}

/// The `stress conns` handler.
struct Conns {
    run: Run,
    hold: Duration,
    probe_kind: Probe,
    probe: ProbeResult,
    hold_start: Option<Instant>,
    hold_end: Option<Instant>,
    /// Connections the server closed while they were held.
    lost: Tally,
    /// Bytes idle connections received (a chat server's notices, say).
    idle_bytes: u64,
    progress_connected: u64,
}

impl Conns {
    /// Once every connection is open (or failed), the hold starts.
    fn check_hold(&mut self, cx: &mut Ctx<ConnsConn>) {
        if self.hold_start.is_some() || !self.run.connector.done() {
            return;
        }
        self.run.end_window(cx);
        self.hold_start = Some(Instant::now());
        if self.run.connector.up() == 0 {
            self.hold_end = self.hold_start;
            cx.stop();
            return;
        }
        let connected = self.run.connector.connected();
        crate::errln!(
            "[{:>6.1}s] conns: {} of {} connected in {:.2} s; holding for {} s",
            self.run.started.elapsed().as_secs_f64(),
            report::count(connected),
            report::count(u64::from(self.run.connector.plan().n)),
            self.run.connector.elapsed().as_secs_f64(),
            self.hold.as_secs_f64()
        );
        cx.set_timer_in(self.hold, TIMER_END);
    }

    fn start_probe(&mut self, cx: &mut Ctx<ConnsConn>) {
        self.hold_end = Some(Instant::now());
        if self.probe_kind == Probe::None {
            cx.stop();
            return;
        }
        let target = self.run.connector.plan().target;
        match cx.connect(target, ConnsConn::default()) {
            Ok(id) => {
                self.probe = ProbeResult::Running {
                    since: Instant::now(),
                    id: Some(id),
                };
                cx.set_timer_in(PROBE_TIMEOUT, TIMER_PROBE);
            }
            Err(e) => self.probe_done(cx, Err(format!("cannot open a fresh connection: {e}"))),
        }
    }

    fn probe_done(&mut self, cx: &mut Ctx<ConnsConn>, result: std::result::Result<(), String>) {
        let since = match self.probe {
            ProbeResult::Running { since, .. } => since,
            _ => Instant::now(),
        };
        self.probe = match result {
            Ok(()) => ProbeResult::Passed {
                rtt: since.elapsed(),
            },
            Err(why) => ProbeResult::Failed(why),
        };
        cx.stop();
    }

    fn is_probe(&self, id: ConnId) -> bool {
        matches!(self.probe, ProbeResult::Running { id: Some(p), .. } if p == id)
    }

    fn progress(&mut self, cx: &mut Ctx<ConnsConn>) {
        let connected = self.run.connector.connected();
        self.run.progress_tick(cx, 0, 0);
        let body = if self.hold_start.is_none() {
            format!(
                "{} (+{} in the last second), connect p99 {}",
                self.run.conns_text(),
                report::count(connected - self.progress_connected),
                self.run
                    .connector
                    .latency()
                    .quantile(0.99)
                    .map(report::duration_ns)
                    .unwrap_or_else(|| "-".into())
            )
        } else {
            format!(
                "holding {} connections, {} closed by the server",
                report::count(u64::from(self.run.connector.up())),
                self.lost.total()
            )
        };
        self.progress_connected = connected;
        self.run.progress_line(&body);
    }

    fn summary(&self, cx: &Ctx<ConnsConn>, json_wanted: bool) -> Result<()> {
        let held_for = match (self.hold_start, self.hold_end) {
            (Some(start), Some(end)) => end - start,
            (Some(start), None) => start.elapsed(),
            _ => Duration::ZERO,
        };
        let plan = self.run.connector.plan();
        let head = format!(
            "stress conns {}: {} connections, held {:.2} s",
            plan.target,
            report::count(u64::from(plan.n)),
            held_for.as_secs_f64()
        );
        let (mut lines, mut json) = self.run.open_summary(head, held_for);
        let held = u64::from(self.run.connector.up());
        lines.push(format!(
            "  held: {} open at the end of the hold; the server closed {} meanwhile ({})",
            report::count(held),
            report::count(self.lost.total()),
            self.lost.human()
        ));
        if self.idle_bytes > 0 {
            lines.push(format!(
                "  the server sent {} bytes to the idle connections",
                report::count(self.idle_bytes)
            ));
        }
        json.f64("hold_s", self.hold.as_secs_f64(), 3);
        json.u64("held", held);
        self.lost.json(&mut json, "closed_by_server");
        json.u64("idle_bytes", self.idle_bytes);
        json.begin("probe");
        json.str(
            "kind",
            match self.probe_kind {
                Probe::Echo => "echo",
                Probe::Connect => "connect",
                Probe::None => "none",
            },
        );
        let mut failure = None;
        match &self.probe {
            ProbeResult::Passed { rtt } => {
                lines.push(format!(
                    "  fresh client: {} in {}",
                    if self.probe_kind == Probe::Echo {
                        "got its 16-byte echo"
                    } else {
                        "connected"
                    },
                    report::duration_ns(rtt.as_nanos() as u64)
                ));
                json.bool("ok", true);
                json.f64("rtt_us", rtt.as_nanos() as f64 / 1e3, 1);
                json.null("error");
            }
            ProbeResult::Failed(why) => {
                lines.push(format!("  fresh client: FAILED: {why}"));
                json.bool("ok", false);
                json.null("rtt_us");
                json.str("error", why);
                failure = Some(format!("the fresh client after the hold failed: {why}"));
            }
            ProbeResult::NotRun | ProbeResult::Running { .. } => {
                lines.push("  fresh client: not run".to_string());
                json.null("ok");
                json.null("rtt_us");
                json.null("error");
            }
        }
        json.end();
        self.run.generator_report(cx, None, &mut lines, &mut json);
        lines.push("  (loop utilisation and CPU cover the connect phase)".to_string());
        print_summary(&lines, json_wanted.then(|| json.finish()));
        outcome(
            "conns",
            &self.run,
            u64::from(failure.is_some()),
            failure.as_deref(),
        )
    }
}

impl Handler for Conns {
    type Conn = ConnsConn;

    fn handle(&mut self, cx: &mut Ctx<ConnsConn>, event: Event<'_>) {
        match event {
            Event::Connected(id) => {
                if self.is_probe(id) {
                    match self.probe_kind {
                        Probe::Echo => {
                            // A few bytes on a fresh connection: always taken.
                            let _ = cx.send(id, PROBE);
                        }
                        _ => self.probe_done(cx, Ok(())),
                    }
                    return;
                }
                self.run.connector.on_connected(id);
                self.run.connector.fill(cx);
                self.check_hold(cx);
            }
            Event::Data(id, bytes) => {
                if !self.is_probe(id) {
                    self.idle_bytes += bytes.len() as u64;
                    return;
                }
                let Some(st) = cx.state_mut(id) else { return };
                let expected = &PROBE[st.echoed.min(PROBE.len())..];
                let n = bytes.len().min(expected.len());
                if bytes[..n] != expected[..n] || bytes.len() > expected.len() {
                    return self.probe_done(
                        cx,
                        Err(format!("wrong echo: {:?}", String::from_utf8_lossy(bytes))),
                    );
                }
                st.echoed += n;
                if st.echoed == PROBE.len() {
                    self.probe_done(cx, Ok(()));
                }
            }
            Event::PeerClosed(id) => cx.close(id, CloseReason::Done),
            Event::Closed(id, reason) => {
                if self.is_probe(id) {
                    return self.probe_done(cx, Err(format!("connection {reason}")));
                }
                match self.run.connector.on_closed(id, reason) {
                    Ended::ConnectFailed { .. } => {
                        self.run.connector.fill(cx);
                        self.check_hold(cx);
                    }
                    Ended::Lost { index } => {
                        self.lost
                            .add(usize::from(matches!(reason, CloseReason::Io(_))));
                        if self.lost.total() <= 3 {
                            log::warn!("connection {index}: {reason} while held");
                        }
                    }
                    Ended::NotOurs => {}
                }
            }
            Event::Timer(timer) => {
                if self.run.connector.on_timer(cx, timer) {
                    self.check_hold(cx);
                    return;
                }
                match timer {
                    TIMER_PROGRESS => self.progress(cx),
                    TIMER_END => self.start_probe(cx),
                    TIMER_PROBE => {
                        if matches!(self.probe, ProbeResult::Running { .. }) {
                            self.probe_done(
                                cx,
                                Err(format!(
                                    "no answer within {} s",
                                    PROBE_TIMEOUT.as_secs_f64()
                                )),
                            );
                        }
                    }
                    _ => {}
                }
            }
            Event::Signal(_) => {
                if self.hold_start.is_some() && self.hold_end.is_none() {
                    self.hold_end = Some(Instant::now());
                }
                self.run.interrupt(cx);
            }
            _ => {}
        }
    }
}

/// Runs `stress conns`: connect, hold, probe.
pub fn run(args: &Args, trace: bool) -> Result<()> {
    zero_or_more("--hold", args.hold, SECONDS)?;
    positive("--connect-timeout", args.tcp.connect_timeout)?;
    let hold = units::cap("--hold", args.hold).map_err(Error::Usage)?;
    let extra = u32::from(args.probe != Probe::None);
    let setup = prepare(&args.tcp, extra)?;
    let mut reactor = super::reactor::<ConnsConn>(trace)?;
    let mut conns = Conns {
        run: Run::new("conns", &setup),
        hold,
        probe_kind: args.probe,
        probe: ProbeResult::NotRun,
        hold_start: None,
        hold_end: None,
        lost: Tally::new(LOSS_NAMES),
        idle_bytes: 0,
        progress_connected: 0,
    };
    conns.run.begin_window(reactor.cx());
    conns.run.start(reactor.cx());
    conns.check_hold(reactor.cx());
    reactor
        .run(&mut conns)
        .map_err(|e| Error::io("polling", e))?;
    conns.summary(reactor.cx(), args.tcp.json)
}
