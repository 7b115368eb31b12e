//! The subcommands' arguments and what each does with them: a module per subcommand
//! (`run`, `sweep`, `knee`, `ceiling`, and `stalls` with `perf-report`), with what they
//! share here: the value parsers and their bounds, the load arguments, the core-sharing
//! warning and the progress bar.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::load::{self, LoadConfig, LoadResult, Mode, Progress};
use crate::output::{self, RunMeta};
use crate::summary::Summary;
use crate::sweep::SweepConfig;
use crate::syscalls::{self, ProcessCount, SyscallReport};

mod ceiling;
mod knee;
mod report;
mod run;
mod sweep;

pub use ceiling::{CeilingArgs, ceiling_cmd};
pub use knee::{KneeArgs, knee_cmd};
pub use report::{PerfReportArgs, StallsArgs, perf_report_cmd, stalls_cmd};
pub use run::{RunArgs, print_summary, run_cmd};
pub use sweep::{SweepArgs, sweep_cmd};

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

/// What a rate search (`knee`, `ceiling`) is judged by and how far it goes, besides where
/// it starts (`--min-rate`, whose default each search sets).
#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// p99 latency (from intended send time) a rate must hold.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub p99_target: Duration,
    /// Highest rate tried, per second.
    #[arg(long, default_value = "4000000", value_parser = parse_rate)]
    pub max_rate: f64,
    /// Stop when the lowest failing rate is within this fraction above the knee.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Most rates tried per search (per batch configuration, or per io mode).
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
}

impl SearchArgs {
    /// The search's parameters, starting at `min_rate`.
    fn params(&self, min_rate: f64) -> crate::knee::SearchParams {
        crate::knee::SearchParams {
            p99_target: self.p99_target,
            min_rate,
            max_rate: self.max_rate,
            precision: self.precision,
            max_steps: self.max_steps as usize,
            repeat: self.repeat as usize,
            steal_retries: self.steal_retries as usize,
            probe_above: self.probe_above as usize,
        }
    }
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
