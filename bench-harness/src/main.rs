//! `bench-harness`: open-loop load generator for the engine (`run`), batch-configuration
//! sweeps (`sweep`), knee searches (`knee`), the raw UDP ceiling (`ceiling`), comparison
//! of finished runs (`compare`), the machine's stall floor (`stalls`) and the tokio + quinn
//! control server the engine is compared against (`control-server`).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The engine's allocator (see engine/src/main.rs), here too: the engines a knee search
/// starts in this process and the control server must allocate as `engine serve` does for
/// the comparison to stay matched.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "bench-harness", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a running engine at a fixed offered rate (open loop) and record latency from
    /// each message's intended send time. Never blocks on a connection: messages a full
    /// connection cannot take wait for it (latency still from their intended time) and are
    /// refused and counted past --max-backlog, and the run ends at warmup +
    /// duration + drain whatever the engine does. Exits 1 if any message was lost or
    /// corrupted, 2 if the run was saturated (achieved < 95 % of --rate) unless
    /// --allow-saturation.
    Run(bench_harness::cli::RunArgs),
    /// Find each batch configuration's knee: the highest open-loop rate that holds a p99
    /// target with nothing lost (in-process engines, ramp then bisection). Writes
    /// knee.md/.csv/.json and a p99-against-achieved-rate plot. A knee whose first failing
    /// rate found the generators themselves sending late by half the p99 target is marked
    /// harness-limited: a lower bound for the server's.
    Knee(bench_harness::cli::KneeArgs),
    /// Measure the raw UDP echo ceiling on the engine's socket setup: an in-process echo
    /// server (per-datagram or batched I/O, one pinned thread) driven open loop by batched
    /// generator threads, with the same knee search and verdict as `knee` (or one run per
    /// io mode with --rate). Writes ceiling.md, ceiling-runs.csv, ceiling.json and, for a
    /// search, ceiling-knee.csv and a plot.
    Ceiling(bench_harness::cli::CeilingArgs),
    /// Start an engine per batch configuration (in-process), run the same load against
    /// each, and write per-run directories, a comparison table and plots.
    Sweep(bench_harness::cli::SweepArgs),
    /// Serve qme/1 with tokio + quinn (the engine's protocol code over another QUIC stack):
    /// the matched control for throughput comparisons. Echo, relay and ERROR records as the
    /// engine; prints `listening on ADDR with N thread(s); peer id HEX`; drains on
    /// SIGINT/SIGTERM.
    ControlServer(bench_harness::control::ControlArgs),
    /// Compare runs: writes comparison.md/.csv and percentile and throughput plots.
    Compare {
        /// Run directories (summary.json + latency.hlog), .hlog files (ns) or .hgrm files (ms).
        #[arg(required = true, value_name = "A.hgrm|A.hlog|DIR")]
        inputs: Vec<PathBuf>,
        /// Directory for the table and plots (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Put one performance run on one page (scripts/perf.sh calls it): the knees of the
    /// engine, the control and the raw UDP ceiling side by side with their ratios, system
    /// calls per message, the adaptive-batching check and the machine. Reads the outputs of
    /// knee, ceiling, run --count-syscalls and sweep; writes performance.md/.json/.svg/.png.
    PerfReport(bench_harness::cli::PerfReportArgs),
    /// Measure the machine's stall floor: a thread per core spins reading the clock, and
    /// every gap longer than --threshold is time that core did not run it (on a virtual
    /// machine, often time the hypervisor took without counting it as steal). Run it on
    /// the idle machine before reading a knee: such stalls reach every p99. Writes
    /// stalls.md and stalls.json.
    Stalls(bench_harness::cli::StallsArgs),
}

/// Log filter used when `RUST_LOG` is unset: the warnings of the in-process engines
/// (`sweep`, `knee`) reach stderr without drowning the harness's own output.
const DEFAULT_LOG_FILTER: &str = "warn";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(a) => Ok(code(bench_harness::cli::run_cmd(&a)?)),
        Command::Sweep(a) => Ok(code(bench_harness::cli::sweep_cmd(&a)?)),
        Command::Knee(a) => Ok(code(bench_harness::cli::knee_cmd(&a)?)),
        Command::Ceiling(a) => Ok(code(bench_harness::cli::ceiling_cmd(&a)?)),
        Command::PerfReport(a) => Ok(code(bench_harness::cli::perf_report_cmd(&a)?)),
        Command::Stalls(a) => Ok(code(bench_harness::cli::stalls_cmd(&a)?)),
        Command::ControlServer(a) => Ok(code(bench_harness::control::serve_cmd(&a)?)),
        Command::Compare { inputs, out } => {
            let output = bench_harness::compare::compare_outputs(&inputs, &out)
                .with_context(|| format!("comparing {} input(s)", inputs.len()))?;
            print!("{}", output.markdown);
            println!();
            for file in &output.files {
                println!("wrote {}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}
