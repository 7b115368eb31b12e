//! Flush policy for per-destination batch queues (pure logic, time passed in).
//!
//! Batching amortises one AEAD operation and one stream write over many messages. A queue
//! flushes when it holds `max_messages` items, or `max_bytes` bytes, or when `timeout` has
//! passed since its oldest item was queued, bounding the latency batching adds. Time is
//! always a parameter, so the policy is testable without sleeping and the shard decides how
//! to wait (its timer wheel arms [`BatchQueue::deadline`]).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use shards::batch::{BatchPolicy, BatchQueue};
//!
//! let policy = BatchPolicy { max_messages: 2, max_bytes: 1024, timeout: Duration::from_millis(5) };
//! let mut q = BatchQueue::new(policy);
//! let t0 = Instant::now();
//! q.push("a", 10, t0);
//! assert!(!q.is_due(t0));
//! assert_eq!(q.deadline(), Some(t0 + Duration::from_millis(5)));
//! assert!(q.is_due(t0 + Duration::from_millis(5)));
//! q.push("b", 10, t0 + Duration::from_millis(1));
//! assert!(q.is_due(t0)); // max_messages reached
//! let batch = q.pop_batch();
//! assert_eq!(batch.iter().map(|(m, _)| *m).collect::<Vec<_>>(), ["a", "b"]);
//! assert!(q.is_empty());
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits that decide when a [`BatchQueue`] flushes and how much one batch takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Flush once this many items are queued; also the most items one batch takes
    /// (0 behaves like 1).
    pub max_messages: usize,
    /// Flush once the queued sizes sum to this; also the most bytes one batch takes, except
    /// that a batch always takes at least one item.
    pub max_bytes: usize,
    /// Flush once the oldest item has waited this long. Zero means "flush at the end of the
    /// current processing turn": the queue is due whenever it is non-empty.
    pub timeout: Duration,
}

impl Default for BatchPolicy {
    /// 128 messages, 256 KiB, 50 ms: large enough to amortise sealing, small enough to keep
    /// batches well under the 16 MiB frame limit and latency bounded.
    fn default() -> Self {
        BatchPolicy {
            max_messages: 128,
            max_bytes: 256 * 1024,
            timeout: Duration::from_millis(50),
        }
    }
}

/// Pops the front of a FIFO and, when that empties it, rewinds its ring to the start of
/// the buffer. `VecDeque::pop_front` leaves the ring's head where it was, so a queue whose
/// capacity grew in one burst would walk its whole buffer afterwards, every push landing on
/// a cold cache line, though it never holds more than a few items; rewound, a short queue
/// stays on the same few lines.
pub(crate) fn pop_front_rewound<T>(q: &mut VecDeque<T>) -> Option<T> {
    let item = q.pop_front();
    if q.is_empty() {
        // Empty: clear() only moves the head back to slot 0.
        q.clear();
    }
    item
}

/// Shard-local FIFO queue for one destination, with the flush policy of [`BatchPolicy`].
///
/// Each item carries the size it counts for (typically its encoded record length) and the
/// instant it was queued, which [`BatchQueue::pop_batch`] hands back so callers can record
/// queueing delay.
///
/// ```
/// use std::time::{Duration, Instant};
/// use shards::batch::{BatchPolicy, BatchQueue};
///
/// let mut q = BatchQueue::new(BatchPolicy { max_messages: 10, max_bytes: 100, timeout: Duration::ZERO });
/// let t = Instant::now();
/// assert!(!q.is_due(t));
/// q.push(1u32, 60, t);
/// q.push(2u32, 60, t);
/// assert!(q.is_due(t)); // timeout zero: due as soon as non-empty
/// assert_eq!(q.pop_batch().len(), 1); // 60 + 60 > 100: second item waits
/// assert_eq!(q.bytes(), 60);
/// ```
#[derive(Debug, Clone)]
pub struct BatchQueue<T> {
    policy: BatchPolicy,
    items: VecDeque<(T, usize, Instant)>,
    bytes: usize,
}

impl<T> BatchQueue<T> {
    /// An empty queue using `policy`.
    pub fn new(policy: BatchPolicy) -> Self {
        BatchQueue {
            policy,
            items: VecDeque::new(),
            bytes: 0,
        }
    }

    /// The policy this queue flushes by.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Queues `item`, counting `size` bytes towards `max_bytes`, enqueued at `now`.
    ///
    /// `now` should not go backwards between pushes; the deadline is taken from the front
    /// (oldest) item.
    pub fn push(&mut self, item: T, size: usize, now: Instant) {
        self.bytes = self.bytes.saturating_add(size);
        self.items.push_back((item, size, now));
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sum of the sizes of the queued items.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Enqueue instant of the oldest item (None when empty).
    pub fn oldest(&self) -> Option<Instant> {
        self.items.front().map(|(_, _, t)| *t)
    }

    /// Whether a flush is due now: a size limit is reached, the timeout is zero, or the
    /// oldest item's deadline is `<= now`. Never due when empty.
    pub fn is_due(&self, now: Instant) -> bool {
        if self.items.is_empty() {
            return false;
        }
        if self.items.len() >= self.policy.max_messages.max(1)
            || self.bytes >= self.policy.max_bytes
            || self.policy.timeout.is_zero()
        {
            return true;
        }
        self.deadline().is_some_and(|d| d <= now)
    }

    /// When the oldest item's timeout expires, for arming a timer (None when empty, or when
    /// the timeout is too large to represent as an `Instant`).
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest()?.checked_add(self.policy.timeout)
    }

    /// Removes the next batch, oldest first: up to `max_messages` items and, past the first
    /// item, no more than `max_bytes` in total. Each item comes with its enqueue instant.
    pub fn pop_batch(&mut self) -> Vec<(T, Instant)> {
        let mut out = Vec::new();
        self.pop_batch_into(&mut out);
        out
    }

    /// Like [`BatchQueue::pop_batch`] but appends to `out`, so callers can reuse one
    /// allocation across flushes. Returns the number of items appended.
    pub fn pop_batch_into(&mut self, out: &mut Vec<(T, Instant)>) -> usize {
        let n = self.next_batch_len();
        self.pop_front_n(n, |item, at| out.push((item, at)));
        n
    }

    /// How many items the next batch takes, oldest first: up to `max_messages` items and,
    /// past the first item, no more than `max_bytes` in total (what
    /// [`BatchQueue::pop_batch`] would remove).
    pub fn next_batch_len(&self) -> usize {
        let max_messages = self.policy.max_messages.max(1);
        let mut taken = 0usize;
        let mut taken_bytes = 0usize;
        for (_, size, _) in self.items.iter().take(max_messages) {
            let total = taken_bytes.saturating_add(*size);
            if taken > 0 && total > self.policy.max_bytes {
                break;
            }
            taken_bytes = total;
            taken += 1;
        }
        taken
    }

    /// The oldest `n` items with their enqueue instants, left in the queue: a caller can
    /// encode a batch from where its items lie and then drop them with
    /// [`BatchQueue::pop_front_n`], instead of moving each out first.
    ///
    /// ```
    /// use shards::batch::{BatchPolicy, BatchQueue};
    /// use std::time::{Duration, Instant};
    /// let mut q = BatchQueue::new(BatchPolicy { max_messages: 2, max_bytes: 1 << 20, timeout: Duration::ZERO });
    /// let now = Instant::now();
    /// for word in ["a", "b", "c"] {
    ///     q.push(word, 1, now);
    /// }
    /// let n = q.next_batch_len();
    /// let batch: String = q.front_items(n).map(|(w, _)| *w).collect();
    /// assert_eq!(batch, "ab");
    /// q.pop_front_n(n, |_, _| {});
    /// assert_eq!(q.len(), 1);
    /// ```
    pub fn front_items(&self, n: usize) -> impl Iterator<Item = (&T, Instant)> + '_ {
        self.items.iter().take(n).map(|(item, _, at)| (item, *at))
    }

    /// Removes the oldest `n` items (fewer if fewer are queued), handing each with its
    /// enqueue instant to `f`, oldest first.
    pub fn pop_front_n(&mut self, n: usize, mut f: impl FnMut(T, Instant)) {
        for _ in 0..n {
            let Some((item, size, at)) = pop_front_rewound(&mut self.items) else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(size);
            f(item, at);
        }
    }

    /// Removes every queued item, oldest first (e.g. to answer them with errors on
    /// shutdown or when the destination goes away).
    pub fn drain_all(&mut self) -> impl Iterator<Item = (T, Instant)> + '_ {
        self.bytes = 0;
        self.items.drain(..).map(|(item, _, at)| (item, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(max_messages: usize, max_bytes: usize, timeout: Duration) -> BatchPolicy {
        BatchPolicy {
            max_messages,
            max_bytes,
            timeout,
        }
    }

    fn items<T: Copy>(b: &[(T, Instant)]) -> Vec<T> {
        b.iter().map(|(x, _)| *x).collect()
    }

    #[test]
    fn default_policy() {
        let p = BatchPolicy::default();
        assert_eq!(p.max_messages, 128);
        assert_eq!(p.max_bytes, 256 * 1024);
        assert_eq!(p.timeout, ms(50));
    }

    #[test]
    fn flush_on_message_count() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(3, 1 << 20, ms(100)));
        assert_eq!(q.policy().max_messages, 3);
        q.push(1, 1, t);
        q.push(2, 1, t);
        assert!(!q.is_due(t));
        q.push(3, 1, t);
        assert!(q.is_due(t));
        q.push(4, 1, t);
        let b = q.pop_batch();
        assert_eq!(items(&b), vec![1, 2, 3]);
        assert_eq!(q.len(), 1);
        assert!(!q.is_due(t));
    }

    #[test]
    fn flush_on_bytes() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(100, 1000, ms(100)));
        q.push('a', 400, t);
        q.push('b', 500, t);
        assert_eq!(q.bytes(), 900);
        assert!(!q.is_due(t));
        q.push('c', 100, t);
        assert!(q.is_due(t));
        q.push('d', 10, t);
        let b = q.pop_batch();
        assert_eq!(items(&b), vec!['a', 'b', 'c']);
        assert_eq!(q.bytes(), 10);
        assert!(!q.is_due(t));
    }

    #[test]
    fn oversized_first_item_still_flushes_alone() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(100, 1000, ms(100)));
        q.push(1, 5000, t);
        q.push(2, 1, t);
        assert!(q.is_due(t));
        assert_eq!(items(&q.pop_batch()), vec![1]);
        assert_eq!(items(&q.pop_batch()), vec![2]);
        assert!(q.pop_batch().is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn flush_on_timeout() {
        let base = Instant::now();
        let mut q = BatchQueue::new(policy(100, 1 << 20, ms(50)));
        assert_eq!(q.deadline(), None);
        assert!(!q.is_due(base + ms(1000)));
        q.push(1, 10, base + ms(10));
        assert_eq!(q.deadline(), Some(base + ms(60)));
        assert!(!q.is_due(base + ms(10)));
        assert!(!q.is_due(base + ms(59)));
        assert!(q.is_due(base + ms(60)));
        assert!(q.is_due(base + ms(61)));
    }

    #[test]
    fn deadline_tracks_oldest() {
        let base = Instant::now();
        let mut q = BatchQueue::new(policy(2, 1 << 20, ms(50)));
        q.push(1, 1, base);
        q.push(2, 1, base + ms(30));
        q.push(3, 1, base + ms(40));
        assert_eq!(q.oldest(), Some(base));
        assert_eq!(q.deadline(), Some(base + ms(50)));
        let b = q.pop_batch();
        assert_eq!(b, vec![(1, base), (2, base + ms(30))]);
        assert_eq!(q.deadline(), Some(base + ms(90)));
        assert!(!q.is_due(base + ms(89)));
        assert!(q.is_due(base + ms(90)));
        q.pop_batch();
        assert_eq!(q.deadline(), None);
    }

    #[test]
    fn timeout_zero_is_due_when_non_empty() {
        let base = Instant::now();
        let mut q = BatchQueue::new(policy(100, 1 << 20, Duration::ZERO));
        assert!(!q.is_due(base));
        q.push(1, 1, base + ms(5));
        // Due even if `now` is earlier than the enqueue instant.
        assert!(q.is_due(base));
        assert_eq!(q.deadline(), Some(base + ms(5)));
        q.pop_batch();
        assert!(!q.is_due(base + ms(10)));
    }

    #[test]
    fn pop_batch_limits() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(4, 100, ms(1)));
        for i in 0..10 {
            q.push(i, 10, t);
        }
        assert_eq!(items(&q.pop_batch()), vec![0, 1, 2, 3]);
        // Byte limit binds before count limit.
        let mut q = BatchQueue::new(policy(10, 25, ms(1)));
        for i in 0..5 {
            q.push(i, 10, t);
        }
        assert_eq!(items(&q.pop_batch()), vec![0, 1]);
        assert_eq!(q.bytes(), 30);
        // Exactly max_bytes fits.
        let mut q = BatchQueue::new(policy(10, 30, ms(1)));
        for i in 0..5 {
            q.push(i, 10, t);
        }
        assert_eq!(items(&q.pop_batch()), vec![0, 1, 2]);
        // max_messages 0 behaves like 1.
        let mut q = BatchQueue::new(policy(0, 30, ms(1)));
        q.push(7, 1, t);
        assert!(q.is_due(t));
        assert_eq!(items(&q.pop_batch()), vec![7]);
    }

    #[test]
    fn fifo_order_and_pop_into_reuse() {
        let base = Instant::now();
        let mut q = BatchQueue::new(policy(3, 1 << 20, ms(50)));
        for i in 0..8u64 {
            q.push(i, 1, base + ms(i));
        }
        let mut out = Vec::with_capacity(3);
        let mut seen = Vec::new();
        while !q.is_empty() {
            out.clear();
            let n = q.pop_batch_into(&mut out);
            assert_eq!(n, out.len());
            assert!(n <= 3);
            for (i, at) in &out {
                assert_eq!(*at, base + ms(*i));
                seen.push(*i);
            }
        }
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn an_emptied_fifo_starts_again_at_the_front_of_its_buffer() {
        // A ring of capacity 8 whose head has moved 5 slots: 5 more items would wrap
        // (slots 5, 6, 7, 0, 1); rewound when emptied, they sit in slots 0-4.
        let mut plain: VecDeque<u32> = VecDeque::with_capacity(8);
        let mut rewound: VecDeque<u32> = VecDeque::with_capacity(8);
        let cap = plain.capacity();
        assert_eq!(rewound.capacity(), cap);
        for q in [&mut plain, &mut rewound] {
            q.extend(0..5);
        }
        for _ in 0..5 {
            plain.pop_front();
            pop_front_rewound(&mut rewound);
        }
        for q in [&mut plain, &mut rewound] {
            q.extend(0..u32::try_from(cap - 3).unwrap());
        }
        assert!(
            !plain.as_slices().1.is_empty(),
            "plain pop_front leaves the head behind"
        );
        assert!(rewound.as_slices().1.is_empty());
        assert_eq!(rewound.capacity(), cap);
        assert_eq!(pop_front_rewound(&mut rewound), Some(0));
        // Not empty yet: nothing moves.
        assert_eq!(rewound.front(), Some(&1));
    }

    #[test]
    fn drain_all_empties() {
        let t = Instant::now();
        let mut q = BatchQueue::new(BatchPolicy::default());
        q.push("x", 5, t);
        q.push("y", 5, t);
        let all: Vec<_> = q.drain_all().map(|(x, _)| x).collect();
        assert_eq!(all, vec!["x", "y"]);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.deadline(), None);
    }
}
