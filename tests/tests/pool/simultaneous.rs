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
        assert_eq!(a.stats().accepted + b.stats().accepted, 2);
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
    }
}
