//! The exported metric families, each declared once in [`METRICS`] (name, help, type, label
//! names and how its series are read). [`super::encode`] writes them with the
//! `prometheus-client` crate in the Prometheus text exposition format 0.0.4.
//!
//! # Design
//!
//! The engine's numbers already live elsewhere: relaxed atomics in every shard's
//! [`ShardStats`](shards::shard::ShardStats), the histograms each shard publishes every 250 ms,
//! the peer index, `/proc`. Mirroring them into `prometheus-client` counters would mean a
//! second copy updated on a timer. Instead
//! [`EngineCollector`](super::EngineCollector) is a custom
//! [`Collector`](prometheus_client::collector::Collector): on each scrape it reads everything once (a `Snapshot`) and walks
//! [`METRICS`], encoding every family through `prometheus-client`'s `DescriptorEncoder` /
//! `MetricEncoder`, which write names (including the `_total` suffix of counters), label
//! escaping, float formatting and histogram buckets. The collector can be registered into
//! any `prometheus_client::registry::Registry`, so an embedding program can expose the
//! engine's metrics next to its own; [`render_prometheus`](super::render_prometheus) encodes
//! a registry holding only it, and the [`MetricsServer`](super::MetricsServer) one holding it
//! and the server's own counter (below).
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
//! | `engine_unparsable_datagrams_total` | counter | |
//! | `engine_address_validation_total` | counter | `outcome` = retry_sent, validated, invalid_token |
//! | `engine_rejected_initials_total` | counter | |
//! | `engine_handshake_timeouts_total` | counter | |
//! | `engine_frame_timeouts_total` | counter | |
//! | `engine_error_records_dropped_total` | counter | |
//! | `engine_handshake_budget_drops_total` | counter | |
//! | `engine_udp_calls_total` | counter | `direction` = in, out |
//! | `engine_udp_gso_total` | counter | `unit` = sends, datagrams |
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
//! | `engine_buffered_bytes` | gauge | |
//! | `engine_memory_limit_total` | counter | `event` = initial_dropped, reading_paused |
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
//! The [`MetricsServer`](super::MetricsServer) adds one family of its own, not read from the
//! engine and so not declared here: `engine_metrics_rejected_connections_total` (counter),
//! connections to the metrics endpoint answered 503 at once because 8 were already being
//! served.
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
//! [`MetricsSource::network_metrics`](super::MetricsSource::network_metrics).

use std::fmt;

use hdrhistogram::Histogram;
use prometheus_client::metrics::MetricType;
use shards::hist::Histograms;
use shards::lifecycle::ConnState;

use super::{DROP_REASONS, Snapshot};
use crate::stats::EngineStats;

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

    pub(super) fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// A sample value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value {
    Int(u64),
    Float(f64),
}

/// The series of one family read from a snapshot: label values in the order of
/// [`MetricDef::labels`] (an empty value leaves that label out, which is what an empty label
/// value means in Prometheus) and the value.
#[derive(Debug, Default)]
pub(super) struct Series<'a> {
    pub(super) rows: Vec<(Vec<&'a str>, Value)>,
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
pub(super) enum Read {
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
    pub(super) read: Read,
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
    pub(super) fn base_name(&self) -> &'static str {
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
        help: "Connections established, by origin (origin=accepted: a peer connected to us, authenticated, and found a place under --max-connections; origin=dialed: we connected out).",
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
        "engine_unparsable_datagrams_total",
        Counter,
        "Datagrams dropped because their QUIC header did not parse.",
        unparsable_datagrams
    ),
    MetricDef {
        name: "engine_address_validation_total",
        help: "QUIC Retry address validation: outcome=retry_sent: a new peer's Initial was \
               answered with a Retry instead of state (more than --retry-threshold handshakes \
               in progress); outcome=validated: an Initial's token checked out; \
               outcome=invalid_token: an Initial was dropped for a malformed, forged, foreign \
               or expired token.",
        kind: Kind::Counter,
        labels: &["outcome"],
        read: Read::Values(|s, out| {
            out.int(&["retry_sent"], s.totals.retries_sent);
            out.int(&["validated"], s.totals.address_validated);
            out.int(&["invalid_token"], s.totals.invalid_tokens);
        }),
    },
    total!(
        "engine_handshake_timeouts_total",
        Counter,
        "Connections closed (HANDSHAKE_FAILED) because their QUIC and Noise handshakes did not finish within the handshake timeout; also counted in engine_handshake_failures_total.",
        handshake_timeouts
    ),
    total!(
        "engine_frame_timeouts_total",
        Counter,
        "Connections closed (PROTOCOL_VIOLATION) because a sealed frame was still incomplete --frame-timeout after its first bytes arrived; also counted in engine_protocol_errors_total.",
        frame_timeouts
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
        "Datagrams that would start a connection but start none, without state: under 1200 bytes or a destination connection ID under 8 bytes (RFC 9000 14.1, 7.2; unanswered), an unsupported version (answered with Version Negotiation), or an Initial while the node drains or accepts no connections, or one the QUIC stack refused.",
        rejected_initials
    ),
    MetricDef {
        name: "engine_udp_calls_total",
        help: "UDP receive (direction=in) and send (direction=out) calls made, receives \
               that found the socket empty and the waits for it included; \
               engine_datagrams_total divided by this is datagrams per call.",
        kind: Kind::Counter,
        labels: &["direction"],
        read: Read::Values(|s, out| {
            out.int(&["in"], s.totals.receive_calls);
            out.int(&["out"], s.totals.send_calls);
        }),
    },
    MetricDef {
        name: "engine_udp_gso_total",
        help: "UDP GSO: unit=sends counts buffers the kernel cut into several datagrams \
               (one pass through the network stack each), unit=datagrams the datagrams they \
               carried (of engine_datagrams_total{direction=\"out\"}).",
        kind: Kind::Counter,
        labels: &["unit"],
        read: Read::Values(|s, out| {
            out.int(&["sends"], s.totals.gso_sends);
            out.int(&["datagrams"], s.totals.gso_datagrams);
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
    total!(
        "engine_buffered_bytes",
        Gauge,
        "Bytes the node's connections hold, counted against --memory-limit: batch queues, sealed frames QUIC has not taken, and bytes received but not yet consumed.",
        buffered_bytes
    ),
    MetricDef {
        name: "engine_memory_limit_total",
        help: "At --memory-limit: event=initial_dropped counts new peers' Initials dropped \
               without state; event=reading_paused counts the times a shard stopped reading \
               from peers until the node fell below the limit.",
        kind: Kind::Counter,
        labels: &["event"],
        read: Read::Values(|s, out| {
            out.int(&["initial_dropped"], s.totals.memory_limit_drops);
            out.int(&["reading_paused"], s.totals.memory_pauses);
        }),
    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RateMeter;
    use crate::metrics::tests::busy_source;
    use std::collections::BTreeSet;

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
}
