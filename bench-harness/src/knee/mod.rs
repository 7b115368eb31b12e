//! `bench-harness knee`: the highest open-loop rate a batch configuration sustains.
//!
//! A rate *holds* when a run at it is not saturated (achieved at least 95 % of the asked
//! rate), loses, refuses and corrupts nothing, gets no error records, and keeps p99 latency
//! (from intended send time) at or below the target. The search ramps the rate up by
//! doubling from `min_rate` until a rate fails (or `max_rate` holds), probes a bounded
//! number of doublings above a failure that was not saturation (a server can fail in a
//! band of rates and hold above it), then bisects between the highest rate that held and
//! the lowest that failed above it until they are within `precision`. Every step starts a
//! fresh engine, so one overloaded run cannot leave queues behind for the next. The knee
//! is the highest rate that held; it is the number performance work is judged by, always
//! shown with the rates that failed below it, if any.
//!
//! The search itself is [`search`] (in `search.rs`, with [`search_config`] and its
//! limits), driven by a closure, so its logic is tested without engines; the tables, CSV and
//! plot are in `report.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::LoadConfig;
use crate::summary::Summary;
use crate::sweep::{self, SweepError, format_duration};

mod report;
mod search;
#[cfg(test)]
mod tests;

pub use report::{csv, markdown, outcome_markdown, plot, write};
pub use search::{Search, SearchParams, search, search_config};

/// What to search.
#[derive(Debug, Clone)]
pub struct KneeConfig {
    /// Engine batch sizes, one search each.
    pub batch_sizes: Vec<u32>,
    /// Engine batch timeouts, one search each (with every batch size).
    pub batch_timeouts: Vec<Duration>,
    /// The search's limits and the p99 a rate must hold.
    pub search: SearchParams,
    /// Engine shards (control server threads).
    pub engine_shards: usize,
    /// The server each run starts.
    pub server: sweep::ServerKind,
    /// The load (target and rate are set per step).
    pub load: LoadConfig,
    /// Where step run directories, knee.md/.csv/.json and the plot go.
    pub out: PathBuf,
}

/// Whether a run held, and if not why.
pub fn verdict(s: &Summary, p99_target: Duration) -> Result<(), String> {
    let errors: u64 = s.errors.values().sum();
    let target_ms = p99_target.as_secs_f64() * 1000.0;
    if s.saturated {
        return Err(format!(
            "saturated (achieved {:.0}/s of {:.0}/s)",
            s.achieved_rate, s.config.rate
        ));
    }
    if s.lost > 0 || s.refused > 0 || s.corrupted > 0 || errors > 0 {
        return Err(format!(
            "lost {}, refused {}, corrupted {}, errors {}",
            s.lost, s.refused, s.corrupted, errors
        ));
    }
    if s.duplicates > 0 {
        return Err(format!("{} replies duplicated", s.duplicates));
    }
    if s.latency_ms.p99 > target_ms {
        return Err(format!(
            "p99 {:.3} ms above {:.3} ms",
            s.latency_ms.p99, target_ms
        ));
    }
    Ok(())
}

/// One run of a search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Asked rate.
    pub rate: f64,
    /// Achieved rate.
    pub achieved: f64,
    /// p99 latency, ms.
    pub p99_ms: f64,
    /// Whether the rate held.
    pub held: bool,
    /// Why not, when it did not.
    pub why: String,
    /// CPU time (ms) the hypervisor took from the machine over this rate's runs (the
    /// discarded ones included).
    #[serde(default)]
    pub steal_ms: f64,
    /// Failing runs discarded and made again because of steal.
    #[serde(default)]
    pub disturbed: usize,
    /// The failing run achieved less than 95 % of the rate: the server is past its
    /// capacity, so the search does not probe higher rates.
    #[serde(default)]
    pub saturated: bool,
    /// How late the generators sent against their schedule, p99 in ms (the worst of the
    /// rate's runs): the harness's own share of the latency measured. 0 in results written
    /// before it was recorded.
    #[serde(default)]
    pub lag_p99_ms: f64,
    /// Messages sent late because their connection pushed back first (back-pressure),
    /// over the rate's runs; their latency is in `p99_ms`. 0 in results written before
    /// the harness deferred such messages instead of refusing them.
    #[serde(default)]
    pub deferred: u64,
}

/// The share of the p99 target the generators' own lag (p99) must reach at the first
/// failing rate for a knee to be called harness-limited ([`Outcome::harness_limited`]):
/// from half the latency budget on, the harness, not the server, decided the verdict.
pub const HARNESS_LIMITED_SHARE: f64 = 0.5;

/// What one configuration's search found, whatever the configuration is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// `bs=128 bt=0`, `udp io=batched`.
    pub config: String,
    /// The highest rate that held; `None` when none did.
    pub knee: Option<f64>,
    /// p99 at the knee, ms.
    pub p99_at_knee_ms: Option<f64>,
    /// The lowest rate above the knee that failed, if any was tried.
    pub first_failure: Option<f64>,
    /// Why it failed there.
    pub failure: Option<String>,
    /// Rates below the knee that failed, lowest first (the search probed past them and a
    /// higher rate held): the knee does not hold at every rate below it.
    #[serde(default)]
    pub failed_below: Vec<f64>,
    /// No rate above the knee failed (`max_rate` held, or the step budget ran out while
    /// ramping): the knee is at least this.
    pub capped: bool,
    /// Doublings the search probed past a failure that was not saturation
    /// ([`SearchParams::probe_above`]); 0 in results written before probing existed.
    #[serde(default)]
    pub probe_above: usize,
    /// At the first failing rate the generators themselves sent late by at least
    /// [`HARNESS_LIMITED_SHARE`] of the p99 target (lag p99): the harness (its core, or a
    /// stall of the machine it ran on) used that much of the latency budget before any
    /// message reached the server, so the knee is where this harness stops measuring on
    /// this machine, a lower bound for the server's. False in older results.
    #[serde(default)]
    pub harness_limited: bool,
    /// Every run, in the order made.
    pub steps: Vec<Step>,
}

impl Outcome {
    /// The step of the first failing rate above the knee, if one was tried.
    pub fn failing_step(&self) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| !s.held && Some(s.rate) == self.first_failure)
    }
}

/// The outcome of one batch configuration's search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Knee {
    /// Batch size.
    pub batch_size: u32,
    /// Batch timeout, ms.
    pub batch_timeout_ms: f64,
    /// The knee, the failure and every step.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Where run `i` of a rate goes under `base`, made after `retry` attempts at it were
/// discarded for steal ([`search_config`]): `base` for the first run, `repeatI/` for a later
/// one, and `retryN/` below that for a run made again, so a discarded run's files stay
/// where it wrote them instead of being overwritten.
pub fn run_dir(base: &Path, i: usize, retry: usize) -> PathBuf {
    let mut d = base.to_path_buf();
    if i > 0 {
        d.push(format!("repeat{i}"));
    }
    if retry > 0 {
        d.push(format!("retry{retry}"));
    }
    d
}

/// Runs the search for every configuration; `on_step` is told about each run.
pub fn knee(
    cfg: &KneeConfig,
    mut on_step: impl FnMut(&str, &Step),
) -> Result<Vec<Knee>, SweepError> {
    if cfg.batch_sizes.is_empty() || cfg.batch_timeouts.is_empty() {
        return Err(SweepError::Config(
            "give at least one batch size and batch timeout".into(),
        ));
    }
    let params = cfg.search;
    params.check()?;
    let mut out = Vec::new();
    for &bs in &cfg.batch_sizes {
        for &bt in &cfg.batch_timeouts {
            let config = format!("bs={bs} bt={}", format_duration(bt));
            let dir = cfg.out.join(format!("bs{bs}-bt{}", format_duration(bt)));
            let outcome = search_config(
                &config,
                &params,
                |rate, i, retry| {
                    sweep::run_config(
                        &cfg.load,
                        cfg.server,
                        cfg.engine_shards,
                        bs,
                        bt,
                        rate,
                        &run_dir(&dir, i, retry),
                    )
                    .map(|run| run.summary)
                },
                &mut on_step,
            )?;
            out.push(Knee {
                batch_size: bs,
                batch_timeout_ms: bt.as_secs_f64() * 1000.0,
                outcome,
            });
        }
    }
    Ok(out)
}
