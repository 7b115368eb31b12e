//! `wire_batch`: the batch plaintext decoder on arbitrary bytes.

use crate::wire::{ErrorCode, ErrorRecord, PeerId, Record, WireError, decode_batch, encode_batch};

/// Most record boundaries of one input whose prefixes are decoded again.
const MAX_PREFIX_CHECKS: usize = 16;

/// Decodes `data` as a batch plaintext. What decodes must re-encode to exactly `data` and
/// decode again to the same records; every record boundary must be a valid shorter batch
/// and a cut inside a record must be [`WireError::Truncated`]; what fails must fail as a
/// value, after appending only records whose encoding is a prefix of `data`.
pub fn wire_batch(data: &[u8]) {
    // decode_batch appends: what `out` held before must stay untouched.
    let sentinel = Record::Error(ErrorRecord {
        code: ErrorCode::Other(0xffff),
        seq: u64::MAX,
        dst: PeerId([0xee; 16]),
        reason: "sentinel".to_owned(),
    });
    let mut out = vec![sentinel.clone()];
    let result = decode_batch(data, &mut out);
    assert_eq!(
        out.first(),
        Some(&sentinel),
        "decode_batch changed earlier output"
    );
    let records = out.get(1..).unwrap_or_default();
    let decoded_len: usize = records.iter().map(Record::encoded_len).sum();
    assert!(
        decoded_len <= data.len(),
        "{decoded_len} bytes of records from {} bytes of input",
        data.len()
    );
    let mut encoded = Vec::new();
    encode_batch(records, &mut encoded);
    assert_eq!(
        encoded.len(),
        decoded_len,
        "encoded_len disagrees with encode"
    );
    assert!(
        data.starts_with(&encoded),
        "decoded records do not re-encode to a prefix of the input"
    );
    match result {
        Ok(()) => {
            assert!(!data.is_empty(), "an empty batch decoded");
            assert!(!records.is_empty());
            assert_eq!(encoded, data, "re-encoding differs from the input");
            let mut again = Vec::new();
            assert_eq!(decode_batch(&encoded, &mut again), Ok(()));
            assert_eq!(again, records, "re-decoding differs");
            check_prefixes(data, records);
        }
        Err(WireError::EmptyBatch) => assert!(data.is_empty(), "EmptyBatch for a non-empty input"),
        Err(e) => {
            assert!(!data.is_empty());
            // The failing record starts right after the records that decoded.
            let kind = data.get(encoded.len()).copied();
            match e {
                WireError::UnknownRecordType(t) => {
                    assert_eq!(kind, Some(t));
                    assert!(t != crate::wire::RECORD_MESSAGE && t != crate::wire::RECORD_ERROR);
                }
                WireError::InvalidUtf8 => assert_eq!(kind, Some(crate::wire::RECORD_ERROR)),
                WireError::Truncated => assert!(
                    kind == Some(crate::wire::RECORD_MESSAGE)
                        || kind == Some(crate::wire::RECORD_ERROR)
                ),
                other => panic!("unexpected decode error {other:?}"),
            }
        }
    }
}

/// Every record boundary of a decoded batch is itself a batch of the records before it,
/// and the input less its last byte is truncated (records are at least 29 bytes).
fn check_prefixes(data: &[u8], records: &[Record]) {
    let mut end = 0;
    for (i, r) in records.iter().enumerate().take(MAX_PREFIX_CHECKS) {
        end += r.encoded_len();
        let mut out = Vec::new();
        let prefix = data.get(..end).unwrap_or_default();
        assert_eq!(
            decode_batch(prefix, &mut out),
            Ok(()),
            "prefix of {i} records"
        );
        assert_eq!(out.as_slice(), records.get(..=i).unwrap_or_default());
    }
    let cut = data.get(..data.len().saturating_sub(1)).unwrap_or_default();
    assert_eq!(
        decode_batch(cut, &mut Vec::new()),
        Err(WireError::Truncated),
        "a batch less its last byte must be truncated"
    );
}
