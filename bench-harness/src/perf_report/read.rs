//! Reading what one performance run wrote: knees, ceilings, system-call runs, the
//! adaptive check's rounds, and the machine's description.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Adaptive, Entry, PerfReportError, Server, SyscallRun, TargetCheck};
use crate::ceiling::Report as CeilingReport;
use crate::knee::Outcome;
use crate::summary::Summary;
use crate::syscalls::SyscallReport;

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
pub(super) fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

fn read(path: &Path) -> Result<String, PerfReportError> {
    std::fs::read_to_string(path).map_err(|e| PerfReportError::Read(path.to_path_buf(), e))
}

pub(super) fn parse<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PerfReportError> {
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

/// The target check: `dir/roundN/{engine,control}/knee.json`, each a `knee` run at one
/// rate only (`--min-rate R --max-rate R --repeat 1`), as `scripts/perf.sh` makes them.
/// Each round's single step is one verdict at that rate. `None` when no round holds an
/// engine run.
pub fn read_target(dir: &Path) -> Result<Option<TargetCheck>, PerfReportError> {
    let mut check: Option<TargetCheck> = None;
    let mut rounds = subdirs(dir)?;
    // round2 before round10.
    rounds.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("round"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    for round in rounds {
        for server in [Server::Engine, Server::Control] {
            let path = round.join(server.name()).join("knee.json");
            if !path.exists() {
                continue;
            }
            let outcomes: Vec<Outcome> = parse(&path)?;
            for o in outcomes {
                let Some(step) = o.steps.into_iter().next() else {
                    continue;
                };
                let c = check.get_or_insert_with(|| TargetCheck {
                    rate: step.rate,
                    config: o.config.clone(),
                    engine: Vec::new(),
                    control: Vec::new(),
                });
                // Rounds at another rate or configuration are not this check's.
                if step.rate != c.rate || o.config != c.config {
                    continue;
                }
                match server {
                    Server::Control => c.control.push(step),
                    _ => c.engine.push(step),
                }
            }
        }
    }
    Ok(check.filter(|c| !c.engine.is_empty()))
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
