//! Encoding: the metric families of [`super::families::METRICS`], read from one snapshot of
//! the engine per scrape and written by `prometheus-client` in the text exposition format.

use std::fmt;
use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::registry::Registry;

use super::families::{Kind, METRICS, MetricDef, Read, Series, Value};
use super::{MetricsSource, RateMeter, Snapshot};

/// The content type of the text exposition format (version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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
    use crate::metrics::families::{BATCH_SIZE_BUCKETS, SECONDS_BUCKETS};
    use crate::metrics::tests::{busy_source, source};
    use shards::hist::Histograms;
    use shards::lifecycle::ConnState;
    use std::collections::{HashMap, HashSet};

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
