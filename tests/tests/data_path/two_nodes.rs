use std::time::Duration;

use engine::{AppKind, Engine, EngineConfig};
use shards::shard::Delivery;

/// Node A dials node B; they exchange messages both ways through their embedding APIs.
#[test]
fn two_nodes_exchange_both_ways() {
    let mut cfg = EngineConfig::loopback(2);
    cfg.app = AppKind::Channel;
    let a = Engine::start(cfg.clone()).unwrap();
    let b = Engine::start(cfg).unwrap();
    let b_id = a.dial(b.local_addr(), Duration::from_secs(5)).unwrap();
    assert_eq!(b_id, b.peer_id(), "dial authenticates the remote node's id");
    // B learns A's id from the handshake.
    assert!(crate::common::wait_for(Duration::from_secs(5), || b
        .peers()
        .get(&a.peer_id())
        .is_some()));
    let entry = a.peers().get(&b_id).unwrap();
    assert!(entry.outbound);

    for i in 0..500u32 {
        a.send(b_id, format!("a->b {i}").into_bytes()).unwrap();
        b.send(a.peer_id(), format!("b->a {i}").into_bytes())
            .unwrap();
    }
    for (node, from, tag) in [(&b, a.peer_id(), "a->b"), (&a, b_id, "b->a")] {
        for i in 0..500u32 {
            match node.recv_timeout(Duration::from_secs(10)) {
                Some(Delivery::Message {
                    from: f, payload, ..
                }) => {
                    assert_eq!(f, from);
                    assert_eq!(payload, format!("{tag} {i}").as_bytes());
                }
                other => panic!("{tag} message {i}: got {other:?}"),
            }
        }
    }
    assert_eq!(a.stats().dropped() + b.stats().dropped(), 0);
    a.shutdown(Duration::from_secs(5)).unwrap();
    b.shutdown(Duration::from_secs(5)).unwrap();
}
