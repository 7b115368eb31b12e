use std::time::Duration;

use crate::common::*;

/// Rounds of 50 echoes; a rebinding before each but the first. quiche keeps one path per
/// peer address, up to the active connection ID limit (8): see docs/PROTOCOL.md.
const ROUNDS: usize = 8;

/// A client that changes its source port mid-connection (NAT rebinding) keeps its
/// connection, on the same shard, and loses nothing. Seven rebinds: without CID steering
/// each new 4-tuple hashes to either shard, so staying put by chance is 1 in 128 (checked
/// by removing the steering program: the test then fails).
#[test]
fn nat_rebinding_keeps_connection_and_shard() {
    let e = engine(2);
    let mut c = client(&e);
    let node = c.node_id();
    let shard = e.peers().get(&c.peer_id()).unwrap().shard;
    let mut ports = vec![c.local_addr().unwrap().port()];
    let mut seq = 0u64;
    for round in 0..ROUNDS {
        if round > 0 {
            ports.push(c.rebind().unwrap().port());
        }
        for _ in 0..50 {
            c.send_with_seq(node, seq, seq.to_be_bytes().to_vec())
                .unwrap();
            seq += 1;
        }
        c.flush().unwrap();
        let got = recv_n(&mut c, 50, Duration::from_secs(10));
        assert_eq!(
            got.len(),
            50,
            "round {round}: all echoes arrive after rebinding"
        );
        for (k, d) in got.iter().enumerate() {
            let (_, s, payload) = msg(d);
            assert_eq!(s, seq - 50 + k as u64);
            assert_eq!(payload, s.to_be_bytes());
        }
        let entry = e.peers().get(&c.peer_id()).expect("still connected");
        assert_eq!(entry.shard, shard, "round {round}: same shard");
    }
    ports.dedup();
    assert_eq!(ports.len(), ROUNDS, "every round used a new source port");
    let s = e.stats();
    assert_eq!(s.accepted, 1, "one connection throughout");
    assert_eq!(s.connections, 1);
    assert_eq!(s.misrouted, 0, "no datagram reached the wrong shard");
    assert_eq!(s.delivered_local, 50 * ROUNDS as u64);
}
