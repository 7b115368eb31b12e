//! Cost of the per-batch work on the hot path: encode a batch of records and seal it with
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
//! one AEAD operation, then open and decode it. Run: `cargo bench -p shards --bench seal`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shards::seal::{Opener, SealKey, Sealer};
use shards::wire::{Message, PeerId, Record, decode_batch, encode_batch};

fn batch(n: usize, size: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::Message(Message {
                dst: PeerId([1; 16]),
                src: PeerId([2; 16]),
                seq: i as u64,
                payload: vec![0x5a; size],
            })
        })
        .collect()
}

fn seal_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for (n, size) in [(1usize, 64usize), (128, 64), (128, 1024)] {
        let records = batch(n, size);
        let mut plain = Vec::new();
        encode_batch(&records, &mut plain);
        g.throughput(Throughput::Bytes(plain.len() as u64));
        let id = format!("{n}x{size}B");
        g.bench_with_input(BenchmarkId::new("encode+seal", &id), &records, |b, r| {
            let mut sealer = Sealer::new(SealKey::from_bytes([7; 32]));
            let mut plain = Vec::new();
            let mut out = Vec::new();
            b.iter(|| {
                plain.clear();
                out.clear();
                encode_batch(r, &mut plain);
                sealer.seal_into(&plain, &mut out).unwrap();
                out.len()
            })
        });
        g.bench_with_input(BenchmarkId::new("open+decode", &id), &plain, |b, p| {
            // Pre-seal enough frames with consecutive counters for the opener to walk.
            let mut sealer = Sealer::new(SealKey::from_bytes([7; 32]));
            let mut opener = Opener::new(SealKey::from_bytes([7; 32]));
            let mut frame = Vec::new();
            let mut records = Vec::new();
            b.iter(|| {
                frame.clear();
                sealer.seal_into(p, &mut frame).unwrap();
                let header = [frame[0], frame[1], frame[2], frame[3]];
                let n = opener.open_in_place(header, &mut frame[4..]).unwrap();
                records.clear();
                decode_batch(&frame[4..4 + n], &mut records).unwrap();
                records.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
