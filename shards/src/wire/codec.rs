//! Encoding and decoding of batch plaintexts: records back to back, every length checked
//! against the bytes actually present before anything is read or copied.

use super::*;

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
