//! `cid_route`: CID steering and the endpoint's screening of datagrams on arbitrary bytes.

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::cid::{self, CID_LEN};
use crate::endpoint::{MIN_INITIAL_DATAGRAM, MIN_INITIAL_DCID, UnknownCid, screen_unknown};
use crate::steering;

/// Group sizes the steering program is checked with: the edges of the routing byte and
/// some counts that do not divide 256.
const SHARD_COUNTS: &[usize] = &[1, 2, 3, 4, 7, 8, 255, 256];
/// Longest connection ID QUIC v1 allows (RFC 9000 17.2).
const MAX_CID_LEN: usize = 20;
/// Bytes of the datagram appended after a CID of ours in the built packets.
const MAX_TAIL: usize = 64;

/// Routes the datagram `data` as the kernel and the endpoint would. The kernel's steering
/// program and user space must pick the same byte and the same shard for every datagram
/// whose header parses with a non-empty DCID; the endpoint's screening of an unknown CID
/// must follow its rules (only a large enough Initial of a supported version with a DCID
/// of 8..=20 bytes makes state, a Version Negotiation answer is smaller than the datagram
/// and echoes its CIDs); and a CID issued for a shard steers back to it whatever follows.
pub fn cid_route(data: &[u8]) {
    let routing = cid::dcid_routing_byte(data);
    for &n in SHARD_COUNTS {
        let kernel = kernel_shard(n, data);
        let want = routing.map_or(0, |b| usize::from(b) % n);
        assert_eq!(
            kernel, want,
            "kernel and user space disagree with {n} shards"
        );
        assert!(kernel < n);
    }
    let mut pkt = data.to_vec();
    if let Ok(hdr) = quiche::Header::from_slice(&mut pkt, CID_LEN) {
        check_header(data, &hdr, routing);
    }
    check_issued_cid(data, routing.unwrap_or(0));
}

fn kernel_shard(n: usize, pkt: &[u8]) -> usize {
    match steering::interpret(&steering::steering_program(n), pkt) {
        Some(s) => usize::try_from(s).unwrap_or(usize::MAX),
        None => panic!("the steering program for {n} shards does not run"),
    }
}

fn check_header(data: &[u8], hdr: &quiche::Header<'_>, routing: Option<u8>) {
    let dcid: &[u8] = hdr.dcid.as_ref();
    let long = data.first().is_some_and(|b| b & 0x80 != 0);
    assert_eq!(long, hdr.ty != quiche::Type::Short);
    if hdr.ty == quiche::Type::Short {
        assert_eq!(dcid.len(), CID_LEN);
        assert_eq!(Some(dcid), data.get(1..=CID_LEN));
    }
    if let Some(first) = dcid.first() {
        // The byte the kernel steers on is the DCID's first byte, the one CIDs carry the
        // shard in.
        assert_eq!(routing, Some(*first), "the kernel steers on another byte");
    }
    for &shards in SHARD_COUNTS {
        let owner = cid::shard_of(dcid, shards);
        if let Some(owner) = owner {
            assert!(owner < shards);
            assert_eq!(owner, kernel_shard(shards, data));
        }
        for index in [0, shards - 1, owner.unwrap_or(0)] {
            screen(data, hdr, shards, index, owner);
        }
    }
}

fn screen(
    data: &[u8],
    hdr: &quiche::Header<'_>,
    shards: usize,
    index: usize,
    owner: Option<usize>,
) {
    let dcid: &[u8] = hdr.dcid.as_ref();
    let initial = hdr.ty == quiche::Type::Initial;
    let big_enough = data.len() >= MIN_INITIAL_DATAGRAM && dcid.len() >= MIN_INITIAL_DCID;
    match screen_unknown(hdr, data.len(), shards, index) {
        UnknownCid::Stray { misrouted } => {
            assert!(!initial);
            assert_eq!(misrouted, owner != Some(index));
        }
        UnknownCid::TooSmall => assert!(initial && !big_enough),
        UnknownCid::UnsupportedVersion => {
            assert!(initial && big_enough && !quiche::version_is_supported(hdr.version));
            check_version_negotiation(data, hdr);
        }
        UnknownCid::Accept => {
            assert!(initial && big_enough && quiche::version_is_supported(hdr.version));
            assert!(
                dcid.len() <= MAX_CID_LEN,
                "accepted a {}-byte DCID",
                dcid.len()
            );
            assert!(hdr.scid.as_ref().len() <= MAX_CID_LEN);
        }
    }
}

/// The answer to an Initial of an unknown version: smaller than what provoked it (no
/// amplification), a Version Negotiation packet that swaps the CIDs and offers QUIC v1.
fn check_version_negotiation(data: &[u8], hdr: &quiche::Header<'_>) {
    let mut out = vec![0u8; 1500];
    let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) else {
        panic!("no Version Negotiation for CIDs of at most 255 bytes");
    };
    assert!(
        n < data.len(),
        "{n}-byte answer to a {}-byte datagram",
        data.len()
    );
    out.truncate(n);
    let Ok(vn) = quiche::Header::from_slice(&mut out, CID_LEN) else {
        panic!("the Version Negotiation packet does not parse");
    };
    assert_eq!(vn.ty, quiche::Type::VersionNegotiation);
    assert_eq!(vn.dcid, hdr.scid);
    assert_eq!(vn.scid, hdr.dcid);
    assert!(
        vn.versions
            .as_deref()
            .is_some_and(|v| v.contains(&quiche::PROTOCOL_VERSION))
    );
}

/// A CID the shard `shard` issued, in a short and in a long header followed by bytes of
/// the datagram, steers to `shard` in the kernel and in user space.
fn check_issued_cid(data: &[u8], shard: u8) {
    let mut seed = [0u8; 32];
    for (s, d) in seed.iter_mut().zip(data.iter().rev()) {
        *s = *d;
    }
    let issued = cid::new_cid(shard, &mut StdRng::from_seed(seed));
    assert_eq!(issued.len(), CID_LEN);
    assert_eq!(issued.first(), Some(&shard));
    let tail = data.get(..MAX_TAIL.min(data.len())).unwrap_or_default();
    let flags = data.first().copied().unwrap_or(0);
    let mut short = vec![0x40 | (flags & 0x3f)];
    short.extend_from_slice(&issued);
    short.extend_from_slice(tail);
    let mut long = vec![0xc0 | (flags & 0x3f), 0, 0, 0, 1, CID_LEN as u8];
    long.extend_from_slice(&issued);
    long.extend_from_slice(tail);
    for pkt in [short, long] {
        assert_eq!(cid::dcid_routing_byte(&pkt), Some(shard));
        for &n in SHARD_COUNTS {
            assert_eq!(kernel_shard(n, &pkt), usize::from(shard) % n);
            assert_eq!(cid::shard_of(&issued, n), Some(usize::from(shard) % n));
        }
        let mut buf = pkt.clone();
        if let Ok(hdr) = quiche::Header::from_slice(&mut buf, CID_LEN) {
            assert_eq!(hdr.dcid.as_ref(), issued.as_slice());
        } else {
            // A short header always parses with our CID length; a long one needs a valid
            // rest (a source CID length, a token length), which the tail may not give.
            assert!(
                pkt.first().is_some_and(|b| b & 0x80 != 0),
                "short header rejected"
            );
        }
    }
}
