//! What crosses the endpoint's boundary besides datagrams: the application it serves,
//! commands from the embedding program, records between shards, and the cluster-wide peer
//! index it consults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::batch::BatchPolicy;
use crate::hist::SharedHistograms;
use crate::identity::Identity;
use crate::lifecycle::{BackoffPolicy, ConnState};
use crate::session::TransportConfig;
use crate::wire::{ErrorRecord, PeerId, Record};

use super::pool::{ConnectionSlots, MemoryBudget, PoolConfig};
use super::stats::ShardStats;

/// What the node does with messages addressed to itself.
#[derive(Clone, Debug)]
pub enum App {
    /// Send each message back to its sender.
    Echo,
    /// Count and discard.
    Sink,
    /// Hand each message to the embedding program.
    Channel(flume::Sender<Delivery>),
}

/// Something the engine hands to the embedding program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A message addressed to this node.
    Message {
        /// The authenticated sender.
        from: PeerId,
        /// The sender's sequence number.
        seq: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A message this node sent could not be delivered.
    Error(ErrorRecord),
}

/// Traffic of one connection since it was established, published by its shard now and
/// then (never per message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerActivity {
    /// Messages received from the peer.
    pub messages_in: u64,
    /// Messages sealed towards the peer.
    pub messages_out: u64,
    /// Sealed-frame bytes received from the peer.
    pub bytes_in: u64,
    /// Sealed-frame bytes queued towards the peer.
    pub bytes_out: u64,
    /// When the last message moved in either direction.
    pub last_activity: Option<std::time::SystemTime>,
    /// The peer's current address.
    pub addr: Option<SocketAddr>,
}

/// The cluster-wide peer index as the shards see it. The engine implements it over a
/// concurrent map; shards consult it on connect, disconnect, cache misses and a periodic
/// publish, never per message.
pub trait PeerDirectory: Send + Sync + 'static {
    /// A peer finished its handshake on `shard`; `conn` is unique within that shard.
    fn connected(&self, peer: PeerId, shard: usize, conn: u64, addr: SocketAddr, outbound: bool);
    /// Periodic traffic report for a connected peer.
    fn activity(&self, peer: PeerId, shard: usize, conn: u64, activity: PeerActivity);
    /// A dialed peer's lifecycle state changed. Dialed peers stay in the index while
    /// disconnected (so messages for them reach the shard that re-dials them).
    fn state(&self, peer: PeerId, shard: usize, state: ConnState);
    /// The connection `conn` on `shard` to `peer` ended.
    fn disconnected(&self, peer: PeerId, shard: usize, conn: u64);
    /// Which shard holds a connection to `peer`.
    fn shard_of(&self, peer: &PeerId) -> Option<usize>;
    /// The shard, connection key and direction (true = this node dialed) currently
    /// registered for `peer`, if connected.
    fn owner(&self, peer: &PeerId) -> Option<(usize, u64, bool)>;
    /// Bumped on every disconnect so shard-local caches know when to re-check.
    fn generation(&self) -> u64;
}

/// Commands from the embedding program or the engine to one shard.
#[derive(Debug)]
pub enum Command {
    /// Dial a peer node; the reply carries its authenticated peer id.
    Dial {
        /// Where to dial.
        addr: SocketAddr,
        /// Receives the outcome.
        reply: flume::Sender<Result<PeerId, String>>,
    },
    /// Send a message from this node's application to `dst` (held on this shard).
    Send {
        /// Destination peer.
        dst: PeerId,
        /// Sender's sequence number.
        seq: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Drain: stop accepting, flush every queue, finish every session, and stop once all
    /// sessions are closed or `deadline` passes.
    Shutdown {
        /// When to give up waiting for peers.
        deadline: Instant,
    },
}

/// A record crossing from one shard to another.
#[derive(Debug)]
pub struct Hop {
    /// The peer that should receive `record`.
    pub to: PeerId,
    /// The record.
    pub record: Record,
    /// When the record reached this node.
    pub received: Instant,
}

/// What one shard sends another over the mesh.
#[derive(Debug)]
pub enum ShardMsg {
    /// A record for a peer held by the receiving shard.
    Deliver(Hop),
    /// Finish (gracefully close) the receiving shard's connection with this key: it lost
    /// to another connection with the same peer (simultaneous dials).
    Finish(u64),
}

/// Everything a shard needs to run.
pub struct ShardConfig {
    /// This shard's index (also the first byte of every connection ID it issues).
    pub index: usize,
    /// How many shards the node runs.
    pub shards: usize,
    /// The node's static identity.
    pub identity: Arc<Identity>,
    /// PEM files of the TLS certificate and key (not used for peer authentication).
    pub cert_pem: String,
    /// See `cert_pem`.
    pub key_pem: String,
    /// QUIC transport tuning.
    pub transport: TransportConfig,
    /// When batches flush.
    pub batch: BatchPolicy,
    /// Largest accepted payload.
    pub max_message_size: usize,
    /// Bytes a destination may have queued before senders feeding it are paused.
    pub queue_capacity: usize,
    /// What to do with messages for this node.
    pub app: App,
    /// Whether to accept incoming connections.
    pub accept: bool,
    /// The cluster-wide peer index.
    pub directory: Arc<dyn PeerDirectory>,
    /// This shard's counters.
    pub stats: Arc<ShardStats>,
    /// Where this shard publishes its histograms.
    pub histograms: SharedHistograms,
    /// Connection pool policy: TTL, keep-alive, connection cap.
    pub pool: PoolConfig,
    /// Connection slots shared by every shard of the node (for the cap).
    pub slots: Arc<ConnectionSlots>,
    /// Bytes held by the node's connections, shared by every shard (for the memory limit).
    pub memory: Arc<MemoryBudget>,
    /// Reconnection schedule for dialed peers.
    pub reconnect: BackoffPolicy,
}
