//! Sealed frames: ChaCha20-Poly1305 over each batch plaintext, one counter per direction.
//!
//! After the handshake, each direction of the session stream is a sequence of frames:
//! `len: u32 BE` (L = ciphertext + 16-byte tag, `16 <= L <= 16 MiB`) then L bytes sealed
//! under that direction's key with the 4 length bytes as associated data. The nonce is
//! `0x00000000 || counter as u64 little-endian` (Noise's ChaChaPoly layout); the counter starts
//! at 0, increments once per frame and is never reused. The receiver tracks the same counter,
//! so a replayed, reordered, tampered or truncated frame fails to authenticate.
//!
//! The AEAD hides and authenticates the batch; the explicit counter on both sides gives replay
//! and reorder protection without sending the nonce. Errors are values ([`SealError`]); a
//! failed open means the connection must be closed (`close_code::SEAL_FAILED`).
//!
//! ```
//! use shards::seal::{frame_len, Opener, SealKey, Sealer, HEADER_LEN};
//!
//! let mut sealer = Sealer::new(SealKey::from_bytes([7; 32]));
//! let mut opener = Opener::new(SealKey::from_bytes([7; 32]));
//!
//! let mut wire = Vec::new();
//! sealer.seal_into(b"batch plaintext", &mut wire)?;
//!
//! // Receiver: read 4 header bytes, check the length, read the body, open it in place.
//! let (header, body) = wire.split_at_mut(HEADER_LEN);
//! let header: [u8; 4] = [header[0], header[1], header[2], header[3]];
//! assert_eq!(frame_len(header)?, body.len());
//! let n = opener.open_in_place(header, body)?;
//! assert_eq!(&body[..n], b"batch plaintext");
//! assert_eq!((sealer.counter(), opener.counter()), (1, 1));
//! # Ok::<(), shards::seal::SealError>(())
//! ```
#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::atomic::{Ordering, compiler_fence};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of the Poly1305 tag at the end of every sealed body.
pub const TAG_LEN: usize = 16;
/// Length of the frame header (the big-endian `u32` body length).
pub const HEADER_LEN: usize = 4;
/// Largest allowed body length L (ciphertext + tag): 16 MiB, bounding receive buffers.
pub const MAX_SEALED_LEN: usize = 16 * 1024 * 1024;
/// Largest plaintext that fits in one frame.
pub const MAX_PLAINTEXT_LEN: usize = MAX_SEALED_LEN - TAG_LEN;
/// Length of a [`SealKey`].
pub const KEY_LEN: usize = 32;
/// Length of the AEAD nonce.
pub const NONCE_LEN: usize = 12;

/// One direction's 32-byte ChaCha20-Poly1305 key.
///
/// Zeroized on drop and never printed by `Debug`, so key material does not linger in memory
/// or leak into logs.
///
/// ```
/// use shards::seal::SealKey;
///
/// let key = SealKey::from_bytes([0x42; 32]);
/// assert!(!format!("{key:?}").contains("42"));
/// ```
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SealKey([u8; KEY_LEN]);

impl SealKey {
    /// Wraps raw key bytes (e.g. split from the handshake's cipher state).
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        SealKey(b)
    }

    fn cipher(&self) -> Cipher {
        Cipher::new(&self.0)
    }
}

/// ring's ChaCha20-Poly1305 key, overwritten with zeros when dropped.
///
/// ring is the AEAD because it is the fastest measured (`cargo bench -p shards --bench seal
/// -- aead`: about 10x RustCrypto's per 64-byte frame, 2x per 128 KiB), but ring does not
/// zeroize its keys. This wrapper does: the key is never dropped as a `LessSafeKey` (it owns no
/// heap memory and has no destructor, checked below at compile time); its bytes are
/// overwritten in place instead. It lives on the heap (ring's key type is over 500 bytes, as
/// it can hold an AES schedule), so the sessions holding it stay small and it is never moved.
struct Cipher(Box<ManuallyDrop<LessSafeKey>>);

// Overwriting instead of dropping is only equivalent if dropping would do nothing.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

impl Cipher {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        match UnboundKey::new(&CHACHA20_POLY1305, key) {
            Ok(k) => Cipher(Box::new(ManuallyDrop::new(LessSafeKey::new(k)))),
            // ring rejects only a key of the wrong length; KEY_LEN is the algorithm's.
            Err(_) => unreachable!("a {KEY_LEN}-byte key is a valid ChaCha20-Poly1305 key"),
        }
    }

    fn key(&self) -> &LessSafeKey {
        &self.0
    }

    /// Overwrites every byte of the key schedule with zeros. The key must not be used after.
    fn wipe(&mut self) {
        let p = (&mut **self.0 as *mut LessSafeKey).cast::<u8>();
        for i in 0..std::mem::size_of::<LessSafeKey>() {
            // SAFETY: `p .. p + size_of::<LessSafeKey>()` is the memory of a value this
            // function borrows mutably, so the writes are in bounds and unaliased. The zeroed
            // value is never read as a `LessSafeKey` again: it sits in a `ManuallyDrop` that is
            // not dropped, and `wipe` is called only from `drop`.
            unsafe { std::ptr::write_volatile(p.add(i), 0) };
        }
        compiler_fence(Ordering::SeqCst);
    }
}

impl Drop for Cipher {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

/// Why a frame could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum SealError {
    /// The frame length L (ciphertext + tag) would exceed [`MAX_SEALED_LEN`].
    #[error("sealed frame length {len} exceeds {MAX_SEALED_LEN}")]
    TooLarge {
        /// The offending frame length L.
        len: usize,
    },
    /// The frame length L is smaller than the tag.
    #[error("sealed frame length {len} is shorter than the {TAG_LEN}-byte tag")]
    TooShort {
        /// The offending frame length L.
        len: usize,
    },
    /// The counter reached `u64::MAX`; the direction must not send or receive more frames.
    #[error("frame counter exhausted")]
    CounterExhausted,
    /// The frame is tampered, replayed, reordered or truncated (or its body length does not
    /// match its header).
    #[error("sealed frame failed authentication")]
    Authentication,
}

/// Parses a frame header into the body length L, rejecting lengths outside
/// `TAG_LEN..=MAX_SEALED_LEN` before the receiver buffers anything.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, SealError> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > MAX_SEALED_LEN {
        Err(SealError::TooLarge { len })
    } else if len < TAG_LEN {
        Err(SealError::TooShort { len })
    } else {
        Ok(len)
    }
}

/// The 12-byte nonce for `counter`: four zero bytes then the counter little-endian.
pub fn nonce_bytes(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    let (_, tail) = n.split_at_mut(NONCE_LEN - 8);
    tail.copy_from_slice(&counter.to_le_bytes());
    n
}

/// Sending side of one direction: seals frames with an incrementing counter.
///
/// ```
/// use shards::seal::{SealKey, Sealer, HEADER_LEN, TAG_LEN};
///
/// let mut s = Sealer::new(SealKey::from_bytes([1; 32]));
/// let mut out = Vec::new();
/// s.seal_into(b"abc", &mut out)?;
/// assert_eq!(out.len(), HEADER_LEN + 3 + TAG_LEN);
/// assert_eq!(&out[..4], &[0, 0, 0, 19]);
/// # Ok::<(), shards::seal::SealError>(())
/// ```
pub struct Sealer {
    cipher: Cipher,
    counter: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer whose first frame uses counter 0.
    pub fn new(key: SealKey) -> Self {
        Self::with_counter(key, 0)
    }

    /// A sealer whose next frame uses `counter` (for test vectors and resumption tests).
    pub fn with_counter(key: SealKey, counter: u64) -> Self {
        Sealer {
            cipher: key.cipher(),
            counter,
        }
    }

    /// Appends header + ciphertext + tag for `plaintext` to `out`, in one AEAD operation
    /// encrypting in place inside `out` (no intermediate buffer).
    ///
    /// On error `out`'s length and bytes and the counter are unchanged (its capacity may
    /// have grown).
    pub fn seal_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SealError::TooLarge {
                len: plaintext.len().saturating_add(TAG_LEN),
            });
        }
        let start = out.len();
        out.reserve(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(plaintext);
        self.seal_tail(out, start)
    }

    /// Seals in place the plaintext a caller wrote into `out` after reserving
    /// [`HEADER_LEN`] bytes at `start`: fills in the header, encrypts
    /// `out[start + HEADER_LEN..]` and appends the tag. A batch encoded straight into the
    /// outgoing buffer this way is never copied before it is sealed.
    ///
    /// On error `out` is truncated back to `start` and the counter is unchanged. Fewer than
    /// [`HEADER_LEN`] bytes after `start` is the caller's error, [`SealError::TooShort`].
    ///
    /// ```
    /// use shards::seal::{HEADER_LEN, SealKey, Sealer};
    /// let mut sealer = Sealer::new(SealKey::from_bytes([7; 32]));
    /// let mut out = b"earlier bytes".to_vec();
    /// let start = out.len();
    /// out.extend_from_slice(&[0; HEADER_LEN]);
    /// out.extend_from_slice(b"a batch plaintext");
    /// sealer.seal_tail(&mut out, start).unwrap();
    /// let mut same = Vec::new();
    /// Sealer::new(SealKey::from_bytes([7; 32])).seal_into(b"a batch plaintext", &mut same).unwrap();
    /// assert_eq!(&out[start..], &same[..]);
    /// ```
    pub fn seal_tail(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), SealError> {
        let body_at = start.saturating_add(HEADER_LEN);
        let Some(plain_len) = out.len().checked_sub(body_at) else {
            // The caller reserved no room for the header: reported as a frame too short to
            // hold one.
            let len = out.len().saturating_sub(start);
            out.truncate(start);
            return Err(SealError::TooShort { len });
        };
        if plain_len > MAX_PLAINTEXT_LEN {
            out.truncate(start);
            return Err(SealError::TooLarge {
                len: plain_len.saturating_add(TAG_LEN),
            });
        }
        if self.counter == u64::MAX {
            out.truncate(start);
            return Err(SealError::CounterExhausted);
        }
        let sealed_len = plain_len + TAG_LEN;
        let header = match u32::try_from(sealed_len) {
            Ok(n) => n.to_be_bytes(),
            Err(_) => {
                out.truncate(start);
                return Err(SealError::TooLarge { len: sealed_len });
            }
        };
        let nonce = Nonce::assume_unique_for_key(nonce_bytes(self.counter));
        let tag = match out.get_mut(start..) {
            Some(frame) => {
                let (head, body) = frame.split_at_mut(HEADER_LEN.min(frame.len()));
                head.copy_from_slice(&header);
                self.cipher
                    .key()
                    .seal_in_place_separate_tag(nonce, Aad::from(header), body)
                    .ok()
            }
            None => None,
        };
        match tag {
            Some(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.counter += 1;
                Ok(())
            }
            None => {
                // Unreachable for lengths within MAX_PLAINTEXT_LEN; leave no partial frame.
                out.truncate(start);
                Err(SealError::TooLarge { len: sealed_len })
            }
        }
    }

    /// Counter the next frame will use (equals the number of frames sealed from 0).
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

/// Receiving side of one direction: opens frames expecting consecutive counters.
///
/// ```
/// use shards::seal::{Opener, SealError, SealKey, Sealer};
///
/// let mut s = Sealer::new(SealKey::from_bytes([1; 32]));
/// let mut o = Opener::new(SealKey::from_bytes([1; 32]));
/// let mut frame = Vec::new();
/// s.seal_into(b"abc", &mut frame)?;
/// let header = [frame[0], frame[1], frame[2], frame[3]];
/// let mut replay = frame[4..].to_vec();
/// assert_eq!(o.open_in_place(header, &mut frame[4..])?, 3);
/// assert_eq!(o.open_in_place(header, &mut replay), Err(SealError::Authentication));
/// # Ok::<(), SealError>(())
/// ```
pub struct Opener {
    cipher: Cipher,
    counter: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener expecting counter 0 first.
    pub fn new(key: SealKey) -> Self {
        Self::with_counter(key, 0)
    }

    /// An opener expecting `counter` next (for test vectors).
    pub fn with_counter(key: SealKey, counter: u64) -> Self {
        Opener {
            cipher: key.cipher(),
            counter,
        }
    }

    /// Authenticates and decrypts one frame in place.
    ///
    /// `header` is the 4 length bytes and `body` the L bytes (ciphertext + tag) that followed.
    /// Returns the plaintext length n; the plaintext is `body[..n]`. The counter advances only
    /// on success; on failure the contents of `body` are unspecified (never plaintext that
    /// failed authentication to be used) and the connection must be closed.
    pub fn open_in_place(
        &mut self,
        header: [u8; HEADER_LEN],
        body: &mut [u8],
    ) -> Result<usize, SealError> {
        let len = frame_len(header)?;
        if body.len() != len {
            return Err(SealError::Authentication);
        }
        if self.counter == u64::MAX {
            return Err(SealError::CounterExhausted);
        }
        let nonce = Nonce::assume_unique_for_key(nonce_bytes(self.counter));
        let n = self
            .cipher
            .key()
            .open_in_place(nonce, Aad::from(header), body)
            .map_err(|_| SealError::Authentication)?
            .len();
        self.counter += 1;
        Ok(n)
    }

    /// Counter the next frame must have been sealed with.
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

/// The two records of the documented seal test vector (docs/PROTOCOL.md, section 14),
/// shared by this module's tests and the check of the protocol document.
#[cfg(test)]
pub(crate) fn vector_records() -> Vec<crate::wire::Record> {
    use crate::wire::{ErrorCode, ErrorRecord, Message, PeerId, Record};
    vec![
        Record::Message(Message {
            dst: PeerId([0x11; 16]),
            src: PeerId([0x22; 16]),
            seq: 1,
            payload: b"hello".to_vec(),
        }),
        Record::Error(ErrorRecord {
            code: ErrorCode::UnknownDestination,
            seq: 2,
            dst: PeerId([0x33; 16]),
            reason: "no route".to_owned(),
        }),
    ]
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::wire::encode_batch;

    fn key(b: u8) -> SealKey {
        SealKey::from_bytes([b; 32])
    }

    fn split(frame: &[u8]) -> ([u8; 4], Vec<u8>) {
        (
            [frame[0], frame[1], frame[2], frame[3]],
            frame[4..].to_vec(),
        )
    }

    fn pair() -> (Sealer, Opener) {
        (Sealer::new(key(9)), Opener::new(key(9)))
    }

    #[test]
    fn round_trip() {
        let (mut s, mut o) = pair();
        for (i, pt) in [&b""[..], b"a", &[0xaa; 1000], &[1; 70_000]]
            .into_iter()
            .enumerate()
        {
            let mut frame = vec![0xee]; // pre-existing content must be kept
            s.seal_into(pt, &mut frame).unwrap();
            assert_eq!(frame[0], 0xee);
            let (h, mut body) = split(&frame[1..]);
            assert_eq!(frame_len(h), Ok(pt.len() + TAG_LEN));
            assert_eq!(body.len(), pt.len() + TAG_LEN);
            if !pt.is_empty() {
                assert_ne!(&body[..pt.len()], pt);
            }
            let n = o.open_in_place(h, &mut body).unwrap();
            assert_eq!(&body[..n], pt);
            assert_eq!(s.counter(), i as u64 + 1);
            assert_eq!(o.counter(), i as u64 + 1);
        }
    }

    #[test]
    fn seal_tail_seals_what_was_written_in_place_like_seal_into() {
        let (mut s, mut o) = pair();
        let mut reference = Sealer::new(key(9));
        for pt in [&b"a"[..], &[0xaa; 1000], &[1; 70_000]] {
            let mut out = vec![0xee, 0xef]; // earlier bytes stay as they are
            let start = out.len();
            out.extend_from_slice(&[0x55; HEADER_LEN]); // whatever the header room held
            out.extend_from_slice(pt);
            s.seal_tail(&mut out, start).unwrap();
            let mut same = Vec::new();
            reference.seal_into(pt, &mut same).unwrap();
            assert_eq!(&out[..start], &[0xee, 0xef]);
            assert_eq!(&out[start..], &same[..]);
            let (h, mut body) = split(&out[start..]);
            let n = o.open_in_place(h, &mut body).unwrap();
            assert_eq!(&body[..n], pt);
        }
        assert_eq!(s.counter(), 3);
    }

    #[test]
    fn seal_tail_failures_leave_no_partial_frame() {
        let mut s = Sealer::new(key(9));
        // No room for a header at `start`.
        let mut short = vec![1, 2, 3, 4, 5];
        assert_eq!(
            s.seal_tail(&mut short, 3),
            Err(SealError::TooShort { len: 2 })
        );
        assert_eq!(short, [1, 2, 3]);
        // A plaintext over the limit.
        let mut big = vec![7u8; 2 + HEADER_LEN + MAX_PLAINTEXT_LEN + 1];
        assert_eq!(
            s.seal_tail(&mut big, 2),
            Err(SealError::TooLarge {
                len: MAX_PLAINTEXT_LEN + 1 + TAG_LEN
            })
        );
        assert_eq!(big, [7, 7]);
        assert_eq!(s.counter(), 0);
        // An exhausted counter.
        let mut last = Sealer::with_counter(key(9), u64::MAX);
        let mut out = vec![9; 1 + HEADER_LEN + 3];
        assert_eq!(
            last.seal_tail(&mut out, 1),
            Err(SealError::CounterExhausted)
        );
        assert_eq!(out, [9]);
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let (mut s, mut o) = pair();
        let mut wire = Vec::new();
        s.seal_into(b"one", &mut wire).unwrap();
        s.seal_into(b"two", &mut wire).unwrap();
        let mut rest = &mut wire[..];
        for expect in [&b"one"[..], b"two"] {
            let h = [rest[0], rest[1], rest[2], rest[3]];
            let l = frame_len(h).unwrap();
            let (body, tail) = rest[4..].split_at_mut(l);
            let n = o.open_in_place(h, body).unwrap();
            assert_eq!(&body[..n], expect);
            rest = tail;
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn any_bit_flip_fails() {
        let mut s = Sealer::new(key(3));
        let mut frame = Vec::new();
        s.seal_into(b"some batch bytes", &mut frame).unwrap();
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[byte] ^= 1 << bit;
                let (h, mut body) = split(&f);
                let mut o = Opener::new(key(3));
                let res = o.open_in_place(h, &mut body);
                if byte < 4 {
                    // Header flips change L: out of range or mismatched or bad AAD.
                    assert!(res.is_err(), "byte {byte} bit {bit}");
                } else {
                    assert_eq!(res, Err(SealError::Authentication), "byte {byte} bit {bit}");
                }
                assert_eq!(o.counter(), 0);
            }
        }
    }

    #[test]
    fn header_tamper_with_consistent_body_fails_auth() {
        // Truncation attack: attacker shrinks L and drops the tail of the body.
        let (mut s, mut o) = pair();
        let mut frame = Vec::new();
        s.seal_into(&[5; 64], &mut frame).unwrap();
        let (_, body) = split(&frame);
        let mut short = body[..body.len() - 8].to_vec();
        let h = (short.len() as u32).to_be_bytes();
        assert_eq!(
            o.open_in_place(h, &mut short),
            Err(SealError::Authentication)
        );
        // Wrong key too.
        let mut o2 = Opener::new(key(10));
        let (h, mut body) = split(&frame);
        assert_eq!(
            o2.open_in_place(h, &mut body),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn truncated_body_fails() {
        let (mut s, mut o) = pair();
        let mut frame = Vec::new();
        s.seal_into(b"hello world", &mut frame).unwrap();
        let (h, body) = split(&frame);
        for cut in 0..body.len() {
            let mut b = body[..cut].to_vec();
            assert_eq!(o.open_in_place(h, &mut b), Err(SealError::Authentication));
        }
        assert_eq!(o.counter(), 0);
        let mut b = body.clone();
        assert_eq!(o.open_in_place(h, &mut b), Ok(11));
    }

    #[test]
    fn failure_releases_no_plaintext() {
        let (mut s, mut o) = pair();
        let mut frame = Vec::new();
        s.seal_into(b"hello world", &mut frame).unwrap();
        let (h, mut body) = split(&frame);
        body[0] ^= 1;
        assert!(o.open_in_place(h, &mut body).is_err());
        assert_ne!(&body[..11], b"hello world");
        assert_eq!(o.counter(), 0);
    }

    /// ring's output is checked against an independent implementation (RustCrypto's
    /// `chacha20poly1305`) in both directions, for several sizes and counters.
    #[test]
    fn agrees_with_rustcrypto() {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce as RcNonce, Tag};
        let other = ChaCha20Poly1305::new(Key::from_slice(&[9; 32]));
        let (mut s, mut o) = pair();
        for (counter, len) in [0usize, 1, 63, 64, 65, 1000, 70_000]
            .into_iter()
            .enumerate()
        {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut frame = Vec::new();
            s.seal_into(&pt, &mut frame).unwrap();
            let (h, body) = split(&frame);
            let mut theirs = pt.clone();
            let nonce = nonce_bytes(counter as u64);
            let tag = other
                .encrypt_in_place_detached(RcNonce::from_slice(&nonce), &h, &mut theirs)
                .unwrap();
            theirs.extend_from_slice(&tag);
            assert_eq!(body, theirs, "len {len}");

            let mut ct = pt.clone();
            let tag = other
                .encrypt_in_place_detached(RcNonce::from_slice(&nonce), &h, &mut ct)
                .unwrap();
            let mut body = ct;
            body.extend_from_slice(&Tag::from(tag));
            assert_eq!(o.open_in_place(h, &mut body), Ok(len));
            assert_eq!(&body[..len], &pt[..]);
        }
    }

    #[test]
    fn wipe_zeroes_the_key_schedule() {
        let mut c = Cipher::new(&[0x5a; 32]);
        c.wipe();
        let p = std::ptr::addr_of!(*c.0).cast::<u8>();
        // SAFETY: every byte of the value was just written by `wipe`, so all are initialized;
        // the slice lives only while `c` is borrowed here.
        let bytes = unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<LessSafeKey>()) };
        assert!(bytes.iter().all(|b| *b == 0));
        assert!(bytes.len() >= KEY_LEN);
    }

    #[test]
    fn replay_fails() {
        let (mut s, mut o) = pair();
        let mut frame = Vec::new();
        s.seal_into(b"once", &mut frame).unwrap();
        let (h, body) = split(&frame);
        assert_eq!(o.open_in_place(h, &mut body.clone()), Ok(4));
        assert_eq!(
            o.open_in_place(h, &mut body.clone()),
            Err(SealError::Authentication)
        );
        assert_eq!(o.counter(), 1);
    }

    #[test]
    fn reorder_fails() {
        let (mut s, mut o) = pair();
        let (mut f0, mut f1) = (Vec::new(), Vec::new());
        s.seal_into(b"zero", &mut f0).unwrap();
        s.seal_into(b"one!", &mut f1).unwrap();
        let (h0, b0) = split(&f0);
        let (h1, b1) = split(&f1);
        assert_eq!(
            o.open_in_place(h1, &mut b1.clone()),
            Err(SealError::Authentication)
        );
        assert_eq!(o.counter(), 0);
        // In order still works after the failed attempt.
        assert_eq!(o.open_in_place(h0, &mut b0.clone()), Ok(4));
        assert_eq!(o.open_in_place(h1, &mut b1.clone()), Ok(4));
    }

    #[test]
    fn counter_exhaustion() {
        let mut s = Sealer::with_counter(key(1), u64::MAX - 1);
        let mut o = Opener::with_counter(key(1), u64::MAX - 1);
        let mut frame = Vec::new();
        s.seal_into(b"last", &mut frame).unwrap();
        assert_eq!(s.counter(), u64::MAX);
        let mut more = vec![1, 2, 3];
        assert_eq!(
            s.seal_into(b"too many", &mut more),
            Err(SealError::CounterExhausted)
        );
        assert_eq!(more, vec![1, 2, 3]);
        assert_eq!(s.counter(), u64::MAX);
        let (h, mut body) = split(&frame);
        assert_eq!(o.open_in_place(h, &mut body), Ok(4));
        assert_eq!(o.counter(), u64::MAX);
        let (h, mut body) = split(&frame);
        assert_eq!(
            o.open_in_place(h, &mut body),
            Err(SealError::CounterExhausted)
        );
    }

    #[test]
    fn frame_len_limits() {
        assert_eq!(frame_len([0, 0, 0, 0]), Err(SealError::TooShort { len: 0 }));
        assert_eq!(
            frame_len([0, 0, 0, 15]),
            Err(SealError::TooShort { len: 15 })
        );
        assert_eq!(frame_len([0, 0, 0, 16]), Ok(16));
        assert_eq!(frame_len([1, 0, 0, 0]), Ok(MAX_SEALED_LEN));
        assert_eq!(
            frame_len([1, 0, 0, 1]),
            Err(SealError::TooLarge {
                len: MAX_SEALED_LEN + 1
            })
        );
        assert_eq!(
            frame_len([0xff; 4]),
            Err(SealError::TooLarge {
                len: u32::MAX as usize
            })
        );
    }

    #[test]
    fn plaintext_size_limit() {
        let mut s = Sealer::new(key(2));
        let mut out = Vec::new();
        let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert_eq!(
            s.seal_into(&big, &mut out),
            Err(SealError::TooLarge {
                len: MAX_SEALED_LEN + 1
            })
        );
        assert!(out.is_empty());
        assert_eq!(s.counter(), 0);
        s.seal_into(&big[..MAX_PLAINTEXT_LEN], &mut out).unwrap();
        assert_eq!(out.len(), HEADER_LEN + MAX_SEALED_LEN);
        assert_eq!(&out[..4], &[1, 0, 0, 0]);
    }

    #[test]
    fn nonce_layout() {
        assert_eq!(nonce_bytes(7), [0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            nonce_bytes(0x0102030405060708),
            [0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = SealKey::from_bytes([0xab; 32]);
        let d = format!("{k:?}");
        assert!(!d.contains("ab") && !d.contains("171"), "{d}");
        let s = Sealer::new(SealKey::from_bytes([0xab; 32]));
        let d = format!("{s:?}");
        assert!(!d.contains("171") && !d.contains("ab,"), "{d}");
    }

    /// Fixed interoperability vector (also in docs/PROTOCOL.md). Cross-checked against
    /// Python `cryptography`'s ChaCha20Poly1305 with an independently built plaintext.
    const VECTOR_NONCE_HEX: &str = "000000000700000000000000";
    const VECTOR_PLAINTEXT_HEX: &str = concat!(
        "01",
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "0000000000000001",
        "00000005",
        "68656c6c6f",
        "02",
        "0001",
        "0000000000000002",
        "33333333333333333333333333333333",
        "0008",
        "6e6f20726f757465",
    );
    const VECTOR_SEALED_HEX: &str = "00000067f01e955933f96b9873275f22ed99018b23bf8063d3cf2b2788b811c5c5cbf53e322d9619cae7f319b81841e8518c1f76b80825ee0877d824ff630ca0ed66073533a984081492a55f95ed53f402567e08c54600bf98216f0a21cd5dfe421eaef777d16ff681172f";

    fn vector_key() -> SealKey {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        SealKey::from_bytes(k)
    }

    fn vector_plaintext() -> Vec<u8> {
        let records = super::vector_records();
        let mut pt = Vec::new();
        encode_batch(&records, &mut pt);
        pt
    }

    #[test]
    fn fixed_test_vector() {
        let pt = vector_plaintext();
        let mut sealer = Sealer::with_counter(vector_key(), 7);
        let mut frame = Vec::new();
        sealer.seal_into(&pt, &mut frame).unwrap();
        assert_eq!(hex::encode(nonce_bytes(7)), VECTOR_NONCE_HEX);
        assert_eq!(hex::encode(&pt), VECTOR_PLAINTEXT_HEX);
        assert_eq!(hex::encode(&frame), VECTOR_SEALED_HEX);
        assert_eq!(sealer.counter(), 8);

        let sealed = hex::decode(VECTOR_SEALED_HEX).unwrap();
        let (h, mut body) = split(&sealed);
        let mut opener = Opener::with_counter(vector_key(), 7);
        let n = opener.open_in_place(h, &mut body).unwrap();
        assert_eq!(&body[..n], &pt[..]);
        assert_eq!(opener.counter(), 8);
        // The same frame does not open under any other counter.
        let (h, mut body) = split(&sealed);
        let mut wrong = Opener::with_counter(vector_key(), 6);
        assert_eq!(
            wrong.open_in_place(h, &mut body),
            Err(SealError::Authentication)
        );
    }
}
