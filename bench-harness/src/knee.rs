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
//! The search itself is [`search`], driven by a closure, so its logic is tested without
//! engines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::LoadConfig;
use crate::summary::Summary;
use crate::sweep::{self, SweepError, format_duration};

/// What to search.
#[derive(Debug, Clone)]
pub struct KneeConfig {
    /// Engine batch sizes, one search each.
    pub batch_sizes: Vec<u32>,
    /// Engine batch timeouts, one search each (with every batch size).
    pub batch_timeouts: Vec<Duration>,
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
    /// Runs per rate; a rate holds only if every run holds (the machine's noise otherwise
    /// decides single runs near the knee).
    pub repeat: usize,
    /// Times a failing run made while the hypervisor took CPU time is run again (see
    /// [`SearchParams::steal_retries`]).
    pub steal_retries: usize,
    /// Doublings probed above a failure that was not saturation
    /// ([`SearchParams::probe_above`]).
    pub probe_above: usize,
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
}

/// The share of the p99 target the generators' own lag (p99) must reach at the first
/// failing rate for a knee to be called harness-limited ([`Outcome::harness_limited`]):
/// from half the latency budget on, the harness, not the server, decided the verdict.
pub const HARNESS_LIMITED_SHARE: f64 = 0.5;

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
    /// The knee as a table shows it: `>= N` when capped or harness-limited (then with the
    /// reason), `none` when not even the minimum held.
    pub fn knee_cell(&self) -> String {
        match (self.knee, self.capped, self.harness_limited) {
            (Some(r), true, _) => format!(">= {r:.0}"),
            (Some(r), false, true) => format!(">= {r:.0} (harness-limited)"),
            (Some(r), false, false) => format!("{r:.0}"),
            (None, _, true) => "below the minimum (harness-limited)".to_string(),
            (None, _, false) => "below the minimum".to_string(),
        }
    }

    /// The generators' lag p99 (ms) at the first failing rate, as a table cell (empty when
    /// no rate above the knee failed).
    pub fn lag_at_failure_cell(&self) -> String {
        self.steps
            .iter()
            .find(|s| !s.held && Some(s.rate) == self.first_failure)
            .map(|s| format!("{:.3}", s.lag_p99_ms))
            .unwrap_or_default()
    }

    /// p99 at the knee (ms), the first failing rate above it and why, as table cells.
    pub fn result_cells(&self) -> [String; 3] {
        [
            self.p99_at_knee_ms
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
            self.first_failure
                .map(|v| format!("{v:.0}"))
                .unwrap_or_default(),
            self.failure.clone().unwrap_or_default().replace('|', "/"),
        ]
    }

    /// The rates that failed below the knee, `20000 40000` (empty when none did).
    pub fn failed_below_cell(&self) -> String {
        self.failed_below
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
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

/// Searches one configuration: `run(rate, i)` makes run `i` (from 0) of a rate and returns
/// its summary. The worst of [`SearchParams::repeat`] runs decides (a failing run ends the
/// rate's runs); `on_step` is told about each rate as it is decided.
pub fn search_config<E>(
    config: &str,
    params: &SearchParams,
    mut run: impl FnMut(f64, usize) -> Result<Summary, E>,
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
            };
            let mut i = 0;
            while i < params.repeat.max(1) {
                let summary = run(rate, i)?;
                let v = verdict(&summary, params.p99_target);
                step.steal_ms += summary.steal_ms.unwrap_or(0.0);
                if v.is_err()
                    && step.disturbed < params.steal_retries
                    && summary.disturbed_by_steal()
                {
                    step.disturbed += 1;
                    continue;
                }
                i += 1;
                step.achieved = step.achieved.min(summary.achieved_rate);
                step.p99_ms = step.p99_ms.max(summary.latency_ms.p99);
                step.lag_p99_ms = step.lag_p99_ms.max(summary.harness_lag_ms.p99);
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
    let failing = first_failure.and_then(|f| steps.iter().find(|s| !s.held && s.rate == f));
    let failure = failing.map(|s| s.why.clone());
    let target_ms = params.p99_target.as_secs_f64() * 1000.0;
    let harness_limited =
        failing.is_some_and(|s| s.lag_p99_ms >= HARNESS_LIMITED_SHARE * target_ms);
    Ok(Outcome {
        config: config.to_string(),
        knee,
        p99_at_knee_ms,
        first_failure,
        failure,
        failed_below,
        capped,
        probe_above: params.probe_above,
        harness_limited,
        steps,
    })
}

impl KneeConfig {
    /// The search limits of this configuration.
    pub fn params(&self) -> SearchParams {
        SearchParams {
            p99_target: self.p99_target,
            min_rate: self.min_rate,
            max_rate: self.max_rate,
            precision: self.precision,
            max_steps: self.max_steps,
            repeat: self.repeat,
            steal_retries: self.steal_retries,
            probe_above: self.probe_above,
        }
    }
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
    let params = cfg.params();
    params.check()?;
    let mut out = Vec::new();
    for &bs in &cfg.batch_sizes {
        for &bt in &cfg.batch_timeouts {
            let config = format!("bs={bs} bt={}", format_duration(bt));
            let dir = cfg.out.join(format!("bs{bs}-bt{}", format_duration(bt)));
            let outcome = search_config(
                &config,
                &params,
                |rate, i| {
                    let run_dir = if i == 0 {
                        dir.clone()
                    } else {
                        dir.join(format!("repeat{i}"))
                    };
                    sweep::run_config(
                        &cfg.load,
                        cfg.server,
                        cfg.engine_shards,
                        bs,
                        bt,
                        rate,
                        &run_dir,
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

/// The knee table as Markdown.
pub fn markdown(knees: &[Knee], p99_target: Duration) -> String {
    outcome_markdown(knees.iter().map(|k| &k.outcome), p99_target)
}

/// A knee table of any configurations (config, knee, p99 at the knee, first failing rate
/// above it, why it failed, rates that failed below it, rates tried) as Markdown, with the
/// rule a rate held to below it.
pub fn outcome_markdown<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    p99_target: Duration,
) -> String {
    let mut s = String::from(
        "| config | knee (msg/s) | p99 at knee (ms) | first failing rate above | why it failed | harness lag p99 there (ms) | failed below the knee | rates tried |\n\
         | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |\n",
    );
    let mut limited = Vec::new();
    for k in outcomes {
        let [p99, first_failure, why] = k.result_cells();
        s.push_str(&format!(
            "| {} | {} | {p99} | {first_failure} | {why} | {} | {} | {} |\n",
            k.config,
            k.knee_cell(),
            k.lag_at_failure_cell(),
            k.failed_below_cell(),
            k.steps.len()
        ));
        if k.harness_limited {
            limited.push(k.config.as_str());
        }
    }
    let target_ms = p99_target.as_secs_f64() * 1000.0;
    s.push_str(&format!(
        "\nA rate holds when p99 <= {target_ms} ms with nothing lost, refused or corrupted and at least 95 % of it achieved. Harness lag is how late the generators sent against their schedule; it is part of every latency measured.\n",
    ));
    if !limited.is_empty() {
        s.push_str(&format!(
            "\nHarness-limited ({}): at the first failing rate the generators' own lag p99 was at least {:.0} % of the target, so the harness (its core busy, or the machine stalling it) spent that much of the budget before the server saw the messages. These knees are where this harness stops measuring on this machine: lower bounds for the server's.\n",
            limited.join(", "),
            HARNESS_LIMITED_SHARE * 100.0
        ));
    }
    s
}

/// The knee table as CSV:
/// config,batch_size,batch_timeout_ms,knee,p99_at_knee_ms,capped,failed_below (rates
/// separated by spaces),harness_limited.
pub fn csv(knees: &[Knee]) -> String {
    let mut s = String::from(
        "config,batch_size,batch_timeout_ms,knee,p99_at_knee_ms,capped,failed_below,harness_limited\n",
    );
    for Knee {
        batch_size,
        batch_timeout_ms,
        outcome: k,
    } in knees
    {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            k.config,
            batch_size,
            batch_timeout_ms,
            k.knee.map(|v| format!("{v:.0}")).unwrap_or_default(),
            k.p99_at_knee_ms
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
            k.capped,
            k.failed_below_cell(),
            k.harness_limited
        ));
    }
    s
}

/// Writes knee.md, knee.csv, knee.json and the p99-against-achieved-rate plot (knee.svg/png) into
/// `dir`; returns the files written.
pub fn write(
    dir: &Path,
    knees: &[Knee],
    p99_target: Duration,
) -> Result<Vec<PathBuf>, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let md = dir.join("knee.md");
    std::fs::write(&md, markdown(knees, p99_target))?;
    files.push(md);
    let c = dir.join("knee.csv");
    std::fs::write(&c, csv(knees))?;
    files.push(c);
    let j = dir.join("knee.json");
    std::fs::write(&j, serde_json::to_string_pretty(knees)? + "\n")?;
    files.push(j);
    let (svg, png) = (dir.join("knee.svg"), dir.join("knee.png"));
    plot(knees.iter().map(|k| &k.outcome), &svg, &png)?;
    files.push(svg);
    files.push(png);
    Ok(files)
}

/// p99 against achieved rate, one line per configuration (the knee is where it leaves the
/// target); failing steps are plotted too, at their measured p99.
pub fn plot<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    svg: &Path,
    png: &Path,
) -> Result<(), crate::plot::PlotError> {
    let points: Vec<(String, f64, f64)> = outcomes
        .into_iter()
        .flat_map(|k| {
            k.steps
                .iter()
                .map(|s| (format!("{} @", k.config), s.achieved, s.p99_ms))
        })
        .collect();
    crate::plot::latency_vs_throughput_plot(&points, svg, png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, knee: f64) -> Step {
        let held = rate <= knee;
        Step {
            rate,
            achieved: rate.min(knee),
            p99_ms: if held { 1.0 } else { 100.0 },
            held,
            why: if held {
                String::new()
            } else {
                "saturated".into()
            },
            steal_ms: 0.0,
            disturbed: 0,
            saturated: !held,
            lag_p99_ms: 0.0,
        }
    }

    /// A server that saturates above `knee` and, below it, fails p99 (not saturated) at the
    /// rates in `valley`.
    fn valley_step(rate: f64, valley: std::ops::RangeInclusive<f64>, knee: f64) -> Step {
        let mut s = step(rate, knee);
        if s.held && valley.contains(&rate) {
            s.held = false;
            s.p99_ms = 14.0;
            s.why = "p99 14.000 ms above 10.000 ms".into();
        }
        s
    }

    /// A run at `rate` with every message back, p99 `p99_ms`, and `steal_ms` of steal over
    /// a 2 s wall time.
    fn run_summary(rate: f64, p99_ms: u64, steal_ms: u64) -> Summary {
        crate::summary::testing::echo_run(
            rate,
            Duration::from_millis(p99_ms),
            None,
            Duration::from_secs(2),
            Some(Duration::from_millis(steal_ms)),
        )
    }

    /// One rate, searched with `retries`; the runs' (p99 ms, steal ms) in order.
    fn one_rate(retries: usize, runs: &[(u64, u64)]) -> (Step, usize) {
        let params = SearchParams {
            p99_target: Duration::from_millis(10),
            min_rate: 1000.0,
            max_rate: 1000.0,
            precision: 0.05,
            max_steps: 1,
            repeat: 1,
            steal_retries: retries,
            probe_above: 0,
        };
        let mut made = 0;
        let out = search_config(
            "c",
            &params,
            |rate, _| {
                let (p99, steal) = runs[made.min(runs.len() - 1)];
                made += 1;
                Ok::<_, SweepError>(run_summary(rate, p99, steal))
            },
            |_, _| {},
        )
        .unwrap();
        (out.steps[0].clone(), made)
    }

    #[test]
    fn a_failing_run_the_hypervisor_disturbed_is_made_again_within_the_limit() {
        // 100 ms stolen over 2 s is 5 % of a CPU: disturbed. Two retries, then a clean run.
        let (step, made) = one_rate(2, &[(50, 100), (40, 100), (2, 0)]);
        assert!(step.held, "{step:?}");
        assert_eq!((step.disturbed, made), (2, 3));
        assert!(step.p99_ms < 3.0, "discarded runs do not count: {step:?}");
        assert_eq!(step.steal_ms, 200.0, "but their steal is reported");
        // One retry only: the second disturbed failure stands.
        let (step, made) = one_rate(1, &[(50, 100), (40, 100), (2, 0)]);
        assert!(!step.held);
        assert_eq!((step.disturbed, made), (1, 2));
        // A failure without steal (10 ms of 2 s is 0.5 %) is never made again.
        let (step, made) = one_rate(2, &[(50, 10), (2, 0)]);
        assert!(!step.held);
        assert_eq!((step.disturbed, made), (0, 1));
        // Retries off.
        let (step, made) = one_rate(0, &[(50, 100), (2, 0)]);
        assert!(!step.held);
        assert_eq!((step.disturbed, made), (0, 1));
    }

    /// A search of one configuration whose runs are `runs(rate)`: (achieved fraction of
    /// the rate, p99 ms); `probe_above` 1.
    fn search_runs(max_steps: usize, runs: impl Fn(f64) -> (f64, u64)) -> Outcome {
        let params = SearchParams {
            p99_target: Duration::from_millis(10),
            min_rate: 10_000.0,
            max_rate: 1e6,
            precision: 0.05,
            max_steps,
            repeat: 1,
            steal_retries: 0,
            probe_above: 1,
        };
        search_config(
            "c",
            &params,
            |rate, _| {
                let (fraction, p99) = runs(rate);
                let mut s = run_summary(rate * fraction, p99, 0);
                s.config.rate = rate;
                s.saturated = fraction < 0.95;
                Ok::<_, SweepError>(s)
            },
            |_, _| {},
        )
        .unwrap()
    }

    #[test]
    fn a_failure_the_generators_were_late_for_is_harness_limited() {
        // Holds to 40k; 80k fails p99 while the generators' own lag p99 is `lag` ms.
        let run = |lag: f64| {
            let params = SearchParams {
                p99_target: Duration::from_millis(10),
                min_rate: 10_000.0,
                max_rate: 80_000.0,
                precision: 0.05,
                // 10k, 20k, 40k, 80k: no bisection.
                max_steps: 4,
                repeat: 1,
                steal_retries: 0,
                probe_above: 0,
            };
            search_config(
                "bs=1 bt=0",
                &params,
                |rate, _| {
                    let mut s = run_summary(rate, if rate > 40_000.0 { 15 } else { 2 }, 0);
                    s.harness_lag_ms.p99 = if rate > 40_000.0 { lag } else { 0.3 };
                    Ok::<_, SweepError>(s)
                },
                |_, _| {},
            )
            .unwrap()
        };
        let o = run(5.0);
        assert_eq!((o.knee, o.first_failure), (Some(40_000.0), Some(80_000.0)));
        assert!(o.harness_limited, "{o:?}");
        assert_eq!(o.steps.last().map(|s| s.lag_p99_ms), Some(5.0));
        assert_eq!(o.knee_cell(), ">= 40000 (harness-limited)");
        assert_eq!(o.lag_at_failure_cell(), "5.000");
        let knees = [Knee {
            batch_size: 1,
            batch_timeout_ms: 0.0,
            outcome: o,
        }];
        let md = markdown(&knees, Duration::from_millis(10));
        assert!(md.contains("| >= 40000 (harness-limited) |"), "{md}");
        assert!(md.contains("| 5.000 |"), "{md}");
        assert!(
            md.contains("Harness-limited (bs=1 bt=0): at the first failing rate"),
            "{md}"
        );
        assert!(csv(&knees).lines().nth(1).unwrap().ends_with(",true"));
        // Just under half the target: the server's failure, said plainly.
        let o = run(4.9);
        assert!(!o.harness_limited, "{o:?}");
        assert_eq!(o.knee_cell(), "40000");
        let md = outcome_markdown([&o], Duration::from_millis(10));
        assert!(!md.contains("Harness-limited"), "{md}");
    }

    #[test]
    fn a_run_short_of_its_rate_is_saturated_and_not_probed_past() {
        // 40k achieves 80 % of its rate: saturated, so 80k is never tried.
        let o = search_runs(40, |r| if r >= 40_000.0 { (0.8, 50) } else { (1.0, 2) });
        let tried: Vec<f64> = o.steps.iter().map(|s| s.rate).collect();
        assert!(tried.iter().all(|&r| r <= 40_000.0), "{tried:?}");
        let failed = o.steps.iter().find(|s| s.rate == 40_000.0).unwrap();
        assert!(failed.saturated && !failed.held, "{failed:?}");
        assert_eq!(o.probe_above, 1);
        // 40k achieves all of it with p99 50 ms: not saturated, so 80k is probed and holds.
        let o = search_runs(40, |r| if r == 40_000.0 { (1.0, 50) } else { (1.0, 2) });
        let failed = o.steps.iter().find(|s| s.rate == 40_000.0).unwrap();
        assert!(!failed.saturated && !failed.held, "{failed:?}");
        assert!(o.steps.iter().any(|s| s.rate == 80_000.0 && s.held));
        assert_eq!(o.failed_below, [40_000.0]);
        // Every rate above 40k holds up to the maximum: capped, with the hole kept.
        assert!(o.capped);
        assert_eq!(o.knee, Some(1e6));
    }

    #[test]
    fn ramps_then_bisects_to_within_precision() {
        let s = search(1000.0, 1e9, 0.05, 40, 1, |r| {
            Ok::<_, SweepError>(step(r, 61_000.0))
        })
        .unwrap();
        let steps = s.steps;
        let knee = s.knee.unwrap();
        let fail = s.first_failure.unwrap();
        assert!((61_000.0 / 1.05..=61_000.0).contains(&knee), "{knee}");
        assert!(fail > 61_000.0 && fail - knee <= 0.05 * knee, "{fail}");
        assert!(!s.capped);
        // Doubling: 1k, 2k, ..., 64k (fails, saturated: no probe above it), then bisection.
        let rates: Vec<f64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(&rates[..7], [1e3, 2e3, 4e3, 8e3, 16e3, 32e3, 64e3]);
        assert!(rates[7] < 64e3, "{rates:?}");
        assert!(steps.len() < 15, "{rates:?}");
        assert!(s.failed_below.is_empty());
    }

    #[test]
    fn reports_a_failing_minimum_and_a_capped_maximum() {
        let s = search(1000.0, 1e6, 0.05, 40, 1, |r| {
            Ok::<_, SweepError>(step(r, 10.0))
        })
        .unwrap();
        assert_eq!(
            (s.knee, s.first_failure, s.steps.len()),
            (None, Some(1000.0), 1)
        );
        let s = search(1000.0, 5000.0, 0.05, 40, 1, |r| {
            Ok::<_, SweepError>(step(r, 1e9))
        })
        .unwrap();
        assert_eq!(
            (s.knee, s.first_failure, s.capped),
            (Some(5000.0), None, true)
        );
    }

    #[test]
    fn probes_past_a_band_of_failures_to_the_highest_rate_that_holds() {
        // 10k, 20k, 40k hold; 80k fails in the band; 160k (the probe) holds; 320k holds;
        // 640k saturates; bisection between 320k and 640k.
        let s = search(10_000.0, 4e6, 0.05, 40, 1, |r| {
            Ok::<_, SweepError>(valley_step(r, 60_000.0..=150_000.0, 500_000.0))
        })
        .unwrap();
        let rates: Vec<f64> = s.steps.iter().map(|s| s.rate).collect();
        assert_eq!(&rates[..6], [1e4, 2e4, 4e4, 8e4, 16e4, 32e4], "{rates:?}");
        let knee = s.knee.unwrap();
        assert!((500_000.0 / 1.05..=500_000.0).contains(&knee), "{knee}");
        let fail = s.first_failure.unwrap();
        assert!(fail > 500_000.0 && fail - knee <= 0.05 * knee, "{fail}");
        assert_eq!(s.failed_below, [80_000.0]);
        assert!(!s.capped);
        // Without probing the same server's knee is the band's edge.
        let s = search(10_000.0, 4e6, 0.05, 40, 0, |r| {
            Ok::<_, SweepError>(valley_step(r, 60_000.0..=150_000.0, 500_000.0))
        })
        .unwrap();
        let knee = s.knee.unwrap();
        assert!((40_000.0..60_000.0).contains(&knee), "{knee}");
        assert!(s.first_failure.unwrap() <= 80_000.0);
        assert!(s.failed_below.is_empty());
    }

    #[test]
    fn a_band_wider_than_the_probes_ends_the_ramp() {
        // 80k and 160k both fail in the band; one probe is spent, so the search settles
        // between 40k and 80k and never reaches the rates that would hold above.
        let mut asked = Vec::new();
        let s = search(10_000.0, 4e6, 0.05, 40, 1, |r| {
            asked.push(r);
            Ok::<_, SweepError>(valley_step(r, 60_000.0..=200_000.0, 500_000.0))
        })
        .unwrap();
        assert!(asked.iter().all(|&r| r <= 160_000.0), "{asked:?}");
        // Bisection between the last rate that held and the first failure, 40k and 80k.
        assert!(
            asked[6..].iter().all(|&r| r > 40_000.0 && r < 80_000.0),
            "{asked:?}"
        );
        let knee = s.knee.unwrap();
        assert!((40_000.0..60_000.0).contains(&knee), "{knee}");
        assert!(s.first_failure.unwrap() <= 80_000.0);
        assert!(s.failed_below.is_empty());
        // Two probes reach 320k, which holds.
        let s = search(10_000.0, 4e6, 0.05, 40, 2, |r| {
            Ok::<_, SweepError>(valley_step(r, 60_000.0..=200_000.0, 500_000.0))
        })
        .unwrap();
        assert!(s.knee.unwrap() > 450_000.0, "{:?}", s.knee);
        assert_eq!(s.failed_below, [80_000.0, 160_000.0]);
    }

    #[test]
    fn a_failing_minimum_is_probed_past_too() {
        let s = search(1000.0, 1e6, 0.05, 40, 1, |r| {
            Ok::<_, SweepError>(valley_step(r, 1000.0..=1000.0, 8000.0))
        })
        .unwrap();
        assert_eq!(s.failed_below, [1000.0]);
        assert_eq!(s.knee, Some(8000.0));
        // Saturated at the minimum: nothing more is tried.
        let s = search(1000.0, 1e6, 0.05, 40, 3, |r| {
            Ok::<_, SweepError>(step(r, 10.0))
        })
        .unwrap();
        assert_eq!((s.knee, s.steps.len()), (None, 1));
    }

    #[test]
    fn stops_at_max_steps_with_a_lower_bound() {
        let s = search(1.0, 1e12, 0.0001, 5, 1, |r| {
            Ok::<_, SweepError>(step(r, 1e9))
        })
        .unwrap();
        assert_eq!(s.steps.len(), 5);
        assert_eq!(
            (s.knee, s.first_failure, s.capped),
            (Some(16.0), None, true)
        );
    }
}
