//! What a shard does first with every datagram: find the owning shard from the destination
//! connection ID (`shards::cid::shard_of`) and parse the QUIC header
//! (`quiche::Header::from_slice`) of a short-header (1-RTT) packet; plus `new_cid`, run once
//! per new connection. Run: `cargo bench -p shards --bench routing`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use shards::cid::{CID_LEN, new_cid, shard_of};

/// A 1-RTT datagram as it arrives: short-header flags, the 16-byte DCID, then an encrypted
/// payload (its contents do not matter to header parsing).
fn short_header_packet(dcid: &[u8; CID_LEN]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1200);
    p.push(0x41); // header form 0 (short), fixed bit 1, packet number length 2
    p.extend_from_slice(dcid);
    p.resize(1200, 0xa5);
    p
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    g.throughput(Throughput::Elements(1));
    let mut rng = StdRng::seed_from_u64(1);
    let cid = new_cid(3, &mut rng);

    g.bench_function("shard_of", |b| {
        b.iter(|| shard_of(black_box(&cid), black_box(4)))
    });
    g.bench_function("new_cid", |b| b.iter(|| new_cid(black_box(3), &mut rng)));

    let packet = short_header_packet(&cid);
    g.bench_function("header_from_slice_short", |b| {
        let mut buf = packet.clone();
        b.iter(|| {
            let hdr = quiche::Header::from_slice(black_box(&mut buf), CID_LEN);
            assert!(hdr.is_ok(), "the benchmark packet parses");
            hdr.map(|h| h.dcid.len()).unwrap_or(0)
        })
    });
    g.bench_function("header_from_slice_short+shard_of", |b| {
        let mut buf = packet.clone();
        b.iter(|| {
            quiche::Header::from_slice(black_box(&mut buf), CID_LEN)
                .ok()
                .and_then(|h| shard_of(&h.dcid, 4))
        })
    });
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
