//! `bench-harness run`: one open-loop run against a running engine, its printed summary
//! and exit code, and the optional count of a server's system calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::*;

/// `bench-harness run`: drive one engine at a fixed offered rate.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The engine to drive (for example one started with `engine serve`).
    #[arg(long)]
    pub target: SocketAddr,
    /// Messages per second offered in total (open loop: the schedule does not wait for
    /// replies); at most 100,000,000.
    #[arg(long, default_value = "1000", value_parser = parse_rate)]
    pub rate: f64,
    /// Where to write latency.hgrm, latency.hlog and summary.json.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Exit 0 even when the run is saturated (achieved below 95 % of --rate, or nothing
    /// measured). Loss still exits 1.
    #[arg(long)]
    pub allow_saturation: bool,
    /// Count the system calls and CPU time of this process (the server under test: an
    /// `engine serve` or `control-server` pid) and of the harness itself over the measured
    /// phase, with `perf stat -e raw_syscalls:sys_enter,task-clock`, and write them per
    /// message to syscalls.json.
    /// Needs `perf` (Debian's linux-perf) and permission to trace the process.
    #[arg(long, value_name = "PID")]
    pub count_syscalls: Option<u32>,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Prints one run's summary as a table.
pub fn print_summary(s: &Summary, r: Option<&LoadResult>) {
    let l = &s.latency_ms;
    println!(
        "offered {} ({:.0}/s asked), sent {}, refused {} (back-pressure, closed connection, or the \
         generator more than --max-backlog behind), achieved {:.0}/s over {:.2} s; \
         received {}, lost {}, corrupted {}, errors {}; wall time {:.2} s",
        s.offered,
        s.config.rate,
        s.sent,
        s.refused,
        s.achieved_rate,
        s.receive_window_s,
        s.received,
        s.lost,
        s.corrupted,
        s.errors.values().sum::<u64>(),
        s.wall_time_s
    );
    if s.deferred > 0 {
        println!(
            "deferred by back-pressure, then sent late: {} of the sent (their latency counts \
             from their intended time)",
            s.deferred
        );
    }
    if s.duplicates > 0 {
        println!(
            "duplicated replies (a second reply to one message, not counted as received): {}",
            s.duplicates
        );
    }
    if s.connection_errors > 0 {
        println!(
            "connections closed or failed during the run: {}",
            s.connection_errors
        );
    }
    if s.saturated {
        println!(
            "verdict: SATURATED: the engine did not keep up with {:.0}/s (achieved {:.0}/s, {:.0} %); \
             the latencies below describe an overloaded engine",
            s.config.rate,
            s.achieved_rate,
            100.0 * s.achieved_rate / s.config.rate.max(1e-9)
        );
    } else {
        println!("verdict: ok (achieved at least 95 % of the asked rate)");
    }
    println!("latency from intended send time (ms):");
    println!(
        "  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.mean
    );
    let lag = &s.harness_lag_ms;
    println!(
        "harness lag behind its schedule (ms): p50 {:.3}  p99 {:.3}  max {:.3}",
        lag.p50, lag.p99, lag.max
    );
    if lag.p99 > 1.0 {
        println!(
            "warning: the harness fell behind its schedule (p99 lag {:.3} ms): \
             latencies include its own delay; use more --threads or a lower --rate",
            lag.p99
        );
    }
    if let Some(q) = &s.quic {
        println!(
            "harness QUIC, {} connections, whole run: {} packets sent, {} lost ({:.3} %, {} spurious), \
             {} probe timeouts; srtt mean {:.3} ms, max rtt {:.3} ms; cwnd {}..{} B at the end",
            q.connections,
            q.packets_sent,
            q.packets_lost,
            100.0 * q.loss_fraction(),
            q.packets_spurious_lost,
            q.pto_count,
            q.srtt_ms_mean,
            q.rtt_ms_max,
            q.cwnd_min_bytes,
            q.cwnd_max_bytes
        );
    }
    if let Some(n) = s.steal_note() {
        println!("{n}");
    }
    if let Some(r) = r {
        for (k, v) in &r.errors {
            println!("  error {k}: {v}");
        }
    }
}

/// Runs `bench-harness run`; returns the process exit code: 1 when anything was lost,
/// corrupted or duplicated, 2 when the run was saturated (unless `--allow-saturation`), else 0.
pub fn run_cmd(a: &RunArgs) -> anyhow::Result<i32> {
    let cfg = a.load.to_config(a.target, a.rate);
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(cfg.warmup + cfg.duration, progress.clone());
    let counter = a
        .count_syscalls
        .map(|pid| count_syscalls(pid, cfg.duration, &a.out, progress.clone()));
    let result = load::run(&cfg, progress)?;
    if let Some(b) = bar {
        let _ = b.join();
    }
    // The run's results are written whatever happened to the count.
    let syscalls = counter.map(|c| {
        c.join()
            .map_err(|_| anyhow::anyhow!("the system call counter panicked"))
            .and_then(|r| r)
    });
    let meta = RunMeta {
        load: cfg,
        batch_size: None,
        batch_timeout: None,
    };
    let summary = output::write_run(&a.out, &meta, &result)?;
    print_summary(&summary, Some(&result));
    println!(
        "wrote {}/latency.hgrm, latency.hlog, summary.json",
        a.out.display()
    );
    if let Some(counted) = syscalls {
        let (window, server, harness) =
            counted.map_err(|e| e.context("counting system calls (--count-syscalls)"))?;
        let report = SyscallReport {
            window_s: window.as_secs_f64(),
            messages: result.sent,
            server,
            harness,
        };
        println!(
            "per message over the measured phase: system calls: server {:.2}, harness {:.2} ({} and {} calls for {} messages); server CPU {:.2} us ({:.0} msg/s per core at this cost); wrote {}",
            report.server_per_message(),
            report.harness_per_message(),
            server.syscalls,
            harness.syscalls,
            result.sent,
            report.server_cpu_us_per_message(),
            report.server_messages_per_core_s(),
            report.write_json(&a.out)?.display()
        );
    }
    Ok(exit_code(&summary, a.allow_saturation))
}

/// Counts `pid`'s and this process's system calls over the measured phase (from when the
/// load sets its start, for `duration`), on a thread of its own.
#[allow(clippy::type_complexity)]
fn count_syscalls(
    pid: u32,
    duration: Duration,
    out: &std::path::Path,
    progress: Arc<Progress>,
) -> std::thread::JoinHandle<anyhow::Result<(Duration, ProcessCount, ProcessCount)>> {
    let out = out.to_path_buf();
    std::thread::spawn(move || {
        std::fs::create_dir_all(&out)?;
        // Connecting comes first; the load sets the start once every connection is up.
        let wait_until = std::time::Instant::now() + Duration::from_secs(120);
        let start = loop {
            if let Some(t) = progress.measure_start.get() {
                break *t;
            }
            anyhow::ensure!(
                std::time::Instant::now() < wait_until,
                "the load never started its measured phase"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        std::thread::sleep(start.saturating_duration_since(std::time::Instant::now()));
        let server = syscalls::Counter::start(pid, duration, &out.join("perf-server.txt"))?;
        let harness =
            syscalls::Counter::start(std::process::id(), duration, &out.join("perf-harness.txt"))?;
        Ok((duration, server.finish()?, harness.finish()?))
    })
}

fn exit_code(s: &Summary, allow_saturation: bool) -> i32 {
    if s.lost > 0 || s.corrupted > 0 || s.duplicates > 0 {
        eprintln!(
            "{} lost, {} corrupted, {} duplicated",
            s.lost, s.corrupted, s.duplicates
        );
        1
    } else if s.saturated && !allow_saturation {
        eprintln!(
            "saturated: achieved {:.0}/s of {:.0}/s asked (pass --allow-saturation to exit 0)",
            s.achieved_rate, s.config.rate
        );
        2
    } else {
        0
    }
}
