//! Plots for comparing configurations, each written as SVG (for docs) and PNG (for chat and
//! issues) from the same drawing code:
//!
//! * [`percentile_plot`]: latency by percentile on HdrHistogram's `1/(1-p)` log axis (labels
//!   0%, 90%, 99%, 99.9%, ...), as the public HdrHistogram plotter draws `.hgrm` files, so the
//!   tail is as visible as the median.
//! * [`latency_vs_throughput_plot`]: p99 against achieved rate, one line per configuration
//!   family, which shows where each configuration's knee is.
//!
//! PNG text needs a font file: DejaVu Sans is loaded at run time from [`FONT_PATH`] (Debian
//! package `fonts-dejavu-core`, installed by `scripts/setup.sh`), or from the file named by
//! `BENCH_HARNESS_FONT`. Why not embed it: keeps a 700 kB binary blob out of the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hdrhistogram::Histogram;
use plotters::chart::{ChartContext, SeriesAnno};
use plotters::coord::Shift;
use plotters::coord::cartesian::Cartesian2d;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::hgrm::{self, Hgrm};
use crate::summary::NS_PER_MS;

/// Where the PNG font is looked for.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Environment variable naming another `.ttf` file to use instead of [`FONT_PATH`].
pub const FONT_ENV: &str = "BENCH_HARNESS_FONT";

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1280, 800);

/// Tableau 10 (distinct, colour-blind-friendlier than plotters' default palette), then ten
/// darker, still distinct colours, so a sweep of up to 20 configurations never repeats one.
const COLOURS: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
    RGBColor(0, 110, 110),
    RGBColor(110, 110, 0),
    RGBColor(200, 0, 200),
    RGBColor(255, 190, 0),
    RGBColor(0, 170, 90),
    RGBColor(90, 40, 140),
    RGBColor(0, 150, 255),
];

/// Errors from plotting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The font for PNG text could not be loaded.
    #[error("{0}")]
    Font(String),
    /// There was nothing to plot.
    #[error("nothing to plot: {0}")]
    NoData(&'static str),
    /// plotters failed while drawing or writing a file.
    #[error("drawing {path}: {message}")]
    Draw {
        /// Output file.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
}

/// One percentile curve: `(quantile in 0..1, latency in ms)` points in ascending quantile order.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// Points; quantiles of 1.0 are skipped when drawing (they lie at infinity on this axis).
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// The `.hgrm` rows of a nanosecond histogram (HdrHistogram's 5-ticks iteration), in ms.
    pub fn from_histogram_ns(label: impl Into<String>, h: &Histogram<u64>) -> Self {
        let points = hgrm::percentile_steps(h, hgrm::DEFAULT_TICKS_PER_HALF_DISTANCE)
            .iter()
            .map(|s| (s.quantile(), s.value as f64 / NS_PER_MS))
            .collect();
        Curve {
            label: label.into(),
            points,
        }
    }

    /// The rows of a parsed `.hgrm` file (values taken as milliseconds).
    pub fn from_hgrm(label: impl Into<String>, h: &Hgrm) -> Self {
        Curve {
            label: label.into(),
            points: h.rows.iter().map(|r| (r.quantile, r.value)).collect(),
        }
    }
}

/// Latency-by-percentile plot of nanosecond histograms, one curve each.
///
/// ```
/// use hdrhistogram::Histogram;
/// let dir = tempfile::tempdir().unwrap();
/// let mut h = Histogram::<u64>::new(3).unwrap();
/// for v in 1..=10_000u64 { h.record(v * 100).unwrap(); } // 0.1 µs .. 1 ms
/// let (svg, png) = (dir.path().join("p.svg"), dir.path().join("p.png"));
/// bench_harness::plot::percentile_plot(&[("bs=16 @1000/s".to_string(), h)], &svg, &png)
///     .unwrap();
/// assert!(std::fs::read_to_string(&svg).unwrap().contains("99.99%"));
/// assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
/// ```
pub fn percentile_plot(
    series: &[(String, Histogram<u64>)],
    path_svg: &Path,
    path_png: &Path,
) -> Result<(), PlotError> {
    let curves: Vec<Curve> = series
        .iter()
        .map(|(label, h)| Curve::from_histogram_ns(label.clone(), h))
        .collect();
    percentile_plot_curves(&curves, path_svg, path_png)
}

/// Latency-by-percentile plot of prepared curves (e.g. from `.hgrm` files).
pub fn percentile_plot_curves(
    curves: &[Curve],
    path_svg: &Path,
    path_png: &Path,
) -> Result<(), PlotError> {
    let drawable: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|c| {
            let pts = c
                .points
                .iter()
                .filter(|(q, v)| *q < 1.0 && v.is_finite())
                .map(|&(q, v)| (nines(q), v))
                .collect();
            (c.label.clone(), pts)
        })
        .filter(|(_, pts): &(String, Vec<(f64, f64)>)| !pts.is_empty())
        .collect();
    if drawable.is_empty() {
        return Err(PlotError::NoData("no percentile points below 100%"));
    }
    let max_x = drawable
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.0_f64, f64::max);
    // Always show up to 99.999% so plots of different runs line up; extend for longer runs.
    let x_max = max_x.ceil().clamp(5.0, 9.0);
    let y_max = nice_max(
        drawable
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0_f64, f64::max),
    );
    ensure_font()?;
    let figure = PercentileFigure {
        curves: &drawable,
        x_max,
        y_max,
    };
    render(path_svg, path_png, &figure)
}

/// p99 latency (log scale) against achieved rate. `points` are `(label, achieved msg/s, p99 ms)`; labels
/// with the same text before `@` (e.g. `bs=16 bt=1ms @5000/s`) form one line, in rate order.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let pts = vec![
///     ("bs=1 @1000/s".to_string(), 1000.0, 0.4),
///     ("bs=1 @2000/s".to_string(), 1990.0, 0.9),
///     ("bs=16 @1000/s".to_string(), 1000.0, 0.6),
/// ];
/// let (svg, png) = (dir.path().join("t.svg"), dir.path().join("t.png"));
/// bench_harness::plot::latency_vs_throughput_plot(&pts, &svg, &png).unwrap();
/// let svg = std::fs::read_to_string(&svg).unwrap();
/// // one legend entry per family (plotters puts each text on its own line)
/// assert!(svg.lines().any(|l| l == "bs=1") && svg.lines().any(|l| l == "bs=16"));
/// ```
pub fn latency_vs_throughput_plot(
    points: &[(String, f64, f64)],
    path_svg: &Path,
    path_png: &Path,
) -> Result<(), PlotError> {
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (label, rate, p99) in points {
        if !(rate.is_finite() && p99.is_finite()) {
            continue;
        }
        let family = family_of(label);
        if !families.contains_key(&family) {
            order.push(family.clone());
        }
        families.entry(family).or_default().push((*rate, *p99));
    }
    let mut series: Vec<(String, Vec<(f64, f64)>)> = order
        .into_iter()
        .filter_map(|f| families.remove(&f).map(|pts| (f, pts)))
        .collect();
    if series.is_empty() {
        return Err(PlotError::NoData("no (rate, p99) points"));
    }
    for (_, pts) in &mut series {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let x_max = nice_max(
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
            .fold(0.0, f64::max),
    );
    // p99 on a log axis: a search's holding steps (a few ms) and its saturated ones
    // (seconds) both stay readable. Plotted as log10 of the value, labelled in ms.
    for (_, pts) in &mut series {
        for p in pts.iter_mut() {
            p.1 = log_ms(p.1);
        }
    }
    let ys = || series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let y_min = ys().fold(f64::INFINITY, f64::min).floor();
    let y_max = ys()
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        .max(y_min + 1.0);
    ensure_font()?;
    let figure = ThroughputFigure {
        series: &series,
        x_max,
        y_min,
        y_max,
    };
    render(path_svg, path_png, &figure)
}

/// Where a p99 of `ms` sits on the log axis: log10, with anything under 1 us at 1 us.
fn log_ms(ms: f64) -> f64 {
    ms.max(0.001).log10()
}

/// A log-axis position back as a label in ms ("0.1", "1", "10", "1000").
fn ms_label(y: f64) -> String {
    let ms = 10f64.powf(y);
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        let digits = (-y.floor()) as usize;
        format!("{ms:.digits$}")
    }
}

/// The configuration family of a label: the text before `@`, trimmed.
fn family_of(label: &str) -> String {
    label
        .split_once('@')
        .map_or(label, |(family, _)| family)
        .trim()
        .to_owned()
}

/// `log10(1/(1-q))`: 0 at 0%, 1 at 90%, 2 at 99%, ...
fn nines(q: f64) -> f64 {
    (1.0 / (1.0 - q)).log10()
}

/// Axis label for an integer number of nines.
fn nines_label(n: i64) -> String {
    match n {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        2 => "99%".to_owned(),
        n => format!("99.{}%", "9".repeat((n - 2) as usize)),
    }
}

/// Axis top with about 8% head room, rounded up to 1, 2, 2.5 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let target = v * 1.08;
    let pow = 10f64.powf(target.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|c| *c >= target)
        .unwrap_or(10.0 * pow)
}

/// Loads and registers the PNG font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os(FONT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(FONT_PATH));
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "cannot read font {}: {e}; install the Debian package fonts-dejavu-core \
                     (scripts/setup.sh does) or set {FONT_ENV} to a .ttf file",
                    path.display()
                )
            })?;
            // plotters keeps fonts for the life of the process and needs 'static bytes; this
            // runs once, so the leak is bounded.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
        })
        .clone()
        .map_err(PlotError::Font)
}

/// A figure that can be drawn on any plotters backend.
trait Figure {
    /// `raster`: the backend is a bitmap (see [`thick_line`]).
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        raster: bool,
    ) -> Result<(), String>;
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws a 3-pixel line through `pts` and returns its series for the legend.
///
/// Why not always `LineSeries`: on bitmaps plotters turns a thick polyline into one polygon
/// whose joins use truncated integer offsets, which shows as dips and wiggles that are not in
/// the data. Separate segments with round joins (small discs) draw cleanly; SVG keeps one
/// `<polyline>`.
fn thick_line<'c, 'a, DB: DrawingBackend>(
    chart: &'c mut Chart<'a, DB>,
    pts: &[(f64, f64)],
    colour: RGBColor,
    raster: bool,
) -> Result<&'c mut SeriesAnno<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let style = colour.stroke_width(3);
    if !raster {
        return chart.draw_series(LineSeries::new(pts.iter().copied(), style));
    }
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 1, colour.filled())))?;
    chart.draw_series(
        pts.windows(2)
            .map(|w| PathElement::new(vec![w[0], w[1]], style)),
    )
}

/// Draws the same figure to an SVG and a PNG file.
fn render(path_svg: &Path, path_png: &Path, figure: &impl Figure) -> Result<(), PlotError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |message: String| PlotError::Draw { path, message }
    };
    let root = SVGBackend::new(path_svg, SIZE).into_drawing_area();
    figure.draw(&root, false).map_err(err(path_svg))?;
    root.present().map_err(|e| err(path_svg)(e.to_string()))?;
    drop(root);
    let root = BitMapBackend::new(path_png, SIZE).into_drawing_area();
    figure.draw(&root, true).map_err(err(path_png))?;
    root.present().map_err(|e| err(path_png)(e.to_string()))?;
    Ok(())
}

struct PercentileFigure<'a> {
    curves: &'a [(String, Vec<(f64, f64)>)],
    x_max: f64,
    y_max: f64,
}

impl Figure for PercentileFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        raster: bool,
    ) -> Result<(), String> {
        let (curves, x_max, y_max) = (self.curves, self.x_max, self.y_max);
        let s = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(s)?;
        let mut chart = ChartBuilder::on(root)
            .caption("Latency by percentile", (FONT, 30))
            .margin(24)
            .margin_right(64)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(s)?;
        let x_label = |x: &f64| {
            let n = x.round();
            if (x - n).abs() < 1e-6 {
                nines_label(n as i64)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&x_label)
            .y_label_formatter(&|y| format!("{y}"))
            .x_desc("Percentile")
            .y_desc("Latency (ms)")
            .label_style((FONT, 20))
            .axis_desc_style((FONT, 22))
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(s)?;
        for (i, (label, pts)) in curves.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            thick_line(&mut chart, pts, colour, raster)
                .map_err(s)?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(4))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .margin(16)
            .label_font((FONT, 20))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(s)?;
        Ok(())
    }
}

struct ThroughputFigure<'a> {
    /// Points as (rate, log10 of p99 in ms).
    series: &'a [(String, Vec<(f64, f64)>)],
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl Figure for ThroughputFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        raster: bool,
    ) -> Result<(), String> {
        let (series, x_max) = (self.series, self.x_max);
        let (y_min, y_max) = (self.y_min, self.y_max);
        let s = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(s)?;
        let mut chart = ChartBuilder::on(root)
            .caption("p99 latency vs achieved throughput", (FONT, 30))
            .margin(24)
            .margin_right(64)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(s)?;
        chart
            .configure_mesh()
            .x_labels(8)
            // One label a decade.
            .y_labels((y_max - y_min) as usize + 1)
            .x_label_formatter(&|x| format!("{x}"))
            .y_label_formatter(&|y| ms_label(*y))
            .x_desc("Achieved rate (msg/s)")
            .y_desc("p99 latency (ms, log scale)")
            .label_style((FONT, 20))
            .axis_desc_style((FONT, 22))
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(s)?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            thick_line(&mut chart, pts, colour, raster)
                .map_err(s)?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    EmptyElement::at((x + 12, y))
                        + PathElement::new([(-12, 0), (12, 0)], colour.stroke_width(3))
                        + Circle::new((0, 0), 6, colour.filled())
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 6, colour.filled())))
                .map_err(s)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .margin(16)
            .label_font((FONT, 20))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(s)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_helpers() {
        assert_eq!(nines_label(0), "0%");
        assert_eq!(nines_label(1), "90%");
        assert_eq!(nines_label(3), "99.9%");
        assert_eq!(nines_label(5), "99.999%");
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nice_max(0.9), 1.0);
        assert_eq!(nice_max(0.93), 2.0); // 8% head room pushes past 1
        assert_eq!(nice_max(1.9), 2.5);
        assert_eq!(nice_max(4100.0), 5000.0);
        assert_eq!(family_of("bs=16 bt=1ms @5000/s"), "bs=16 bt=1ms");
        assert_eq!(family_of("run-a"), "run-a");
        assert_eq!(ms_label(log_ms(10.0)), "10");
        assert_eq!(ms_label(log_ms(1000.0)), "1000");
        assert_eq!(ms_label(log_ms(0.1)), "0.1");
        assert_eq!(ms_label(log_ms(0.0)), "0.001", "below 1 us sits at 1 us");
    }
}
