//! `bench-harness stalls` and `perf-report`: the machine's stall floor, and the
//! performance page read back from a `scripts/perf.sh` run directory.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::*;

/// `bench-harness stalls`: the machine's stall floor.
#[derive(Args, Debug, Clone)]
pub struct StallsArgs {
    /// How long every core's probe thread spins.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// A gap between two clock readings longer than this is a stall.
    #[arg(long, default_value = "100us", value_parser = parse_duration)]
    pub threshold: Duration,
    /// Where stalls.md and stalls.json go.
    #[arg(long, default_value = "stalls-out")]
    pub out: PathBuf,
}

/// Runs `bench-harness stalls`: prints the table, writes stalls.md and stalls.json.
pub fn stalls_cmd(a: &StallsArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(!a.duration.is_zero(), "--duration must be above zero");
    anyhow::ensure!(!a.threshold.is_zero(), "--threshold must be above zero");
    let cores = crate::stalls::measure(a.duration, a.threshold)?;
    let mut md = crate::stalls::markdown(&cores);
    if let Some(s) = crate::stalls::sentence(&cores) {
        md.push_str(&format!("\n{s}\n"));
    }
    print!("{md}");
    std::fs::create_dir_all(&a.out)?;
    let md_path = a.out.join("stalls.md");
    std::fs::write(&md_path, &md)?;
    let json_path = a.out.join("stalls.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&cores)?)?;
    println!("wrote {}", md_path.display());
    println!("wrote {}", json_path.display());
    Ok(0)
}

/// `bench-harness perf-report`: one page from one performance run's directories.
#[derive(Args, Debug, Clone)]
pub struct PerfReportArgs {
    /// A `knee` output directory of the engine (its knee.json).
    #[arg(long, value_name = "DIR")]
    pub engine: Option<PathBuf>,
    /// A `knee --server control` output directory (its knee.json).
    #[arg(long, value_name = "DIR")]
    pub control: Option<PathBuf>,
    /// A `ceiling` output directory (its ceiling.json).
    #[arg(long, value_name = "DIR")]
    pub ceiling: Option<PathBuf>,
    /// A directory of `run --count-syscalls` run directories (summary.json + syscalls.json).
    #[arg(long, value_name = "DIR")]
    pub syscalls: Option<PathBuf>,
    /// A `sweep` output directory with batch size 1 and a larger batch size at one low
    /// rate, or a directory of such sweeps named round1, round2, ... (compared by the
    /// medians of their p50s).
    #[arg(long, value_name = "DIR")]
    pub adaptive: Option<PathBuf>,
    /// A `stalls` output directory (its stalls.json): the machine's stall floor.
    #[arg(long, value_name = "DIR")]
    pub stalls: Option<PathBuf>,
    /// A directory of rounds (round1, round2, ...) each holding `engine/` and `control/`
    /// `knee` outputs made at one rate only (`--min-rate R --max-rate R --repeat 1`): how
    /// often the target rate itself held.
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    /// Where performance.md, performance.json and performance.svg/png go.
    #[arg(long, default_value = "perf-out")]
    pub out: PathBuf,
}

/// Runs `bench-harness perf-report`: prints the page and names the files.
pub fn perf_report_cmd(a: &PerfReportArgs) -> anyhow::Result<i32> {
    let r = crate::perf_report::build(
        a.engine.as_deref(),
        a.control.as_deref(),
        a.ceiling.as_deref(),
        a.syscalls.as_deref(),
        a.adaptive.as_deref(),
        a.stalls.as_deref(),
        a.target.as_deref(),
    )?;
    print!("{}", r.markdown());
    for f in r.write(&a.out)? {
        println!("wrote {}", f.display());
    }
    Ok(0)
}
