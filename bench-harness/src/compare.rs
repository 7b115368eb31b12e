//! `bench-harness compare`: one table and two plots from several runs, so batch configurations
//! can be judged side by side.
//!
//! Inputs may be run directories (`summary.json` + `latency.hlog`), interval logs (`.hlog`,
//! nanoseconds; all intervals merged) or percentile distributions (`.hgrm`, milliseconds; only
//! latency is known, so rate and loss cells stay empty).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

use crate::hgrm::{self, HgrmError};
use crate::hlog::{self, HlogError};
use crate::plot::{self, Curve, PlotError};
use crate::report::{self, ReportError, Row};
use crate::summary::{LATENCY_HLOG_FILE, SUMMARY_FILE, Summary, SummaryError};

/// Percentile plot file names written by [`compare`].
pub const PERCENTILES_SVG: &str = "percentiles.svg";
/// PNG twin of [`PERCENTILES_SVG`].
pub const PERCENTILES_PNG: &str = "percentiles.png";
/// Latency-vs-throughput plot file names written by [`compare`] (only if some input has a summary).
pub const THROUGHPUT_SVG: &str = "latency_vs_throughput.svg";
/// PNG twin of [`THROUGHPUT_SVG`].
pub const THROUGHPUT_PNG: &str = "latency_vs_throughput.png";

/// Errors from comparing runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    /// No inputs were given.
    #[error("no inputs to compare")]
    NoInputs,
    /// An input is not a directory, `.hgrm` or `.hlog` file.
    #[error("{0}: not a run directory, .hgrm or .hlog file")]
    UnknownInput(PathBuf),
    /// A run directory has neither `summary.json` nor `latency.hlog`.
    #[error("{0}: run directory has neither {SUMMARY_FILE} nor {LATENCY_HLOG_FILE}")]
    EmptyRunDir(PathBuf),
    /// An input does not exist.
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    /// Reading an input failed.
    #[error("reading {path}")]
    Io {
        /// Input file.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A `.hgrm` input did not parse.
    #[error("parsing percentile distribution {path}")]
    Hgrm {
        /// Input file.
        path: PathBuf,
        /// Parse error.
        source: HgrmError,
    },
    /// A `.hlog` input did not parse.
    #[error("reading interval log {path}")]
    Hlog {
        /// Input file.
        path: PathBuf,
        /// Parse error.
        source: HlogError,
    },
    /// A `summary.json` did not parse.
    #[error(transparent)]
    Summary(#[from] SummaryError),
    /// Writing the table failed.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Drawing a plot failed.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// What [`compare_outputs`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareOutput {
    /// The Markdown comparison table (also in `comparison.md`).
    pub markdown: String,
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
}

/// One loaded input.
struct Input {
    label: String,
    row: Row,
    curve: Option<Curve>,
    /// `(achieved rate, p99 ms)` when the input has a summary.
    throughput: Option<(f64, f64)>,
}

/// Compares `inputs` (run directories, `.hlog` or `.hgrm` files) and writes `comparison.md`,
/// `comparison.csv`, `percentiles.svg/png` and, when any input has a summary,
/// `latency_vs_throughput.svg/png` into `out_dir`. Returns the Markdown table.
///
/// Labels come from each summary's configuration (`bs=16 bt=0.5ms @5000/s`), else from the
/// file or directory name; repeated labels get the input's name appended.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use hdrhistogram::Histogram;
/// use bench_harness::{compare::compare, hlog::HlogWriter};
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut h = Histogram::<u64>::new(3).unwrap();
/// for v in 1..=1000u64 { h.record(v * 1_000).unwrap(); }
/// let path = dir.path().join("run-a.hlog");
/// let mut w = HlogWriter::new(std::fs::File::create(&path).unwrap(), SystemTime::now()).unwrap();
/// w.write_interval(Duration::ZERO, Duration::from_secs(1), &h).unwrap();
/// w.flush().unwrap();
///
/// let md = compare(&[path], &dir.path().join("out")).unwrap();
/// assert!(md.contains("| run-a  |"));
/// assert!(dir.path().join("out/percentiles.png").exists());
/// ```
pub fn compare(inputs: &[PathBuf], out_dir: &Path) -> Result<String, CompareError> {
    compare_outputs(inputs, out_dir).map(|o| o.markdown)
}

/// [`compare`], also returning the list of files written.
pub fn compare_outputs(inputs: &[PathBuf], out_dir: &Path) -> Result<CompareOutput, CompareError> {
    if inputs.is_empty() {
        return Err(CompareError::NoInputs);
    }
    let mut loaded = inputs
        .iter()
        .map(|p| load(p))
        .collect::<Result<Vec<Input>, _>>()?;
    disambiguate_labels(&mut loaded, inputs);

    let rows: Vec<Row> = loaded.iter().map(|i| i.row.clone()).collect();
    let markdown = report::write_comparison(out_dir, &rows)?;
    let mut files = vec![
        out_dir.join(report::MARKDOWN_FILE),
        out_dir.join(report::CSV_FILE),
    ];

    // Empty histograms have no points: plot what there is, and skip a plot with nothing in it.
    let curves: Vec<Curve> = loaded.iter().filter_map(|i| i.curve.clone()).collect();
    let (svg, png) = (out_dir.join(PERCENTILES_SVG), out_dir.join(PERCENTILES_PNG));
    match plot::percentile_plot_curves(&curves, &svg, &png) {
        Ok(()) => files.extend([svg, png]),
        Err(PlotError::NoData(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let points: Vec<(String, f64, f64)> = loaded
        .iter()
        .filter_map(|i| i.throughput.map(|(rate, p99)| (i.label.clone(), rate, p99)))
        .collect();
    let (svg, png) = (out_dir.join(THROUGHPUT_SVG), out_dir.join(THROUGHPUT_PNG));
    match plot::latency_vs_throughput_plot(&points, &svg, &png) {
        Ok(()) => files.extend([svg, png]),
        Err(PlotError::NoData(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(CompareOutput { markdown, files })
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn load(path: &Path) -> Result<Input, CompareError> {
    if !path.exists() {
        return Err(CompareError::Missing(path.to_owned()));
    }
    if path.is_dir() {
        return load_run_dir(path);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("hgrm") => {
            let text = fs::read_to_string(path).map_err(|source| CompareError::Io {
                path: path.to_owned(),
                source,
            })?;
            let parsed = hgrm::parse_percentile_distribution(&text).map_err(|source| {
                CompareError::Hgrm {
                    path: path.to_owned(),
                    source,
                }
            })?;
            let label = stem(path);
            Ok(Input {
                row: Row::from_hgrm(label.clone(), &parsed),
                curve: Some(Curve::from_hgrm(label.clone(), &parsed)),
                throughput: None,
                label,
            })
        }
        Some("hlog") => {
            let h = read_merged_hlog(path)?;
            let label = stem(path);
            Ok(Input {
                row: Row::from_histogram_ns(label.clone(), &h),
                curve: Some(Curve::from_histogram_ns(label.clone(), &h)),
                throughput: None,
                label,
            })
        }
        _ => Err(CompareError::UnknownInput(path.to_owned())),
    }
}

fn load_run_dir(dir: &Path) -> Result<Input, CompareError> {
    let summary_path = dir.join(SUMMARY_FILE);
    let hlog_path = dir.join(LATENCY_HLOG_FILE);
    let summary = if summary_path.is_file() {
        Some(Summary::read_json(&summary_path)?)
    } else {
        None
    };
    let h = if hlog_path.is_file() {
        Some(read_merged_hlog(&hlog_path)?)
    } else {
        None
    };
    let label = summary.as_ref().map_or_else(|| stem(dir), Summary::label);
    let row = match (&summary, &h) {
        (Some(s), _) => Row::from_summary(label.clone(), s),
        (None, Some(h)) => Row::from_histogram_ns(label.clone(), h),
        (None, None) => return Err(CompareError::EmptyRunDir(dir.to_owned())),
    };
    Ok(Input {
        row,
        curve: h
            .as_ref()
            .map(|h| Curve::from_histogram_ns(label.clone(), h)),
        throughput: summary.map(|s| (s.achieved_rate, s.latency_ms.p99)),
        label,
    })
}

fn read_merged_hlog(path: &Path) -> Result<Histogram<u64>, CompareError> {
    let hlog_err = |source| CompareError::Hlog {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(|source| CompareError::Io {
        path: path.to_owned(),
        source,
    })?;
    let intervals = hlog::read_hlog(io::BufReader::new(file)).map_err(hlog_err)?;
    hlog::merge(&intervals).map_err(hlog_err)
}

/// Appends ` (input name)` to labels that occur more than once, so legends stay unambiguous.
fn disambiguate_labels(inputs: &mut [Input], paths: &[PathBuf]) {
    let labels: Vec<String> = inputs.iter().map(|i| i.label.clone()).collect();
    for (input, path) in inputs.iter_mut().zip(paths) {
        if labels.iter().filter(|l| **l == input.label).count() > 1 {
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let label = format!("{} ({name})", input.label);
            input.row.label.clone_from(&label);
            if let Some(c) = &mut input.curve {
                c.label.clone_from(&label);
            }
            input.label = label;
        }
    }
}
