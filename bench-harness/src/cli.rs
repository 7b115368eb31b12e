//! The `run` and `sweep` subcommands: argument parsing, progress display, tables.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::load::{self, LoadConfig, LoadResult, Mode, Progress};
use crate::output::{self, RunMeta};
use crate::summary::Summary;
use crate::sweep::{self, SweepConfig};
use crate::syscalls::{self, ProcessCount, SyscallReport};

/// Parses `0`, `500us`, `50ms`, `2s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 0, 500us, 50ms, 2s)"))
}

/// Parses a warm-up, measured duration or drain: at most [`load::MAX_PHASE`] (24 h), so the
/// run's deadline cannot overflow the clock.
fn parse_phase(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > load::MAX_PHASE {
        Err(format!("must be at most 24h: {s}"))
    } else {
        Ok(d)
    }
}

/// Parses `--max-backlog`: at least [`load::MIN_BACKLOG`] (1 ms), below which nearly every
/// message a connection does not take at once would be refused.
fn parse_max_backlog(s: &str) -> Result<Duration, String> {
    let d = parse_phase(s)?;
    if d < load::MIN_BACKLOG {
        Err(format!(
            "must be at least 1ms (a shorter bound refuses nearly everything): {s}"
        ))
    } else {
        Ok(d)
    }
}

/// Parses `--message-size`: room for the payload header, and no more than an engine
/// accepts ([`load::MAX_MESSAGE_SIZE`]); each generator allocates one buffer of it.
fn parse_message_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("not a size in bytes: {s}"))?;
    let range = load::PAYLOAD_HEADER..=load::MAX_MESSAGE_SIZE;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "message size must be {}..={} bytes (sequence number and intended send time \
             first; the engine's limit last): {s}",
            range.start(),
            range.end()
        ))
    }
}

/// The warning for `generators` generator threads beside `server` threads of an in-process
/// server on a machine with `cores` cores (0: unknown): with more threads than cores the
/// pinning wraps around, generators share cores with the server, and the run measures
/// both slowing each other.
fn shared_cores_warning(generators: usize, server: usize, cores: usize) -> Option<String> {
    (cores > 0 && generators + server > cores).then(|| {
        format!(
            "warning: {generators} generator thread(s) and {server} server thread(s) on {cores} \
             core(s): generators share cores with the server, so latency and rate include \
             their contention"
        )
    })
}

/// Prints [`shared_cores_warning`] for this machine to stderr, if it applies.
fn warn_if_cores_shared(generators: usize, server: usize) {
    let cores = core_affinity::get_core_ids().map_or(0, |c| c.len());
    if let Some(w) = shared_cores_warning(generators, server, cores) {
        eprintln!("{w}");
    }
}

/// Parses a rate in messages (datagrams) per second: above zero and at most
/// [`load::MAX_RATE`], which no generator reaches, so a typo cannot ask for a schedule of
/// nonsense.
fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.trim().parse().map_err(|_| format!("not a number: {s}"))?;
    if !(r.is_finite() && r > 0.0) {
        Err(format!("rate must be above zero: {s}"))
    } else if r > load::MAX_RATE {
        Err(format!(
            "rate must be at most {:.0} (100 million) per second: {s}",
            load::MAX_RATE
        ))
    } else {
        Ok(r)
    }
}

/// Echo or relay, for the command line.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ModeArg {
    /// Round trip through the node's echo handler.
    Echo,
    /// One harness peer to another through the engine (one-way latency).
    Relay,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Echo => Mode::Echo,
            ModeArg::Relay => Mode::Relay,
        }
    }
}

/// The load shape shared by `run` and `sweep`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Generator threads, each pinned to its own core (taken from the last core down);
    /// connections are spread over them. `--cores` is an older name for it. `sweep` and
    /// `knee` warn when these and the engine's shards outnumber the cores (they then share).
    #[arg(long, visible_alias = "cores", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Client connections (peers), spread over the harness threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Measured duration, after the warm-up (at most 24h).
    #[arg(long, default_value = "10s", value_parser = parse_phase)]
    pub duration: Duration,
    /// Warm-up: load is offered but not recorded (at most 24h).
    #[arg(long, default_value = "2s", value_parser = parse_phase)]
    pub warmup: Duration,
    /// Payload bytes per message: at least 16 (sequence number and intended send time), at
    /// most 16777155 (the most an engine accepts; `engine serve` answers messages above its
    /// --max-message-size, 64 KiB by default, with error records).
    #[arg(long, default_value_t = 64, value_parser = parse_message_size)]
    pub message_size: usize,
    /// echo: round trip through the node's echo handler; relay: one harness peer to
    /// another through the engine, one-way latency on the shared clock.
    #[arg(long, value_enum, default_value_t = ModeArg::Echo)]
    pub mode: ModeArg,
    /// How long to wait for outstanding messages after the schedule ends; what has not
    /// arrived by then counts as lost (at most 24h).
    #[arg(long, default_value = "5s", value_parser = parse_phase)]
    pub drain: Duration,
    /// How long a due message may wait for its connection to take it before it is refused.
    /// A connection holding 64 KiB the server has not taken (back-pressure) defers its next
    /// messages and sends them as soon as it can, their latency still counted from
    /// their intended time (what an application that buffers would see); one not taken
    /// this long after its intended time is refused (counted, not sent), and so is one the
    /// generator itself got to this late (its lateness then counts in the harness lag).
    /// At least 1ms, shorter than --drain.
    // The default is load::MAX_BACKLOG, which library callers get.
    #[arg(long, default_value = "100ms", value_parser = parse_max_backlog)]
    pub max_backlog: Duration,
    /// Do not pin harness threads.
    #[arg(long)]
    pub no_pin: bool,
}

impl LoadArgs {
    fn to_config(&self, target: SocketAddr, rate: f64) -> LoadConfig {
        LoadConfig {
            target,
            threads: self.threads as usize,
            connections: self.connections as usize,
            rate,
            duration: self.duration,
            warmup: self.warmup,
            message_size: self.message_size,
            mode: self.mode.into(),
            drain: self.drain,
            pin: !self.no_pin,
            max_backlog: self.max_backlog,
        }
    }
}

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

/// A progress bar on a terminal; nothing otherwise.
fn progress_bar(total: Duration, progress: Arc<Progress>) -> Option<std::thread::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < total {
            bar.set_position(start.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "sent {} received {}",
                progress.sent.load(Ordering::Relaxed),
                progress.received.load(Ordering::Relaxed)
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    }))
}

/// `, steal N ms` for a step line when the hypervisor took CPU time during it.
fn steal_part(ms: f64) -> String {
    if ms > 0.0 {
        format!(", steal {ms:.0} ms")
    } else {
        String::new()
    }
}

/// `, N disturbed runs made again` for a step line.
fn disturbed_part(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => ", 1 run disturbed by steal made again".into(),
        n => format!(", {n} runs disturbed by steal made again"),
    }
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
    let runs = sweep::sweep(&cfg, |r| {
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
    let out = crate::compare::compare_outputs(&sweep::dirs(&runs), &a.out)?;
    println!();
    println!("{}", out.markdown);
    for f in &out.files {
        println!("wrote {}", f.display());
    }
    Ok(if bad > 0 { 1 } else { 0 })
}

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
    /// p99 latency (from intended send time) a rate must hold.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub p99_target: Duration,
    /// First rate tried, messages per second (at most 100,000,000, as every rate).
    #[arg(long, default_value = "5000", value_parser = parse_rate)]
    pub min_rate: f64,
    /// Highest rate tried, messages per second.
    #[arg(long, default_value = "4000000", value_parser = parse_rate)]
    pub max_rate: f64,
    /// Stop when the lowest failing rate is within this fraction above the knee.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Most rates tried per configuration.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub max_steps: u32,
    /// Runs per rate: a rate holds only if every run holds (a failing run ends the rate's
    /// runs early). Near the knee single runs on a shared machine disagree; 2 or 3 gives a
    /// knee that repeats.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// Failing runs per rate that are discarded and made again because the hypervisor took
    /// more than 1 % of one CPU's time during them (CPU steal, from /proc/stat): such a
    /// stall is the machine's, not the server's. Step lines count them ("disturbed"); a
    /// discarded run keeps its directory, the run made again writes to retryN/ below it; 0
    /// keeps every run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub steal_retries: u32,
    /// After a rate fails for a reason other than saturation (p99, loss, refusals), try up
    /// to this many doublings above it before settling below it (fewer at --max-rate or
    /// when --max-steps runs out). A server can fail in a band of rates, where a stall
    /// leaves a backlog its little headroom drains slowly, and hold above it, where its
    /// batches fill; then the knee is the highest rate that held and the table lists the
    /// rates tried below it that failed. 0 stops at the first failure.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=8))]
    pub probe_above: u32,
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
        search: crate::knee::SearchParams {
            p99_target: a.p99_target,
            min_rate: a.min_rate,
            max_rate: a.max_rate,
            precision: a.precision,
            max_steps: a.max_steps as usize,
            repeat: a.repeat as usize,
            steal_retries: a.steal_retries as usize,
            probe_above: a.probe_above as usize,
        },
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
    print!("{}", crate::knee::markdown(&knees, a.p99_target));
    let files = crate::knee::write(&a.out, &knees, a.p99_target)
        .map_err(|e| anyhow::anyhow!("writing the knee results: {e}"))?;
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(0)
}

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
    /// p99 latency (from intended send time) a rate must hold, as in `knee`.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub p99_target: Duration,
    /// First rate the search tries, datagrams per second (at most 100,000,000, as every
    /// rate).
    #[arg(long, default_value = "10000", value_parser = parse_rate)]
    pub min_rate: f64,
    /// Highest rate the search tries, datagrams per second.
    #[arg(long, default_value = "4000000", value_parser = parse_rate)]
    pub max_rate: f64,
    /// Stop when the lowest failing rate is within this fraction above the knee.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Most rates tried per io mode.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub max_steps: u32,
    /// Runs per rate: a rate holds only if every run holds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// Failing runs per rate that are discarded and made again because the hypervisor took
    /// more than 1 % of one CPU's time during them (CPU steal, from /proc/stat): such a
    /// stall is the machine's, not the server's. Step lines count them ("disturbed"); a
    /// discarded run keeps its directory, the run made again writes to retryN/ below it; 0
    /// keeps every run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub steal_retries: u32,
    /// After a rate fails for a reason other than saturation (p99, loss, refusals), try up
    /// to this many doublings above it before settling below it (fewer at --max-rate or
    /// when --max-steps runs out). A server can fail in a band of rates, where a stall
    /// leaves a backlog its little headroom drains slowly, and hold above it, where its
    /// batches fill; then the knee is the highest rate that held and the table lists the
    /// rates tried below it that failed. 0 stops at the first failure.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=8))]
    pub probe_above: u32,
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
    use crate::ceiling::{self, CeilingConfig};
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
        search: crate::knee::SearchParams {
            p99_target: a.p99_target,
            min_rate: a.min_rate,
            max_rate: a.max_rate,
            precision: a.precision,
            max_steps: a.max_steps as usize,
            repeat: a.repeat as usize,
            steal_retries: a.steal_retries as usize,
            probe_above: a.probe_above as usize,
        },
        out: a.out.clone(),
    };
    let report = ceiling::ceiling(&cfg, |r, v| {
        let s = &r.summary;
        println!(
            "{} @{:.0}/s: sent {}, received {}, lost {}, achieved {:.0}/s, p99 {:.3} ms, lag p99 {:.3} ms, \
             server {:.1} datagrams per receive call{}: {}",
            ceiling::label(r.io),
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
    print!("{}", ceiling::markdown(&report));
    for f in ceiling::write(&a.out, &report)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_above_zero_and_at_most_the_maximum() {
        assert_eq!(parse_rate(" 2000 "), Ok(2000.0));
        assert_eq!(parse_rate("1e8"), Ok(load::MAX_RATE));
        for bad in ["0", "-1", "nan", "inf", "1.0000001e8", "1e12", "x"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(parse_rate("1e9").is_err_and(|e| e.contains("at most 100000000")));
    }

    #[test]
    fn phases_backlog_and_message_size_are_bounded() {
        assert_eq!(parse_phase("0"), Ok(Duration::ZERO));
        assert_eq!(parse_phase("24h"), Ok(load::MAX_PHASE));
        assert!(parse_phase("24h 1s").is_err_and(|e| e.contains("at most 24h")));
        assert!(parse_phase("100000000000s").is_err());
        assert_eq!(parse_max_backlog("1ms"), Ok(load::MIN_BACKLOG));
        for bad in ["0", "999us", "25h"] {
            assert!(parse_max_backlog(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_message_size("16"), Ok(16));
        assert_eq!(parse_message_size("16777155"), Ok(16_777_155));
        assert_eq!(load::MAX_MESSAGE_SIZE, 16_777_155);
        for bad in ["15", "0", "16777156", "18446744073709551615", "-1", "64k"] {
            assert!(parse_message_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generators_sharing_cores_with_the_server_are_warned_about() {
        assert_eq!(shared_cores_warning(1, 1, 2), None);
        assert_eq!(shared_cores_warning(3, 1, 4), None);
        // The core count is unknown: nothing to say.
        assert_eq!(shared_cores_warning(8, 8, 0), None);
        let w = shared_cores_warning(2, 1, 2).unwrap();
        assert!(w.contains("share cores with the server"), "{w}");
    }

    /// The bounds hold on the command line of every subcommand that drives a load.
    #[test]
    fn subcommands_reject_out_of_bound_values() {
        use clap::Parser;
        #[derive(Parser)]
        enum Cli {
            Run(RunArgs),
            Sweep(SweepArgs),
            Knee(KneeArgs),
            Ceiling(CeilingArgs),
        }
        let target = ["--target", "127.0.0.1:1"];
        let cases: [(&str, &[&str]); 9] = [
            ("run", &["--rate", "1e9"]),
            ("run", &["--message-size", "20000000"]),
            ("run", &["--max-backlog", "0"]),
            ("run", &["--duration", "1000d"]),
            ("sweep", &["--warmup", "25h"]),
            ("sweep", &["--rates", "1000,1e10"]),
            ("knee", &["--max-rate", "1e9"]),
            ("knee", &["--drain", "25h"]),
            ("ceiling", &["--duration", "25h"]),
        ];
        for (cmd, args) in cases {
            let mut argv = vec!["bench-harness", cmd];
            if cmd == "run" {
                argv.extend(target);
            }
            // Without the value out of bounds the command line parses.
            assert!(Cli::try_parse_from(&argv).is_ok(), "{argv:?}");
            argv.extend(args);
            assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?}");
        }
        let mut ok = vec!["bench-harness", "run"];
        ok.extend(target);
        ok.extend([
            "--rate",
            "1e8",
            "--max-backlog",
            "1ms",
            "--message-size",
            "16",
        ]);
        assert!(Cli::try_parse_from(&ok).is_ok());
    }
}
