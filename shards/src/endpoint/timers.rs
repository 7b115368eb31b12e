//! Deadlines ordered by time: a binary heap of (deadline, key) with lazy invalidation, so
//! a wake-up looks only at what is due instead of scanning every connection.
//!
//! Each key has at most one armed deadline. Re-arming pushes a new heap entry and leaves
//! the old one behind; stale entries are skipped when they surface and the heap is rebuilt
//! when they outnumber the live ones, so memory stays proportional to the keys.

use super::Map;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Instant;

use super::conns::ConnKey;

/// What a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum TimerKey {
    /// A connection: QUIC timers, batch timeout, keep-alive, TTL, stall, removal.
    Conn(ConnKey),
    /// A dialed peer's reconnection backoff.
    Redial(SocketAddr),
}

/// Deadlines by key, ordered by time.
#[derive(Debug)]
pub(super) struct Timers<K: Ord + Hash + Copy> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    armed: Map<K, Instant>,
}

impl<K: Ord + Hash + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            armed: Map::default(),
        }
    }
}

impl<K: Ord + Hash + Copy> Timers<K> {
    /// Arms `key` at `at`, or disarms it with `None`. Setting the same deadline again is free.
    pub(super) fn set(&mut self, key: K, at: Option<Instant>) {
        match at {
            None => {
                self.armed.remove(&key);
            }
            Some(t) => {
                if self.armed.insert(key, t) == Some(t) {
                    return;
                }
                self.heap.push(Reverse((t, key)));
                if self.heap.len() > 2 * self.armed.len() + 64 {
                    self.rebuild();
                }
            }
        }
    }

    /// Disarms `key`.
    pub(super) fn cancel(&mut self, key: K) {
        self.set(key, None);
    }

    /// The earliest armed deadline.
    pub(super) fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, k))) = self.heap.peek().copied() {
            if self.armed.get(&k) == Some(&t) {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }

    /// Disarms and returns every key due at `now`, earliest first.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(Reverse((t, k))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            if self.armed.get(&k) == Some(&t) {
                self.armed.remove(&k);
                due.push(k);
            }
        }
        due
    }

    /// Keys armed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.armed.len()
    }

    fn rebuild(&mut self) {
        self.heap = self.armed.iter().map(|(k, t)| Reverse((*t, *k))).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_in_deadline_order_and_skips_rearmed_keys() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t: Timers<u64> = Timers::default();
        t.set(1, Some(t0 + ms(30)));
        t.set(2, Some(t0 + ms(10)));
        t.set(3, Some(t0 + ms(20)));
        // Re-armed later: its old deadline must not fire.
        t.set(2, Some(t0 + ms(40)));
        t.cancel(3);
        assert_eq!(t.next(), Some(t0 + ms(30)));
        assert_eq!(t.expired(t0 + ms(35)), vec![1]);
        assert_eq!(t.expired(t0 + ms(35)), Vec::<u64>::new());
        assert_eq!(t.next(), Some(t0 + ms(40)));
        assert_eq!(t.expired(t0 + ms(100)), vec![2]);
        assert_eq!(t.next(), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn heap_stays_proportional_to_armed_keys() {
        let t0 = Instant::now();
        let mut t: Timers<u64> = Timers::default();
        for i in 0..10_000u64 {
            t.set(i % 4, Some(t0 + Duration::from_micros(i)));
        }
        assert!(
            t.heap.len() <= 2 * 4 + 64 + 1,
            "heap grew to {}",
            t.heap.len()
        );
        assert_eq!(t.len(), 4);
        let due = t.expired(t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 4);
    }
}
