//! HdrHistogram percentile-distribution text (`.hgrm` files), written byte for byte as Java
//! HdrHistogram's `AbstractHistogram.outputPercentileDistribution(printStream, ticks, scaling)`
//! prints it, and parsed back.
//!
//! Why byte-exact: `.hgrm` files are read by existing tools (the public HdrHistogram plotter,
//! `HistogramLogProcessor` output diffs, wrk2-style reports), so ours must be indistinguishable
//! from the reference implementation's.
//!
//! Units: the harness records latency in **nanoseconds** and `.hgrm` files show
//! **milliseconds**, so callers pass [`NS_TO_MS`] (1 000 000.0) as `value_unit_scaling`; this is
//! also what Java's `HistogramLogProcessor` uses by default for nanosecond logs. The value column
//! has as many decimals as the histogram has significant digits (3 for the harness), as in Java.
//!
//! Reference: `tests/data/*.hgrm` were produced by Java HdrHistogram 2.1.11 (Debian package
//! `libhdrhistogram-java`) on OpenJDK 17 with `tests/data/Gen.java`; `tests/hgrm_golden.rs`
//! compares our output with them line by line.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Scaling for histograms recorded in nanoseconds and shown in milliseconds.
pub const NS_TO_MS: f64 = 1_000_000.0;

/// The tick count HdrHistogram tools use for `.hgrm` output: 5 steps per half distance to 100%.
pub const DEFAULT_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Errors from parsing `.hgrm` text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HgrmError {
    /// A line is neither a header, a data row nor a `#[...]` footer.
    #[error("line {line}: not a percentile-distribution row: {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
    /// Neither data rows nor a `Total count` footer were found: not percentile-distribution text.
    #[error("no percentile rows found")]
    Empty,
}

/// One step of HdrHistogram's percentile iteration (one `.hgrm` row), in recorded units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentileStep {
    /// Highest value equivalent to the bucket reached (what Java reports as `valueIteratedTo`).
    pub value: u64,
    /// Percentile level iterated to, in percent (0..=100), computed exactly as Java does.
    pub percentile_level: f64,
    /// Number of samples at or below `value`.
    pub total_count: u64,
}

impl PercentileStep {
    /// The level as a fraction (0..=1), as printed in the `Percentile` column.
    pub fn quantile(&self) -> f64 {
        self.percentile_level / 100.0
    }
}

/// HdrHistogram's percentile iteration (Java `PercentileIterator`): steps of fixed size within
/// each half distance to 100%, halving at every half, plus a final step to 100%.
///
/// This mirrors the Java arithmetic (percent units, `Math.log(x) / Math.log(2)`) rather than the
/// Rust crate's `iter_quantiles`, which works in fractions and can land on different rows.
///
/// ```
/// use hdrhistogram::Histogram;
/// let mut h = Histogram::<u64>::new(3).unwrap();
/// for v in 1..=100 { h.record(v).unwrap(); }
/// let steps = bench_harness::hgrm::percentile_steps(&h, 5);
/// assert_eq!(steps[0].value, 1);
/// let last = steps.last().unwrap();
/// assert_eq!((last.value, last.percentile_level, last.total_count), (100, 100.0, 100));
/// ```
pub fn percentile_steps(h: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<PercentileStep> {
    let total = h.len();
    let mut steps = Vec::new();
    if total == 0 {
        return steps;
    }
    let ticks = u64::from(ticks_per_half_distance.max(1));
    let mut level = 0.0_f64;
    let mut running = 0_u64;
    let mut last_value = 0_u64;
    'outer: for v in h.iter_recorded() {
        running += v.count_at_value();
        last_value = v.value_iterated_to();
        // Java re-tests the same bucket after each step, so one bucket can yield several rows.
        loop {
            let current = (100.0 * running as f64) / total as f64;
            if current < level {
                break;
            }
            steps.push(PercentileStep {
                value: last_value,
                percentile_level: level,
                total_count: running,
            });
            level = next_level(level, ticks);
            if running >= total {
                // Java's hasNext(): all counts seen, only the extra 100% step remains.
                break 'outer;
            }
        }
    }
    steps.push(PercentileStep {
        value: last_value,
        percentile_level: 100.0,
        total_count: running,
    });
    steps
}

/// Java `PercentileIterator.incrementIterationLevel`.
fn next_level(level: f64, ticks: u64) -> f64 {
    let halvings = ((100.0 / (100.0 - level)).ln() / 2.0_f64.ln()) as i64 + 1;
    // (long) Math.pow(2, n): saturates like Java's double-to-long cast.
    let pow = 2.0_f64.powi(halvings.clamp(0, 1100) as i32) as i64;
    let reporting_ticks = (ticks as i64).wrapping_mul(pow);
    level + 100.0 / reporting_ticks as f64
}

/// Writes the percentile distribution of `h` exactly as Java HdrHistogram's
/// `outputPercentileDistribution(out, ticks_per_half_distance, value_unit_scaling)` does.
///
/// Values are divided by `value_unit_scaling` ([`NS_TO_MS`] for the harness's nanosecond
/// histograms). Numbers are rounded like `java.util.Formatter` (shortest decimal, then half up),
/// not like Rust's `format!`, which differs on ties such as `1.125` at two decimals.
///
/// ```
/// use hdrhistogram::Histogram;
/// let mut h = Histogram::<u64>::new(3).unwrap();
/// for v in 1..=4 { h.record(v * 1_000_000).unwrap(); } // 1..4 ms in nanoseconds
/// let mut out = Vec::new();
/// bench_harness::hgrm::write_percentile_distribution(&h, 1_000_000.0, 5, &mut out).unwrap();
/// // What Java HdrHistogram 2.1.11 prints for the same histogram:
/// assert_eq!(String::from_utf8(out).unwrap(), "       Value     Percentile TotalCount 1/(1-Percentile)
///
///        1.000 0.000000000000          1           1.00
///        1.000 0.100000000000          1           1.11
///        1.000 0.200000000000          1           1.25
///        2.001 0.300000000000          2           1.43
///        2.001 0.400000000000          2           1.67
///        2.001 0.500000000000          2           2.00
///        3.000 0.550000000000          3           2.22
///        3.000 0.600000000000          3           2.50
///        3.000 0.650000000000          3           2.86
///        3.000 0.700000000000          3           3.33
///        3.000 0.750000000000          3           4.00
///        4.002 0.775000000000          4           4.44
///        4.002 1.000000000000          4
/// #[Mean    =        2.500, StdDeviation   =        1.118]
/// #[Max     =        4.002, Total count    =            4]
/// #[Buckets =           12, SubBuckets     =         2048]
/// ");
/// ```
pub fn write_percentile_distribution(
    h: &Histogram<u64>,
    value_unit_scaling: f64,
    ticks_per_half_distance: u32,
    out: &mut impl Write,
) -> io::Result<()> {
    let digits = usize::from(h.sigfig());
    write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for step in percentile_steps(h, ticks_per_half_distance) {
        let value = java_fixed(step.value as f64 / value_unit_scaling, digits);
        let quantile = step.percentile_level / 100.0;
        let pct = java_fixed(quantile, 12);
        if step.percentile_level != 100.0 {
            let inv = java_fixed(1.0 / (1.0 - quantile), 2);
            writeln!(
                out,
                "{value:>12} {pct:>2} {:>10} {inv:>14}",
                step.total_count
            )?;
        } else {
            writeln!(out, "{value:>12} {pct:>2} {:>10}", step.total_count)?;
        }
    }
    let mean = java_fixed(java_mean(h) / value_unit_scaling, digits);
    let stddev = java_fixed(java_std_deviation(h) / value_unit_scaling, digits);
    writeln!(
        out,
        "#[Mean    = {mean:>12}, StdDeviation   = {stddev:>12}]"
    )?;
    let max = java_fixed(h.max() as f64 / value_unit_scaling, digits);
    writeln!(
        out,
        "#[Max     = {max:>12}, Total count    = {:>12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h)
    )
}

/// [`write_percentile_distribution`] into a `String`.
pub fn percentile_distribution_string(
    h: &Histogram<u64>,
    value_unit_scaling: f64,
    ticks_per_half_distance: u32,
) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and everything written is ASCII.
    let _ = write_percentile_distribution(h, value_unit_scaling, ticks_per_half_distance, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Java `AbstractHistogram.getMean()`: sums before dividing (the Rust crate divides each term,
/// which rounds differently in the last digit).
fn java_mean(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let total: f64 = h
        .iter_recorded()
        .map(|v| h.median_equivalent(v.value_iterated_to()) as f64 * v.count_at_value() as f64)
        .sum();
    total / h.len() as f64
}

/// Java `AbstractHistogram.getStdDeviation()`.
fn java_std_deviation(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let mean = java_mean(h);
    let total: f64 = h
        .iter_recorded()
        .map(|v| {
            let d = h.median_equivalent(v.value_iterated_to()) as f64 - mean;
            (d * d) * v.count_at_value() as f64
        })
        .sum();
    (total / h.len() as f64).sqrt()
}

/// The crate does not expose `subBucketCount`; recover it from the counts array length,
/// which is `(buckets + 1) * subBucketCount / 2` in both implementations.
fn sub_bucket_count(h: &Histogram<u64>) -> usize {
    2 * h.distinct_values() / (usize::from(h.buckets()) + 1)
}

/// Formats like Java's `String.format("%.{prec}f", x)`: Java rounds the shortest decimal
/// representation half-up, whereas Rust rounds the exact binary value half-to-even.
fn java_fixed(x: f64, prec: usize) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let neg = x.is_sign_negative();
    let sci = format!("{:e}", x.abs()); // shortest round-trip digits, e.g. "1.005e0"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    // value = 0.d1 d2 d3 ... * 10^dec_exp
    let mut dec_exp = exp + 1;
    let keep = dec_exp + prec as i64;
    if keep < 0 {
        digits.clear();
    } else if (keep as usize) < digits.len() {
        let keep = keep as usize;
        let round_up = digits[keep] >= 5;
        digits.truncate(keep);
        if round_up {
            let mut i = keep;
            loop {
                if i == 0 {
                    digits.insert(0, 1);
                    dec_exp += 1;
                    break;
                }
                i -= 1;
                if digits[i] == 9 {
                    digits[i] = 0;
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
    }
    let digit_at = |pos: i64| -> char {
        // pos 0 is the first digit after "0." in the 0.d1d2... form
        if pos >= 0 && (pos as usize) < digits.len() {
            char::from(b'0' + digits[pos as usize])
        } else {
            '0'
        }
    };
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if dec_exp <= 0 {
        s.push('0');
    } else {
        for pos in 0..dec_exp {
            s.push(digit_at(pos));
        }
    }
    if prec > 0 {
        s.push('.');
        for k in 0..prec as i64 {
            s.push(digit_at(dec_exp + k));
        }
    }
    s
}

/// One parsed `.hgrm` row. Values are in the file's unit (milliseconds for harness files).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HgrmRow {
    /// Value column.
    pub value: f64,
    /// Percentile column, as a fraction (0..=1).
    pub quantile: f64,
    /// TotalCount column.
    pub total_count: u64,
}

/// A parsed percentile distribution: the rows plus the footer numbers when present.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hgrm {
    /// Data rows in file order (ascending percentile).
    pub rows: Vec<HgrmRow>,
    /// `#[Mean = ...]`.
    pub mean: Option<f64>,
    /// `StdDeviation = ...`.
    pub std_deviation: Option<f64>,
    /// `#[Max = ...]`.
    pub max: Option<f64>,
    /// `Total count = ...`.
    pub total_count: Option<u64>,
}

impl Hgrm {
    /// Value at the first row whose percentile is at least `quantile`. The rows land exactly on
    /// 0.5 and 0.9 but not on 0.99 or 0.999, so there this is an upper bound, at most one row
    /// step above the histogram's own value (conservative, as latency reports should be).
    pub fn value_at_quantile(&self, quantile: f64) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.quantile >= quantile)
            .or(self.rows.last())
            .map(|r| r.value)
    }

    /// Largest value: the footer's `Max`, else the last row's value.
    pub fn max_value(&self) -> Option<f64> {
        self.max.or_else(|| self.rows.last().map(|r| r.value))
    }
}

/// Parses percentile-distribution text (the plain format written by
/// [`write_percentile_distribution`] or any HdrHistogram implementation) back into rows, so
/// `.hgrm` files from earlier runs can be plotted and tabulated.
///
/// ```
/// use hdrhistogram::Histogram;
/// use bench_harness::hgrm;
/// let mut h = Histogram::<u64>::new(3).unwrap();
/// for v in 1..=1000 { h.record(v * 1_000).unwrap(); }
/// let text = hgrm::percentile_distribution_string(&h, 1_000_000.0, 5);
/// let parsed = hgrm::parse_percentile_distribution(&text).unwrap();
/// assert_eq!(parsed.total_count, Some(1000));
/// assert_eq!(parsed.value_at_quantile(0.5), Some(0.5));
/// assert_eq!(parsed.rows.last().unwrap().quantile, 1.0);
/// ```
pub fn parse_percentile_distribution(text: &str) -> Result<Hgrm, HgrmError> {
    let mut hgrm = Hgrm::default();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("Value") {
            continue;
        }
        if let Some(footer) = trimmed.strip_prefix("#[") {
            parse_footer(footer.trim_end_matches(']'), &mut hgrm);
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        let bad = || HgrmError::BadLine {
            line: i + 1,
            text: line.to_owned(),
        };
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(bad());
        }
        let value: f64 = fields[0].parse().map_err(|_| bad())?;
        let quantile: f64 = fields[1].parse().map_err(|_| bad())?;
        let total_count: u64 = fields[2].parse().map_err(|_| bad())?;
        hgrm.rows.push(HgrmRow {
            value,
            quantile,
            total_count,
        });
    }
    // An empty histogram prints no rows, only the footer.
    if hgrm.rows.is_empty() && hgrm.total_count != Some(0) {
        return Err(HgrmError::Empty);
    }
    Ok(hgrm)
}

fn parse_footer(footer: &str, hgrm: &mut Hgrm) {
    for part in footer.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "Mean" => hgrm.mean = value.parse().ok(),
            "StdDeviation" => hgrm.std_deviation = value.parse().ok(),
            "Max" => hgrm.max = value.parse().ok(),
            "Total count" => hgrm.total_count = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_rounding_is_half_up_on_shortest_digits() {
        assert_eq!(java_fixed(1.125, 2), "1.13"); // Rust's format! gives 1.12
        assert_eq!(java_fixed(1.005, 2), "1.01"); // exact value is below the tie
        assert_eq!(java_fixed(0.0, 3), "0.000");
        assert_eq!(java_fixed(9.9996, 3), "10.000");
        assert_eq!(java_fixed(0.0004, 3), "0.000");
        assert_eq!(java_fixed(0.0005, 3), "0.001");
        assert_eq!(java_fixed(123456789.0, 0), "123456789");
        assert_eq!(java_fixed(1e-20, 12), "0.000000000000");
        assert_eq!(java_fixed(0.999853515625, 12), "0.999853515625");
        assert_eq!(java_fixed(1.0 / 0.9, 2), "1.11");
        assert_eq!(java_fixed(-2.5, 1), "-2.5");
    }

    #[test]
    fn empty_histogram_prints_header_and_zero_footer() {
        let h = Histogram::<u64>::new(3).unwrap();
        let text = percentile_distribution_string(&h, NS_TO_MS, 5);
        assert_eq!(
            text,
            "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
             #[Mean    =        0.000, StdDeviation   =        0.000]\n\
             #[Max     =        0.000, Total count    =            0]\n\
             #[Buckets =            1, SubBuckets     =         2048]\n"
        );
    }
}
