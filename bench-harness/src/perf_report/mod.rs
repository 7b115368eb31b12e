//! `bench-harness perf-report`: one page from the outputs of one performance run (see
//! `scripts/perf.sh`): the knees of the engine's batch configurations, of the matched
//! control and of the raw UDP ceiling side by side, their ratios, system calls per message,
//! and the adaptive-batching check, with the machine they ran on and a plot of p99 against
//! achieved rate for every step of every search.
//!
//! It only reads what the searches wrote (`knee.json`, `ceiling.json`, `summary.json`,
//! `syscalls.json`), so a table in the README can be regenerated from the run directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::knee::{Outcome, Step};
use crate::report::markdown_table;
use crate::syscalls::SyscallReport;

mod read;
#[cfg(test)]
mod tests;

use read::parse;
pub use read::{
    describe_machine, read_adaptive, read_ceiling, read_knees, read_syscall_runs, read_target,
};

/// Errors from building the report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PerfReportError {
    /// An input could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// An input was not what the harness writes.
    #[error("parsing {0}: {1}")]
    Parse(PathBuf, serde_json::Error),
    /// Nothing was given to report on.
    #[error("nothing to report: give at least one of --engine, --control, --ceiling")]
    Empty,
    /// Writing an output failed.
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    /// The plot failed.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}

/// Which server a knee was measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Server {
    /// The engine (glommio + quiche).
    Engine,
    /// The tokio + quinn control server.
    Control,
    /// The raw UDP echo server.
    Ceiling,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Engine => "engine",
            Server::Control => "control",
            Server::Ceiling => "udp ceiling",
        }
    }
}

/// One configuration's knee, labelled with its server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Whose knee.
    pub server: Server,
    /// The search's outcome (`config` is `bs=128 bt=0` or `udp io=batched`).
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Entry {
    fn label(&self) -> String {
        match self.server {
            Server::Ceiling => self.outcome.config.clone(),
            s => format!("{} {}", s.name(), self.outcome.config),
        }
    }
}

/// A fixed-rate run with its system call counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyscallRun {
    /// The run directory's name (`engine-bs1`, ...).
    pub name: String,
    /// Asked rate, msg/s.
    pub rate: f64,
    /// Achieved rate, msg/s.
    pub achieved: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Messages lost or corrupted in the run (a saturated run must still lose none).
    #[serde(default)]
    pub lost: u64,
    /// The counts.
    pub syscalls: SyscallReport,
}

/// The adaptive-batching check: at a low rate, the median of a large batch size with
/// timeout 0 against batch size 1 (a batch that waits for company would show here).
/// Made in rounds, each a run of both, so the machine's drift falls on both alike; at p50s
/// of a few tenths of a millisecond single pairs range over more than the 1.2x bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Adaptive {
    /// The rate both ran at, msg/s.
    pub rate: f64,
    /// p50 at batch size 1, ms: the median over the rounds.
    pub p50_bs1_ms: f64,
    /// The larger batch size.
    pub batch_size: u32,
    /// Its p50, ms: the median over the rounds.
    pub p50_ms: f64,
    /// Rounds (pairs of runs) the medians are of.
    #[serde(default = "one")]
    pub rounds: usize,
    /// Each round's ratio, in round order.
    #[serde(default)]
    pub round_ratios: Vec<f64>,
}

fn one() -> usize {
    1
}

impl Adaptive {
    /// The larger batch's median p50 over batch 1's.
    pub fn ratio(&self) -> f64 {
        self.p50_ms / self.p50_bs1_ms.max(1e-9)
    }
}

/// The throughput target checked directly: single runs of the engine and the control at
/// the target rate itself, interleaved in rounds. A knee search needs every run of every
/// rate on its way up to hold, so on a machine that stalls its vCPUs for milliseconds it
/// stops below a rate that holds in some runs; this says how often the rate held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetCheck {
    /// The rate, msg/s.
    pub rate: f64,
    /// The configuration (`bs=128 bt=0`).
    pub config: String,
    /// The engine's run in each round, in round order.
    pub engine: Vec<Step>,
    /// The control's run in each round, in round order.
    pub control: Vec<Step>,
}

impl TargetCheck {
    /// `k of n runs held (p99 a, b, ... ms; failures: why)`, for one server's runs.
    fn describe(runs: &[Step]) -> String {
        let held = runs.iter().filter(|s| s.held).count();
        let p99s: Vec<String> = runs.iter().map(|s| format!("{:.1}", s.p99_ms)).collect();
        let mut out = format!(
            "held in {held} of {} runs (p99 {} ms",
            runs.len(),
            p99s.join(", ")
        );
        if runs.iter().any(|s| s.deferred > 0) {
            let deferred: Vec<String> = runs.iter().map(|s| s.deferred.to_string()).collect();
            out.push_str(&format!(
                "; deferred by back-pressure and sent late {} messages",
                deferred.join(", ")
            ));
        }
        let why: Vec<&str> = runs
            .iter()
            .filter(|s| !s.held)
            .map(|s| s.why.as_str())
            .collect();
        if !why.is_empty() {
            out.push_str(&format!("; failed on: {}", why.join("; ")));
        }
        let disturbed: usize = runs.iter().map(|s| s.disturbed).sum();
        if disturbed > 0 {
            out.push_str(&format!(
                "; {disturbed} failing run(s) made while the hypervisor took CPU time were made again"
            ));
        }
        out.push(')');
        out
    }
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfReport {
    /// Where and when it ran.
    pub machine: String,
    /// Every knee.
    pub entries: Vec<Entry>,
    /// Fixed-rate runs with system call counts.
    pub syscalls: Vec<SyscallRun>,
    /// The adaptive-batching check, when run.
    pub adaptive: Option<Adaptive>,
    /// The p99 target the knees hold, ms.
    pub p99_target_ms: Option<f64>,
    /// The machine's stall floor (`bench-harness stalls`), when measured.
    #[serde(default)]
    pub stalls: Vec<crate::stalls::CoreStalls>,
    /// Single runs at the target rate, when made.
    #[serde(default)]
    pub target: Option<TargetCheck>,
}

impl PerfReport {
    /// The entry of `server` with the highest knee.
    fn best(&self, server: Server) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.server == server && e.outcome.knee.is_some())
            .max_by(|a, b| {
                let k = |e: &Entry| e.outcome.knee.unwrap_or(0.0);
                k(a).total_cmp(&k(b))
            })
    }

    fn knee(&self, server: Server, config: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|e| e.server == server && e.outcome.config == config)
            .and_then(|e| e.outcome.knee)
    }

    /// The best knee of the engine, and the control's knee at the same configuration.
    fn engine_vs_control(&self) -> Option<(String, f64, f64)> {
        self.entries
            .iter()
            .filter(|e| e.server == Server::Engine)
            .filter_map(|e| {
                let k = e.outcome.knee?;
                let c = self.knee(Server::Control, &e.outcome.config)?;
                Some((e.outcome.config.clone(), k, c))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The page.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("Machine: {}.\n\n", self.machine));
        if let Some(floor) = crate::stalls::sentence(&self.stalls) {
            s.push_str(&format!("{floor}\n\n"));
        }
        if let Some(t) = self.p99_target_ms {
            let probes = self
                .entries
                .iter()
                .map(|e| e.outcome.probe_above)
                .max()
                .unwrap_or(0);
            let search = if probes > 0 {
                format!(
                    "Searches probed up to {probes} doubling(s) past a failure that was not saturation; rates they tried below a knee that failed are listed with it."
                )
            } else {
                "Each search stopped ramping at its first failure.".to_string()
            };
            s.push_str(&format!(
                "Knee: the highest open-loop rate that held p99 <= {t} ms with nothing lost, refused, corrupted or duplicated and at least 95 % achieved. {search}\n\n"
            ));
        }
        let best_ceiling = self.best(Server::Ceiling).and_then(|e| e.outcome.knee);
        let headers = [
            "server",
            "config",
            "knee (msg/s)",
            "p99 at knee (ms)",
            "first failing rate above",
            "why it failed",
            "failed below the knee",
            "vs control, same config",
            "of best UDP ceiling",
            "steal in failing step (ms)",
            "harness lag p99 in failing step (ms)",
        ];
        let rows: Vec<Vec<String>> = self
            .entries
            .iter()
            .map(|e| {
                let o = &e.outcome;
                let vs_control = match (e.server, o.knee) {
                    (Server::Engine, Some(k)) => self
                        .knee(Server::Control, &o.config)
                        .map(|c| format!("{:.2}x", k / c))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let of_ceiling = match (o.knee, best_ceiling) {
                    (Some(k), Some(c)) if e.server != Server::Ceiling => {
                        format!("{:.0} %", 100.0 * k / c)
                    }
                    _ => String::new(),
                };
                let [p99, first_failure, why] = o.result_cells();
                // The hypervisor's share of the verdict: CPU time it took during the runs
                // of the rate that failed.
                let steal = o
                    .failing_step()
                    .filter(|st| st.steal_ms > 0.0)
                    .map(|st| format!("{:.0}", st.steal_ms))
                    .unwrap_or_default();
                vec![
                    e.server.name().to_string(),
                    o.config.clone(),
                    o.knee_cell(),
                    p99,
                    first_failure,
                    why,
                    o.failed_below_cell(),
                    vs_control,
                    of_ceiling,
                    steal,
                    o.lag_at_failure_cell(),
                ]
            })
            .collect();
        s.push_str(&markdown_table(&headers, &rows));
        s.push('\n');
        if !self.syscalls.is_empty() {
            let headers = [
                "run",
                "rate (msg/s)",
                "achieved",
                "lost",
                "p99 (ms)",
                "server syscalls/msg",
                "harness syscalls/msg",
                "server core busy",
                "server CPU us/msg",
                "server msg/s per core at that cost",
                "harness CPU us/msg",
            ];
            let rows: Vec<Vec<String>> = self
                .syscalls
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        format!("{:.0}", r.rate),
                        format!("{:.0}", r.achieved),
                        r.lost.to_string(),
                        format!("{:.3}", r.p99_ms),
                        format!("{:.2}", r.syscalls.server_per_message()),
                        format!("{:.2}", r.syscalls.harness_per_message()),
                        format!("{:.0} %", r.syscalls.server_core_busy_percent()),
                        format!("{:.2}", r.syscalls.server_cpu_us_per_message()),
                        format!("{:.0}", r.syscalls.server_messages_per_core_s()),
                        format!("{:.2}", r.syscalls.harness_cpu_us_per_message()),
                    ]
                })
                .collect();
            s.push_str("Per message at fixed rates (`perf stat -e raw_syscalls:sys_enter,task-clock` over each measured phase, all threads of each process; core busy = server CPU seconds / window; msg/s per core = messages / server CPU seconds). Below saturation a server's turns hold few messages, each paying for its own packets and system calls (and, far below, a wake-up of its core), so those rows are costs at that rate, not capacity. Rows named `-saturated` offer more than the pair of cores carries: what the server spends per message when it is as busy as the harness can make it, the closest this machine comes to a server's capacity per core:\n\n");
            s.push_str(&markdown_table(&headers, &rows));
            s.push('\n');
        }
        s.push_str("Targets:\n\n");
        let verdict = |ok: bool| if ok { "met" } else { "not met" };
        if let Some((k, limited)) = self
            .best(Server::Engine)
            .and_then(|e| Some((e.outcome.knee?, e.outcome.harness_limited)))
        {
            s.push_str(&format!(
                "- 1,000,000 msg/s per engine core: best knee {k:.0} msg/s{}, {}.\n",
                if limited {
                    " (harness-limited: a lower bound of the engine's)"
                } else {
                    ""
                },
                verdict(k >= 1e6)
            ));
        }
        if let Some(t) = &self.target {
            s.push_str(&format!(
                "- {:.0} msg/s per core at {}, single runs at that rate in {} interleaved rounds (the same verdict as the knee's): the engine {}",
                t.rate,
                t.config,
                t.engine.len(),
                TargetCheck::describe(&t.engine)
            ));
            if t.control.is_empty() {
                s.push_str(".\n");
            } else {
                s.push_str(&format!(
                    "; the control {}.\n",
                    TargetCheck::describe(&t.control)
                ));
            }
        }
        for bs in [1, 16, 128] {
            let run = |prefix: &str, suffix: &str| {
                self.syscalls
                    .iter()
                    .find(|r| r.name == format!("{prefix}-bs{bs}{suffix}"))
            };
            // Engine and control runs of one kind, with their CPU microseconds a message.
            let pair = |suffix: &str| {
                let (e, c) = (run("engine", suffix)?, run("control", suffix)?);
                let cpu = |r: &SyscallRun| r.syscalls.server_cpu_us_per_message();
                Some((e, c, cpu(e), cpu(c)))
            };
            if let Some((e, _, ec, cc)) = pair("") {
                s.push_str(&format!(
                    "- CPU per message at batch {bs} and {:.0} msg/s: engine {ec:.2} us, control {cc:.2} us: at this rate the engine carries {:.2}x the control's messages per core-second.\n",
                    e.rate,
                    cc / ec.max(1e-9)
                ));
            }
            if let Some((e, c, ec, cc)) = pair("-saturated") {
                s.push_str(&format!(
                    "- Saturated at batch {bs} ({:.0} msg/s offered): the engine carried {:.0} msg/s with its core {:.0} % busy, {ec:.2} us a message ({:.0} msg/s per core-second); the control {:.0} msg/s, {:.0} % busy, {cc:.2} us ({:.0}): the engine carries {:.2}x the control's messages per core-second.\n",
                    e.rate,
                    e.achieved,
                    e.syscalls.server_core_busy_percent(),
                    e.syscalls.server_messages_per_core_s(),
                    c.achieved,
                    c.syscalls.server_core_busy_percent(),
                    c.syscalls.server_messages_per_core_s(),
                    cc / ec.max(1e-9)
                ));
                // Whether the harness could drive the engine past the engine's capacity
                // (the "out-run one engine core"): compare its cost a message.
                let hc = e.syscalls.harness_cpu_us_per_message();
                s.push_str(&format!(
                    "  - the harness spent {hc:.2} us a message driving the engine there ({:.0} % of a core): {}.\n",
                    100.0 * e.syscalls.harness.cpu_s / e.syscalls.window_s.max(1e-9),
                    if hc < ec {
                        "cheaper than the engine, so the engine's core was the limit"
                    } else {
                        "no cheaper than the engine, so this rate is the harness's limit as much as the engine's"
                    }
                ));
                for r in [e, c].into_iter().filter(|r| r.lost > 0) {
                    s.push_str(&format!(
                        "  - {} lost or corrupted {} messages: its CPU per message is not comparable.\n",
                        r.name, r.lost
                    ));
                }
            }
        }
        match self.engine_vs_control() {
            Some((config, k, c)) => s.push_str(&format!(
                "- 3x the control at equal p99: {config}: {k:.0} against {c:.0} msg/s, {:.2}x, {}.\n",
                k / c,
                verdict(k >= 3.0 * c)
            )),
            None => s.push_str("- 3x the control: not measured in this run.\n"),
        }
        match (self.knee(Server::Engine, "bs=1 bt=0"), best_ceiling) {
            (Some(k), Some(c)) => s.push_str(&format!(
                "- batch 1 at 70 % of the UDP ceiling: {k:.0} against {c:.0}/s, {:.0} %, {}.\n",
                100.0 * k / c,
                verdict(k >= 0.7 * c)
            )),
            _ => s.push_str("- batch 1 against the UDP ceiling: not measured in this run.\n"),
        }
        match &self.adaptive {
            Some(a) => {
                let rounds = if a.rounds > 1 {
                    let lo = a.round_ratios.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = a.round_ratios.iter().copied().fold(0.0, f64::max);
                    format!(
                        "medians of {} interleaved rounds (single rounds {lo:.2}x to {hi:.2}x) ",
                        a.rounds
                    )
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "- adaptive batching (p50 of batch {} within 1.2x of batch 1 at {:.0} msg/s): {rounds}{:.3} against {:.3} ms, {:.2}x, {}.\n",
                    a.batch_size,
                    a.rate,
                    a.p50_ms,
                    a.p50_bs1_ms,
                    a.ratio(),
                    verdict(a.ratio() <= 1.2)
                ))
            }
            None => s.push_str("- adaptive batching: not measured in this run.\n"),
        }
        s
    }

    /// Writes performance.md, performance.json and performance.svg/png into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, PerfReportError> {
        let w = |p: &Path, text: String| {
            std::fs::write(p, text).map_err(|e| PerfReportError::Write(p.to_path_buf(), e))
        };
        std::fs::create_dir_all(dir).map_err(|e| PerfReportError::Write(dir.to_path_buf(), e))?;
        let md = dir.join("performance.md");
        w(&md, self.markdown())?;
        let json = dir.join("performance.json");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| PerfReportError::Parse(json.clone(), e))?;
        w(&json, text + "\n")?;
        let (svg, png) = (dir.join("performance.svg"), dir.join("performance.png"));
        let points: Vec<(String, f64, f64)> = self
            .entries
            .iter()
            .flat_map(|e| {
                let label = format!("{} @", e.label());
                e.outcome
                    .steps
                    .iter()
                    .map(move |s| (label.clone(), s.achieved, s.p99_ms))
            })
            .collect();
        crate::plot::latency_vs_throughput_plot(&points, &svg, &png)?;
        Ok(vec![md, json, svg, png])
    }
}

/// Builds the report from the directories one performance run wrote.
pub fn build(
    engine: Option<&Path>,
    control: Option<&Path>,
    ceiling: Option<&Path>,
    syscalls: Option<&Path>,
    adaptive: Option<&Path>,
    stalls: Option<&Path>,
    target: Option<&Path>,
) -> Result<PerfReport, PerfReportError> {
    if engine.is_none() && control.is_none() && ceiling.is_none() {
        return Err(PerfReportError::Empty);
    }
    let mut entries = Vec::new();
    let mut p99_target_ms = None;
    if let Some(d) = ceiling {
        let (e, t) = read_ceiling(d)?;
        entries.extend(e);
        p99_target_ms = Some(t);
    }
    if let Some(d) = engine {
        entries.extend(read_knees(d, Server::Engine)?);
    }
    if let Some(d) = control {
        entries.extend(read_knees(d, Server::Control)?);
    }
    Ok(PerfReport {
        machine: describe_machine(),
        entries,
        syscalls: syscalls
            .map(read_syscall_runs)
            .transpose()?
            .unwrap_or_default(),
        adaptive: adaptive.map(read_adaptive).transpose()?.flatten(),
        p99_target_ms,
        stalls: stalls
            .map(|d| parse(&d.join("stalls.json")))
            .transpose()?
            .unwrap_or_default(),
        target: target.map(read_target).transpose()?.flatten(),
    })
}
