//! Validation of the data plane's configuration.
//!
//! Every policy a node is started with has a `validate()` method here, and
//! [`RuntimeConfig::validate`] (called first thing by [`crate::runtime::start`]) runs them
//! all, so an embedder cannot start shards with a zero keep-alive, TTL, batch size or
//! window, nor with a duration so long that a deadline (`Instant + duration`) overflows:
//! every timeout is at most [`MAX_TIMEOUT`] (one day) and the pool TTL at most [`MAX_TTL`]
//! (365 days). The defaults themselves stay with each type (its `Default` impl or a `DEFAULT_*`
//! const); this module only says what is allowed.
//!
//! Errors name the field by its path in [`RuntimeConfig`] (for example `pool.keepalive`,
//! `batch.max_messages`), which is also its path in `engine::EngineConfig`.
//!
//! ```
//! use shards::batch::BatchPolicy;
//! use shards::config::ConfigError;
//!
//! assert!(BatchPolicy::default().validate().is_ok());
//! let err = BatchPolicy { max_messages: 0, ..BatchPolicy::default() }.validate().unwrap_err();
//! assert_eq!(err.field(), "batch.max_messages");
//! assert_eq!(err.to_string(), "batch.max_messages (0) must be at least 1");
//! ```

use std::time::Duration;

use crate::batch::BatchPolicy;
use crate::lifecycle::{BackoffPolicy, LifecycleError};
use crate::runtime::{RuntimeConfig, StartError};
use crate::seal::MAX_PLAINTEXT_LEN;
use crate::session::TransportConfig;
use crate::shard::PoolConfig;
use crate::steering::MAX_SHARDS;
use crate::wire::MESSAGE_HEADER_LEN;

/// Smallest QUIC receive window accepted, in bytes: below it a single full-size datagram
/// exhausts the window and throughput collapses.
pub const MIN_WINDOW: u64 = 16 * 1024;
/// Smallest UDP payload QUIC allows a path to carry (RFC 9000, section 14).
pub const MIN_UDP_PAYLOAD: usize = 1200;
/// Largest UDP payload that fits an IPv4 datagram.
pub const MAX_UDP_PAYLOAD: usize = 65_527;
/// Smallest per-destination queue capacity accepted, in bytes.
pub const MIN_QUEUE_CAPACITY: usize = 4096;
/// Largest payload size limit accepted: one message must fit a sealed frame on its own.
pub const MAX_MESSAGE_SIZE_LIMIT: usize = MAX_PLAINTEXT_LEN - MESSAGE_HEADER_LEN;
/// Longest timeout accepted (idle, keep-alive, stall, handshake, frame, batch, reconnection
/// delay, drain): one day. Deadlines are computed as `Instant + timeout`, which panics on
/// overflow, and nothing a node waits for needs longer.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest pool TTL accepted: 365 days, long enough to mean "never" in practice.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A configuration value that breaks a rule; each variant names the field and the rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration or count that must be positive is zero.
    #[error("{field} must be above zero")]
    Zero {
        /// Path of the field, e.g. `pool.ttl`.
        field: &'static str,
    },
    /// A number is below its minimum.
    #[error("{field} ({value}) must be at least {min}")]
    TooSmall {
        /// Path of the field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The smallest value allowed.
        min: u64,
    },
    /// A number is above its maximum.
    #[error("{field} ({value}) must be at most {max}")]
    TooLarge {
        /// Path of the field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A duration is above its maximum.
    #[error("{field} ({value:?}) must be at most {}", ShowDuration(*max))]
    TooLong {
        /// Path of the field.
        field: &'static str,
        /// The value given.
        value: Duration,
        /// The longest value allowed.
        max: Duration,
    },
    /// A duration must be shorter than another one.
    #[error("{field} ({value:?}) must be below {bound_field} ({bound:?})")]
    NotBelow {
        /// Path of the field.
        field: &'static str,
        /// The value given.
        value: Duration,
        /// Path of the field it must stay below.
        bound_field: &'static str,
        /// That field's value.
        bound: Duration,
    },
    /// The reconnection schedule is degenerate.
    #[error("{field}: {source}")]
    Backoff {
        /// Path of the policy, e.g. `reconnect`.
        field: &'static str,
        /// What [`BackoffPolicy::validate`] said.
        source: LifecycleError,
    },
    /// A value is not allowed for another reason, stated by `rule`.
    #[error("{field}: {rule}")]
    Invalid {
        /// Path of the field.
        field: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
}

impl ConfigError {
    /// Path of the offending field, e.g. `pool.keepalive`.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Zero { field }
            | ConfigError::TooSmall { field, .. }
            | ConfigError::TooLarge { field, .. }
            | ConfigError::NotBelow { field, .. }
            | ConfigError::TooLong { field, .. }
            | ConfigError::Backoff { field, .. }
            | ConfigError::Invalid { field, .. } => field,
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e.to_string())
    }
}

/// A limit as people write it: whole days as `1d`, `365d` (which the duration parsers of
/// the command lines read back), anything else as [`Duration`]'s `Debug` (`10ms`).
struct ShowDuration(Duration);

impl std::fmt::Display for ShowDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DAY: u64 = 24 * 60 * 60;
        let d = self.0;
        if d.subsec_nanos() == 0 && d.as_secs() > 0 && d.as_secs().is_multiple_of(DAY) {
            write!(f, "{}d", d.as_secs() / DAY)
        } else {
            write!(f, "{d:?}")
        }
    }
}

fn as_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Checks `min <= value <= max`.
pub(crate) fn check_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::TooSmall { field, value, min });
    }
    if value > max {
        return Err(ConfigError::TooLarge { field, value, max });
    }
    Ok(())
}

fn check_nonzero(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::Zero { field });
    }
    Ok(())
}

/// Checks `d <= max`.
fn check_at_most(field: &'static str, d: Duration, max: Duration) -> Result<(), ConfigError> {
    if d > max {
        return Err(ConfigError::TooLong {
            field,
            value: d,
            max,
        });
    }
    Ok(())
}

/// Checks a timeout named `field` against [`MAX_TIMEOUT`]; for the durations outside the
/// data plane's policies (an engine's drain timeout, a command's own timeout).
pub fn validate_timeout(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    check_at_most(field, d, MAX_TIMEOUT)
}

/// Checks a positive timeout named `field`: above zero, at most [`MAX_TIMEOUT`].
fn check_timeout(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    check_nonzero(field, d)?;
    validate_timeout(field, d)
}

/// Checks a shard count: `1..=`[`MAX_SHARDS`] (one routing byte in every connection ID).
pub fn validate_shards(shards: usize) -> Result<(), ConfigError> {
    check_range("shards", as_u64(shards), 1, as_u64(MAX_SHARDS))
}

/// Checks a payload size limit: `1..=`[`MAX_MESSAGE_SIZE_LIMIT`].
pub fn validate_max_message_size(size: usize) -> Result<(), ConfigError> {
    check_range(
        "max_message_size",
        as_u64(size),
        1,
        as_u64(MAX_MESSAGE_SIZE_LIMIT),
    )
}

/// Checks a per-destination queue capacity: at least [`MIN_QUEUE_CAPACITY`] bytes.
pub fn validate_queue_capacity(bytes: usize) -> Result<(), ConfigError> {
    check_range(
        "queue_capacity",
        as_u64(bytes),
        as_u64(MIN_QUEUE_CAPACITY),
        u64::MAX,
    )
}

impl BatchPolicy {
    /// Checks the flush policy: `max_messages` and `max_bytes` at least 1 (a batch always
    /// takes at least one item; what it holds is further bounded by the destination's queue
    /// capacity), `timeout` at most [`MAX_TIMEOUT`]. A zero `timeout` is allowed: it
    /// flushes at the end of every processing turn.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("batch.max_messages", as_u64(self.max_messages), 1, u64::MAX)?;
        check_range("batch.max_bytes", as_u64(self.max_bytes), 1, u64::MAX)?;
        validate_timeout("batch.timeout", self.timeout)
    }
}

impl TransportConfig {
    /// Checks the QUIC tuning: `idle_timeout` above zero and at most [`MAX_TIMEOUT`],
    /// `window` at least [`MIN_WINDOW`], `max_udp_payload` within
    /// [`MIN_UDP_PAYLOAD`]`..=`[`MAX_UDP_PAYLOAD`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_timeout("transport.idle_timeout", self.idle_timeout)?;
        check_range("transport.window", self.window, MIN_WINDOW, u64::MAX)?;
        check_range(
            "transport.max_udp_payload",
            as_u64(self.max_udp_payload),
            as_u64(MIN_UDP_PAYLOAD),
            as_u64(MAX_UDP_PAYLOAD),
        )
    }
}

impl PoolConfig {
    /// Checks the pool policy on its own: `ttl` above zero and at most [`MAX_TTL`];
    /// `keepalive`, `stall_timeout`, `handshake_timeout` and `frame_timeout` above zero and
    /// at most [`MAX_TIMEOUT`]; and a `max_connections` cap, if any, of at least 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_nonzero("pool.ttl", self.ttl)?;
        check_at_most("pool.ttl", self.ttl, MAX_TTL)?;
        check_timeout("pool.keepalive", self.keepalive)?;
        check_timeout("pool.stall_timeout", self.stall_timeout)?;
        check_timeout("pool.handshake_timeout", self.handshake_timeout)?;
        check_timeout("pool.frame_timeout", self.frame_timeout)?;
        check_range(
            "pool.max_handshakes",
            as_u64(self.max_handshakes),
            1,
            u64::MAX,
        )?;
        if let Some(cap) = self.max_connections {
            check_range("pool.max_connections", as_u64(cap), 1, u64::MAX)?;
        }
        if let Some(limit) = self.memory_limit {
            check_range("pool.memory_limit", limit, 1 << 20, u64::MAX)?;
        }
        Ok(())
    }

    /// [`PoolConfig::validate`], plus the rule that ties the pool to the transport: the
    /// keep-alive must be below the idle timeout, or idle connections would time out before
    /// their first PING.
    pub fn validate_for(&self, transport: &TransportConfig) -> Result<(), ConfigError> {
        self.validate()?;
        if self.keepalive >= transport.idle_timeout {
            return Err(ConfigError::NotBelow {
                field: "pool.keepalive",
                value: self.keepalive,
                bound_field: "transport.idle_timeout",
                bound: transport.idle_timeout,
            });
        }
        Ok(())
    }
}

/// Checks a reconnection schedule with [`BackoffPolicy::validate`] (positive initial delay,
/// `max >= initial`, jitter within `0.0..=1.0`) and `max` (so every delay) at most
/// [`MAX_TIMEOUT`], reported under `field`.
pub fn validate_backoff(field: &'static str, policy: &BackoffPolicy) -> Result<(), ConfigError> {
    policy
        .validate()
        .map_err(|source| ConfigError::Backoff { field, source })?;
    if policy.max > MAX_TIMEOUT {
        let why = format!(
            "max delay ({:?}) must be at most {}",
            policy.max,
            ShowDuration(MAX_TIMEOUT)
        );
        return Err(ConfigError::Backoff {
            field,
            source: LifecycleError::InvalidPolicy(why),
        });
    }
    Ok(())
}

impl RuntimeConfig {
    /// Checks every setting: shard count, batch policy, transport, pool (with the keep-alive
    /// below the idle timeout), reconnection schedule, payload limit and queue capacity.
    /// Returns the first rule broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_shards(self.shards)?;
        self.batch.validate()?;
        self.transport.validate()?;
        self.pool.validate_for(&self.transport)?;
        validate_backoff("reconnect", &self.reconnect)?;
        validate_max_message_size(self.max_message_size)?;
        validate_queue_capacity(self.queue_capacity)?;
        validate_busy_poll(self.busy_poll)
    }
}

/// Longest busy-poll allowed: past a few milliseconds of silence spinning only burns the
/// core, since a peer that quiet is not in a burst.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Checks a shard's busy-poll time (at most [`MAX_BUSY_POLL`]).
pub fn validate_busy_poll(d: Duration) -> Result<(), ConfigError> {
    if d > MAX_BUSY_POLL {
        return Err(ConfigError::TooLong {
            field: "busy_poll",
            value: d,
            max: MAX_BUSY_POLL,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BatchPolicy::default().validate().unwrap();
        TransportConfig::default().validate().unwrap();
        PoolConfig::default()
            .validate_for(&TransportConfig::default())
            .unwrap();
        validate_backoff("reconnect", &BackoffPolicy::default()).unwrap();
    }

    #[test]
    fn batch_limits() {
        let ok = BatchPolicy::default();
        let err = BatchPolicy {
            max_messages: 0,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err,
            ConfigError::TooSmall {
                field: "batch.max_messages",
                value: 0,
                min: 1
            }
        );
        let err = BatchPolicy { max_bytes: 0, ..ok }.validate().unwrap_err();
        assert_eq!(err.field(), "batch.max_bytes");
        // A zero timeout means "flush every turn" and is allowed.
        BatchPolicy {
            timeout: Duration::ZERO,
            max_messages: 1,
            max_bytes: 1,
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn transport_limits() {
        let ok = TransportConfig::default();
        let mut t = ok.clone();
        t.idle_timeout = Duration::ZERO;
        assert_eq!(
            t.validate().unwrap_err(),
            ConfigError::Zero {
                field: "transport.idle_timeout"
            }
        );
        let mut t = ok.clone();
        t.window = MIN_WINDOW - 1;
        assert_eq!(t.validate().unwrap_err().field(), "transport.window");
        t.window = MIN_WINDOW;
        t.validate().unwrap();
        let mut t = ok.clone();
        t.max_udp_payload = MIN_UDP_PAYLOAD - 1;
        assert_eq!(
            t.validate().unwrap_err().field(),
            "transport.max_udp_payload"
        );
        t.max_udp_payload = MAX_UDP_PAYLOAD + 1;
        assert_eq!(
            t.validate().unwrap_err().field(),
            "transport.max_udp_payload"
        );
    }

    #[test]
    fn pool_limits_and_keepalive_below_idle_timeout() {
        let transport = TransportConfig::default();
        for (field, pool) in [
            (
                "pool.ttl",
                PoolConfig {
                    ttl: Duration::ZERO,
                    ..PoolConfig::default()
                },
            ),
            (
                "pool.keepalive",
                PoolConfig {
                    keepalive: Duration::ZERO,
                    ..PoolConfig::default()
                },
            ),
            (
                "pool.stall_timeout",
                PoolConfig {
                    stall_timeout: Duration::ZERO,
                    ..PoolConfig::default()
                },
            ),
            (
                "pool.max_connections",
                PoolConfig {
                    max_connections: Some(0),
                    ..PoolConfig::default()
                },
            ),
        ] {
            assert_eq!(pool.validate().unwrap_err().field(), field);
            assert_eq!(pool.validate_for(&transport).unwrap_err().field(), field);
        }
        let pool = PoolConfig {
            keepalive: transport.idle_timeout,
            ..PoolConfig::default()
        };
        pool.validate().unwrap();
        let err = pool.validate_for(&transport).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pool.keepalive (30s) must be below transport.idle_timeout (30s)"
        );
    }

    #[test]
    fn backoff_errors_name_the_policy() {
        let bad = BackoffPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(1),
            ..BackoffPolicy::default()
        };
        let err = validate_backoff("reconnect", &bad).unwrap_err();
        assert_eq!(err.field(), "reconnect");
        assert!(
            err.to_string()
                .starts_with("reconnect: invalid backoff policy")
        );
    }

    #[test]
    fn node_wide_limits() {
        assert_eq!(validate_shards(0).unwrap_err().field(), "shards");
        assert_eq!(
            validate_shards(MAX_SHARDS + 1).unwrap_err().field(),
            "shards"
        );
        validate_shards(MAX_SHARDS).unwrap();
        assert!(validate_max_message_size(0).is_err());
        validate_max_message_size(MAX_MESSAGE_SIZE_LIMIT).unwrap();
        assert!(validate_max_message_size(MAX_MESSAGE_SIZE_LIMIT + 1).is_err());
        assert_eq!(
            validate_queue_capacity(MIN_QUEUE_CAPACITY - 1)
                .unwrap_err()
                .to_string(),
            "queue_capacity (4095) must be at least 4096"
        );
    }

    #[test]
    fn durations_are_bounded_and_errors_name_the_field() {
        let over = MAX_TIMEOUT + Duration::from_nanos(1);
        let pool = PoolConfig::default();
        // At the bound passes; just above it fails, naming the field.
        let bounded =
            |field: &str, max: Duration, check: &dyn Fn(Duration) -> Result<(), ConfigError>| {
                if let Err(e) = check(max) {
                    panic!("{field} at {max:?}: {e}");
                }
                let e = check(max + Duration::from_nanos(1)).unwrap_err();
                assert_eq!(e.field(), field, "{e}");
                assert!(e.to_string().starts_with(field), "{e}");
            };
        bounded("batch.timeout", MAX_TIMEOUT, &|d| {
            BatchPolicy {
                timeout: d,
                ..BatchPolicy::default()
            }
            .validate()
        });
        bounded("transport.idle_timeout", MAX_TIMEOUT, &|d| {
            TransportConfig {
                idle_timeout: d,
                ..TransportConfig::default()
            }
            .validate()
        });
        let pool_with = |set: fn(&mut PoolConfig, Duration)| {
            move |d: Duration| {
                let mut p = PoolConfig::default();
                set(&mut p, d);
                p.validate()
            }
        };
        bounded(
            "pool.keepalive",
            MAX_TIMEOUT,
            &pool_with(|p, d| p.keepalive = d),
        );
        bounded(
            "pool.stall_timeout",
            MAX_TIMEOUT,
            &pool_with(|p, d| p.stall_timeout = d),
        );
        bounded(
            "pool.handshake_timeout",
            MAX_TIMEOUT,
            &pool_with(|p, d| p.handshake_timeout = d),
        );
        bounded(
            "pool.frame_timeout",
            MAX_TIMEOUT,
            &pool_with(|p, d| p.frame_timeout = d),
        );
        bounded("pool.ttl", MAX_TTL, &pool_with(|p, d| p.ttl = d));
        // What `--drain-timeout 18446744073709551615s` would give.
        let huge = Duration::from_secs(u64::MAX);
        let mut p = PoolConfig {
            handshake_timeout: huge,
            ..PoolConfig::default()
        };
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "pool.handshake_timeout (18446744073709551615s) must be at most 1d"
        );
        p.handshake_timeout = pool.handshake_timeout;
        p.ttl = huge;
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "pool.ttl (18446744073709551615s) must be at most 365d"
        );
        validate_timeout("drain_timeout", MAX_TIMEOUT).unwrap();
        validate_timeout("drain_timeout", Duration::ZERO).unwrap();
        assert_eq!(
            validate_timeout("drain_timeout", over).unwrap_err().field(),
            "drain_timeout"
        );
        // The reconnection schedule: every delay is at most `max`, so `max` is bounded.
        let mut backoff = BackoffPolicy {
            max: MAX_TIMEOUT,
            ..BackoffPolicy::default()
        };
        validate_backoff("reconnect", &backoff).unwrap();
        backoff.max = over;
        let err = validate_backoff("reconnect", &backoff).unwrap_err();
        assert_eq!(err.field(), "reconnect");
        assert!(
            err.to_string().starts_with(
                "reconnect: invalid backoff policy: max delay (86400.000000001s) must be at most 1d"
            ),
            "{err}"
        );
        // The busy-poll limit still reads as before.
        assert_eq!(
            validate_busy_poll(Duration::from_millis(11))
                .unwrap_err()
                .to_string(),
            "busy_poll (11ms) must be at most 10ms"
        );
    }

    #[test]
    fn start_error_carries_the_message() {
        let e = StartError::from(ConfigError::Zero { field: "pool.ttl" });
        assert_eq!(
            e.to_string(),
            "invalid configuration: pool.ttl must be above zero"
        );
    }
}
