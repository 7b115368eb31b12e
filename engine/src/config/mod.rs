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

use std::net::SocketAddr;
use std::path::PathBuf;
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

mod file;

pub use file::{ConfigFile, ConfigFileError, keys_for_field};

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

#[cfg(test)]
mod tests {
    use super::file::tests::parse;
    use super::*;

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
