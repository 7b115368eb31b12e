//! When each of a connection's messages is due.

use std::time::Duration;

/// One connection's open-loop schedule: `rate` messages per second, offset by `phase` of
/// one interval, so that connection `i` of `n` sends `i/n` of an interval after the first.
/// Interleaved this way, the connections together offer one message every `1/(n*rate)`
/// seconds; in phase, they would offer bursts of `n` messages at once, and the latency
/// measured would be the burst's queueing rather than the node's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    /// Nanoseconds between two of this connection's messages (1e9 / rate).
    pub(super) interval_ns: f64,
    pub(super) phase: f64,
}

impl Schedule {
    /// Connection `i` of `n`, `rate` messages per second each.
    pub(super) fn new(rate: f64, i: usize, n: usize) -> Self {
        Schedule {
            interval_ns: 1e9 / rate,
            phase: i as f64 / n.max(1) as f64,
        }
    }

    /// When message `seq` is due, counted from the run's origin. A multiplication and a
    /// saturating conversion to whole nanoseconds: it runs twice for every message sent.
    pub(super) fn due(&self, seq: u64) -> Duration {
        // Rounded to the nearest nanosecond (the value is never negative).
        Duration::from_nanos(((seq as f64 + self.phase) * self.interval_ns + 0.5) as u64)
    }

    /// The first message due at or after `t`: the inverse of [`Schedule::due`], so a
    /// generator far behind its schedule skips what it refuses in one step instead of one
    /// message at a time. The float estimate is off by a step or two at most (sequence
    /// numbers stay far below 2^53 within the harness's rate and duration bounds); `due`
    /// never decreases, so stepping from the estimate settles on the exact answer.
    pub(super) fn first_due_from(&self, t: Duration) -> u64 {
        let guess = (t.as_nanos() as f64 / self.interval_ns - self.phase).floor() - 1.0;
        // Negative or NaN (an infinite interval) start at 0.
        let mut k = if guess > 0.0 { guess as u64 } else { 0 };
        while k > 0 && self.due(k - 1) >= t {
            k -= 1;
        }
        while k < u64::MAX && self.due(k) < t {
            k += 1;
        }
        k
    }
}
