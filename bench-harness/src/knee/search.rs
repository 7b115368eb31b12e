//! The knee search: ramp, probe past failures that were not saturation, bisect
//! ([`search`]), and one configuration's runs turned into steps and an [`Outcome`]
//! ([`search_config`]).

use std::time::Duration;

use super::{HARNESS_LIMITED_SHARE, Outcome, Step, verdict};
use crate::summary::Summary;
use crate::sweep::SweepError;

/// The limits of a search and the p99 a rate must hold (shared by `knee` and `ceiling`).
#[derive(Debug, Clone, Copy)]
pub struct SearchParams {
    /// p99 latency a rate must hold.
    pub p99_target: Duration,
    /// First rate tried (msg/s).
    pub min_rate: f64,
    /// Highest rate tried (msg/s).
    pub max_rate: f64,
    /// Stop bisecting when the failing rate is within this fraction above the holding one.
    pub precision: f64,
    /// Most rates tried per configuration.
    pub max_steps: usize,
    /// Runs per rate; a rate holds only if every run holds.
    pub repeat: usize,
    /// Per rate, how many failing runs are discarded and made again because the
    /// hypervisor took more than [`crate::steal::NOTE_FRACTION`] of one CPU during them
    /// (the stall was the machine's, not the server's). Each is counted in
    /// [`Step::disturbed`]; 0 keeps every run.
    pub steal_retries: usize,
    /// Doublings tried above a rate that failed without being saturated before the
    /// search settles below it (see [`search`]); 0 stops at the first failure.
    pub probe_above: usize,
}

impl SearchParams {
    /// Checks the rates and the precision before any run starts.
    pub fn check(&self) -> Result<(), SweepError> {
        if !(self.min_rate > 0.0 && self.max_rate >= self.min_rate) {
            return Err(SweepError::Config(format!(
                "need 0 < --min-rate ({}) <= --max-rate ({})",
                self.min_rate, self.max_rate
            )));
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Err(SweepError::Config(format!(
                "--precision ({}) must be between 0 and 1",
                self.precision
            )));
        }
        Ok(())
    }
}

/// What a search found.
#[derive(Debug, Clone)]
pub struct Search {
    /// Every run, in order.
    pub steps: Vec<Step>,
    /// The highest rate that held (`None`: none did).
    pub knee: Option<f64>,
    /// The lowest rate above the knee that failed, if one was tried.
    pub first_failure: Option<f64>,
    /// Rates below the knee that failed (probed past, see [`search`]), lowest first.
    pub failed_below: Vec<f64>,
    /// No rate above the knee failed (the maximum rate or the step budget was reached
    /// first): the knee is a lower bound.
    pub capped: bool,
}

/// The search, over a `try_rate` that runs one rate and says whether it held (with its
/// achieved rate and p99).
///
/// It ramps by doubling from `min_rate`. A rate that fails without being saturated does not
/// end the ramp at once: up to `probe_above` further doublings are tried, because a server
/// can fail in a band of rates (a stall there leaves a backlog the little headroom drains
/// slowly) and hold above it, where its batches fill. When a probe holds, the ramp goes on
/// from it and the failures below are kept in [`Search::failed_below`]; otherwise the search
/// bisects between the highest rate that held and the lowest that failed above it.
pub fn search<E>(
    min_rate: f64,
    max_rate: f64,
    precision: f64,
    max_steps: usize,
    probe_above: usize,
    mut try_rate: impl FnMut(f64) -> Result<Step, E>,
) -> Result<Search, E> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lo: Option<f64> = None;
    // Failures since the last rate that held, lowest first.
    let mut pending: Vec<f64> = Vec::new();
    let mut failed_below = Vec::new();
    let mut rate = min_rate;
    while steps.len() < max_steps.max(1) {
        let s = try_rate(rate)?;
        let (held, saturated) = (s.held, s.saturated);
        steps.push(s);
        if held {
            failed_below.append(&mut pending);
            lo = Some(rate);
        } else {
            pending.push(rate);
            if saturated || pending.len() > probe_above {
                break;
            }
        }
        let next = (rate * 2.0).min(max_rate);
        if next <= rate {
            break;
        }
        rate = next;
    }
    let capped = pending.is_empty();
    let mut hi = pending.first().copied();
    if let Some(mut l) = lo {
        while let Some(h) = hi {
            if steps.len() >= max_steps || h - l <= precision * l {
                break;
            }
            let mid = ((l + h) / 2.0).round();
            if mid <= l || mid >= h {
                break;
            }
            let s = try_rate(mid)?;
            let held = s.held;
            steps.push(s);
            if held {
                l = mid;
            } else {
                hi = Some(mid);
            }
        }
        lo = Some(l);
    }
    Ok(Search {
        steps,
        knee: lo,
        first_failure: hi,
        failed_below,
        capped,
    })
}

/// Searches one configuration: `run(rate, i, retry)` makes run `i` (from 0) of a rate, after
/// `retry` earlier attempts at run `i` were discarded for steal, and returns its summary. Every run
/// made, discarded or kept, has its own `(i, retry)`, so each can keep its own directory
/// ([`super::run_dir`]). The worst of [`SearchParams::repeat`] runs decides (a failing run
/// ends the rate's runs); `on_step` is told about each rate as it is decided.
pub fn search_config<E>(
    config: &str,
    params: &SearchParams,
    mut run: impl FnMut(f64, usize, usize) -> Result<Summary, E>,
    mut on_step: impl FnMut(&str, &Step),
) -> Result<Outcome, E> {
    let Search {
        steps,
        knee,
        first_failure,
        failed_below,
        capped,
    } = search(
        params.min_rate,
        params.max_rate,
        params.precision,
        params.max_steps,
        params.probe_above,
        |rate| {
            let mut step = Step {
                rate,
                achieved: f64::INFINITY,
                p99_ms: 0.0,
                held: true,
                why: String::new(),
                steal_ms: 0.0,
                disturbed: 0,
                saturated: false,
                lag_p99_ms: 0.0,
                deferred: 0,
            };
            // Run `i`, and how many times it was discarded for steal and made again.
            let (mut i, mut retry) = (0, 0);
            while i < params.repeat.max(1) {
                let summary = run(rate, i, retry)?;
                let v = verdict(&summary, params.p99_target);
                step.steal_ms += summary.steal_ms.unwrap_or(0.0);
                if v.is_err()
                    && step.disturbed < params.steal_retries
                    && summary.disturbed_by_steal()
                {
                    step.disturbed += 1;
                    retry += 1;
                    continue;
                }
                (i, retry) = (i + 1, 0);
                step.achieved = step.achieved.min(summary.achieved_rate);
                step.p99_ms = step.p99_ms.max(summary.latency_ms.p99);
                step.lag_p99_ms = step.lag_p99_ms.max(summary.harness_lag_ms.p99);
                step.deferred += summary.deferred;
                if let Err(why) = v {
                    step.held = false;
                    step.why = why;
                    step.saturated = summary.saturated;
                    break;
                }
            }
            on_step(config, &step);
            Ok(step)
        },
    )?;
    let p99_at_knee_ms = knee.and_then(|k| {
        steps
            .iter()
            .find(|s| s.held && s.rate == k)
            .map(|s| s.p99_ms)
    });
    let mut outcome = Outcome {
        config: config.to_string(),
        knee,
        p99_at_knee_ms,
        first_failure,
        failure: None,
        failed_below,
        capped,
        probe_above: params.probe_above,
        harness_limited: false,
        steps,
    };
    let target_ms = params.p99_target.as_secs_f64() * 1000.0;
    if let Some((why, lag)) = outcome
        .failing_step()
        .map(|s| (s.why.clone(), s.lag_p99_ms))
    {
        outcome.failure = Some(why);
        outcome.harness_limited = lag >= HARNESS_LIMITED_SHARE * target_ms;
    }
    Ok(outcome)
}
