//! Stateless address validation (QUIC Retry, RFC 9000 8.1.2): while a shard has many
//! handshakes in progress, a new peer's first Initial gets a Retry packet carrying a token
//! instead of connection state. Only a peer that receives datagrams at its claimed address
//! can echo the token back, so a flood of Initials from spoofed addresses costs the shard one
//! small Retry each and no memory.
//!
//! A token is `version (1) | issued_ms (8, BE) | odcid_len (1) | odcid | tag (32)`, where the
//! tag is HMAC-SHA256 under a key drawn from the endpoint's randomness at start, over the
//! fields before it, the peer's IP address and port, and the connection ID the Retry told the
//! peer to use (the destination of the Initial that carries the token back). It is valid for
//! [`TOKEN_LIFETIME`] after it was issued, measured on the endpoint's own clock. Only the
//! shard that issued a token can check it, and only that shard receives it back: the Retry's
//! connection ID is one of that shard's (see `cid`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use ring::hmac;

/// How long a Retry token is accepted after it was issued: several round trips on any path
/// the engine serves, short enough that a captured token is of little use.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(10);

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// Longest connection ID QUIC v1 allows (RFC 9000 17.2).
const MAX_CID_LEN: usize = 20;

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this layout (wrong version byte or length).
    #[error("malformed token")]
    Malformed,
    /// The tag does not match: forged, from another node or shard, or sent from another
    /// address or with another connection ID than the Retry named.
    #[error("token does not authenticate")]
    Forged,
    /// Issued more than [`TOKEN_LIFETIME`] ago (or in the future).
    #[error("token expired")]
    Expired,
}

/// Mints and checks Retry tokens for one endpoint.
pub(crate) struct RetryTokens {
    key: hmac::Key,
    /// The instant `issued_ms` counts from.
    origin: Instant,
}

impl RetryTokens {
    /// A fresh key from `rng`; times count from `origin`.
    pub(crate) fn new(rng: &mut impl RngCore, origin: Instant) -> Self {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        RetryTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret[..]),
            origin,
        }
    }

    /// What the tag covers: the token's fields, then the peer's address and the CID.
    fn signed(body: &[u8], peer: SocketAddr, retry_cid: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(body.len() + 16 + 2 + retry_cid.len());
        msg.extend_from_slice(body);
        match peer {
            SocketAddr::V4(a) => msg.extend_from_slice(&a.ip().octets()),
            SocketAddr::V6(a) => msg.extend_from_slice(&a.ip().octets()),
        }
        msg.extend_from_slice(&peer.port().to_be_bytes());
        msg.extend_from_slice(retry_cid);
        msg
    }

    /// A token for `peer`, whose first Initial was addressed to `odcid`, told by the Retry to
    /// use `retry_cid`. `odcid` is at most 20 bytes (QUIC v1).
    pub(crate) fn mint(
        &self,
        now: Instant,
        peer: SocketAddr,
        odcid: &[u8],
        retry_cid: &[u8],
    ) -> Vec<u8> {
        let odcid = odcid.get(..MAX_CID_LEN).unwrap_or(odcid);
        let issued = now.saturating_duration_since(self.origin).as_millis() as u64;
        let mut token = Vec::with_capacity(10 + odcid.len() + TAG_LEN);
        token.push(VERSION);
        token.extend_from_slice(&issued.to_be_bytes());
        token.push(odcid.len() as u8);
        token.extend_from_slice(odcid);
        let tag = hmac::sign(&self.key, &Self::signed(&token, peer, retry_cid));
        token.extend_from_slice(tag.as_ref());
        token
    }

    /// Checks a token that came back from `peer` on an Initial addressed to `retry_cid`;
    /// returns the original destination connection ID it vouches for.
    pub(crate) fn validate(
        &self,
        now: Instant,
        token: &[u8],
        peer: SocketAddr,
        retry_cid: &[u8],
    ) -> Result<Vec<u8>, TokenError> {
        let (&version, rest) = token.split_first().ok_or(TokenError::Malformed)?;
        if version != VERSION {
            return Err(TokenError::Malformed);
        }
        let (issued, rest) = rest.split_first_chunk::<8>().ok_or(TokenError::Malformed)?;
        let (&len, rest) = rest.split_first().ok_or(TokenError::Malformed)?;
        let len = usize::from(len);
        if len > MAX_CID_LEN || rest.len() != len + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let (odcid, tag) = rest.split_at(len);
        let body_len = token.len() - TAG_LEN;
        let body = token.get(..body_len).ok_or(TokenError::Malformed)?;
        // ring recomputes the tag and compares in constant time.
        hmac::verify(&self.key, &Self::signed(body, peer, retry_cid), tag)
            .map_err(|_| TokenError::Forged)?;
        let issued = Duration::from_millis(u64::from_be_bytes(*issued));
        let age = now
            .saturating_duration_since(self.origin)
            .checked_sub(issued)
            .ok_or(TokenError::Expired)?;
        if age > TOKEN_LIFETIME {
            return Err(TokenError::Expired);
        }
        Ok(odcid.to_vec())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tokens(seed: u64, t0: Instant) -> RetryTokens {
        RetryTokens::new(&mut rand::rngs::StdRng::seed_from_u64(seed), t0)
    }

    #[test]
    fn a_token_is_valid_only_for_its_address_cid_and_lifetime() {
        let t0 = Instant::now();
        let t = tokens(1, t0);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let odcid = [7u8; 16];
        let cid = [3u8; 16];
        let now = t0 + Duration::from_secs(1);
        let token = t.mint(now, peer, &odcid, &cid);
        assert_eq!(token.len(), 1 + 8 + 1 + 16 + 32);
        assert_eq!(t.validate(now, &token, peer, &cid), Ok(odcid.to_vec()));
        // Another port, another address, another CID: forged.
        let other_port: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let other_ip: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        assert_eq!(
            t.validate(now, &token, other_port, &cid),
            Err(TokenError::Forged)
        );
        assert_eq!(
            t.validate(now, &token, other_ip, &cid),
            Err(TokenError::Forged)
        );
        assert_eq!(
            t.validate(now, &token, peer, &[4u8; 16]),
            Err(TokenError::Forged)
        );
        // Another endpoint's key.
        assert_eq!(
            tokens(2, t0).validate(now, &token, peer, &cid),
            Err(TokenError::Forged)
        );
        // Lifetime: valid at the edge, expired after it.
        assert!(t.validate(now + TOKEN_LIFETIME, &token, peer, &cid).is_ok());
        assert_eq!(
            t.validate(
                now + TOKEN_LIFETIME + Duration::from_millis(1),
                &token,
                peer,
                &cid
            ),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn any_change_to_a_token_is_rejected() {
        let t0 = Instant::now();
        let t = tokens(1, t0);
        let peer: SocketAddr = "[::1]:443".parse().unwrap();
        let cid = [9u8; 16];
        let token = t.mint(t0, peer, &[1, 2, 3, 4, 5, 6, 7, 8], &cid);
        for i in 0..token.len() {
            let mut bad = token.clone();
            bad[i] ^= 0x01;
            assert!(t.validate(t0, &bad, peer, &cid).is_err(), "byte {i}");
        }
        for cut in 0..token.len() {
            assert!(
                t.validate(t0, &token[..cut], peer, &cid).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = token.clone();
        longer.push(0);
        assert_eq!(
            t.validate(t0, &longer, peer, &cid),
            Err(TokenError::Malformed)
        );
        assert_eq!(t.validate(t0, &[], peer, &cid), Err(TokenError::Malformed));
    }
}
