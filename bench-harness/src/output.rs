//! A run directory: `latency.hgrm` (percentile distribution), `latency.hlog` (one interval
//! per second, compressed V2), `summary.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hgrm;
use crate::hlog::{HlogError, HlogWriter};
use crate::load::{LoadConfig, LoadResult};
use crate::summary::{Counts, RunConfig, Summary, SummaryError, Timing};

/// Nanoseconds per millisecond: histograms hold nanoseconds, files show milliseconds.
const NS_PER_MS: f64 = 1_000_000.0;

/// Why a run directory could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// File system trouble.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The interval log could not be written.
    #[error("latency.hlog: {0}")]
    Hlog(#[from] HlogError),
    /// The summary could not be written.
    #[error("summary.json: {0}")]
    Summary(#[from] SummaryError),
}

/// What was run, for the summary.
#[derive(Debug, Clone)]
pub struct RunMeta {
    /// The load.
    pub load: LoadConfig,
    /// The engine's batch size, when the harness started the engine itself.
    pub batch_size: Option<u32>,
    /// The engine's batch timeout, likewise.
    pub batch_timeout: Option<Duration>,
}

/// The summary of `result` under `meta`.
pub fn summarize(meta: &RunMeta, result: &LoadResult) -> Summary {
    let l = &meta.load;
    let config = RunConfig {
        target: l.target.to_string(),
        mode: l.mode,
        connections: l.connections as u32,
        rate: l.rate,
        duration_s: l.duration.as_secs_f64(),
        warmup_s: l.warmup.as_secs_f64(),
        message_size: l.message_size,
        batch_size: meta.batch_size,
        batch_timeout_ms: meta.batch_timeout.map(|d| d.as_secs_f64() * 1000.0),
        cores: l.threads as u32,
    };
    let counts = Counts {
        offered: result.offered,
        refused: result.refused,
        deferred: result.deferred,
        connection_errors: result.connection_errors,
        sent: result.sent,
        received: result.received,
        lost: result.lost(),
        corrupted: result.corrupted,
        duplicates: result.duplicates,
        errors: result.errors.clone(),
    };
    let timing = Timing {
        measured: result.elapsed,
        receive_window: result.receive_window,
        wall: result.wall_time,
        steal: result.steal,
    };
    Summary::from_histograms(config, &result.latency, &result.lag, counts, timing)
        .with_quic(result.quic)
}

/// Writes the run directory `dir` and returns the summary written into it.
pub fn write_run(dir: &Path, meta: &RunMeta, result: &LoadResult) -> Result<Summary, OutputError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| OutputError::Io(p, e)
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let hgrm_path = dir.join("latency.hgrm");
    let text = hgrm::percentile_distribution_string(&result.latency, NS_PER_MS, 5);
    std::fs::write(&hgrm_path, text).map_err(io(&hgrm_path))?;
    let hlog_path = dir.join("latency.hlog");
    let file = std::fs::File::create(&hlog_path).map_err(io(&hlog_path))?;
    let mut w = HlogWriter::new(std::io::BufWriter::new(file), result.started_at)?;
    for (i, h) in result.intervals.iter().enumerate() {
        let start = result
            .interval
            .saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
        w.write_interval(start, result.interval, h)?;
    }
    w.flush()?;
    let summary = summarize(meta, result);
    summary.write_json(dir)?;
    Ok(summary)
}
