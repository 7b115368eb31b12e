//! Helpers shared by the integration tests.

mod bins;

pub use bins::{engine_bin, harness_bin, stdout_of_success};

use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig};
use shards::client::{Client, ClientConfig};
use shards::identity::Identity;
use shards::shard::Delivery;
use shards::wire::PeerId;

/// A started engine on loopback with `shards` shards.
pub fn engine(shards: usize) -> Engine {
    Engine::start(EngineConfig::loopback(shards)).expect("engine starts")
}

/// A client with a fresh identity and a short batch timeout.
pub fn client(e: &Engine) -> Client {
    client_with(e, ClientConfig::default())
}

/// A client with `cfg`, returned once the engine has registered it in its peer index
/// (the client finishes the handshake one flight before the engine does).
pub fn client_with(e: &Engine, mut cfg: ClientConfig) -> Client {
    cfg.batch.timeout = cfg.batch.timeout.min(Duration::from_millis(1));
    let id = Identity::generate().unwrap();
    let mut c = Client::connect(e.local_addr(), &id, cfg).expect("client connects");
    let me = c.peer_id();
    let registered = wait_for(Duration::from_secs(5), || {
        c.poll(Duration::from_millis(1)).unwrap();
        e.peers().get(&me).is_some()
    });
    assert!(registered, "engine registered the client");
    c
}

/// Receives messages until `n` arrived or `timeout` passed.
pub fn recv_n(c: &mut Client, n: usize, timeout: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(d) = c.recv(Duration::from_millis(50)).unwrap() {
            out.push(d);
        }
    }
    out
}

/// The message part of a delivery, panicking on an error record.
pub fn msg(d: &Delivery) -> (PeerId, u64, &[u8]) {
    match d {
        Delivery::Message { from, seq, payload } => (*from, *seq, payload),
        Delivery::Error(e) => panic!("unexpected error record: {e:?}"),
    }
}

/// Waits until `f` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
