//! Keeps `docs/PROTOCOL.md` honest: the test vectors and code tables published there are
//! parsed from the document and recomputed with this crate's own code, so the document
//! cannot drift from the implementation.
//!
//! Vectors are `label: hex` lines inside fenced blocks of the "Test vectors" section; the
//! plaintext breakdown is the table of that section whose first column holds hex in
//! backticks.

use std::collections::HashMap;

use crate::identity::{Identity, peer_id_of};
use crate::seal::{
    HEADER_LEN, Opener, SealError, SealKey, Sealer, TAG_LEN, nonce_bytes, vector_records,
};
use crate::wire::{ErrorCode, PeerId, close_code, decode_batch, encode_batch};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// The lines of the `## ` section whose heading contains `title`, up to the next `## `.
fn section(title: &str) -> Vec<&'static str> {
    let mut lines = DOC.lines();
    let found = lines
        .by_ref()
        .any(|l| l.starts_with("## ") && l.contains(title));
    assert!(found, "docs/PROTOCOL.md has no `## ...{title}` section");
    lines.take_while(|l| !l.starts_with("## ")).collect()
}

/// `label: value` lines inside fenced blocks of `lines`. A label appearing twice is a
/// document error.
fn labelled_values(lines: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut in_fence = false;
    for line in lines {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            continue;
        }
        let Some((label, value)) = line.split_once(':') else {
            continue;
        };
        let label = label.trim();
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_lowercase() || c == ' ') {
            continue;
        }
        let prev = out.insert(label.to_owned(), value.trim().to_owned());
        assert!(
            prev.is_none(),
            "label `{label}` appears twice in the test vectors"
        );
    }
    assert!(!in_fence, "unterminated fenced block in the test vectors");
    out
}

fn value<'a>(values: &'a HashMap<String, String>, label: &str) -> &'a str {
    values
        .get(label)
        .unwrap_or_else(|| panic!("no `{label}:` line in the test vectors of docs/PROTOCOL.md"))
}

fn hex_value(values: &HashMap<String, String>, label: &str) -> Vec<u8> {
    let v = value(values, label);
    hex::decode(v).unwrap_or_else(|e| panic!("`{label}: {v}` is not hex: {e}"))
}

fn hex_array<const N: usize>(values: &HashMap<String, String>, label: &str) -> [u8; N] {
    let v = hex_value(values, label);
    v.as_slice()
        .try_into()
        .unwrap_or_else(|_| panic!("`{label}` has {} bytes, expected {N}", v.len()))
}

/// Table rows (outside fences) as their cells, with surrounding backticks removed.
fn table_rows(lines: &[&str]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_fence = false;
    for line in lines {
        let t = line.trim();
        if t.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !t.starts_with('|') {
            continue;
        }
        let cells = t
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect();
        rows.push(cells);
    }
    rows
}

fn vectors() -> HashMap<String, String> {
    labelled_values(&section("Test vectors"))
}

#[test]
fn seal_vector_matches_code() {
    let v = vectors();
    let key: [u8; 32] = hex_array(&v, "key");
    let expected_key: Vec<u8> = (0u8..32).collect();
    assert_eq!(
        key.to_vec(),
        expected_key,
        "key is documented as bytes 00..1f"
    );
    let counter: u64 = value(&v, "counter").parse().unwrap();
    let plaintext = hex_value(&v, "plaintext");
    let sealed = hex_value(&v, "sealed");

    assert_eq!(
        hex::encode(nonce_bytes(counter)),
        value(&v, "nonce"),
        "nonce"
    );

    // The documented plaintext is exactly the codec's encoding of the described records.
    let records = vector_records();
    let mut encoded = Vec::new();
    encode_batch(&records, &mut encoded);
    assert_eq!(hex::encode(&encoded), hex::encode(&plaintext), "plaintext");
    let mut decoded = Vec::new();
    decode_batch(&plaintext, &mut decoded).unwrap();
    assert_eq!(decoded, records);

    // Sealing it reproduces the documented frame, and its documented parts.
    let mut frame = Vec::new();
    Sealer::with_counter(SealKey::from_bytes(key), counter)
        .seal_into(&plaintext, &mut frame)
        .unwrap();
    assert_eq!(hex::encode(&frame), hex::encode(&sealed), "sealed");
    let header = hex_value(&v, "header");
    let ciphertext = hex_value(&v, "ciphertext");
    let tag = hex_value(&v, "tag");
    assert_eq!(header.len(), HEADER_LEN);
    assert_eq!(tag.len(), TAG_LEN);
    assert_eq!(
        header,
        u32::try_from(plaintext.len() + TAG_LEN)
            .unwrap()
            .to_be_bytes()
            .to_vec()
    );
    assert_eq!([header.clone(), ciphertext, tag].concat(), sealed);

    // Opening the documented frame works with the documented counter only.
    let h: [u8; HEADER_LEN] = header.as_slice().try_into().unwrap();
    let mut body = sealed.get(HEADER_LEN..).unwrap().to_vec();
    let n = Opener::with_counter(SealKey::from_bytes(key), counter)
        .open_in_place(h, &mut body)
        .unwrap();
    assert_eq!(body.get(..n).unwrap(), plaintext.as_slice());
    let mut body = sealed.get(HEADER_LEN..).unwrap().to_vec();
    assert_eq!(
        Opener::with_counter(SealKey::from_bytes(key), counter + 1).open_in_place(h, &mut body),
        Err(SealError::Authentication)
    );
}

#[test]
fn plaintext_breakdown_matches_vector() {
    let lines = section("Test vectors");
    let parts: Vec<String> = table_rows(&lines)
        .into_iter()
        .filter_map(|cells| cells.into_iter().next())
        .filter(|c| !c.is_empty() && c.len() % 2 == 0 && c.chars().all(|x| x.is_ascii_hexdigit()))
        .collect();
    assert!(!parts.is_empty(), "no plaintext breakdown table found");
    assert_eq!(
        parts.concat(),
        value(&labelled_values(&lines), "plaintext"),
        "the breakdown table does not add up to the plaintext"
    );
}

#[test]
fn identity_vector_matches_code() {
    let v = vectors();
    let private: [u8; 32] = hex_array(&v, "private");
    let expected_private: Vec<u8> = (1u8..=32).collect();
    assert_eq!(
        private.to_vec(),
        expected_private,
        "private key is documented as 01..20"
    );
    let public: [u8; 32] = hex_array(&v, "public");
    let peer: [u8; 16] = hex_array(&v, "peer id");

    let id = Identity::from_private(private).unwrap();
    assert_eq!(hex::encode(id.public_key()), hex::encode(public), "public");
    assert_eq!(id.peer_id(), PeerId(peer), "peer id");
    assert_eq!(peer_id_of(&public), PeerId(peer));
    assert_eq!(id.peer_id().to_string(), value(&v, "peer id"));
}

#[test]
fn code_tables_match_code() {
    let rows = table_rows(&section("Errors"));

    let error_names: HashMap<u16, String> = rows
        .iter()
        .filter_map(|r| Some((r.first()?.parse::<u16>().ok()?, r.get(1)?.clone())))
        .collect();
    for n in 1..=5u16 {
        let name = error_names
            .get(&n)
            .unwrap_or_else(|| panic!("ERROR code {n} missing from the table"));
        assert_eq!(
            &format!("{:?}", ErrorCode::from_u16(n)),
            name,
            "ERROR code {n}"
        );
    }
    assert_eq!(
        error_names.len(),
        5,
        "unexpected ERROR code rows: {error_names:?}"
    );

    let close: HashMap<String, u64> = rows
        .iter()
        .filter_map(|r| {
            let code = u64::from_str_radix(r.first()?.strip_prefix("0x")?, 16).ok()?;
            Some((r.get(1)?.clone(), code))
        })
        .collect();
    let expected = [
        ("NO_ERROR", close_code::NO_ERROR),
        ("HANDSHAKE_FAILED", close_code::HANDSHAKE_FAILED),
        ("SEAL_FAILED", close_code::SEAL_FAILED),
        ("PROTOCOL_VIOLATION", close_code::PROTOCOL_VIOLATION),
        ("FRAME_TOO_LARGE", close_code::FRAME_TOO_LARGE),
        ("CONNECTION_LIMIT", close_code::CONNECTION_LIMIT),
        ("INTERNAL_ERROR", close_code::INTERNAL_ERROR),
        ("STALLED", close_code::STALLED),
    ];
    for (name, code) in expected {
        assert_eq!(close.get(name), Some(&code), "close code {name}");
    }
    assert_eq!(
        close.len(),
        expected.len(),
        "unexpected close code rows: {close:?}"
    );
}
