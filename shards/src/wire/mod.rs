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

mod codec;
#[cfg(test)]
mod tests;

pub use codec::{
    decode_batch, decode_records, decode_records_pooled, encode_batch, validate_batch,
};

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
