use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig};
use shards::client::ClientConfig;
use shards::shard::Delivery;
use shards::wire::{ErrorCode, close_code};

use crate::common::*;

const PAYLOAD: usize = 512;

/// Pushes echo messages without reading any reply (the client's inbox stays full, so it
/// stops reading its stream) until sends have been refused for `hold`; returns how many
/// the client got out and the largest engine queue seen.
fn push_without_reading(e: &Engine, c: &mut shards::client::Client, hold: Duration) -> (u64, u64) {
    let node = c.node_id();
    let mut sent = 0u64;
    let mut max_queued = 0u64;
    let mut refused_since: Option<Instant> = None;
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < give_up,
            "the client was never pushed back ({sent} sent)"
        );
        if c.try_send_with_seq(node, sent, vec![0xa5; PAYLOAD])
            .unwrap()
        {
            sent += 1;
            refused_since = None;
        } else {
            let since = *refused_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= hold {
                break;
            }
            // Keep QUIC alive (ACKs, timers) without consuming deliveries.
            c.poll(Duration::from_millis(2)).unwrap();
        }
        max_queued = max_queued.max(e.stats().queued_bytes);
    }
    (sent, max_queued)
}

/// An echo client that stops reading its replies is pushed back through QUIC flow control
/// within a bounded amount of buffered work (the engine's queue stays under its capacity),
/// nothing is dropped while it pauses, and once it reads again every reply arrives, in
/// order; `delivered` then counts exactly the replies sealed.
#[test]
fn a_client_that_stops_reading_is_pushed_back_and_loses_nothing() {
    let cfg = EngineConfig::loopback(1);
    let capacity = cfg.queue_capacity as u64;
    let window = cfg.transport.window;
    let e = Engine::start(cfg).unwrap();
    let mut c = client_with(
        &e,
        ClientConfig {
            inbox_capacity: 16,
            send_capacity: 64 * 1024,
            ..ClientConfig::default()
        },
    );
    let (sent, max_queued) = push_without_reading(&e, &mut c, Duration::from_millis(1500));

    // Everything buffered end to end fits the documented bounds: the client's send
    // capacity, the engine's receive window, reply queue and sealed backlog, the client's
    // receive window and inbox. Far less than the seconds of work the harness once queued.
    let record = (PAYLOAD + 45) as u64;
    let bound_bytes = 64 * 1024 + window + capacity + 256 * 1024 + window + 16 * record;
    assert!(
        sent * record <= bound_bytes + 64 * 1024,
        "{sent} messages ({} bytes) buffered, bound {bound_bytes}",
        sent * record
    );
    assert!(
        max_queued <= capacity + 64 * 1024,
        "engine queued {max_queued} bytes, capacity {capacity}"
    );
    let s = e.stats();
    assert_eq!(s.dropped(), 0, "{s:?}");
    assert_eq!(
        s.stalled_closed, 0,
        "a 1.5 s pause is below the stall timeout"
    );
    // Replies are counted as delivered when sealed, never before.
    assert!(s.delivered_local <= s.messages_out, "{s:?}");
    assert!(
        s.messages_in < sent,
        "the engine stopped reading the client: {s:?}"
    );

    // Resume: every reply arrives, in order.
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next < sent {
        assert!(Instant::now() < deadline, "only {next} of {sent} replies");
        if let Some(d) = c.recv(Duration::from_millis(20)).unwrap() {
            match d {
                Delivery::Message { seq, payload, .. } => {
                    assert_eq!(seq, next, "in order");
                    assert_eq!(payload.len(), PAYLOAD);
                    next += 1;
                }
                Delivery::Error(err) => panic!("error record {err:?}"),
            }
        }
    }
    assert!(wait_for(Duration::from_secs(5), || {
        let s = e.stats();
        s.delivered_local == sent && s.queued_bytes == 0
    }));
    let s = e.stats();
    assert_eq!((s.messages_in, s.dropped()), (sent, 0), "{s:?}");
}

/// A peer that stops reading for longer than the stall timeout is closed with STALLED
/// (0x7); the replies it left queued are counted as dropped with their own reason, not as
/// unreachable, and a bystander connection is unaffected.
#[test]
fn a_peer_that_never_reads_again_is_closed_as_stalled() {
    let mut cfg = EngineConfig::loopback(1);
    cfg.pool.stall_timeout = Duration::from_millis(1500);
    let e = Engine::start(cfg).unwrap();
    let mut bystander = client(&e);
    // A small receive window: the engine's QUIC stops taking replies for this client as
    // soon as the window is used up, so everything after waits in the engine's queue.
    let transport = shards::session::TransportConfig {
        window: 16 * 1024,
        ..Default::default()
    };
    let mut c = client_with(
        &e,
        ClientConfig {
            inbox_capacity: 16,
            send_capacity: 64 * 1024,
            transport,
            ..ClientConfig::default()
        },
    );
    let (sent, _) = push_without_reading(&e, &mut c, Duration::from_millis(100));
    assert!(sent > 0);
    // Push until the engine stops taking more: its queue for the client is then full. (On
    // a busy machine the client can be refused for a while only because the engine had no
    // CPU yet; another round then gets more out.)
    let give_up = Instant::now() + Duration::from_secs(20);
    while push_without_reading(&e, &mut c, Duration::from_millis(300)).0 > 0 {
        assert!(Instant::now() < give_up, "the engine kept taking messages");
    }
    // Wait until the engine has stopped reading the client (its queue for the client is
    // full), so what the relayer sends next waits for room instead of being sealed.
    let mut last = e.stats().messages_in;
    let mut stable_since = Instant::now();
    let settled = wait_for(Duration::from_secs(10), || {
        let _ = c.poll(Duration::from_millis(5));
        let now = e.stats().messages_in;
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        stable_since.elapsed() >= Duration::from_millis(300)
    });
    assert!(settled, "the engine kept reading the client");
    // Another peer relays to the stalled one: its messages wait for room.
    let mut relayer = client(&e);
    let stalled_id = c.peer_id();
    for seq in 0..5 {
        relayer.send_with_seq(stalled_id, seq, vec![1; 32]).unwrap();
    }
    relayer.flush().unwrap();
    // Keep the connection alive at the QUIC level but never consume a reply.
    let closed = wait_for(Duration::from_secs(10), || {
        let _ = c.poll(Duration::from_millis(5));
        c.is_closed()
    });
    assert!(closed, "the stalled peer was not closed");
    let info = c.close_info().unwrap();
    assert!(info.by_peer && info.is_app, "{info:?}");
    assert_eq!(info.code, close_code::STALLED, "{info:?}");
    assert!(wait_for(Duration::from_secs(5), || e.stats().connections == 2));
    let s = e.stats();
    assert_eq!(s.stalled_closed, 1, "{s:?}");
    assert!(s.dropped_stalled > 0, "{s:?}");
    assert_eq!(s.dropped_unreachable, 0, "{s:?}");
    assert_eq!(s.queued_bytes, 0, "{s:?}");

    // The bystander is served as before.
    let node = bystander.node_id();
    bystander.send(node, b"still here".to_vec()).unwrap();
    bystander.flush().unwrap();
    let got = recv_n(&mut bystander, 1, Duration::from_secs(5));
    assert_eq!(msg(&got[0]).2, b"still here");
    // The relayer is told why its messages went nowhere.
    let errors = recv_n(&mut relayer, 5, Duration::from_secs(5));
    assert_eq!(errors.len(), 5, "{errors:?} {:?}", e.stats());
    for d in &errors {
        match d {
            Delivery::Error(err) => assert_eq!(err.code, ErrorCode::DestinationStalled),
            other => panic!("expected an error record, got {other:?}"),
        }
    }
}
