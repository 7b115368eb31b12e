//! Hostile input: small or malformed Initials, failed and unfinished handshakes, the
//! handshake budget, and the bound on ERROR records owed to one sender.

use super::*;

/// A long-header Initial of `len` bytes with `version` and a DCID of `dcid_len` bytes
/// (garbage after the header: it never gets as far as decryption).
fn initial(version: u32, dcid_len: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0xc0];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid_len);
    p.extend(std::iter::repeat_n(0x11, dcid_len as usize));
    p.push(0); // SCID length
    p.push(0); // token length
    p.extend_from_slice(&[0x40, 0x20]); // payload length (varint)
    p.resize(len, 0);
    p
}

#[test]
fn small_initials_and_short_dcids_get_no_answer_and_no_state() {
    let mut net = Net::new();
    let node = net.add(NodeSpec::default());
    let now = net.now;
    let from = SocketAddr::from(([127, 0, 0, 1], 9));
    let unsupported = 0x1a2a_3a4a;
    let mut cases = [
        initial(1, 8, 100),              // QUIC v1, too small
        initial(1, 4, 1200),             // DCID too short
        initial(unsupported, 8, 8 + 30), // a small version probe: no Version Negotiation
    ];
    for pkt in cases.iter_mut() {
        net.ep(node).handle_datagram(now, from, pkt);
    }
    assert_eq!(get(&net.stats(node).rejected_initials), 3);
    assert!(
        net.ep(node).poll_transmit().is_none(),
        "nothing is answered"
    );
    assert_eq!(net.ep(node).connections(), 0);
    assert_eq!(get(&net.stats(node).accepted), 0);
    // A full-size probe with an unknown version is answered with Version Negotiation.
    let mut pkt = initial(unsupported, 8, 1200);
    net.ep(node).handle_datagram(now, from, &mut pkt);
    let vn = net.ep(node).poll_transmit().expect("version negotiation");
    assert_eq!(vn.to, from);
    assert_eq!(
        vn.data.get(1..5),
        Some(&[0u8, 0, 0, 0][..]),
        "version 0 = VN"
    );
    assert_eq!(net.ep(node).connections(), 0);
}

#[test]
fn a_handshake_failure_is_counted_once() {
    let mut net = Net::new();
    let node = net.add(NodeSpec::default());
    let server = net.addr(node);
    let me = SocketAddr::from(([127, 0, 0, 1], 7));
    // A plain QUIC client speaking qme/1 whose first Noise message announces 2000 bytes
    // (the limit is 1024).
    let mut quic = net.raw_client(node, me, 7);
    let mut sent_bad = false;
    for _ in 0..200 {
        let mut out = [0u8; 1500];
        while let Ok((n, _)) = quic.send(&mut out) {
            let now = net.now;
            net.ep(node).handle_datagram(now, me, &mut out[..n]);
        }
        let mut moved = false;
        while let Some(mut t) = net.ep(node).poll_transmit() {
            let _ = quic.recv(
                &mut t.data,
                quiche::RecvInfo {
                    from: server,
                    to: me,
                },
            );
            moved = true;
        }
        if quic.is_established() && !sent_bad {
            quic.stream_send(0, &[0x07, 0xd0, 0, 0, 0], false).unwrap();
            sent_bad = true;
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(sent_bad, "QUIC never came up");
    let s = net.stats(node);
    assert_eq!(get(&s.handshake_failures), 1);
    assert_eq!(get(&s.protocol_errors), 0);
    let peer_error = quic.peer_error().map(|e| (e.is_app, e.error_code));
    assert_eq!(
        peer_error,
        Some((true, crate::wire::close_code::HANDSHAKE_FAILED))
    );
    // More datagrams from the failed peer do not count it again.
    net.advance(Duration::from_millis(10));
    assert_eq!(get(&net.stats(node).handshake_failures), 1);
}

#[test]
fn an_unfinished_handshake_is_closed_at_its_deadline_and_frees_its_budget() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        pool: PoolConfig {
            max_connections: Some(1),
            handshake_timeout: Duration::from_secs(10),
            ..PoolConfig::default()
        },
        ..NodeSpec::default()
    });
    let me = SocketAddr::from(([127, 0, 0, 1], 8));
    // One real Initial, then silence: QUIC never completes.
    let _quic = net.raw_client(node, me, 8);
    while net.ep(node).poll_transmit().is_some() {}
    assert_eq!(net.ep(node).connections(), 1);
    // Unauthenticated: it holds a place in the handshake budget, not under the cap.
    assert_eq!(net.ep(node).handshaking, 1);
    assert_eq!(net.nodes[node].slots.used(), 0);
    net.advance(Duration::from_secs(9));
    assert_eq!(get(&net.stats(node).handshake_timeouts), 0);
    assert_eq!(net.ep(node).handshaking, 1);
    net.advance(Duration::from_secs(2));
    let s = net.stats(node);
    assert_eq!(get(&s.handshake_timeouts), 1);
    assert_eq!(get(&s.handshake_failures), 1);
    assert_eq!(get(&s.accepted), 0);
    assert_eq!(net.ep(node).handshaking, 0, "the budget is free at once");
    // The close is on the wire for the client.
    assert!(
        net.ep(node)
            .conns
            .iter_mut()
            .all(|(_, c)| c.session.is_closing())
    );
}

/// A close that quiche could not put on the wire yet (an unvalidated address's
/// amplification budget spent) still ends the connection's upkeep deadlines: otherwise the
/// past handshake deadline is re-armed on every turn, the shard spins on it and counts the
/// timeout again each time, until quiche's idle timer finally closes the connection.
#[test]
fn a_close_not_yet_sent_ends_the_upkeep_deadlines() {
    let mut net = Net::new();
    let node = net.add(NodeSpec::default());
    let me = SocketAddr::from(([127, 0, 0, 1], 9));
    let _quic = net.raw_client(node, me, 9);
    while net.ep(node).poll_transmit().is_some() {}
    let pool = PoolConfig::default();
    for (_, c) in net.ep(node).conns.iter_mut() {
        assert!(c.handshake_deadline(&pool).is_some());
        // Requested, not driven: nothing has been sent.
        c.session.close(0x1, "handshake timeout");
        assert!(c.session.is_closing());
        assert_eq!(c.handshake_deadline(&pool), None);
        assert_eq!(c.frame_deadline(&pool), None);
        assert_eq!(c.stall_deadline(&pool), None);
    }
}

/// ERROR records for a peer on another shard that takes nothing do not pile up without
/// limit: past twice the hop backlog they are counted and dropped.
#[test]
fn error_records_for_another_shard_are_bounded_and_counted() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        shards: 2,
        ..NodeSpec::default()
    });
    let sender = PeerId([7; 16]);
    // The sender is registered on shard 1; shard 0 sends it errors, and nothing takes
    // shard 0's hops.
    net.nodes[node]
        .directory
        .connected(sender, 1, 1, net.addr(node), false);
    let now = net.now;
    let limit = 2 * super::super::routing::HOP_BACKLOG_LIMIT;
    for seq in 0..(limit as u64 + 500) {
        net.ep(node).send_error(
            Origin::Remote,
            sender,
            ErrorCode::UnknownDestination,
            seq,
            PeerId([9; 16]),
            String::new(),
            now,
        );
    }
    assert_eq!(net.ep(node).hop_backlog.len(), limit);
    let s = net.stats(node);
    assert_eq!(get(&s.errors_out), limit as u64);
    assert_eq!(get(&s.error_records_dropped), 500);
}

/// An Initial that reaches a draining node starts nothing and is counted.
#[test]
fn an_initial_during_the_drain_is_counted_and_creates_no_state() {
    let mut net = Net::new();
    let node = net.add(NodeSpec::default());
    let now = net.now;
    let deadline = now + Duration::from_secs(5);
    net.ep(node)
        .handle_command(now, Command::Shutdown { deadline });
    let me = SocketAddr::from(([127, 0, 0, 1], 10));
    let _quic = net.raw_client(node, me, 10);
    assert_eq!(net.ep(node).connections(), 0);
    assert_eq!(get(&net.stats(node).rejected_initials), 1);
}

#[test]
fn initials_beyond_the_handshake_budget_create_no_state() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        pool: PoolConfig {
            max_handshakes: 3,
            ..PoolConfig::default()
        },
        ..NodeSpec::default()
    });
    for i in 0..5u8 {
        let me = SocketAddr::from(([127, 0, 0, 1], 100 + u16::from(i)));
        let _quic = net.raw_client(node, me, i);
    }
    assert_eq!(net.ep(node).connections(), 3);
    assert_eq!(get(&net.stats(node).handshake_budget_drops), 2);
    // None of them authenticated, so none was accepted as a peer.
    assert_eq!(get(&net.stats(node).accepted), 0);
    // When the stalled handshakes time out, the budget is free again, and a real peer
    // gets in.
    net.advance(DEFAULT_HANDSHAKE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(net.ep(node).handshaking, 0);
    let client = net.add(NodeSpec::default());
    assert!(net.dial(client, node).is_ok());
}

#[test]
fn error_records_for_one_huge_frame_stay_within_twice_the_queue_bound() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    let id = net.dial(client, server).expect("dial");
    let nobody = PeerId([9; crate::wire::PEER_ID_LEN]);
    // One frame of 20,000 empty messages to nobody: 20,000 ERROR records (~1.3 MB) would
    // be owed to the sender.
    let records: Vec<Record> = (0..20_000)
        .map(|seq| {
            Record::Message(Message {
                dst: nobody,
                src: id,
                seq,
                payload: Vec::new(),
            })
        })
        .collect();
    let now = net.now;
    let key = net.ep(client).conns.keys()[0];
    let c = net.ep(client).conns.get_mut(key).expect("conn");
    c.session.send_batch(records.iter()).expect("seal");
    net.ep(client).drive(key, now);
    // Move datagrams both ways, watching the server's queue for the client after each.
    let (ca, sa) = (net.addr(client), net.addr(server));
    let mut peak = 0usize;
    for _ in 0..100_000 {
        let mut moved = false;
        while let Some(mut t) = net.ep(client).poll_transmit() {
            net.ep(server).handle_datagram(now, ca, &mut t.data);
            moved = true;
            for (_, c) in net.ep(server).conns.iter_mut() {
                peak = peak.max(c.queue.bytes() + c.session.pending_bytes());
            }
        }
        while let Some(mut t) = net.ep(server).poll_transmit() {
            net.ep(client).handle_datagram(now, sa, &mut t.data);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let s = net.stats(server);
    assert_eq!(get(&s.dropped_unknown_destination), 20_000);
    let sent = get(&s.errors_out);
    let dropped = get(&s.error_records_dropped);
    assert_eq!(sent + dropped, 20_000, "every ERROR is sent or counted");
    // The frame's records are handed on a step (1024) at a time and reading pauses while
    // the sender's own queue is full, so its ERROR records wait for room instead of being
    // dropped.
    assert_eq!(dropped, 0);
    let bound = 2 * 256 * 1024 + 256;
    assert!(peak <= bound, "queued {peak} bytes for one sender");
}

#[test]
fn half_open_handshakes_do_not_lock_peers_out_of_the_connection_cap() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        app: AppSpec::Echo,
        pool: PoolConfig {
            max_connections: Some(2),
            ..PoolConfig::default()
        },
        ..NodeSpec::default()
    });
    // Ten Initials that never go on: more than the cap, all within the handshake budget.
    for i in 0..10u8 {
        let me = SocketAddr::from(([127, 0, 0, 1], 200 + u16::from(i)));
        let _quic = net.raw_client(node, me, 100 + i);
    }
    while net.ep(node).poll_transmit().is_some() {}
    assert_eq!(net.ep(node).handshaking, 10);
    assert_eq!(net.nodes[node].slots.used(), 0);
    // Real peers still get in, up to the cap; the one over it is refused.
    let a = net.add(NodeSpec::default());
    let b = net.add(NodeSpec::default());
    let c = net.add(NodeSpec::default());
    assert!(net.dial(a, node).is_ok());
    assert!(net.dial(b, node).is_ok());
    assert_eq!(net.nodes[node].slots.used(), 2);
    let _ = net.dial(c, node);
    net.advance(Duration::from_millis(50));
    assert_eq!(get(&net.stats(node).refused), 1);
    assert_eq!(get(&net.stats(node).accepted), 2);
    assert!(net.nodes[node].directory.owner(&net.nodes[c].id).is_none());
}

fn always_retry() -> PoolConfig {
    PoolConfig {
        retry_threshold: 0,
        ..PoolConfig::default()
    }
}

#[test]
fn a_peer_dials_and_is_served_through_a_retry() {
    let (mut net, server, client) = echo_pair(always_retry());
    let node = net.dial(client, server).expect("dial through a Retry");
    net.send(client, node, 1, b"after retry");
    net.pump();
    assert!(
        net.deliveries(client)
            .iter()
            .any(|d| matches!(d, Delivery::Message { payload, .. } if payload == b"after retry"))
    );
    let s = net.stats(server);
    // One Retry per datagram of the client's first flight (its ClientHello may span two).
    assert!(get(&s.retries_sent) >= 1);
    assert_eq!(get(&s.address_validated), 1);
    assert_eq!(get(&s.invalid_tokens), 0);
    assert_eq!(get(&s.accepted), 1);
}

#[test]
fn initials_from_unproven_addresses_get_a_small_retry_and_no_state() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        pool: always_retry(),
        ..NodeSpec::default()
    });
    for i in 0..50u8 {
        let me = SocketAddr::from(([127, 0, 0, 1], 300 + u16::from(i)));
        let _quic = net.raw_client(node, me, i);
    }
    assert_eq!(net.ep(node).connections(), 0);
    assert_eq!(net.ep(node).handshaking, 0);
    assert_eq!(get(&net.stats(node).retries_sent), 50);
    let mut answers = 0;
    while let Some(t) = net.ep(node).poll_transmit() {
        // Each answer is far smaller than the 1200-byte Initial that caused it.
        assert!(t.data.len() < 200, "{}", t.data.len());
        answers += 1;
    }
    assert_eq!(answers, 50);
}

#[test]
fn a_retry_token_is_accepted_only_from_its_address_and_within_its_lifetime() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        pool: always_retry(),
        ..NodeSpec::default()
    });
    let server = net.addr(node);
    let me = SocketAddr::from(([127, 0, 0, 1], 400));
    let other = SocketAddr::from(([127, 0, 0, 1], 401));
    // The Initial the client sends after the Retry, carrying the token.
    let retried_initial = |net: &mut Net, id: u8| -> Vec<u8> {
        let mut quic = net.raw_client(node, me, id);
        let mut retry = net.ep(node).poll_transmit().expect("a Retry").data;
        let info = quiche::RecvInfo {
            from: server,
            to: me,
        };
        quic.recv(&mut retry, info)
            .expect("the client takes the Retry");
        let mut out = vec![0u8; 1500];
        let (n, _) = quic.send(&mut out).expect("an Initial with the token");
        out.truncate(n);
        out
    };
    let now = net.now;
    // From another address: not validated, no state.
    let mut pkt = retried_initial(&mut net, 1);
    net.ep(node).handle_datagram(now, other, &mut pkt);
    assert_eq!(get(&net.stats(node).invalid_tokens), 1);
    assert_eq!(net.ep(node).connections(), 0);
    // After the token's lifetime: not validated.
    let mut pkt = retried_initial(&mut net, 2);
    let late = now + super::retry::TOKEN_LIFETIME + Duration::from_secs(1);
    net.ep(node).handle_datagram(late, me, &mut pkt);
    assert_eq!(get(&net.stats(node).invalid_tokens), 2);
    assert_eq!(net.ep(node).connections(), 0);
    // From its address, in time: a connection, validated.
    let mut pkt = retried_initial(&mut net, 3);
    net.ep(node).handle_datagram(now, me, &mut pkt);
    assert_eq!(get(&net.stats(node).address_validated), 1);
    assert_eq!(net.ep(node).connections(), 1);
}

#[test]
fn below_the_retry_threshold_peers_connect_without_a_retry() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    assert!(net.dial(client, server).is_ok());
    assert_eq!(get(&net.stats(server).retries_sent), 0);
    assert_eq!(get(&net.stats(server).address_validated), 0);
}

/// A 1200-byte QUIC v1 Initial with a garbage payload: parses, never decrypts.
fn junk_initial(i: u32) -> Vec<u8> {
    let mut p = vec![0xc3];
    p.extend_from_slice(&1u32.to_be_bytes());
    p.push(16);
    p.extend_from_slice(&i.to_be_bytes());
    p.extend_from_slice(&[0x77; 12]);
    p.push(8);
    p.extend_from_slice(&[0xab; 8]);
    p.push(0);
    let rest = 1200 - p.len() - 2;
    p.extend_from_slice(&(0x4000u16 | rest as u16).to_be_bytes());
    p.extend((0..rest).map(|k| k as u8));
    p
}

#[test]
fn a_burst_of_junk_initials_is_answered_with_retries_past_the_threshold_per_second() {
    let mut net = Net::new();
    let node = net.add(NodeSpec {
        pool: PoolConfig {
            retry_threshold: 5,
            ..PoolConfig::default()
        },
        ..NodeSpec::default()
    });
    let from = SocketAddr::from(([127, 0, 0, 1], 999));
    let now = net.now;
    for i in 0..20 {
        let mut pkt = junk_initial(i);
        net.ep(node).handle_datagram(now, from, &mut pkt);
    }
    // The junk fails at once and leaves nothing in progress; the rate still counts it.
    assert_eq!(net.ep(node).handshaking, 0);
    assert_eq!(net.ep(node).connections(), 0);
    assert_eq!(get(&net.stats(node).retries_sent), 15);
    // A second later the window is fresh: the next ones get a connection attempt again.
    let later = now + Duration::from_secs(1);
    let mut pkt = junk_initial(100);
    net.ep(node).handle_datagram(later, from, &mut pkt);
    assert_eq!(get(&net.stats(node).retries_sent), 15);
}

#[test]
fn a_frame_left_incomplete_is_closed_at_the_frame_deadline() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    net.dial(client, server).expect("dial");
    let key = net.ep(client).conns.keys()[0];
    // A header announcing 100 bytes, then 10 of them, then silence.
    let now = net.now;
    let c = net.ep(client).conns.get_mut(key).expect("conn");
    c.session.send_raw(&[0, 0, 0, 100]).expect("raw");
    c.session.send_raw(&[0u8; 10]).expect("raw");
    net.ep(client).drive(key, now);
    net.pump();
    let server_conn = |net: &mut Net| net.ep(server).conns.keys()[0];
    let sk = server_conn(&mut net);
    assert!(
        net.ep(server)
            .conns
            .get(sk)
            .is_some_and(|c| c.partial_since.is_some())
    );
    net.advance(DEFAULT_FRAME_TIMEOUT - Duration::from_secs(1));
    assert_eq!(get(&net.stats(server).frame_timeouts), 0);
    net.advance(Duration::from_secs(2));
    assert_eq!(get(&net.stats(server).frame_timeouts), 1);
    assert_eq!(get(&net.stats(server).protocol_errors), 1);
    let closed_with = net.ep(client).conns.get(key).and_then(|c| {
        c.session
            .quic()
            .peer_error()
            .map(|e| (e.is_app, e.error_code))
    });
    assert_eq!(
        closed_with,
        Some((true, crate::wire::close_code::PROTOCOL_VIOLATION))
    );
}

#[test]
fn a_frame_completed_within_the_deadline_clears_it() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    let me = net.dial(client, server).expect("dial");
    let key = net.ep(client).conns.keys()[0];
    let node = net.nodes[server].id;
    // A real sealed frame, delivered in two parts 8 s apart.
    let record = Record::Message(Message {
        dst: node,
        src: me,
        seq: 1,
        payload: b"slow but whole".to_vec(),
    });
    let now = net.now;
    let c = net.ep(client).conns.get_mut(key).expect("conn");
    let frame = c.session.seal_detached(&[record]).expect("seal");
    let (head, tail) = frame.split_at(7);
    c.session.send_raw(head).expect("raw");
    net.ep(client).drive(key, now);
    net.pump();
    net.advance(Duration::from_secs(8));
    let now = net.now;
    let c = net.ep(client).conns.get_mut(key).expect("conn");
    c.session.send_raw(tail).expect("raw");
    net.ep(client).drive(key, now);
    net.pump();
    net.advance(Duration::from_secs(5));
    assert_eq!(get(&net.stats(server).frame_timeouts), 0);
    let sk = net.ep(server).conns.keys()[0];
    assert!(
        net.ep(server)
            .conns
            .get(sk)
            .is_some_and(|c| c.partial_since.is_none() && !c.session.is_closing())
    );
    assert!(
        net.deliveries(client).iter().any(
            |d| matches!(d, Delivery::Message { payload, .. } if payload == b"slow but whole")
        )
    );
}

/// The deadline is per frame: a peer streaming frames back to back, so that every read
/// ends inside the next frame, is never idle mid-frame and must not be closed, however long
/// the stream lasts.
#[test]
fn frames_streamed_back_to_back_each_get_their_own_deadline() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    let me = net.dial(client, server).expect("dial");
    let key = net.ep(client).conns.keys()[0];
    let node = net.nodes[server].id;
    let frames: Vec<Vec<u8>> = (0..5u64)
        .map(|seq| {
            let record = Record::Message(Message {
                dst: node,
                src: me,
                seq,
                payload: format!("frame {seq}").into_bytes(),
            });
            let c = net.ep(client).conns.get_mut(key).expect("conn");
            c.session.seal_detached(&[record]).expect("seal")
        })
        .collect();
    // Each step sends the rest of one frame and the head of the next, 6 s apart: 24 s in
    // all with part of a frame always buffered, each frame whole within 6 s.
    let mut rest: &[u8] = &[];
    for (i, f) in frames.iter().enumerate() {
        let (head, tail) = f.split_at(7);
        let now = net.now;
        let c = net.ep(client).conns.get_mut(key).expect("conn");
        if !rest.is_empty() {
            c.session.send_raw(rest).expect("raw");
        }
        c.session.send_raw(head).expect("raw");
        net.ep(client).drive(key, now);
        net.pump();
        let sk = net.ep(server).conns.keys()[0];
        assert!(
            net.ep(server)
                .conns
                .get(sk)
                .is_some_and(|c| c.partial_since.is_some()),
            "frame {i}: its head is awaited"
        );
        rest = tail;
        net.advance(Duration::from_secs(6));
        assert_eq!(get(&net.stats(server).frame_timeouts), 0, "frame {i}");
    }
    let got = net
        .deliveries(client)
        .iter()
        .filter(|d| matches!(d, Delivery::Message { .. }))
        .count();
    assert_eq!(got, 4, "every completed frame was echoed");
    // The last frame's tail never comes: its own deadline still applies.
    net.advance(DEFAULT_FRAME_TIMEOUT);
    assert_eq!(get(&net.stats(server).frame_timeouts), 1);
}

/// Records decoded from a frame but parked because their destination has no room stay in
/// the memory budget until they move on: one big frame to a peer that takes nothing must
/// count against `--memory-limit` (its bytes left the frame buffer when it was opened).
#[test]
fn records_parked_behind_a_full_destination_count_in_the_memory_budget() {
    let mut net = Net::new();
    let server = net.add(NodeSpec::default());
    let client = net.add(NodeSpec::default());
    let sink = net.add(NodeSpec::default());
    net.dial(client, server).expect("dial");
    net.dial(sink, server).expect("dial");
    let me = net.nodes[client].id;
    let dst = net.nodes[sink].id;
    // The sink takes nothing more: what the server sends it vanishes.
    let sink_addr = net.addr(sink);
    net.unreachable.push(sink_addr);
    let records: Vec<Record> = (0..512u64)
        .map(|seq| {
            Record::Message(Message {
                dst,
                src: me,
                seq,
                payload: vec![0x5a; 4096],
            })
        })
        .collect();
    let now = net.now;
    let key = net.ep(client).conns.keys()[0];
    let c = net.ep(client).conns.get_mut(key).expect("conn");
    c.session.send_batch(records.iter()).expect("seal");
    net.ep(client).drive(key, now);
    net.advance(Duration::from_millis(200));
    let from_client = net
        .ep(server)
        .conns
        .of_peer(&me)
        .expect("the client's connection");
    let parked: u64 = net
        .ep(server)
        .conns
        .get(from_client)
        .map(|c| c.stalled.iter().map(|(r, _)| r.encoded_len() as u64).sum())
        .unwrap_or(0);
    assert!(
        parked > 1 << 20,
        "most of the frame is parked ({parked} bytes)"
    );
    let used = net.nodes[server].memory.used();
    assert!(
        used >= parked,
        "{used} bytes in the budget, {parked} parked behind the full destination"
    );
    // The sender goes: what it had parked is counted in and dropped, and gives back its
    // bytes.
    let now = net.now;
    net.ep(server)
        .drop_conn_state(from_client, ErrorCode::DestinationUnreachable, now);
    net.advance(Duration::from_millis(10));
    let s = net.stats(server);
    assert!(get(&s.dropped_sender_gone) > 0);
    assert_eq!(
        get(&s.messages_in),
        get(&s.relayed) + get(&s.dropped_sender_gone),
        "every message read is counted in, once"
    );
    assert!(net.nodes[server].memory.used() < used - parked + 64 * 1024);
}

#[test]
fn at_the_memory_limit_new_peers_are_dropped_and_reading_pauses_until_it_falls() {
    let limit = 4 << 20;
    let (mut net, server, client) = echo_pair(PoolConfig {
        memory_limit: Some(limit),
        ..PoolConfig::default()
    });
    let node = net.dial(client, server).expect("dial below the limit");
    net.send(client, node, 1, b"before");
    net.pump();
    assert_eq!(net.deliveries(client).len(), 1);
    // Quiet again: every byte counted in the budget was given back.
    net.advance(Duration::from_millis(100));
    assert_eq!(net.nodes[server].memory.used(), 0);
    assert_eq!(get(&net.stats(server).buffered_bytes), 0);

    // Something else holds the node at its limit.
    net.nodes[server].memory.update(0, limit);
    net.send(client, node, 2, b"during");
    net.advance(Duration::from_millis(50));
    assert!(
        net.deliveries(client).is_empty(),
        "nothing read at the limit"
    );
    assert_eq!(get(&net.stats(server).memory_pauses), 1);
    let late = net.add(NodeSpec::default());
    assert!(net.dial(late, server).is_err());
    assert!(get(&net.stats(server).memory_limit_drops) >= 1);

    // Below the limit again: the paused message is read and echoed within a recheck.
    net.nodes[server].memory.update(limit, 0);
    net.advance(Duration::from_millis(50));
    let got = net.deliveries(client);
    assert!(
        got.iter()
            .any(|d| matches!(d, Delivery::Message { payload, .. } if payload == b"during")),
        "{got:?}"
    );
}
