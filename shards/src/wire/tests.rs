#![allow(clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

fn peer() -> impl Strategy<Value = PeerId> {
    any::<[u8; 16]>().prop_map(PeerId)
}

fn code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode::from_u16)
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            peer(),
            peer(),
            any::<u64>(),
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(any::<u8>(), 0..4096),
            ]
        )
            .prop_map(|(dst, src, seq, payload)| Record::Message(Message {
                dst,
                src,
                seq,
                payload
            })),
        (code(), any::<u64>(), peer(), ".{0,40}").prop_map(|(code, seq, dst, reason)| {
            Record::Error(ErrorRecord {
                code,
                seq,
                dst,
                reason,
            })
        }),
    ]
}

fn batch() -> impl Strategy<Value = Vec<Record>> {
    proptest::collection::vec(record(), 1..8)
}

proptest! {
    #[test]
    fn batch_round_trip(records in batch()) {
        let mut buf = Vec::new();
        encode_batch(&records, &mut buf);
        prop_assert_eq!(buf.len(), records.iter().map(Record::encoded_len).sum::<usize>());
        let mut out = Vec::new();
        decode_batch(&buf, &mut out).unwrap();
        prop_assert_eq!(out, records);
    }

    #[test]
    fn strict_prefixes_are_truncated(records in proptest::collection::vec(record(), 1..4)) {
        let mut buf = Vec::new();
        let mut boundaries = vec![0usize];
        for r in &records {
            r.encode(&mut buf);
            boundaries.push(buf.len());
        }
        for cut in 0..buf.len() {
            let mut out = Vec::new();
            let res = decode_batch(&buf[..cut], &mut out);
            if cut == 0 {
                prop_assert_eq!(res, Err(WireError::EmptyBatch));
            } else if let Some(i) = boundaries.iter().position(|&b| b == cut) {
                prop_assert_eq!(res, Ok(()));
                prop_assert_eq!(&out[..], &records[..i]);
            } else {
                prop_assert_eq!(res, Err(WireError::Truncated));
            }
        }
    }

    #[test]
    fn pooled_decoding_reads_what_decode_batch_reads(
        records in batch(),
        cut in any::<proptest::sample::Index>(),
        max in 1usize..10,
    ) {
        // decode_records_pooled (messages filled in where they lie in `out`, payloads
        // from a pool) must give decode_batch's records and errors, a few at a time,
        // on whole batches and on a batch cut anywhere.
        let mut buf = Vec::new();
        encode_batch(&records, &mut buf);
        let cut = cut.index(buf.len() + 1);
        for bytes in [&buf[..], &buf[..cut]] {
            let mut pool = PayloadPool::new(4, 1 << 20);
            pool.put(vec![0xaa; 300]);
            let (mut at, mut got, mut res) = (0, Vec::new(), Ok(()));
            while at < bytes.len() {
                match decode_records_pooled(bytes, &mut at, max, &mut got, &mut pool) {
                    Ok(n) => prop_assert!(n >= 1 && n <= max),
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            let mut want = Vec::new();
            let want_res = if bytes.is_empty() { Ok(()) } else { decode_batch(bytes, &mut want) };
            prop_assert_eq!(&res, &want_res);
            // On an error too: the same records before it, no more, no fewer.
            prop_assert_eq!(&got, &want);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        let _ = decode_batch(&bytes, &mut out);
    }

    #[test]
    fn arbitrary_records_after_valid_type_never_panic(
        kind in 1u8..=2,
        bytes in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut buf = vec![kind];
        buf.extend_from_slice(&bytes);
        let mut out = Vec::new();
        let _ = decode_batch(&buf, &mut out);
    }

    #[test]
    fn peer_id_hex_round_trip(bytes in any::<[u8; 16]>()) {
        let id = PeerId(bytes);
        let s = id.to_string();
        prop_assert_eq!(s.len(), 32);
        prop_assert_eq!(&s, &format!("{id:?}"));
        prop_assert_eq!(&s, &s.to_lowercase());
        prop_assert_eq!(s.parse::<PeerId>(), Ok(id));
    }
}

#[test]
fn empty_batch() {
    assert_eq!(
        decode_batch(&[], &mut Vec::new()),
        Err(WireError::EmptyBatch)
    );
}

#[test]
fn unknown_record_type() {
    for t in [0x00u8, 0x03, 0x7f, 0xff] {
        let mut buf = vec![t];
        buf.extend_from_slice(&[0; 64]);
        assert_eq!(
            decode_batch(&buf, &mut Vec::new()),
            Err(WireError::UnknownRecordType(t))
        );
    }
    // Unknown type after a valid record.
    let mut buf = Vec::new();
    Record::Error(ErrorRecord {
        code: ErrorCode::ShuttingDown,
        seq: 1,
        dst: PeerId([0; 16]),
        reason: String::new(),
    })
    .encode(&mut buf);
    buf.push(0x09);
    assert_eq!(
        decode_batch(&buf, &mut Vec::new()),
        Err(WireError::UnknownRecordType(0x09))
    );
}

#[test]
fn huge_length_field_is_truncated_not_allocated() {
    let mut buf = vec![RECORD_MESSAGE];
    buf.extend_from_slice(&[0; 32]);
    buf.extend_from_slice(&7u64.to_be_bytes());
    buf.extend_from_slice(&u32::MAX.to_be_bytes());
    buf.extend_from_slice(b"abc");
    assert_eq!(
        decode_batch(&buf, &mut Vec::new()),
        Err(WireError::Truncated)
    );
}

#[test]
fn invalid_utf8_reason() {
    let mut buf = vec![RECORD_ERROR];
    buf.extend_from_slice(&1u16.to_be_bytes());
    buf.extend_from_slice(&1u64.to_be_bytes());
    buf.extend_from_slice(&[0; 16]);
    buf.extend_from_slice(&2u16.to_be_bytes());
    buf.extend_from_slice(&[0xc3, 0x28]);
    assert_eq!(
        decode_batch(&buf, &mut Vec::new()),
        Err(WireError::InvalidUtf8)
    );
}

#[test]
fn message_layout() {
    let r = Record::Message(Message {
        dst: PeerId([0x11; 16]),
        src: PeerId([0x22; 16]),
        seq: 0x0102030405060708,
        payload: b"hi".to_vec(),
    });
    let mut buf = Vec::new();
    r.encode(&mut buf);
    assert_eq!(buf.len(), MESSAGE_HEADER_LEN + 2);
    assert_eq!(buf[0], 0x01);
    assert_eq!(&buf[1..17], &[0x11; 16]);
    assert_eq!(&buf[17..33], &[0x22; 16]);
    assert_eq!(&buf[33..41], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&buf[41..45], &[0, 0, 0, 2]);
    assert_eq!(&buf[45..], b"hi");
}

#[test]
fn error_layout() {
    let r = Record::Error(ErrorRecord {
        code: ErrorCode::DestinationUnreachable,
        seq: 9,
        dst: PeerId([0x33; 16]),
        reason: "é".to_owned(),
    });
    let mut buf = Vec::new();
    r.encode(&mut buf);
    assert_eq!(buf.len(), ERROR_HEADER_LEN + 2);
    assert_eq!(&buf[0..3], &[0x02, 0x00, 0x03]);
    assert_eq!(&buf[3..11], &9u64.to_be_bytes());
    assert_eq!(&buf[11..27], &[0x33; 16]);
    assert_eq!(&buf[27..29], &[0, 2]);
    assert_eq!(&buf[29..], "é".as_bytes());
}

#[test]
fn long_reason_is_truncated_on_char_boundary() {
    // 'é' is two bytes; 40_000 of them = 80_000 bytes.
    let reason = "é".repeat(40_000);
    assert_eq!(
        ErrorRecord::new(ErrorCode::ShuttingDown, 0, PeerId([0; 16]), reason.clone()),
        Err(WireError::ReasonTooLong)
    );
    let r = Record::Error(ErrorRecord {
        code: ErrorCode::ShuttingDown,
        seq: 0,
        dst: PeerId([0; 16]),
        reason,
    });
    let mut buf = Vec::new();
    r.encode(&mut buf);
    assert_eq!(buf.len(), r.encoded_len());
    assert_eq!(buf.len(), ERROR_HEADER_LEN + 65_534);
    let mut out = Vec::new();
    decode_batch(&buf, &mut out).unwrap();
    match &out[0] {
        Record::Error(e) => assert_eq!(e.reason, "é".repeat(32_767)),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn error_codes() {
    for (n, c) in [
        (1, ErrorCode::UnknownDestination),
        (2, ErrorCode::MessageTooLarge),
        (3, ErrorCode::DestinationUnreachable),
        (4, ErrorCode::ShuttingDown),
        (5, ErrorCode::DestinationStalled),
        (0, ErrorCode::Other(0)),
        (77, ErrorCode::Other(77)),
    ] {
        assert_eq!(ErrorCode::from_u16(n), c);
        assert_eq!(c.as_u16(), n);
        assert_eq!(u16::from(ErrorCode::from(n)), n);
    }
}

#[test]
fn peer_id_bad_hex() {
    assert_eq!(
        "".parse::<PeerId>(),
        Err(ParsePeerIdError::InvalidLength { len: 0 })
    );
    assert_eq!(
        "00".repeat(17).parse::<PeerId>(),
        Err(ParsePeerIdError::InvalidLength { len: 34 })
    );
    assert_eq!(
        "0g".repeat(16).parse::<PeerId>(),
        Err(ParsePeerIdError::InvalidHex)
    );
    // 32 bytes but not 32 characters of ASCII.
    assert_eq!(
        format!("{}é", "0".repeat(30)).parse::<PeerId>(),
        Err(ParsePeerIdError::InvalidHex)
    );
    assert_eq!(
        "000102030405060708090A0B0C0D0E0F".parse::<PeerId>(),
        Ok(PeerId([
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
        ]))
    );
    assert_eq!(PeerId([0xab; 16]).as_bytes(), &[0xab; 16]);
}
