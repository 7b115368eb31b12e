//! The machine's stall floor: one pinned thread per core that never sleeps reads the clock
//! in a loop, and every gap between two readings longer than a threshold is time that core
//! did not run it. On an idle machine that is time the hypervisor (or firmware) took the
//! vCPU away, often without any of it showing as steal in `/proc/stat`. A message in
//! flight through an engine or harness on that core waits out the stall, and near
//! saturation the backlog it leaves takes longer still to drain, so this floor bounds the
//! p99 any server can hold on the machine: measure it before reading a knee.
//!
//! ```
//! use std::time::Duration;
//! use bench_harness::stalls::Gaps;
//! let mut g = Gaps::new(Duration::from_micros(100));
//! let ms = Duration::from_millis(1);
//! for t in [0, 1, 2, 7_000, 7_001].map(Duration::from_micros) {
//!     g.observe(t);
//! }
//! assert_eq!(g.stalls, 1);
//! assert_eq!(g.longest, Duration::from_micros(6_998));
//! assert_eq!(g.over_1ms, 1);
//! assert!(g.stalled < 7 * ms);
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Default gap below which a clock reading counts as continuous running.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_micros(100);

/// Gaps between successive clock readings of one spinning thread.
#[derive(Debug, Clone)]
pub struct Gaps {
    threshold: Duration,
    last: Option<Duration>,
    /// Gaps longer than the threshold.
    pub stalls: u64,
    /// Of those, longer than 1 ms.
    pub over_1ms: u64,
    /// Of those, longer than 5 ms.
    pub over_5ms: u64,
    /// The longest gap.
    pub longest: Duration,
    /// All stalls together.
    pub stalled: Duration,
}

impl Gaps {
    /// Counts gaps longer than `threshold`.
    pub fn new(threshold: Duration) -> Gaps {
        Gaps {
            threshold,
            last: None,
            stalls: 0,
            over_1ms: 0,
            over_5ms: 0,
            longest: Duration::ZERO,
            stalled: Duration::ZERO,
        }
    }

    /// One clock reading, as time since any fixed origin (readings never go backwards).
    pub fn observe(&mut self, t: Duration) {
        if let Some(last) = self.last {
            let gap = t.saturating_sub(last);
            if gap > self.threshold {
                self.stalls += 1;
                self.stalled += gap;
                self.longest = self.longest.max(gap);
                if gap > Duration::from_millis(1) {
                    self.over_1ms += 1;
                }
                if gap > Duration::from_millis(5) {
                    self.over_5ms += 1;
                }
            }
        }
        self.last = Some(t);
    }
}

/// What one core's spinning thread saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CoreStalls {
    /// The core the thread was pinned to (`None` when pinning failed or was not possible).
    pub core: Option<usize>,
    /// How long it ran, seconds.
    pub duration_s: f64,
    /// Gaps counted as stalls were longer than this, microseconds.
    pub threshold_us: u64,
    /// Stalls.
    pub stalls: u64,
    /// Stalls longer than 1 ms.
    pub over_1ms: u64,
    /// Stalls longer than 5 ms.
    pub over_5ms: u64,
    /// The longest stall, milliseconds.
    pub longest_ms: f64,
    /// All stalls together, milliseconds.
    pub stalled_ms: f64,
}

impl CoreStalls {
    fn from_gaps(core: Option<usize>, duration: Duration, g: &Gaps) -> CoreStalls {
        CoreStalls {
            core,
            duration_s: duration.as_secs_f64(),
            threshold_us: g.threshold.as_micros() as u64,
            stalls: g.stalls,
            over_1ms: g.over_1ms,
            over_5ms: g.over_5ms,
            longest_ms: g.longest.as_secs_f64() * 1000.0,
            stalled_ms: g.stalled.as_secs_f64() * 1000.0,
        }
    }
}

/// Spins one thread per core (all cores at once) for `duration` and reports each.
/// Nothing else should run meanwhile: the threads take every core.
pub fn measure(duration: Duration, threshold: Duration) -> std::io::Result<Vec<CoreStalls>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let targets: Vec<Option<core_affinity::CoreId>> = if cores.is_empty() {
        vec![None]
    } else {
        cores.into_iter().map(Some).collect()
    };
    let handles = targets
        .into_iter()
        .map(|core| {
            std::thread::Builder::new()
                .name("stall-probe".into())
                .spawn(move || {
                    let pinned = core.filter(|c| core_affinity::set_for_current(*c));
                    let mut g = Gaps::new(threshold);
                    let start = Instant::now();
                    loop {
                        let t = start.elapsed();
                        if t >= duration {
                            break;
                        }
                        g.observe(t);
                    }
                    CoreStalls::from_gaps(pinned.map(|c| c.id), duration, &g)
                })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(handles.into_iter().filter_map(|h| h.join().ok()).collect())
}

/// A Markdown table of the cores' stalls.
pub fn markdown(cores: &[CoreStalls]) -> String {
    let mut s = String::from(
        "| core | seconds | stalls | over 1 ms | over 5 ms | longest (ms) | stalled (ms) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for c in cores {
        s.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {:.3} | {:.1} |\n",
            c.core.map_or("-".to_string(), |i| i.to_string()),
            c.duration_s,
            c.stalls,
            c.over_1ms,
            c.over_5ms,
            c.longest_ms,
            c.stalled_ms
        ));
    }
    s
}

/// One sentence for a performance page: stalls over 1 ms per second per core, the longest.
pub fn sentence(cores: &[CoreStalls]) -> Option<String> {
    let secs: f64 = cores.iter().map(|c| c.duration_s).sum();
    if cores.is_empty() || secs <= 0.0 {
        return None;
    }
    let over: u64 = cores.iter().map(|c| c.over_1ms).sum();
    let longest = cores.iter().map(|c| c.longest_ms).fold(0.0, f64::max);
    let stalled: f64 = cores.iter().map(|c| c.stalled_ms).sum();
    Some(format!(
        "Stall floor (bench-harness stalls, a spinning thread on each of {} cores for {:.0} s): \
         {:.1} stalls over 1 ms per core-second, the longest {:.1} ms, {:.2} % of the time \
         stalled in all.",
        cores.len(),
        secs / cores.len() as f64,
        over as f64 / secs,
        longest,
        stalled / 10.0 / secs
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn gaps_at_or_below_the_threshold_are_not_stalls() {
        let mut g = Gaps::new(us(100));
        for t in [0, 100, 200, 300] {
            g.observe(us(t));
        }
        assert_eq!((g.stalls, g.stalled), (0, Duration::ZERO));
    }

    #[test]
    fn stalls_are_counted_by_length() {
        let mut g = Gaps::new(us(100));
        // Gaps: 150 us, 2 ms, 6 ms, then continuous.
        for t in [0, 150, 2_150, 8_150, 8_151] {
            g.observe(us(t));
        }
        assert_eq!(g.stalls, 3);
        assert_eq!(g.over_1ms, 2);
        assert_eq!(g.over_5ms, 1);
        assert_eq!(g.longest, us(6_000));
        assert_eq!(g.stalled, us(8_150));
    }

    #[test]
    fn the_sentence_is_per_core_second() {
        let c = CoreStalls {
            core: Some(0),
            duration_s: 10.0,
            threshold_us: 100,
            stalls: 40,
            over_1ms: 20,
            over_5ms: 1,
            longest_ms: 6.5,
            stalled_ms: 50.0,
        };
        let s = sentence(&[c.clone(), CoreStalls { core: Some(1), ..c }]).unwrap();
        assert!(s.contains("2 cores for 10 s"), "{s}");
        assert!(s.contains("2.0 stalls over 1 ms per core-second"), "{s}");
        assert!(s.contains("the longest 6.5 ms"), "{s}");
        assert!(s.contains("0.50 % of the time"), "{s}");
        assert_eq!(sentence(&[]), None);
    }

    #[test]
    fn a_short_probe_reports_every_core() {
        let r = measure(Duration::from_millis(20), DEFAULT_THRESHOLD).unwrap();
        assert!(!r.is_empty());
        for c in &r {
            assert_eq!(c.threshold_us, 100);
            assert!(c.stalled_ms <= 20.0, "{c:?}");
        }
        assert!(markdown(&r).lines().count() == r.len() + 2);
    }
}
