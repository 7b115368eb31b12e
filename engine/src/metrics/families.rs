//! The exported metric families, each declared once in [`METRICS`] (name, help, type, label
//! names and how its series are read), and their encoding with the `prometheus-client`
//! crate in the Prometheus text exposition format 0.0.4.
//!
//! # Design
//!
//! The engine's numbers already live elsewhere: relaxed atomics in every shard's
//! [`ShardStats`](shards::shard::ShardStats), the histograms each shard publishes every 250 ms,
//! the peer index, `/proc`. Mirroring them into `prometheus-client` counters would mean a
//! second copy updated on a timer. Instead [`EngineCollector`] is a custom
//! [`Collector`]: on each scrape it reads everything once (a `Snapshot`) and walks
//! [`METRICS`], encoding every family through `prometheus-client`'s [`DescriptorEncoder`] /
//! [`MetricEncoder`], which write names (including the `_total` suffix of counters), label
//! escaping, float formatting and histogram buckets. The collector can be registered into
//! any `prometheus_client::registry::Registry`, so an embedding program can expose the
//! engine's metrics next to its own; [`render_prometheus`] and the
//! [`MetricsServer`](super::MetricsServer) encode a registry holding only it.
//!
//! Adding a metric means adding one [`MetricDef`] to [`METRICS`] and one row to the table
//! below; a unit test fails if the two disagree.
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
//! | `engine_connections_ttl_closed_total` | counter | |
//! | `engine_connection_transitions_total` | counter | `state` (the state entered) |
//! | `engine_connections_stalled_closed_total` | counter | |
//! | `engine_handshake_failures_total` | counter | |
//! | `engine_seal_failures_total` | counter | |
//! | `engine_protocol_errors_total` | counter | |
//! | `engine_datagrams_total` | counter | `direction` = in, out |
//! | `engine_misrouted_datagrams_total` | counter | |
//! | `engine_unknown_datagrams_total` | counter | |
//! | `engine_rejected_initials_total` | counter | |
//! | `engine_handshake_timeouts_total` | counter | |
//! | `engine_error_records_dropped_total` | counter | |
//! | `engine_handshake_budget_drops_total` | counter | |
//! | `engine_udp_calls_total` | counter | `direction` = in, out |
//! | `engine_truncated_datagrams_total` | counter | |
//! | `engine_messages_total` | counter | `direction`, `outcome`, `reason` (see below) |
//! | `engine_shard_messages_total` | counter | `shard`, `direction`, `outcome` |
//! | `engine_error_records_total` | counter | `direction` = in, out |
//! | `engine_batches_total` | counter | |
//! | `engine_shard_batches_total` | counter | `shard` |
//! | `engine_batch_size` | histogram | le: [BATCH_SIZE_BUCKETS] (messages per batch) |
//! | `engine_queue_delay_seconds` | histogram | le: [SECONDS_BUCKETS] |
//! | `engine_relay_delay_seconds` | histogram | le: [SECONDS_BUCKETS] |
//! | `engine_handshake_seconds` | histogram | le: [SECONDS_BUCKETS] |
//! | `engine_receive_delay_seconds` | histogram | le: [SECONDS_BUCKETS] |
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
//!
//! A family whose value is unknown has no series: `engine_socket_receive_*` for a shard whose
//! socket `/proc/net/udp` does not list, `engine_resident_memory_bytes` without
//! `/proc/self/statm`.
//!
//! # Histograms
//!
//! The five distributions are Prometheus histograms (`_bucket{le="..."}`, `_sum`, `_count`),
//! cumulative since start, built on each scrape from the shards' HDR histograms. Durations are
//! in seconds with the buckets of [`SECONDS_BUCKETS`] (1, 2.5 and 5 per decade, 1 µs to
//! 10 s); batch sizes use [`BATCH_SIZE_BUCKETS`] (powers of two, 1 to 1024 messages). Every
//! histogram also has the `le="+Inf"` bucket, equal to `_count`. A value is counted in a
//! bucket when the low end of its HDR cell is at most the bound, so values at or below a bound
//! are never counted above it, and values above it by less than the HDR resolution (0.1 %;
//! exact below 2048 ns or 2048 messages) may be counted in it. `_sum` adds each cell's
//! midpoint (exact in the same range).
//!
//! Before, these five were summaries with `quantile="0.5|0.9|0.99|0.999"` series. A scraper
//! now computes quantiles with `histogram_quantile(0.99, rate(engine_queue_delay_seconds_bucket[5m]))`
//! (over any window and aggregated across nodes, which summaries did not allow), at the
//! resolution of the buckets. `_sum` and `_count` are unchanged. The exact since-start
//! quantiles remain available to embedding programs through
//! [`MetricsSource::network_metrics`].

use std::fmt;
use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shards::hist::Histograms;
use shards::lifecycle::ConnState;

use super::{DROP_REASONS, MetricsSource, RateMeter, Snapshot};
use crate::stats::EngineStats;

/// The content type of the text exposition format (version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds, in seconds, of the buckets of every `engine_*_seconds` histogram: 1, 2.5
/// and 5 per decade from 1 µs to 10 s (and `+Inf`).
pub const SECONDS_BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds, in messages, of the buckets of `engine_batch_size`: powers of two from 1 to
/// 1024 (and `+Inf`).
pub const BATCH_SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A monotonic counter; its name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets with `_bucket{le}`, `_sum` and `_count` series.
    Histogram,
}

impl Kind {
    /// The name the `# TYPE` line uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// A sample value.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// The series of one family read from a snapshot: label values in the order of
/// [`MetricDef::labels`] (an empty value leaves that label out, which is what an empty label
/// value means in Prometheus) and the value.
#[derive(Debug, Default)]
struct Series<'a> {
    rows: Vec<(Vec<&'a str>, Value)>,
}

impl<'a> Series<'a> {
    fn int(&mut self, labels: &[&'a str], v: u64) {
        self.rows.push((labels.to_vec(), Value::Int(v)));
    }

    fn float(&mut self, labels: &[&'a str], v: f64) {
        self.rows.push((labels.to_vec(), Value::Float(v)));
    }
}

/// How a family's series are read from a snapshot.
enum Read {
    /// Counter or gauge series.
    Values(for<'a> fn(&'a Snapshot, &mut Series<'a>)),
    /// A histogram of the merged shard histograms: the one `of` picks, each value divided by
    /// `per_unit` (1e9 for nanoseconds to seconds), over `buckets`.
    Histogram {
        of: fn(&Histograms) -> &Histogram<u64>,
        per_unit: f64,
        buckets: &'static [f64],
    },
}

/// One exported metric family.
pub struct MetricDef {
    /// The exported name (for counters including `_total`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The type.
    pub kind: Kind,
    /// Label names, in the order series carry them (histograms add `le`).
    pub labels: &'static [&'static str],
    read: Read,
}

impl fmt::Debug for MetricDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricDef")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl MetricDef {
    /// The name handed to `prometheus-client`, which appends `_total` to counters itself.
    fn base_name(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            _ => self.name,
        }
    }
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

/// A family with one unlabelled sample of the summed counters.
macro_rules! total {
    ($name:literal, $kind:ident, $help:literal, $field:ident) => {
        MetricDef {
            name: $name,
            help: $help,
            kind: Kind::$kind,
            labels: &[],
            read: Read::Values(|s, out| out.int(&[], s.totals.$field)),
        }
    };
}

/// A histogram family.
macro_rules! histogram {
    ($name:literal, $help:literal, $field:ident, $per_unit:expr, $buckets:expr) => {
        MetricDef {
            name: $name,
            help: $help,
            kind: Kind::Histogram,
            labels: &[],
            read: Read::Histogram {
                of: |h| &h.$field,
                per_unit: $per_unit,
                buckets: &$buckets,
            },
        }
    };
}

/// Every exported family, in exposition order.
pub static METRICS: &[MetricDef] = &[
    MetricDef {
        name: "engine_shards",
        help: "Number of shards (one executor and UDP socket each).",
        kind: Kind::Gauge,
        labels: &[],
        read: Read::Values(|s, out| out.int(&[], s.shards.len() as u64)),
    },
    MetricDef {
        name: "engine_connections",
        help: "Peers in the peer index by lifecycle state (state=new|connecting|connected|disconnected|failed).",
        kind: Kind::Gauge,
        labels: &["state"],
        read: Read::Values(|s, out| {
            for (state, n) in &s.states {
                out.int(&[state.as_str()], *n as u64);
            }
        }),
    },
    MetricDef {
        name: "engine_shard_connections",
        help: "Connections each shard holds right now, including ones still handshaking.",
        kind: Kind::Gauge,
        labels: &["shard"],
        read: Read::Values(|s, out| {
            for (st, label) in s.shards.iter().zip(&s.shard_labels) {
                out.int(&[label], st.connections);
            }
        }),
    },
    MetricDef {
        name: "engine_connections_opened_total",
        help: "Connections established, by origin (origin=accepted: a peer connected to us; origin=dialed: we connected out).",
        kind: Kind::Counter,
        labels: &["origin"],
        read: Read::Values(|s, out| {
            out.int(&["accepted"], s.totals.accepted);
            out.int(&["dialed"], s.totals.dialed);
        }),
    },
    total!(
        "engine_connections_closed_total",
        Counter,
        "Connections closed, for any reason.",
        closed
    ),
    total!(
        "engine_connection_refusals_total",
        Counter,
        "Connections refused because the connection limit was reached.",
        refused
    ),
    total!(
        "engine_connections_ttl_closed_total",
        Counter,
        "Connections closed gracefully by the pool TTL (no messages for --pool-ttl).",
        ttl_closed
    ),
    MetricDef {
        name: "engine_connection_transitions_total",
        help: "Lifecycle transitions of dialed peers, by the state entered.",
        kind: Kind::Counter,
        labels: &["state"],
        read: Read::Values(|s, out| {
            for (state, n) in ConnState::ALL.iter().zip(s.totals.transitions) {
                out.int(&[state.as_str()], n);
            }
        }),
    },
    total!(
        "engine_connections_stalled_closed_total",
        Counter,
        "Connections closed with code 0x7 (STALLED): data waited for the peer for the stall timeout without the peer granting flow-control credit.",
        stalled_closed
    ),
    total!(
        "engine_handshake_failures_total",
        Counter,
        "Connections that failed the Noise handshake.",
        handshake_failures
    ),
    total!(
        "engine_seal_failures_total",
        Counter,
        "Connections closed because a sealed frame failed authentication.",
        seal_failures
    ),
    total!(
        "engine_protocol_errors_total",
        Counter,
        "Connections closed for another protocol violation.",
        protocol_errors
    ),
    MetricDef {
        name: "engine_datagrams_total",
        help: "UDP datagrams (direction=in: received, direction=out: sent).",
        kind: Kind::Counter,
        labels: &["direction"],
        read: Read::Values(|s, out| {
            out.int(&["in"], s.totals.datagrams_in);
            out.int(&["out"], s.totals.datagrams_out);
        }),
    },
    total!(
        "engine_misrouted_datagrams_total",
        Counter,
        "Datagrams whose connection ID named another shard (steering failure).",
        misrouted
    ),
    total!(
        "engine_unknown_datagrams_total",
        Counter,
        "Datagrams for no known connection that were not a new Initial.",
        unknown_datagrams
    ),
    total!(
        "engine_handshake_timeouts_total",
        Counter,
        "Connections closed (HANDSHAKE_FAILED) because their QUIC and Noise handshakes did not finish within the handshake timeout; also counted in engine_handshake_failures_total.",
        handshake_timeouts
    ),
    total!(
        "engine_error_records_dropped_total",
        Counter,
        "ERROR records not sent because their sender's queue already held twice --queue-capacity; the messages they were about are counted as dropped regardless.",
        error_records_dropped
    ),
    total!(
        "engine_handshake_budget_drops_total",
        Counter,
        "New peers' Initials dropped without state because their shard already had --max-handshakes handshakes in progress.",
        handshake_budget_drops
    ),
    total!(
        "engine_rejected_initials_total",
        Counter,
        "Datagrams that would start a connection dropped unanswered and without state: under 1200 bytes or a destination connection ID under 8 bytes (RFC 9000 14.1, 7.2).",
        rejected_initials
    ),
    MetricDef {
        name: "engine_udp_calls_total",
        help: "UDP receive (direction=in) and send (direction=out) calls that moved datagrams; \
               engine_datagrams_total divided by this is datagrams per call.",
        kind: Kind::Counter,
        labels: &["direction"],
        read: Read::Values(|s, out| {
            out.int(&["in"], s.totals.receive_calls);
            out.int(&["out"], s.totals.send_calls);
        }),
    },
    total!(
        "engine_truncated_datagrams_total",
        Counter,
        "Datagrams dropped unread because they were larger than a receive slot (the largest QUIC payload allowed, plus 64 bytes).",
        truncated_datagrams
    ),
    MetricDef {
        name: "engine_messages_total",
        help: "Messages. direction=in,outcome=received: every message read from a peer; \
               direction=in,outcome=delivered: handed to this node's application; \
               direction=in,outcome=relayed: queued towards another peer; \
               direction=in,outcome=dropped: discarded, reason=unknown_destination|too_large|unreachable|shutting_down|sender_gone|stalled \
               (also covers messages the local application sent); \
               direction=out,outcome=sealed: sealed and written to a connection. \
               received is the total and delivered/relayed/dropped are fates, so do not sum over outcome.",
        kind: Kind::Counter,
        labels: &["direction", "outcome", "reason"],
        read: Read::Values(|s, out| {
            let t = &s.totals;
            out.int(&["in", "received", ""], t.messages_in);
            out.int(&["in", "delivered", ""], t.delivered_local);
            out.int(&["in", "relayed", ""], t.relayed);
            for (reason, n) in DROP_REASONS.iter().zip(drops(t)) {
                out.int(&["in", "dropped", reason], n);
            }
            out.int(&["out", "sealed", ""], t.messages_out);
        }),
    },
    MetricDef {
        name: "engine_shard_messages_total",
        help: "Messages per shard, with the direction and outcome labels of engine_messages_total \
               (outcome=dropped sums every reason).",
        kind: Kind::Counter,
        labels: &["shard", "direction", "outcome"],
        read: Read::Values(|s, out| {
            for (st, label) in s.shards.iter().zip(&s.shard_labels) {
                out.int(&[label, "in", "received"], st.messages_in);
                out.int(&[label, "in", "delivered"], st.delivered_local);
                out.int(&[label, "in", "relayed"], st.relayed);
                out.int(&[label, "in", "dropped"], st.dropped());
                out.int(&[label, "out", "sealed"], st.messages_out);
            }
        }),
    },
    MetricDef {
        name: "engine_error_records_total",
        help: "Error records (direction=in: received from peers, direction=out: sent back to senders).",
        kind: Kind::Counter,
        labels: &["direction"],
        read: Read::Values(|s, out| {
            out.int(&["in"], s.totals.errors_in);
            out.int(&["out"], s.totals.errors_out);
        }),
    },
    total!(
        "engine_batches_total",
        Counter,
        "Batches sealed and written.",
        batches_out
    ),
    MetricDef {
        name: "engine_shard_batches_total",
        help: "Batches sealed and written, per shard.",
        kind: Kind::Counter,
        labels: &["shard"],
        read: Read::Values(|s, out| {
            for (st, label) in s.shards.iter().zip(&s.shard_labels) {
                out.int(&[label], st.batches_out);
            }
        }),
    },
    histogram!(
        "engine_batch_size",
        "Messages per sealed batch, since start (published by shards every 250 ms).",
        batch_size,
        1.0,
        BATCH_SIZE_BUCKETS
    ),
    histogram!(
        "engine_queue_delay_seconds",
        "Time a message waited in its destination's batch queue before being sealed, since start.",
        queue_delay_ns,
        1e9,
        SECONDS_BUCKETS
    ),
    histogram!(
        "engine_relay_delay_seconds",
        "Time from a relayed message's receipt to its batch leaving the shard, since start.",
        relay_delay_ns,
        1e9,
        SECONDS_BUCKETS
    ),
    histogram!(
        "engine_handshake_seconds",
        "Time from a connection's first packet to the end of the Noise handshake, since start.",
        handshake_ns,
        1e9,
        SECONDS_BUCKETS
    ),
    histogram!(
        "engine_receive_delay_seconds",
        "Time a datagram waited in the kernel's socket receive queue before its shard read it (kernel receive timestamp to read; one datagram in 64 is measured), since start.",
        receive_delay_ns,
        1e9,
        SECONDS_BUCKETS
    ),
    MetricDef {
        name: "engine_socket_receive_drops_total",
        help: "Datagrams the kernel dropped at a shard's UDP socket (receive queue full), from /proc/net/udp; absent for a shard whose socket is not listed there.",
        kind: Kind::Counter,
        labels: &["shard"],
        read: Read::Values(|s, out| {
            for (q, label) in s.sockets.iter().zip(&s.shard_labels) {
                if let Some(q) = q {
                    out.int(&[label], q.drops);
                }
            }
        }),
    },
    MetricDef {
        name: "engine_socket_receive_queue_bytes",
        help: "Bytes waiting in a shard's UDP socket receive queue right now, from /proc/net/udp.",
        kind: Kind::Gauge,
        labels: &["shard"],
        read: Read::Values(|s, out| {
            for (q, label) in s.sockets.iter().zip(&s.shard_labels) {
                if let Some(q) = q {
                    out.int(&[label], q.rx_queue_bytes);
                }
            }
        }),
    },
    total!(
        "engine_queued_bytes",
        Gauge,
        "Bytes waiting in batch queues, not yet sealed.",
        queued_bytes
    ),
    MetricDef {
        name: "engine_resident_memory_bytes",
        help: "Resident set size of the engine process.",
        kind: Kind::Gauge,
        labels: &[],
        read: Read::Values(|s, out| {
            if let Some(rss) = s.rss {
                out.int(&[], rss);
            }
        }),
    },
    MetricDef {
        name: "engine_messages_per_second",
        help: "Messages received from peers per second, exponentially weighted moving average over 10 s.",
        kind: Kind::Gauge,
        labels: &[],
        read: Read::Values(|s, out| out.float(&[], s.rate)),
    },
];

/// Per-bucket (not cumulative) counts over `bounds`, the sum and the count of `h`, each
/// value divided by `per_unit`. See the module docs for how HDR cells meet bucket bounds.
fn buckets(h: &Histogram<u64>, per_unit: f64, bounds: &[f64]) -> (Vec<(f64, u64)>, f64, u64) {
    let mut counts: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
    let mut sum: u128 = 0;
    for v in h.iter_recorded() {
        let cell = v.value_iterated_to();
        let n = v.count_at_value();
        sum = sum.saturating_add(u128::from(h.median_equivalent(cell)) * u128::from(n));
        let low = h.lowest_equivalent(cell) as f64 / per_unit;
        if let Some((_, c)) = counts.iter_mut().find(|(b, _)| low <= *b) {
            *c += n;
        }
    }
    (counts, sum as f64 / per_unit, h.len())
}

/// Encodes one family's series.
fn encode_family(def: &MetricDef, snap: &Snapshot, mut metric: MetricEncoder<'_>) -> fmt::Result {
    match &def.read {
        Read::Values(read) => {
            let mut series = Series::default();
            read(snap, &mut series);
            for (values, value) in &series.rows {
                debug_assert_eq!(values.len(), def.labels.len(), "{}", def.name);
                let labels: Vec<(&str, &str)> = def
                    .labels
                    .iter()
                    .copied()
                    .zip(values.iter().copied())
                    .filter(|(_, v)| !v.is_empty())
                    .collect();
                let mut m = metric.encode_family(&labels)?;
                match (def.kind, *value) {
                    (Kind::Counter, Value::Int(v)) => {
                        m.encode_counter::<NoLabelSet, _, u64>(&v, None)?
                    }
                    (Kind::Counter, Value::Float(v)) => {
                        m.encode_counter::<NoLabelSet, _, f64>(&v, None)?
                    }
                    (Kind::Gauge, Value::Int(v)) => m.encode_gauge(&v)?,
                    (Kind::Gauge, Value::Float(v)) => m.encode_gauge(&v)?,
                    // A histogram is always read with `Read::Histogram`.
                    (Kind::Histogram, _) => return Err(fmt::Error),
                }
            }
            Ok(())
        }
        Read::Histogram {
            of,
            per_unit,
            buckets: bounds,
        } => {
            let (counts, sum, count) = buckets(of(&snap.hist), *per_unit, bounds);
            metric.encode_histogram::<NoLabelSet>(sum, count, &counts, None)
        }
    }
}

/// Encodes every family of [`METRICS`] from `snap`.
fn encode_snapshot(snap: &Snapshot, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
    for def in METRICS {
        let metric =
            encoder.encode_descriptor(def.base_name(), def.help, None, def.kind.metric_type())?;
        encode_family(def, snap, metric)?;
    }
    Ok(())
}

/// A `prometheus-client` [`Collector`] of the engine's metrics: every scrape reads the
/// shards' counters and published histograms, the peer index and `/proc` once, and encodes
/// the families of [`METRICS`]. It also keeps the messages-per-second [`RateMeter`], which
/// each scrape (and [`EngineCollector::sample_rate`]) samples.
#[derive(Debug)]
pub struct EngineCollector {
    src: MetricsSource,
    rate: Mutex<RateMeter>,
}

impl EngineCollector {
    /// A collector over `src` with a fresh [`RateMeter`].
    pub fn new(src: MetricsSource) -> Self {
        Self::with_rate(src, RateMeter::default())
    }

    /// A collector over `src` that continues `rate`.
    pub fn with_rate(src: MetricsSource, rate: RateMeter) -> Self {
        EngineCollector {
            src,
            rate: Mutex::new(rate),
        }
    }

    /// Samples the message rate with the current total of messages received; returns it.
    pub fn sample_rate(&self, now: std::time::Instant) -> f64 {
        let total = self.src.totals().messages_in;
        self.rate.lock().sample(total, now)
    }

    /// The rate meter as it stands.
    pub fn rate(&self) -> RateMeter {
        self.rate.lock().clone()
    }
}

impl Collector for EngineCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let snap = Snapshot::take(&self.src, &mut self.rate.lock());
        encode_snapshot(&snap, encoder)
    }
}

/// Encodes `registry` in the Prometheus text exposition format 0.0.4.
pub fn encode_text(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Renders every metric of `src` in the Prometheus text exposition format 0.0.4, and
/// samples `rate` with the current number of messages received.
pub fn render_prometheus(src: &MetricsSource, rate: &mut RateMeter) -> String {
    let collector = Arc::new(EngineCollector::with_rate(src.clone(), rate.clone()));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector.clone()));
    // Writing into a String cannot fail, and every family's values encode.
    let text = encode_text(&registry).unwrap_or_default();
    *rate = collector.rate();
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{busy_source, source};
    use std::collections::{BTreeSet, HashMap, HashSet};

    /// The metric name of a sample line.
    fn sample_name(line: &str) -> &str {
        line.split(['{', ' ']).next().unwrap()
    }

    /// Checks the document's structure: one HELP and one TYPE per family, before its samples;
    /// every sample belongs to the family declared last; no series twice; valid values.
    /// Returns each family's type and number of samples.
    fn families(doc: &str) -> HashMap<String, (String, usize)> {
        let mut types: HashMap<String, (String, usize)> = HashMap::new();
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
                    types
                        .insert(name.to_string(), (kind.to_string(), 0))
                        .is_none(),
                    "TYPE twice for {name}"
                );
                current = Some((name.to_string(), kind.to_string()));
            } else {
                let name = sample_name(line);
                let (fam, kind) = current.clone().expect("sample before any TYPE");
                let ok = name == fam
                    || (kind == "histogram"
                        && [("_bucket"), ("_sum"), ("_count")]
                            .iter()
                            .any(|s| name == format!("{fam}{s}")));
                assert!(ok, "{name} outside its family {fam}");
                let (series_key, value) = line.rsplit_once(' ').unwrap();
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "NaN" => f64::NAN,
                    v => v.parse().unwrap(),
                };
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                    assert!(value >= 0.0);
                }
                assert!(series.insert(series_key.to_string()), "{series_key} twice");
                if let Some(entry) = types.get_mut(&fam) {
                    entry.1 += 1;
                }
            }
        }
        types
    }

    /// Rows of the module docs' table: name, type and the label names in backticks.
    fn documented() -> Vec<(String, String, Vec<String>)> {
        include_str!("families.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `engine_"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let name = format!("engine_{}", cells[0].trim_end_matches('`'));
                let labels = cells[2]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                (name, cells[1].to_string(), labels)
            })
            .collect()
    }

    #[test]
    fn the_documented_table_lists_exactly_the_declared_metrics() {
        let declared: Vec<(String, String, Vec<String>)> = METRICS
            .iter()
            .map(|d| {
                (
                    d.name.to_string(),
                    d.kind.as_str().to_string(),
                    d.labels.iter().map(|l| l.to_string()).collect(),
                )
            })
            .collect();
        let documented = documented();
        for d in &declared {
            assert!(documented.contains(d), "declared but not documented: {d:?}");
        }
        for d in &documented {
            assert!(declared.contains(d), "documented but not declared: {d:?}");
        }
        assert_eq!(declared.len(), documented.len());
    }

    #[test]
    fn declarations_are_well_formed() {
        let names: BTreeSet<&str> = METRICS.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), METRICS.len(), "a name declared twice");
        for d in METRICS {
            assert!(d.name.starts_with("engine_"), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            assert!(d.help.ends_with('.'), "{}", d.name);
        }
        // Every series of a busy source carries exactly the declared labels.
        let snap = Snapshot::take(&busy_source(), &mut RateMeter::default());
        for d in METRICS {
            if let Read::Values(read) = &d.read {
                let mut s = Series::default();
                read(&snap, &mut s);
                for (values, _) in &s.rows {
                    assert_eq!(values.len(), d.labels.len(), "{}", d.name);
                }
            }
        }
    }

    #[test]
    fn rendered_text_parses_and_has_every_declared_family() {
        let doc = render_prometheus(&busy_source(), &mut RateMeter::default());
        let types = families(&doc);
        // An independent parser reads the whole document.
        let scrape = prometheus_parse::Scrape::parse(doc.lines().map(|l| Ok(l.to_string())))
            .expect("the exposition parses");
        for d in METRICS {
            let (kind, samples) = types.get(d.name).unwrap_or_else(|| panic!("{}", d.name));
            assert_eq!(kind, d.kind.as_str(), "{}", d.name);
            // With a busy source (and a real socket for shard 0) every family has samples.
            assert!(*samples > 0, "{} has no samples", d.name);
            assert!(scrape.docs.contains_key(d.name), "HELP for {}", d.name);
            assert!(
                scrape.samples.iter().any(|s| s.metric == d.name),
                "{} not parsed",
                d.name
            );
        }
        assert_eq!(types.len(), METRICS.len());
        // An idle source still declares every family.
        let idle = families(&render_prometheus(&source(1), &mut RateMeter::default()));
        for d in METRICS {
            assert_eq!(
                idle.get(d.name).map(|t| t.0.as_str()),
                Some(d.kind.as_str())
            );
        }
    }

    #[test]
    fn render_has_every_connection_state_once() {
        for src in [source(1), busy_source()] {
            let doc = render_prometheus(&src, &mut RateMeter::default());
            for state in ConnState::ALL {
                for name in ["engine_connections", "engine_connection_transitions_total"] {
                    let line = format!("{name}{{state=\"{}\"}} ", state.as_str());
                    assert_eq!(doc.matches(&line).count(), 1, "{line}");
                }
            }
        }
    }

    #[test]
    fn render_reports_the_counters_and_histograms() {
        use prometheus_parse::{Scrape, Value as V};
        let src = busy_source();
        let doc = render_prometheus(&src, &mut RateMeter::default());
        let scrape = Scrape::parse(doc.lines().map(|l| Ok(l.to_string()))).unwrap();
        let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
            let hits: Vec<_> = scrape
                .samples
                .iter()
                .filter(|s| {
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .collect();
            assert_eq!(hits.len(), 1, "{name} {labels:?}");
            match &hits[0].value {
                V::Counter(v) | V::Gauge(v) | V::Untyped(v) => *v,
                other => panic!("{name}: {other:?}"),
            }
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
        // Series without a reason carry no reason label at all.
        assert!(doc.contains("engine_messages_total{direction=\"in\",outcome=\"received\"} 100\n"));
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
        assert_eq!(get("engine_connections_ttl_closed_total", &[]), 2.0);
        assert_eq!(
            get(
                "engine_connection_transitions_total",
                &[("state", "connected")]
            ),
            3.0
        );
        assert_eq!(
            get("engine_socket_receive_drops_total", &[("shard", "0")]),
            0.0
        );
        assert!(get("engine_resident_memory_bytes", &[]) > 0.0);

        // Histograms: every bucket, +Inf, _sum and _count.
        let hist = |name: &str| match &scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("{name}"))
            .value
        {
            V::Histogram(b) => b.clone(),
            other => panic!("{name} is not a histogram: {other:?}"),
        };
        for (name, bounds) in [
            ("engine_batch_size", &BATCH_SIZE_BUCKETS[..]),
            ("engine_queue_delay_seconds", &SECONDS_BUCKETS[..]),
            ("engine_relay_delay_seconds", &SECONDS_BUCKETS[..]),
            ("engine_handshake_seconds", &SECONDS_BUCKETS[..]),
            ("engine_receive_delay_seconds", &SECONDS_BUCKETS[..]),
        ] {
            let b = hist(name);
            let les: Vec<f64> = b.iter().map(|c| c.less_than).collect();
            let mut want = bounds.to_vec();
            want.push(f64::INFINITY);
            assert_eq!(les, want, "{name}");
            assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "{name}");
            let inf = b.last().unwrap().count;
            assert_eq!(get(&format!("{name}_count"), &[]), inf, "{name}");
        }
        let le = |name: &str, bound: f64| {
            hist(name)
                .iter()
                .find(|c| c.less_than == bound)
                .unwrap()
                .count
        };
        // Batch sizes 30 and 60: exact.
        assert_eq!(le("engine_batch_size", 16.0), 0.0);
        assert_eq!(le("engine_batch_size", 32.0), 1.0);
        assert_eq!(le("engine_batch_size", 64.0), 2.0);
        assert_eq!(get("engine_batch_size_sum", &[]), 90.0);
        assert_eq!(get("engine_batch_size_count", &[]), 2.0);
        // Queue delays 1, 2, 3, 5 µs and 1 ms: a value on a bound is counted in it.
        let q = "engine_queue_delay_seconds";
        assert_eq!(le(q, 1e-6), 1.0);
        assert_eq!(le(q, 2.5e-6), 2.0);
        assert_eq!(le(q, 5e-6), 4.0);
        assert_eq!(le(q, 5e-4), 4.0);
        assert_eq!(le(q, 1e-3), 5.0);
        assert_eq!(get(&format!("{q}_count"), &[]), 5.0);
        let sum = get(&format!("{q}_sum"), &[]);
        assert!((sum - 1.011e-3).abs() < 1.011e-3 * 0.01, "{sum}");
        // Empty histograms: zero everywhere.
        assert_eq!(get("engine_handshake_seconds_count", &[]), 0.0);
        assert_eq!(get("engine_handshake_seconds_sum", &[]), 0.0);
        assert!(
            hist("engine_handshake_seconds")
                .iter()
                .all(|c| c.count == 0.0)
        );
    }

    #[test]
    fn bucket_counts_respect_bounds_and_scale() {
        let mut h = Histograms::new().queue_delay_ns;
        for v in [999u64, 1000, 1001, 2_500_000, 2_500_001, 20_000_000_000] {
            h.saturating_record(v);
        }
        let (counts, sum, count) = buckets(&h, 1e9, &SECONDS_BUCKETS);
        assert_eq!(count, 6);
        let at = |b: f64| counts.iter().find(|(x, _)| *x == b).unwrap().1;
        assert_eq!(at(1e-6), 2);
        assert_eq!(at(2.5e-6), 1);
        // 2.5 ms and a value 1 ns above it share an HDR cell that starts below 2.5 ms.
        assert_eq!(at(2.5e-3), 2);
        // 20 s is above the last bound: only in +Inf (the count).
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 5);
        assert!((sum - 20.005).abs() < 20.005 * 0.001, "{sum}");
    }

    #[test]
    fn collector_samples_the_rate_and_registers_anywhere() {
        let src = busy_source();
        // A baseline of 0 messages 2 s ago: the scrape sees 100 more.
        let mut rate = RateMeter::default();
        let t0 = std::time::Instant::now();
        rate.sample(0, t0 - std::time::Duration::from_secs(2));
        let collector = Arc::new(EngineCollector::with_rate(src, rate));
        let mut registry = Registry::with_prefix("app");
        registry.register_collector(Box::new(collector.clone()));
        let text = encode_text(&registry).unwrap();
        // A registry prefix applies to the engine's families too.
        assert!(text.contains("\napp_engine_batches_total 3\n"), "{text}");
        assert!(collector.rate().rate() > 0.0);
    }
}
