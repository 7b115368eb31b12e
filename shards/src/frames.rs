//! The receive side of the sealed-frame phase of the session stream, without QUIC.
//!
//! [`FrameReader`] holds the bytes of a frame that has not arrived whole, pulls more from a
//! stream source only as far as the current frame needs, opens whole frames and decodes
//! their batches. [`crate::stream_session::StreamSession`] owns one and hands it the stream
//! source of whatever transport drives it (quiche's `stream_recv` in
//! [`crate::session::Session`], a quinn stream in the harness's control server); the fuzz
//! target `session_recv` drives a stream session with arbitrary bytes in arbitrary chunks,
//! so this one receive path is exercised without sockets or a QUIC connection.

use crate::seal::{self, Opener};
use crate::stream_session::StreamError;
use crate::wire::{self, PayloadPool, Record};

/// Most bytes of a partial frame read from the stream per step.
pub(crate) const RX_CHUNK: usize = 64 * 1024;
/// Receive-buffer capacity kept after a larger frame has been consumed.
pub(crate) const RX_KEEP: usize = 256 * 1024;
/// Most records decoded from an opened frame per step: a 16 MiB frame of empty messages
/// (370,000 records) is handed on this many at a time, its plaintext staying in the buffer,
/// instead of being held decoded whole.
pub(crate) const RECORDS_PER_STEP: usize = 1024;

/// A frame opened (authenticated, decrypted in place, its batch checked) whose records are
/// being handed on.
#[derive(Debug, Clone, Copy)]
struct OpenFrame {
    /// Header plus body: the bytes to drop from the buffer when every record is out.
    len: usize,
    /// End of the plaintext in the buffer.
    plain_end: usize,
    /// Where the next record starts.
    at: usize,
}

/// What one read from a stream source gave: the answer a transport's read callback
/// returns to [`crate::stream_session::StreamSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRead {
    /// `n` bytes were written to the front of the buffer; `fin` when they end the stream
    /// (`n` may then be 0).
    Data {
        /// Bytes written.
        n: usize,
        /// Whether the stream ends after them.
        fin: bool,
    },
    /// Nothing is readable now (quiche's `Done`, a pending quinn read).
    Done,
}

/// Bytes of the session stream that do not yet form a whole sealed frame, and whether the
/// peer finished the stream.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    /// `rx[..filled]` is stream data; the rest is scratch kept initialized, so a read is
    /// handed room without zeroing it first (the buffer only grows with a read's room).
    rx: Vec<u8>,
    filled: usize,
    fin_received: bool,
    open: Option<OpenFrame>,
    /// Frames opened so far: the index of the frame being read (the frame deadline is per
    /// frame, so a peer streaming frames back to back is not taken for one stuck mid-frame).
    opened: u64,
}

impl FrameReader {
    /// Appends stream bytes that arrived before the sealed-frame phase (the ones after the
    /// last handshake message).
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.rx.truncate(self.filled);
        self.rx.extend_from_slice(bytes);
        self.filled = self.rx.len();
    }

    /// Records that the peer finished the stream (seen while the handshake was read).
    pub(crate) fn set_fin(&mut self) {
        self.fin_received = true;
    }

    /// Whether the peer finished its direction of the stream.
    pub(crate) fn fin_received(&self) -> bool {
        self.fin_received
    }

    /// Bytes of a partial frame held.
    pub(crate) fn buffered(&self) -> usize {
        self.filled
    }

    /// The stream data held.
    fn data(&self) -> &[u8] {
        self.rx.get(..self.filled).unwrap_or_default()
    }

    /// Whether part of a frame is held and the rest has not arrived (a whole frame waiting
    /// to be opened does not count).
    pub(crate) fn awaiting_bytes(&self) -> bool {
        if self.filled == 0 || self.open.is_some() {
            return false;
        }
        if self.filled < seal::HEADER_LEN {
            return true;
        }
        match seal::frame_len(frame_header(self.data())) {
            Ok(len) => self.filled < seal::HEADER_LEN + len,
            Err(_) => false,
        }
    }

    /// Frames opened so far, which is also the index of the frame being read now.
    pub(crate) fn frames_opened(&self) -> u64 {
        self.opened
    }

    /// Whether an opened frame's records are still being handed on (the frame stays whole
    /// in the buffer until the last one is out).
    pub(crate) fn holds_open_frame(&self) -> bool {
        self.open.is_some()
    }

    /// Bytes the buffer holds room for (what a partial frame costs in memory).
    pub(crate) fn capacity(&self) -> usize {
        self.rx.capacity()
    }

    /// Takes up to `max_frames` steps, appending records to `out`, and returns how many
    /// steps gave records. A step opens the next whole frame or continues the open one, and
    /// hands on at most [`RECORDS_PER_STEP`] of its records; a frame's batch is checked
    /// whole when it is opened, so a malformed one is refused before any record is used. `read` fills the front of the buffer it is given from the
    /// stream; it is asked only for bytes the current frame still lacks, at most
    /// [`RX_CHUNK`] at a time, so unread data stays with the source (flow control) and the
    /// buffer grows with bytes that arrived, not with what a header announces.
    ///
    /// On an error (the protocol's, or one `read` returned) the stream is unusable: nothing
    /// is guaranteed about what was appended to `out` for the failing frame.
    pub(crate) fn read_frames<E: From<StreamError>>(
        &mut self,
        opener: &mut Opener,
        out: &mut Vec<Record>,
        pool: &mut PayloadPool,
        max_frames: usize,
        mut read: impl FnMut(&mut [u8]) -> Result<StreamRead, E>,
    ) -> Result<usize, E> {
        let protocol = |e: StreamError| E::from(e);
        let mut frames = 0;
        while frames < max_frames {
            if let Some(mut f) = self.open {
                let plain = self
                    .rx
                    .get(..f.plain_end)
                    .ok_or(StreamError::Protocol("frame bounds"))
                    .map_err(protocol)?;
                wire::decode_records_pooled(plain, &mut f.at, RECORDS_PER_STEP, out, pool)
                    .map_err(|e| protocol(e.into()))?;
                frames += 1;
                if f.at >= f.plain_end {
                    self.open = None;
                    // The frame's bytes are consumed: move what follows it to the front.
                    let rest = self.filled.saturating_sub(f.len);
                    if rest > 0 && self.filled <= self.rx.len() {
                        self.rx.copy_within(f.len..self.filled, 0);
                    }
                    self.filled = rest;
                    // A large frame must not pin its buffer for the connection's lifetime.
                    if self.rx.capacity() > RX_KEEP && self.filled <= RX_KEEP {
                        self.rx.truncate(RX_KEEP);
                        self.rx.shrink_to(RX_KEEP);
                    }
                } else {
                    self.open = Some(f);
                }
                continue;
            }
            // Work out how many bytes the current frame still needs.
            let need = if self.filled < seal::HEADER_LEN {
                seal::HEADER_LEN
            } else {
                let header = frame_header(self.data());
                seal::HEADER_LEN + seal::frame_len(header).map_err(|e| protocol(e.into()))?
            };
            if self.filled >= need {
                let header = frame_header(self.data());
                let body = self
                    .rx
                    .get_mut(seal::HEADER_LEN..need)
                    .ok_or(StreamError::Protocol("frame bounds"))
                    .map_err(protocol)?;
                let n = opener
                    .open_in_place(header, body)
                    .map_err(|e| protocol(e.into()))?;
                let plain = body
                    .get(..n)
                    .ok_or(StreamError::Protocol("frame bounds"))
                    .map_err(protocol)?;
                wire::validate_batch(plain).map_err(|e| protocol(e.into()))?;
                self.opened += 1;
                self.open = Some(OpenFrame {
                    len: need,
                    plain_end: seal::HEADER_LEN + n,
                    at: seal::HEADER_LEN,
                });
                continue;
            }
            if self.fin_received {
                if self.filled == 0 {
                    break;
                }
                return Err(protocol(StreamError::FinMidFrame));
            }
            // Read what the frame still lacks, a chunk at a time.
            let have = self.filled;
            let upto = need.min(have + RX_CHUNK);
            if self.rx.len() < upto {
                self.rx.resize(upto, 0);
            }
            let dst = self.rx.get_mut(have..upto).unwrap_or(&mut []);
            match read(dst) {
                Ok(StreamRead::Data { n: 0, fin: false }) => {
                    // Nothing came after all: as `Done`, so a source cannot spin this loop.
                    break;
                }
                Ok(StreamRead::Data { n, fin }) => {
                    // A source never reports more than it was given room for.
                    self.filled = have + n.min(upto - have);
                    if fin {
                        self.fin_received = true;
                    }
                }
                Ok(StreamRead::Done) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(frames)
    }
}

fn frame_header(rx: &[u8]) -> [u8; seal::HEADER_LEN] {
    let mut h = [0u8; seal::HEADER_LEN];
    if let Some(src) = rx.get(..seal::HEADER_LEN) {
        h.copy_from_slice(src);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::seal::{SealKey, Sealer};
    use crate::wire::{Message, PeerId};

    fn sealed(plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Sealer::new(SealKey::from_bytes([3; 32]))
            .seal_into(plain, &mut out)
            .unwrap();
        out
    }

    /// A source that hands out `bytes` as far as each read has room.
    fn source(bytes: &[u8]) -> impl FnMut(&mut [u8]) -> Result<StreamRead, StreamError> + '_ {
        let mut off = 0;
        move |dst: &mut [u8]| {
            let n = dst.len().min(bytes.len() - off);
            if n == 0 {
                return Ok(StreamRead::Done);
            }
            dst[..n].copy_from_slice(&bytes[off..off + n]);
            off += n;
            Ok(StreamRead::Data { n, fin: false })
        }
    }

    #[test]
    fn a_frame_of_many_records_is_handed_on_a_step_at_a_time() {
        let records: Vec<Record> = (0..5000)
            .map(|seq| {
                Record::Message(Message {
                    dst: PeerId([1; 16]),
                    src: PeerId([2; 16]),
                    seq,
                    payload: Vec::new(),
                })
            })
            .collect();
        let mut plain = Vec::new();
        wire::encode_batch(&records, &mut plain);
        let frame = sealed(&plain);
        let mut reader = FrameReader::default();
        let mut opener = Opener::new(SealKey::from_bytes([3; 32]));
        let mut read = source(&frame);
        let mut got = Vec::new();
        let mut steps = 0;
        loop {
            let mut step = Vec::new();
            let n = reader
                .read_frames(
                    &mut opener,
                    &mut step,
                    &mut PayloadPool::none(),
                    1,
                    &mut read,
                )
                .unwrap();
            if n == 0 {
                break;
            }
            assert!(step.len() <= RECORDS_PER_STEP, "{}", step.len());
            assert!(!reader.awaiting_bytes(), "an opened frame awaits nothing");
            got.extend(step);
            steps += 1;
        }
        assert_eq!(got, records);
        assert_eq!(steps, 5000usize.div_ceil(RECORDS_PER_STEP));
        assert_eq!(reader.buffered(), 0, "the frame is dropped once handed on");
    }

    #[test]
    fn a_malformed_batch_is_refused_before_any_record_is_used() {
        let ok = Record::Message(Message {
            dst: PeerId([1; 16]),
            src: PeerId([2; 16]),
            seq: 1,
            payload: b"fine".to_vec(),
        });
        let mut plain = Vec::new();
        wire::encode_batch([&ok, &ok], &mut plain);
        plain.push(0x7f); // an unknown record type after two good records
        let frame = sealed(&plain);
        let mut reader = FrameReader::default();
        let mut opener = Opener::new(SealKey::from_bytes([3; 32]));
        let mut out = Vec::new();
        let res = reader.read_frames(
            &mut opener,
            &mut out,
            &mut PayloadPool::none(),
            4,
            source(&frame),
        );
        assert!(res.is_err());
        assert!(out.is_empty(), "{out:?}");
    }

    /// Frames of shrinking and growing sizes, trickled in small reads: the scratch a larger
    /// frame left past the data never shows up in a later one, and pooled payloads decode
    /// the same as fresh ones.
    #[test]
    fn scratch_left_by_a_larger_frame_never_leaks_into_the_next() {
        let batch = |n: u64, len: usize| -> Vec<Record> {
            (0..n)
                .map(|seq| {
                    Record::Message(Message {
                        dst: PeerId([1; 16]),
                        src: PeerId([2; 16]),
                        seq,
                        payload: vec![u8::try_from(len % 251).unwrap(); len],
                    })
                })
                .collect()
        };
        let batches = [batch(40, 300), batch(3, 5), batch(1, 0), batch(20, 64)];
        let mut sealer = Sealer::new(SealKey::from_bytes([3; 32]));
        let mut stream = Vec::new();
        for b in &batches {
            let mut plain = Vec::new();
            wire::encode_batch(b, &mut plain);
            sealer.seal_into(&plain, &mut stream).unwrap();
        }
        for chunk in [7, 1000, usize::MAX] {
            let mut reader = FrameReader::default();
            let mut opener = Opener::new(SealKey::from_bytes([3; 32]));
            let mut pool = PayloadPool::new(64, 4096);
            let mut off = 0;
            let mut read = |dst: &mut [u8]| {
                let n = dst.len().min(stream.len() - off).min(chunk);
                if n == 0 {
                    return Ok::<_, StreamError>(StreamRead::Done);
                }
                dst[..n].copy_from_slice(&stream[off..off + n]);
                off += n;
                Ok(StreamRead::Data { n, fin: false })
            };
            let mut got = Vec::new();
            loop {
                let mut step = Vec::new();
                if reader
                    .read_frames(&mut opener, &mut step, &mut pool, 1, &mut read)
                    .unwrap()
                    == 0
                {
                    break;
                }
                for r in &step {
                    if let Record::Message(m) = r {
                        pool.put(m.payload.clone());
                    }
                }
                got.extend(step);
            }
            assert_eq!(got, batches.concat(), "chunk {chunk}");
            assert_eq!(reader.buffered(), 0);
            assert!(!reader.awaiting_bytes());
        }
    }
}
