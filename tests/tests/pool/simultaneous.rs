use std::sync::{Arc, Barrier};
use std::time::Duration;

use engine::{AppKind, Engine, EngineConfig};
use shards::shard::Delivery;

use crate::common::*;

/// Two nodes dial each other at the same moment: both dials succeed, and both nodes end
/// up with the same single connection (the one initiated by the smaller peer id), over
/// which messages flow both ways.
#[test]
fn simultaneous_dials_converge_to_one_connection() {
    for round in 0..3 {
        let mut cfg = EngineConfig::loopback(2);
        cfg.app = AppKind::Channel;
        let a = Arc::new(Engine::start(cfg.clone()).unwrap());
        let b = Arc::new(Engine::start(cfg).unwrap());
        let barrier = Arc::new(Barrier::new(2));
        let dial = |from: &Arc<Engine>, to: &Arc<Engine>| {
            let (from, addr, barrier) = (from.clone(), to.local_addr(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                from.dial(addr, Duration::from_secs(5))
            })
        };
        let ta = dial(&a, &b);
        let tb = dial(&b, &a);
        assert_eq!(ta.join().unwrap().unwrap(), b.peer_id());
        assert_eq!(tb.join().unwrap().unwrap(), a.peer_id());
        // Both dials opened a connection: there were two to converge from.
        assert_eq!(a.stats().dialed + b.stats().dialed, 2);
        // Accepted peers are counted once their Noise handshake completes on the accepting
        // side, a flight after the dialer's.
        assert!(
            wait_for(Duration::from_secs(5), || a.stats().accepted
                + b.stats().accepted
                == 2),
            "both accepted"
        );
        assert!(
            wait_for(Duration::from_secs(10), || a.stats().connections == 1
                && b.stats().connections == 1),
            "round {round}: converged to one connection: a={:?} b={:?}",
            a.stats(),
            b.stats()
        );
        for i in 0..50u32 {
            a.send(b.peer_id(), i.to_be_bytes().to_vec()).unwrap();
            b.send(a.peer_id(), i.to_be_bytes().to_vec()).unwrap();
        }
        for (node, from) in [(&b, a.peer_id()), (&a, b.peer_id())] {
            for i in 0..50u32 {
                match node.recv_timeout(Duration::from_secs(5)) {
                    Some(Delivery::Message {
                        from: f, payload, ..
                    }) => {
                        assert_eq!((f, payload), (from, i.to_be_bytes().to_vec()));
                    }
                    other => panic!("round {round}: message {i}: {other:?}"),
                }
            }
        }
        assert_eq!(a.stats().dropped() + b.stats().dropped(), 0);
        assert_eq!(a.stats().connections + b.stats().connections, 2);
        // Both nodes held two connections to one address for a while: no GSO train may
        // have mixed their packets (a 2-shard receiver steers a train by its first packet
        // and would drop the other connection's as misrouted, a lost CONNECTION_CLOSE
        // among them).
        assert_eq!(
            a.stats().misrouted + b.stats().misrouted,
            0,
            "round {round}"
        );
    }
}

/// A client that reconnects with the same identity while its old connection is still up
/// (it crashed without closing) gets the new connection, and messages flow on it.
#[test]
fn reconnection_with_the_same_identity_replaces_the_old_connection() {
    use shards::client::{Client, ClientConfig};
    use shards::identity::Identity;

    let e = engine(2);
    // A larger peer id than the node's: the simultaneous-dial rule alone would keep the
    // old (dead) connection, since neither was initiated by the smaller id.
    let id = loop {
        let id = Identity::generate().unwrap();
        if id.peer_id() > e.peer_id() {
            break id;
        }
    };
    let mut cfg = ClientConfig::default();
    cfg.batch.timeout = Duration::ZERO;
    for round in 0..4 {
        // The previous client is dropped without closing: its connection stays up at the
        // node until the idle timeout.
        let mut c = Client::connect(e.local_addr(), &id, cfg.clone()).unwrap();
        let node = c.node_id();
        assert!(wait_for(Duration::from_secs(5), || {
            c.poll(Duration::from_millis(1)).unwrap();
            e.peers().get(&id.peer_id()).is_some()
        }));
        c.send_with_seq(node, round, b"again".to_vec()).unwrap();
        c.flush().unwrap();
        let got = recv_n(&mut c, 1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "round {round}: echo on the new connection");
        assert_eq!(msg(&got[0]).1, round);
    }
    assert_eq!(e.stats().dropped(), 0);
}
