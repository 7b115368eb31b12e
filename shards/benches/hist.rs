//! Cost of merging a shard's histograms into its shared copy (`Histograms::add`), which
//! every shard does once per 250 ms publish period (one merge per iteration).
//! The local histograms hold a period's worth of varied samples.
//! Run: `cargo bench -p shards --bench hist`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shards::hist::Histograms;

/// A period of samples: queue and relay delays from 1 µs to ~10 ms, batch sizes 1..=128,
/// a few handshakes and receive delays.
fn populated() -> Histograms {
    let mut h = Histograms::new();
    for i in 0..10_000u64 {
        let ns = 1_000 + (i * 7_919) % 10_000_000;
        h.queue_delay_ns.saturating_record(ns);
        h.relay_delay_ns.saturating_record(ns / 2 + 500);
        h.batch_size.saturating_record(1 + i % 128);
        if i % 64 == 0 {
            h.receive_delay_ns.saturating_record(ns / 10 + 1);
        }
        if i % 1_000 == 0 {
            h.handshake_ns.saturating_record(2_000_000 + ns);
        }
    }
    h
}

fn merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("hist");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    g.throughput(Throughput::Elements(1));
    let local = populated();
    g.bench_function("add", |b| {
        let mut shared = Histograms::new();
        b.iter(|| shared.add(black_box(&local)))
    });
    g.finish();
}

criterion_group!(benches, merge);
criterion_main!(benches);
