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

use crate::ceiling::Report as CeilingReport;
use crate::knee::Outcome;
use crate::report::markdown_table;
use crate::summary::Summary;
use crate::syscalls::SyscallReport;

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

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
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
}

fn read(path: &Path) -> Result<String, PerfReportError> {
    std::fs::read_to_string(path).map_err(|e| PerfReportError::Read(path.to_path_buf(), e))
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PerfReportError> {
    serde_json::from_str(&read(path)?).map_err(|e| PerfReportError::Parse(path.to_path_buf(), e))
}

/// The knees in a `knee` output directory.
pub fn read_knees(dir: &Path, server: Server) -> Result<Vec<Entry>, PerfReportError> {
    let outcomes: Vec<Outcome> = parse(&dir.join("knee.json"))?;
    Ok(outcomes
        .into_iter()
        .map(|outcome| Entry { server, outcome })
        .collect())
}

/// The knees in a `ceiling` output directory, and its p99 target.
pub fn read_ceiling(dir: &Path) -> Result<(Vec<Entry>, f64), PerfReportError> {
    let r: CeilingReport = parse(&dir.join("ceiling.json"))?;
    let entries = r
        .knees
        .into_iter()
        .map(|k| Entry {
            server: Server::Ceiling,
            outcome: k.outcome,
        })
        .collect();
    Ok((entries, r.p99_target_ms))
}

/// The runs under `dir` (each subdirectory with a `summary.json` and a `syscalls.json`).
pub fn read_syscall_runs(dir: &Path) -> Result<Vec<SyscallRun>, PerfReportError> {
    let mut runs = Vec::new();
    for sub in subdirs(dir)? {
        let Some(syscalls) = SyscallReport::read_json(&sub) else {
            continue;
        };
        let s: Summary = parse(&sub.join("summary.json"))?;
        runs.push(SyscallRun {
            name: sub
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            rate: s.config.rate,
            achieved: s.achieved_rate,
            p99_ms: s.latency_ms.p99,
            lost: s.lost + s.corrupted,
            syscalls,
        });
    }
    Ok(runs)
}

/// The adaptive check from `dir`: either `round*` subdirectories, each a `sweep` directory
/// (as `scripts/perf.sh` makes them), whose medians are taken, or one `sweep` directory.
/// Rounds whose larger batch size differs from the first round's are left out.
pub fn read_adaptive(dir: &Path) -> Result<Option<Adaptive>, PerfReportError> {
    let rounds: Vec<PathBuf> = subdirs(dir)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("round"))
        })
        .collect();
    if rounds.is_empty() {
        return read_adaptive_round(dir);
    }
    let mut found = Vec::new();
    for r in &rounds {
        if let Some(a) = read_adaptive_round(r)? {
            found.push(a);
        }
    }
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let (rate, batch_size) = (first.rate, first.batch_size);
    let found: Vec<&Adaptive> = found
        .iter()
        .filter(|a| a.batch_size == batch_size)
        .collect();
    let mut bs1: Vec<f64> = found.iter().map(|a| a.p50_bs1_ms).collect();
    let mut big: Vec<f64> = found.iter().map(|a| a.p50_ms).collect();
    let round_ratios = found.iter().map(|a| a.ratio()).collect();
    Ok(match (median(&mut bs1), median(&mut big)) {
        (Some(p50_bs1_ms), Some(p50_ms)) => Some(Adaptive {
            rate,
            p50_bs1_ms,
            batch_size,
            p50_ms,
            rounds: found.len(),
            round_ratios,
        }),
        _ => None,
    })
}

/// One round of the adaptive check: a `sweep` directory holding runs at batch size 1 and
/// one larger batch size, at one rate.
fn read_adaptive_round(dir: &Path) -> Result<Option<Adaptive>, PerfReportError> {
    let mut bs1 = None;
    let mut big: Option<(u32, f64)> = None;
    let mut rate = 0.0;
    for sub in subdirs(dir)? {
        let path = sub.join("summary.json");
        if !path.exists() {
            continue;
        }
        let s: Summary = parse(&path)?;
        rate = s.config.rate;
        match s.config.batch_size {
            Some(1) => bs1 = Some(s.latency_ms.p50),
            Some(b) if big.is_none_or(|(x, _)| b > x) => big = Some((b, s.latency_ms.p50)),
            _ => {}
        }
    }
    Ok(match (bs1, big) {
        (Some(p50_bs1_ms), Some((batch_size, p50_ms))) => Some(Adaptive {
            rate,
            p50_bs1_ms,
            batch_size,
            p50_ms,
            rounds: 1,
            round_ratios: vec![p50_ms / p50_bs1_ms.max(1e-9)],
        }),
        _ => None,
    })
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, PerfReportError> {
    let rd = std::fs::read_dir(dir).map_err(|e| PerfReportError::Read(dir.to_path_buf(), e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

/// This machine, for the page: CPU model, cores, kernel, and the load average now.
pub fn describe_machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!("{model}, {cores} cores, Linux {kernel}, load average {load} at the end of the run")
}

impl PerfReport {
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
                "Knee: the highest open-loop rate that held p99 <= {t} ms with nothing lost, refused or corrupted and at least 95 % achieved. {search}\n\n"
            ));
        }
        let best_ceiling = self
            .entries
            .iter()
            .filter(|e| e.server == Server::Ceiling)
            .filter_map(|e| e.outcome.knee)
            .fold(None, |m: Option<f64>, k| Some(m.map_or(k, |m| m.max(k))));
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
                    .steps
                    .iter()
                    .find(|st| !st.held && Some(st.rate) == o.first_failure)
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
                    ]
                })
                .collect();
            s.push_str("Per message at fixed rates (`perf stat -e raw_syscalls:sys_enter,task-clock` over each measured phase, all threads of each process; core busy = server CPU seconds / window; msg/s per core = messages / server CPU seconds). Far below saturation most messages cost the server a wake-up of its own, so those rows are costs at that rate, not capacity. Rows named `-saturated` offer more than the pair of cores carries: what the server spends per message when it is as busy as the harness can make it, the closest this machine comes to a server's capacity per core:\n\n");
            s.push_str(&markdown_table(&headers, &rows));
            s.push('\n');
        }
        s.push_str("Targets:\n\n");
        let best_engine = self
            .entries
            .iter()
            .filter(|e| e.server == Server::Engine)
            .filter_map(|e| e.outcome.knee)
            .fold(None, |m: Option<f64>, k| Some(m.map_or(k, |m| m.max(k))));
        let verdict = |ok: bool| if ok { "met" } else { "not met" };
        if let Some(k) = best_engine {
            s.push_str(&format!(
                "- 1,000,000 msg/s per engine core: best knee {k:.0} msg/s, {}.\n",
                verdict(k >= 1e6)
            ));
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knee::Step;

    fn outcome(config: &str, knee: f64) -> Outcome {
        Outcome {
            config: config.into(),
            knee: Some(knee),
            p99_at_knee_ms: Some(4.0),
            first_failure: Some(knee * 1.05),
            failure: Some("p99 12.000 ms above 10.000 ms".into()),
            failed_below: Vec::new(),
            capped: false,
            probe_above: 1,
            steps: vec![
                Step {
                    rate: knee,
                    achieved: knee,
                    p99_ms: 4.0,
                    held: true,
                    why: String::new(),
                    steal_ms: 0.0,
                    disturbed: 0,
                    saturated: false,
                },
                Step {
                    rate: knee * 1.05,
                    achieved: knee,
                    p99_ms: 12.0,
                    held: false,
                    why: "p99".into(),
                    steal_ms: 120.0,
                    disturbed: 0,
                    saturated: false,
                },
            ],
        }
    }

    fn report() -> PerfReport {
        let e = |server, c, k| Entry {
            server,
            outcome: outcome(c, k),
        };
        PerfReport {
            machine: "test machine".into(),
            entries: vec![
                e(Server::Ceiling, "udp io=batched", 200_000.0),
                e(Server::Ceiling, "udp io=per-datagram", 150_000.0),
                e(Server::Engine, "bs=1 bt=0", 100_000.0),
                e(Server::Engine, "bs=128 bt=0", 160_000.0),
                e(Server::Control, "bs=128 bt=0", 40_000.0),
            ],
            syscalls: [
                "engine-bs128",
                "control-bs128",
                "engine-bs128-saturated",
                "control-bs128-saturated",
            ]
            .iter()
            .zip([2.0, 6.0, 1.0, 1.25])
            .map(|(name, cpu_us)| SyscallRun {
                name: (*name).into(),
                rate: 20_000.0,
                achieved: 20_000.0,
                p99_ms: 1.0,
                lost: u64::from(name.starts_with("control-bs128-sat")),
                syscalls: SyscallReport {
                    window_s: 5.0,
                    messages: 100_000,
                    server: crate::syscalls::ProcessCount {
                        pid: 1,
                        syscalls: 150_000,
                        cpu_s: cpu_us * 0.1,
                    },
                    harness: crate::syscalls::ProcessCount {
                        pid: 2,
                        syscalls: 90_000,
                        cpu_s: 1.0,
                    },
                },
            })
            .collect(),
            adaptive: Some(Adaptive {
                rate: 16_000.0,
                p50_bs1_ms: 0.5,
                batch_size: 128,
                p50_ms: 0.55,
                rounds: 1,
                round_ratios: vec![1.1],
            }),
            p99_target_ms: Some(10.0),
            stalls: Vec::new(),
        }
    }

    #[test]
    fn the_stall_floor_is_on_the_page_when_measured() {
        let mut r = report();
        assert!(!r.markdown().contains("Stall floor"));
        r.stalls = vec![crate::stalls::CoreStalls {
            core: Some(0),
            duration_s: 10.0,
            threshold_us: 100,
            stalls: 30,
            over_1ms: 12,
            over_5ms: 1,
            longest_ms: 6.6,
            stalled_ms: 40.0,
        }];
        let md = r.markdown();
        assert!(
            md.contains("1.2 stalls over 1 ms per core-second, the longest 6.6 ms"),
            "{md}"
        );
    }

    #[test]
    fn ratios_and_targets_come_from_the_knees() {
        let mut r = report();
        r.entries[3].outcome.failed_below = vec![20_000.0, 40_000.0];
        let md = r.markdown();
        // Engine against the control at the same configuration, and against the best ceiling.
        let cells = md.replace(' ', "");
        assert!(cells.contains("|bs=128bt=0|160000|"), "{md}");
        assert!(cells.contains("|2000040000|4.00x|80%|120|"), "{md}");
        assert!(
            md.contains("Searches probed up to 1 doubling(s) past a failure"),
            "{md}"
        );
        assert!(cells.contains("||50%|"), "{md}");
        assert!(
            md.contains("bs=128 bt=0: 160000 against 40000 msg/s, 4.00x, met"),
            "{md}"
        );
        assert!(md.contains("50 %, not met"), "{md}");
        assert!(md.contains("best knee 160000 msg/s, not met"), "{md}");
        assert!(md.contains("1.10x, met"), "{md}");
        assert!(
            md.contains("engine 2.00 us, control 6.00 us: at this rate the engine carries 3.00x"),
            "{md}"
        );
        assert!(
            cells.contains("|engine-bs128|20000|20000|0|1.000|1.50|0.90|4%|2.00|500000|"),
            "{md}"
        );
        assert!(
            md.contains("Saturated at batch 128 (20000 msg/s offered): the engine carried 20000 msg/s with its core 2 % busy, 1.00 us a message (1000000 msg/s per core-second); the control 20000 msg/s, 2 % busy, 1.25 us (800000): the engine carries 1.25x"),
            "{md}"
        );
        assert!(
            md.contains(
                "control-bs128-saturated lost or corrupted 1 messages: its CPU per message is not comparable"
            ),
            "{md}"
        );
        assert!(!md.contains("engine-bs128-saturated lost"), "{md}");
        assert!(
            !md.contains("Saturated at batch 1 "),
            "no saturated line without both runs: {md}"
        );
    }

    #[test]
    fn a_missing_control_is_said_not_invented() {
        let mut r = report();
        r.entries.retain(|e| e.server != Server::Control);
        r.adaptive = None;
        let md = r.markdown();
        assert!(md.contains("3x the control: not measured"), "{md}");
        assert!(md.contains("adaptive batching: not measured"), "{md}");
        assert!(
            !md.replace(' ', "").contains("x|"),
            "no ratio column filled: {md}"
        );
    }

    /// Writes `dir/bs{bs}-bt0-r{rate}/summary.json` of a run at `rate` whose every message
    /// took `p50_us` microseconds.
    fn write_sweep_run(dir: &Path, bs: u32, rate: f64, p50_us: u64) {
        let wall = std::time::Duration::from_secs(1);
        let latency = std::time::Duration::from_micros(p50_us);
        let s = crate::summary::testing::echo_run(rate, latency, Some(bs), wall, None);
        let run = dir.join(format!("bs{bs}-bt0-r{rate}"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("summary.json"), serde_json::to_string(&s).unwrap()).unwrap();
    }

    #[test]
    fn the_adaptive_check_takes_medians_over_its_rounds() {
        let dir = tempfile::tempdir().unwrap();
        // Three rounds: batch 1 at 100, 200, 150 us; batch 128 at 300 (a bad pair), 210, 160.
        for (i, (a, b)) in [(100, 300), (200, 210), (150, 160)].into_iter().enumerate() {
            let round = dir.path().join(format!("round{}", i + 1));
            write_sweep_run(&round, 1, 31_000.0, a);
            write_sweep_run(&round, 128, 31_000.0, b);
        }
        let a = read_adaptive(dir.path()).unwrap().unwrap();
        assert_eq!((a.rounds, a.batch_size, a.rate), (3, 128, 31_000.0));
        // Medians 0.150 and 0.210 ms: 1.40x; the one bad round does not decide alone.
        assert!((a.p50_bs1_ms - 0.150).abs() < 0.001, "{a:?}");
        assert!((a.p50_ms - 0.210).abs() < 0.001, "{a:?}");
        assert_eq!(a.round_ratios.len(), 3);
        assert!((a.round_ratios[0] - 3.0).abs() < 0.01, "{a:?}");
        let mut r = report();
        r.adaptive = Some(a);
        let md = r.markdown();
        assert!(
            md.contains("medians of 3 interleaved rounds (single rounds 1.05x to 3.00x) 0.210 against 0.150 ms, 1.40x, not met"),
            "{md}"
        );
        // One sweep directory without rounds is one round, as before.
        let single = tempfile::tempdir().unwrap();
        write_sweep_run(single.path(), 1, 31_000.0, 100);
        write_sweep_run(single.path(), 128, 31_000.0, 110);
        let a = read_adaptive(single.path()).unwrap().unwrap();
        assert_eq!(a.rounds, 1);
        assert!((a.ratio() - 1.1).abs() < 0.01, "{a:?}");
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn reads_knee_results_written_before_probing() {
        // A knee.json as written before `failed_below`, `probe_above` and `saturated`.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("knee.json"),
            r#"[{"batch_size": 1, "batch_timeout_ms": 0.0, "config": "bs=1 bt=0",
                "knee": 360000.0, "p99_at_knee_ms": 5.8, "first_failure": 370000.0,
                "failure": "p99 11.682 ms above 10.000 ms", "capped": false,
                "steps": [{"rate": 360000.0, "achieved": 360000.0, "p99_ms": 5.8,
                           "held": true, "why": "", "steal_ms": 70.0, "disturbed": 0},
                          {"rate": 370000.0, "achieved": 370000.0, "p99_ms": 11.7,
                           "held": false, "why": "p99", "steal_ms": 0.0, "disturbed": 0}]}]"#,
        )
        .unwrap();
        let got = read_knees(dir.path(), Server::Engine).unwrap();
        let o = &got[0].outcome;
        assert_eq!(o.knee, Some(360_000.0));
        assert!(o.failed_below.is_empty());
        assert_eq!(o.probe_above, 0);
        assert!(!o.steps[1].saturated);
        let mut r = build(Some(dir.path()), None, None, None, None, None).unwrap();
        // The p99 target comes from a ceiling report, not given here.
        r.p99_target_ms = Some(10.0);
        let md = r.markdown();
        assert!(
            md.contains("Each search stopped ramping at its first failure."),
            "{md}"
        );
        assert!(!md.contains("Searches probed"), "{md}");
    }

    #[test]
    fn reads_what_knee_and_ceiling_write() {
        let dir = tempfile::tempdir().unwrap();
        let knees = vec![crate::knee::Knee {
            batch_size: 16,
            batch_timeout_ms: 0.0,
            outcome: outcome("bs=16 bt=0", 50_000.0),
        }];
        let kd = dir.path().join("engine");
        crate::knee::write(&kd, &knees, std::time::Duration::from_millis(10)).unwrap();
        let got = read_knees(&kd, Server::Engine).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].outcome.knee, Some(50_000.0));
        assert!(matches!(
            build(None, None, None, None, None, None),
            Err(PerfReportError::Empty)
        ));
        let out = dir.path().join("out");
        let r = build(Some(&kd), None, None, None, None, None).unwrap();
        let files = r.write(&out).unwrap();
        assert!(files.iter().all(|f| f.exists()));
    }
}
