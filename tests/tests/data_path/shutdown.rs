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
