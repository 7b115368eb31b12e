//! The seed corpora, built with the engine's own encoders: valid encodings, truncations,
//! boundary lengths and the test vectors of docs/PROTOCOL.md. Deterministic, so the files
//! under `fuzz/corpus/` can be regenerated and checked for drift (see `tests.rs`).

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::session_recv::fuzz_key;
use crate::cid::{self, CID_LEN};
use crate::seal::{Sealer, vector_records};
use crate::wire::{ErrorCode, ErrorRecord, Message, PeerId, Record, encode_batch};

/// One seed file: target, file name, contents.
pub(super) type Seed = (&'static str, String, Vec<u8>);

pub(super) fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    wire_batch(&mut seeds);
    handshake_msg(&mut seeds);
    session_recv(&mut seeds);
    cid_route(&mut seeds);
    seeds
}

fn add(seeds: &mut Vec<Seed>, target: &'static str, name: &str, bytes: Vec<u8>) {
    seeds.push((target, format!("seed-{name}"), bytes));
}

fn batch(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_batch(records, &mut out);
    out
}

fn message(seq: u64, payload: &[u8]) -> Record {
    Record::Message(Message {
        dst: PeerId([0x11; 16]),
        src: PeerId([0x22; 16]),
        seq,
        payload: payload.to_vec(),
    })
}

fn error(code: u16, seq: u64, reason: &str) -> Record {
    Record::Error(ErrorRecord {
        code: ErrorCode::from_u16(code),
        seq,
        dst: PeerId([0x33; 16]),
        reason: reason.to_owned(),
    })
}

/// The sealed-frame test vector of docs/PROTOCOL.md, section 14.1 (key 00..1f, counter 7).
fn doc_sealed_vector() -> Vec<u8> {
    let mut frame = Vec::new();
    let ok = Sealer::with_counter(fuzz_key(), 7).seal_into(&batch(&vector_records()), &mut frame);
    assert!(ok.is_ok());
    frame
}

fn wire_batch(seeds: &mut Vec<Seed>) {
    const T: &str = "wire_batch";
    let vector = batch(&vector_records());
    add(seeds, T, "vector-plaintext", vector.clone());
    // Cuts at and around every field boundary of the vector's two records (45 + 5, 29 + 8).
    for cut in [1, 17, 33, 41, 44, 45, 49, 50, 51, 53, 61, 77, 78, 86] {
        add(
            seeds,
            T,
            &format!("vector-cut-{cut}"),
            vector.get(..cut).unwrap_or_default().to_vec(),
        );
    }
    add(seeds, T, "empty", Vec::new());
    add(seeds, T, "message-empty-payload", batch(&[message(0, b"")]));
    add(
        seeds,
        T,
        "message-4k",
        batch(&[message(u64::MAX, &[0xa5; 4096])]),
    );
    add(seeds, T, "error-empty-reason", batch(&[error(3, 9, "")]));
    add(
        seeds,
        T,
        "error-utf8-reason",
        batch(&[error(0xffff, 1, "é ü 語 🦀")]),
    );
    add(
        seeds,
        T,
        "mixed",
        batch(&[
            message(1, b"a"),
            error(1, 1, "no route"),
            message(2, &[0; 100]),
            error(5, 2, "stalled"),
            message(3, b""),
        ]),
    );
    for t in [0x00u8, 0x03, 0xff] {
        let mut b = vec![t];
        b.extend_from_slice(&[0; 44]);
        add(seeds, T, &format!("unknown-type-{t:02x}"), b);
    }
    let mut after = batch(&[message(1, b"x")]);
    after.push(0x09);
    add(seeds, T, "unknown-after-valid", after);
    let mut bad_utf8 = batch(&[error(1, 1, "ab")]);
    if let Some(last) = bad_utf8.last_mut() {
        *last = 0xff;
    }
    add(seeds, T, "invalid-utf8", bad_utf8);
    // Length fields announcing far more than is there.
    let mut huge = batch(&[message(7, b"abc")]);
    if let Some(len) = huge.get_mut(41..45) {
        len.copy_from_slice(&u32::MAX.to_be_bytes());
    }
    add(seeds, T, "message-len-u32-max", huge);
    let mut long_reason = batch(&[error(2, 7, "xy")]);
    if let Some(len) = long_reason.get_mut(27..29) {
        len.copy_from_slice(&u16::MAX.to_be_bytes());
    }
    add(seeds, T, "reason-len-u16-max", long_reason);
}

fn framed(len: u16, body: &[u8]) -> Vec<u8> {
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn with_mode(mode: &[u8], rest: &[u8]) -> Vec<u8> {
    [mode, rest].concat()
}

fn handshake_msg(seeds: &mut Vec<Seed>) {
    const T: &str = "handshake_msg";
    let msg1 = framed(32, &[0x09; 32]);
    // Mode 0: a stranger's bytes to a responder; data[1] + 1 is the chunk size.
    add(seeds, T, "responder-msg1", with_mode(&[0, 0xff], &msg1));
    add(
        seeds,
        T,
        "responder-msg1-bytewise",
        with_mode(&[0, 0], &msg1),
    );
    add(seeds, T, "responder-msg1-chunk3", with_mode(&[0, 2], &msg1));
    add(
        seeds,
        T,
        "responder-msg1-payload",
        with_mode(&[0, 0xff], &framed(40, &[0x5a; 40])),
    );
    add(
        seeds,
        T,
        "responder-msg1-max",
        with_mode(&[0, 0xff], &framed(1024, &[0x01; 1024])),
    );
    add(
        seeds,
        T,
        "responder-msg1-short",
        with_mode(&[0, 0xff], &framed(31, &[0x09; 31])),
    );
    add(
        seeds,
        T,
        "responder-zero-len",
        with_mode(&[0, 0xff], &framed(0, &[])),
    );
    add(
        seeds,
        T,
        "responder-len-1025",
        with_mode(&[0, 0], &framed(1025, &[0; 8])),
    );
    add(
        seeds,
        T,
        "responder-len-ffff",
        with_mode(&[0, 0xff], &framed(0xffff, &[0; 4])),
    );
    add(seeds, T, "responder-half-prefix", with_mode(&[0, 0], &[0]));
    add(
        seeds,
        T,
        "responder-incomplete",
        with_mode(&[0, 0xff], &framed(32, &[0x09; 20])),
    );
    let mut three = msg1.clone();
    three.extend_from_slice(&framed(64, &[0x33; 64]));
    three.extend_from_slice(b"sealed bytes after msg3");
    add(
        seeds,
        T,
        "responder-forged-msg3",
        with_mode(&[0, 0xff], &three),
    );
    add(
        seeds,
        T,
        "responder-forged-msg3-chunk5",
        with_mode(&[0, 4], &three),
    );
    // Mode 2: a stranger's bytes to an initiator waiting for msg2.
    add(
        seeds,
        T,
        "initiator-msg2-shaped",
        with_mode(&[2, 0xff], &framed(96, &[0x44; 96])),
    );
    add(
        seeds,
        T,
        "initiator-msg1-shaped",
        with_mode(&[2, 0xff], &msg1),
    );
    add(
        seeds,
        T,
        "initiator-len-1025",
        with_mode(&[2, 0xff], &framed(1025, &[])),
    );
    // Odd modes: honest peers; [mode, c2s chunk - 1, s2c chunk - 1, offset u16, xor mask,
    // trailer...]. Offsets: msg1 is c2s 0..34, msg3 c2s 34..100, msg2 s2c 0..98.
    let trailer = doc_sealed_vector();
    add(seeds, T, "talk", vec![1, 0xff, 0xff, 0, 0, 0]);
    add(seeds, T, "talk-bytewise", vec![1, 0, 0, 0, 0, 0]);
    add(seeds, T, "talk-chunks-3-7", vec![1, 2, 6, 0, 0, 0]);
    add(
        seeds,
        T,
        "talk-trailer",
        with_mode(&[1, 0xff, 0xff, 0, 0, 0], &trailer),
    );
    add(
        seeds,
        T,
        "talk-trailer-chunk10",
        with_mode(&[1, 9, 0xff, 0, 0, 0], &trailer),
    );
    for (name, mode, at, mask) in [
        ("flip-msg1-prefix", 1u8, 1u16, 0x01u8),
        ("flip-msg1-prefix-high", 1, 0, 0x80),
        ("flip-msg1-e", 1, 10, 0x80),
        ("flip-msg3-prefix", 1, 35, 0x01),
        ("flip-msg3-body", 1, 60, 0x10),
        ("flip-msg3-tag", 1, 99, 0x01),
        ("flip-msg2-prefix", 3, 1, 0x20),
        ("flip-msg2-e", 3, 5, 0x01),
        ("flip-msg2-s", 3, 50, 0x04),
        ("flip-msg2-tag", 3, 97, 0xff),
    ] {
        let [hi, lo] = at.to_be_bytes();
        add(
            seeds,
            T,
            &format!("talk-{name}"),
            vec![mode, 0xff, 0xff, hi, lo, mask],
        );
    }
    add(
        seeds,
        T,
        "talk-flip-past-end",
        vec![1, 0xff, 0xff, 0x10, 0, 0x01],
    );
}

/// Frames sealed under the fuzz key with counters 0, 1, ... of the given plaintexts.
fn sealed(plaintexts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut sealer = Sealer::new(fuzz_key());
    plaintexts
        .iter()
        .map(|p| {
            let mut f = Vec::new();
            assert!(sealer.seal_into(p, &mut f).is_ok());
            f
        })
        .collect()
}

fn session_recv(seeds: &mut Vec<Seed>) {
    const T: &str = "session_recv";
    let plains = [
        batch(&vector_records()),
        batch(&[message(9, b"second frame")]),
        batch(&[error(4, 10, "bye"), message(11, &[7; 300])]),
    ];
    let f = sealed(&plains);
    let (f0, f1, f2) = (&f[0], &f[1], &f[2]);
    let all = [f0.as_slice(), f1, f2].concat();
    // Raw mode: 0x80 | fin 0x40 | frames-per-read selector << 4 | log2 chunk.
    let raw = |mode: u8, stream: &[u8]| with_mode(&[0x80 | mode], stream);
    add(seeds, T, "raw-one-frame-fin", raw(0x40 | 0x0f, f0));
    add(
        seeds,
        T,
        "raw-three-frames-fin",
        raw(0x40 | 0x30 | 0x0f, &all),
    );
    add(
        seeds,
        T,
        "raw-three-frames-bytewise",
        raw(0x40 | 0x20, &all),
    );
    add(
        seeds,
        T,
        "raw-three-frames-chunk8-one-per-read",
        raw(0x40 | 0x03, &all),
    );
    add(seeds, T, "raw-three-frames-no-fin", raw(0x30 | 0x05, &all));
    let cut = all.get(..all.len() - 1).unwrap_or_default();
    add(
        seeds,
        T,
        "raw-cut-last-byte-fin",
        raw(0x40 | 0x30 | 0x04, cut),
    );
    add(seeds, T, "raw-cut-last-byte-open", raw(0x30 | 0x04, cut));
    add(
        seeds,
        T,
        "raw-header-only-fin",
        raw(0x40 | 0x0f, f0.get(..4).unwrap_or_default()),
    );
    add(
        seeds,
        T,
        "raw-half-header-fin",
        raw(0x40, f0.get(..2).unwrap_or_default()),
    );
    add(seeds, T, "raw-fin-only", raw(0x40, &[]));
    add(
        seeds,
        T,
        "raw-replay",
        raw(0x40 | 0x30 | 0x0f, &[f0.as_slice(), f0].concat()),
    );
    add(
        seeds,
        T,
        "raw-reorder",
        raw(0x40 | 0x30 | 0x0f, &[f1.as_slice(), f0].concat()),
    );
    let mut flipped = all.clone();
    if let Some(b) = flipped.get_mut(f0.len() + 10) {
        *b ^= 0x01;
    }
    add(
        seeds,
        T,
        "raw-flip-second-body",
        raw(0x40 | 0x30 | 0x0f, &flipped),
    );
    let mut flipped = all.clone();
    if let Some(b) = flipped.get_mut(f0.len() + 3) {
        *b ^= 0x01;
    }
    add(
        seeds,
        T,
        "raw-flip-second-header",
        raw(0x40 | 0x30 | 0x0f, &flipped),
    );
    for (name, header) in [
        ("len-0", 0u32),
        ("len-15", 15),
        ("len-16", 16),
        ("len-16mib", 16 << 20),
        ("len-16mib-plus-1", (16 << 20) + 1),
        ("len-u32-max", u32::MAX),
    ] {
        let mut stream = header.to_be_bytes().to_vec();
        stream.extend_from_slice(&[0; 40]);
        add(
            seeds,
            T,
            &format!("raw-{name}"),
            raw(0x40 | 0x30 | 0x0f, &stream),
        );
    }
    add(
        seeds,
        T,
        "raw-doc-vector-wrong-counter",
        raw(0x40 | 0x0f, &doc_sealed_vector()),
    );
    let bad = sealed(&[Vec::new()]);
    add(seeds, T, "raw-empty-plaintext", raw(0x40 | 0x0f, &bad[0]));
    let f = sealed(&[plains[0].clone(), vec![0x09]]);
    add(
        seeds,
        T,
        "raw-then-unknown-record",
        raw(0x40 | 0x0f, &f.concat()),
    );
    // 49 bytes: the vector's first record less its last payload byte.
    let f = sealed(&[plains[0].get(..49).unwrap_or_default().to_vec()]);
    add(seeds, T, "raw-truncated-record", raw(0x40 | 0x0f, &f[0]));

    // Op mode: 0 seal raw (u16 len), 1 seal records, 2 seal big, 3 raw (u8 len),
    // 4 deliver (u16), 5 read (u8), 6 fin, 7 leftover (u8).
    let records_op = |payload: &[u8]| {
        let mut op = vec![1, 1, 0x00, payload.len() as u8];
        op.extend_from_slice(payload);
        op.extend_from_slice(&[0x03, 3]);
        op.extend_from_slice(b"why");
        op
    };
    let mut ops = records_op(b"hello");
    ops.extend_from_slice(&[4, 0xff, 0xff, 5, 16, 6, 5, 16]);
    add(seeds, T, "ops-seal-deliver-read-fin", ops);
    let mut ops = records_op(b"one");
    ops.extend(records_op(b"two"));
    ops.extend_from_slice(&[
        4, 0, 30, 5, 1, 4, 0, 30, 5, 0, 5, 1, 4, 0xff, 0xff, 5, 1, 5, 1,
    ]);
    add(seeds, T, "ops-two-frames-partial-deliveries", ops);
    let mut ops = records_op(b"early");
    ops.extend(records_op(b"late"));
    ops.extend_from_slice(&[4, 0, 80, 7, 80, 4, 0xff, 0xff, 5, 8]);
    add(seeds, T, "ops-handshake-leftover", ops);
    let mut ops = records_op(b"after fin?");
    ops.extend_from_slice(&[6]);
    ops.extend(records_op(b"ignored"));
    add(seeds, T, "ops-fin-then-seal", ops);
    let mut ops = vec![0, 0, 5];
    ops.extend_from_slice(&[0x01, 0xaa, 0xbb, 0xcc, 0xdd]);
    ops.extend_from_slice(&[4, 0, 10, 6, 5, 3]);
    add(seeds, T, "ops-seal-raw-plaintext", ops);
    // A 320 KiB message: larger than one read chunk and than the kept buffer.
    let mut ops = vec![2, 0x9c, 0x40, 0x5a];
    for _ in 0..8 {
        ops.extend_from_slice(&[4, 0xff, 0xff, 5, 2]);
    }
    ops.extend(records_op(b"small after big"));
    ops.extend_from_slice(&[6]);
    add(seeds, T, "ops-big-frame-then-small", ops);
    let mut ops = records_op(b"x");
    ops.extend_from_slice(&[3, 4, 0, 0, 0, 20]);
    ops.extend(records_op(b"y"));
    add(seeds, T, "ops-garbage-between-frames", ops);
    // The FIN comes with the stream's last byte, after a read of a partial frame.
    let mut ops = records_op(b"fin with the last byte");
    ops.extend_from_slice(&[4, 0, 40, 5, 16, 6, 5, 16]);
    add(seeds, T, "ops-partial-read-then-fin", ops);
    // A stream that ends inside a frame: a sealed frame, then the start of another.
    let mut ops = records_op(b"whole");
    ops.extend_from_slice(&[3, 6, 0, 0, 0, 0x40, 1, 2, 6]);
    add(seeds, T, "ops-fin-mid-frame", ops);
}

/// An Initial long header of `version` with the given CIDs, padded to `total` bytes.
fn initial(version: u32, dcid: &[u8], scid: &[u8], total: usize) -> Vec<u8> {
    let mut p = vec![0xc0];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.push(0); // token length (varint 0)
    p.extend_from_slice(&[0x44, 0xb0]); // payload length (varint)
    p.resize(total.max(p.len()), 0);
    p
}

fn cid_route(seeds: &mut Vec<Seed>) {
    const T: &str = "cid_route";
    let mut rng = StdRng::seed_from_u64(7);
    let ours = cid::new_cid(3, &mut rng);
    let random_dcid = cid::new_cid(0xc4, &mut rng);
    let scid = [0x5c; 8];
    let mut short = vec![0x41];
    short.extend_from_slice(&ours);
    short.extend_from_slice(&[0x77; 24]);
    add(seeds, T, "short-ours", short.clone());
    add(
        seeds,
        T,
        "short-cid-cut",
        short.get(..CID_LEN).unwrap_or_default().to_vec(),
    );
    add(seeds, T, "short-two-bytes", vec![0x40, 5]);
    add(seeds, T, "empty", Vec::new());
    add(seeds, T, "one-byte-long", vec![0x80]);
    add(seeds, T, "long-no-dcid-byte", vec![0xc0, 0, 0, 0, 1]);
    add(
        seeds,
        T,
        "initial-1200",
        initial(1, &random_dcid, &scid, 1200),
    );
    add(
        seeds,
        T,
        "initial-1199",
        initial(1, &random_dcid, &scid, 1199),
    );
    add(seeds, T, "initial-dcid-7", initial(1, &[9; 7], &scid, 1200));
    add(seeds, T, "initial-dcid-8", initial(1, &[9; 8], &scid, 1200));
    add(
        seeds,
        T,
        "initial-dcid-20",
        initial(1, &[9; 20], &scid, 1200),
    );
    add(
        seeds,
        T,
        "initial-dcid-21",
        initial(1, &[9; 21], &scid, 1200),
    );
    add(seeds, T, "initial-dcid-0", initial(1, &[], &scid, 1200));
    add(
        seeds,
        T,
        "initial-unknown-version",
        initial(0x1a2a_3a4a, &random_dcid, &scid, 1200),
    );
    add(
        seeds,
        T,
        "initial-unknown-version-cid-255",
        initial(0xff00_001d, &[0xab; 255], &[0xcd; 255], 1200),
    );
    let mut handshake = initial(1, &ours, &scid, 60);
    if let Some(b) = handshake.first_mut() {
        *b = 0xe0;
    }
    add(seeds, T, "handshake-ours", handshake);
    let mut zero_rtt = initial(1, &random_dcid, &scid, 1200);
    if let Some(b) = zero_rtt.first_mut() {
        *b = 0xd0;
    }
    add(seeds, T, "zero-rtt-unknown", zero_rtt);
    let mut retry = initial(1, &ours, &scid, 40);
    if let Some(b) = retry.first_mut() {
        *b = 0xf0;
    }
    add(seeds, T, "retry", retry);
    let mut vn = vec![0x80, 0, 0, 0, 0, CID_LEN as u8];
    vn.extend_from_slice(&ours);
    vn.push(8);
    vn.extend_from_slice(&scid);
    vn.extend_from_slice(&[0, 0, 0, 1, 0xff, 0, 0, 0x1d]);
    add(seeds, T, "version-negotiation", vn);
}
