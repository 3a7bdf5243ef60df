//! `sockloop stress merge LOG... [--json]`: one report from the interval
//! logs of several generators (several processes, several hosts).
//!
//! Percentiles cannot be added, histograms can: every log's intervals are
//! added into one histogram per log, and those into one for all; every
//! percentile printed is read from a histogram, never averaged. Rates are
//! summed (each generator's count over its own measured span), which is the
//! load the server saw while the generators overlapped — so the report says
//! when their starts or spans differ enough to make that sum a stretch.
//!
//! Invariant: reads files only; the report goes to stderr, the JSON line
//! (with `--json`) to stdout, as every `stress` mode does.

use std::time::SystemTime;

use clap::Args as ClapArgs;
use hdrhistogram::Histogram;

use super::histlog::{self, Log, Series};
use super::report::{self, spectrum, Json, Percentiles, SCHEMA};
use super::start::{unix_seconds, utc_text};
use crate::error::Result;

/// Generators whose starts differ by more than this are said not to overlap well.
const START_SPREAD_NOTE_S: f64 = 1.0;
/// Nor those whose measured spans differ by more than this share of the longest.
const SPAN_SPREAD_NOTE: f64 = 0.10;

/// The long `--help` text of `stress merge`.
pub const LONG_ABOUT: &str = "One report from several generators' interval logs (--hist-log).\n\n\
    Adds the logs' histograms (never averages percentiles), sums their rates, and prints one \
    row per generator and one for all of them: samples, samples per second over each log's \
    measured span, and latency percentiles from the added histograms — corrected for \
    coordinated omission (the untagged histograms) and uncorrected (Tag=uncorrected). Say \
    --start-at TIME to every generator so they measure the same seconds; the report notes \
    when their starts differ by more than 1 s.";

/// Command-line options of `stress merge`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "One report from several generators' interval logs (--hist-log)",
    long_about = LONG_ABOUT,
    after_help = "Example (two hosts, one server):\n  \
        host1$ sockloop stress echo SERVER:9000 -c 50 -R 20000 -d 30 --start-at 12:00 --hist-log h1.hlog\n  \
        host2$ sockloop stress echo SERVER:9000 -c 50 -R 20000 -d 30 --start-at 12:00 --hist-log h2.hlog\n  \
        sockloop stress merge h1.hlog h2.hlog"
)]
pub struct Args {
    /// Interval logs, one per generator.
    #[arg(value_name = "LOG", required = true)]
    pub logs: Vec<String>,
    /// Print the report also as one JSON line on stdout (fields: README, appendix).
    #[arg(long)]
    pub json: bool,
    /// Print the full percentile spectrum of the added histograms.
    #[arg(short = 'L', long)]
    pub spectrum: bool,
}

/// Which series of a log a table is about.
#[derive(Clone, Copy)]
enum Which {
    Corrected,
    Uncorrected,
}

impl Which {
    fn of(self, log: &Log) -> Option<&Series> {
        match self {
            Which::Corrected => log.corrected.as_ref(),
            Which::Uncorrected => log.uncorrected.as_ref(),
        }
    }
}

/// The histograms of one series of every log, added.
fn added(logs: &[Log], which: Which) -> Option<Histogram<u64>> {
    let mut total: Option<Histogram<u64>> = None;
    for series in logs.iter().filter_map(|log| which.of(log)) {
        let sum = total.get_or_insert_with(|| {
            let mut empty = Histogram::new_from(&series.total);
            empty.auto(true);
            empty
        });
        sum.add(&series.total)
            .expect("an auto-resizing histogram takes any other");
    }
    total
}

/// Runs `stress merge`.
pub fn run(args: &Args) -> Result<()> {
    let logs = args
        .logs
        .iter()
        .map(|path| histlog::read(path))
        .collect::<Result<Vec<_>>>()?;
    let corrected = added(&logs, Which::Corrected);
    let uncorrected = added(&logs, Which::Uncorrected);
    let mut lines = vec![format!(
        "stress merge: {} log(s); histograms added, rates summed, percentiles read from the sums",
        logs.len()
    )];
    let name_width = logs
        .iter()
        .map(|log| log.path.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(5, 40);
    for (which, total, what) in [
        (
            Which::Corrected,
            &corrected,
            "latency from the intended send time (corrected for coordinated omission; untagged)",
        ),
        (
            Which::Uncorrected,
            &uncorrected,
            "latency from the actual send (uncorrected; Tag=uncorrected)",
        ),
    ] {
        let Some(total) = total else { continue };
        lines.push(format!("  {what}:"));
        lines.push(format!(
            "    {:<name_width$}  {:<24}  {:>8}  {:>12}  {:>10}  {}",
            "log", "start (UTC)", "span", "samples", "per s", "percentiles"
        ));
        let mut per_s_sum = 0.0;
        for log in &logs {
            let Some(series) = which.of(log) else {
                lines.push(format!("    {:<name_width$}  (none)", log.path));
                continue;
            };
            per_s_sum += series.per_s();
            lines.push(row(
                &log.path,
                name_width,
                &log.start.map_or_else(|| "?".to_string(), utc_text),
                series.span_s(),
                series.total.len(),
                series.per_s(),
                &Percentiles::of(&series.total),
            ));
        }
        lines.push(row(
            "all",
            name_width,
            "",
            0.0,
            total.len(),
            per_s_sum,
            &Percentiles::of(total),
        ));
    }
    for log in logs.iter().filter(|log| !log.other_tags.is_empty()) {
        lines.push(format!(
            "  note: {} also has histograms tagged {}, not merged",
            log.path,
            log.other_tags.join(", ")
        ));
    }
    for log in logs.iter().filter(|log| log.start.is_none()) {
        lines.push(format!(
            "  note: {} has no start time (neither StartTime nor BaseTime, and its intervals \
             count from 0): its start is unknown and not compared with the others'",
            log.path
        ));
    }
    let spread = overlap(&logs);
    if let Some(note) = &spread.note {
        lines.push(format!("  note: {note}"));
    }
    if args.spectrum {
        if let Some(total) = &corrected {
            lines.extend(spectrum(
                "latency spectrum of all logs (corrected, milliseconds):",
                total,
            ));
        }
        if let Some(total) = &uncorrected {
            lines.extend(spectrum(
                "latency spectrum of all logs (uncorrected, milliseconds):",
                total,
            ));
        }
    }
    let json = args
        .json
        .then(|| merge_json(&logs, corrected.as_ref(), uncorrected.as_ref(), &spread));
    eprintln!("{}", lines.join("\n"));
    if let Some(line) = json {
        println!("{line}");
    }
    Ok(())
}

/// One table row: name, start, span, samples, rate, percentiles.
fn row(
    name: &str,
    width: usize,
    start: &str,
    span_s: f64,
    samples: u64,
    per_s: f64,
    latency: &Percentiles,
) -> String {
    let span = if span_s > 0.0 {
        format!("{span_s:.2} s")
    } else {
        String::new()
    };
    format!(
        "    {name:<width$}  {start:<24}  {span:>8}  {:>12}  {:>10}  {}",
        report::count(samples),
        report::rate(per_s),
        latency.human()
    )
}

/// How well the logs cover the same time.
struct Overlap {
    /// Latest start minus earliest, in seconds.
    start_spread_s: f64,
    /// What to tell the user, if the logs overlap badly.
    note: Option<String>,
}

fn overlap(logs: &[Log]) -> Overlap {
    let starts: Vec<SystemTime> = logs.iter().filter_map(|log| log.start).collect();
    let start_spread_s = match (starts.iter().min(), starts.iter().max()) {
        (Some(first), Some(last)) => last
            .duration_since(*first)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        _ => 0.0,
    };
    let spans: Vec<f64> = logs
        .iter()
        .filter_map(|log| log.corrected.as_ref().or(log.uncorrected.as_ref()))
        .map(Series::span_s)
        .collect();
    let longest = spans.iter().copied().fold(0.0, f64::max);
    let shortest = spans.iter().copied().fold(f64::INFINITY, f64::min);
    let note = if start_spread_s > START_SPREAD_NOTE_S {
        Some(format!(
            "the logs start up to {start_spread_s:.1} s apart, so the summed rate is more than \
             the server saw at any one time; start the generators with the same --start-at TIME"
        ))
    } else if longest > 0.0 && (longest - shortest) / longest > SPAN_SPREAD_NOTE {
        Some(format!(
            "the logs span from {shortest:.1} s to {longest:.1} s, so the summed rate holds \
             only while all of them ran"
        ))
    } else {
        None
    };
    Overlap {
        start_spread_s,
        note,
    }
}

fn merge_json(
    logs: &[Log],
    corrected: Option<&Histogram<u64>>,
    uncorrected: Option<&Histogram<u64>>,
    spread: &Overlap,
) -> String {
    let mut json = Json::new();
    json.u64("schema", SCHEMA);
    json.str("type", "merge");
    let latency = |json: &mut Json, key: &str, hist: Option<&Histogram<u64>>| match hist {
        Some(hist) => Percentiles::of(hist).json(json, key),
        None => json.null(key),
    };
    json.begin_array("logs");
    let mut per_s = 0.0;
    for log in logs {
        let main = log.corrected.as_ref().or(log.uncorrected.as_ref());
        json.item();
        json.str("path", &log.path);
        json.opt_str("title", log.title.as_deref());
        json.opt_f64("start_unix_s", log.start.map(unix_seconds), 3);
        json.f64("span_s", main.map_or(0.0, Series::span_s), 3);
        json.u64("intervals", main.map_or(0, |s| s.points.len() as u64));
        json.u64("count", main.map_or(0, |s| s.total.len()));
        json.f64("per_s", main.map_or(0.0, Series::per_s), 0);
        per_s += main.map_or(0.0, Series::per_s);
        latency(
            &mut json,
            "latency",
            log.corrected.as_ref().map(|s| &s.total),
        );
        latency(
            &mut json,
            "latency_uncorrected",
            log.uncorrected.as_ref().map(|s| &s.total),
        );
        json.end();
    }
    json.end();
    json.begin("total");
    json.u64("logs", logs.len() as u64);
    json.u64("count", corrected.or(uncorrected).map_or(0, |h| h.len()));
    json.f64("per_s", per_s, 0);
    latency(&mut json, "latency", corrected);
    latency(&mut json, "latency_uncorrected", uncorrected);
    json.end();
    json.f64("start_spread_s", spread.start_spread_s, 3);
    json.opt_str("note", spread.note.as_deref());
    json.finish()
}
