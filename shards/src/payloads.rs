//! Reuse of message payload buffers between the messages a node sends and the ones it
//! decodes next, so the per-message path allocates nothing in a steady flow.
//! [`crate::wire::decode_records_pooled`] takes from a pool; drivers give sent payloads
//! back with [`PayloadPool::put`].

/// Payload buffers kept for reuse, so a node that decodes a message, forwards or echoes it
/// and drops it after sealing does not pay an allocation and a free per message: the
/// buffer a sent message leaves behind ([`PayloadPool::put`]) carries the next decoded one
/// ([`crate::wire::decode_records_pooled`]).
///
/// Bounded in count and in bytes: at most `max_buffers` buffers of at most `max_bytes`
/// capacity each. A decoded payload reuses a spare only when the spare is no more than
/// twice its length plus 64 bytes, so a queued message never pins much more memory than
/// its length says, whatever sizes came before.
///
/// ```
/// use shards::wire::{decode_records_pooled, encode_batch, Message, PayloadPool, PeerId, Record};
///
/// let m = |seq| Record::Message(Message { dst: PeerId([1; 16]), src: PeerId([2; 16]), seq, payload: vec![7; 64] });
/// let mut plain = Vec::new();
/// encode_batch(&[m(1), m(2)], &mut plain);
/// let mut pool = PayloadPool::new(16, 4096);
/// pool.put(Vec::with_capacity(64));
/// let (mut at, mut out) = (0, Vec::new());
/// decode_records_pooled(&plain, &mut at, 10, &mut out, &mut pool)?;
/// assert_eq!(out, vec![m(1), m(2)]);
/// assert_eq!(pool.len(), 0); // the spare carries one of the payloads
/// # Ok::<(), shards::wire::WireError>(())
/// ```
#[derive(Debug, Default)]
pub struct PayloadPool {
    spare: Vec<Vec<u8>>,
    max_buffers: usize,
    max_bytes: usize,
}

impl PayloadPool {
    /// A pool keeping at most `max_buffers` buffers of at most `max_bytes` capacity each.
    pub const fn new(max_buffers: usize, max_bytes: usize) -> Self {
        PayloadPool {
            spare: Vec::new(),
            max_buffers,
            max_bytes,
        }
    }

    /// A pool that keeps nothing: every payload is allocated, as without a pool.
    pub const fn none() -> Self {
        PayloadPool::new(0, 0)
    }

    /// Keeps `buf` for reuse if there is room and it is not too large; drops it otherwise.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < self.max_buffers
            && buf.capacity() > 0
            && buf.capacity() <= self.max_bytes
        {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// A buffer holding a copy of `bytes`: the most recent spare if it fits (at least
    /// `bytes.len()`, at most twice that plus 64), a new exact allocation otherwise.
    pub fn copy_of(&mut self, bytes: &[u8]) -> Vec<u8> {
        let fits = |cap: usize| cap >= bytes.len() && cap <= 2 * bytes.len() + 64;
        match self.spare.last() {
            Some(b) if fits(b.capacity()) => {
                let mut b = self.spare.pop().unwrap_or_default();
                b.extend_from_slice(bytes);
                b
            }
            _ => bytes.to_vec(),
        }
    }

    /// Makes `dst` a copy of `bytes` in place: an empty `dst` without capacity takes the
    /// most recent spare if it fits (as [`PayloadPool::copy_of`]); otherwise `dst`'s own
    /// buffer is cleared and filled (allocated if it has none). For a caller filling a
    /// record where it lies, so the buffer is never returned through a temporary.
    ///
    /// ```
    /// use shards::wire::PayloadPool;
    /// let mut pool = PayloadPool::new(4, 1024);
    /// pool.put(Vec::with_capacity(64));
    /// let mut payload = Vec::new();
    /// pool.copy_into(b"hello", &mut payload);
    /// assert_eq!(payload, b"hello");
    /// assert_eq!(payload.capacity(), 64); // the spare
    /// assert!(pool.is_empty());
    /// ```
    pub fn copy_into(&mut self, bytes: &[u8], dst: &mut Vec<u8>) {
        let fits = |cap: usize| cap >= bytes.len() && cap <= 2 * bytes.len() + 64;
        if dst.capacity() == 0
            && self.spare.last().is_some_and(|b| fits(b.capacity()))
            && let Some(b) = self.spare.pop()
        {
            *dst = b;
        }
        dst.clear();
        dst.extend_from_slice(bytes);
    }

    /// Buffers held.
    pub fn len(&self) -> usize {
        self.spare.len()
    }

    /// Whether no buffer is held.
    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }

    /// Bytes of capacity held (at most `max_buffers * max_bytes`).
    pub fn bytes(&self) -> usize {
        self.spare.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_pool_is_bounded_in_count_and_bytes() {
        let mut pool = PayloadPool::new(2, 100);
        pool.put(Vec::with_capacity(50));
        pool.put(Vec::with_capacity(101)); // too large: dropped
        pool.put(Vec::new()); // nothing to reuse: dropped
        pool.put(Vec::with_capacity(60));
        pool.put(Vec::with_capacity(70)); // full: dropped
        assert_eq!(pool.len(), 2);
        assert!(
            pool.bytes() >= 110 && pool.bytes() <= 200,
            "{}",
            pool.bytes()
        );
        assert!(PayloadPool::none().is_empty());
        let mut none = PayloadPool::none();
        none.put(vec![1, 2, 3]);
        assert!(none.is_empty(), "a none pool keeps nothing");
    }

    #[test]
    fn copy_into_takes_a_fitting_spare_or_fills_what_is_there() {
        let mut pool = PayloadPool::new(8, 8192);
        pool.put(Vec::with_capacity(4096));
        // Too small a payload for the 4 KiB spare: a fresh buffer, the spare stays.
        let mut small = Vec::new();
        pool.copy_into(b"0123456789", &mut small);
        assert_eq!(small, b"0123456789");
        assert!(small.capacity() < 4096);
        assert_eq!(pool.len(), 1);
        // One of about its size takes it.
        let big = vec![9u8; 3000];
        let mut got = Vec::new();
        pool.copy_into(&big, &mut got);
        assert_eq!(got, big);
        assert!(got.capacity() >= 4096);
        assert!(pool.is_empty());
        // A destination that has a buffer keeps it: cleared and filled.
        pool.put(Vec::with_capacity(64));
        let mut own = Vec::with_capacity(32);
        own.extend_from_slice(b"old bytes");
        pool.copy_into(b"new", &mut own);
        assert_eq!(own, b"new");
        assert_eq!(pool.len(), 1, "the spare is not taken");
    }

    #[test]
    fn payload_pool_reuses_only_a_spare_that_fits() {
        let mut pool = PayloadPool::new(8, 8192);
        pool.put(Vec::with_capacity(4096));
        // A 10-byte payload must not pin a 4 KiB buffer: a fresh one is allocated.
        let small = pool.copy_of(b"0123456789");
        assert_eq!(small, b"0123456789");
        assert!(small.capacity() < 4096);
        assert_eq!(pool.len(), 1, "the large spare stays for a payload it fits");
        // One of about its size takes it, with the bytes copied exactly.
        let big = vec![9u8; 3000];
        let got = pool.copy_of(&big);
        assert_eq!(got, big);
        assert!(got.capacity() >= 4096);
        assert!(pool.is_empty());
        // A spare that is too small is not grown in place either.
        pool.put(Vec::with_capacity(8));
        assert_eq!(pool.copy_of(&[1; 100]), vec![1; 100]);
        assert_eq!(pool.len(), 1);
    }
}
