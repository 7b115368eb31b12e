//! Engine configuration with the documented defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shards::batch::BatchPolicy;
use shards::lifecycle::BackoffPolicy;
use shards::session::TransportConfig;
use shards::shard::PoolConfig;

/// What the node does with messages addressed to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppKind {
    /// Send every message back to its sender.
    #[default]
    Echo,
    /// Count and discard.
    Sink,
    /// Hand messages to the embedding program ([`crate::Engine::recv_timeout`]).
    Channel,
}

/// Everything needed to start an [`crate::Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// UDP address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Number of shards; `None` means one per available core.
    pub shards: Option<usize>,
    /// Pin each shard to its own core.
    pub pin: bool,
    /// Identity file; `None` uses a fresh ephemeral identity. A missing file is created.
    pub identity: Option<PathBuf>,
    /// TLS certificate and key files; `None` generates a self-signed pair at start.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Batch flush policy (size, bytes, timeout).
    pub batch: BatchPolicy,
    /// Largest payload accepted; larger messages are refused with an error record.
    pub max_message_size: usize,
    /// Bytes one destination may have queued (its batch queue plus sealed bytes QUIC has
    /// not taken yet) before senders feeding it stop being read, so back-pressure reaches
    /// them through QUIC flow control. Default [`DEFAULT_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// Application for messages addressed to the node.
    pub app: AppKind,
    /// Capacity of the delivery channel when `app` is [`AppKind::Channel`].
    pub channel_capacity: usize,
    /// QUIC tuning.
    pub transport: TransportConfig,
    /// Whether to accept incoming connections.
    pub accept: bool,
    /// Connection pool: TTL, keep-alive, connection cap.
    pub pool: PoolConfig,
    /// Reconnection schedule for dialed peers (exponential backoff with jitter).
    pub reconnect: BackoffPolicy,
}

/// Default largest payload: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Default queue capacity per destination: 256 KiB, a few milliseconds of traffic for one
/// busy connection, so a full destination pushes back on its senders quickly instead of
/// buffering seconds of work.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256 * 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            shards: None,
            pin: true,
            identity: None,
            tls: None,
            batch: BatchPolicy::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            app: AppKind::Echo,
            channel_capacity: 65_536,
            transport: TransportConfig::default(),
            accept: true,
            pool: PoolConfig::default(),
            reconnect: BackoffPolicy::default(),
        }
    }
}

impl EngineConfig {
    /// A configuration for tests and examples: loopback, an ephemeral port, `shards` shards,
    /// no pinning, short batch timeout.
    pub fn loopback(shards: usize) -> Self {
        EngineConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards: Some(shards),
            pin: false,
            batch: BatchPolicy {
                timeout: Duration::from_millis(1),
                ..BatchPolicy::default()
            },
            ..EngineConfig::default()
        }
    }
}
