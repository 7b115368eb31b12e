use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig};
use shards::client::{ClientConfig, ClientError};
use shards::shard::Delivery;

use crate::common::*;

/// A receiver that stops reading makes the engine stop reading its sender (QUIC flow
/// control pushes back) instead of growing queues: the sender's `send` blocks, the
/// engine's queued bytes stay under the bound, and once the receiver reads again every
/// message the sender got out arrives, in order.
#[test]
fn slow_receiver_bounds_memory_and_loses_nothing() {
    const CAPACITY: usize = 256 * 1024;
    let mut cfg = EngineConfig::loopback(1);
    cfg.queue_capacity = CAPACITY;
    let e = Engine::start(cfg).unwrap();
    let mut receiver = client_with(
        &e,
        ClientConfig {
            inbox_capacity: 64,
            ..ClientConfig::default()
        },
    );
    let mut sender = client_with(
        &e,
        ClientConfig {
            send_capacity: 128 * 1024,
            send_timeout: Duration::from_millis(300),
            ..ClientConfig::default()
        },
    );
    let dst = receiver.peer_id();
    let payload = vec![0x5au8; 1024];

    // Phase 1: the receiver does not read at all; the sender pushes as hard as it can.
    let limit = 50_000u64; // 50 MiB: far more than any queue may hold
    let mut sent = 0u64;
    let mut max_queued = 0u64;
    let started = Instant::now();
    let blocked = loop {
        match sender.send_with_seq(dst, sent, payload.clone()) {
            Ok(()) => sent += 1,
            Err(ClientError::SendTimeout(_)) => break true,
            Err(other) => panic!("send failed: {other}"),
        }
        max_queued = max_queued.max(e.stats().queued_bytes);
        if sent == limit || started.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    assert!(
        blocked,
        "sender was never pushed back ({sent} messages accepted)"
    );
    assert!(sent < limit);
    // Keep pushing for a while: nothing more gets in, the engine's queue stays bounded.
    for _ in 0..5 {
        assert!(matches!(
            sender.send_with_seq(dst, sent, payload.clone()),
            Err(ClientError::SendTimeout(_))
        ));
        max_queued = max_queued.max(e.stats().queued_bytes);
    }
    // One batch may land on top of the bound before the check stops the sender.
    let bound = (CAPACITY + 256 * 1024 + 64 * 1024) as u64;
    assert!(max_queued <= bound, "queued {max_queued} > {bound}");

    // Phase 2: the receiver reads; everything the sender got out arrives in order.
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < sent {
        assert!(Instant::now() < deadline, "only {next} of {sent} arrived");
        sender.poll(Duration::ZERO).unwrap();
        if let Some(d) = receiver.recv(Duration::from_millis(5)).unwrap() {
            match d {
                Delivery::Message {
                    seq, payload: p, ..
                } => {
                    assert_eq!(seq, next, "in order");
                    assert_eq!(p.len(), 1024);
                    next += 1;
                }
                Delivery::Error(err) => panic!("error record {err:?}"),
            }
        }
    }
    let s = e.stats();
    assert_eq!(s.dropped(), 0, "{s:?}");
    assert_eq!(s.relayed, sent);
}
