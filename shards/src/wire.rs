//! Record and batch codec for the plaintext carried inside sealed frames.
//!
//! A batch plaintext is one or more records back to back, filling the plaintext exactly.
//! Two record types exist: [`Message`] (type `0x01`) and [`ErrorRecord`] (type `0x02`). All
//! integers are big-endian. The layout is documented byte by byte in `docs/PROTOCOL.md`.
//!
//! Decoding never panics and never allocates more than the bytes actually present: every
//! length field is checked against the remaining input before anything is copied. Errors
//! are values ([`WireError`]), because the input comes from the network.
//!
//! ```
//! use shards::wire::{decode_batch, encode_batch, ErrorCode, ErrorRecord, Message, PeerId, Record};
//!
//! let records = vec![
//!     Record::Message(Message {
//!         dst: PeerId([0x11; 16]),
//!         src: PeerId([0x22; 16]),
//!         seq: 1,
//!         payload: b"hello".to_vec(),
//!     }),
//!     Record::Error(ErrorRecord {
//!         code: ErrorCode::UnknownDestination,
//!         seq: 2,
//!         dst: PeerId([0x33; 16]),
//!         reason: "no route".to_owned(),
//!     }),
//! ];
//! let mut plaintext = Vec::new();
//! encode_batch(&records, &mut plaintext);
//! assert_eq!(plaintext.len(), records.iter().map(Record::encoded_len).sum::<usize>());
//!
//! let mut decoded = Vec::new();
//! decode_batch(&plaintext, &mut decoded)?;
//! assert_eq!(decoded, records);
//! # Ok::<(), shards::wire::WireError>(())
//! ```
#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::str::FromStr;

pub use crate::payloads::PayloadPool;

/// Type byte of a MESSAGE record.
pub const RECORD_MESSAGE: u8 = 0x01;
/// Type byte of an ERROR record.
pub const RECORD_ERROR: u8 = 0x02;
/// Bytes of a MESSAGE record before its payload: type(1) dst(16) src(16) seq(8) len(4).
pub const MESSAGE_HEADER_LEN: usize = 45;
/// Bytes of an ERROR record before its reason: type(1) code(2) seq(8) dst(16) reason_len(2).
pub const ERROR_HEADER_LEN: usize = 29;
/// Longest reason an ERROR record can carry (its length field is a `u16`).
pub const MAX_REASON_LEN: usize = u16::MAX as usize;
/// Length of a [`PeerId`] in bytes.
pub const PEER_ID_LEN: usize = 16;

/// QUIC application error codes used when closing a connection, so that both ends (and
/// operators reading logs) can tell why a connection ended.
pub mod close_code {
    /// Orderly close; nothing went wrong.
    pub const NO_ERROR: u64 = 0x0;
    /// The Noise handshake on the session stream failed or timed out.
    pub const HANDSHAKE_FAILED: u64 = 0x1;
    /// A sealed frame failed to open (tampered, replayed, reordered, truncated) or the
    /// sending counter ran out.
    pub const SEAL_FAILED: u64 = 0x2;
    /// The peer sent something the protocol forbids (e.g. an undecodable batch plaintext).
    pub const PROTOCOL_VIOLATION: u64 = 0x3;
    /// A frame header announced a length outside `16..=16 MiB`.
    pub const FRAME_TOO_LARGE: u64 = 0x4;
    /// The endpoint refused the connection because it is at its connection limit.
    pub const CONNECTION_LIMIT: u64 = 0x5;
    /// The endpoint hit an internal error unrelated to the peer's behaviour.
    pub const INTERNAL_ERROR: u64 = 0x6;
    /// The peer made no flow-control progress (it did not read what the node sent it) for
    /// the node's stall timeout while the node had data waiting for it.
    pub const STALLED: u64 = 0x7;
}

/// Identity of an endpoint on the wire (16 bytes), used to address messages.
///
/// Displays and parses as 32 lowercase hex characters, so ids can be passed on command lines
/// and printed in logs unambiguously.
///
/// ```
/// use shards::wire::PeerId;
///
/// let id: PeerId = "000102030405060708090a0b0c0d0e0f".parse()?;
/// assert_eq!(id.as_bytes()[15], 0x0f);
/// assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f");
/// assert!("xyz".parse::<PeerId>().is_err());
/// # Ok::<(), shards::wire::ParsePeerIdError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; PEER_ID_LEN]);

impl PeerId {
    /// The raw 16 bytes, as they appear on the wire.
    pub fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 2 * PEER_ID_LEN];
        // Cannot fail: the output buffer is exactly twice the input length.
        if hex::encode_to_slice(self.0, &mut buf).is_err() {
            return Err(fmt::Error);
        }
        // Hex digits are ASCII, hence valid UTF-8.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a valid [`PeerId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ParsePeerIdError {
    /// The string is not exactly 32 characters long.
    #[error("peer id must be 32 hex characters, got {len}")]
    InvalidLength {
        /// Length of the rejected string in bytes.
        len: usize,
    },
    /// The string contains a character that is not a hex digit.
    #[error("peer id contains a non-hex character")]
    InvalidHex,
}

impl FromStr for PeerId {
    type Err = ParsePeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 2 * PEER_ID_LEN {
            return Err(ParsePeerIdError::InvalidLength { len: s.len() });
        }
        let mut bytes = [0u8; PEER_ID_LEN];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParsePeerIdError::InvalidHex)?;
        Ok(PeerId(bytes))
    }
}

/// Why a message was not delivered, carried in an [`ErrorRecord`].
///
/// Unknown codes from newer peers are kept as [`ErrorCode::Other`] rather than rejected, so
/// the protocol can grow codes without breaking old receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: no connected peer has the destination id.
    UnknownDestination,
    /// 2: the payload exceeds the engine's maximum message size.
    MessageTooLarge,
    /// 3: the destination's connection went away before delivery.
    DestinationUnreachable,
    /// 4: the engine is shutting down and no longer forwards messages.
    ShuttingDown,
    /// 5: the destination stopped reading (no flow-control progress for the node's stall
    /// timeout) and its connection was closed with the message still queued.
    DestinationStalled,
    /// Any other code, preserved as received.
    Other(u16),
}

impl ErrorCode {
    /// Maps a wire code to an [`ErrorCode`]; never fails (unknown codes become `Other`).
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => ErrorCode::UnknownDestination,
            2 => ErrorCode::MessageTooLarge,
            3 => ErrorCode::DestinationUnreachable,
            4 => ErrorCode::ShuttingDown,
            5 => ErrorCode::DestinationStalled,
            other => ErrorCode::Other(other),
        }
    }

    /// The code as written on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::UnknownDestination => 1,
            ErrorCode::MessageTooLarge => 2,
            ErrorCode::DestinationUnreachable => 3,
            ErrorCode::ShuttingDown => 4,
            ErrorCode::DestinationStalled => 5,
            ErrorCode::Other(code) => code,
        }
    }
}

impl From<u16> for ErrorCode {
    fn from(code: u16) -> Self {
        ErrorCode::from_u16(code)
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code.as_u16()
    }
}

/// An application message routed from `src` to `dst`.
///
/// `seq` is chosen by the sender and echoed in any [`ErrorRecord`] about this message, so the
/// sender can tell which message failed.
///
/// ```
/// use shards::wire::{Message, PeerId, Record, MESSAGE_HEADER_LEN};
///
/// let m = Message { dst: PeerId([1; 16]), src: PeerId([2; 16]), seq: 9, payload: vec![0; 10] };
/// assert_eq!(Record::Message(m).encoded_len(), MESSAGE_HEADER_LEN + 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Destination peer.
    pub dst: PeerId,
    /// Originating peer.
    pub src: PeerId,
    /// Sender-chosen sequence number, echoed in error reports.
    pub seq: u64,
    /// Opaque application bytes.
    pub payload: Vec<u8>,
}

/// Report that the message `(seq, dst)` was not delivered; sent back to that message's sender.
///
/// `reason` is human-readable UTF-8 of at most [`MAX_REASON_LEN`] bytes. Use
/// [`ErrorRecord::new`] to have that checked; encoding a longer reason truncates it at a
/// character boundary instead of panicking.
///
/// ```
/// use shards::wire::{ErrorCode, ErrorRecord, PeerId, WireError};
///
/// let e = ErrorRecord::new(ErrorCode::ShuttingDown, 5, PeerId([3; 16]), "bye".into())?;
/// assert_eq!(e.code.as_u16(), 4);
/// let too_long = "x".repeat(70_000);
/// assert_eq!(
///     ErrorRecord::new(ErrorCode::ShuttingDown, 5, PeerId([3; 16]), too_long),
///     Err(WireError::ReasonTooLong)
/// );
/// # Ok::<(), WireError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    /// Why the message was not delivered.
    pub code: ErrorCode,
    /// `seq` of the undelivered message.
    pub seq: u64,
    /// `dst` of the undelivered message.
    pub dst: PeerId,
    /// Human-readable detail (UTF-8, at most [`MAX_REASON_LEN`] bytes on the wire).
    pub reason: String,
}

impl ErrorRecord {
    /// Builds an error record, rejecting a reason that does not fit the `u16` length field.
    pub fn new(code: ErrorCode, seq: u64, dst: PeerId, reason: String) -> Result<Self, WireError> {
        if reason.len() > MAX_REASON_LEN {
            return Err(WireError::ReasonTooLong);
        }
        Ok(ErrorRecord {
            code,
            seq,
            dst,
            reason,
        })
    }

    /// The reason as it is encoded: truncated to at most [`MAX_REASON_LEN`] bytes at a
    /// character boundary.
    fn wire_reason(&self) -> &str {
        let mut end = self.reason.len().min(MAX_REASON_LEN);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        self.reason.get(..end).unwrap_or_default()
    }
}

/// One record of a batch plaintext.
///
/// ```
/// use shards::wire::{decode_batch, Message, PeerId, Record};
///
/// let r = Record::Message(Message { dst: PeerId([1; 16]), src: PeerId([2; 16]), seq: 0, payload: vec![] });
/// let mut buf = Vec::new();
/// r.encode(&mut buf);
/// assert_eq!(buf.len(), r.encoded_len());
/// let mut out = Vec::new();
/// decode_batch(&buf, &mut out)?;
/// assert_eq!(out, vec![r]);
/// # Ok::<(), shards::wire::WireError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Type `0x01`: an application message.
    Message(Message),
    /// Type `0x02`: a delivery failure report.
    Error(ErrorRecord),
}

impl Record {
    /// Exact number of bytes [`Record::encode`] appends; lets batchers respect size limits
    /// before encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Record::Message(m) => MESSAGE_HEADER_LEN + m.payload.len(),
            Record::Error(e) => ERROR_HEADER_LEN + e.wire_reason().len(),
        }
    }

    /// Appends the record's wire form to `out`.
    ///
    /// A message payload longer than `u32::MAX` bytes cannot be framed; such payloads can
    /// never fit in a sealed frame (16 MiB) and callers must reject them earlier. If one is
    /// passed anyway, its length field saturates at `u32::MAX` and the batch is invalid.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            Record::Message(m) => {
                // The header is built in place and appended in one copy (five small
                // appends each paid a capacity check and a call to memcpy).
                let len = u32::try_from(m.payload.len()).unwrap_or(u32::MAX);
                let mut header = [0u8; MESSAGE_HEADER_LEN];
                let (kind, rest) = header.split_at_mut(1);
                let (dst, rest) = rest.split_at_mut(PEER_ID_LEN);
                let (src, rest) = rest.split_at_mut(PEER_ID_LEN);
                let (seq, size) = rest.split_at_mut(8);
                kind.copy_from_slice(&[RECORD_MESSAGE]);
                dst.copy_from_slice(&m.dst.0);
                src.copy_from_slice(&m.src.0);
                seq.copy_from_slice(&m.seq.to_be_bytes());
                size.copy_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&header);
                out.extend_from_slice(&m.payload);
            }
            Record::Error(e) => {
                let reason = e.wire_reason();
                out.push(RECORD_ERROR);
                out.extend_from_slice(&e.code.as_u16().to_be_bytes());
                out.extend_from_slice(&e.seq.to_be_bytes());
                out.extend_from_slice(&e.dst.0);
                // wire_reason() is at most u16::MAX bytes.
                let len = u16::try_from(reason.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
        }
    }
}

/// Why a batch plaintext could not be decoded (or an error record built).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum WireError {
    /// The plaintext holds no record at all; batches are never empty.
    #[error("empty batch")]
    EmptyBatch,
    /// A record's header or body extends past the end of the plaintext.
    #[error("truncated record")]
    Truncated,
    /// A record starts with a type byte this version does not know.
    #[error("unknown record type 0x{0:02x}")]
    UnknownRecordType(u8),
    /// An ERROR record's reason is not valid UTF-8.
    #[error("error reason is not valid UTF-8")]
    InvalidUtf8,
    /// An ERROR record's reason is longer than 65535 bytes.
    #[error("error reason longer than 65535 bytes")]
    ReasonTooLong,
}

/// Encodes records back to back (the batch plaintext), appending to `out`.
pub fn encode_batch<'a>(records: impl IntoIterator<Item = &'a Record>, out: &mut Vec<u8>) {
    for record in records {
        record.encode(out);
    }
}

/// Decodes a whole batch plaintext, appending records to `out`.
///
/// On error nothing is guaranteed about `out`'s new tail (records decoded before the bad one
/// may have been appended). Empty input is [`WireError::EmptyBatch`].
pub fn decode_batch(buf: &[u8], out: &mut Vec<Record>) -> Result<(), WireError> {
    if buf.is_empty() {
        return Err(WireError::EmptyBatch);
    }
    let mut r = Reader { rest: buf };
    while !r.rest.is_empty() {
        out.push(decode_record(&mut r, &mut PayloadPool::none())?);
    }
    Ok(())
}

/// Checks a whole batch plaintext without allocating: the same errors [`decode_batch`]
/// would return, so a frame is refused before any of its records is used. Returns the
/// number of records.
pub fn validate_batch(buf: &[u8]) -> Result<usize, WireError> {
    if buf.is_empty() {
        return Err(WireError::EmptyBatch);
    }
    let mut r = Reader { rest: buf };
    let mut n = 0;
    while !r.rest.is_empty() {
        let [kind] = r.array::<1>()?;
        match kind {
            RECORD_MESSAGE => {
                r.take(2 * PEER_ID_LEN + 8)?;
                let len = u32::from_be_bytes(r.array()?);
                r.take(usize::try_from(len).map_err(|_| WireError::Truncated)?)?;
            }
            RECORD_ERROR => {
                r.take(2 + 8 + PEER_ID_LEN)?;
                let len = usize::from(u16::from_be_bytes(r.array()?));
                std::str::from_utf8(r.take(len)?).map_err(|_| WireError::InvalidUtf8)?;
            }
            other => return Err(WireError::UnknownRecordType(other)),
        }
        n += 1;
    }
    Ok(n)
}

/// Decodes up to `max` records of a batch plaintext starting at byte `*at`, advancing `*at`
/// past them, so a large batch can be handed on a few records at a time instead of held
/// decoded whole. Returns how many were appended to `out`.
///
/// ```
/// use shards::wire::{decode_records, encode_batch, Message, PeerId, Record};
///
/// let records: Vec<Record> = (0..5)
///     .map(|seq| Record::Message(Message { dst: PeerId([1; 16]), src: PeerId([2; 16]), seq, payload: vec![] }))
///     .collect();
/// let mut plain = Vec::new();
/// encode_batch(&records, &mut plain);
/// let (mut at, mut out) = (0, Vec::new());
/// assert_eq!(decode_records(&plain, &mut at, 2, &mut out)?, 2);
/// assert_eq!(decode_records(&plain, &mut at, 10, &mut out)?, 3);
/// assert_eq!((at, out), (plain.len(), records));
/// # Ok::<(), shards::wire::WireError>(())
/// ```
pub fn decode_records(
    buf: &[u8],
    at: &mut usize,
    max: usize,
    out: &mut Vec<Record>,
) -> Result<usize, WireError> {
    decode_records_pooled(buf, at, max, out, &mut PayloadPool::none())
}

/// [`decode_records`], taking message payload buffers from `pool` where they fit.
pub fn decode_records_pooled(
    buf: &[u8],
    at: &mut usize,
    max: usize,
    out: &mut Vec<Record>,
    pool: &mut PayloadPool,
) -> Result<usize, WireError> {
    let mut r = Reader {
        rest: buf.get(*at..).ok_or(WireError::Truncated)?,
    };
    let mut n = 0;
    while n < max && !r.rest.is_empty() {
        decode_record_into(&mut r, pool, out)?;
        n += 1;
    }
    *at = buf.len() - r.rest.len();
    Ok(n)
}

/// Decodes one record onto the end of `out`, with the same results as [`decode_record`].
/// A message, the common case, is filled in where it lies in `out`: returned through
/// memory, a record was written field by field and read back in 16-byte words, a
/// store-forwarding stall on every record (most of `decode_records_pooled`'s samples in a
/// profile of the saturated engine).
#[inline(always)]
fn decode_record_into(
    r: &mut Reader<'_>,
    pool: &mut PayloadPool,
    out: &mut Vec<Record>,
) -> Result<(), WireError> {
    if r.rest.first() == Some(&RECORD_MESSAGE) {
        let Some((head, rest)) = r.rest.split_first_chunk::<MESSAGE_HEADER_LEN>() else {
            return Err(WireError::Truncated);
        };
        // Fields as references into the input, copied once, into the record's slot (read
        // into local arrays first, as Reader::array does, decoding cost 1.5 points more
        // of a saturated shard's samples).
        let (_, fields) = head.split_first_chunk::<1>().ok_or(WireError::Truncated)?;
        let (dst, fields) = fields
            .split_first_chunk::<16>()
            .ok_or(WireError::Truncated)?;
        let (src, fields) = fields
            .split_first_chunk::<16>()
            .ok_or(WireError::Truncated)?;
        let (seq, fields) = fields
            .split_first_chunk::<8>()
            .ok_or(WireError::Truncated)?;
        let (len, _) = fields
            .split_first_chunk::<4>()
            .ok_or(WireError::Truncated)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| WireError::Truncated)?;
        // The payload's bytes are checked present before a buffer is taken for them.
        let (payload, rest) = rest.split_at_checked(len).ok_or(WireError::Truncated)?;
        r.rest = rest;
        // Written where it lies in `out` (see above): the header fields straight into a
        // new slot, then the payload into that slot's buffer.
        let i = out.len();
        out.resize_with(i + 1, || {
            Record::Message(Message {
                dst: PeerId(*dst),
                src: PeerId(*src),
                seq: u64::from_be_bytes(*seq),
                payload: Vec::new(),
            })
        });
        if let Some(Record::Message(m)) = out.get_mut(i) {
            pool.copy_into(payload, &mut m.payload);
        }
        return Ok(());
    }
    out.push(decode_record(r, pool)?);
    Ok(())
}

fn decode_record(r: &mut Reader<'_>, pool: &mut PayloadPool) -> Result<Record, WireError> {
    let [kind] = r.array::<1>()?;
    match kind {
        RECORD_MESSAGE => {
            let dst = PeerId(r.array()?);
            let src = PeerId(r.array()?);
            let seq = u64::from_be_bytes(r.array()?);
            let len = u32::from_be_bytes(r.array()?);
            let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
            // `take` checks the bytes are present before the payload is allocated.
            let payload = pool.copy_of(r.take(len)?);
            Ok(Record::Message(Message {
                dst,
                src,
                seq,
                payload,
            }))
        }
        RECORD_ERROR => {
            let code = ErrorCode::from_u16(u16::from_be_bytes(r.array()?));
            let seq = u64::from_be_bytes(r.array()?);
            let dst = PeerId(r.array()?);
            let len = usize::from(u16::from_be_bytes(r.array()?));
            let reason = std::str::from_utf8(r.take(len)?)
                .map_err(|_| WireError::InvalidUtf8)?
                .to_owned();
            Ok(Record::Error(ErrorRecord {
                code,
                seq,
                dst,
                reason,
            }))
        }
        other => Err(WireError::UnknownRecordType(other)),
    }
}

/// Bounds-checked cursor over untrusted input.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(WireError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated)?;
        self.rest = tail;
        Ok(*head)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
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
}
