//! Connection IDs that carry the shard index.
//!
//! Every server shard owns one socket of an `SO_REUSEPORT` group (see
//! [`crate::steering`]). The kernel picks the socket for an incoming datagram by running a
//! classic BPF program over the UDP payload, and that program can only look at fixed byte
//! offsets. So every connection ID this engine issues puts the shard index at a fixed
//! place, **byte 0**, followed by 15 random bytes:
//!
//! ```text
//! byte:  0            1 ..= 15
//!        shard index  random (unguessable, unlinkable)
//! ```
//!
//! Byte 0 of the DCID sits at UDP payload offset 1 in a short-header packet and at offset 6
//! in a long-header packet (1 flags byte + 4 version bytes + 1 DCID length byte), which is
//! exactly what [`dcid_routing_byte`] and the steering program read.
//!
//! # Future layout: QUIC-LB (not implemented)
//!
//! If the engine ever sits behind a QUIC-LB aware load balancer
//! (draft-ietf-quic-load-balancers), a server id can be added without moving the shard
//! index, so the BPF program stays the same. Two possible layouts:
//!
//! * bytes `1..=k` carry the (possibly encrypted) server id, byte 0 keeps the shard index,
//!   the remaining bytes stay random; or
//! * byte 0's low 5 bits hold the shard index and its top 3 bits become the QUIC-LB
//!   config rotation bits, which caps a node at 32 shards (the steering program would then
//!   mask byte 0 with `0x1f` before the modulo).
//!
//! Today byte 0 is the plain shard index and the full byte is used.

/// Length of every connection ID this engine issues. 16 bytes leaves 15 random bytes
/// after the shard index, enough to make CIDs unguessable and collisions negligible.
pub const CID_LEN: usize = 16;

/// Creates a connection ID for a connection owned by `shard`: byte 0 is the shard index,
/// bytes 1..16 come from `rng`. The shard index lets the kernel steer every later packet
/// of the connection to the owning shard's socket.
///
/// ```
/// use shards::cid::{new_cid, shard_of, CID_LEN};
/// let cid = new_cid(3, &mut rand::thread_rng());
/// assert_eq!(cid.len(), CID_LEN);
/// assert_eq!(cid[0], 3);
/// assert_eq!(shard_of(&cid, 4), Some(3));
/// ```
pub fn new_cid(shard: u8, rng: &mut impl rand::RngCore) -> [u8; CID_LEN] {
    let mut cid = [0u8; CID_LEN];
    rng.fill_bytes(&mut cid[1..]);
    cid[0] = shard;
    cid
}

/// The shard that owns a destination connection ID: `dcid[0] % shards`. This is the same
/// rule the kernel steering program applies, so user space and the kernel always agree.
/// Returns `None` for an empty DCID or zero shards (nothing to route to).
pub fn shard_of(dcid: &[u8], shards: usize) -> Option<usize> {
    if shards == 0 {
        return None;
    }
    dcid.first().map(|b| usize::from(*b) % shards)
}

/// The byte of a raw QUIC datagram that the steering program routes on: byte 6 for a long
/// header (first byte has `0x80` set: flags, 4 version bytes, DCID length, then DCID byte 0),
/// byte 1 for a short header (flags, then DCID byte 0). Mirrors the BPF program in
/// [`crate::steering::steering_program`] so tests and user-space re-routing can predict it.
/// Returns `None` when the datagram is too short (the kernel would steer such a datagram
/// to shard 0).
///
/// ```
/// use shards::cid::dcid_routing_byte;
/// assert_eq!(dcid_routing_byte(&[0x40, 7, 0, 0]), Some(7));
/// assert_eq!(dcid_routing_byte(&[0xc0, 0, 0, 0, 1, 16, 9]), Some(9));
/// assert_eq!(dcid_routing_byte(&[]), None);
/// ```
pub fn dcid_routing_byte(packet: &[u8]) -> Option<u8> {
    let first = *packet.first()?;
    let offset = if first & 0x80 != 0 { 6 } else { 1 };
    packet.get(offset).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn new_cid_puts_shard_in_byte0_and_random_rest() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = new_cid(5, &mut rng);
        let b = new_cid(5, &mut rng);
        assert_eq!(a[0], 5);
        assert_eq!(b[0], 5);
        assert_ne!(a[1..], b[1..]);
        assert_ne!(a[1..], [0u8; CID_LEN - 1]);
    }

    #[test]
    fn shard_of_rules() {
        assert_eq!(shard_of(&[], 4), None);
        assert_eq!(shard_of(&[3], 0), None);
        assert_eq!(shard_of(&[3, 1, 2], 4), Some(3));
        assert_eq!(shard_of(&[7], 4), Some(3));
        assert_eq!(shard_of(&[255], 1), Some(0));
        assert_eq!(shard_of(&[255], 256), Some(255));
        assert_eq!(shard_of(&[255], 1000), Some(255));
        for s in 0..=255u8 {
            let cid = new_cid(s, &mut rand::thread_rng());
            assert_eq!(shard_of(&cid, 256), Some(usize::from(s)));
        }
    }

    #[test]
    fn routing_byte_short_and_long() {
        assert_eq!(dcid_routing_byte(&[]), None);
        assert_eq!(dcid_routing_byte(&[0x40]), None);
        assert_eq!(dcid_routing_byte(&[0x40, 0xab]), Some(0xab));
        assert_eq!(dcid_routing_byte(&[0xc0, 0, 0, 0, 1, 16]), None);
        assert_eq!(
            dcid_routing_byte(&[0xc0, 0, 0, 0, 1, 16, 0x22, 1]),
            Some(0x22)
        );
        // A long header built around a CID we issued routes back to its shard.
        let cid = new_cid(9, &mut rand::thread_rng());
        let mut long = vec![0xc3, 0, 0, 0, 1, CID_LEN as u8];
        long.extend_from_slice(&cid);
        assert_eq!(dcid_routing_byte(&long), Some(9));
        let mut short = vec![0x41];
        short.extend_from_slice(&cid);
        assert_eq!(dcid_routing_byte(&short), Some(9));
    }
}
