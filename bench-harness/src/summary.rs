//! `summary.json`: the machine-readable result of one run (configuration, counts, latency
//! percentiles), so sweeps can be compared and re-plotted without re-running.
//!
//! Histograms come in nanoseconds (the harness's recording unit); the summary stores
//! milliseconds, the unit people read and the one the comparison table uses.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// File name of the summary inside a run directory.
pub const SUMMARY_FILE: &str = "summary.json";
/// File name of the latency interval log inside a run directory.
pub const LATENCY_HLOG_FILE: &str = "latency.hlog";
/// Nanoseconds per millisecond: histograms record ns, summaries report ms.
pub const NS_PER_MS: f64 = 1_000_000.0;

/// Errors from reading or writing summaries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SummaryError {
    /// File access failed.
    #[error("summary file {path}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The JSON is malformed or does not match [`Summary`].
    #[error("summary JSON {path}")]
    Json {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: serde_json::Error,
    },
}

/// What the engine under test does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The server sends each message back to its sender.
    Echo,
    /// The server forwards each message to another connection.
    Relay,
}

/// The load that was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Server address, e.g. `127.0.0.1:4433`.
    pub target: String,
    /// Echo or relay.
    pub mode: Mode,
    /// Number of client connections.
    pub connections: u32,
    /// Target offered rate, messages per second over all connections.
    pub rate: f64,
    /// Measured duration in seconds (after warm-up).
    pub duration_s: f64,
    /// Warm-up in seconds, not measured.
    pub warmup_s: f64,
    /// Payload size in bytes.
    pub message_size: usize,
    /// Engine batch size under test, if batching is configured.
    pub batch_size: Option<u32>,
    /// Engine batch timeout in milliseconds, if batching is configured.
    pub batch_timeout_ms: Option<f64>,
    /// Generator threads (`--threads`; one per core). Named `cores` in `summary.json` files.
    pub cores: u32,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Percentiles of a histogram recorded in nanoseconds, converted to milliseconds
    /// (all zero for an empty histogram).
    ///
    /// ```
    /// use hdrhistogram::Histogram;
    /// let mut h = Histogram::<u64>::new(3).unwrap();
    /// for v in 1..=1000u64 { h.record(v * 1_000).unwrap(); } // 1 µs .. 1 ms
    /// let p = bench_harness::summary::Percentiles::from_histogram_ns(&h);
    /// // 3 significant digits: values are exact to within 0.1%
    /// assert!((p.p50 - 0.5).abs() < 0.0005);
    /// assert!((p.max - 1.0).abs() < 0.001);
    /// ```
    pub fn from_histogram_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / NS_PER_MS;
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: h.max() as f64 / NS_PER_MS,
            mean: h.mean() / NS_PER_MS,
        }
    }
}

/// Harness scheduling lag (how late the open-loop sender was against its schedule), in ms.
/// Large lag means the harness, not the server, limited the offered load.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LagPercentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl LagPercentiles {
    /// From a lag histogram recorded in nanoseconds.
    pub fn from_histogram_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        LagPercentiles {
            p50: h.value_at_quantile(0.5) as f64 / NS_PER_MS,
            p99: h.value_at_quantile(0.99) as f64 / NS_PER_MS,
            max: h.max() as f64 / NS_PER_MS,
        }
    }
}

/// Message counts from the measured part of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    /// Messages the schedule called for (sent + refused).
    pub offered: u64,
    /// Messages not sent because their connection did not take them within the backlog
    /// bound (back-pressure), had closed, or the generator was further behind than that.
    pub refused: u64,
    /// Messages sent late because their connection pushed back first (of `sent`).
    pub deferred: u64,
    /// Connections that closed or failed during the run.
    pub connection_errors: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages received back intact.
    pub received: u64,
    /// Messages never received.
    pub lost: u64,
    /// Messages received with a wrong payload.
    pub corrupted: u64,
    /// Second or later replies to one message (not counted as received).
    pub duplicates: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// How long a run took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    /// The measured phase of the schedule.
    pub measured: Duration,
    /// From the start of the measured phase to the later of its end and the arrival of the
    /// 99th-percentile measured reply (the window the achieved rate is computed over).
    pub receive_window: Duration,
    /// The whole run, connecting and closing included.
    pub wall: Duration,
    /// CPU time the hypervisor took from the machine during the run, where known.
    pub steal: Option<Duration>,
}

/// The harness's QUIC view of its connections over the whole run (connect to the end of
/// the drain): packet counts summed over connections, round-trip times and congestion
/// windows spread over them. Loss, timeouts or a window pinned low explain a latency tail
/// or a shortfall that the message counts alone do not.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct QuicStats {
    /// Connections these figures cover: those with an active path at the end of the run
    /// (a connection that failed is counted in `connection_errors` instead).
    pub connections: u32,
    /// QUIC packets the harness sent.
    pub packets_sent: u64,
    /// QUIC packets the harness received.
    pub packets_received: u64,
    /// Packets the harness declared lost.
    pub packets_lost: u64,
    /// Of those, later found to have arrived after all.
    pub packets_spurious_lost: u64,
    /// Stream bytes sent again after a loss.
    pub stream_retrans_bytes: u64,
    /// Probe timeouts (a whole flight unanswered).
    pub pto_count: u64,
    /// Smoothed round-trip time at the end of the run, mean over connections (ms).
    pub srtt_ms_mean: f64,
    /// Largest round-trip sample on any connection (ms).
    pub rtt_ms_max: f64,
    /// Smallest congestion window at the end of the run over connections (bytes).
    pub cwnd_min_bytes: u64,
    /// Largest congestion window at the end of the run over connections (bytes).
    pub cwnd_max_bytes: u64,
}

impl QuicStats {
    /// Adds another set of connections' figures to these.
    ///
    /// ```
    /// use bench_harness::summary::QuicStats;
    /// let a = QuicStats { connections: 1, packets_sent: 10, srtt_ms_mean: 1.0,
    ///     cwnd_min_bytes: 100, cwnd_max_bytes: 100, ..QuicStats::default() };
    /// let b = QuicStats { connections: 3, packets_sent: 30, srtt_ms_mean: 3.0,
    ///     cwnd_min_bytes: 50, cwnd_max_bytes: 500, ..QuicStats::default() };
    /// let mut t = QuicStats::default();
    /// t.merge(&a);
    /// t.merge(&b);
    /// assert_eq!((t.connections, t.packets_sent), (4, 40));
    /// assert_eq!(t.srtt_ms_mean, 2.5);
    /// assert_eq!((t.cwnd_min_bytes, t.cwnd_max_bytes), (50, 500));
    /// ```
    pub fn merge(&mut self, o: &QuicStats) {
        if o.connections == 0 {
            return;
        }
        let n = f64::from(self.connections + o.connections);
        self.srtt_ms_mean = (self.srtt_ms_mean * f64::from(self.connections)
            + o.srtt_ms_mean * f64::from(o.connections))
            / n;
        self.cwnd_min_bytes = if self.connections == 0 {
            o.cwnd_min_bytes
        } else {
            self.cwnd_min_bytes.min(o.cwnd_min_bytes)
        };
        self.cwnd_max_bytes = self.cwnd_max_bytes.max(o.cwnd_max_bytes);
        self.rtt_ms_max = self.rtt_ms_max.max(o.rtt_ms_max);
        self.connections += o.connections;
        self.packets_sent += o.packets_sent;
        self.packets_received += o.packets_received;
        self.packets_lost += o.packets_lost;
        self.packets_spurious_lost += o.packets_spurious_lost;
        self.stream_retrans_bytes += o.stream_retrans_bytes;
        self.pto_count += o.pto_count;
    }

    /// Lost packets as a fraction of those sent.
    pub fn loss_fraction(&self) -> f64 {
        self.packets_lost as f64 / self.packets_sent.max(1) as f64
    }
}

/// A run whose achieved rate is below this fraction of the asked rate is saturated.
pub const SATURATION_FRACTION: f64 = 0.95;

/// The result of one run, as stored in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What was asked for.
    pub config: RunConfig,
    /// Messages the schedule called for in the measured phase: sent + refused.
    #[serde(default)]
    pub offered: u64,
    /// Messages offered per second of measured time (the asked rate, unless the harness
    /// stopped early).
    pub offered_rate: f64,
    /// Replies received per second over `receive_window_s`.
    pub achieved_rate: f64,
    /// Messages sent on the wire.
    pub sent: u64,
    /// Of those, messages deferred first because their connection already held the
    /// harness's send capacity (back-pressure from the engine), then sent within the
    /// backlog bound; their latency counts from their intended time.
    #[serde(default)]
    pub deferred: u64,
    /// Messages not sent: their connection did not take them within the backlog bound of
    /// their intended time (back-pressure from the engine), had closed, or the generator
    /// was more than the backlog bound behind them (its lag shows that).
    #[serde(default)]
    pub refused: u64,
    /// Connections that closed or failed during the run.
    #[serde(default)]
    pub connection_errors: u64,
    /// Seconds from the start of the measured phase to the later of its end and the arrival
    /// of the 99th-percentile measured reply.
    #[serde(default)]
    pub receive_window_s: f64,
    /// Wall time of the whole run in seconds, connecting and closing included.
    #[serde(default)]
    pub wall_time_s: f64,
    /// The engine did not keep up: achieved below 95 % of the asked rate, or nothing
    /// measured. Latency and loss of a saturated run describe an overloaded engine.
    #[serde(default)]
    pub saturated: bool,
    /// Messages received intact.
    pub received: u64,
    /// Messages sent and never answered (neither a reply nor an error record).
    pub lost: u64,
    /// Messages received with a wrong payload.
    pub corrupted: u64,
    /// Second or later replies to one message: a server fault, not counted as received
    /// (each would hide a lost message). 0 in results written before they were counted.
    #[serde(default)]
    pub duplicates: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Round-trip latency (from scheduled send time, so coordinated omission is included).
    pub latency_ms: Percentiles,
    /// Harness scheduling lag.
    pub harness_lag_ms: LagPercentiles,
    /// CPU time (ms, all CPUs together) the hypervisor took from the machine during the
    /// run: stalls no server can avoid, which reach the latency tail. Absent where unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steal_ms: Option<f64>,
    /// The harness's QUIC statistics for its connections, where the run had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicStats>,
}

impl Summary {
    /// Builds a summary from the run's nanosecond histograms, counts, and measured duration.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hdrhistogram::Histogram;
    /// use bench_harness::summary::{Counts, Mode, RunConfig, Summary};
    /// let config = RunConfig {
    ///     target: "127.0.0.1:4433".into(), mode: Mode::Echo, connections: 4, rate: 1000.0,
    ///     duration_s: 10.0, warmup_s: 2.0, message_size: 64, batch_size: Some(16),
    ///     batch_timeout_ms: Some(0.5), cores: 1,
    /// };
    /// let mut lat = Histogram::<u64>::new(3).unwrap();
    /// lat.record(2_000_000).unwrap();
    /// let lag = Histogram::<u64>::new(3).unwrap();
    /// let counts = Counts {
    ///     offered: 10_000, sent: 10_000, received: 9_990, lost: 10, ..Counts::default()
    /// };
    /// let timing = bench_harness::summary::Timing {
    ///     measured: Duration::from_secs(10),
    ///     receive_window: Duration::from_secs(10),
    ///     wall: Duration::from_secs(13),
    ///     steal: None,
    /// };
    /// let s = Summary::from_histograms(config, &lat, &lag, counts, timing);
    /// assert_eq!((s.offered_rate, s.achieved_rate), (1000.0, 999.0));
    /// assert!(!s.saturated);
    /// assert_eq!(s.label(), "bs=16 bt=0.5ms @1000/s");
    /// ```
    pub fn from_histograms(
        config: RunConfig,
        latency_ns: &Histogram<u64>,
        harness_lag_ns: &Histogram<u64>,
        counts: Counts,
        timing: Timing,
    ) -> Self {
        let per = |n: u64, d: Duration| {
            let secs = d.as_secs_f64();
            if secs > 0.0 { n as f64 / secs } else { 0.0 }
        };
        let achieved_rate = per(counts.received, timing.receive_window.max(timing.measured));
        Summary {
            offered: counts.offered,
            offered_rate: per(counts.offered, timing.measured),
            achieved_rate,
            refused: counts.refused,
            deferred: counts.deferred,
            connection_errors: counts.connection_errors,
            receive_window_s: timing.receive_window.max(timing.measured).as_secs_f64(),
            wall_time_s: timing.wall.as_secs_f64(),
            saturated: counts.received == 0 || achieved_rate < SATURATION_FRACTION * config.rate,
            sent: counts.sent,
            received: counts.received,
            lost: counts.lost,
            corrupted: counts.corrupted,
            duplicates: counts.duplicates,
            errors: counts.errors,
            latency_ms: Percentiles::from_histogram_ns(latency_ns),
            harness_lag_ms: LagPercentiles::from_histogram_ns(harness_lag_ns),
            steal_ms: timing.steal.map(|d| d.as_secs_f64() * 1000.0),
            quic: None,
            config,
        }
    }

    /// The same summary with the harness's QUIC statistics attached (none for no
    /// connections).
    pub fn with_quic(mut self, quic: QuicStats) -> Self {
        self.quic = (quic.connections > 0).then_some(quic);
        self
    }

    /// The note to print when the hypervisor took enough CPU time during the run to show in
    /// its latencies ([`crate::steal::note`]).
    pub fn steal_note(&self) -> Option<String> {
        crate::steal::note(self.steal_ms?, self.wall_time_s)
    }

    /// Whether the hypervisor took more than [`crate::steal::NOTE_FRACTION`] of one CPU
    /// during the run.
    pub fn disturbed_by_steal(&self) -> bool {
        self.steal_ms
            .is_some_and(|ms| crate::steal::disturbs(ms, self.wall_time_s))
    }

    /// Short label for tables and plot legends: `bs={batch_size} bt={timeout}ms @{rate}/s`
    /// (`nobatch @{rate}/s` without batching). Plots group series by the part before `@`.
    pub fn label(&self) -> String {
        let c = &self.config;
        let mut parts = Vec::new();
        if let Some(bs) = c.batch_size {
            parts.push(format!("bs={bs}"));
        }
        if let Some(bt) = c.batch_timeout_ms {
            parts.push(format!("bt={bt}ms"));
        }
        if parts.is_empty() {
            parts.push("nobatch".to_owned());
        }
        format!("{} @{}/s", parts.join(" "), c.rate)
    }

    /// Writes `dir/summary.json` (pretty-printed) and returns its path.
    pub fn write_json(&self, dir: &Path) -> Result<PathBuf, SummaryError> {
        let path = dir.join(SUMMARY_FILE);
        let json = serde_json::to_string_pretty(self).map_err(|source| SummaryError::Json {
            path: path.clone(),
            source,
        })?;
        fs::write(&path, json + "\n").map_err(|source| SummaryError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Reads a summary written by [`Summary::write_json`].
    pub fn read_json(path: &Path) -> Result<Self, SummaryError> {
        let text = fs::read_to_string(path).map_err(|source| SummaryError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| SummaryError::Json {
            path: path.to_owned(),
            source,
        })
    }
}

/// Summaries for other modules' tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    use super::*;

    /// A 1 s echo run at `rate` with every message back, each `latency` after its intended
    /// send time, over `wall` with `steal` taken by the hypervisor; `batch_size` with
    /// timeout 0 when given.
    pub(crate) fn echo_run(
        rate: f64,
        latency: Duration,
        batch_size: Option<u32>,
        wall: Duration,
        steal: Option<Duration>,
    ) -> Summary {
        let mut lat = Histogram::<u64>::new(3).unwrap();
        lat.record(latency.as_nanos() as u64).unwrap();
        let lag = Histogram::<u64>::new(3).unwrap();
        let n = rate as u64;
        let config = RunConfig {
            target: "127.0.0.1:1".into(),
            mode: Mode::Echo,
            connections: 1,
            rate,
            duration_s: 1.0,
            warmup_s: 0.0,
            message_size: 64,
            batch_size,
            batch_timeout_ms: batch_size.map(|_| 0.0),
            cores: 1,
        };
        let counts = Counts {
            offered: n,
            sent: n,
            received: n,
            ..Counts::default()
        };
        let timing = Timing {
            measured: Duration::from_secs(1),
            receive_window: Duration::from_secs(1),
            wall,
            steal,
        };
        Summary::from_histograms(config, &lat, &lag, counts, timing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        Summary {
            config: RunConfig {
                target: "127.0.0.1:4433".into(),
                mode: Mode::Relay,
                connections: 2,
                rate: 5000.0,
                duration_s: 5.0,
                warmup_s: 1.0,
                message_size: 128,
                batch_size: None,
                batch_timeout_ms: None,
                cores: 2,
            },
            offered: 24995,
            offered_rate: 4999.0,
            achieved_rate: 4990.5,
            refused: 0,
            deferred: 0,
            connection_errors: 0,
            receive_window_s: 5.0,
            wall_time_s: 7.5,
            saturated: false,
            sent: 24995,
            received: 24952,
            lost: 43,
            corrupted: 0,
            duplicates: 0,
            errors: BTreeMap::from([("timeout".to_owned(), 3)]),
            latency_ms: Percentiles::default(),
            harness_lag_ms: LagPercentiles::default(),
            steal_ms: None,
            quic: Some(QuicStats {
                connections: 2,
                packets_sent: 4000,
                packets_received: 3900,
                packets_lost: 4,
                srtt_ms_mean: 0.25,
                rtt_ms_max: 3.5,
                cwnd_min_bytes: 13_500,
                cwnd_max_bytes: 40_000,
                ..QuicStats::default()
            }),
        }
    }

    #[test]
    fn json_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        let path = s.write_json(dir.path()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"mode\": \"relay\""));
        assert!(text.contains("\"batch_size\": null"));
        assert_eq!(Summary::read_json(&path).unwrap(), s);
        assert_eq!(s.label(), "nobatch @5000/s");
        // A summary written before QUIC statistics existed still reads.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(old.as_object_mut().unwrap().remove("quic").is_some());
        let mut without = s.clone();
        without.quic = None;
        fs::write(&path, old.to_string()).unwrap();
        assert_eq!(Summary::read_json(&path).unwrap(), without);
    }
}
