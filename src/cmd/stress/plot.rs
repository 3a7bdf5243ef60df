//! `sockloop stress plot LOG... --out FILE.svg`, and `--plot FILE.svg` on a
//! run: three charts in one SVG file.
//!
//! 1. Latency by percentile on HdrHistogram's `1/(1-p)` axis (50%, 90%,
//!    99%, 99.9% ... equally spaced), one series per log (dashed beside it:
//!    the uncorrected latency, when the log has it), as HdrHistogram's own
//!    plotter draws it.
//! 2. Throughput per second, one series per log, on a common clock (logs
//!    that started later are shifted right by the difference).
//! 3. The p99 of every second, the same way.
//!
//! Drawn with `plotters`' SVG backend only: no fonts are read (text is laid
//! out with estimated widths), no system library is needed. Invariant: the
//! figures drawn are read from histograms (totals added, per-second
//! histograms as logged); nothing here averages percentiles.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::histlog::{self, Point};
use super::report::SPECTRUM_TICKS;
use super::start::utc_text;
use crate::error::{Error, Result};

/// Image size in pixels (SVG user units).
const SIZE: (u32, u32) = (1000, 1150);

/// One colour per series, in order; the ninth series takes the first again.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// The long `--help` text of `stress plot`.
pub const LONG_ABOUT: &str = "Draw interval logs (from --hist-log) as one SVG file.\n\n\
    Three charts: latency by percentile on HdrHistogram's 1/(1-p) axis (one line per log, \
    the uncorrected latency dashed beside it), throughput per second, and the p99 of \
    every second, the logs on a common clock. Reads the logs of any HdrHistogram tool \
    (values taken as nanoseconds; untagged histograms, plus those tagged 'uncorrected').";

/// Command-line options of `stress plot`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Draw interval logs (from --hist-log) as one SVG file",
    long_about = LONG_ABOUT,
    after_help = "Example:\n  sockloop stress echo 127.0.0.1:9000 -c 50 -R 2000 -d 10 --hist-log a.hlog\n  \
        sockloop stress plot a.hlog b.hlog --out run.svg"
)]
pub struct Args {
    /// Interval logs, one series each.
    #[arg(value_name = "LOG", required = true)]
    pub logs: Vec<String>,
    /// The SVG file to write.
    #[arg(long, short = 'o', value_name = "FILE.svg")]
    pub out: PathBuf,
    /// The title above the charts (default: the first log's own title line).
    #[arg(long)]
    pub title: Option<String>,
}

/// One series to draw.
pub struct Series<'a> {
    /// Its legend text.
    pub name: String,
    /// Every sample of the series (the percentile chart).
    pub corrected: &'a Histogram<u64>,
    /// The uncorrected twin, drawn dashed, if there is one.
    pub uncorrected: Option<&'a Histogram<u64>>,
    /// One point per interval (the two charts over time).
    pub points: &'a [Point],
    /// Seconds to add to every point's time (a log that started later).
    pub offset_s: f64,
}

/// Runs `stress plot`: reads every log, draws them, says where.
pub fn run(args: &Args) -> Result<()> {
    let logs = args
        .logs
        .iter()
        .map(|path| histlog::read(path))
        .collect::<Result<Vec<_>>>()?;
    let first_start = logs.iter().filter_map(|log| log.start).min();
    for log in logs.iter().filter(|log| log.start.is_none()) {
        log::warn!(
            "{} has no start time (neither StartTime nor BaseTime); drawn from 0 s",
            log.path
        );
    }
    let series: Vec<Series> = logs
        .iter()
        .filter_map(|log| {
            let main = log.corrected.as_ref().or(log.uncorrected.as_ref())?;
            Some(Series {
                name: log.path.clone(),
                corrected: &main.total,
                uncorrected: log
                    .corrected
                    .as_ref()
                    .and(log.uncorrected.as_ref())
                    .map(|s| &s.total),
                points: &main.points,
                offset_s: log
                    .start
                    .zip(first_start)
                    .and_then(|(start, first)| start.duration_since(first).ok())
                    .map_or(0.0, |d| d.as_secs_f64()),
            })
        })
        .collect();
    let title = args.title.clone().unwrap_or_else(|| {
        logs[0].title.clone().unwrap_or_else(|| match first_start {
            Some(first) => format!("{} log(s) from {}", logs.len(), utc_text(first)),
            None => format!("{} log(s)", logs.len()),
        })
    });
    draw(&args.out, &title, &series)?;
    eprintln!(
        "stress plot: {} series drawn in {}",
        series.len(),
        args.out.display()
    );
    Ok(())
}

/// Draws `series` under `title` into the SVG file at `path`.
pub fn draw(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let fail =
        |e: &dyn std::fmt::Display| Error::Failed(format!("drawing {}: {e}", path.display()));
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| fail(&e))?;
    let (top, rest) = root.split_vertically(500);
    let (middle, bottom) = rest.split_vertically(300);
    percentile_chart(&top, series).map_err(|e| fail(&e))?;
    time_chart(
        &middle,
        series,
        "throughput per second",
        "per second",
        |p| p.per_s(),
    )
    .map_err(|e| fail(&e))?;
    time_chart(&bottom, series, "p99 latency per second", "ms", |p| {
        p.p99_ns as f64 / 1e6
    })
    .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Points of one line: (x, y).
type Curve = Vec<(f64, f64)>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult<'a> =
    std::result::Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>;

/// (1/(1-q), milliseconds) for the quantile steps of `hist`, HdrHistogram's
/// way (five steps per halving of the distance to 100%), the last (q = 1) left out.
fn spectrum_points(hist: &Histogram<u64>) -> Curve {
    hist.iter_quantiles(SPECTRUM_TICKS)
        .map(|step| (step.quantile_iterated_to(), step.value_iterated_to()))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, ns)| (1.0 / (1.0 - q), ns as f64 / 1e6))
        .collect()
}

/// `1/(1-p)` as the percentile people say: 10 → "90%", 1000 → "99.9%".
fn percentile_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x.max(1.0));
    let text = format!("{p:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn percentile_chart(area: &Area, series: &[Series]) -> DrawResult<'static> {
    let lines: Vec<(Curve, Option<Curve>)> = series
        .iter()
        .map(|s| {
            (
                spectrum_points(s.corrected),
                s.uncorrected.map(spectrum_points),
            )
        })
        .collect();
    let all = lines
        .iter()
        .flat_map(|(main, plain)| main.iter().chain(plain.iter().flatten()));
    let (x_max, y_max) = all.fold((100.0f64, 0.001f64), |(x, y), (px, py)| {
        (x.max(*px * 2.0), y.max(*py))
    });
    let x_max = 10f64.powf(x_max.log10().ceil()).min(1e9);
    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile", ("sans-serif", 16))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..x_max).log_scale(), 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&percentile_label)
        .draw()?;
    for (i, (s, (main, plain))) in series.iter().zip(&lines).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                main.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        if let Some(plain) = plain {
            chart
                .draw_series(DashedLineSeries::new(
                    plain.iter().copied(),
                    6,
                    4,
                    colour.stroke_width(1),
                ))?
                .label(format!("{} (uncorrected)", s.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(1))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

fn time_chart(
    area: &Area,
    series: &[Series],
    caption: &str,
    unit: &str,
    figure: impl Fn(&Point) -> f64,
) -> DrawResult<'static> {
    // Steps: each interval's figure held from its start to its end.
    let lines: Vec<Curve> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|p| p.length_s > 0.0)
                .flat_map(|p| {
                    let start = s.offset_s + p.t_s;
                    [(start, figure(p)), (start + p.length_s, figure(p))]
                })
                .collect()
        })
        .collect();
    let (x_max, y_max) = lines
        .iter()
        .flatten()
        .fold((1.0f64, 1e-3f64), |(x, y), (px, py)| {
            (x.max(*px), y.max(*py))
        });
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max.ceil(), 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start (each interval's figure held over it)")
        .y_desc(unit)
        .draw()?;
    for (i, points) in lines.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_reads_as_percentiles() {
        assert_eq!(percentile_label(&1.0), "0%");
        assert_eq!(percentile_label(&10.0), "90%");
        assert_eq!(percentile_label(&1000.0), "99.9%");
        assert_eq!(percentile_label(&100000.0), "99.999%");
    }

    #[test]
    fn spectrum_points_climb_with_the_percentile() {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            hist.record(us * 1000).unwrap();
        }
        let points = spectrum_points(&hist);
        assert!(points.len() > 20);
        assert!(points
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(points[0].0, 1.0);
        assert!(points.last().unwrap().1 <= 1.001);
    }
}
