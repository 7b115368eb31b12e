//! `bench-harness`: open-loop load generator for the engine (`run`, `sweep`: not built yet)
//! and comparison of finished runs (`compare`).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench-harness", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one load configuration (not built yet).
    Run {
        /// Arguments for the future load driver.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a sweep of load configurations (not built yet).
    Sweep {
        /// Arguments for the future load driver.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compare runs: writes comparison.md/.csv and percentile and throughput plots.
    Compare {
        /// Run directories (summary.json + latency.hlog), .hlog files (ns) or .hgrm files (ms).
        #[arg(required = true, value_name = "A.hgrm|A.hlog|DIR")]
        inputs: Vec<PathBuf>,
        /// Directory for the table and plots (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run { .. } | Command::Sweep { .. } => {
            eprintln!(
                "bench-harness: `run` and `sweep` are not built yet; use `engine ping` to measure \
                 round trips"
            );
            Ok(ExitCode::from(2))
        }
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
