use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig};
use shards::batch::BatchPolicy;
use shards::shard::Delivery;

use crate::common::*;

/// Messages sitting in a batch queue when shutdown starts are delivered before the
/// connections close, and the drain ends well inside its bound.
#[test]
fn graceful_shutdown_delivers_queued_messages() {
    let mut cfg = EngineConfig::loopback(2);
    // Nothing flushes on its own: only the drain can send these.
    cfg.batch = BatchPolicy {
        max_messages: 100_000,
        max_bytes: 16 * 1024 * 1024,
        timeout: Duration::from_secs(60),
    };
    let e = Engine::start(cfg).unwrap();
    let mut a = client(&e);
    let mut b = client(&e);
    let dst = b.peer_id();
    for i in 0..500u64 {
        a.send_with_seq(dst, i, i.to_le_bytes().to_vec()).unwrap();
    }
    a.flush().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            a.poll(Duration::from_millis(1)).unwrap();
            e.stats().relayed == 500
        }),
        "all 500 queued at the engine"
    );
    assert!(b.poll(Duration::from_millis(50)).is_ok());
    assert!(b.try_recv().is_none(), "nothing delivered before shutdown");
    assert!(e.stats().queued_bytes > 0);

    let started = Instant::now();
    let stopper = std::thread::spawn(move || e.shutdown(Duration::from_secs(5)));
    let a_thread = std::thread::spawn(move || a.close(Duration::from_secs(5)));
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        match b.recv(Duration::from_millis(20)) {
            Ok(Some(Delivery::Message { seq, .. })) => got.push(seq),
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => {}
            Err(_) => break, // closed
        }
    }
    assert!(b.is_closed(), "the node finished the session and it closed");
    let stats = stopper.join().unwrap().expect("clean shutdown");
    a_thread.join().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(6), "drain bounded");
    assert_eq!(
        got,
        (0..500).collect::<Vec<_>>(),
        "every queued message delivered in order"
    );
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    assert_eq!(stats.connections, 0);
}

/// A shutdown is not held up by commands that wait for room: with the node's queue for a
/// peer that never reads full, sends from the embedding program back up behind it (the
/// shard stops taking commands), yet the drain starts at once and the shutdown returns
/// soon after its deadline, long before the stalled peer would be closed (10 s).
#[test]
fn shutdown_is_not_held_up_by_commands_waiting_for_room() {
    let mut cfg = EngineConfig::loopback(1);
    cfg.queue_capacity = 64 * 1024;
    let e = Engine::start(cfg).unwrap();
    // Never polled again after connecting: it reads nothing, so QUIC flow control stops
    // the node after one window and everything else queues at the node.
    let silent = client(&e);
    let dst = silent.peer_id();
    // One window (128 KiB) and the queue (64 KiB) hold about 200 of these; the shard
    // stops taking commands once a record waits for room, and the rest stay in the
    // command channel (1,024 deep), so no `send` blocks.
    for _ in 0..1_000 {
        e.send(dst, vec![0x42; 1024]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let stats = e
        .shutdown(Duration::from_millis(500))
        .expect("clean shutdown");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "shutdown took {took:?} with a 500 ms drain"
    );
    // The peer read nothing, so none of the sends reached it: every one is counted as
    // dropped (sealed ones whose frames it never took included), those still in the
    // command channel when the stop came too.
    assert_eq!(
        stats.dropped(),
        1_000,
        "every send counted as dropped: {stats:?}"
    );
    drop(silent);
}

/// Sends the embedding program made before a shutdown are delivered by its drain: the stop
/// goes ahead of commands that wait for room, not ahead of the sends themselves.
#[test]
fn sends_made_before_a_shutdown_are_delivered_by_its_drain() {
    let e = Engine::start(EngineConfig::loopback(1)).unwrap();
    let mut b = client(&e);
    let dst = b.peer_id();
    for i in 0..800u64 {
        e.send(dst, i.to_le_bytes().to_vec()).unwrap();
    }
    let (got, stats) = shut_down_while_reading(e, &mut b, Duration::from_secs(5));
    assert_eq!(
        got,
        (0..800).collect::<Vec<_>>(),
        "every send delivered, in order"
    );
    assert_eq!(stats.dropped(), 0, "{stats:?}");
}

/// Sends made before a shutdown that did not fit the destination's queue (they wait for
/// room) are delivered by the drain too: the drain does not finish a connection while
/// records for its peer still wait.
#[test]
fn sends_waiting_for_room_at_a_shutdown_are_delivered_by_its_drain() {
    let mut cfg = EngineConfig::loopback(1);
    cfg.queue_capacity = 64 * 1024;
    let e = Engine::start(cfg).unwrap();
    let mut b = client(&e);
    let dst = b.peer_id();
    // 600 KiB: several times the queue and the receive window, so most of it waits for
    // room when the shutdown starts.
    let total = 600u64;
    for i in 0..total {
        let mut payload = vec![0x33u8; 1024];
        payload[..8].copy_from_slice(&i.to_le_bytes());
        e.send(dst, payload).unwrap();
    }
    let (got, stats) = shut_down_while_reading(e, &mut b, Duration::from_secs(10));
    assert_eq!(
        got,
        (0..total).collect::<Vec<_>>(),
        "every send delivered, in order: {stats:?}"
    );
    assert_eq!(stats.dropped(), 0, "{stats:?}");
}

/// Shuts `e` down (drain bounded by `drain`) while `reader` reads until its connection
/// closes (or the drain plus 5 s pass); returns the sequence numbers in the first 8 bytes
/// of what it read, in order, and the engine's final counts.
fn shut_down_while_reading(
    e: Engine,
    reader: &mut shards::client::Client,
    drain: Duration,
) -> (Vec<u64>, engine::stats::EngineStats) {
    let started = Instant::now();
    let stopper = std::thread::spawn(move || e.shutdown(drain));
    let mut got = Vec::new();
    while started.elapsed() < drain + Duration::from_secs(5) {
        match reader.recv(Duration::from_millis(20)) {
            Ok(Some(Delivery::Message { payload, .. })) => {
                got.push(u64::from_le_bytes(payload[..8].try_into().unwrap()))
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => {}
            Err(_) => break, // closed
        }
    }
    let stats = stopper.join().unwrap().expect("clean shutdown");
    (got, stats)
}
