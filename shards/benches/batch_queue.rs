//! Cost of a destination's batch queue (`shards::batch::BatchQueue`) per message: push N
//! messages, then take them as one batch with `pop_batch_into`, as a shard does between a
//! message's arrival and its batch being sealed. Run: `cargo bench -p shards --bench batch_queue`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shards::batch::{BatchPolicy, BatchQueue};
use shards::wire::{Message, PeerId, Record};

fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_queue");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for n in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("push+pop_batch", n), |b| {
            let mut q = BatchQueue::new(BatchPolicy::default());
            let mut out = Vec::with_capacity(n);
            // The messages are built once and moved through the queue and back, so the
            // loop measures the queue rather than the allocator.
            let mut items: Vec<Record> = (0..n)
                .map(|i| {
                    Record::Message(Message {
                        dst: PeerId([1; 16]),
                        src: PeerId([2; 16]),
                        seq: i as u64,
                        payload: vec![0x5a; 64],
                    })
                })
                .collect();
            b.iter(|| {
                let now = Instant::now();
                for r in items.drain(..) {
                    let size = r.encoded_len();
                    q.push(r, size, now);
                }
                out.clear();
                let taken = q.pop_batch_into(&mut out);
                items.extend(out.drain(..).map(|(r, _)| r));
                black_box(taken)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, queue);
criterion_main!(benches);
