//! CPU steal time: on a virtual machine, time the hypervisor gave this machine's vCPUs to
//! someone else. A vCPU that is taken away mid-run stalls whatever runs on it, engine or
//! harness, and the stall shows up as latency no server change can remove; runs report it
//! so that a tail can be told apart from the engine's own.
//!
//! ```
//! let text = "cpu  10 0 5 100 0 0 1 7 0 0\ncpu0 5 0 2 50 0 0 1 3 0 0\n";
//! assert_eq!(bench_harness::steal::parse_ticks(text), Some(7));
//! ```

use std::time::Duration;

/// Steal ticks of the aggregate `cpu` line of `/proc/stat` text (the sum over all CPUs;
/// the 8th value after the name), or `None` when the line is missing or malformed.
pub fn parse_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

fn ticks_now() -> Option<u64> {
    parse_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn tick() -> Duration {
    // SAFETY: sysconf reads a constant of the running system; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs(1) / u32::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100)
}

/// Steal time counted from when [`StealClock::start`] ran.
#[derive(Debug, Clone, Copy)]
pub struct StealClock {
    ticks: Option<u64>,
}

impl StealClock {
    /// Starts counting (nothing is counted where `/proc/stat` cannot be read).
    pub fn start() -> StealClock {
        StealClock { ticks: ticks_now() }
    }

    /// CPU time stolen from all of this machine's CPUs together since the start, or `None`
    /// where it cannot be read.
    pub fn stolen(&self) -> Option<Duration> {
        let (a, b) = (self.ticks?, ticks_now()?);
        Some(tick() * u32::try_from(b.saturating_sub(a)).unwrap_or(u32::MAX))
    }
}

/// Steal above this share of one CPU's time during a run is worth a note next to its
/// latencies, and makes a failing search run count as disturbed (one 10 ms tick per
/// second is enough to move a p99).
pub const NOTE_FRACTION: f64 = 0.01;

/// `stolen_ms` over a run of `wall_s` seconds, as a share of one CPU's time.
pub fn share(stolen_ms: f64, wall_s: f64) -> f64 {
    stolen_ms / 1000.0 / wall_s.max(1e-9)
}

/// Whether `stolen_ms` over `wall_s` is above [`NOTE_FRACTION`].
pub fn disturbs(stolen_ms: f64, wall_s: f64) -> bool {
    share(stolen_ms, wall_s) > NOTE_FRACTION
}

/// The note printed under a run whose machine lost `stolen_ms` of CPU time over `wall_s`
/// seconds, if it is worth one.
pub fn note(stolen_ms: f64, wall_s: f64) -> Option<String> {
    disturbs(stolen_ms, wall_s).then(|| {
        format!(
            "note: the hypervisor took {stolen_ms:.0} ms of CPU time from this machine during the run \
             ({:.1} % of one CPU); stalls of that kind reach the latency tail whatever the server does",
            share(stolen_ms, wall_s) * 100.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_value_of_the_aggregate_line() {
        let text = "cpu  269055 0 67875 678668 81523 0 14959 5502 0 0\n\
                    cpu0 133316 0 34276 306375 76720 0 5743 2836 0 0\n";
        assert_eq!(parse_ticks(text), Some(5502));
        // Per-CPU lines alone, a short line or a non-number: nothing.
        assert_eq!(parse_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_ticks("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(parse_ticks("cpu  1 2 3 4 5 6 7 x 0\n"), None);
    }

    #[test]
    fn a_note_only_above_one_percent_of_a_cpu() {
        assert!(note(100.0, 10.0).is_none());
        assert!(!disturbs(100.0, 10.0) && disturbs(110.0, 10.0));
        let n = note(310.0, 10.0).expect("a note");
        assert!(n.contains("310 ms") && n.contains("3.1 %"), "{n}");
    }

    #[test]
    fn the_clock_reads_this_machine() {
        // /proc/stat exists on every Linux machine the harness runs on.
        let c = StealClock::start();
        assert!(c.stolen().is_some());
    }
}
