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
        let identity = Arc::new(Identity::generate().expect("identity"));
        let directory = Arc::new(Directory::default());
        let slots = Arc::new(ConnectionSlots::default());
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
                reconnect: spec.reconnect,
            };
            let seed = (n * 16 + index) as u64;
            shards.push(
                Endpoint::new(cfg, addr, seed, self.now, SystemTime::now()).expect("endpoint"),
            );
            addrs.push(addr);
        }
        self.nodes.push(Node {
            shards,
            addrs,
            app: rx,
            directory,
            slots,
            id: identity.peer_id(),
        });
        n
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
    // The second peer completes QUIC, is closed with CONNECTION_LIMIT before any Noise
    // message and never becomes a peer of the node.
    let second = net.dial(b, server);
    assert!(second.is_err(), "{second:?}");
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

#[test]
fn messages_for_a_peer_being_redialed_wait_and_then_go() {
    let mut net = Net::new();
    let server = net.add(NodeSpec {
        app: AppSpec::Echo,
        ..NodeSpec::default()
    });
    let client = net.add(NodeSpec {
        pool: PoolConfig {
            max_connections: Some(1),
            ..PoolConfig::default()
        },
        reconnect: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            attempts: 0,
            jitter: 0.0,
        },
        ..NodeSpec::default()
    });
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
}

#[test]
fn drain_flushes_queues_at_once_and_counts_what_is_left_at_the_deadline() {
    let mut net = Net::new();
    let server = net.add(NodeSpec {
        app: AppSpec::Echo,
        ..NodeSpec::default()
    });
    let client = net.add(NodeSpec {
        batch: BatchPolicy {
            timeout: Duration::from_secs(60),
            max_messages: 1000,
            ..BatchPolicy::default()
        },
        ..NodeSpec::default()
    });
    let id = net.dial(client, server).expect("dial");
    for seq in 0..5 {
        net.send(client, id, seq, b"queued");
    }
    net.pump();
    // The batch timeout holds them.
    assert_eq!(get(&net.stats(server).messages_in), 0);
    let now = net.now;
    let deadline = now + Duration::from_secs(5);
    net.ep(client)
        .handle_command(now, Command::Shutdown { deadline });
    net.pump();
    // Drain flushed the queue regardless of its timeout, and finished the session.
    assert_eq!(get(&net.stats(server).messages_in), 5);
    assert!(net.ep(client).conns.iter_mut().all(|(_, c)| c.finished));
    // New work is refused while draining.
    let (tx, rx) = flume::bounded(1);
    let addr = net.addr(server);
    net.ep(client)
        .handle_command(now, Command::Dial { addr, reply: tx });
    assert!(rx.try_recv().is_ok_and(|r| r.is_err()));
    // At the deadline whatever is left is closed and counted.
    net.now = deadline;
    net.ep(client).close_all(deadline);
    assert_eq!(net.ep(client).connections(), 0);
    assert_eq!(get(&net.stats(client).closed), 1);
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
fn an_unfinished_handshake_is_closed_at_its_deadline_and_frees_its_slot() {
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
    assert_eq!(net.nodes[node].slots.used(), 1);
    net.advance(Duration::from_secs(9));
    assert_eq!(get(&net.stats(node).handshake_timeouts), 0);
    assert_eq!(net.nodes[node].slots.used(), 1);
    net.advance(Duration::from_secs(2));
    let s = net.stats(node);
    assert_eq!(get(&s.handshake_timeouts), 1);
    assert_eq!(get(&s.handshake_failures), 1);
    assert_eq!(net.nodes[node].slots.used(), 0, "the slot is free at once");
    // The close is on the wire for the client.
    assert!(
        net.ep(node)
            .conns
            .iter_mut()
            .all(|(_, c)| c.session.is_closing())
    );
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
    assert_eq!(get(&net.stats(node).accepted), 3);
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
    assert!(dropped > 0);
    let bound = 2 * 256 * 1024 + 256;
    assert!(peak <= bound, "queued {peak} bytes for one sender");
}
