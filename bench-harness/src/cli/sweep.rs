//! `bench-harness sweep`: runs over a grid of batch configurations and rates against
//! fresh in-process servers, and the comparison table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::*;

/// `bench-harness sweep`: one engine per batch configuration, the same load against each.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Engine batch sizes to compare (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    pub batch_sizes: Vec<u32>,
    /// Engine batch timeouts to compare (comma separated; 0 = end of processing turn).
    #[arg(long, value_delimiter = ',', default_value = "0,1ms", value_parser = parse_duration)]
    pub batch_timeouts: Vec<Duration>,
    /// Offered rates to compare, messages per second (comma separated; each at most
    /// 100,000,000).
    #[arg(long, value_delimiter = ',', default_value = "2000,10000", value_parser = parse_rate)]
    pub rates: Vec<f64>,
    /// Shards of each engine the sweep starts (pinned from core 0).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub engine_shards: u32,
    /// Where run directories, the comparison table and the plots go.
    #[arg(long, default_value = "sweep-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Runs `bench-harness sweep`; prints the comparison table and names the plot files.
pub fn sweep_cmd(a: &SweepArgs) -> anyhow::Result<i32> {
    warn_if_cores_shared(a.load.threads as usize, a.engine_shards as usize);
    let placeholder: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = SweepConfig {
        batch_sizes: a.batch_sizes.clone(),
        batch_timeouts: a.batch_timeouts.clone(),
        rates: a.rates.clone(),
        engine_shards: a.engine_shards as usize,
        load: a.load.to_config(placeholder, 1.0),
        out: a.out.clone(),
    };
    let total = a.batch_sizes.len() * a.batch_timeouts.len() * a.rates.len();
    let mut n = 0;
    let mut bad = 0;
    let runs = crate::sweep::sweep(&cfg, |r| {
        n += 1;
        let l = &r.summary.latency_ms;
        println!(
            "[{n}/{total}] {}: achieved {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, refused {}, lost {}{}",
            r.label,
            r.summary.achieved_rate,
            l.p50,
            l.p99,
            l.max,
            r.summary.refused,
            r.summary.lost,
            if r.summary.saturated {
                ", SATURATED"
            } else {
                ""
            }
        );
        if r.summary.lost > 0 || r.summary.corrupted > 0 {
            bad += 1;
        }
    })?;
    let out = crate::compare::compare_outputs(&crate::sweep::dirs(&runs), &a.out)?;
    println!();
    println!("{}", out.markdown);
    for f in &out.files {
        println!("wrote {}", f.display());
    }
    Ok(if bad > 0 { 1 } else { 0 })
}
