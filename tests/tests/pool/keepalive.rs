use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig};

use crate::common::*;

fn short_idle() -> EngineConfig {
    let mut cfg = EngineConfig::loopback(1);
    cfg.transport.idle_timeout = Duration::from_millis(1_000);
    cfg.pool.keepalive = Duration::from_millis(250);
    cfg
}

/// Keep-alives hold an idle connection open well past the idle timeout, as long as the
/// peer answers them.
#[test]
fn keepalive_holds_an_idle_connection() {
    let e = Engine::start(short_idle()).unwrap();
    let mut c = client(&e);
    let me = c.peer_id();
    let until = Instant::now() + Duration::from_millis(3_000);
    while Instant::now() < until {
        c.poll(Duration::from_millis(20)).unwrap();
    }
    assert!(
        e.peers().get(&me).is_some(),
        "still connected after 3x the idle timeout"
    );
    assert!(!c.is_closed());
}

/// A peer that vanishes without closing (its socket dropped) is detected within the
/// documented bound (twice the idle timeout plus one keep-alive interval: the first
/// unanswered PING restarts QUIC's idle timer, and quiche never lets it run shorter than
/// three probe timeouts) and removed from the peer index.
#[test]
fn keepalive_detects_a_vanished_peer() {
    let e = Engine::start(short_idle()).unwrap();
    let c = client(&e);
    let me = c.peer_id();
    let gone_at = Instant::now();
    drop(c); // no CONNECTION_CLOSE: the socket just goes away
    assert!(
        wait_for(Duration::from_secs(5), || e.peers().get(&me).is_none()),
        "vanished peer detected"
    );
    let took = gone_at.elapsed();
    // The bound plus a second of scheduling slack on a shared machine.
    assert!(
        took <= Duration::from_millis(2 * 1_000 + 250 + 1_000),
        "took {took:?}"
    );
    assert_eq!(e.stats().connections, 0);
}
