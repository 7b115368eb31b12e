//! Metrics export: a [`MetricsSource`] that a metrics thread can hold, a [`NetworkMetrics`]
//! snapshot, rendering in the Prometheus text exposition format 0.0.4
//! ([`render_prometheus`]), a parser for that format ([`parse_exposition`], used by
//! `engine status`) and a small blocking HTTP server for `GET /metrics` ([`MetricsServer`]).
//!
//! Reading metrics never touches the data path: counters are relaxed atomic loads, the
//! histograms are the copies each shard publishes every 250 ms (one short lock per shard),
//! and the peer index is a concurrent map. The server runs on one plain, unpinned thread.
//!
//! # Exported metrics
//!
//! | name | type | labels |
//! |---|---|---|
//! | `engine_shards` | gauge | |
//! | `engine_connections` | gauge | `state` = new, connecting, connected, disconnected, failed |
//! | `engine_shard_connections` | gauge | `shard` |
//! | `engine_connections_opened_total` | counter | `origin` = accepted, dialed |
//! | `engine_connections_closed_total` | counter | |
//! | `engine_connection_refusals_total` | counter | |
//! | `engine_handshake_failures_total` | counter | |
//! | `engine_seal_failures_total` | counter | |
//! | `engine_protocol_errors_total` | counter | |
//! | `engine_datagrams_total` | counter | `direction` = in, out |
//! | `engine_misrouted_datagrams_total` | counter | |
//! | `engine_unknown_datagrams_total` | counter | |
//! | `engine_messages_total` | counter | `direction`, `outcome`, `reason` (see below) |
//! | `engine_shard_messages_total` | counter | `shard`, `direction`, `outcome` |
//! | `engine_error_records_total` | counter | `direction` = in, out |
//! | `engine_batches_total` | counter | |
//! | `engine_shard_batches_total` | counter | `shard` |
//! | `engine_batch_size` | summary | `quantile` (messages per batch) |
//! | `engine_queue_delay_seconds` | summary | `quantile` |
//! | `engine_relay_delay_seconds` | summary | `quantile` |
//! | `engine_handshake_seconds` | summary | `quantile` |
//! | `engine_receive_delay_seconds` | summary | `quantile` |
//! | `engine_connections_stalled_closed_total` | counter | |
//! | `engine_socket_receive_drops_total` | counter | `shard` |
//! | `engine_socket_receive_queue_bytes` | gauge | `shard` |
//! | `engine_queued_bytes` | gauge | |
//! | `engine_resident_memory_bytes` | gauge | |
//! | `engine_messages_per_second` | gauge | |
//!
//! `engine_messages_total` series:
//! `{direction="in",outcome="received"}` every message read from a peer;
//! `{direction="in",outcome="delivered"}` handed to this node's application;
//! `{direction="in",outcome="relayed"}` queued towards another peer;
//! `{direction="in",outcome="dropped",reason="..."}` discarded, with `reason` one of
//! unknown_destination, too_large, unreachable, shutting_down, sender_gone, stalled;
//! `{direction="out",outcome="sealed"}` sealed and written to a connection.
//! `received` is the total; delivered, relayed and dropped say what became of messages, so
//! do not sum over `outcome`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shards::hist::{Histograms, SharedHistograms};
use shards::lifecycle::ConnState;
use shards::shard::ShardStats;

use crate::index::PeerIndex;
use crate::stats::EngineStats;

/// The quantiles every summary reports.
pub const QUANTILES: [(f64, &str); 4] =
    [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

/// Drop reasons, as the `reason` label spells them.
pub const DROP_REASONS: [&str; 6] = [
    "unknown_destination",
    "too_large",
    "unreachable",
    "shutting_down",
    "sender_gone",
    "stalled",
];

/// What metrics are read from: shared handles to every shard's counters and published
/// histograms and to the peer index. Cheap to clone, `Send + Sync`, and independent of the
/// [`crate::Engine`]'s lifetime (after shutdown it keeps reporting the final counters).
#[derive(Clone)]
pub struct MetricsSource {
    stats: Vec<Arc<ShardStats>>,
    histograms: Vec<SharedHistograms>,
    peers: Arc<PeerIndex>,
}

/// A shard's socket as the kernel sees it: `None` when `/proc/net/udp` has no entry for it.
pub type SocketQueues = Vec<Option<crate::stats::SocketQueue>>;

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource")
            .field("shards", &self.stats.len())
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl MetricsSource {
    /// A source over the given shards (`stats[i]` and `histograms[i]` belong to shard `i`).
    pub fn new(
        stats: Vec<Arc<ShardStats>>,
        histograms: Vec<SharedHistograms>,
        peers: Arc<PeerIndex>,
    ) -> Self {
        MetricsSource {
            stats,
            histograms,
            peers,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.stats.len()
    }

    /// Counters summed over every shard.
    pub fn totals(&self) -> EngineStats {
        EngineStats::collect(self.stats.iter().map(|s| &**s))
    }

    /// Counters of each shard.
    pub fn shard_totals(&self) -> Vec<EngineStats> {
        self.stats
            .iter()
            .map(|s| EngineStats::collect(std::iter::once(&**s)))
            .collect()
    }

    /// Histograms merged across shards, as last published (cumulative since start).
    pub fn histograms(&self) -> Histograms {
        let mut total = Histograms::new();
        for h in &self.histograms {
            total.add(&h.lock());
        }
        total
    }

    /// Peers in each lifecycle state.
    pub fn state_counts(&self) -> Vec<(ConnState, usize)> {
        self.peers.state_counts()
    }

    /// Each shard socket's kernel receive queue and drop count (`/proc/net/udp`).
    pub fn socket_queues(&self) -> SocketQueues {
        let inodes: Vec<u64> = self
            .stats
            .iter()
            .map(|s| s.socket_inode.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        crate::stats::socket_queues(&inodes)
    }

    /// A snapshot of the headline numbers; samples `rate` with the current message total.
    pub fn network_metrics(&self, rate: &mut RateMeter) -> NetworkMetrics {
        Snapshot::take(self, rate).network()
    }
}

/// Headline numbers at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkMetrics {
    /// Messages received from peers per second, exponentially weighted over
    /// [`RateMeter::DEFAULT_WINDOW`].
    pub messages_per_second: f64,
    /// Connections the shards hold right now (including ones still handshaking).
    pub connections: u64,
    /// Messages in the queue-delay histogram (0 means the latency fields are 0).
    pub latency_samples: u64,
    /// Mean queue delay in nanoseconds.
    pub latency_avg_ns: f64,
    /// Median queue delay in nanoseconds.
    pub latency_p50_ns: u64,
    /// 90th percentile queue delay in nanoseconds.
    pub latency_p90_ns: u64,
    /// 99th percentile queue delay in nanoseconds.
    pub latency_p99_ns: u64,
    /// 99.9th percentile queue delay in nanoseconds.
    pub latency_p999_ns: u64,
    /// Resident set size of this process, if `/proc/self/statm` could be read.
    pub resident_memory_bytes: Option<u64>,
    /// Bytes waiting in batch queues, not yet sealed.
    pub queued_bytes: u64,
    /// Datagrams the kernel dropped at the shard sockets' full receive queues.
    pub socket_receive_drops: u64,
    /// 99th percentile time a datagram waited in a socket receive queue, nanoseconds.
    pub receive_delay_p99_ns: u64,
    /// Messages received from peers.
    pub messages_in: u64,
    /// Messages sealed and written.
    pub messages_out: u64,
    /// Messages handed to the node's application.
    pub delivered: u64,
    /// Messages relayed towards another peer.
    pub relayed: u64,
    /// Messages dropped, all reasons.
    pub dropped: u64,
    /// Batches sealed and written.
    pub batches: u64,
}

/// A moving messages-per-second rate: an exponentially weighted moving average with time
/// constant `window`, correct for irregular sampling intervals. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct RateMeter {
    window: Duration,
    last: Option<(u64, Instant)>,
    rate: f64,
    primed: bool,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self::new(Self::DEFAULT_WINDOW)
    }
}

impl RateMeter {
    /// The default averaging window (time constant): 10 s.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

    /// A meter averaging over `window` (a zero window means "last interval only").
    pub fn new(window: Duration) -> Self {
        RateMeter {
            window,
            last: None,
            rate: 0.0,
            primed: false,
        }
    }

    /// Feeds the running total of messages at `now` and returns the smoothed rate per
    /// second. The first sample only sets the baseline (rate 0); the first interval sets the
    /// rate outright; later intervals move it towards the interval's rate by
    /// `1 - exp(-dt / window)`. A total that goes backwards counts as no progress, and a
    /// sample at (or before) the previous instant changes nothing.
    pub fn sample(&mut self, total_messages: u64, now: Instant) -> f64 {
        let Some((prev, at)) = self.last else {
            self.last = Some((total_messages, now));
            return self.rate;
        };
        let dt = now.saturating_duration_since(at).as_secs_f64();
        if dt <= 0.0 {
            return self.rate;
        }
        let interval_rate = total_messages.saturating_sub(prev) as f64 / dt;
        let tau = self.window.as_secs_f64();
        if !self.primed || tau <= 0.0 {
            self.rate = interval_rate;
            self.primed = true;
        } else {
            let alpha = 1.0 - (-dt / tau).exp();
            self.rate += alpha * (interval_rate - self.rate);
        }
        self.last = Some((prev.max(total_messages), now));
        self.rate
    }

    /// The rate as of the last sample.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// Resident set size of this process in bytes: resident pages from `/proc/self/statm` times
/// the page size. `None` where that file does not exist or cannot be parsed.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|p| *p > 0)?;
    Some(pages.saturating_mul(page))
}

/// Everything one render needs, read once.
struct Snapshot {
    totals: EngineStats,
    shards: Vec<EngineStats>,
    hist: Histograms,
    states: Vec<(ConnState, usize)>,
    rss: Option<u64>,
    rate: f64,
    sockets: SocketQueues,
}

impl Snapshot {
    fn take(src: &MetricsSource, rate: &mut RateMeter) -> Snapshot {
        let shards = src.shard_totals();
        let totals = EngineStats::collect(src.stats.iter().map(|s| &**s));
        let rate = rate.sample(totals.messages_in, Instant::now());
        Snapshot {
            totals,
            shards,
            hist: src.histograms(),
            states: src.state_counts(),
            rss: resident_memory_bytes(),
            rate,
            sockets: src.socket_queues(),
        }
    }

    fn network(&self) -> NetworkMetrics {
        let q = &self.hist.queue_delay_ns;
        let at = |quantile: f64| {
            if q.is_empty() {
                0
            } else {
                q.value_at_quantile(quantile)
            }
        };
        let t = &self.totals;
        NetworkMetrics {
            messages_per_second: self.rate,
            connections: t.connections,
            latency_samples: q.len(),
            latency_avg_ns: if q.is_empty() { 0.0 } else { q.mean() },
            latency_p50_ns: at(0.5),
            latency_p90_ns: at(0.9),
            latency_p99_ns: at(0.99),
            latency_p999_ns: at(0.999),
            resident_memory_bytes: self.rss,
            queued_bytes: t.queued_bytes,
            socket_receive_drops: self.sockets.iter().flatten().map(|q| q.drops).sum(),
            receive_delay_p99_ns: if self.hist.receive_delay_ns.is_empty() {
                0
            } else {
                self.hist.receive_delay_ns.value_at_quantile(0.99)
            },
            messages_in: t.messages_in,
            messages_out: t.messages_out,
            delivered: t.delivered_local,
            relayed: t.relayed,
            dropped: t.dropped(),
            batches: t.batches_out,
        }
    }
}

/// A sample value.
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

fn fmt_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Builds an exposition document.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Num) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = match value {
            Num::Int(v) => writeln!(self.0, " {v}"),
            Num::Float(v) => writeln!(self.0, " {}", fmt_float(v)),
        };
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: Num) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A summary of `h`, each value multiplied by `scale` (e.g. 1e-9 for ns -> s).
    /// Quantiles of an empty histogram are NaN, as Prometheus client libraries report them.
    fn summary(&mut self, name: &str, help: &str, h: &Histogram<u64>, scale: f64) {
        self.family(name, "summary", help);
        for (q, label) in QUANTILES {
            let v = if h.is_empty() {
                f64::NAN
            } else {
                h.value_at_quantile(q) as f64 * scale
            };
            self.sample(name, &[("quantile", label)], Num::Float(v));
        }
        // Exact for values the histogram stores exactly (< 2048), else within its 0.1%.
        let sum: u128 = h
            .iter_recorded()
            .map(|v| {
                u128::from(h.median_equivalent(v.value_iterated_to()))
                    * u128::from(v.count_at_value())
            })
            .sum();
        let sum = if scale == 1.0 {
            Num::Int(u64::try_from(sum).unwrap_or(u64::MAX))
        } else {
            Num::Float(sum as f64 * scale)
        };
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], Num::Int(h.len()));
    }
}

/// Renders every metric of `src` in the Prometheus text exposition format 0.0.4, and
/// samples `rate` with the current number of messages received.
pub fn render_prometheus(src: &MetricsSource, rate: &mut RateMeter) -> String {
    let snap = Snapshot::take(src, rate);
    let t = &snap.totals;
    let mut out = Exposition(String::with_capacity(8 * 1024));
    let shard_labels: Vec<String> = (0..snap.shards.len()).map(|i| i.to_string()).collect();

    out.single(
        "engine_shards",
        "gauge",
        "Number of shards (one executor and UDP socket each).",
        Num::Int(snap.shards.len() as u64),
    );

    out.family(
        "engine_connections",
        "gauge",
        "Peers in the peer index by lifecycle state (state=new|connecting|connected|disconnected|failed).",
    );
    for (state, n) in &snap.states {
        out.sample(
            "engine_connections",
            &[("state", state.as_str())],
            Num::Int(*n as u64),
        );
    }
    out.family(
        "engine_shard_connections",
        "gauge",
        "Connections each shard holds right now, including ones still handshaking.",
    );
    for (s, label) in snap.shards.iter().zip(&shard_labels) {
        out.sample(
            "engine_shard_connections",
            &[("shard", label)],
            Num::Int(s.connections),
        );
    }
    out.family(
        "engine_connections_opened_total",
        "counter",
        "Connections established, by origin (origin=accepted: a peer connected to us; origin=dialed: we connected out).",
    );
    out.sample(
        "engine_connections_opened_total",
        &[("origin", "accepted")],
        Num::Int(t.accepted),
    );
    out.sample(
        "engine_connections_opened_total",
        &[("origin", "dialed")],
        Num::Int(t.dialed),
    );
    out.single(
        "engine_connections_closed_total",
        "counter",
        "Connections closed, for any reason.",
        Num::Int(t.closed),
    );
    out.single(
        "engine_connection_refusals_total",
        "counter",
        "Connections refused because the connection limit was reached.",
        Num::Int(t.refused),
    );
    out.single(
        "engine_connections_ttl_closed_total",
        "counter",
        "Connections closed gracefully by the pool TTL (no messages for --pool-ttl).",
        Num::Int(t.ttl_closed),
    );
    out.family(
        "engine_connection_transitions_total",
        "counter",
        "Lifecycle transitions of dialed peers, by the state entered.",
    );
    for (state, n) in shards::lifecycle::ConnState::ALL.iter().zip(t.transitions) {
        out.sample(
            "engine_connection_transitions_total",
            &[("state", state.as_str())],
            Num::Int(n),
        );
    }
    out.single(
        "engine_connections_stalled_closed_total",
        "counter",
        "Connections closed with code 0x7 (STALLED): data waited for the peer for the stall timeout without the peer granting flow-control credit.",
        Num::Int(t.stalled_closed),
    );
    out.single(
        "engine_handshake_failures_total",
        "counter",
        "Connections that failed the Noise handshake.",
        Num::Int(t.handshake_failures),
    );
    out.single(
        "engine_seal_failures_total",
        "counter",
        "Connections closed because a sealed frame failed authentication.",
        Num::Int(t.seal_failures),
    );
    out.single(
        "engine_protocol_errors_total",
        "counter",
        "Connections closed for another protocol violation.",
        Num::Int(t.protocol_errors),
    );

    out.family(
        "engine_datagrams_total",
        "counter",
        "UDP datagrams (direction=in: received, direction=out: sent).",
    );
    out.sample(
        "engine_datagrams_total",
        &[("direction", "in")],
        Num::Int(t.datagrams_in),
    );
    out.sample(
        "engine_datagrams_total",
        &[("direction", "out")],
        Num::Int(t.datagrams_out),
    );
    out.single(
        "engine_misrouted_datagrams_total",
        "counter",
        "Datagrams whose connection ID named another shard (steering failure).",
        Num::Int(t.misrouted),
    );
    out.single(
        "engine_unknown_datagrams_total",
        "counter",
        "Datagrams for no known connection that were not a new Initial.",
        Num::Int(t.unknown_datagrams),
    );

    out.family(
        "engine_messages_total",
        "counter",
        "Messages. direction=in,outcome=received: every message read from a peer; \
         direction=in,outcome=delivered: handed to this node's application; \
         direction=in,outcome=relayed: queued towards another peer; \
         direction=in,outcome=dropped: discarded, reason=unknown_destination|too_large|unreachable|shutting_down|sender_gone|stalled \
         (also covers messages the local application sent); \
         direction=out,outcome=sealed: sealed and written to a connection. \
         received is the total and delivered/relayed/dropped are fates, so do not sum over outcome.",
    );
    let m = "engine_messages_total";
    out.sample(
        m,
        &[("direction", "in"), ("outcome", "received")],
        Num::Int(t.messages_in),
    );
    out.sample(
        m,
        &[("direction", "in"), ("outcome", "delivered")],
        Num::Int(t.delivered_local),
    );
    out.sample(
        m,
        &[("direction", "in"), ("outcome", "relayed")],
        Num::Int(t.relayed),
    );
    for (reason, n) in DROP_REASONS.iter().zip(drops(t)) {
        out.sample(
            m,
            &[
                ("direction", "in"),
                ("outcome", "dropped"),
                ("reason", reason),
            ],
            Num::Int(n),
        );
    }
    out.sample(
        m,
        &[("direction", "out"), ("outcome", "sealed")],
        Num::Int(t.messages_out),
    );

    out.family(
        "engine_shard_messages_total",
        "counter",
        "Messages per shard, with the direction and outcome labels of engine_messages_total \
         (outcome=dropped sums every reason).",
    );
    for (s, label) in snap.shards.iter().zip(&shard_labels) {
        for (direction, outcome, n) in [
            ("in", "received", s.messages_in),
            ("in", "delivered", s.delivered_local),
            ("in", "relayed", s.relayed),
            ("in", "dropped", s.dropped()),
            ("out", "sealed", s.messages_out),
        ] {
            out.sample(
                "engine_shard_messages_total",
                &[
                    ("shard", label),
                    ("direction", direction),
                    ("outcome", outcome),
                ],
                Num::Int(n),
            );
        }
    }
    out.family(
        "engine_error_records_total",
        "counter",
        "Error records (direction=in: received from peers, direction=out: sent back to senders).",
    );
    out.sample(
        "engine_error_records_total",
        &[("direction", "in")],
        Num::Int(t.errors_in),
    );
    out.sample(
        "engine_error_records_total",
        &[("direction", "out")],
        Num::Int(t.errors_out),
    );

    out.single(
        "engine_batches_total",
        "counter",
        "Batches sealed and written.",
        Num::Int(t.batches_out),
    );
    out.family(
        "engine_shard_batches_total",
        "counter",
        "Batches sealed and written, per shard.",
    );
    for (s, label) in snap.shards.iter().zip(&shard_labels) {
        out.sample(
            "engine_shard_batches_total",
            &[("shard", label)],
            Num::Int(s.batches_out),
        );
    }

    let h = &snap.hist;
    out.summary(
        "engine_batch_size",
        "Messages per sealed batch, since start (published by shards every 250 ms).",
        &h.batch_size,
        1.0,
    );
    out.summary(
        "engine_queue_delay_seconds",
        "Time a message waited in its destination's batch queue before being sealed, since start.",
        &h.queue_delay_ns,
        1e-9,
    );
    out.summary(
        "engine_relay_delay_seconds",
        "Time from a relayed message's receipt to its batch leaving the shard, since start.",
        &h.relay_delay_ns,
        1e-9,
    );
    out.summary(
        "engine_handshake_seconds",
        "Time from a connection's first packet to the end of the Noise handshake, since start.",
        &h.handshake_ns,
        1e-9,
    );

    out.summary(
        "engine_receive_delay_seconds",
        "Time a datagram waited in the kernel's socket receive queue before its shard read it (kernel receive timestamp to read; one datagram in 64 is measured), since start.",
        &h.receive_delay_ns,
        1e-9,
    );
    out.family(
        "engine_socket_receive_drops_total",
        "counter",
        "Datagrams the kernel dropped at a shard's UDP socket (receive queue full), from /proc/net/udp; absent for a shard whose socket is not listed there.",
    );
    for (q, label) in snap.sockets.iter().zip(&shard_labels) {
        if let Some(q) = q {
            out.sample(
                "engine_socket_receive_drops_total",
                &[("shard", label)],
                Num::Int(q.drops),
            );
        }
    }
    out.family(
        "engine_socket_receive_queue_bytes",
        "gauge",
        "Bytes waiting in a shard's UDP socket receive queue right now, from /proc/net/udp.",
    );
    for (q, label) in snap.sockets.iter().zip(&shard_labels) {
        if let Some(q) = q {
            out.sample(
                "engine_socket_receive_queue_bytes",
                &[("shard", label)],
                Num::Int(q.rx_queue_bytes),
            );
        }
    }
    out.single(
        "engine_queued_bytes",
        "gauge",
        "Bytes waiting in batch queues, not yet sealed.",
        Num::Int(t.queued_bytes),
    );
    if let Some(rss) = snap.rss {
        out.single(
            "engine_resident_memory_bytes",
            "gauge",
            "Resident set size of the engine process.",
            Num::Int(rss),
        );
    }
    out.single(
        "engine_messages_per_second",
        "gauge",
        "Messages received from peers per second, exponentially weighted moving average over 10 s.",
        Num::Float(snap.rate),
    );
    out.0
}

/// Drop counts in [`DROP_REASONS`] order.
fn drops(t: &EngineStats) -> [u64; 6] {
    [
        t.dropped_unknown_destination,
        t.dropped_too_large,
        t.dropped_unreachable,
        t.dropped_shutting_down,
        t.dropped_sender_gone,
        t.dropped_stalled,
    ]
}

/// One sample line of an exposition document.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (for summaries including `_sum` / `_count`).
    pub name: String,
    /// Labels in document order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(key, value)` of `want` is among the labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Parses the sample lines of a Prometheus text exposition (comments and blank lines are
/// skipped; timestamps are accepted and ignored).
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    if name_end == 0 {
        return Err("missing metric name");
    }
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let key = rest[..eq].trim().to_string();
            if key.is_empty() {
                return Err("empty label name");
            }
            rest = rest[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated escape"),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                }
            };
            labels.push((key, value));
            rest = rest[end + 1..].trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' after a label");
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("missing value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| "bad value")?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing data");
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Longest request head the server reads.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writing a response may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop checks for a stop request.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long, and how many bytes, a close waits for and discards from the client.
const LINGER: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 256 * 1024;
/// How often the server thread samples the message rate.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// A minimal HTTP/1.x server for `GET /metrics` on one plain (unpinned) thread. Requests
/// are served one at a time, each bounded by a size limit and a deadline, so a slow or
/// hostile client delays scrapes by at most `REQUEST_TIMEOUT` and cannot grow memory.
/// The thread also samples the message rate every second. Dropping the server stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `src`.
    pub fn start(addr: SocketAddr, src: MetricsSource) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("engine-metrics".into())
            .spawn({
                let stop = stop.clone();
                move || serve(listener, src, &stop)
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, src: MetricsSource, stop: &AtomicBool) {
    let mut rate = RateMeter::default();
    let mut next_sample = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_sample {
            rate.sample(src.totals().messages_in, now);
            next_sample = now + SAMPLE_PERIOD;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, &src, &mut rate) {
                    tracing::debug!(%peer, "metrics request failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!("metrics accept failed: {e}");
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The client closed the connection before sending anything.
    Closed,
    /// The head exceeded [`MAX_REQUEST_BYTES`], or the connection ended mid-head.
    Malformed,
    /// The client did not finish its request within [`REQUEST_TIMEOUT`].
    Timeout,
}

/// Reads a request head (through the blank line) within the size limit and deadline.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| ReadError::Closed)?;
        let room = (MAX_REQUEST_BYTES + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Malformed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Closed),
        }
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Err(ReadError::Malformed);
        }
    }
}

/// Length of the head through its terminating blank line, if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A response to send.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// HEAD: headers only.
    head_only: bool,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
            allow: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Decides the response to a request head; `metrics` renders the body when it is needed.
fn respond(head: &[u8], metrics: impl FnOnce() -> String) -> Response {
    let bad = || Response::text(400, "Bad Request", "bad request");
    let Ok(head) = std::str::from_utf8(head) else {
        return bad();
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return bad();
    };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return bad();
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return bad();
    }
    // Header lines must at least look like headers.
    if lines.any(|l| !l.is_empty() && !l.contains(':')) {
        return bad();
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Response::text(404, "Not Found", "not found; metrics are at /metrics");
    }
    match method {
        "GET" | "HEAD" => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            body: metrics(),
            head_only: method == "HEAD",
            allow: false,
        },
        _ => Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed", "method not allowed")
        },
    }
}

fn handle(mut stream: TcpStream, src: &MetricsSource, rate: &mut RateMeter) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let response = match read_head(&mut stream, Instant::now() + REQUEST_TIMEOUT) {
        Ok(head) => respond(&head, || render_prometheus(src, rate)),
        Err(ReadError::Closed) => return Ok(()),
        Err(ReadError::Malformed) => Response::text(400, "Bad Request", "bad request"),
        Err(ReadError::Timeout) => Response::text(408, "Request Timeout", "request timeout"),
    };
    stream.write_all(&response.to_bytes())?;
    stream.flush()?;
    linger(stream);
    Ok(())
}

/// Closes gracefully: ends our side, then briefly discards whatever the client still sends,
/// so closing with unread input does not reset the connection before the client has read
/// the response. Bounded in time and bytes.
fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::net::SocketAddr;

    const REQUIRED: [(&str, &str); 26] = [
        ("engine_receive_delay_seconds", "summary"),
        ("engine_connections_stalled_closed_total", "counter"),
        ("engine_socket_receive_drops_total", "counter"),
        ("engine_socket_receive_queue_bytes", "gauge"),
        ("engine_connections", "gauge"),
        ("engine_shard_connections", "gauge"),
        ("engine_messages_total", "counter"),
        ("engine_shard_messages_total", "counter"),
        ("engine_batches_total", "counter"),
        ("engine_batch_size", "summary"),
        ("engine_queue_delay_seconds", "summary"),
        ("engine_relay_delay_seconds", "summary"),
        ("engine_handshake_seconds", "summary"),
        ("engine_connection_refusals_total", "counter"),
        ("engine_resident_memory_bytes", "gauge"),
        ("engine_queued_bytes", "gauge"),
        ("engine_messages_per_second", "gauge"),
        ("engine_datagrams_total", "counter"),
        ("engine_seal_failures_total", "counter"),
        ("engine_handshake_failures_total", "counter"),
        ("engine_misrouted_datagrams_total", "counter"),
        ("engine_shards", "gauge"),
        ("engine_connections_opened_total", "counter"),
        ("engine_connections_closed_total", "counter"),
        ("engine_error_records_total", "counter"),
        ("engine_shard_batches_total", "counter"),
    ];

    fn source(shards: usize) -> MetricsSource {
        MetricsSource::new(
            (0..shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            (0..shards)
                .map(|_| Arc::new(parking_lot::Mutex::new(Histograms::new())))
                .collect(),
            Arc::new(PeerIndex::new()),
        )
    }

    fn busy_source() -> MetricsSource {
        use shards::shard::PeerDirectory;
        let src = source(2);
        let s0 = &src.stats[0];
        s0.messages_in.store(100, Ordering::Relaxed);
        s0.delivered_local.store(90, Ordering::Relaxed);
        s0.dropped_too_large.store(4, Ordering::Relaxed);
        s0.messages_out.store(90, Ordering::Relaxed);
        s0.batches_out.store(3, Ordering::Relaxed);
        s0.connections.store(1, Ordering::Relaxed);
        src.stats[1].relayed.store(6, Ordering::Relaxed);
        src.stats[1].dropped_sender_gone.store(1, Ordering::Relaxed);
        {
            let mut h = src.histograms[0].lock();
            for v in [1_000u64, 2_000, 3_000, 1_000_000] {
                h.queue_delay_ns.saturating_record(v);
            }
            h.batch_size.saturating_record(30);
            h.batch_size.saturating_record(60);
        }
        src.histograms[1]
            .lock()
            .queue_delay_ns
            .saturating_record(5_000);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        src.peers
            .connected(shards::wire::PeerId([1; 16]), 0, 1, a, false);
        src
    }

    fn start() -> Instant {
        Instant::now()
    }

    #[test]
    fn source_can_move_to_a_metrics_thread() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<MetricsSource>();
    }

    #[test]
    fn rate_meter_constant_rate_is_exact() {
        let t0 = start();
        let mut m = RateMeter::default();
        assert_eq!(m.sample(0, t0), 0.0);
        for i in 1..=30u64 {
            let r = m.sample(i * 500, t0 + Duration::from_secs(i));
            assert!((r - 500.0).abs() < 1e-9, "second {i}: {r}");
        }
    }

    #[test]
    fn rate_meter_moves_with_the_window() {
        let t0 = start();
        let mut m = RateMeter::new(Duration::from_secs(10));
        m.sample(0, t0);
        // The first interval primes the rate at 1000/s.
        m.sample(1000, t0 + Duration::from_secs(1));
        // Traffic stops: after one window the rate has decayed by 1/e.
        let mut at = 1;
        let mut r = 0.0;
        for _ in 0..10 {
            at += 1;
            r = m.sample(1000, t0 + Duration::from_secs(at));
        }
        let expect = 1000.0 * (-1.0f64).exp();
        assert!((r - expect).abs() < 1e-6, "{r} vs {expect}");
        // The same decay whether sampled every second or once after 10 s.
        let mut once = RateMeter::new(Duration::from_secs(10));
        once.sample(0, t0);
        once.sample(1000, t0 + Duration::from_secs(1));
        let r_once = once.sample(1000, t0 + Duration::from_secs(11));
        assert!((r_once - expect).abs() < 1e-6);
        // Traffic resumes at 2000/s: the rate climbs towards it but not past it.
        let mut total = 1000;
        for _ in 0..60 {
            at += 1;
            total += 2000;
            r = m.sample(total, t0 + Duration::from_secs(at));
            assert!(r <= 2000.0 + 1e-9);
        }
        assert!((r - 2000.0).abs() < 2000.0 * 0.01, "{r}");
    }

    #[test]
    fn rate_meter_ignores_backward_counters_and_zero_intervals() {
        let t0 = start();
        let mut m = RateMeter::default();
        m.sample(100, t0);
        let r = m.sample(200, t0 + Duration::from_secs(1));
        assert!((r - 100.0).abs() < 1e-9);
        // Same instant: nothing changes, no division by zero.
        assert_eq!(m.sample(10_000, t0 + Duration::from_secs(1)), r);
        // A total that went backwards is no progress, never a negative rate, and the
        // messages are not counted twice when it comes back.
        let r2 = m.sample(150, t0 + Duration::from_secs(2));
        assert!(r2 >= 0.0 && r2 < r);
        let r3 = m.sample(200, t0 + Duration::from_secs(3));
        assert!(r3 < r2);
        // An instant before the last sample changes nothing.
        assert_eq!(m.sample(900, t0), r3);
        assert_eq!(m.rate(), r3);
    }

    /// Checks the document's structure: one HELP and one TYPE per family, before its samples;
    /// every sample belongs to the family declared last; no series twice; valid values.
    fn families(doc: &str) -> HashMap<String, String> {
        let mut types = HashMap::new();
        let mut helps = HashSet::new();
        let mut current: Option<(String, String)> = None;
        let mut series = HashSet::new();
        for line in doc.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helps.insert(name.to_string()), "HELP twice for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helps.contains(name), "TYPE before HELP for {name}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice for {name}"
                );
                current = Some((name.to_string(), kind.to_string()));
            } else {
                let s = parse_line(line).unwrap();
                let (fam, kind) = current.clone().expect("sample before any TYPE");
                let ok = s.name == fam
                    || (kind == "summary"
                        && (s.name == format!("{fam}_sum") || s.name == format!("{fam}_count")));
                assert!(ok, "{} outside its family {fam}", s.name);
                if kind == "counter" {
                    assert!(s.name.ends_with("_total"), "{}", s.name);
                    assert!(s.value >= 0.0);
                }
                assert!(series.insert(line.rsplit_once(' ').unwrap().0.to_string()));
            }
        }
        types
    }

    #[test]
    fn render_has_every_required_metric_once() {
        for src in [source(1), busy_source()] {
            let doc = render_prometheus(&src, &mut RateMeter::default());
            let types = families(&doc);
            for (name, kind) in REQUIRED {
                assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
                let n = doc
                    .lines()
                    .filter(|l| *l == format!("# TYPE {name} {kind}"))
                    .count();
                assert_eq!(n, 1, "{name}");
            }
            for state in ConnState::ALL {
                let line = format!("engine_connections{{state=\"{}\"}} ", state.as_str());
                assert_eq!(doc.matches(&line).count(), 1, "{line}");
            }
        }
    }

    #[test]
    fn render_reports_the_counters_and_summaries() {
        let src = busy_source();
        let doc = render_prometheus(&src, &mut RateMeter::default());
        let samples = parse_exposition(&doc).unwrap();
        let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
            let hits: Vec<_> = samples
                .iter()
                .filter(|s| s.name == name && s.has_labels(labels))
                .collect();
            assert_eq!(hits.len(), 1, "{name} {labels:?}");
            hits[0].value
        };
        let msg = |d, o| get("engine_messages_total", &[("direction", d), ("outcome", o)]);
        assert_eq!(msg("in", "received"), 100.0);
        assert_eq!(msg("in", "delivered"), 90.0);
        assert_eq!(msg("in", "relayed"), 6.0);
        assert_eq!(msg("out", "sealed"), 90.0);
        assert_eq!(
            get("engine_messages_total", &[("reason", "too_large")]),
            4.0
        );
        assert_eq!(
            get("engine_messages_total", &[("reason", "sender_gone")]),
            1.0
        );
        assert_eq!(
            get(
                "engine_shard_messages_total",
                &[("shard", "1"), ("outcome", "dropped")]
            ),
            1.0
        );
        assert_eq!(get("engine_shard_connections", &[("shard", "0")]), 1.0);
        assert_eq!(get("engine_connections", &[("state", "connected")]), 1.0);
        assert_eq!(get("engine_connections", &[("state", "failed")]), 0.0);
        assert_eq!(get("engine_batches_total", &[]), 3.0);
        assert_eq!(get("engine_shards", &[]), 2.0);
        // Summaries: four quantile lines, then _sum and _count.
        for name in [
            "engine_batch_size",
            "engine_queue_delay_seconds",
            "engine_relay_delay_seconds",
            "engine_handshake_seconds",
        ] {
            let qs: Vec<_> = doc
                .lines()
                .filter(|l| l.starts_with(&format!("{name}{{quantile=")))
                .collect();
            assert_eq!(qs.len(), 4, "{name}");
            for (q, line) in ["0.5", "0.9", "0.99", "0.999"].iter().zip(&qs) {
                assert!(line.starts_with(&format!("{name}{{quantile=\"{q}\"}} ")));
            }
            assert_eq!(doc.matches(&format!("\n{name}_sum ")).count(), 1);
            assert_eq!(doc.matches(&format!("\n{name}_count ")).count(), 1);
        }
        assert_eq!(get("engine_batch_size_sum", &[]), 90.0);
        assert_eq!(get("engine_batch_size_count", &[]), 2.0);
        assert_eq!(get("engine_queue_delay_seconds_count", &[]), 5.0);
        let p50 = get("engine_queue_delay_seconds", &[("quantile", "0.5")]);
        assert!((p50 - 3e-6).abs() < 3e-6 * 0.01, "{p50}");
        let p999 = get("engine_queue_delay_seconds", &[("quantile", "0.999")]);
        assert!((p999 - 1e-3).abs() < 1e-3 * 0.01, "{p999}");
        let sum = get("engine_queue_delay_seconds_sum", &[]);
        assert!((sum - 1.011e-3).abs() < 1.011e-3 * 0.01, "{sum}");
        // Empty summaries report NaN quantiles and zero count.
        assert!(get("engine_handshake_seconds", &[("quantile", "0.5")]).is_nan());
        assert_eq!(get("engine_handshake_seconds_count", &[]), 0.0);
        assert!(get("engine_resident_memory_bytes", &[]) > 0.0);
    }

    #[test]
    fn network_metrics_are_real_numbers() {
        let src = busy_source();
        let t0 = Instant::now();
        let mut rate = RateMeter::default();
        rate.sample(0, t0 - Duration::from_secs(2));
        let m = src.network_metrics(&mut rate);
        assert!(m.messages_per_second > 0.0);
        assert_eq!(m.connections, 1);
        assert_eq!(m.latency_samples, 5);
        assert!((m.latency_p50_ns as f64 - 3000.0).abs() < 30.0);
        assert!(m.latency_p99_ns >= 999_000);
        assert!(m.latency_avg_ns > 200_000.0 && m.latency_avg_ns < 210_000.0);
        assert!(m.resident_memory_bytes.unwrap() > 1024 * 1024);
        assert_eq!(
            (
                m.messages_in,
                m.messages_out,
                m.delivered,
                m.relayed,
                m.dropped,
                m.batches
            ),
            (100, 90, 90, 6, 5, 3)
        );
    }

    #[test]
    fn exposition_parser_handles_escapes_and_rejects_garbage() {
        let s = parse_line(r#"m_total{a="x\"y\\z\n",b="1"} 12 1700000000000"#).unwrap();
        assert_eq!(s.name, "m_total");
        assert_eq!(s.label("a"), Some("x\"y\\z\n"));
        assert_eq!(s.label("b"), Some("1"));
        assert_eq!(s.value, 12.0);
        assert!(parse_line("m NaN").unwrap().value.is_nan());
        assert_eq!(parse_line("m{} +Inf").unwrap().value, f64::INFINITY);
        for bad in [
            "{a=\"1\"} 1",
            "m{a=1} 1",
            "m{a=\"1\" 1",
            "m",
            "m x",
            "m 1 2 3",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        // Label values with awkward characters survive a render/parse round trip.
        let mut e = Exposition(String::new());
        e.sample("x", &[("k", "a\"b\\c\nd,e=f}")], Num::Int(1));
        let back = parse_exposition(&e.0).unwrap();
        assert_eq!(back[0].label("k"), Some("a\"b\\c\nd,e=f}"));
    }

    #[test]
    fn requests_are_routed_and_validated() {
        let body = || "m 1\n".to_string();
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", body);
        assert_eq!((ok.status, ok.content_type), (200, CONTENT_TYPE));
        assert_eq!(ok.body, "m 1\n");
        assert_eq!(respond(b"GET /metrics?x=1 HTTP/1.0\n\n", body).status, 200);
        let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", body);
        assert!(head.head_only && !String::from_utf8(head.to_bytes()).unwrap().contains("m 1"));
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", body).status, 404);
        assert_eq!(respond(b"GET /metricsx HTTP/1.1\r\n\r\n", body).status, 404);
        assert_eq!(respond(b"POST /metrics HTTP/1.1\r\n\r\n", body).status, 405);
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"G3T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(respond(bad, body).status, 400, "{:?}", bad);
        }
        let bytes = respond(b"GET /metrics HTTP/1.1\r\n\r\n", body).to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("\r\nContent-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\nm 1\n"));
    }

    fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn server_survives_slow_oversized_and_bad_clients() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), busy_source()).unwrap();
        let addr = server.local_addr();
        // Oversized head: refused without reading it all.
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        // A client that never finishes its request is cut off after the timeout...
        let t = Instant::now();
        let slow = raw(addr, b"GET /metr");
        assert!(slow.starts_with("HTTP/1.1 408 "), "{slow}");
        assert!(t.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(2));
        // ... a client that connects and closes is ignored, and the server still answers.
        drop(TcpStream::connect(addr).unwrap());
        assert!(raw(addr, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
        assert!(raw(addr, b"GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let ok = raw(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.contains("engine_messages_total{direction=\"in\",outcome=\"received\"} 100\n"));
        // Dropping the server stops the thread and frees the port promptly.
        let t = Instant::now();
        drop(server);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(TcpStream::connect(addr).is_err());
    }
}
