//! Shard-local latency and size histograms.
//!
//! A shard records into its own [`Histograms`] with no locking; every publish period it adds
//! them into its shared copy (one short parking_lot lock) and clears the local one. Readers
//! lock the shared copies and merge them across shards.

use std::sync::Arc;

use hdrhistogram::Histogram;

/// Highest value tracked for durations: one hour in nanoseconds.
const MAX_NANOS: u64 = 3_600_000_000_000;

/// The histograms every shard keeps.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Nanoseconds a message waited in its destination's batch queue before being sealed.
    pub queue_delay_ns: Histogram<u64>,
    /// Nanoseconds from a relayed message's receipt to its batch leaving the shard.
    pub relay_delay_ns: Histogram<u64>,
    /// Messages per sealed batch.
    pub batch_size: Histogram<u64>,
    /// Nanoseconds from a connection's first packet to the end of the Noise handshake.
    pub handshake_ns: Histogram<u64>,
    /// Nanoseconds a datagram waited in the kernel's socket receive queue before the shard
    /// read it (one datagram in 64 is measured).
    pub receive_delay_ns: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_hist() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; fall back to auto-resizing otherwise.
    Histogram::new_with_bounds(1, MAX_NANOS, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is valid"));
        h.auto(true);
        h
    })
}

impl Histograms {
    /// Empty histograms.
    pub fn new() -> Self {
        Histograms {
            queue_delay_ns: duration_hist(),
            relay_delay_ns: duration_hist(),
            batch_size: Histogram::new_with_bounds(1, 1 << 20, 3)
                .unwrap_or_else(|_| duration_hist()),
            handshake_ns: duration_hist(),
            receive_delay_ns: duration_hist(),
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Histograms) {
        // Same bounds on both sides, so `add` cannot fail; values beyond are saturated.
        let _ = self.queue_delay_ns.add(&other.queue_delay_ns);
        let _ = self.relay_delay_ns.add(&other.relay_delay_ns);
        let _ = self.batch_size.add(&other.batch_size);
        let _ = self.handshake_ns.add(&other.handshake_ns);
        let _ = self.receive_delay_ns.add(&other.receive_delay_ns);
    }

    /// Empties every histogram.
    pub fn clear(&mut self) {
        self.queue_delay_ns.reset();
        self.relay_delay_ns.reset();
        self.batch_size.reset();
        self.handshake_ns.reset();
        self.receive_delay_ns.reset();
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.queue_delay_ns.is_empty()
            && self.relay_delay_ns.is_empty()
            && self.batch_size.is_empty()
            && self.handshake_ns.is_empty()
            && self.receive_delay_ns.is_empty()
    }
}

/// A shard's published histograms, shared with readers.
pub type SharedHistograms = Arc<parking_lot::Mutex<Histograms>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_clear() {
        let mut a = Histograms::new();
        let mut b = Histograms::new();
        b.queue_delay_ns.saturating_record(1_000);
        b.batch_size.saturating_record(128);
        a.add(&b);
        a.add(&b);
        assert_eq!(a.queue_delay_ns.len(), 2);
        assert_eq!(a.batch_size.max(), 128);
        a.clear();
        assert!(a.is_empty());
    }
}
