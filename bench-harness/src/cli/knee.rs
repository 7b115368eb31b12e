//! `bench-harness knee`: the knee search per batch configuration, its step lines and
//! table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::*;

/// `bench-harness knee`: per batch configuration, the highest open-loop rate that holds a
/// p99 target with nothing lost (ramp by doubling, a bounded probe past a failure, then
/// bisection; a fresh engine per run).
#[derive(Args, Debug, Clone)]
pub struct KneeArgs {
    /// Engine batch sizes (comma separated), one search each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    pub batch_sizes: Vec<u32>,
    /// Engine batch timeouts (comma separated; 0 = end of processing turn).
    #[arg(long, value_delimiter = ',', default_value = "0", value_parser = parse_duration)]
    pub batch_timeouts: Vec<Duration>,
    /// First rate tried, messages per second (at most 100,000,000, as every rate).
    #[arg(long, default_value = "5000", value_parser = parse_rate)]
    pub min_rate: f64,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Shards of each engine the search starts (pinned from core 0); with `--server
    /// control`, the control server's threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub engine_shards: u32,
    /// The server each run starts: the engine, or the tokio + quinn control server
    /// (`control-server`, the same protocol and batch policy) for a side-by-side knee.
    #[arg(long, value_enum, default_value_t = crate::sweep::ServerKind::Engine)]
    pub server: crate::sweep::ServerKind,
    /// Where the step run directories, knee.md/.csv/.json and knee.svg/.png go.
    #[arg(long, default_value = "knee-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Runs `bench-harness knee`; prints each step and the knee table.
pub fn knee_cmd(a: &KneeArgs) -> anyhow::Result<i32> {
    warn_if_cores_shared(a.load.threads as usize, a.engine_shards as usize);
    let placeholder: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = crate::knee::KneeConfig {
        batch_sizes: a.batch_sizes.clone(),
        batch_timeouts: a.batch_timeouts.clone(),
        search: a.search.params(a.min_rate),
        engine_shards: a.engine_shards as usize,
        server: a.server,
        load: a.load.to_config(placeholder, 1.0),
        out: a.out.clone(),
    };
    let knees = crate::knee::knee(&cfg, |config, s| {
        println!(
            "{config} @{:.0}/s: achieved {:.0}/s, p99 {:.3} ms{}{}{}: {}",
            s.rate,
            s.achieved,
            s.p99_ms,
            if s.deferred > 0 {
                format!(", {} deferred by back-pressure", s.deferred)
            } else {
                String::new()
            },
            steal_part(s.steal_ms),
            disturbed_part(s.disturbed),
            if s.held {
                "holds".to_string()
            } else {
                format!("fails ({})", s.why)
            }
        );
    })?;
    println!();
    print!("{}", crate::knee::markdown(&knees, a.search.p99_target));
    let files = crate::knee::write(&a.out, &knees, a.search.p99_target)
        .map_err(|e| anyhow::anyhow!("writing the knee results: {e}"))?;
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(0)
}
