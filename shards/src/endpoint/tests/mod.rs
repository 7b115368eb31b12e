//! Endpoints in memory: datagrams move between them through a queue, time is a variable.
//! No sockets, no sleeps. (quiche's own loss and idle timers still read the real clock,
//! so these tests never wait for a QUIC close to complete; they check what the endpoint
//! decides and sends.)

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::*;
use crate::batch::BatchPolicy;
use crate::hist::SharedHistograms;
use crate::identity::Identity;
use crate::lifecycle::{BackoffPolicy, ConnState};
use crate::session::TransportConfig;
use crate::tls::TlsFiles;
use crate::wire::ErrorCode;

/// The cluster-wide peer index, in memory.
#[derive(Default)]
struct Directory {
    owners: Mutex<HashMap<PeerId, (usize, u64, bool)>>,
    states: Mutex<Vec<(PeerId, ConnState)>>,
    generation: AtomicU64,
}

impl PeerDirectory for Directory {
    fn connected(&self, peer: PeerId, shard: usize, conn: u64, _: SocketAddr, outbound: bool) {
        self.owners.lock().insert(peer, (shard, conn, outbound));
    }
    fn activity(&self, _: PeerId, _: usize, _: u64, _: PeerActivity) {}
    fn state(&self, peer: PeerId, _: usize, state: ConnState) {
        self.states.lock().push((peer, state));
    }
    fn disconnected(&self, peer: PeerId, shard: usize, conn: u64) {
        let mut o = self.owners.lock();
        if o.get(&peer)
            .is_some_and(|&(s, c, _)| (s, c) == (shard, conn))
        {
            o.remove(&peer);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
    fn shard_of(&self, peer: &PeerId) -> Option<usize> {
        self.owners.lock().get(peer).map(|o| o.0)
    }
    fn owner(&self, peer: &PeerId) -> Option<(usize, u64, bool)> {
        self.owners.lock().get(peer).copied()
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

/// How one node of a test is set up.
struct NodeSpec {
    app: AppSpec,
    pool: PoolConfig,
    batch: BatchPolicy,
    reconnect: BackoffPolicy,
    shards: usize,
}

#[derive(Clone, Copy)]
enum AppSpec {
    Echo,
    Channel,
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            app: AppSpec::Channel,
            pool: PoolConfig::default(),
            batch: BatchPolicy {
                timeout: Duration::ZERO,
                ..BatchPolicy::default()
            },
            reconnect: BackoffPolicy::default(),
            shards: 1,
        }
    }
}

/// One node: its shards' endpoints (sharing identity, directory and connection slots),
/// at consecutive fake addresses.
struct Node {
    shards: Vec<Endpoint>,
    addrs: Vec<SocketAddr>,
    app: Option<flume::Receiver<Delivery>>,
    directory: Arc<Directory>,
    slots: Arc<ConnectionSlots>,
    memory: Arc<MemoryBudget>,
    id: PeerId,
}

/// Nodes in memory and the datagrams in flight between them.
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    wire: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Datagrams towards these addresses vanish.
    unreachable: Vec<SocketAddr>,
    _tls: TlsFiles,
    sent: u64,
}

impl Net {
    fn new() -> Net {
        Net {
            nodes: Vec::new(),
            now: Instant::now(),
            wire: VecDeque::new(),
            unreachable: Vec::new(),
            _tls: TlsFiles::self_signed().expect("certificate"),
            sent: 0,
        }
    }

    fn add(&mut self, spec: NodeSpec) -> usize {
        let n = self.nodes.len();
        let node = self.build(spec, n);
        self.nodes.push(node);
        n
    }

    /// Replaces node `n` with a fresh one at the same addresses, with a new identity (a
    /// node restarted without a persistent key); datagrams in flight to it are lost.
    fn restart(&mut self, n: usize, spec: NodeSpec) {
        let node = self.build(spec, n);
        let addrs = node.addrs.clone();
        self.wire.retain(|(_, to, _)| !addrs.contains(to));
        self.nodes[n] = node;
    }

    /// Node number `n` of `spec`: its endpoints at its fake addresses.
    fn build(&mut self, spec: NodeSpec, n: usize) -> Node {
        let identity = Arc::new(Identity::generate().expect("identity"));
        let directory = Arc::new(Directory::default());
        let slots = Arc::new(ConnectionSlots::default());
        let memory = Arc::new(MemoryBudget::default());
        let (app, rx) = match spec.app {
            AppSpec::Echo => (App::Echo, None),
            AppSpec::Channel => {
                let (tx, rx) = flume::bounded(1024);
                (App::Channel(tx), Some(rx))
            }
        };
        let mut shards = Vec::new();
        let mut addrs = Vec::new();
        for index in 0..spec.shards {
            let addr = SocketAddr::from(([127, 0, 0, 1], 1000 * (n as u16 + 1) + index as u16));
            let cfg = ShardConfig {
                index,
                shards: spec.shards,
                identity: identity.clone(),
                cert_pem: self._tls.cert_str(),
                key_pem: self._tls.key_str(),
                transport: TransportConfig::default(),
                batch: spec.batch,
                max_message_size: 64 * 1024,
                queue_capacity: 256 * 1024,
                app: app.clone(),
                accept: true,
                directory: directory.clone(),
                stats: Arc::new(ShardStats::default()),
                histograms: SharedHistograms::default(),
                pool: spec.pool.clone(),
                slots: slots.clone(),
                memory: memory.clone(),
                reconnect: spec.reconnect,
            };
            let seed = (n * 16 + index) as u64;
            shards.push(
                Endpoint::new(cfg, addr, seed, self.now, SystemTime::now()).expect("endpoint"),
            );
            addrs.push(addr);
        }
        Node {
            shards,
            addrs,
            app: rx,
            directory,
            slots,
            memory,
            id: identity.peer_id(),
        }
    }

    fn ep(&mut self, node: usize) -> &mut Endpoint {
        &mut self.nodes[node].shards[0]
    }

    fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addrs[0]
    }

    fn stats(&self, node: usize) -> &ShardStats {
        self.nodes[node].shards[0].stats()
    }

    /// Collects every endpoint's output: datagrams onto the wire, hops to sibling shards.
    fn collect(&mut self) -> bool {
        let mut moved = false;
        for node in &mut self.nodes {
            for s in 0..node.shards.len() {
                let from = node.addrs[s];
                while let Some(t) = node.shards[s].poll_transmit() {
                    self.wire.push_back((from, t.to, t.data));
                    self.sent += 1;
                    moved = true;
                }
                while let Some((to, msg)) = node.shards[s].poll_hop() {
                    node.shards[to].handle_hop(self.now, msg);
                    node.shards[s].handle_hop_sent(self.now);
                    moved = true;
                }
            }
        }
        moved
    }

    /// Delivers datagrams until the network is quiet.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let moved = self.collect();
            let Some((from, to, mut data)) = self.wire.pop_front() else {
                if !moved {
                    return;
                }
                continue;
            };
            if self.unreachable.contains(&to) {
                continue;
            }
            let now = self.now;
            for node in &mut self.nodes {
                if let Some(i) = node.addrs.iter().position(|a| *a == to) {
                    node.shards[i].handle_datagram(now, from, &mut data);
                }
            }
        }
        panic!("the network never went quiet");
    }

    /// Advances simulated time by `d`, running every endpoint's due deadlines on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .nodes
                .iter_mut()
                .flat_map(|n| n.shards.iter_mut())
                .filter_map(|e| e.poll_timeout())
                .filter(|t| *t > self.now)
                .min();
            let step = match next {
                Some(t) if t <= end => t,
                _ => end,
            };
            self.now = step;
            for node in &mut self.nodes {
                for e in &mut node.shards {
                    e.handle_timeout(step);
                }
            }
            self.pump();
            if step >= end {
                return;
            }
        }
    }

    /// Node `a` dials node `b`; returns the dial's answer.
    fn dial(&mut self, a: usize, b: usize) -> Result<PeerId, String> {
        let (tx, rx) = flume::bounded(1);
        let addr = self.addr(b);
        let now = self.now;
        self.ep(a)
            .handle_command(now, Command::Dial { addr, reply: tx });
        self.pump();
        rx.try_recv().unwrap_or_else(|_| Err("no answer".into()))
    }

    fn send(&mut self, from: usize, to: PeerId, seq: u64, payload: &[u8]) {
        let now = self.now;
        self.ep(from).handle_command(
            now,
            Command::Send {
                dst: to,
                seq,
                payload: payload.to_vec(),
            },
        );
    }

    fn deliveries(&self, node: usize) -> Vec<Delivery> {
        self.nodes[node]
            .app
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    /// Seals `m` straight into node `from`'s first connection, as a peer speaking the
    /// protocol by hand would, and sends it.
    fn inject(&mut self, from: usize, m: Message) {
        let now = self.now;
        let ep = self.ep(from);
        let key = ep.conns.keys()[0];
        let c = ep.conns.get_mut(key).expect("conn");
        c.session
            .send_batch([Record::Message(m)].iter())
            .expect("seal");
        ep.drive(key, now);
        self.pump();
    }

    /// A plain quiche client (ALPN qme/1, no Noise) at `me`, towards node `node`'s first
    /// shard; its first Initial is delivered.
    fn raw_client(&mut self, node: usize, me: SocketAddr, id: u8) -> quiche::Connection {
        let server = self.addr(node);
        let mut cfg = crate::session::client_config(&TransportConfig::default()).unwrap();
        let scid = [id; 16];
        let scid = quiche::ConnectionId::from_ref(&scid);
        let mut quic = quiche::connect(None, &scid, me, server, &mut cfg).unwrap();
        let mut out = [0u8; 1500];
        let (n, _) = quic.send(&mut out).unwrap();
        let now = self.now;
        self.ep(node).handle_datagram(now, me, &mut out[..n]);
        quic
    }

    fn transmits_during(&mut self, d: Duration) -> u64 {
        let before = self.sent;
        self.advance(d);
        self.sent - before
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn echo_pair(pool: PoolConfig) -> (Net, usize, usize) {
    let mut net = Net::new();
    let server = net.add(NodeSpec {
        app: AppSpec::Echo,
        pool: pool.clone(),
        ..NodeSpec::default()
    });
    let client = net.add(NodeSpec {
        pool,
        ..NodeSpec::default()
    });
    (net, server, client)
}

/// An echo server and a client built from `client` (default spec for the server).
fn echo_server_and(client: NodeSpec) -> (Net, usize, usize) {
    let mut net = Net::new();
    let server = net.add(NodeSpec {
        app: AppSpec::Echo,
        ..NodeSpec::default()
    });
    let client = net.add(client);
    (net, server, client)
}

mod drain;
mod hardening;
mod pool;
mod routing;
