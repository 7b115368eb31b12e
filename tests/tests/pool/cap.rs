use std::time::Duration;

use engine::{Engine, EngineConfig};
use shards::client::{Client, ClientConfig, ClientError};
use shards::identity::Identity;
use shards::wire::close_code;

use crate::common::*;

/// A burst of simultaneous handshakes over the cap, on both shards: exactly the cap gets
/// in, the rest are closed with CONNECTION_LIMIT (once their Noise handshake completes: the
/// cap counts authenticated peers) and counted, and the connections inside the cap keep
/// working.
#[test]
fn max_connections_cap_holds_under_a_burst() {
    const CAP: usize = 5;
    const BURST: usize = 16;
    let mut cfg = EngineConfig::loopback(2);
    cfg.pool.max_connections = Some(CAP);
    let e = Engine::start(cfg).unwrap();
    let addr = e.local_addr();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(BURST));
    let handles: Vec<_> = (0..BURST)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let id = Identity::generate().unwrap();
                barrier.wait();
                Client::connect(addr, &id, ClientConfig::default())
            })
        })
        .collect();
    let mut connected = Vec::new();
    let mut refused = 0;
    for h in handles {
        match h.join().unwrap() {
            Ok(c) => connected.push(c),
            // Refused before the client saw its own handshake complete.
            Err(ClientError::Closed(why)) => {
                assert!(
                    why.contains(&format!(
                        "application code {:#x}",
                        close_code::CONNECTION_LIMIT
                    )),
                    "{why}"
                );
                refused += 1;
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert!(
        wait_for(Duration::from_secs(5), || e.stats().refused
            == (BURST - CAP) as u64),
        "refusals counted: {}",
        e.stats().refused
    );
    // The rest of the refused clients hear CONNECTION_LIMIT now.
    let mut admitted = Vec::new();
    for mut c in connected {
        let _ = wait_for(Duration::from_millis(300), || {
            let _ = c.poll(Duration::from_millis(1));
            c.is_closed()
        });
        match c.close_info() {
            Some(info) => {
                assert_eq!(
                    (info.is_app, info.code),
                    (true, close_code::CONNECTION_LIMIT),
                    "{info:?}"
                );
                refused += 1;
            }
            None => admitted.push(c),
        }
    }
    assert_eq!(admitted.len(), CAP, "exactly the cap is admitted");
    assert_eq!(refused, BURST - CAP);
    // The admitted connections still work.
    for c in &mut admitted {
        let node = c.node_id();
        c.send_with_seq(node, 1, b"still here".to_vec()).unwrap();
        c.flush().unwrap();
        let got = recv_n(c, 1, Duration::from_secs(5));
        assert_eq!(msg(&got[0]).2, b"still here");
    }
    // A slot freed by a graceful close is reusable.
    admitted
        .pop()
        .unwrap()
        .close(Duration::from_secs(2))
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || e.stats().connections
        == (CAP - 1) as u64));
    let _late = client(&e);
}
