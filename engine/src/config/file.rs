//! The `engine serve` settings as layers: [`ConfigFile`], the keys of a TOML config file
//! (and of the flags and `ENGINE_*` variables named like them), how a layer reads and
//! prints, which keys set which [`EngineConfig`](super::EngineConfig) or [`ServeConfig`] field, and parse errors
//! that name the file, line and key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AppKind, ServeConfig};

/// One layer of `engine serve` settings: the keys of a TOML config file, every one
/// optional. `engine serve` builds a second layer from its flags and `ENGINE_*` environment
/// variables, named like these keys (`batch_size` is `--batch-size` and
/// `ENGINE_BATCH_SIZE`). Durations are strings such as `"10s"`, `"250ms"`, `"1m 30s"` or `"0"`;
/// unknown keys are an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// [`EngineConfig::listen`](super::EngineConfig::listen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// [`EngineConfig::shards`](super::EngineConfig::shards); unset = one per available core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// [`EngineConfig::pin`](super::EngineConfig::pin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<bool>,
    /// [`EngineConfig::busy_poll`](super::EngineConfig::busy_poll).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub busy_poll: Option<Duration>,
    /// [`EngineConfig::identity`](super::EngineConfig::identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// TLS certificate chain (PEM), with `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM), with `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// [`EngineConfig::app`](super::EngineConfig::app).
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
    /// [`BatchPolicy::max_messages`](shards::batch::BatchPolicy::max_messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// [`BatchPolicy::max_bytes`](shards::batch::BatchPolicy::max_bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_bytes: Option<usize>,
    /// [`BatchPolicy::timeout`](shards::batch::BatchPolicy::timeout).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub batch_timeout: Option<Duration>,
    /// [`EngineConfig::max_message_size`](super::EngineConfig::max_message_size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// [`EngineConfig::queue_capacity`](super::EngineConfig::queue_capacity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
    /// [`TransportConfig::idle_timeout`](shards::session::TransportConfig::idle_timeout).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// [`TransportConfig::window`](shards::session::TransportConfig::window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// [`TransportConfig::max_udp_payload`](shards::session::TransportConfig::max_udp_payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_udp_payload: Option<usize>,
    /// [`TransportConfig::gso`](shards::session::TransportConfig::gso).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gso: Option<bool>,
    /// [`TransportConfig::gro`](shards::session::TransportConfig::gro).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gro: Option<bool>,
    /// [`PoolConfig::keepalive`](shards::shard::PoolConfig::keepalive); unset = a third of the idle timeout.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub keepalive: Option<Duration>,
    /// [`PoolConfig::ttl`](shards::shard::PoolConfig::ttl).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub pool_ttl: Option<Duration>,
    /// [`PoolConfig::stall_timeout`](shards::shard::PoolConfig::stall_timeout).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub stall_timeout: Option<Duration>,
    /// [`PoolConfig::handshake_timeout`](shards::shard::PoolConfig::handshake_timeout).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub handshake_timeout: Option<Duration>,
    /// [`PoolConfig::frame_timeout`](shards::shard::PoolConfig::frame_timeout).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub frame_timeout: Option<Duration>,
    /// [`PoolConfig::retry_threshold`](shards::shard::PoolConfig::retry_threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_threshold: Option<usize>,
    /// [`PoolConfig::max_handshakes`](shards::shard::PoolConfig::max_handshakes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_handshakes: Option<usize>,
    /// [`PoolConfig::memory_limit`](shards::shard::PoolConfig::memory_limit); unset = no ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// [`PoolConfig::max_connections`](shards::shard::PoolConfig::max_connections); unset = no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// [`BackoffPolicy::initial`](shards::lifecycle::BackoffPolicy::initial).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub reconnect_initial: Option<Duration>,
    /// [`BackoffPolicy::max`](shards::lifecycle::BackoffPolicy::max).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub reconnect_max: Option<Duration>,
    /// [`BackoffPolicy::attempts`](shards::lifecycle::BackoffPolicy::attempts) (0 = never give up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_attempts: Option<u32>,
    /// [`BackoffPolicy::jitter`](shards::lifecycle::BackoffPolicy::jitter), a fraction within 0.0..=1.0.
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
    pub(super) fn apply(&self, cfg: &mut ServeConfig) {
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

/// The config file keys that set the field a [`ConfigError`](shards::config::ConfigError) names (its
/// [`ConfigError::field`](shards::config::ConfigError::field)), so a command can say where to fix it. Empty for fields that
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

/// Serde for `Option<Duration>` as a humantime string.
mod opt_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::super::format_duration(*d)),
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
                super::super::parse_duration(s).map(Some).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use shards::shard::PoolConfig;
    use std::path::Path;

    pub(crate) fn parse(text: &str) -> Result<ConfigFile, ConfigFileError> {
        ConfigFile::parse(text, Path::new("node.toml"))
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
}
