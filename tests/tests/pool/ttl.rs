use std::time::Duration;

use engine::{AppKind, Engine, EngineConfig};
use shards::lifecycle::ConnState;
use shards::shard::Delivery;

use crate::common::*;

fn node(ttl: Duration) -> Engine {
    let mut cfg = EngineConfig::loopback(2);
    cfg.app = AppKind::Channel;
    cfg.pool.ttl = ttl;
    cfg.pool.keepalive = Duration::from_millis(100);
    Engine::start(cfg).unwrap()
}

fn expect_message(e: &Engine, from: shards::wire::PeerId, payload: &[u8]) {
    match e.recv_timeout(Duration::from_secs(10)) {
        Some(Delivery::Message {
            from: f,
            payload: p,
            ..
        }) => {
            assert_eq!((f, p.as_slice()), (from, payload));
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A connection with no messages for the TTL is closed gracefully by the pool timer
/// (keep-alives do not count as traffic); a later send re-dials and is delivered.
#[test]
fn ttl_closes_idle_connection_and_a_later_send_redials() {
    let a = node(Duration::from_millis(600));
    let b = node(Duration::from_secs(300));
    let b_id = a.dial(b.local_addr(), Duration::from_secs(5)).unwrap();
    a.send(b_id, b"before".to_vec()).unwrap();
    expect_message(&b, a.peer_id(), b"before");
    assert!(
        wait_for(Duration::from_secs(5), || a.stats().ttl_closed == 1
            && a.peers().get(&b_id).map(|p| p.state)
                == Some(ConnState::Disconnected)),
        "TTL closed the idle connection: {:?}",
        a.stats()
    );
    assert!(wait_for(Duration::from_secs(5), || b.stats().connections == 0));
    assert_eq!(a.stats().dialed, 1);
    a.send(b_id, b"after".to_vec()).unwrap();
    expect_message(&b, a.peer_id(), b"after");
    assert_eq!(a.stats().dialed, 2, "the send re-dialed");
    assert_eq!(a.stats().dropped(), 0);
}

/// Many sends to one peer, and repeated dials of its address, use one connection.
#[test]
fn sends_and_dials_reuse_one_connection() {
    let a = node(Duration::from_secs(300));
    let b = node(Duration::from_secs(300));
    let b_id = a.dial(b.local_addr(), Duration::from_secs(5)).unwrap();
    for _ in 0..3 {
        assert_eq!(
            a.dial(b.local_addr(), Duration::from_secs(5)).unwrap(),
            b_id
        );
    }
    for i in 0..1_000u32 {
        a.send(b_id, i.to_be_bytes().to_vec()).unwrap();
    }
    for i in 0..1_000u32 {
        expect_message(&b, a.peer_id(), &i.to_be_bytes());
    }
    assert_eq!(a.stats().dialed, 1);
    assert_eq!(b.stats().accepted, 1);
    assert_eq!(a.stats().connections + b.stats().connections, 2);
}

/// Messages waiting for a dialed peer that is not coming back are reported and counted
/// when the node shuts down, not silently forgotten.
#[test]
fn shutdown_counts_messages_waiting_for_a_dialed_peer() {
    let mut cfg = EngineConfig::loopback(1);
    cfg.app = AppKind::Channel;
    cfg.transport.idle_timeout = Duration::from_millis(500);
    cfg.pool.keepalive = Duration::from_millis(100);
    let a = Engine::start(cfg).unwrap();
    let b = node(Duration::from_secs(300));
    let b_id = a.dial(b.local_addr(), Duration::from_secs(5)).unwrap();
    b.shutdown(Duration::from_secs(2)).unwrap();
    assert!(wait_for(Duration::from_secs(5), || a
        .peers()
        .get(&b_id)
        .map(|p| p.state)
        != Some(ConnState::Connected)));
    for i in 0..5u32 {
        a.send(b_id, i.to_be_bytes().to_vec()).unwrap();
    }
    let stats = a.shutdown(Duration::from_secs(2)).unwrap();
    assert_eq!(stats.dropped(), 5, "{stats:?}");
    assert_eq!(stats.messages_out, 0);
}
