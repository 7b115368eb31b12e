//! Routing in memory: echo, ERROR records for unknown destinations, hops between shards,
//! misrouted connection IDs.

use super::*;

#[test]
fn dial_then_echo_in_memory() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    let id = net.dial(client, server).expect("dial");
    assert_eq!(id, net.nodes[server].id);
    for seq in 0..10 {
        net.send(client, id, seq, b"hello");
    }
    net.pump();
    let got = net.deliveries(client);
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|d| match d {
            Delivery::Message { from, seq, payload } if *from == id && payload == b"hello" => {
                Some(*seq)
            }
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    assert_eq!(get(&net.stats(server).delivered_local), 10);
    assert_eq!(get(&net.stats(server).accepted), 1);
    assert_eq!(get(&net.stats(client).dialed), 1);
    // A second dial reuses the connection.
    assert_eq!(net.dial(client, server), Ok(id));
    assert_eq!(get(&net.stats(client).dialed), 1);
}

#[test]
fn unknown_destination_is_reported_to_the_sender() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    let id = net.dial(client, server).expect("dial");
    let nobody = PeerId([9; crate::wire::PEER_ID_LEN]);
    // Relay a message through the server to a peer it does not know.
    net.inject(
        client,
        Message {
            dst: nobody,
            src: id,
            seq: 42,
            payload: b"lost".to_vec(),
        },
    );
    assert_eq!(get(&net.stats(server).dropped_unknown_destination), 1);
    // Refused, so not counted as relayed.
    assert_eq!(get(&net.stats(server).relayed), 0);
    assert_eq!(get(&net.stats(server).messages_in), 1);
    let got = net.deliveries(client);
    assert!(
        got.iter().any(|d| matches!(d, Delivery::Error(e)
            if e.code == ErrorCode::UnknownDestination && e.seq == 42 && e.dst == nobody)),
        "{got:?}"
    );
}

#[test]
fn records_for_a_peer_on_another_shard_hop_there() {
    let mut net = Net::new();
    // A two-shard relay node; two clients, each connected to a different shard.
    let relay = net.add(NodeSpec {
        shards: 2,
        ..NodeSpec::default()
    });
    let a = net.add(NodeSpec::default());
    let b = net.add(NodeSpec::default());
    net.dial(a, relay).expect("dial a");
    // Steer b to shard 1 by sending its datagrams there.
    let relay1 = net.nodes[relay].addrs[1];
    let (tx, rx) = flume::bounded(1);
    let now = net.now;
    net.ep(b).handle_command(
        now,
        Command::Dial {
            addr: relay1,
            reply: tx,
        },
    );
    net.pump();
    assert!(rx.try_recv().is_ok_and(|r| r.is_ok()));
    let b_id = net.nodes[b].id;
    assert_eq!(net.nodes[relay].directory.shard_of(&b_id), Some(1));
    // a -> relay (shard 0) -> hop -> shard 1 -> b.
    let relay_id = net.nodes[relay].id;
    let a_id = net.nodes[a].id;
    net.inject(
        a,
        Message {
            dst: b_id,
            src: a_id,
            seq: 5,
            payload: b"via shard 1".to_vec(),
        },
    );
    // b is a node too: it names the sender it authenticated, the relay.
    let got = net.deliveries(b);
    assert!(
        got.iter()
            .any(|d| matches!(d, Delivery::Message { from, seq: 5, payload }
            if *from == relay_id && payload == b"via shard 1")),
        "{got:?}"
    );
    assert_eq!(get(&net.nodes[relay].shards[0].stats().relayed), 1);
    assert_eq!(get(&net.nodes[relay].shards[1].stats().relayed), 0);
    assert_eq!(get(&net.nodes[relay].shards[1].stats().messages_out), 1);
}

#[test]
fn datagrams_for_another_shards_cid_are_counted_as_misrouted() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        shards: 2,
        ..NodeSpec::default()
    });
    // A short-header packet whose DCID names shard 1, delivered to shard 0.
    let mut pkt = vec![0x40u8];
    pkt.extend_from_slice(&crate::cid::new_cid(
        1,
        &mut rand::rngs::StdRng::seed_from_u64(1),
    ));
    pkt.extend_from_slice(&[0u8; 32]);
    let now = net.now;
    let from = SocketAddr::from(([127, 0, 0, 1], 9));
    net.nodes[node].shards[0].handle_datagram(now, from, &mut pkt);
    let s = net.nodes[node].shards[0].stats();
    assert_eq!(get(&s.misrouted), 1);
    assert_eq!(get(&s.unknown_datagrams), 1);
    assert_eq!(net.nodes[node].shards[0].connections(), 0);
}

#[test]
fn a_receive_burst_is_answered_in_one_datagram() {
    // Batch size 1 on the client: every message leaves in its own datagram.
    let (mut net, server, client) = echo_server_and(NodeSpec {
        batch: BatchPolicy {
            max_messages: 1,
            timeout: Duration::ZERO,
            ..BatchPolicy::default()
        },
        ..NodeSpec::default()
    });
    let id = net.dial(client, server).expect("dial");
    for seq in 0..8 {
        net.send(client, id, seq, b"burst");
    }
    let mut burst = Vec::new();
    while let Some(t) = net.ep(client).poll_transmit() {
        burst.push(t.data);
    }
    assert!(burst.len() >= 8, "{} datagrams for 8 messages", burst.len());
    // The server reads them as one receive burst: the eight echoes share one batch and,
    // with the ACK for all eight datagrams, one datagram.
    let (from, now) = (net.addr(client), net.now);
    net.ep(server)
        .handle_datagrams(now, burst.iter_mut().map(|d| (from, d.as_mut_slice())));
    let mut replies = Vec::new();
    while let Some(t) = net.ep(server).poll_transmit() {
        replies.push(t);
    }
    assert_eq!(replies.len(), 1);
    let to = net.addr(server);
    net.wire
        .extend(replies.into_iter().map(|t| (to, t.to, t.data)));
    net.pump();
    let seqs: Vec<u64> = net
        .deliveries(client)
        .iter()
        .filter_map(|d| match d {
            Delivery::Message { seq, payload, .. } if payload == b"burst" => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (0..8).collect::<Vec<_>>());
}

/// Messages a full delivery channel cannot take wait in the sender's connection, in order,
/// and are delivered when the app has read: none lost, none twice, counted once each.
#[test]
fn records_that_find_no_room_wait_in_order_and_are_counted_once() {
    let mut net = Net::new();
    let server = net.add(NodeSpec::default()); // Channel app, 1024 deliveries deep
    // Frames of 100 messages: the channel fills in the middle of the eleventh, so the
    // rest of that frame is what must wait.
    let client = net.add(NodeSpec {
        batch: BatchPolicy {
            max_messages: 100,
            timeout: Duration::from_millis(1),
            ..BatchPolicy::default()
        },
        ..NodeSpec::default()
    });
    let id = net.dial(client, server).expect("dial");
    let n = 1500u64;
    for seq in 0..n {
        net.send(client, id, seq, b"x");
    }
    net.pump();
    net.advance(Duration::from_millis(1)); // the last partial batch's timeout
    let mut seqs: Vec<u64> = Vec::new();
    let take = |net: &Net, seqs: &mut Vec<u64>| {
        seqs.extend(net.deliveries(server).iter().filter_map(|d| match d {
            Delivery::Message { seq, .. } => Some(*seq),
            _ => None,
        }));
    };
    take(&net, &mut seqs);
    assert_eq!(seqs.len(), 1024, "the channel took what it holds");
    // Counted as they were routed, not again when a blocked one is retried.
    assert_eq!(get(&net.stats(server).messages_in), 1024);
    for _ in 0..200 {
        net.advance(Duration::from_millis(2));
        take(&net, &mut seqs);
        if seqs.len() as u64 == n {
            break;
        }
    }
    assert_eq!(seqs.len() as u64, n);
    assert!(seqs.iter().copied().eq(0..n), "in order, none twice");
    assert_eq!(get(&net.stats(server).messages_in), n);
    assert_eq!(get(&net.stats(server).queued_bytes), 0);
}
