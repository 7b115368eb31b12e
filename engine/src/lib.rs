//! The thread-per-core QUIC message engine: configuration, [`Engine`] start and stop, the
//! cluster-wide [`index::PeerIndex`] and merged [`stats::EngineStats`].
//!
//! Start an engine, connect a client, and exchange a message through the node's handler:
//!
//! ```
//! use engine::{AppKind, Engine, EngineConfig};
//! use shards::client::{Client, ClientConfig};
//! use shards::identity::Identity;
//! use shards::shard::Delivery;
//! use std::time::Duration;
//!
//! # fn main() -> anyhow::Result<()> {
//! let mut cfg = EngineConfig::loopback(1);
//! cfg.app = AppKind::Channel;
//! let engine = Engine::start(cfg)?;
//!
//! let me = Identity::generate()?;
//! let mut client = Client::connect(engine.local_addr(), &me, ClientConfig::default())?;
//! client.send(engine.peer_id(), b"hello".to_vec())?;
//! client.flush()?;
//!
//! // The embedding program receives it ...
//! let got = engine.recv_timeout(Duration::from_secs(5)).expect("a message");
//! assert!(matches!(&got, Delivery::Message { payload, .. } if payload == b"hello"));
//! // ... and can answer any connected peer by id.
//! engine.send(me.peer_id(), b"hi back".to_vec())?;
//! let reply = client.recv(Duration::from_secs(5))?.expect("a reply");
//! assert!(matches!(reply, Delivery::Message { payload, .. } if payload == b"hi back"));
//!
//! engine.shutdown(Duration::from_secs(5))?;
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod index;
pub mod metrics;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use config::{AppKind, EngineConfig};
use index::PeerIndex;
use shards::identity::{Identity, IdentityError};
use shards::runtime::{self, Runtime, RuntimeConfig, StartError};
use shards::shard::{App, Command, Delivery, PeerDirectory};
use shards::wire::PeerId;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The configuration breaks a rule ([`EngineConfig::validate`]).
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The identity file could not be loaded or created.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The shards did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// No connected peer has that id.
    #[error("no connected peer {0}")]
    UnknownDestination(PeerId),
    /// The payload is over the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A dial failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// The peer was given up on after the last reconnection attempt.
    #[error("peer {0} failed: reconnection attempts exhausted")]
    PeerFailed(PeerId),
    /// The engine is stopping or stopped.
    #[error("engine is shut down")]
    Stopped,
    /// Shutdown did not finish cleanly.
    #[error("shutdown: {0}")]
    Shutdown(#[from] shards::runtime::StopError),
}

/// A running node: shards on every core, one UDP port.
#[derive(Debug)]
pub struct Engine {
    runtime: Option<Runtime>,
    index: Arc<PeerIndex>,
    identity: Arc<Identity>,
    deliveries: Option<flume::Receiver<Delivery>>,
    max_message_size: usize,
    seq: AtomicU64,
    /// Which shard owns the pool entry of each dialed address.
    dialed: dashmap::DashMap<SocketAddr, usize>,
}

impl Engine {
    /// Validates `cfg` ([`EngineConfig::validate`]), starts the shards and returns once
    /// every one is serving.
    pub fn start(cfg: EngineConfig) -> Result<Engine, EngineError> {
        cfg.validate()?;
        let identity = Arc::new(Identity::load_or_generate(cfg.identity.as_deref())?);
        let index = Arc::new(PeerIndex::new());
        let shards = cfg.shards.unwrap_or_else(default_shards);
        let (app, deliveries) = match cfg.app {
            AppKind::Echo => (App::Echo, None),
            AppKind::Sink => (App::Sink, None),
            AppKind::Channel => {
                let (tx, rx) = flume::bounded(cfg.channel_capacity);
                (App::Channel(tx), Some(rx))
            }
        };
        let directory: Arc<dyn PeerDirectory> = index.clone();
        let runtime = runtime::start(RuntimeConfig {
            listen: cfg.listen,
            shards,
            pin: cfg.pin,
            busy_poll: cfg.busy_poll,
            identity: identity.clone(),
            tls: cfg.tls.clone(),
            transport: cfg.transport.clone(),
            batch: cfg.batch,
            max_message_size: cfg.max_message_size,
            queue_capacity: cfg.queue_capacity,
            app,
            accept: cfg.accept,
            directory,
            pool: cfg.pool.clone(),
            reconnect: cfg.reconnect,
        })?;
        tracing::info!(
            addr = %runtime.local_addr(),
            shards,
            peer_id = %identity.peer_id(),
            "engine started"
        );
        Ok(Engine {
            runtime: Some(runtime),
            index,
            identity,
            deliveries,
            max_message_size: cfg.max_message_size,
            seq: AtomicU64::new(0),
            dialed: dashmap::DashMap::new(),
        })
    }

    fn runtime(&self) -> Result<&Runtime, EngineError> {
        self.runtime.as_ref().ok_or(EngineError::Stopped)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.runtime
            .as_ref()
            .map(Runtime::local_addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// The cluster-wide peer index.
    pub fn peers(&self) -> &PeerIndex {
        &self.index
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.runtime.as_ref().map_or(0, |r| r.shards().len())
    }

    /// Dials another node and waits for its authenticated peer id.
    pub fn dial(&self, addr: SocketAddr, timeout: Duration) -> Result<PeerId, EngineError> {
        let rt = self.runtime()?;
        // Spread outbound connections over the shards; an address always goes to the same
        // shard, whose pool then reuses (or re-dials) its connection.
        let n = rt.shards().len().max(1);
        let shard = *self
            .dialed
            .entry(addr)
            .or_insert_with(|| (self.seq.fetch_add(1, Ordering::Relaxed) as usize) % n);
        let (tx, rx) = flume::bounded(1);
        rt.shards()
            .get(shard)
            .ok_or(EngineError::Stopped)?
            .commands
            .send(Command::Dial { addr, reply: tx })
            .map_err(|_| EngineError::Stopped)?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(peer)) => Ok(peer),
            Ok(Err(e)) => Err(EngineError::Dial(e)),
            Err(_) => Err(EngineError::Dial(format!(
                "no answer from {addr} within {timeout:?}"
            ))),
        }
    }

    /// Sends `payload` from this node to peer `dst`; returns the sequence number used.
    /// Blocks while the owning shard's command queue is full.
    pub fn send(&self, dst: PeerId, payload: Vec<u8>) -> Result<u64, EngineError> {
        if payload.len() > self.max_message_size {
            return Err(EngineError::TooLarge {
                size: payload.len(),
                limit: self.max_message_size,
            });
        }
        let rt = self.runtime()?;
        let entry = self
            .index
            .get(&dst)
            .ok_or(EngineError::UnknownDestination(dst))?;
        if entry.state == shards::lifecycle::ConnState::Failed {
            return Err(EngineError::PeerFailed(dst));
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        rt.shards()
            .get(entry.shard)
            .ok_or(EngineError::Stopped)?
            .commands
            .send(Command::Send { dst, seq, payload })
            .map_err(|_| EngineError::Stopped)?;
        Ok(seq)
    }

    /// Receives the next delivery for the embedding program (only with [`AppKind::Channel`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Delivery> {
        self.deliveries.as_ref()?.recv_timeout(timeout).ok()
    }

    /// Counters summed over every shard.
    pub fn stats(&self) -> stats::EngineStats {
        match &self.runtime {
            Some(rt) => stats::EngineStats::collect(rt.shards().iter().map(|h| &*h.stats)),
            None => stats::EngineStats::default(),
        }
    }

    /// Counters of each shard.
    pub fn shard_stats(&self) -> Vec<stats::EngineStats> {
        match &self.runtime {
            Some(rt) => rt
                .shards()
                .iter()
                .map(|h| stats::EngineStats::collect(std::iter::once(&*h.stats)))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Histograms merged across shards (as published by each shard, at most a publish
    /// period old).
    pub fn histograms(&self) -> shards::hist::Histograms {
        let mut total = shards::hist::Histograms::new();
        if let Some(rt) = &self.runtime {
            for h in rt.shards() {
                total.add(&h.histograms.lock());
            }
        }
        total
    }

    /// Shared handles to every shard's counters and histograms and to the peer index, for a
    /// metrics thread ([`metrics::MetricsServer`]); it does not borrow the engine. Empty
    /// after shutdown.
    pub fn metrics_source(&self) -> metrics::MetricsSource {
        let (stats, histograms) = match &self.runtime {
            Some(rt) => rt
                .shards()
                .iter()
                .map(|h| (h.stats.clone(), h.histograms.clone()))
                .unzip(),
            None => (Vec::new(), Vec::new()),
        };
        metrics::MetricsSource::new(stats, histograms, self.index.clone())
    }

    /// Drains: stops accepting, flushes every queue, finishes every session and waits for
    /// peers to finish theirs, up to `timeout`; then closes what is left.
    pub fn shutdown(mut self, timeout: Duration) -> Result<stats::EngineStats, EngineError> {
        let rt = self.runtime.take().ok_or(EngineError::Stopped)?;
        let counters: Vec<_> = rt.shards().iter().map(|h| h.stats.clone()).collect();
        rt.shutdown(timeout).map_err(EngineError::Shutdown)?;
        Ok(stats::EngineStats::collect(counters.iter().map(|s| &**s)))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            let _ = rt.shutdown(Duration::from_secs(2));
        }
    }
}

/// One shard per core this process may run on.
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
