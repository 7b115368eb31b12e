//! `bench-harness ceiling`: the raw UDP echo ceiling, one run per io mode or a knee
//! search, and its report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::*;

/// `bench-harness ceiling`: the raw UDP echo ceiling on the engine's socket setup.
#[derive(Args, Debug, Clone)]
pub struct CeilingArgs {
    /// Echo server I/O modes (comma separated), one row each: `per-datagram` (one
    /// recvfrom and one sendto per datagram), `batched` (recvmmsg/sendmmsg, up to 64 per
    /// call) or `offload` (batched with UDP GRO on receive and GSO on send, server and
    /// generators, as the shards do where the kernel has them).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "per-datagram,batched,offload"
    )]
    pub io: Vec<crate::ceiling::IoMode>,
    /// One run per io mode at this rate (datagrams per second, at most 100,000,000) instead
    /// of the knee search.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Generator threads, each pinned to its own core from the last core down (the server
    /// is on the first core), each with its own socket; the rate is split evenly.
    /// `--cores` is an older name for it. A warning says when these and the server
    /// outnumber the cores (they then share).
    #[arg(long, visible_alias = "cores", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// UDP payload bytes per datagram (16..=65507: sequence number and intended send time
    /// first).
    #[arg(long, default_value_t = 64)]
    pub message_size: usize,
    /// Measured duration of each run, after the warm-up (at most 24h).
    #[arg(long, default_value = "3s", value_parser = parse_phase)]
    pub duration: Duration,
    /// Warm-up of each run: datagrams are sent but not recorded (at most 24h).
    #[arg(long, default_value = "1s", value_parser = parse_phase)]
    pub warmup: Duration,
    /// How long to wait for replies after the schedule ends; what has not come back by then
    /// is lost (at most 24h).
    #[arg(long, default_value = "1s", value_parser = parse_phase)]
    pub drain: Duration,
    /// First rate the search tries, datagrams per second (at most 100,000,000, as every
    /// rate).
    #[arg(long, default_value = "10000", value_parser = parse_rate)]
    pub min_rate: f64,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Where the run directories, ceiling.md, ceiling-runs.csv, ceiling.json and (for a
    /// search) ceiling-knee.csv and ceiling.svg/.png go.
    #[arg(long, default_value = "ceiling-out")]
    pub out: PathBuf,
    /// Do not pin the server and generator threads.
    #[arg(long)]
    pub no_pin: bool,
    /// With --rate: exit 0 even when a run is saturated (loss still exits 1).
    #[arg(long)]
    pub allow_saturation: bool,
}

/// Runs `bench-harness ceiling`; prints each run and the report. With `--rate`, exits 1
/// when anything was lost or corrupted and 2 when a run was saturated (unless
/// `--allow-saturation`), as `run` does; a knee search exits 0.
pub fn ceiling_cmd(a: &CeilingArgs) -> anyhow::Result<i32> {
    use crate::ceiling::CeilingConfig;
    // One echo server thread.
    warn_if_cores_shared(a.threads as usize, 1);
    let cfg = CeilingConfig {
        io: a.io.clone(),
        load: LoadConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: a.threads as usize,
            connections: a.threads as usize,
            rate: a.rate.unwrap_or(a.min_rate),
            duration: a.duration,
            warmup: a.warmup,
            message_size: a.message_size,
            mode: Mode::Echo,
            drain: a.drain,
            pin: !a.no_pin,
            // Raw UDP has no back-pressure to wait for.
            max_backlog: crate::load::MAX_BACKLOG,
        },
        rate: a.rate,
        search: a.search.params(a.min_rate),
        out: a.out.clone(),
    };
    let report = crate::ceiling::ceiling(&cfg, |r, v| {
        let s = &r.summary;
        println!(
            "{} @{:.0}/s: sent {}, received {}, lost {}, achieved {:.0}/s, p99 {:.3} ms, lag p99 {:.3} ms, \
             server {:.1} datagrams per receive call{}: {}",
            crate::ceiling::label(r.io),
            s.config.rate,
            s.sent,
            s.received,
            s.lost,
            s.achieved_rate,
            s.latency_ms.p99,
            s.harness_lag_ms.p99,
            r.server.per_receive_call(),
            steal_part(s.steal_ms.unwrap_or(0.0)),
            match v {
                Ok(()) => "holds".to_string(),
                Err(why) => format!("fails ({why})"),
            }
        );
        if s.harness_lag_ms.p99 > 1.0 || s.refused > 0 {
            println!(
                "  note: the generators fell behind their schedule (lag p99 {:.3} ms, {} not sent): \
                 on loopback the sender pays for delivery too, so this rate is limited by the \
                 generators as much as by the server; try --threads",
                s.harness_lag_ms.p99, s.refused
            );
        }
        if let Some(n) = s.steal_note() {
            println!("  {n}");
        }
    })?;
    if let Some(r) = report.runs.first() {
        let (rcv, snd) = r.server_buffers;
        println!(
            "server socket (as the engine's): non-blocking, SO_RCVBUF {rcv} B, SO_SNDBUF {snd} B (as the kernel reports them)"
        );
    }
    println!();
    print!("{}", crate::ceiling::markdown(&report));
    for f in crate::ceiling::write(&a.out, &report)? {
        println!("wrote {}", f.display());
    }
    if a.rate.is_none() {
        return Ok(0);
    }
    let bad = report
        .runs
        .iter()
        .any(|r| r.summary.lost > 0 || r.summary.corrupted > 0);
    let saturated = report.runs.iter().any(|r| r.summary.saturated);
    Ok(if bad {
        eprintln!("datagrams were lost or corrupted");
        1
    } else if saturated && !a.allow_saturation {
        eprintln!("saturated (pass --allow-saturation to exit 0)");
        2
    } else {
        0
    })
}
