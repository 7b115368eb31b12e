//! Connection lifecycle: the states a peer connection moves through, and the reconnection
//! backoff schedule. Pure logic, time passed in.

use std::time::{Duration, Instant};

/// Where a connection to a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Known but not yet dialed.
    New,
    /// Dialing, or handshaking.
    Connecting,
    /// Handshake done; messages flow.
    Connected,
    /// Closed; may be re-dialed.
    Disconnected,
    /// Gave up after the last reconnection attempt.
    Failed,
}

impl ConnState {
    /// Every state, in declaration order (for metrics that list each one).
    pub const ALL: [ConnState; 5] = [
        ConnState::New,
        ConnState::Connecting,
        ConnState::Connected,
        ConnState::Disconnected,
        ConnState::Failed,
    ];

    /// Lower-case name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::New => "new",
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Disconnected => "disconnected",
            ConnState::Failed => "failed",
        }
    }
}

/// Why a lifecycle operation was refused. Returned instead of panicking so a shard can log
/// a misbehaving driver and carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The event makes no sense in the current state (e.g. `Established` while `New`); the
    /// state is left unchanged, so a stray event cannot corrupt the machine.
    #[error("invalid connection lifecycle transition: event `{event}` in state `{}`", .from.as_str())]
    InvalidTransition {
        /// The state the machine was (and still is) in.
        from: ConnState,
        /// The name of the rejected event, as given by [`Event::as_str`].
        event: &'static str,
    },
    /// A [`BackoffPolicy`] failed [`BackoffPolicy::validate`]; the message says which field.
    #[error("invalid backoff policy: {0}")]
    InvalidPolicy(String),
}

/// Reconnection backoff: exponential growth from `initial`, capped at `max`, with
/// multiplicative jitter so that many peers dropped at once do not re-dial in lockstep.
///
/// Attempt `k` (1-based) waits `min(max, initial * 2^(k-1))`, scaled by a factor drawn
/// uniformly from `[1 - jitter, 1 + jitter]`, then clamped to `max` again. The random draw is
/// supplied by the caller, which keeps the schedule deterministic under test.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use shards::lifecycle::BackoffPolicy;
///
/// let policy = BackoffPolicy {
///     initial: Duration::from_millis(100),
///     max: Duration::from_secs(1),
///     attempts: 5,
///     jitter: 0.0,
/// };
/// policy.validate().unwrap();
/// assert_eq!(policy.delay(1, 0.5), Some(Duration::from_millis(100)));
/// assert_eq!(policy.delay(3, 0.5), Some(Duration::from_millis(400)));
/// assert_eq!(policy.delay(5, 0.5), Some(Duration::from_secs(1))); // capped
/// assert_eq!(policy.delay(6, 0.5), None); // give up
///
/// // With jitter, the caller's draw in [0, 1) picks a point in [1 - j, 1 + j].
/// let jittered = BackoffPolicy { jitter: 0.5, ..policy };
/// assert_eq!(jittered.delay(1, 0.0), Some(Duration::from_millis(50)));
/// assert!(jittered.delay(5, 0.99).unwrap() <= Duration::from_secs(1)); // never above max
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// Delay before the first retry; doubles on each further attempt.
    pub initial: Duration,
    /// Ceiling on any single delay, jitter included, so a long outage never pushes retries
    /// arbitrarily far apart.
    pub max: Duration,
    /// Retries allowed before giving up; `0` means never give up.
    pub attempts: u32,
    /// Jitter as a fraction of the delay, within `0.0..=1.0` (`0.2` means ±20 %).
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    /// 100 ms doubling up to 30 s, ±20 % jitter, giving up after 10 retries.
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            attempts: 10,
            jitter: 0.2,
        }
    }
}

impl BackoffPolicy {
    /// Checks the policy once at configuration time, so that a bad config is reported clearly
    /// instead of producing a degenerate schedule (zero delays, or delays above the cap).
    pub fn validate(&self) -> Result<(), LifecycleError> {
        if self.initial.is_zero() {
            return Err(LifecycleError::InvalidPolicy(
                "initial delay must be greater than zero".to_string(),
            ));
        }
        if self.max < self.initial {
            return Err(LifecycleError::InvalidPolicy(format!(
                "max delay ({:?}) must be at least the initial delay ({:?})",
                self.max, self.initial
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(LifecycleError::InvalidPolicy(format!(
                "jitter must be a fraction within 0.0..=1.0, got {}",
                self.jitter
            )));
        }
        Ok(())
    }

    /// How long to wait before retry number `attempt` (1-based; `0` is treated as `1`), or
    /// `None` once `attempt` exceeds a non-zero `attempts` limit, meaning give up.
    ///
    /// `unit` is a uniform random draw in `[0, 1)` supplied by the caller (out-of-range values
    /// are clamped, NaN counts as `0`), so this function stays pure and testable. The result
    /// never exceeds `max`, and arithmetic saturates: any `attempt` up to `u32::MAX` is fine.
    /// An unvalidated policy does not panic either (e.g. jitter is clamped to `0.0..=1.0`).
    pub fn delay(&self, attempt: u32, unit: f64) -> Option<Duration> {
        if self.attempts > 0 && attempt > self.attempts {
            return None;
        }
        let base = self.base_delay(attempt);
        let jitter = clamp_unit_interval(self.jitter, 0.0);
        if jitter == 0.0 {
            // Exact integer schedule; no float round-trip.
            return Some(base);
        }
        let unit = clamp_unit_interval(unit, 0.0);
        let factor = 1.0 - jitter + 2.0 * jitter * unit; // within [0, 2]
        let scaled = Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(self.max);
        Some(scaled.min(self.max))
    }

    /// `min(max, initial * 2^(attempt - 1))` without overflow.
    fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        let raw = match 1u32.checked_shl(exponent) {
            Some(multiplier) => self.initial.saturating_mul(multiplier),
            None if self.initial.is_zero() => Duration::ZERO,
            None => Duration::MAX,
        };
        raw.min(self.max)
    }
}

/// Clamps `x` into `[0, 1]`, mapping NaN to `nan_as`.
fn clamp_unit_interval(x: f64, nan_as: f64) -> f64 {
    if x.is_nan() {
        nan_as
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// Something that happened to a connection, fed to [`Lifecycle::on`] by the I/O driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// Start dialing: the first dial, a manual re-dial, or a restart after `Failed`.
    Dial,
    /// The handshake completed; messages can flow.
    Established,
    /// The connection (or the dial) was closed. `graceful` closes (an orderly shutdown by
    /// either side) are not retried.
    Closed {
        /// `true` for an orderly close, `false` for an error or reset.
        graceful: bool,
    },
    /// A keep-alive or idle timeout fired; treated as an ungraceful close.
    Timeout,
    /// The scheduled retry time has arrived (see [`Lifecycle::retry_due`]).
    RetryDue,
    /// The owner abandons the peer; it stays `Failed` until dialed again.
    GiveUp,
}

impl Event {
    /// Lower-case name, as reported in [`LifecycleError::InvalidTransition`] and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Dial => "dial",
            Event::Established => "established",
            Event::Closed { .. } => "closed",
            Event::Timeout => "timeout",
            Event::RetryDue => "retry_due",
            Event::GiveUp => "give_up",
        }
    }
}

/// The state machine for one peer connection, plus its reconnection schedule. Owning this in
/// one place keeps every driver's transitions (and metrics) consistent.
///
/// Outbound connections that drop ungracefully are retried per the [`BackoffPolicy`];
/// inbound ones and graceful closes are not (the remote side, or the owner, decides).
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use shards::lifecycle::{BackoffPolicy, ConnState, Event, Lifecycle};
///
/// let policy = BackoffPolicy { jitter: 0.0, ..BackoffPolicy::default() };
/// let mut conn = Lifecycle::new(policy, true);
/// let t0 = Instant::now();
///
/// assert_eq!(conn.on(Event::Dial, t0, 0.5), Ok(ConnState::Connecting));
/// assert_eq!(conn.on(Event::Established, t0, 0.5), Ok(ConnState::Connected));
///
/// // An ungraceful drop of an outbound connection schedules a retry.
/// assert_eq!(conn.on(Event::Timeout, t0, 0.5), Ok(ConnState::Disconnected));
/// assert_eq!(conn.attempt(), 1);
/// assert_eq!(conn.next_retry(), Some(t0 + Duration::from_millis(100)));
/// assert!(!conn.retry_due(t0));
///
/// let later = t0 + Duration::from_millis(100);
/// assert!(conn.retry_due(later));
/// assert_eq!(conn.on(Event::RetryDue, later, 0.5), Ok(ConnState::Connecting));
/// assert_eq!(conn.on(Event::Established, later, 0.5), Ok(ConnState::Connected));
/// assert_eq!(conn.attempt(), 0);
///
/// // Nonsense events are refused and change nothing.
/// assert!(conn.on(Event::GiveUp, later, 0.5).is_err());
/// assert_eq!(conn.state(), ConnState::Connected);
/// assert_eq!(conn.transitions(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct Lifecycle {
    state: ConnState,
    attempt: u32,
    next_retry: Option<Instant>,
    policy: BackoffPolicy,
    outbound: bool,
    transitions: u64,
}

impl Lifecycle {
    /// A connection in [`ConnState::New`]. `outbound` is `true` if we dial it (and so may
    /// re-dial it). The policy is used as given; check it with [`BackoffPolicy::validate`]
    /// when loading configuration.
    pub fn new(policy: BackoffPolicy, outbound: bool) -> Self {
        Lifecycle {
            state: ConnState::New,
            attempt: 0,
            next_retry: None,
            policy,
            outbound,
            transitions: 0,
        }
    }

    /// Applies `ev` at time `now` and returns the new state. `unit` is a uniform random draw in
    /// `[0, 1)` used for backoff jitter if this event schedules a retry.
    ///
    /// Transitions: `New -Dial-> Connecting`; `Connecting -Established-> Connected` (resets
    /// the attempt count); `Connecting|Connected -Closed/Timeout-> Disconnected`;
    /// `Disconnected -RetryDue/Dial-> Connecting`; `Disconnected -GiveUp-> Failed`;
    /// `Failed -Dial-> Connecting` (resets the attempt count).
    ///
    /// Entering `Disconnected` on an outbound connection without a graceful close bumps the
    /// attempt count and schedules the next retry; if the policy gives up (or the retry time is
    /// not representable) the state becomes `Failed` at once. `RetryDue` is only accepted while
    /// a retry is scheduled, so inbound connections and graceful closes stay `Disconnected`
    /// until an explicit `Dial`. The caller decides when to fire `RetryDue`
    /// ([`retry_due`](Self::retry_due) tells it when); `on` does not check the time.
    ///
    /// Any other (state, event) pair returns [`LifecycleError::InvalidTransition`] and leaves
    /// the machine untouched.
    pub fn on(&mut self, ev: Event, now: Instant, unit: f64) -> Result<ConnState, LifecycleError> {
        use ConnState::*;
        match (self.state, ev) {
            (New, Event::Dial) => {
                self.state = Connecting;
            }
            (Connecting, Event::Established) => {
                self.state = Connected;
                self.attempt = 0;
                self.next_retry = None;
            }
            (Connecting | Connected, Event::Closed { graceful }) => {
                self.disconnect(graceful, now, unit);
            }
            (Connecting | Connected, Event::Timeout) => {
                self.disconnect(false, now, unit);
            }
            (Disconnected, Event::RetryDue) if self.next_retry.is_some() => {
                self.state = Connecting;
                self.next_retry = None;
            }
            (Disconnected, Event::Dial) => {
                self.state = Connecting;
                self.next_retry = None;
            }
            (Disconnected, Event::GiveUp) => {
                self.state = Failed;
                self.next_retry = None;
            }
            (Failed, Event::Dial) => {
                self.state = Connecting;
                self.attempt = 0;
                self.next_retry = None;
            }
            (from, ev) => {
                return Err(LifecycleError::InvalidTransition {
                    from,
                    event: ev.as_str(),
                });
            }
        }
        self.transitions = self.transitions.saturating_add(1);
        Ok(self.state)
    }

    /// Enters `Disconnected`, scheduling a retry (or failing) when the policy says so.
    fn disconnect(&mut self, graceful: bool, now: Instant, unit: f64) {
        self.next_retry = None;
        if !self.outbound || graceful {
            self.state = ConnState::Disconnected;
            return;
        }
        self.attempt = self.attempt.saturating_add(1);
        let retry_at = self
            .policy
            .delay(self.attempt, unit)
            .and_then(|d| now.checked_add(d));
        match retry_at {
            Some(at) => {
                self.state = ConnState::Disconnected;
                self.next_retry = Some(at);
            }
            None => self.state = ConnState::Failed,
        }
    }

    /// Current state, for routing decisions and per-state metrics.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Consecutive failed attempts since the last successful handshake (or explicit restart);
    /// the exponent of the current backoff delay.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the next retry should be dialed, if one is scheduled; lets the driver arm a timer.
    pub fn next_retry(&self) -> Option<Instant> {
        self.next_retry
    }

    /// Number of successful transitions so far (rejected events are not counted); a cheap
    /// churn indicator for metrics.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Whether a scheduled retry is due at `now`, i.e. whether the driver should feed
    /// [`Event::RetryDue`] and dial.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.state == ConnState::Disconnected && self.next_retry.is_some_and(|at| now >= at)
    }

    /// Whether we dialed this connection (and so may retry it).
    pub fn outbound(&self) -> bool {
        self.outbound
    }

    /// The backoff policy in force.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn no_jitter() -> BackoffPolicy {
        BackoffPolicy {
            jitter: 0.0,
            ..BackoffPolicy::default()
        }
    }

    #[test]
    fn default_policy_is_valid() {
        let p = BackoffPolicy::default();
        assert_eq!(p.initial, ms(100));
        assert_eq!(p.max, Duration::from_secs(30));
        assert_eq!(p.attempts, 10);
        assert_eq!(p.jitter, 0.2);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_policies() {
        let base = BackoffPolicy::default();
        let bad = [
            BackoffPolicy {
                initial: Duration::ZERO,
                ..base
            },
            BackoffPolicy {
                max: ms(50),
                ..base
            },
            BackoffPolicy {
                jitter: -0.1,
                ..base
            },
            BackoffPolicy {
                jitter: 1.5,
                ..base
            },
            BackoffPolicy {
                jitter: f64::NAN,
                ..base
            },
        ];
        for p in bad {
            match p.validate() {
                Err(LifecycleError::InvalidPolicy(msg)) => assert!(!msg.is_empty()),
                other => panic!("{p:?} should be invalid, got {other:?}"),
            }
        }
        let edge = BackoffPolicy {
            max: base.initial,
            jitter: 1.0,
            ..base
        };
        assert_eq!(edge.validate(), Ok(()));
        let msg = BackoffPolicy {
            max: ms(50),
            ..base
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(msg.contains("max delay"), "{msg}");
    }

    #[test]
    fn schedule_without_jitter_doubles_and_caps() {
        let p = no_jitter();
        let expected = [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000];
        for (i, want) in expected.iter().enumerate() {
            let attempt = i as u32 + 1;
            // The draw is irrelevant without jitter.
            for unit in [0.0, 0.5, 0.999] {
                assert_eq!(p.delay(attempt, unit), Some(ms(*want)), "attempt {attempt}");
            }
        }
        assert_eq!(p.delay(0, 0.5), Some(ms(100)), "attempt 0 treated as 1");
    }

    #[test]
    fn jittered_delays_stay_within_bounds_and_below_max() {
        let p = BackoffPolicy::default();
        let slack = Duration::from_micros(1);
        for attempt in 1..=p.attempts {
            let base = no_jitter().delay(attempt, 0.0).unwrap();
            let lo = base.mul_f64(1.0 - p.jitter);
            let hi = base.mul_f64(1.0 + p.jitter).min(p.max);
            for i in 0..=100 {
                let unit = f64::from(i) / 100.0 * 0.999_999;
                let d = p.delay(attempt, unit).unwrap();
                assert!(
                    d + slack >= lo,
                    "attempt {attempt} unit {unit}: {d:?} < {lo:?}"
                );
                assert!(
                    d <= hi + slack,
                    "attempt {attempt} unit {unit}: {d:?} > {hi:?}"
                );
                assert!(d <= p.max);
            }
        }
        // The draw maps linearly onto [1 - j, 1 + j].
        assert_eq!(p.delay(1, 0.0), Some(ms(80)));
        assert_eq!(p.delay(1, 0.5), Some(ms(100)));
        // Full jitter can reach zero, never below; out-of-range draws are clamped.
        let full = BackoffPolicy { jitter: 1.0, ..p };
        assert_eq!(full.delay(1, 0.0), Some(Duration::ZERO));
        assert_eq!(full.delay(1, -3.0), Some(Duration::ZERO));
        assert_eq!(full.delay(1, f64::NAN), Some(Duration::ZERO));
        assert!(full.delay(1, 7.0).unwrap() <= ms(200));
        assert_eq!(full.delay(10, 0.99), Some(p.max));
        assert_eq!(full.delay(11, 0.99), None);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = BackoffPolicy {
            attempts: 0,
            ..BackoffPolicy::default()
        };
        for attempt in [31, 32, 33, 63, 64, 65, 100, 1_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(no_jitter_forever().delay(attempt, 0.5), Some(p.max));
            let d = p.delay(attempt, 0.999).unwrap();
            assert!(d <= p.max && d >= p.max.mul_f64(0.79), "{attempt}: {d:?}");
        }
        // A huge cap and initial still saturate rather than overflow.
        let wide = BackoffPolicy {
            initial: Duration::from_secs(u64::MAX / 4),
            max: Duration::MAX,
            attempts: 0,
            jitter: 1.0,
        };
        for attempt in [1, 2, 3, 10, 64, u32::MAX] {
            assert!(wide.delay(attempt, 0.999).is_some());
        }
        // Even an (invalid) zero initial delay is harmless.
        let zero = BackoffPolicy {
            initial: Duration::ZERO,
            ..p
        };
        assert_eq!(zero.delay(u32::MAX, 0.5), Some(Duration::ZERO));
    }

    fn no_jitter_forever() -> BackoffPolicy {
        BackoffPolicy {
            attempts: 0,
            ..no_jitter()
        }
    }

    #[test]
    fn gives_up_after_attempts() {
        let p = BackoffPolicy {
            attempts: 3,
            ..no_jitter()
        };
        assert_eq!(p.delay(3, 0.5), Some(ms(400)));
        assert_eq!(p.delay(4, 0.5), None);
        assert_eq!(p.delay(u32::MAX, 0.5), None);
    }

    #[test]
    fn zero_attempts_never_gives_up() {
        let p = no_jitter_forever();
        for attempt in [1, 10, 11, 1_000, u32::MAX] {
            assert!(p.delay(attempt, 0.5).is_some());
        }
    }

    #[test]
    fn happy_path_reconnect_resets_attempts() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(no_jitter(), true);
        assert_eq!(c.state(), ConnState::New);
        assert_eq!(c.on(Event::Dial, t0, 0.5), Ok(ConnState::Connecting));
        assert_eq!(c.on(Event::Established, t0, 0.5), Ok(ConnState::Connected));
        assert_eq!(c.attempt(), 0);
        assert_eq!(
            c.on(Event::Closed { graceful: false }, t0, 0.5),
            Ok(ConnState::Disconnected)
        );
        assert_eq!(c.attempt(), 1);
        assert_eq!(c.next_retry(), Some(t0 + ms(100)));
        assert!(!c.retry_due(t0 + ms(99)));
        assert!(c.retry_due(t0 + ms(100)));
        assert_eq!(
            c.on(Event::RetryDue, t0 + ms(100), 0.5),
            Ok(ConnState::Connecting)
        );
        assert_eq!(c.next_retry(), None);
        assert!(!c.retry_due(t0 + ms(200)));
        assert_eq!(
            c.on(Event::Established, t0 + ms(150), 0.5),
            Ok(ConnState::Connected)
        );
        assert_eq!(c.attempt(), 0);
        assert_eq!(c.transitions(), 5);
    }

    #[test]
    fn failed_dials_escalate_then_fail() {
        let t0 = Instant::now();
        let policy = BackoffPolicy {
            attempts: 3,
            ..no_jitter()
        };
        let mut c = Lifecycle::new(policy, true);
        c.on(Event::Dial, t0, 0.5).unwrap();
        let mut now = t0;
        for (attempt, want) in [(1, 100), (2, 200), (3, 400)] {
            let ev = if attempt % 2 == 0 {
                Event::Timeout
            } else {
                Event::Closed { graceful: false }
            };
            assert_eq!(c.on(ev, now, 0.5), Ok(ConnState::Disconnected));
            assert_eq!(c.attempt(), attempt);
            assert_eq!(c.next_retry(), Some(now + ms(want)));
            now += ms(want);
            assert!(c.retry_due(now));
            assert_eq!(c.on(Event::RetryDue, now, 0.5), Ok(ConnState::Connecting));
        }
        // The fourth failure exceeds the policy: straight to Failed, nothing scheduled.
        assert_eq!(c.on(Event::Timeout, now, 0.5), Ok(ConnState::Failed));
        assert_eq!(c.attempt(), 4);
        assert_eq!(c.next_retry(), None);
        assert!(!c.retry_due(now + Duration::from_secs(3600)));
    }

    #[test]
    fn explicit_give_up_from_disconnected() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(no_jitter(), true);
        c.on(Event::Dial, t0, 0.5).unwrap();
        c.on(Event::Timeout, t0, 0.5).unwrap();
        assert_eq!(c.on(Event::GiveUp, t0, 0.5), Ok(ConnState::Failed));
        assert_eq!(c.next_retry(), None);
        assert!(!c.retry_due(t0 + ms(100)));
    }

    #[test]
    fn inbound_is_never_retried() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(no_jitter(), false);
        c.on(Event::Dial, t0, 0.5).unwrap();
        c.on(Event::Established, t0, 0.5).unwrap();
        assert_eq!(
            c.on(Event::Closed { graceful: false }, t0, 0.5),
            Ok(ConnState::Disconnected)
        );
        assert_eq!(c.attempt(), 0);
        assert_eq!(c.next_retry(), None);
        assert!(!c.retry_due(t0 + Duration::from_secs(3600)));
        // No retry scheduled, so RetryDue is refused; only a Dial re-opens it.
        assert!(c.on(Event::RetryDue, t0, 0.5).is_err());
        assert_eq!(c.state(), ConnState::Disconnected);
        assert_eq!(c.on(Event::Dial, t0, 0.5), Ok(ConnState::Connecting));
        assert_eq!(c.on(Event::Timeout, t0, 0.5), Ok(ConnState::Disconnected));
        assert_eq!(c.next_retry(), None);
    }

    #[test]
    fn graceful_close_schedules_no_retry() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(no_jitter(), true);
        c.on(Event::Dial, t0, 0.5).unwrap();
        c.on(Event::Established, t0, 0.5).unwrap();
        assert_eq!(
            c.on(Event::Closed { graceful: true }, t0, 0.5),
            Ok(ConnState::Disconnected)
        );
        assert_eq!(c.attempt(), 0);
        assert_eq!(c.next_retry(), None);
        assert!(!c.retry_due(t0 + Duration::from_secs(3600)));
        assert!(c.on(Event::RetryDue, t0, 0.5).is_err());
        assert_eq!(c.on(Event::Dial, t0, 0.5), Ok(ConnState::Connecting));
    }

    #[test]
    fn invalid_transitions_are_errors_and_change_nothing() {
        let t0 = Instant::now();
        let events = [
            Event::Dial,
            Event::Established,
            Event::Closed { graceful: true },
            Event::Closed { graceful: false },
            Event::Timeout,
            Event::RetryDue,
            Event::GiveUp,
        ];
        // Drive a machine into each state, then try every event that is not allowed there.
        let reach = |target: ConnState| {
            let mut c = Lifecycle::new(
                BackoffPolicy {
                    attempts: 1,
                    ..no_jitter()
                },
                true,
            );
            let path: &[Event] = match target {
                ConnState::New => &[],
                ConnState::Connecting => &[Event::Dial],
                ConnState::Connected => &[Event::Dial, Event::Established],
                ConnState::Disconnected => &[Event::Dial, Event::Timeout],
                ConnState::Failed => &[Event::Dial, Event::Timeout, Event::GiveUp],
            };
            for ev in path {
                c.on(*ev, t0, 0.5).unwrap();
            }
            assert_eq!(c.state(), target);
            c
        };
        let allowed = |s: ConnState, ev: Event| {
            matches!(
                (s, ev),
                (ConnState::New, Event::Dial)
                    | (ConnState::Connecting, Event::Established)
                    | (
                        ConnState::Connecting | ConnState::Connected,
                        Event::Closed { .. } | Event::Timeout
                    )
                    | (
                        ConnState::Disconnected,
                        Event::RetryDue | Event::Dial | Event::GiveUp
                    )
                    | (ConnState::Failed, Event::Dial)
            )
        };
        let mut rejected = 0;
        for s in ConnState::ALL {
            for ev in events {
                let mut c = reach(s);
                let before = (c.state(), c.attempt(), c.next_retry(), c.transitions());
                let res = c.on(ev, t0, 0.5);
                if allowed(s, ev) {
                    assert!(res.is_ok(), "{s:?} + {ev:?} should be allowed: {res:?}");
                } else {
                    rejected += 1;
                    assert_eq!(
                        res,
                        Err(LifecycleError::InvalidTransition {
                            from: s,
                            event: ev.as_str()
                        })
                    );
                    let after = (c.state(), c.attempt(), c.next_retry(), c.transitions());
                    assert_eq!(before, after, "{s:?} + {ev:?} changed the machine");
                }
            }
        }
        assert!(rejected > 20);
        let msg = reach(ConnState::New)
            .on(Event::Established, t0, 0.5)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("established") && msg.contains("new"), "{msg}");
    }

    #[test]
    fn failed_dial_restarts_with_fresh_attempts() {
        let t0 = Instant::now();
        let policy = BackoffPolicy {
            attempts: 1,
            ..no_jitter()
        };
        let mut c = Lifecycle::new(policy, true);
        c.on(Event::Dial, t0, 0.5).unwrap();
        c.on(Event::Timeout, t0, 0.5).unwrap(); // attempt 1, retry scheduled
        c.on(Event::RetryDue, t0 + ms(100), 0.5).unwrap();
        assert_eq!(c.on(Event::Timeout, t0, 0.5), Ok(ConnState::Failed));
        assert_eq!(c.attempt(), 2);
        assert_eq!(c.on(Event::Dial, t0, 0.5), Ok(ConnState::Connecting));
        assert_eq!(c.attempt(), 0);
        assert_eq!(c.next_retry(), None);
        // The schedule starts over from the initial delay.
        assert_eq!(c.on(Event::Timeout, t0, 0.5), Ok(ConnState::Disconnected));
        assert_eq!(c.attempt(), 1);
        assert_eq!(c.next_retry(), Some(t0 + ms(100)));
    }
}
