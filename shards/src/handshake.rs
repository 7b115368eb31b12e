//! Noise XX handshake over the QUIC session stream (sans-IO).
//!
//! QUIC/TLS only provides transport encryption here: the server certificate is self-signed
//! and not verified. Peers authenticate each other with their static X25519 keys
//! ([`crate::identity`]) in a `Noise_XX_25519_ChaChaPoly_BLAKE2s` handshake with prologue
//! `qme/1`, carried on the session stream (client-initiated bidirectional stream 0). The
//! QUIC client is the Noise initiator.
//!
//! Framing: each handshake message is `len: u16 big-endian || noise message`.
//!
//! ```text
//! -> e            msg1: 32 bytes
//! <- e, ee, s, es msg2: 32 + 48 + 16 = 96 bytes
//! -> s, se        msg3: 48 + 16 = 64 bytes
//! ```
//!
//! Payloads are sent empty. A receiver accepts and ignores payload bytes (forward
//! compatibility: a later version may carry data there), so message sizes above are the
//! minimum, bounded by [`MAX_HANDSHAKE_MSG`].
//!
//! The initiator finishes right after writing msg3 and may send sealed frames on the same
//! stream immediately; the responder finishes after reading msg3 and leaves any bytes that
//! follow it unconsumed for the sealed-frame phase.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::identity::{Identity, peer_id_of};
use crate::wire::PeerId;

/// QUIC ALPN of this protocol; the version is in the name so incompatible peers fail at
/// the TLS layer instead of mid-stream.
pub const ALPN: &[u8] = b"qme/1";

/// Noise prologue: binds the handshake to this protocol version, so a transcript from any
/// other protocol cannot be replayed into ours.
pub const PROLOGUE: &[u8] = b"qme/1";

/// The Noise protocol name; defined next to the static keys it implies (X25519) in
/// [`crate::identity`] and re-exported here, so this module depends on `identity` and not
/// the other way round.
pub use crate::identity::NOISE_PARAMS;

/// Largest handshake message accepted (length prefix value). The real messages are at most
/// 96 bytes; the limit leaves room for future payloads while bounding buffering before the
/// peer is authenticated.
pub const MAX_HANDSHAKE_MSG: usize = 1024;

/// Size of the length prefix in front of every handshake message.
pub const LEN_PREFIX: usize = 2;

/// Why a handshake failed. Every variant is terminal for the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The Noise library rejected a message (bad MAC, bad key, truncated message...).
    #[error("noise handshake failed: {0}")]
    Noise(String),
    /// A length prefix announced a message larger than [`MAX_HANDSHAKE_MSG`].
    #[error("handshake message of {0} bytes exceeds the {MAX_HANDSHAKE_MSG}-byte limit")]
    TooLarge(usize),
    /// Bytes arrived while this side had to send, not receive (a protocol violation).
    #[error("unexpected data from the peer during the handshake")]
    UnexpectedData,
    /// A previous error already ended this handshake.
    #[error("handshake already failed")]
    Failed,
    /// [`Handshake::into_keys`] was called before the handshake finished.
    #[error("handshake not finished")]
    NotFinished,
    /// [`Handshake::into_keys`] was called while the last message was still unsent; the
    /// peer would never finish.
    #[error("handshake output not yet taken with take_outgoing")]
    OutgoingPending,
    /// The remote static key was missing or not 32 bytes (cannot happen with XX; checked
    /// anyway instead of panicking).
    #[error("remote static key unavailable")]
    NoRemoteStatic,
}

fn noise_err(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

/// The result of a finished handshake, from this side's perspective.
///
/// Keys are zeroized on drop and not printed by `Debug`.
pub struct Keys {
    /// Key this side seals with (initiator→responder key for the QUIC client).
    pub send: Zeroizing<[u8; 32]>,
    /// Key this side opens with.
    pub recv: Zeroizing<[u8; 32]>,
    /// The authenticated static public key of the peer.
    pub remote_static: [u8; 32],
    /// The peer's id, derived from `remote_static` with [`peer_id_of`].
    pub remote_peer: PeerId,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("send", &"<redacted>")
            .field("recv", &"<redacted>")
            .field("remote_static", &hex::encode(self.remote_static))
            .field("remote_peer", &hex::encode(self.remote_peer.0))
            .finish()
    }
}

/// Which side of the handshake this is. The QUIC client is always the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends msg1 and msg3 (the QUIC client).
    Initiator,
    /// Sends msg2 (the QUIC server).
    Responder,
}

/// A sans-IO Noise XX handshake: feed it stream bytes, send what it gives you.
///
/// ```
/// use shards::handshake::{Handshake, Role};
/// use shards::identity::Identity;
///
/// let (client_id, server_id) = (Identity::generate()?, Identity::generate()?);
/// let mut client = Handshake::new(Role::Initiator, &client_id)?;
/// let mut server = Handshake::new(Role::Responder, &server_id)?;
/// while !(client.is_finished() && server.is_finished()) {
///     if let Some(bytes) = client.take_outgoing() {
///         let used = server.feed(&bytes)?;
///         assert_eq!(used, bytes.len());
///     }
///     if let Some(bytes) = server.take_outgoing() {
///         client.feed(&bytes)?;
///     }
/// }
/// let msg3 = client.take_outgoing().unwrap_or_default();
/// server.feed(&msg3)?;
/// let (ck, sk) = (client.into_keys()?, server.into_keys()?);
/// assert_eq!(*ck.send, *sk.recv);
/// assert_eq!(ck.remote_peer.0, server_id.peer_id().0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Handshake {
    state: snow::HandshakeState,
    role: Role,
    /// Partial inbound message (length prefix included).
    inbuf: Vec<u8>,
    /// Framed messages not yet returned by `take_outgoing`.
    outbuf: Vec<u8>,
    failed: bool,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("finished", &self.is_finished())
            .field("failed", &self.failed)
            .field("buffered_in", &self.inbuf.len())
            .field("pending_out", &self.outbuf.len())
            .finish()
    }
}

impl Handshake {
    /// Starts a handshake with this side's static identity. The initiator's msg1 is
    /// produced immediately and available from [`Handshake::take_outgoing`].
    pub fn new(role: Role, identity: &Identity) -> Result<Self, HandshakeError> {
        let params = NOISE_PARAMS.parse().map_err(noise_err)?;
        // snow generates the ephemeral key itself when the handshake starts.
        let builder = snow::Builder::new(params)
            .prologue(PROLOGUE)
            .map_err(noise_err)?
            .local_private_key(identity.private_key())
            .map_err(noise_err)?;
        let state = match role {
            Role::Initiator => builder.build_initiator(),
            Role::Responder => builder.build_responder(),
        }
        .map_err(noise_err)?;
        let mut hs = Handshake {
            state,
            role,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            failed: false,
        };
        if role == Role::Initiator {
            hs.write_next()?;
        }
        Ok(hs)
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes to write to the session stream now (one or more length-prefixed messages), if
    /// any. The initiator has msg1 right after [`Handshake::new`].
    pub fn take_outgoing(&mut self) -> Option<Vec<u8>> {
        if self.outbuf.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbuf))
        }
    }

    /// Feeds bytes received on the session stream and returns how many were consumed.
    ///
    /// Only handshake bytes are consumed: once the handshake is finished, the rest of
    /// `data` (sealed frames that may follow msg3 immediately) is left for the caller.
    /// Partial messages are buffered, so any chunking works. After an error the handshake
    /// is dead and every further call returns [`HandshakeError::Failed`].
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, HandshakeError> {
        if self.failed {
            return Err(HandshakeError::Failed);
        }
        match self.feed_inner(data) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.failed = true;
                self.inbuf.clear();
                Err(e)
            }
        }
    }

    fn feed_inner(&mut self, data: &[u8]) -> Result<usize, HandshakeError> {
        let mut used = 0;
        while !self.state.is_handshake_finished() {
            if self.inbuf.len() < LEN_PREFIX {
                let rest = &data[used..];
                if rest.is_empty() {
                    break;
                }
                if self.state.is_my_turn() {
                    // We always write as soon as it is our turn, so this means the peer
                    // sent before it was allowed to.
                    return Err(HandshakeError::UnexpectedData);
                }
                let take = (LEN_PREFIX - self.inbuf.len()).min(rest.len());
                self.inbuf.extend_from_slice(&rest[..take]);
                used += take;
                if self.inbuf.len() < LEN_PREFIX {
                    break;
                }
                let len = usize::from(u16::from_be_bytes([self.inbuf[0], self.inbuf[1]]));
                if len > MAX_HANDSHAKE_MSG {
                    return Err(HandshakeError::TooLarge(len));
                }
            }
            let len = usize::from(u16::from_be_bytes([self.inbuf[0], self.inbuf[1]]));
            let rest = &data[used..];
            let need = (LEN_PREFIX + len).saturating_sub(self.inbuf.len());
            let take = need.min(rest.len());
            self.inbuf.extend_from_slice(&rest[..take]);
            used += take;
            if self.inbuf.len() < LEN_PREFIX + len {
                break;
            }
            self.read_buffered()?;
        }
        Ok(used)
    }

    /// Processes the complete message in `inbuf` and writes our reply if it is our turn.
    fn read_buffered(&mut self) -> Result<(), HandshakeError> {
        let msg = &self.inbuf[LEN_PREFIX..];
        // Payload bytes (if a future peer sends any) are decrypted and ignored.
        let mut payload = vec![0u8; msg.len()];
        self.state
            .read_message(msg, &mut payload)
            .map_err(noise_err)?;
        payload.zeroize();
        self.inbuf.clear();
        if !self.state.is_handshake_finished() && self.state.is_my_turn() {
            self.write_next()?;
        }
        Ok(())
    }

    /// Writes the next handshake message (empty payload) into `outbuf`, framed.
    fn write_next(&mut self) -> Result<(), HandshakeError> {
        let mut buf = [0u8; MAX_HANDSHAKE_MSG];
        let n = self.state.write_message(&[], &mut buf).map_err(noise_err)?;
        let len = u16::try_from(n).map_err(|_| HandshakeError::TooLarge(n))?;
        self.outbuf.extend_from_slice(&len.to_be_bytes());
        self.outbuf.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Bytes of a partial inbound message held (length prefix included); at most
    /// `LEN_PREFIX + MAX_HANDSHAKE_MSG`.
    pub(crate) fn buffered_in(&self) -> usize {
        self.inbuf.len()
    }

    /// Whether all three messages have been processed on this side (the initiator after
    /// writing msg3, the responder after reading it).
    pub fn is_finished(&self) -> bool {
        !self.failed && self.state.is_handshake_finished()
    }

    /// Consumes the finished handshake into this side's send/recv keys and the peer's
    /// authenticated identity. Fails if the handshake is not finished or if its last
    /// message has not been taken with [`Handshake::take_outgoing`] yet.
    pub fn into_keys(mut self) -> Result<Keys, HandshakeError> {
        if self.failed {
            return Err(HandshakeError::Failed);
        }
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::NotFinished);
        }
        if !self.outbuf.is_empty() {
            return Err(HandshakeError::OutgoingPending);
        }
        let remote_static: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(HandshakeError::NoRemoteStatic)?;
        // Noise Split(): (k1 = initiator->responder, k2 = responder->initiator), the same
        // keys snow's own transport mode would use.
        let (mut k1, mut k2) = self.state.dangerously_get_raw_split();
        let (i2r, r2i) = (Zeroizing::new(k1), Zeroizing::new(k2));
        k1.zeroize();
        k2.zeroize();
        let (send, recv) = match self.role {
            Role::Initiator => (i2r, r2i),
            Role::Responder => (r2i, i2r),
        };
        Ok(Keys {
            send,
            recv,
            remote_static,
            remote_peer: peer_id_of(&remote_static),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Pair {
        ci: Identity,
        si: Identity,
        c: Handshake,
        s: Handshake,
    }

    fn pair() -> Pair {
        let ci = Identity::generate().unwrap();
        let si = Identity::generate().unwrap();
        let c = Handshake::new(Role::Initiator, &ci).unwrap();
        let s = Handshake::new(Role::Responder, &si).unwrap();
        Pair { ci, si, c, s }
    }

    /// Feeds `bytes` in chunks of `chunk`, asserting everything is consumed.
    fn feed_all(h: &mut Handshake, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.max(1)) {
            assert_eq!(h.feed(piece).unwrap(), piece.len());
        }
    }

    fn run(chunk: usize) {
        let Pair {
            ci,
            si,
            mut c,
            mut s,
        } = pair();
        assert!(s.take_outgoing().is_none());
        let m1 = c.take_outgoing().unwrap();
        assert_eq!(m1.len(), 2 + 32);
        assert_eq!(&m1[..2], &[0, 32]);
        assert!(c.take_outgoing().is_none());
        feed_all(&mut s, &m1, chunk);
        let m2 = s.take_outgoing().unwrap();
        assert_eq!(m2.len(), 2 + 96);
        assert_eq!(&m2[..2], &[0, 96]);
        assert!(!c.is_finished() && !s.is_finished());
        feed_all(&mut c, &m2, chunk);
        assert!(c.is_finished());
        let m3 = c.take_outgoing().unwrap();
        assert_eq!(m3.len(), 2 + 64);
        assert_eq!(&m3[..2], &[0, 64]);
        feed_all(&mut s, &m3, chunk);
        assert!(s.is_finished());
        assert!(s.take_outgoing().is_none());
        let ck = c.into_keys().unwrap();
        let sk = s.into_keys().unwrap();
        assert_eq!(*ck.send, *sk.recv);
        assert_eq!(*ck.recv, *sk.send);
        assert_ne!(*ck.send, *ck.recv);
        assert_eq!(&ck.remote_static, si.public_key());
        assert_eq!(&sk.remote_static, ci.public_key());
        assert_eq!(ck.remote_peer.0, si.peer_id().0);
        assert_eq!(sk.remote_peer.0, ci.peer_id().0);
    }

    #[test]
    fn full_handshake_byte_at_a_time() {
        run(1);
    }

    #[test]
    fn full_handshake_chunks() {
        for chunk in [2, 3, 7, 33, 1000] {
            run(chunk);
        }
    }

    #[test]
    fn trailing_bytes_after_msg3_left_unconsumed() {
        let Pair { mut c, mut s, .. } = pair();
        let m1 = c.take_outgoing().unwrap();
        assert_eq!(s.feed(&m1).unwrap(), m1.len());
        let m2 = s.take_outgoing().unwrap();
        // Server's sealed bytes after msg2 cannot exist (it is not finished), but the
        // client must leave anything after msg2 alone once it is finished.
        let mut m2x = m2.clone();
        m2x.extend_from_slice(b"sealed-from-server");
        assert_eq!(c.feed(&m2x).unwrap(), m2.len());
        let mut m3 = c.take_outgoing().unwrap();
        let m3_len = m3.len();
        m3.extend_from_slice(b"sealed frame bytes");
        assert_eq!(s.feed(&m3).unwrap(), m3_len);
        assert!(s.is_finished());
        assert_eq!(s.feed(b"more").unwrap(), 0);
        // Also when msg3 arrives split and the trailer comes with its last piece.
        let Pair { mut c, mut s, .. } = pair();
        s.feed(&c.take_outgoing().unwrap()).unwrap();
        c.feed(&s.take_outgoing().unwrap()).unwrap();
        let mut m3 = c.take_outgoing().unwrap();
        m3.extend_from_slice(&[9, 9, 9]);
        assert_eq!(s.feed(&m3[..10]).unwrap(), 10);
        assert_eq!(s.feed(&m3[10..]).unwrap(), m3_len - 10);
        s.into_keys().unwrap();
    }

    #[test]
    fn corrupted_msg2_fails() {
        for pos in [2, 10, 40, 97] {
            let Pair { mut c, mut s, .. } = pair();
            s.feed(&c.take_outgoing().unwrap()).unwrap();
            let mut m2 = s.take_outgoing().unwrap();
            m2[pos] ^= 0x01;
            let r = c.feed(&m2);
            assert!(matches!(r, Err(HandshakeError::Noise(_))), "{pos}: {r:?}");
            assert!(!c.is_finished());
            assert!(matches!(c.feed(&m2), Err(HandshakeError::Failed)));
            assert!(matches!(c.into_keys(), Err(HandshakeError::Failed)));
        }
    }

    #[test]
    fn corrupted_msg3_fails() {
        let Pair { mut c, mut s, .. } = pair();
        s.feed(&c.take_outgoing().unwrap()).unwrap();
        c.feed(&s.take_outgoing().unwrap()).unwrap();
        let mut m3 = c.take_outgoing().unwrap();
        m3[20] ^= 0x80;
        assert!(s.feed(&m3).is_err());
        assert!(!s.is_finished());
    }

    #[test]
    fn oversize_length_prefix_rejected() {
        let Pair { mut s, .. } = pair();
        let len = (MAX_HANDSHAKE_MSG + 1) as u16;
        let r = s.feed(&len.to_be_bytes());
        assert!(
            matches!(r, Err(HandshakeError::TooLarge(n)) if n == MAX_HANDSHAKE_MSG + 1),
            "{r:?}"
        );
        let Pair { mut c, .. } = pair();
        assert!(matches!(
            c.feed(&[0xff, 0xff, 0, 0]),
            Err(HandshakeError::TooLarge(0xffff))
        ));
    }

    #[test]
    fn payload_bytes_are_accepted_and_ignored() {
        // A future initiator that puts a payload into msg1.
        let ci = Identity::generate().unwrap();
        let si = Identity::generate().unwrap();
        let mut raw = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .prologue(PROLOGUE)
            .unwrap()
            .local_private_key(ci.private_key())
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = [0u8; 256];
        let n = raw.write_message(b"future extension", &mut buf).unwrap();
        let mut framed = (n as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&buf[..n]);
        let mut s = Handshake::new(Role::Responder, &si).unwrap();
        assert_eq!(s.feed(&framed).unwrap(), framed.len());
        let m2 = s.take_outgoing().unwrap();
        raw.read_message(&m2[2..], &mut buf).unwrap();
        let n = raw.write_message(b"more", &mut buf).unwrap();
        let mut framed = (n as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&buf[..n]);
        assert_eq!(s.feed(&framed).unwrap(), framed.len());
        let keys = s.into_keys().unwrap();
        assert_eq!(&keys.remote_static, ci.public_key());
    }

    #[test]
    fn into_keys_guards() {
        let Pair { mut c, mut s, .. } = pair();
        s.feed(&c.take_outgoing().unwrap()).unwrap();
        c.feed(&s.take_outgoing().unwrap()).unwrap();
        assert!(c.is_finished());
        // msg3 not taken yet.
        assert!(matches!(
            c.into_keys(),
            Err(HandshakeError::OutgoingPending)
        ));
        assert!(matches!(s.into_keys(), Err(HandshakeError::NotFinished)));
    }

    #[test]
    fn msg1_shaped_reply_to_initiator_fails() {
        // An initiator waiting for msg2 that gets a 32-byte message fails in Noise.
        let Pair { mut c, .. } = pair();
        let mut m = vec![0, 32];
        m.extend_from_slice(&[7u8; 32]);
        assert!(matches!(c.feed(&m), Err(HandshakeError::Noise(_))));
    }

    /// Runs a full handshake in one go and returns both finished sides.
    fn finished_pair() -> (Handshake, Handshake) {
        let Pair { mut c, mut s, .. } = pair();
        s.feed(&c.take_outgoing().unwrap()).unwrap();
        c.feed(&s.take_outgoing().unwrap()).unwrap();
        s.feed(&c.take_outgoing().unwrap()).unwrap();
        assert!(c.is_finished() && s.is_finished());
        (c, s)
    }

    /// Checks `keys` (one side's `into_keys` output) against snow's transport mode on the
    /// peer: a frame sealed under `keys.send` with the sealed-frame nonce for counter 0
    /// and empty AAD opens in the peer's snow transport, and vice versa for `keys.recv`.
    fn assert_keys_match_peer_transport(keys: &Keys, peer: Handshake) {
        use chacha20poly1305::aead::{Aead, KeyInit};
        use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

        const MSG: &[u8] = b"qme/1 key check";
        let t = peer.state.into_stateless_transport_mode().unwrap();
        let nonce = crate::seal::nonce_bytes(0);
        let mut out = [0u8; 64];

        let sealed = ChaCha20Poly1305::new(Key::from_slice(&keys.send[..]))
            .encrypt(Nonce::from_slice(&nonce), MSG)
            .unwrap();
        let n = t.read_message(0, &sealed, &mut out).unwrap();
        assert_eq!(&out[..n], MSG);

        let n = t.write_message(0, MSG, &mut out).unwrap();
        let opened = ChaCha20Poly1305::new(Key::from_slice(&keys.recv[..]))
            .decrypt(Nonce::from_slice(&nonce), &out[..n])
            .unwrap();
        assert_eq!(opened, MSG);
    }

    #[test]
    fn keys_are_snow_transport_keys() {
        // Initiator's keys against the responder's snow transport...
        let (c, s) = finished_pair();
        let ck = c.into_keys().unwrap();
        assert_keys_match_peer_transport(&ck, s);
        // ...and the responder's keys against the initiator's.
        let (c, s) = finished_pair();
        let sk = s.into_keys().unwrap();
        assert_keys_match_peer_transport(&sk, c);
    }

    #[test]
    fn keys_differ_by_direction_and_session() {
        let (c, s) = finished_pair();
        let (ck, sk) = (c.into_keys().unwrap(), s.into_keys().unwrap());
        assert_eq!(*ck.send, *sk.recv);
        assert_eq!(*ck.recv, *sk.send);
        assert_ne!(*ck.send, *ck.recv);
        assert_ne!(*ck.send, [0u8; 32]);
        assert_ne!(*ck.recv, [0u8; 32]);
        // Fresh ephemeral keys every handshake: a second session gets different keys.
        let (c2, _) = finished_pair();
        let ck2 = c2.into_keys().unwrap();
        assert_ne!(*ck2.send, *ck.send);
        assert_ne!(*ck2.recv, *ck.recv);
    }

    #[test]
    fn zero_length_message_fails_cleanly() {
        let Pair { mut s, .. } = pair();
        assert!(matches!(s.feed(&[0, 0]), Err(HandshakeError::Noise(_))));
        let Pair { mut c, .. } = pair();
        assert!(c.feed(&[0, 0, 1, 2]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600),
                                chunk in 1usize..64) {
            let Pair { mut c, mut s, .. } = pair();
            for h in [&mut c, &mut s] {
                for piece in data.chunks(chunk) {
                    match h.feed(piece) {
                        Ok(n) => prop_assert!(n <= piece.len()),
                        Err(_) => break,
                    }
                }
                let _ = h.take_outgoing();
            }
        }

        #[test]
        fn garbage_after_valid_msg1_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let Pair { mut c, mut s, .. } = pair();
            let m1 = c.take_outgoing().unwrap();
            s.feed(&m1).unwrap();
            let _ = s.feed(&data);
            let _ = c.feed(&data);
        }

        #[test]
        fn random_chunking_completes(cuts in proptest::collection::vec(1usize..40, 1..20)) {
            let Pair { mut c, mut s, .. } = pair();
            let mut stream_cs = c.take_outgoing().unwrap();
            let mut cut = cuts.iter().cycle();
            let mut pos = 0;
            let mut to_c = Vec::new();
            let mut rounds = 0;
            while !s.is_finished() {
                rounds += 1;
                prop_assert!(rounds < 10_000);
                if pos < stream_cs.len() {
                    let end = (pos + *cut.next().unwrap()).min(stream_cs.len());
                    let n = s.feed(&stream_cs[pos..end]).unwrap();
                    prop_assert_eq!(n, end - pos);
                    pos = end;
                }
                if let Some(b) = s.take_outgoing() { to_c.extend_from_slice(&b); }
                if !to_c.is_empty() {
                    let n = c.feed(&to_c).unwrap();
                    to_c.drain(..n);
                }
                if let Some(b) = c.take_outgoing() { stream_cs.extend_from_slice(&b); }
            }
            let ck = c.into_keys().unwrap();
            let sk = s.into_keys().unwrap();
            prop_assert_eq!(*ck.send, *sk.recv);
            prop_assert_eq!(*ck.recv, *sk.send);
        }
    }
}
