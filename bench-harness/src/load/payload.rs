//! The payload every harness message carries: its sequence number, its intended send time
//! and a filler the receiver checks, so a reply is matched, timed and verified on arrival.

use super::PAYLOAD_HEADER;

/// The payload of message `seq` intended at `intended_ns` after the run's origin.
pub fn payload(seq: u64, intended_ns: u64, size: usize) -> Vec<u8> {
    let mut p = vec![0; size.max(PAYLOAD_HEADER)];
    write_payload(&mut p, seq, intended_ns);
    p
}

/// Writes the payload of message `seq` intended at `intended_ns` into `buf`, whose length
/// is the message size (at least [`PAYLOAD_HEADER`]; a shorter `buf` gets what fits), so a
/// sender can reuse one buffer per datagram.
///
/// ```
/// use bench_harness::load::{parse_payload, payload, write_payload};
/// let mut buf = [0u8; 64];
/// write_payload(&mut buf, 7, 1_000);
/// assert_eq!(buf.to_vec(), payload(7, 1_000, 64));
/// assert_eq!(parse_payload(&buf, 64), Some((7, 1_000)));
/// ```
pub fn write_payload(buf: &mut [u8], seq: u64, intended_ns: u64) {
    let mut header = [0u8; PAYLOAD_HEADER];
    let (s, t) = header.split_at_mut(8);
    s.copy_from_slice(&seq.to_le_bytes());
    t.copy_from_slice(&intended_ns.to_le_bytes());
    let n = buf.len().min(PAYLOAD_HEADER);
    if let (Some(to), Some(from)) = (buf.get_mut(..n), header.get(..n)) {
        to.copy_from_slice(from);
    }
    let fill = (seq as u8).wrapping_mul(31);
    // A plain loop over the filler (no skip/early exit) so it compiles to vector code:
    // it runs for every message the harness sends.
    if let Some(rest) = buf.get_mut(PAYLOAD_HEADER..) {
        for (i, b) in rest.iter_mut().enumerate() {
            *b = fill ^ (i + PAYLOAD_HEADER) as u8;
        }
    }
}

/// Reads (seq, intended_ns) back from a payload and checks the filler; `None` if corrupted.
pub fn parse_payload(p: &[u8], size: usize) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(p.get(0..8)?.try_into().ok()?);
    let intended = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    if p.len() != size.max(PAYLOAD_HEADER) {
        return None;
    }
    let fill = (seq as u8).wrapping_mul(31);
    // Every byte's difference OR-ed together, without an early exit, so it compiles to
    // vector code: it runs for every reply.
    let diff = p
        .get(PAYLOAD_HEADER..)?
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, b)| {
            acc | (*b ^ fill ^ (i + PAYLOAD_HEADER) as u8)
        });
    (diff == 0).then_some((seq, intended))
}
