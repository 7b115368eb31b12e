//! The pool on simulated time: TTL, keep-alive, the connection cap, reconnection backoff,
//! messages held for a re-dial, and the deadline each connection arms.

use super::*;

#[test]
fn idle_connection_is_finished_after_the_ttl_and_not_before() {
    let pool = PoolConfig {
        ttl: Duration::from_secs(60),
        keepalive: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    let (mut net, server, client) = echo_pair(pool);
    let id = net.dial(client, server).expect("dial");
    net.send(client, id, 1, b"x");
    net.pump();
    net.advance(Duration::from_secs(59));
    assert_eq!(get(&net.stats(client).ttl_closed), 0);
    assert!(net.ep(client).conns.iter_mut().all(|(_, c)| !c.finished));
    net.advance(Duration::from_secs(2));
    assert_eq!(
        get(&net.stats(client).ttl_closed),
        1,
        "the dialer's TTL fires"
    );
    // Both directions finished: the server saw the FIN and finished its own.
    assert!(net.ep(client).conns.iter_mut().all(|(_, c)| c.finished));
    assert!(
        net.ep(server)
            .conns
            .iter_mut()
            .all(|(_, c)| c.finished && c.session.peer_finished())
    );
}

#[test]
fn keepalive_pings_an_idle_connection_on_schedule() {
    let pool = PoolConfig {
        ttl: Duration::from_secs(3600),
        keepalive: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    let (mut net, server, client) = echo_pair(pool);
    net.dial(client, server).expect("dial");
    net.advance(Duration::from_secs(1));
    // Quiet until the keep-alive interval passes...
    assert_eq!(net.transmits_during(Duration::from_secs(8)), 0);
    // ...then PINGs (and their ACKs) flow, once per interval.
    let first = net.transmits_during(Duration::from_secs(2));
    assert!(first >= 1, "no keep-alive within the interval");
    let later = net.transmits_during(Duration::from_secs(10));
    assert!(later >= 1);
    assert_eq!(get(&net.stats(client).ttl_closed), 0);
    assert_eq!(net.ep(client).connections(), 1);
}

#[test]
fn connection_cap_refuses_the_connection_over_it() {
    let mut net = Net::new();
    let server = net.add(NodeSpec {
        app: AppSpec::Echo,
        pool: PoolConfig {
            max_connections: Some(1),
            ..PoolConfig::default()
        },
        ..NodeSpec::default()
    });
    let a = net.add(NodeSpec::default());
    let b = net.add(NodeSpec::default());
    assert!(net.dial(a, server).is_ok());
    // The second peer completes QUIC and Noise (the cap counts authenticated peers only),
    // is then closed with CONNECTION_LIMIT and never becomes a peer of the node.
    let _ = net.dial(b, server);
    net.advance(Duration::from_millis(50));
    let key = net.ep(b).conns.keys()[0];
    let peer_error = net.ep(b).conns.get(key).and_then(|c| {
        c.session
            .quic()
            .peer_error()
            .map(|e| (e.is_app, e.error_code))
    });
    assert_eq!(
        peer_error,
        Some((true, crate::wire::close_code::CONNECTION_LIMIT))
    );
    assert_eq!(get(&net.stats(server).refused), 1);
    assert_eq!(net.nodes[server].slots.used(), 1);
    assert!(
        net.nodes[server]
            .directory
            .owner(&net.nodes[b].id)
            .is_none()
    );
    assert!(
        net.nodes[server]
            .directory
            .owner(&net.nodes[a].id)
            .is_some()
    );
}

#[test]
fn failed_dials_back_off_exponentially_then_give_up() {
    let mut net = Net::new();
    let server = net.add(NodeSpec::default());
    let client = net.add(NodeSpec {
        pool: PoolConfig {
            max_connections: Some(1),
            ..PoolConfig::default()
        },
        reconnect: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            attempts: 3,
            jitter: 0.0,
        },
        ..NodeSpec::default()
    });
    // The only slot is taken: every dial fails at once and is retried on the backoff.
    assert!(net.nodes[client].slots.try_acquire(Some(1)));
    let t0 = net.now;
    let answer = net.dial(client, server);
    assert!(answer.unwrap_err().contains("connection limit"));
    let mut retries = Vec::new();
    for _ in 0..3 {
        let at = net.ep(client).poll_timeout().expect("a retry is scheduled");
        retries.push(at.duration_since(t0));
        net.advance(at.saturating_duration_since(net.now));
    }
    let ms = |m| Duration::from_millis(m);
    assert_eq!(
        retries,
        vec![ms(100), ms(300), ms(700)],
        "100, 200, 400 ms apart"
    );
    let addr = net.addr(server);
    assert_eq!(
        net.ep(client).pool.get(&addr).map(|ob| ob.life.state()),
        Some(ConnState::Failed)
    );
    assert_eq!(get(&net.stats(client).dialed), 0);
    assert_eq!(get(&net.stats(client).refused), 4);
}

/// A client that re-dials a lost peer 100 ms later, and again without giving up.
fn redialing_client() -> NodeSpec {
    NodeSpec {
        reconnect: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            attempts: 0,
            jitter: 0.0,
        },
        ..NodeSpec::default()
    }
}

#[test]
fn messages_for_a_peer_being_redialed_wait_and_then_go() {
    let (mut net, server, client) = echo_server_and(redialing_client());
    let id = net.dial(client, server).expect("dial");
    // The pool knows the peer; drop its connection state as a lost connection would.
    let key = net.ep(client).conns.keys()[0];
    let now = net.now;
    net.ep(client)
        .drop_conn_state(key, ErrorCode::DestinationUnreachable, now);
    assert_eq!(net.ep(client).connections(), 0);
    // Messages now wait in the pool for the re-dial, which happens on the backoff.
    net.send(client, id, 7, b"later");
    net.pump();
    assert!(net.deliveries(client).is_empty());
    net.advance(Duration::from_millis(150));
    let got = net.deliveries(client);
    assert!(
        got.iter()
            .any(|d| matches!(d, Delivery::Message { seq: 7, .. })),
        "{got:?}"
    );
    assert_eq!(get(&net.stats(client).dialed), 2);
    // Every byte the lost and the new connection held was given back to the budget.
    net.advance(Duration::from_millis(100));
    assert_eq!(net.nodes[client].memory.used(), 0);
    assert_eq!(get(&net.stats(client).buffered_bytes), 0);
}

/// A dialed node that comes back at its address with another identity (restarted
/// without a persistent key) gets none of the messages that waited for the old one: the
/// old identity is forgotten, so they (and messages sent to it afterwards, at once) are
/// refused to their sender as for an unknown destination, and counted.
#[test]
fn a_redialed_address_with_a_new_identity_gets_none_of_the_old_ones_messages() {
    let (mut net, server, client) = echo_server_and(redialing_client());
    let old = net.dial(client, server).expect("dial");
    // The node restarts with a new key; the client loses its connection.
    net.restart(
        server,
        NodeSpec {
            app: AppSpec::Echo,
            ..NodeSpec::default()
        },
    );
    let new = net.nodes[server].id;
    assert_ne!(old, new);
    let key = net.ep(client).conns.keys()[0];
    let now = net.now;
    net.ep(client)
        .drop_conn_state(key, ErrorCode::DestinationUnreachable, now);
    // Held for the re-dial, which now reaches the new identity.
    net.send(client, old, 7, b"for the old node only");
    net.pump();
    net.advance(Duration::from_millis(150));
    assert_eq!(get(&net.stats(client).dialed), 2);
    assert_eq!(
        get(&net.stats(server).messages_in),
        0,
        "the new identity received nothing meant for the old one"
    );
    let got = net.deliveries(client);
    assert!(
        got.iter().any(|d| matches!(
            d,
            Delivery::Error(e) if e.seq == 7 && e.code == ErrorCode::UnknownDestination
        )),
        "{got:?}"
    );
    assert_eq!(get(&net.stats(client).dropped_unknown_destination), 1);
    // The old identity is gone: a message for it is refused at once.
    net.send(client, old, 8, b"still for the old node");
    net.pump();
    let got = net.deliveries(client);
    assert!(
        got.iter()
            .any(|d| matches!(d, Delivery::Error(e) if e.seq == 8)),
        "{got:?}"
    );
    assert_eq!(get(&net.stats(server).messages_in), 0);
    // Messages for the new identity go over the connection.
    net.send(client, new, 9, b"for the new node");
    net.pump();
    assert_eq!(get(&net.stats(server).messages_in), 1);
}

/// A connection whose direction the node finished (replaced by another connection of the
/// same peer) is closed if the peer has not finished its own within the stall timeout,
/// instead of living on while the peer keeps it open.
#[test]
fn a_finished_connection_the_peer_keeps_open_is_closed_after_the_stall_timeout() {
    let (mut net, server, key) = finished_towards_a_silent_peer();
    net.advance(DEFAULT_STALL_TIMEOUT - Duration::from_secs(1));
    assert!(
        open(&mut net, server, key),
        "still open before the deadline"
    );
    net.advance(Duration::from_secs(2));
    assert!(
        !open(&mut net, server, key),
        "closed once the peer had the stall timeout to finish"
    );
}

/// An echo pair whose server has finished its connection to the client (as for one
/// replaced), the client hearing nothing more (so never finishing in turn): the net, the
/// server and its connection's key.
fn finished_towards_a_silent_peer() -> (Net, usize, ConnKey) {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    net.dial(client, server).expect("dial");
    let key = net.ep(server).conns.keys()[0];
    let client_addr = net.addr(client);
    net.unreachable.push(client_addr);
    let now = net.now;
    net.ep(server).finish_conn(key, now);
    (net, server, key)
}

/// Whether connection `key` of `node` is still open (not closing, not gone).
fn open(net: &mut Net, node: usize, key: ConnKey) -> bool {
    net.ep(node)
        .conns
        .get(key)
        .is_some_and(|c| !c.session.is_closing())
}

/// The finish deadline counts from the peer's last sign of life after our FIN, and does
/// not run while this node is the one not reading.
#[test]
fn the_finish_deadline_waits_for_progress_and_for_this_node() {
    let (mut net, server, key) = finished_towards_a_silent_peer();
    let pool = PoolConfig::default();
    // Frames read 8 s later move the deadline to 18 s.
    net.advance(Duration::from_secs(8));
    let now = net.now;
    let c = net.ep(server).conns.get_mut(key).expect("conn");
    c.last_activity = now;
    assert_eq!(c.finish_deadline(&pool), Some(now + DEFAULT_STALL_TIMEOUT));
    // While its records wait for room the node reads nothing: no deadline then.
    c.blocked = true;
    assert_eq!(c.finish_deadline(&pool), None);
    c.blocked = false;
    net.advance(Duration::from_secs(8));
    assert!(
        open(&mut net, server, key),
        "16 s after the FIN, 8 s after the last frames: still open"
    );
    net.advance(Duration::from_secs(3));
    assert!(!open(&mut net, server, key));
}

/// However much the peer still sends, a finished connection is closed within
/// `FINISH_LIMIT` stall timeouts of our FIN; and reading the peer again after records
/// waited for room restarts the clock.
#[test]
fn the_finish_deadline_has_a_limit_and_restarts_on_resumption() {
    let (mut net, server, key) = finished_towards_a_silent_peer();
    let pool = PoolConfig::default();
    let finished = net.now;
    let limit = finished + DEFAULT_STALL_TIMEOUT * crate::endpoint::conns::FINISH_LIMIT;
    let c = net.ep(server).conns.get_mut(key).expect("conn");
    // Frames keep coming 25 s after the FIN: the limit, not the frames, decides.
    c.last_activity = finished + Duration::from_secs(25);
    assert_eq!(c.finish_deadline(&pool), Some(limit));
    c.last_activity = finished;
    c.resumed_at = Some(finished + Duration::from_secs(5));
    assert_eq!(
        c.finish_deadline(&pool),
        Some(finished + Duration::from_secs(5) + DEFAULT_STALL_TIMEOUT)
    );
}

/// A drain does not arm the finish deadline: its own deadline bounds it.
#[test]
fn a_drain_does_not_arm_the_finish_deadline() {
    let (mut net, server, client) = echo_pair(PoolConfig::default());
    net.dial(client, server).expect("dial");
    let key = net.ep(server).conns.keys()[0];
    let now = net.now;
    net.ep(server).finish_conn(key, now);
    let deadline = now + Duration::from_secs(60);
    net.ep(server)
        .handle_command(now, Command::Shutdown { deadline });
    let pool = PoolConfig::default();
    assert_eq!(
        net.ep(server)
            .conns
            .get(key)
            .and_then(|c| c.finish_deadline(&pool)),
        None
    );
}

#[test]
fn each_connection_has_one_armed_deadline() {
    let (mut net, server, client) = echo_pair(PoolConfig {
        keepalive: Duration::from_secs(10),
        ttl: Duration::from_secs(3600),
        ..PoolConfig::default()
    });
    net.dial(client, server).expect("dial");
    net.advance(Duration::from_secs(1));
    // One armed deadline per connection, and the next one is the keep-alive (quiche's
    // own timers run on the real clock and are long since due or far away).
    assert_eq!(net.ep(client).timers.len(), 1);
    let next = net.ep(client).poll_timeout().expect("deadline");
    assert!(next > net.now);
}
