//! HdrHistogram interval logs (`.hlog`): one compressed histogram per reporting interval, the
//! format Java's `HistogramLogWriter`/`HistogramLogProcessor` and jHiccup use.
//!
//! Why: a run keeps its latency over time (warm-up effects, stalls) in one small text file that
//! standard HdrHistogram tools read, and [`read_hlog`] + [`merge`] give back the whole-run
//! histogram without losing precision.
//!
//! Histograms are V2 + DEFLATE encoded (`HISTFAA...` lines), interval timestamps are seconds
//! relative to `#[BaseTime: ...]`, which the writer sets equal to `#[StartTime: ...]`.
//! The `Interval_Max` column is left in recorded units (nanoseconds for the harness): readers
//! ignore it, and the crate's writer would repeat its `MaxValueDivisor` comment per interval.

use std::io::{self, Read, Write};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, IntervalLogWriterError, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializeError, V2DeflateSerializer};

/// The legend line Java's `HistogramLogWriter.outputLegend()` writes after the header.
pub const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

/// One interval read back: start offset from the log's StartTime, length, histogram.
pub type Interval = (Duration, Duration, Histogram<u64>);

/// Errors from writing or reading interval logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HlogError {
    /// The underlying reader or writer failed.
    #[error("interval log i/o")]
    Io(#[from] io::Error),
    /// A histogram could not be encoded.
    #[error("encoding interval histogram: {0}")]
    Serialize(String),
    /// The log text does not parse as an interval log.
    #[error("interval log does not parse at byte {offset}")]
    Parse {
        /// Byte offset of the line that failed.
        offset: usize,
    },
    /// An interval's base64 payload is malformed.
    #[error("interval {index}: bad base64")]
    Base64 {
        /// 0-based interval index.
        index: usize,
        /// Decoder error.
        source: base64::DecodeError,
    },
    /// An interval's histogram payload is malformed.
    #[error("interval {index}: bad histogram encoding: {message}")]
    Deserialize {
        /// 0-based interval index.
        index: usize,
        /// Deserializer error.
        message: String,
    },
    /// Merging intervals failed (incompatible histograms).
    #[error("merging intervals: {0}")]
    Merge(String),
}

impl From<IntervalLogWriterError<V2DeflateSerializeError>> for HlogError {
    fn from(e: IntervalLogWriterError<V2DeflateSerializeError>) -> Self {
        match e {
            IntervalLogWriterError::IoError(e) => HlogError::Io(e),
            IntervalLogWriterError::SerializeError(e) => HlogError::Serialize(format!("{e:?}")),
        }
    }
}

/// Writes an interval log: the header on construction, then one line per interval.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use hdrhistogram::Histogram;
/// use bench_harness::hlog::{read_hlog, HlogWriter};
///
/// let mut w = HlogWriter::new(Vec::new(), SystemTime::now()).unwrap();
/// let mut h = Histogram::<u64>::new(3).unwrap();
/// h.record(250_000).unwrap();
/// w.write_interval(Duration::ZERO, Duration::from_secs(1), &h).unwrap();
/// let bytes = w.into_inner();
/// let intervals = read_hlog(&bytes[..]).unwrap();
/// assert_eq!(intervals.len(), 1);
/// assert_eq!(intervals[0].1, Duration::from_secs(1));
/// assert_eq!(intervals[0].2.len(), 1);
/// ```
pub struct HlogWriter<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
}

impl<W: Write> HlogWriter<W> {
    /// Writes the standard header (tool comment, format version, StartTime and BaseTime both set
    /// to `start_time`, legend) so that interval offsets are seconds since `start_time`.
    pub fn new(mut out: W, start_time: SystemTime) -> Result<Self, HlogError> {
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "[Logged with bench-harness {}]",
                env!("CARGO_PKG_VERSION")
            ))
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(start_time)
            .with_base_time(start_time)
            .begin_log_with(&mut out, &mut serializer)?;
        writeln!(out, "{LEGEND}")?;
        Ok(HlogWriter { out, serializer })
    }

    /// Appends one interval: `start_offset` is measured from the `start_time` given to
    /// [`HlogWriter::new`]; timestamps are written with millisecond precision, as in Java.
    pub fn write_interval(
        &mut self,
        start_offset: Duration,
        duration: Duration,
        h: &Histogram<u64>,
    ) -> Result<(), HlogError> {
        // A builder with no headers writes nothing; it only lends us its line writer.
        let mut w =
            IntervalLogWriterBuilder::new().begin_log_with(&mut self.out, &mut self.serializer)?;
        w.write_histogram(h, start_offset, duration, None)?;
        Ok(())
    }

    /// Flushes the underlying writer (call before reading the file elsewhere).
    pub fn flush(&mut self) -> Result<(), HlogError> {
        self.out.flush()?;
        Ok(())
    }

    /// Returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads every interval of an interval log.
///
/// Start offsets are relative to the log's `StartTime` when it has one (as written by
/// [`HlogWriter`]), otherwise to its `BaseTime`, otherwise as written. Logs without BaseTime
/// whose timestamps are absolute (Java's rule: not more than a year before StartTime) are
/// handled too.
pub fn read_hlog(mut input: impl Read) -> Result<Vec<Interval>, HlogError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let mut start_time: Option<f64> = None;
    let mut base_time: Option<f64> = None;
    let mut deserializer = Deserializer::new();
    let mut intervals = Vec::new();
    for entry in IntervalLogIterator::new(&bytes) {
        let entry = entry.map_err(|e| match e {
            hdrhistogram::serialization::interval_log::LogIteratorError::ParseError { offset } => {
                HlogError::Parse { offset }
            }
        })?;
        match entry {
            LogEntry::StartTime(t) => start_time = Some(t.as_secs_f64()),
            LogEntry::BaseTime(t) => base_time = Some(t.as_secs_f64()),
            LogEntry::Interval(ilh) => {
                let index = intervals.len();
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(ilh.encoded_histogram().trim())
                    .map_err(|source| HlogError::Base64 { index, source })?;
                let h: Histogram<u64> = deserializer.deserialize(&mut &raw[..]).map_err(|e| {
                    HlogError::Deserialize {
                        index,
                        message: format!("{e:?}"),
                    }
                })?;
                let ts = ilh.start_timestamp().as_secs_f64();
                let base = match (base_time, start_time) {
                    (Some(b), _) => b,
                    // Java HistogramLogReader: timestamps more than a year before StartTime are
                    // relative to it; otherwise they are absolute.
                    (None, Some(s)) if ts < s - 365.0 * 24.0 * 3600.0 => s,
                    _ => 0.0,
                };
                let reference = start_time.or(base_time).unwrap_or(0.0);
                let offset = (base + ts - reference).max(0.0);
                let start = if base == reference {
                    ilh.start_timestamp() // exact: no float round trip
                } else {
                    Duration::from_secs_f64(offset)
                };
                intervals.push((start, ilh.duration(), h));
            }
        }
    }
    Ok(intervals)
}

/// Merges interval histograms into one whole-run histogram (empty if there are none).
///
/// ```
/// use hdrhistogram::Histogram;
/// use std::time::Duration;
/// let mut a = Histogram::<u64>::new(3).unwrap();
/// a.record(10).unwrap();
/// let mut b = Histogram::<u64>::new(3).unwrap();
/// b.record(1_000_000).unwrap();
/// let merged = bench_harness::hlog::merge(&[
///     (Duration::ZERO, Duration::from_secs(1), a),
///     (Duration::from_secs(1), Duration::from_secs(1), b),
/// ]).unwrap();
/// assert_eq!((merged.len(), merged.min(), merged.max()), (2, 10, 1_000_447));
/// ```
pub fn merge(intervals: &[Interval]) -> Result<Histogram<u64>, HlogError> {
    let sigfig = intervals.first().map_or(3, |(_, _, h)| h.sigfig());
    let mut merged =
        Histogram::<u64>::new(sigfig).map_err(|e| HlogError::Merge(format!("{e:?}")))?;
    for (_, _, h) in intervals {
        merged
            .add(h)
            .map_err(|e| HlogError::Merge(format!("{e:?}")))?;
    }
    Ok(merged)
}
