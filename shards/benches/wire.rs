//! Cost of the record codec (`shards::wire`): encoding a batch of messages into the
//! plaintext of one sealed frame and decoding it back, by batch size, 64 B payloads.
//! Run: `cargo bench -p shards --bench wire`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shards::wire::{Message, PeerId, Record, decode_batch, encode_batch};

const SIZES: [usize; 3] = [1, 16, 128];
const PAYLOAD: usize = 64;

fn batch(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::Message(Message {
                dst: PeerId([1; 16]),
                src: PeerId([2; 16]),
                seq: i as u64,
                payload: vec![0x5a; PAYLOAD],
            })
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for n in SIZES {
        let records = batch(n);
        let mut plain = Vec::new();
        encode_batch(&records, &mut plain);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("encode", n), &records, |b, r| {
            let mut out = Vec::with_capacity(plain.len());
            b.iter(|| {
                out.clear();
                encode_batch(black_box(r), &mut out);
                out.len()
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", n), &plain, |b, p| {
            let mut out = Vec::with_capacity(n);
            b.iter(|| {
                out.clear();
                let decoded = decode_batch(black_box(p), &mut out);
                assert!(decoded.is_ok(), "benchmark batch decodes");
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
