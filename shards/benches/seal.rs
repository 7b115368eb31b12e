//! Cost of sealing and opening one batch (`shards::seal`): one ChaCha20-Poly1305 operation
//! per frame, whatever the number of records in it. Batches of 1, 16 and 128 messages of
//! 64 B (and 128 x 1 KiB), reported per message. The plaintext is encoded once in setup, so
//! this measures the AEAD and framing only (`wire` measures the codec). The `aead` group
//! measures the candidate AEAD backends' raw calls side by side; `Sealer` uses the fastest.
//! Run: `cargo bench -p shards --bench seal`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shards::seal::{HEADER_LEN, Opener, SealKey, Sealer};
use shards::wire::{Message, PeerId, Record, encode_batch};

fn plaintext(n: usize, size: usize) -> Vec<u8> {
    let records: Vec<Record> = (0..n)
        .map(|i| {
            Record::Message(Message {
                dst: PeerId([1; 16]),
                src: PeerId([2; 16]),
                seq: i as u64,
                payload: vec![0x5a; size],
            })
        })
        .collect();
    let mut plain = Vec::new();
    encode_batch(&records, &mut plain);
    plain
}

fn seal_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for (n, size) in [(1usize, 64usize), (16, 64), (128, 64), (128, 1024)] {
        let plain = plaintext(n, size);
        g.throughput(Throughput::Elements(n as u64));
        let id = format!("{n}x{size}B");
        g.bench_with_input(BenchmarkId::new("seal", &id), &plain, |b, p| {
            let mut sealer = Sealer::new(SealKey::from_bytes([7; 32]));
            let mut out = Vec::with_capacity(p.len() + 64);
            b.iter(|| {
                out.clear();
                let sealed = sealer.seal_into(black_box(p), &mut out);
                assert!(sealed.is_ok(), "sealing a benchmark batch succeeds");
                out.len()
            })
        });
        g.bench_with_input(BenchmarkId::new("open", &id), &plain, |b, p| {
            // Frames must be opened in counter order, so setup (not timed) seals the next
            // frame for every iteration with the same key the opener walks.
            let mut sealer = Sealer::new(SealKey::from_bytes([7; 32]));
            let mut opener = Opener::new(SealKey::from_bytes([7; 32]));
            b.iter_batched_ref(
                || {
                    let mut frame = Vec::with_capacity(p.len() + 64);
                    let sealed = sealer.seal_into(p, &mut frame);
                    assert!(sealed.is_ok(), "sealing a benchmark batch succeeds");
                    frame
                },
                |frame| {
                    let mut header = [0u8; HEADER_LEN];
                    header.copy_from_slice(&frame[..HEADER_LEN]);
                    let opened = opener.open_in_place(header, &mut frame[HEADER_LEN..]);
                    assert!(opened.is_ok(), "a frame sealed in order opens");
                    opened.unwrap_or(0)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The raw AEAD call of each candidate backend on the same plaintexts, side by side: the
/// RustCrypto `chacha20poly1305` crate, and ring's (BoringSSL-derived assembly).
fn backends(c: &mut Criterion) {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let mut g = c.benchmark_group("aead");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for (n, size) in [(1usize, 64usize), (16, 64), (128, 64), (128, 1024)] {
        let plain = plaintext(n, size);
        g.throughput(Throughput::Bytes(plain.len() as u64));
        let id = format!("{n}x{size}B");
        g.bench_with_input(BenchmarkId::new("rustcrypto", &id), &plain, |b, p| {
            let cipher = chacha20poly1305::ChaCha20Poly1305::new(
                chacha20poly1305::Key::from_slice(&[7; 32]),
            );
            let mut buf = p.clone();
            b.iter(|| {
                let tag = cipher.encrypt_in_place_detached(
                    chacha20poly1305::Nonce::from_slice(&[0; 12]),
                    &[0; 4],
                    black_box(&mut buf),
                );
                assert!(tag.is_ok());
                tag.map(|t| t[0]).unwrap_or(0)
            })
        });
        g.bench_with_input(BenchmarkId::new("ring", &id), &plain, |b, p| {
            let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &[7; 32]);
            let Ok(unbound) = unbound else {
                unreachable!("a 32-byte key is a valid ChaCha20-Poly1305 key")
            };
            let key = ring::aead::LessSafeKey::new(unbound);
            let mut buf = p.clone();
            b.iter(|| {
                let tag = key.seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key([0; 12]),
                    ring::aead::Aad::from([0u8; 4]),
                    black_box(&mut buf),
                );
                assert!(tag.is_ok());
                tag.map(|t| t.as_ref()[0]).unwrap_or(0)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal_open, backends);
criterion_main!(benches);
