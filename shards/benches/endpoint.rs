//! A shard's whole per-message echo path in memory, without sockets: a client session sends
//! N 64 B messages to the node in one sealed batch; the shard's [`Endpoint`] takes the
//! datagrams as one receive burst (QUIC, open, decode, route, queue), seals the echoes at
//! the end of the turn (batch 128, timeout 0) and hands its datagrams back; the client
//! reads them (ACKs included). The QUIC and Noise handshakes run once in setup. Reported
//! per message, client work included: compare with the `session` bench, which is the
//! client half and the shard's receive half, to see what routing, queueing and the echo's
//! seal add.
//! Run: `cargo bench -p shards --bench endpoint`.
//!
//! Instructions per message, which a noisy machine moves by tenths of a percent where it
//! moves times by tens: with `ENDPOINT_BENCH_COUNT=N` the bench skips criterion and runs N
//! iterations of batch size `ENDPOINT_BENCH_BATCH` (default 128), so two runs under
//! `valgrind --tool=callgrind` with different N give the per-iteration count as the
//! difference of their totals over the difference of their N (the setup cancels out);
//! `scripts/instructions.sh` does that.

/// The allocator of the `engine` binary, so the bench measures what it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use parking_lot::Mutex;
use shards::batch::BatchPolicy;
use shards::cid::new_cid;
use shards::endpoint::{
    App, ConnectionSlots, Endpoint, MemoryBudget, PeerActivity, PeerDirectory, PoolConfig,
    ShardConfig, ShardStats,
};
use shards::hist::SharedHistograms;
use shards::identity::Identity;
use shards::lifecycle::{BackoffPolicy, ConnState};
use shards::session::{Session, TransportConfig, client_config};
use shards::tls::TlsFiles;
use shards::wire::{Message, PeerId, Record};

/// A one-shard node's peer index.
#[derive(Default)]
struct Directory {
    owners: Mutex<HashMap<PeerId, (usize, u64, bool)>>,
}

impl PeerDirectory for Directory {
    fn connected(&self, peer: PeerId, shard: usize, conn: u64, _: SocketAddr, outbound: bool) {
        self.owners.lock().insert(peer, (shard, conn, outbound));
    }
    fn activity(&self, _: PeerId, _: usize, _: u64, _: PeerActivity) {}
    fn state(&self, _: PeerId, _: usize, _: ConnState) {}
    fn disconnected(&self, peer: PeerId, _: usize, _: u64) {
        self.owners.lock().remove(&peer);
    }
    fn shard_of(&self, peer: &PeerId) -> Option<usize> {
        self.owners.lock().get(peer).map(|o| o.0)
    }
    fn owner(&self, peer: &PeerId) -> Option<(usize, u64, bool)> {
        self.owners.lock().get(peer).copied()
    }
    fn generation(&self) -> u64 {
        0
    }
}

/// An echo shard and a client connected to it, in memory.
struct Pair {
    ep: Endpoint,
    client: Session,
    /// The client's peer id.
    me: PeerId,
    client_addr: SocketAddr,
    node_addr: SocketAddr,
    /// Datagrams the client sent, gathered into one receive burst for the shard.
    burst: Vec<Vec<u8>>,
    buf: Vec<u8>,
    _tls: TlsFiles,
}

impl Pair {
    fn new() -> Pair {
        let (Ok(tls), Ok(node_id), Ok(client_id)) = (
            TlsFiles::self_signed(),
            Identity::generate(),
            Identity::generate(),
        ) else {
            panic!("TLS files and identities for the benchmark");
        };
        let node_addr: SocketAddr = ([127, 0, 0, 1], 4_433).into();
        let client_addr: SocketAddr = ([127, 0, 0, 1], 40_000).into();
        let transport = TransportConfig::default();
        let cfg = ShardConfig {
            index: 0,
            shards: 1,
            identity: Arc::new(node_id),
            cert_pem: tls.cert_str(),
            key_pem: tls.key_str(),
            transport: transport.clone(),
            batch: BatchPolicy {
                max_messages: 128,
                timeout: Duration::ZERO,
                ..BatchPolicy::default()
            },
            max_message_size: 64 * 1024,
            queue_capacity: 256 * 1024,
            app: App::Echo,
            accept: true,
            directory: Arc::new(Directory::default()),
            stats: Arc::new(ShardStats::default()),
            histograms: SharedHistograms::default(),
            pool: PoolConfig::default(),
            slots: Arc::new(ConnectionSlots::default()),
            memory: Arc::new(MemoryBudget::default()),
            reconnect: BackoffPolicy::default(),
        };
        let now = Instant::now();
        let Ok(ep) = Endpoint::new(cfg, node_addr, 7, now, SystemTime::now()) else {
            panic!("endpoint for the benchmark");
        };
        let Ok(mut ccfg) = client_config(&transport) else {
            panic!("client configuration for the benchmark");
        };
        let mut rng = rand::thread_rng();
        let Ok(client) = Session::connect(
            &mut ccfg,
            &client_id,
            &new_cid(0, &mut rng),
            client_addr,
            node_addr,
            now,
        ) else {
            panic!("client session for the benchmark");
        };
        let mut p = Pair {
            ep,
            client,
            me: client_id.peer_id(),
            client_addr,
            node_addr,
            burst: Vec::new(),
            buf: vec![0u8; 65_535],
            _tls: tls,
        };
        for _ in 0..64 {
            if p.client.is_open() && p.ep.connections() == 1 {
                break;
            }
            if p.round_trip() == 0 {
                break;
            }
        }
        assert!(p.client.is_open(), "handshake completes in memory");
        // The node registers the peer one flight after the client finished.
        p.round_trip();
        p
    }

    /// Moves the client's datagrams to the shard as one burst, then the shard's back to
    /// the client, until neither has anything to send. Returns the datagrams moved.
    fn round_trip(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let now = Instant::now();
            let mut n = 0;
            while let Some((len, _)) = self.client.send(&mut self.buf) {
                let d = self.buf.get(..len).unwrap_or_default().to_vec();
                self.burst.push(d);
                n += 1;
            }
            if n > 0 {
                let from = self.client_addr;
                self.ep
                    .handle_datagrams(now, self.burst.iter_mut().map(|d| (from, &mut d[..])));
                self.burst.clear();
            }
            while let Some(mut t) = self.ep.poll_transmit() {
                self.client
                    .recv(&mut t.data, self.node_addr, self.client_addr);
                self.ep.recycle(t.data);
                n += 1;
            }
            if n == 0 {
                return moved;
            }
            moved += n;
        }
    }
}

/// A Pair for batches of `n` 64-byte messages to the node, and those messages.
fn setup(n: usize) -> (Pair, Vec<Record>) {
    let p = Pair::new();
    let Some(node) = p.client.peer() else {
        panic!("the node authenticated");
    };
    let me = p.me;
    let records: Vec<Record> = (0..n)
        .map(|i| {
            Record::Message(Message {
                dst: node,
                src: me,
                seq: i as u64,
                payload: vec![0x5a; 64],
            })
        })
        .collect();
    (p, records)
}

/// One iteration: the client seals the batch, the shard echoes it, the client opens every
/// echo. Every echo must come back in the same iteration, otherwise the loop would measure
/// a backlog instead of the path.
fn echo_once(p: &mut Pair, records: &[Record], out: &mut Vec<Record>) {
    let sent = p.client.send_batch(records);
    assert!(sent.is_ok(), "the client session stays open");
    p.round_trip();
    out.clear();
    let read = p.client.read_records(out, usize::MAX);
    assert!(read.is_ok(), "the client opens every echoed frame");
    assert_eq!(out.len(), records.len(), "the whole batch is echoed");
}

fn echo_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("endpoint");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for n in [1usize, 16, 128] {
        let (mut p, records) = setup(n);
        let mut out = Vec::with_capacity(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("echo_batch", n), |b| {
            b.iter(|| echo_once(&mut p, &records, &mut out))
        });
    }
    g.finish();
}

criterion_group!(benches, echo_path);

/// A positive count from the environment variable `name`, or `None` when it is unset; a
/// value that is not one stops the bench (a typo must not silently run something else).
fn count_from_env(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Some(n),
        _ => panic!("{name}={v}: not a positive count"),
    }
}

fn main() {
    if let Some(count) = count_from_env("ENDPOINT_BENCH_COUNT") {
        let n = count_from_env("ENDPOINT_BENCH_BATCH").unwrap_or(128);
        let (mut p, records) = setup(n);
        let mut out = Vec::with_capacity(n);
        for _ in 0..count {
            echo_once(&mut p, &records, &mut out);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
