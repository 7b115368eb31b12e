//! Engine configuration: [`EngineConfig`] with its defaults and [`EngineConfig::validate`],
//! and the settings of `engine serve` ([`ServeConfig`]) layered from defaults, a TOML file,
//! the environment and the command line ([`ConfigFile`]).
//!
//! Every default lives in one place: the `Default` impls and `DEFAULT_*` consts of this
//! module and of the shards policies ([`BatchPolicy`], [`TransportConfig`], [`PoolConfig`],
//! [`BackoffPolicy`]). Rules live in [`EngineConfig::validate`] and the `validate()` methods
//! of `shards::config`.
//!
//! ```
//! use engine::config::{ConfigFile, ServeConfig};
//!
//! let file = ConfigFile::parse("batch_size = 16\nkeepalive = \"2s\"\n", "node.toml".as_ref())?;
//! let flags = ConfigFile { batch_size: Some(32), ..ConfigFile::default() };
//! // Later layers win: defaults < file < flags.
//! let cfg = ServeConfig::layered([&file, &flags])?;
//! assert_eq!(cfg.engine.batch.max_messages, 32);
//! assert_eq!(cfg.engine.pool.keepalive, std::time::Duration::from_secs(2));
//! cfg.validate()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shards::batch::BatchPolicy;
use shards::config::{
    validate_backoff, validate_busy_poll, validate_max_message_size, validate_queue_capacity,
    validate_shards, validate_timeout,
};
use shards::lifecycle::BackoffPolicy;
use shards::session::TransportConfig;
use shards::shard::PoolConfig;

pub use shards::config::ConfigError;

/// What the node does with messages addressed to itself. In a config file: `"echo"`,
/// `"sink"` (`"channel"` only makes sense to an embedding program).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// How long a shard keeps reading its empty socket after its last datagram before it
    /// waits through the executor (at most 10 ms; zero waits at once). Its timers,
    /// commands and cross-shard records wait for it at most this long. Default
    /// [`DEFAULT_BUSY_POLL`].
    pub busy_poll: Duration,
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
    /// Capacity of the delivery channel when `app` is [`AppKind::Channel`]. Default
    /// [`DEFAULT_CHANNEL_CAPACITY`].
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

/// Default UDP listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    4433,
));

/// Default busy-poll time of a shard: none, a shard with an empty socket waits at once.
/// Polling lowers latency at low rates (by a third at 10,000 msg/s on a 2-core VM) but
/// keeps the shard's core busy for `busy_poll` after every datagram, so it is the
/// operator's choice.
pub const DEFAULT_BUSY_POLL: Duration = Duration::ZERO;

/// Default capacity of the delivery channel of [`AppKind::Channel`].
pub const DEFAULT_CHANNEL_CAPACITY: usize = 65_536;

/// Default largest payload: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Default queue capacity per destination: 256 KiB, a few milliseconds of traffic for one
/// busy connection, so a full destination pushes back on its senders quickly instead of
/// buffering seconds of work.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256 * 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: DEFAULT_LISTEN,
            shards: None,
            pin: true,
            busy_poll: DEFAULT_BUSY_POLL,
            identity: None,
            tls: None,
            batch: BatchPolicy::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            app: AppKind::Echo,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            transport: TransportConfig::default(),
            accept: true,
            pool: PoolConfig::default(),
            reconnect: BackoffPolicy::default(),
        }
    }
}

impl EngineConfig {
    /// Checks every setting and returns the first rule broken: the shard count (if given),
    /// batch policy, transport, pool (keep-alive below the idle timeout), reconnection
    /// schedule, payload limit, queue capacity and channel capacity. Every duration has an
    /// upper bound ([`shards::config::MAX_TIMEOUT`], one day; the pool TTL
    /// [`shards::config::MAX_TTL`], 365 days), since deadlines are `Instant + duration`.
    /// [`crate::Engine::start`] calls it before anything is started.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.shards {
            validate_shards(n)?;
        }
        self.batch.validate()?;
        self.transport.validate()?;
        self.pool.validate_for(&self.transport)?;
        validate_backoff("reconnect", &self.reconnect)?;
        validate_max_message_size(self.max_message_size)?;
        validate_queue_capacity(self.queue_capacity)?;
        validate_busy_poll(self.busy_poll)?;
        if self.channel_capacity == 0 {
            return Err(ConfigError::TooSmall {
                field: "channel_capacity",
                value: 0,
                min: 1,
            });
        }
        Ok(())
    }

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

/// Default time a graceful drain may take after SIGINT/SIGTERM (`engine serve`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything `engine serve` runs with: an [`EngineConfig`] plus what the command itself
/// does around the engine.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The engine.
    pub engine: EngineConfig,
    /// Nodes to dial at start.
    pub peers: Vec<SocketAddr>,
    /// Address of the Prometheus metrics endpoint; `None` = off.
    pub metrics: Option<SocketAddr>,
    /// How long a graceful drain may take. Default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            engine: EngineConfig::default(),
            peers: Vec::new(),
            metrics: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl ServeConfig {
    /// Applies `layers` in order over the defaults, each later layer overriding the keys it
    /// sets (`engine serve` passes the config file, then the environment and flags).
    ///
    /// When no layer sets `keepalive`, it is a third of the resulting idle timeout (with the
    /// default idle timeout of 30 s that is [`PoolConfig`]'s default of 10 s). Fails only
    /// when `cert` and `key` do not come as a pair.
    pub fn layered<'a>(
        layers: impl IntoIterator<Item = &'a ConfigFile>,
    ) -> Result<ServeConfig, ConfigError> {
        let mut cfg = ServeConfig::default();
        let (mut cert, mut key) = (None, None);
        let mut keepalive_set = false;
        for layer in layers {
            layer.apply(&mut cfg);
            cert = layer.cert.clone().or(cert);
            key = layer.key.clone().or(key);
            keepalive_set |= layer.keepalive.is_some();
        }
        if !keepalive_set {
            cfg.engine.pool.keepalive = cfg.engine.transport.idle_timeout / 3;
        }
        cfg.engine.tls = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    field: "key",
                    rule: "a TLS certificate (cert) needs its private key (key)",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    field: "cert",
                    rule: "a TLS private key (key) needs its certificate (cert)",
                });
            }
        };
        Ok(cfg)
    }

    /// [`EngineConfig::validate`], plus the drain timeout (at most
    /// [`shards::config::MAX_TIMEOUT`], one day: the drain's deadline is `Instant + it`) and
    /// the rule that `engine serve` has no use for [`AppKind::Channel`] (nothing would read
    /// the channel).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate()?;
        validate_timeout("drain_timeout", self.drain_timeout)?;
        if self.engine.app == AppKind::Channel {
            return Err(ConfigError::Invalid {
                field: "app",
                rule: "engine serve takes \"echo\" or \"sink\"; \"channel\" is for embedding programs",
            });
        }
        Ok(())
    }

    /// The effective configuration as a TOML document that [`ConfigFile::parse`] reads back
    /// to the same configuration (`engine serve --print-config`). Settings that are unset
    /// (`shards` = one per core, an ephemeral identity, no metrics, ...) are left out.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(&ConfigFile::from(self)).unwrap_or_default();
        format!("# engine serve: effective configuration (load it with --config FILE)\n{body}")
    }
}

/// One layer of `engine serve` settings: the keys of a TOML config file, every one
/// optional. `engine serve` builds a second layer from its flags and `ENGINE_*` environment
/// variables, named like these keys (`batch_size` is `--batch-size` and
/// `ENGINE_BATCH_SIZE`). Durations are strings such as `"10s"`, `"250ms"`, `"1m 30s"` or `"0"`;
/// unknown keys are an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// [`EngineConfig::listen`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// [`EngineConfig::shards`]; unset = one per available core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// [`EngineConfig::pin`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<bool>,
    /// [`EngineConfig::busy_poll`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub busy_poll: Option<Duration>,
    /// [`EngineConfig::identity`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// TLS certificate chain (PEM), with `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM), with `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// [`EngineConfig::app`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppKind>,
    /// [`ServeConfig::peers`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<SocketAddr>>,
    /// [`ServeConfig::metrics`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// [`ServeConfig::drain_timeout`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub drain_timeout: Option<Duration>,
    /// [`BatchPolicy::max_messages`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// [`BatchPolicy::max_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_bytes: Option<usize>,
    /// [`BatchPolicy::timeout`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub batch_timeout: Option<Duration>,
    /// [`EngineConfig::max_message_size`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// [`EngineConfig::queue_capacity`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
    /// [`TransportConfig::idle_timeout`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// [`TransportConfig::window`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// [`TransportConfig::max_udp_payload`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_udp_payload: Option<usize>,
    /// [`TransportConfig::gso`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gso: Option<bool>,
    /// [`TransportConfig::gro`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gro: Option<bool>,
    /// [`PoolConfig::keepalive`]; unset = a third of the idle timeout.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub keepalive: Option<Duration>,
    /// [`PoolConfig::ttl`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub pool_ttl: Option<Duration>,
    /// [`PoolConfig::stall_timeout`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub stall_timeout: Option<Duration>,
    /// [`PoolConfig::handshake_timeout`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub handshake_timeout: Option<Duration>,
    /// [`PoolConfig::frame_timeout`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub frame_timeout: Option<Duration>,
    /// [`PoolConfig::retry_threshold`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_threshold: Option<usize>,
    /// [`PoolConfig::max_handshakes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_handshakes: Option<usize>,
    /// [`PoolConfig::memory_limit`]; unset = no ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// [`PoolConfig::max_connections`]; unset = no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// [`BackoffPolicy::initial`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub reconnect_initial: Option<Duration>,
    /// [`BackoffPolicy::max`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub reconnect_max: Option<Duration>,
    /// [`BackoffPolicy::attempts`] (0 = never give up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_attempts: Option<u32>,
    /// [`BackoffPolicy::jitter`], a fraction within 0.0..=1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_jitter: Option<f64>,
}

impl ConfigFile {
    /// Parses a config file's text; `path` is only used in the error.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigFileError> {
        toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (None, None),
            };
            ConfigFileError::Parse {
                path: path.to_path_buf(),
                line,
                key,
                message: one_line(e.message()),
            }
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Whether this layer sets `key` (a config file key such as `"keepalive"`).
    pub fn sets(&self, key: &str) -> bool {
        toml::Table::try_from(self).is_ok_and(|t| t.contains_key(key))
    }

    /// Overrides the settings of `cfg` this layer sets (all but `cert`, `key` and the
    /// `keepalive` default, which [`ServeConfig::layered`] resolves across layers).
    fn apply(&self, cfg: &mut ServeConfig) {
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        let e = &mut cfg.engine;
        set(&mut e.listen, &self.listen);
        if self.shards.is_some() {
            e.shards = self.shards;
        }
        set(&mut e.pin, &self.pin);
        set(&mut e.busy_poll, &self.busy_poll);
        if self.identity.is_some() {
            e.identity = self.identity.clone();
        }
        set(&mut e.app, &self.app);
        set(&mut e.batch.max_messages, &self.batch_size);
        set(&mut e.batch.max_bytes, &self.batch_bytes);
        set(&mut e.batch.timeout, &self.batch_timeout);
        set(&mut e.max_message_size, &self.max_message_size);
        set(&mut e.queue_capacity, &self.queue_capacity);
        set(&mut e.transport.idle_timeout, &self.idle_timeout);
        set(&mut e.transport.window, &self.window);
        set(&mut e.transport.max_udp_payload, &self.max_udp_payload);
        set(&mut e.transport.gso, &self.gso);
        set(&mut e.transport.gro, &self.gro);
        set(&mut e.pool.keepalive, &self.keepalive);
        set(&mut e.pool.ttl, &self.pool_ttl);
        set(&mut e.pool.stall_timeout, &self.stall_timeout);
        set(&mut e.pool.handshake_timeout, &self.handshake_timeout);
        set(&mut e.pool.frame_timeout, &self.frame_timeout);
        set(&mut e.pool.max_handshakes, &self.max_handshakes);
        set(&mut e.pool.retry_threshold, &self.retry_threshold);
        if self.memory_limit.is_some() {
            e.pool.memory_limit = self.memory_limit;
        }
        if self.max_connections.is_some() {
            e.pool.max_connections = self.max_connections;
        }
        set(&mut e.reconnect.initial, &self.reconnect_initial);
        set(&mut e.reconnect.max, &self.reconnect_max);
        set(&mut e.reconnect.attempts, &self.reconnect_attempts);
        set(&mut e.reconnect.jitter, &self.reconnect_jitter);
        set(&mut cfg.peers, &self.peers);
        if self.metrics.is_some() {
            cfg.metrics = self.metrics;
        }
        set(&mut cfg.drain_timeout, &self.drain_timeout);
    }
}

impl From<&ServeConfig> for ConfigFile {
    /// Every setting of `cfg`, for printing; unset optional ones stay `None`.
    fn from(cfg: &ServeConfig) -> Self {
        let e = &cfg.engine;
        ConfigFile {
            listen: Some(e.listen),
            shards: e.shards,
            pin: Some(e.pin),
            busy_poll: Some(e.busy_poll),
            identity: e.identity.clone(),
            cert: e.tls.as_ref().map(|(c, _)| c.clone()),
            key: e.tls.as_ref().map(|(_, k)| k.clone()),
            app: Some(e.app),
            peers: Some(cfg.peers.clone()),
            metrics: cfg.metrics,
            drain_timeout: Some(cfg.drain_timeout),
            batch_size: Some(e.batch.max_messages),
            batch_bytes: Some(e.batch.max_bytes),
            batch_timeout: Some(e.batch.timeout),
            max_message_size: Some(e.max_message_size),
            queue_capacity: Some(e.queue_capacity),
            idle_timeout: Some(e.transport.idle_timeout),
            window: Some(e.transport.window),
            max_udp_payload: Some(e.transport.max_udp_payload),
            gso: Some(e.transport.gso),
            gro: Some(e.transport.gro),
            keepalive: Some(e.pool.keepalive),
            pool_ttl: Some(e.pool.ttl),
            stall_timeout: Some(e.pool.stall_timeout),
            handshake_timeout: Some(e.pool.handshake_timeout),
            frame_timeout: Some(e.pool.frame_timeout),
            max_handshakes: Some(e.pool.max_handshakes),
            retry_threshold: Some(e.pool.retry_threshold),
            max_connections: e.pool.max_connections,
            memory_limit: e.pool.memory_limit,
            reconnect_initial: Some(e.reconnect.initial),
            reconnect_max: Some(e.reconnect.max),
            reconnect_attempts: Some(e.reconnect.attempts),
            reconnect_jitter: Some(e.reconnect.jitter),
        }
    }
}

/// The config file keys that set the field a [`ConfigError`] names (its
/// [`ConfigError::field`]), so a command can say where to fix it. Empty for fields that
/// have no key (such as `channel_capacity`).
pub fn keys_for_field(field: &str) -> &'static [&'static str] {
    match field {
        "shards" => &["shards"],
        "batch.max_messages" => &["batch_size"],
        "batch.max_bytes" => &["batch_bytes"],
        "batch.timeout" => &["batch_timeout"],
        "transport.idle_timeout" => &["idle_timeout"],
        "transport.window" => &["window"],
        "transport.max_udp_payload" => &["max_udp_payload"],
        "pool.ttl" => &["pool_ttl"],
        "pool.keepalive" => &["keepalive", "idle_timeout"],
        "pool.stall_timeout" => &["stall_timeout"],
        "pool.handshake_timeout" => &["handshake_timeout"],
        "pool.frame_timeout" => &["frame_timeout"],
        "pool.max_handshakes" => &["max_handshakes"],
        "pool.max_connections" => &["max_connections"],
        "pool.memory_limit" => &["memory_limit"],
        "reconnect" => &[
            "reconnect_initial",
            "reconnect_max",
            "reconnect_attempts",
            "reconnect_jitter",
        ],
        "max_message_size" => &["max_message_size"],
        "queue_capacity" => &["queue_capacity"],
        "app" => &["app"],
        "cert" => &["cert"],
        "key" => &["key"],
        "drain_timeout" => &["drain_timeout"],
        _ => &[],
    }
}

/// Why a config file could not be used. Displays as one line naming the file (and, when
/// known, the line and key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{}", ParseDisplay { path, line: *line, key: key.as_deref(), message })]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// The key the problem is at, when known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

struct ParseDisplay<'a> {
    path: &'a Path,
    line: Option<usize>,
    key: Option<&'a str>,
    message: &'a str,
}

impl fmt::Display for ParseDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The 1-based line of byte `offset` in `text` and the key whose `key = value` line is at
/// or above it (so a value inside a multi-line array is attributed to its key).
fn locate(text: &str, offset: usize) -> (Option<usize>, Option<String>) {
    let Some(before) = text.get(..offset) else {
        return (None, None);
    };
    let line = before.matches('\n').count() + 1;
    let key = text
        .lines()
        .take(line)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(line_key);
    (Some(line), key)
}

/// The bare key of a `key = value` line.
fn line_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    bare.then(|| key.to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses a duration as `engine` takes it everywhere: `0`, or a humantime string such as
/// `500us`, `50ms`, `2s`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 0, 500us, 50ms, 2s)"))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly (`"50ms"`, `"5m"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde for `Option<Duration>` as a humantime string.
mod opt_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\", \"250ms\" or \"0\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                super::parse_duration(s).map(Some).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigFileError> {
        ConfigFile::parse(text, Path::new("node.toml"))
    }

    #[test]
    fn defaults_are_valid_and_keepalive_default_is_a_third_of_idle() {
        EngineConfig::default().validate().unwrap();
        EngineConfig::loopback(2).validate().unwrap();
        let cfg = ServeConfig::layered([]).unwrap();
        cfg.validate().unwrap();
        // The derived keep-alive agrees with the pool's own default.
        assert_eq!(
            PoolConfig::default().keepalive,
            TransportConfig::default().idle_timeout / 3
        );
        assert_eq!(cfg.engine.pool.keepalive, PoolConfig::default().keepalive);
        let idle = parse("idle_timeout = \"6s\"").unwrap();
        let cfg = ServeConfig::layered([&idle]).unwrap();
        assert_eq!(cfg.engine.pool.keepalive, Duration::from_secs(2));
    }

    #[test]
    fn validate_names_field_and_rule() {
        let mut cfg = EngineConfig::default();
        cfg.pool.keepalive = Duration::ZERO;
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "pool.keepalive must be above zero"
        );
        let mut cfg = EngineConfig::default();
        cfg.pool.ttl = Duration::ZERO;
        assert_eq!(cfg.validate().unwrap_err().field(), "pool.ttl");
        let mut cfg = EngineConfig::default();
        cfg.batch.max_messages = 0;
        assert_eq!(cfg.validate().unwrap_err().field(), "batch.max_messages");
        let mut cfg = EngineConfig::default();
        cfg.transport.window = 0;
        assert_eq!(cfg.validate().unwrap_err().field(), "transport.window");
        let cfg = EngineConfig {
            shards: Some(0),
            ..EngineConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field(), "shards");
        let cfg = EngineConfig {
            channel_capacity: 0,
            ..EngineConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field(), "channel_capacity");
        let cfg = EngineConfig {
            busy_poll: Duration::from_millis(11),
            ..EngineConfig::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "busy_poll (11ms) must be at most 10ms"
        );
        let cfg = EngineConfig {
            busy_poll: Duration::ZERO,
            ..EngineConfig::default()
        };
        cfg.validate().unwrap();
        let cfg = EngineConfig {
            queue_capacity: 100,
            ..EngineConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field(), "queue_capacity");
        let mut cfg = EngineConfig::default();
        cfg.reconnect.max = Duration::from_millis(1);
        assert_eq!(cfg.validate().unwrap_err().field(), "reconnect");
        let mut serve = ServeConfig::default();
        serve.engine.app = AppKind::Channel;
        assert_eq!(serve.validate().unwrap_err().field(), "app");
    }

    #[test]
    fn durations_have_upper_bounds_named_in_the_error() {
        use shards::config::{MAX_TIMEOUT, MAX_TTL};
        let just = Duration::from_nanos(1);
        // `--drain-timeout 18446744073709551615s` parses, and is refused here rather than
        // panicking when the drain computes its deadline.
        let flags = ConfigFile {
            drain_timeout: Some(parse_duration("18446744073709551615s").unwrap()),
            ..ConfigFile::default()
        };
        let err = ServeConfig::layered([&flags])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "drain_timeout (18446744073709551615s) must be at most 1d"
        );
        let mut serve = ServeConfig {
            drain_timeout: MAX_TIMEOUT,
            ..ServeConfig::default()
        };
        serve.validate().unwrap();
        serve.drain_timeout = MAX_TIMEOUT + just;
        assert_eq!(serve.validate().unwrap_err().field(), "drain_timeout");
        // Each engine duration: at its bound passes, just above fails naming the field.
        type Set = fn(&mut EngineConfig, Duration);
        let cases: [(&str, Duration, Set); 7] = [
            ("batch.timeout", MAX_TIMEOUT, |c, d| c.batch.timeout = d),
            ("transport.idle_timeout", MAX_TIMEOUT, |c, d| {
                c.transport.idle_timeout = d
            }),
            ("pool.ttl", MAX_TTL, |c, d| c.pool.ttl = d),
            ("pool.stall_timeout", MAX_TIMEOUT, |c, d| {
                c.pool.stall_timeout = d
            }),
            ("pool.handshake_timeout", MAX_TIMEOUT, |c, d| {
                c.pool.handshake_timeout = d
            }),
            ("pool.frame_timeout", MAX_TIMEOUT, |c, d| {
                c.pool.frame_timeout = d
            }),
            ("reconnect", MAX_TIMEOUT, |c, d| c.reconnect.max = d),
        ];
        for (field, max, set) in cases {
            let mut at = EngineConfig::default();
            set(&mut at, max);
            let mut above = EngineConfig::default();
            set(&mut above, max + just);
            assert_eq!(at.validate(), Ok(()), "{field}");
            let err = above.validate().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            assert!(!keys_for_field(field).is_empty(), "{field}");
        }
        // The keep-alive stays below the idle timeout, so it cannot reach the bound itself;
        // above it, the bound is what is reported.
        let mut cfg = EngineConfig::default();
        cfg.transport.idle_timeout = MAX_TIMEOUT;
        cfg.pool.keepalive = MAX_TIMEOUT - just;
        cfg.validate().unwrap();
        cfg.pool.keepalive = MAX_TIMEOUT + just;
        let err = cfg.validate().unwrap_err();
        assert_eq!(
            (err.field(), err.to_string().contains("must be at most 1d")),
            ("pool.keepalive", true),
            "{err}"
        );
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let file = parse(
            "batch_size = 10\nwindow = 20000\npool_ttl = \"1m\"\npeers = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let env = ConfigFile {
            batch_size: Some(20),
            window: Some(30_000),
            ..ConfigFile::default()
        };
        let flags = ConfigFile {
            batch_size: Some(30),
            ..ConfigFile::default()
        };
        let cfg = ServeConfig::layered([&file, &env, &flags]).unwrap();
        assert_eq!(cfg.engine.batch.max_messages, 30);
        assert_eq!(cfg.engine.transport.window, 30_000);
        assert_eq!(cfg.engine.pool.ttl, Duration::from_secs(60));
        assert_eq!(cfg.peers, vec![SocketAddr::from(([127, 0, 0, 1], 1))]);
        assert_eq!(cfg.engine.batch.timeout, BatchPolicy::default().timeout);
    }

    #[test]
    fn cert_and_key_pair_up_across_layers() {
        let file = parse("cert = \"c.pem\"").unwrap();
        assert_eq!(ServeConfig::layered([&file]).unwrap_err().field(), "key");
        let flags = ConfigFile {
            key: Some("k.pem".into()),
            ..ConfigFile::default()
        };
        let cfg = ServeConfig::layered([&file, &flags]).unwrap();
        assert_eq!(cfg.engine.tls, Some(("c.pem".into(), "k.pem".into())));
    }

    #[test]
    fn printed_config_reads_back_to_the_same_config() {
        let flags = ConfigFile {
            shards: Some(3),
            identity: Some("/var/lib/node.key".into()),
            batch_timeout: Some(Duration::from_micros(1500)),
            keepalive: Some(Duration::from_millis(7250)),
            max_connections: Some(9),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            peers: Some(vec![SocketAddr::from(([10, 0, 0, 1], 4433))]),
            reconnect_jitter: Some(0.25),
            busy_poll: Some(Duration::from_micros(50)),
            ..ConfigFile::default()
        };
        let cfg = ServeConfig::layered([&flags]).unwrap();
        assert_eq!(cfg.engine.busy_poll, Duration::from_micros(50));
        let text = cfg.to_toml();
        let back = parse(&text).unwrap();
        assert_eq!(back, ConfigFile::from(&cfg));
        let again = ServeConfig::layered([&back]).unwrap();
        assert_eq!(again.to_toml(), text);
        assert!(text.contains("batch_timeout = \"1ms 500us\""), "{text}");
        assert!(text.contains("keepalive = \"7s 250ms\""), "{text}");
        assert!(text.contains("busy_poll = \"50us\""), "{text}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("batch_size = 8\nbatch_sise = 8\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("node.toml:2: key `batch_sise`: unknown field `batch_sise`"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = parse("listen = \"127.0.0.1:1\"\nkeepalive = 5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("node.toml:2: key `keepalive`:"), "{msg}");
        assert!(msg.contains("duration string"), "{msg}");
        let err = parse("peers = [\n  \"127.0.0.1:1\",\n  \"nowhere\",\n]\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("node.toml:3: key `peers`:"), "{msg}");
        let err = parse("idle_timeout = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("key `idle_timeout`"), "{err}");
        let err = parse("app = \"relay\"").unwrap_err();
        assert!(err.to_string().contains("key `app`"), "{err}");
    }

    #[test]
    fn sets_reports_only_given_keys() {
        let f = parse("keepalive = \"1s\"").unwrap();
        assert!(f.sets("keepalive"));
        assert!(!f.sets("idle_timeout"));
    }

    #[test]
    fn every_field_maps_to_keys_that_exist() {
        let all = toml::Table::try_from(ConfigFile::from(&ServeConfig {
            engine: EngineConfig {
                shards: Some(1),
                tls: Some(("c".into(), "k".into())),
                pool: PoolConfig {
                    max_connections: Some(1),
                    memory_limit: Some(1 << 30),
                    ..PoolConfig::default()
                },
                ..EngineConfig::default()
            },
            ..ServeConfig::default()
        }))
        .unwrap();
        for field in [
            "shards",
            "batch.max_messages",
            "batch.max_bytes",
            "batch.timeout",
            "transport.idle_timeout",
            "transport.window",
            "transport.max_udp_payload",
            "pool.ttl",
            "pool.keepalive",
            "pool.stall_timeout",
            "pool.handshake_timeout",
            "pool.frame_timeout",
            "pool.max_handshakes",
            "pool.max_connections",
            "pool.memory_limit",
            "reconnect",
            "max_message_size",
            "queue_capacity",
            "app",
            "cert",
            "key",
            "drain_timeout",
        ] {
            let keys = keys_for_field(field);
            assert!(!keys.is_empty(), "{field}");
            for k in keys {
                assert!(all.contains_key(*k), "{field} -> {k}");
            }
        }
    }

    #[test]
    fn durations_parse_with_zero_and_units() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert!(parse_duration("fast").is_err());
        for d in [0, 1, 999, 1_500_000, 300_000_000_000u64] {
            let d = Duration::from_nanos(d);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
