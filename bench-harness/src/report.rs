//! The comparison table: one row per configuration, as Markdown (for people and PR comments)
//! and CSV (for spreadsheets), with the same columns.
//!
//! Latency columns are milliseconds with 3 decimals; rate columns are messages per second.
//! Cells that an input cannot provide (rates and loss for a bare `.hgrm`) are left empty.
//! The last column, `lag p99`, is how late the harness sent against its schedule: part of
//! every latency of the row, so a row where it is large measured the harness as much as
//! the engine.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

use crate::hgrm::Hgrm;
use crate::summary::{NS_PER_MS, Summary};

/// Markdown table file written by [`write_comparison`].
pub const MARKDOWN_FILE: &str = "comparison.md";
/// CSV table file written by [`write_comparison`].
pub const CSV_FILE: &str = "comparison.csv";

const HEADERS: [&str; 15] = [
    "config", "rate", "offered", "sent", "refused", "achieved", "p50", "p90", "p99", "p99.9",
    "max", "lost", "wall", "verdict", "lag p99",
];

/// Errors from writing the comparison files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Writing a file failed.
    #[error("writing {path}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
}

/// One table row. Latencies in milliseconds; `None` prints as an empty cell.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// Configuration label.
    pub label: String,
    /// Asked rate (msg/s).
    pub rate: Option<f64>,
    /// Messages the schedule offered in the measured phase.
    pub offered: Option<u64>,
    /// Messages sent on the wire.
    pub sent: Option<u64>,
    /// Messages refused by back-pressure (connection full or closed).
    pub refused: Option<u64>,
    /// Achieved rate over the receive window (msg/s).
    pub achieved: Option<f64>,
    /// Median latency.
    pub p50: Option<f64>,
    /// 90th percentile latency.
    pub p90: Option<f64>,
    /// 99th percentile latency.
    pub p99: Option<f64>,
    /// 99.9th percentile latency.
    pub p999: Option<f64>,
    /// Largest latency.
    pub max: Option<f64>,
    /// Sent messages never answered.
    pub lost: Option<u64>,
    /// Wall time of the run, seconds.
    pub wall: Option<f64>,
    /// `ok` or `saturated`.
    pub verdict: Option<String>,
    /// How late the harness sent against its schedule, p99 (ms).
    pub lag_p99: Option<f64>,
}

impl Row {
    /// A row with every column from a run summary.
    pub fn from_summary(label: impl Into<String>, s: &Summary) -> Self {
        Row {
            label: label.into(),
            rate: Some(s.config.rate),
            offered: Some(s.offered),
            sent: Some(s.sent),
            refused: Some(s.refused),
            achieved: Some(s.achieved_rate),
            p50: Some(s.latency_ms.p50),
            p90: Some(s.latency_ms.p90),
            p99: Some(s.latency_ms.p99),
            p999: Some(s.latency_ms.p999),
            max: Some(s.latency_ms.max),
            lost: Some(s.lost),
            wall: Some(s.wall_time_s),
            verdict: Some(if s.saturated { "saturated" } else { "ok" }.to_owned()),
            lag_p99: Some(s.harness_lag_ms.p99),
        }
    }

    /// Latency columns from a histogram recorded in nanoseconds; rates and loss unknown.
    pub fn from_histogram_ns(label: impl Into<String>, h: &Histogram<u64>) -> Self {
        let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / NS_PER_MS);
        Row {
            label: label.into(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: (!h.is_empty()).then(|| h.max() as f64 / NS_PER_MS),
            ..Row::default()
        }
    }

    /// Latency columns from a parsed `.hgrm` (values already in milliseconds).
    pub fn from_hgrm(label: impl Into<String>, h: &Hgrm) -> Self {
        Row {
            label: label.into(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max_value(),
            ..Row::default()
        }
    }

    fn cells(&self) -> Vec<String> {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        let rate = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_default();
        let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        vec![
            self.label.clone(),
            rate(self.rate),
            n(self.offered),
            n(self.sent),
            n(self.refused),
            rate(self.achieved),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            n(self.lost),
            self.wall.map(|v| format!("{v:.1}")).unwrap_or_default(),
            self.verdict.clone().unwrap_or_default(),
            ms(self.lag_p99),
        ]
    }
}

/// Renders the rows as a Markdown table, columns padded so it also reads well in a terminal.
///
/// ```
/// use bench_harness::report::{markdown, Row};
/// let row = Row { label: "bs=1 @1000/s".into(), rate: Some(1000.0), offered: Some(2000),
///     sent: Some(2000), refused: Some(0), achieved: Some(999.5), p50: Some(0.25),
///     p90: Some(0.5), p99: Some(1.0), p999: Some(2.0), max: Some(3.5), lost: Some(0),
///     wall: Some(4.1), verdict: Some("ok".into()), lag_p99: Some(0.05) };
/// let md = markdown(&[row]);
/// assert!(md.starts_with("| config       |   rate | offered | sent | refused | achieved |"));
/// assert!(md.contains("\n| ------------ | -----: | ------: | ---: | ------: | -------: |"));
/// assert!(md.contains("\n| bs=1 @1000/s | 1000.0 |    2000 | 2000 |       0 |    999.5 |"));
/// assert!(md.contains("|  4.1 |      ok |   0.050 |"));
/// ```
pub fn markdown(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    markdown_table(&HEADERS, &cells)
}

/// Renders any table as Markdown: the first column left-aligned (its `|` escaped), the
/// others right-aligned, every column padded to its widest cell so it also reads well in a
/// terminal. Missing cells print empty.
///
/// ```
/// let md = bench_harness::report::markdown_table(&["io", "rate"], &[vec!["batched".into(), "10.0".into()]]);
/// assert_eq!(md, "| io      | rate |\n| ------- | ---: |\n| batched | 10.0 |\n");
/// ```
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |row: &[String], i: usize| -> String {
        let c = row.get(i).cloned().unwrap_or_default();
        if i == 0 { c.replace('|', "\\|") } else { c }
    };
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| cell(r, i).chars().count())
                .chain([headers.get(i).map_or(0, |h| h.len()), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    // The label column is left-aligned, numbers right-aligned (also in rendered Markdown).
    let line = |items: &[String]| {
        let padded: Vec<String> = items
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (s, w))| {
                if i == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let header: Vec<String> = headers.iter().map(|s| (*s).to_owned()).collect();
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                "-".repeat(*w)
            } else {
                format!("{}:", "-".repeat(w.saturating_sub(1)))
            }
        })
        .collect();
    let mut out = line(&header);
    out.push_str(&line(&rule));
    for r in rows {
        let cells: Vec<String> = (0..headers.len()).map(|i| cell(r, i)).collect();
        out.push_str(&line(&cells));
    }
    out
}

/// Renders any table as CSV (RFC 4180 quoting).
pub fn csv_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = headers.join(",");
    out.push('\n');
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| csv_field(c)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Renders the rows as CSV with the Markdown table's columns (RFC 4180 quoting).
///
/// ```
/// use bench_harness::report::{csv, Row};
/// let row = Row { label: "a.hgrm".into(), p50: Some(0.1), p90: Some(0.2), p99: Some(0.3),
///     p999: Some(0.4), max: Some(0.5), ..Row::default() };
/// assert_eq!(csv(&[row]), "config,rate,offered,sent,refused,achieved,p50,p90,p99,p99.9,max,lost,wall,verdict,lag p99\n\
///                          a.hgrm,,,,,,0.100,0.200,0.300,0.400,0.500,,,,\n");
/// ```
pub fn csv(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    csv_table(&HEADERS, &cells)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Writes `comparison.md` and `comparison.csv` into `dir` (created if missing) and returns the
/// Markdown.
pub fn write_comparison(dir: &Path, rows: &[Row]) -> Result<String, ReportError> {
    let io_err = |path: PathBuf| move |source| ReportError::Io { path, source };
    fs::create_dir_all(dir).map_err(io_err(dir.to_owned()))?;
    let md = markdown(rows);
    let md_path = dir.join(MARKDOWN_FILE);
    fs::write(&md_path, &md).map_err(io_err(md_path.clone()))?;
    let csv_path = dir.join(CSV_FILE);
    fs::write(&csv_path, csv(rows)).map_err(io_err(csv_path.clone()))?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_markdown_escapes() {
        let row = Row {
            label: "a,b|\"c\"".into(),
            lost: Some(7),
            ..Row::default()
        };
        assert!(csv(std::slice::from_ref(&row)).ends_with("\"a,b|\"\"c\"\"\",,,,,,,,,,,7,,,\n"));
        assert!(markdown(&[row]).contains("| a,b\\|\"c\" |"));
    }

    #[test]
    fn row_from_histogram() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=100u64 {
            h.record(v * 10_000).unwrap(); // 0.01 .. 1 ms
        }
        let r = Row::from_histogram_ns("x", &h);
        assert!((r.p50.unwrap() - 0.5).abs() < 0.001);
        assert!((r.p99.unwrap() - 0.99).abs() < 0.001);
        assert_eq!(r.rate, None);
        let empty = Row::from_histogram_ns("e", &Histogram::<u64>::new(3).unwrap());
        assert_eq!(empty.p50, None);
    }
}
