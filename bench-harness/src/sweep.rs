//! Batch-configuration sweeps: one in-process engine per configuration, the same open-loop
//! load against each, one run directory per configuration, then the comparison.
//!
//! The engine runs on the first cores (pinned from core 0) and the harness pins its threads
//! from the last core down, so on a machine with enough cores they do not share one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engine::{AppKind, Engine, EngineConfig};
use shards::batch::BatchPolicy;

use crate::load::{self, LoadConfig, Progress};
use crate::output::{self, RunMeta};
use crate::summary::Summary;

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Engine batch sizes to try.
    pub batch_sizes: Vec<u32>,
    /// Engine batch timeouts to try (zero = end of processing turn).
    pub batch_timeouts: Vec<Duration>,
    /// Offered rates to try, messages per second.
    pub rates: Vec<f64>,
    /// Engine shards per configuration.
    pub engine_shards: usize,
    /// The load (its target and rate are replaced per configuration).
    pub load: LoadConfig,
    /// Where run directories and the comparison go.
    pub out: PathBuf,
}

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// Bad configuration.
    #[error("invalid sweep: {0}")]
    Config(String),
    /// An engine did not start.
    #[error("starting an engine for {label}: {source}")]
    Engine {
        /// The configuration.
        label: String,
        /// Why.
        source: engine::EngineError,
    },
    /// A control server did not start.
    #[error("starting a control server for {label}: {source}")]
    Control {
        /// The configuration.
        label: String,
        /// Why.
        source: crate::control::ControlError,
    },
    /// The load failed.
    #[error("load for {label}: {source}")]
    Load {
        /// The configuration.
        label: String,
        /// Why.
        source: load::LoadError,
    },
    /// Writing results failed.
    #[error("writing results for {label}: {source}")]
    Output {
        /// The configuration.
        label: String,
        /// Why.
        source: output::OutputError,
    },
}

/// Which server a sweep or knee search starts for each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ServerKind {
    /// The engine (glommio shards + quiche), in process, shards pinned from core 0.
    #[default]
    Engine,
    /// The tokio + quinn control server (`control-server`), in process, pinned from core 0.
    Control,
}

/// One finished configuration.
#[derive(Debug)]
pub struct SweepRun {
    /// Human-readable configuration label.
    pub label: String,
    /// Its run directory.
    pub dir: PathBuf,
    /// What it measured.
    pub summary: Summary,
}

/// A directory name for a configuration: `bs128-bt50ms-r1000`.
pub fn run_dir_name(batch_size: u32, timeout: Duration, rate: f64) -> String {
    format!(
        "bs{batch_size}-bt{}-r{}",
        format_duration(timeout),
        rate.round() as u64
    )
}

/// `0`, `500us`, `2ms`, `1.5s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".into()
    } else if d < Duration::from_millis(1) {
        format!("{}us", d.as_micros())
    } else if d < Duration::from_secs(1) && d.as_micros().is_multiple_of(1000) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(1) {
        format!("{}us", d.as_micros())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Runs every configuration in turn; `on_run` is told about each as it finishes.
pub fn sweep(
    cfg: &SweepConfig,
    mut on_run: impl FnMut(&SweepRun),
) -> Result<Vec<SweepRun>, SweepError> {
    if cfg.batch_sizes.is_empty() || cfg.batch_timeouts.is_empty() || cfg.rates.is_empty() {
        return Err(SweepError::Config(
            "give at least one batch size, batch timeout and rate".into(),
        ));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| SweepError::Output {
        label: cfg.out.display().to_string(),
        source: output::OutputError::Io(cfg.out.clone(), e),
    })?;
    let mut runs = Vec::new();
    for &bs in &cfg.batch_sizes {
        for &bt in &cfg.batch_timeouts {
            for &rate in &cfg.rates {
                let run = one(cfg, bs, bt, rate)?;
                on_run(&run);
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

fn one(cfg: &SweepConfig, bs: u32, bt: Duration, rate: f64) -> Result<SweepRun, SweepError> {
    run_config(
        &cfg.load,
        ServerKind::Engine,
        cfg.engine_shards,
        bs,
        bt,
        rate,
        &cfg.out,
    )
}

/// Starts a fresh in-process server (the engine's echo with `shards` shards, or the control
/// server with `shards` threads, pinned from core 0) with this batch configuration, runs
/// `load` at `rate` against it, stops it, and writes the run directory under `out`.
pub fn run_config(
    load: &LoadConfig,
    server: ServerKind,
    shards: usize,
    bs: u32,
    bt: Duration,
    rate: f64,
    out: &std::path::Path,
) -> Result<SweepRun, SweepError> {
    let label = format!("bs={bs} bt={} @{}/s", format_duration(bt), rate.round());
    let batch = BatchPolicy {
        max_messages: bs as usize,
        timeout: bt,
        ..BatchPolicy::default()
    };
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let run = |target| {
        let load_cfg = LoadConfig {
            target,
            rate,
            ..load.clone()
        };
        let result = load::run(&load_cfg, Arc::new(Progress::default()));
        (load_cfg, result)
    };
    let (load_cfg, result) = match server {
        ServerKind::Engine => {
            let engine = Engine::start(EngineConfig {
                listen,
                shards: Some(shards),
                pin: true,
                batch,
                app: AppKind::Echo,
                ..EngineConfig::default()
            })
            .map_err(|source| SweepError::Engine {
                label: label.clone(),
                source,
            })?;
            let r = run(engine.local_addr());
            let _ = engine.shutdown(Duration::from_secs(2));
            r
        }
        ServerKind::Control => {
            let identity = shards::identity::Identity::generate().map_err(|e| {
                SweepError::Config(format!("a control server identity for {label}: {e}"))
            })?;
            let control = crate::control::ControlServer::start(
                crate::control::ControlConfig {
                    listen,
                    threads: shards,
                    pin: true,
                    batch,
                    drain_timeout: Duration::from_secs(2),
                    ..crate::control::ControlConfig::default()
                },
                identity,
            )
            .map_err(|source| SweepError::Control {
                label: label.clone(),
                source,
            })?;
            let r = run(control.local_addr());
            let _ = control.shutdown();
            r
        }
    };
    let result = result.map_err(|source| SweepError::Load {
        label: label.clone(),
        source,
    })?;
    let dir = out.join(run_dir_name(bs, bt, rate));
    let meta = RunMeta {
        load: load_cfg,
        batch_size: Some(bs),
        batch_timeout: Some(bt),
    };
    let summary = output::write_run(&dir, &meta, &result).map_err(|source| SweepError::Output {
        label: label.clone(),
        source,
    })?;
    Ok(SweepRun {
        label,
        dir,
        summary,
    })
}

/// The run directories of a finished sweep, for the comparison.
pub fn dirs(runs: &[SweepRun]) -> Vec<PathBuf> {
    runs.iter().map(|r| r.dir.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(format_duration(Duration::ZERO), "0");
        assert_eq!(format_duration(Duration::from_micros(500)), "500us");
        assert_eq!(format_duration(Duration::from_millis(2)), "2ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(
            run_dir_name(128, Duration::from_millis(50), 1000.0),
            "bs128-bt50ms-r1000"
        );
    }
}
