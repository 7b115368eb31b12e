//! The receive side of the sealed-frame phase of the session stream, without QUIC.
//!
//! [`FrameReader`] holds the bytes of a frame that has not arrived whole, pulls more from a
//! stream source only as far as the current frame needs, opens whole frames and decodes
//! their batches. [`crate::session::Session`] drives it with quiche's `stream_recv` as the
//! source; the fuzz target `session_recv` drives it with arbitrary bytes in arbitrary
//! chunks, so the buffering logic is exercised without sockets or a QUIC connection.

use crate::seal::{self, Opener};
use crate::session::SessionError;
use crate::wire::{self, Record};

/// Most bytes of a partial frame read from the stream per step.
pub(crate) const RX_CHUNK: usize = 64 * 1024;
/// Receive-buffer capacity kept after a larger frame has been consumed.
pub(crate) const RX_KEEP: usize = 256 * 1024;

/// What one read from the stream source gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRead {
    /// `n` bytes were written to the front of the buffer; `fin` when they end the stream.
    Data { n: usize, fin: bool },
    /// Nothing is readable now (quiche's `Done`).
    Done,
}

/// Bytes of the session stream that do not yet form a whole sealed frame, and whether the
/// peer finished the stream.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    rx: Vec<u8>,
    fin_received: bool,
}

impl FrameReader {
    /// Appends stream bytes that arrived before the sealed-frame phase (the ones after the
    /// last handshake message).
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.rx.extend_from_slice(bytes);
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
        self.rx.len()
    }

    /// Whether part of a frame is held and the rest has not arrived (a whole frame waiting
    /// to be opened does not count).
    pub(crate) fn awaiting_bytes(&self) -> bool {
        if self.rx.is_empty() {
            return false;
        }
        if self.rx.len() < seal::HEADER_LEN {
            return true;
        }
        match seal::frame_len(frame_header(&self.rx)) {
            Ok(len) => self.rx.len() < seal::HEADER_LEN + len,
            Err(_) => false,
        }
    }

    /// Bytes the buffer holds room for (what a partial frame costs in memory).
    pub(crate) fn capacity(&self) -> usize {
        self.rx.capacity()
    }

    /// Opens up to `max_frames` whole frames, appending their records to `out`, and returns
    /// how many were opened. `read` fills the front of the buffer it is given from the
    /// stream; it is asked only for bytes the current frame still lacks, at most
    /// [`RX_CHUNK`] at a time, so unread data stays with the source (flow control) and the
    /// buffer grows with bytes that arrived, not with what a header announces.
    ///
    /// On an error the stream is unusable: nothing is guaranteed about what was appended
    /// to `out` for the failing frame.
    pub(crate) fn read_frames(
        &mut self,
        opener: &mut Opener,
        out: &mut Vec<Record>,
        max_frames: usize,
        mut read: impl FnMut(&mut [u8]) -> Result<StreamRead, SessionError>,
    ) -> Result<usize, SessionError> {
        let mut frames = 0;
        while frames < max_frames {
            // Work out how many bytes the current frame still needs.
            let need = if self.rx.len() < seal::HEADER_LEN {
                seal::HEADER_LEN
            } else {
                let header = frame_header(&self.rx);
                seal::HEADER_LEN + seal::frame_len(header)?
            };
            if self.rx.len() >= need {
                let header = frame_header(&self.rx);
                let body = self
                    .rx
                    .get_mut(seal::HEADER_LEN..need)
                    .ok_or(SessionError::Protocol("frame bounds"))?;
                let n = opener.open_in_place(header, body)?;
                let plain = body
                    .get(..n)
                    .ok_or(SessionError::Protocol("frame bounds"))?;
                wire::decode_batch(plain, out)?;
                self.rx.drain(..need);
                // A large frame must not pin its buffer for the connection's lifetime.
                if self.rx.capacity() > RX_KEEP && self.rx.len() <= RX_KEEP {
                    self.rx.shrink_to(RX_KEEP);
                }
                frames += 1;
                continue;
            }
            if self.fin_received {
                if self.rx.is_empty() {
                    break;
                }
                return Err(SessionError::FinMidFrame);
            }
            // Read what the frame still lacks, a chunk at a time.
            let have = self.rx.len();
            let upto = need.min(have + RX_CHUNK);
            self.rx.resize(upto, 0);
            let dst = self.rx.get_mut(have..upto).unwrap_or(&mut []);
            match read(dst) {
                Ok(StreamRead::Data { n, fin }) => {
                    // A source never reports more than it was given room for.
                    self.rx.truncate(have + n.min(upto - have));
                    if fin {
                        self.fin_received = true;
                    }
                }
                Ok(StreamRead::Done) => {
                    self.rx.truncate(have);
                    break;
                }
                Err(e) => {
                    self.rx.truncate(have);
                    return Err(e);
                }
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
