//! Reconnection to a peer node that dies (SIGKILL: no close of any kind) and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::{AppKind, Engine, EngineConfig, EngineError};
use shards::lifecycle::{BackoffPolicy, ConnState};
use shards::shard::Delivery;
use shards::wire::ErrorCode;

use crate::common::engine_bin as bin;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `engine serve` (echo) on `addr` with identity file `id`; returns once listening.
fn spawn_node(addr: SocketAddr, id: &std::path::Path) -> Child {
    let mut child = Command::new(bin())
        .args(["serve", "--shards", "1", "--no-pin", "--idle-timeout", "1s"])
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--identity")
        .arg(id)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    child
}

fn dialer(attempts: u32) -> Engine {
    let mut cfg = EngineConfig::loopback(1);
    cfg.app = AppKind::Channel;
    cfg.transport.idle_timeout = Duration::from_millis(1_000);
    cfg.pool.keepalive = Duration::from_millis(250);
    cfg.reconnect = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
        attempts,
        jitter: 0.2,
    };
    Engine::start(cfg).unwrap()
}

fn wait_state(e: &Engine, peer: &shards::wire::PeerId, state: ConnState, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if e.peers().get(peer).map(|p| p.state) == Some(state) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "peer never reached {state:?}: {:?}",
        e.peers().get(peer).map(|p| p.state)
    );
}

fn echo_of(e: &Engine, within: Duration) -> Vec<u8> {
    match e.recv_timeout(within) {
        Some(Delivery::Message { payload, .. }) => payload,
        other => panic!("expected an echo, got {other:?}"),
    }
}

fn kill(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The peer is killed and restarted on the same address with the same identity: the
/// engine notices (keep-alive, idle timeout), re-dials on its backoff schedule, and the
/// message sent during the outage is delivered once the peer is back.
#[test]
fn reconnects_to_a_restarted_peer_and_delivers_what_waited() {
    let id = std::env::temp_dir().join(format!("reconnect-{}.key", std::process::id()));
    let _ = std::fs::remove_file(&id);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let mut b = spawn_node(addr, &id);
    let a = dialer(0);
    let b_id = a.dial(addr, Duration::from_secs(5)).unwrap();
    a.send(b_id, b"one".to_vec()).unwrap();
    assert_eq!(echo_of(&a, Duration::from_secs(5)), b"one");

    kill(&mut b);
    wait_state(&a, &b_id, ConnState::Disconnected, Duration::from_secs(5));
    // Sent while the peer is down: waits in the pool for the new connection.
    a.send(b_id, b"two".to_vec()).unwrap();

    let mut b = spawn_node(addr, &id);
    wait_state(&a, &b_id, ConnState::Connected, Duration::from_secs(10));
    assert_eq!(echo_of(&a, Duration::from_secs(5)), b"two");
    a.send(b_id, b"three".to_vec()).unwrap();
    assert_eq!(echo_of(&a, Duration::from_secs(5)), b"three");
    assert_eq!(a.stats().dropped(), 0);
    // Every transition was counted: two connects, at least one loss.
    let t = a.stats().transitions;
    assert_eq!(t[ConnState::Connected as usize], 2);
    assert!(t[ConnState::Disconnected as usize] >= 1);
    assert!(t[ConnState::Connecting as usize] >= 2);
    kill(&mut b);
    std::fs::remove_file(&id).unwrap();
}

/// A peer that does not come back is marked Failed after the last attempt: what waited
/// for it is reported undeliverable, and new sends are refused with an error.
#[test]
fn gives_up_after_the_last_attempt() {
    let id = std::env::temp_dir().join(format!("giveup-{}.key", std::process::id()));
    let _ = std::fs::remove_file(&id);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let mut b = spawn_node(addr, &id);
    let a = dialer(2);
    let b_id = a.dial(addr, Duration::from_secs(5)).unwrap();
    kill(&mut b);
    wait_state(&a, &b_id, ConnState::Disconnected, Duration::from_secs(5));
    a.send(b_id, b"lost".to_vec()).unwrap();
    wait_state(&a, &b_id, ConnState::Failed, Duration::from_secs(15));
    match a.recv_timeout(Duration::from_secs(2)) {
        Some(Delivery::Error(e)) => assert_eq!(e.code, ErrorCode::DestinationUnreachable),
        other => panic!("expected an error record, got {other:?}"),
    }
    assert!(matches!(
        a.send(b_id, b"refused".to_vec()),
        Err(EngineError::PeerFailed(p)) if p == b_id
    ));
    assert_eq!(a.stats().dropped_unreachable, 1);
    std::fs::remove_file(&id).unwrap();
}
