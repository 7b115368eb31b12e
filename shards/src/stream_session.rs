//! The session-stream protocol without a transport: Noise handshake, sealed frames, records.
//!
//! A [`StreamSession`] is what one side of a connection runs on its session stream (stream 0,
//! docs/PROTOCOL.md sections 4 to 8) with the QUIC library left out. The transport lends it
//! a *stream source*, a callback that fills a buffer from the stream and answers with a
//! [`StreamRead`]: [`StreamSession::read_handshake`] reads handshake messages with it,
//! [`StreamSession::read_records`] reads, opens and decodes sealed frames with it (the frame
//! reader the `session_recv` fuzz target exercises, the only receive path). Handshake
//! replies and sealed frames wait in [`StreamSession::outgoing`] until the transport takes
//! them; records go in as sealed batches ([`StreamSession::send_batch`]).
//! [`crate::session::Session`] drives one over a quiche connection, and the harness's
//! control server over a quinn stream, so the protocol has one implementation.
//!
//! The source is asked only for what the current handshake message or sealed frame still
//! lacks, so a transport's unread data stays in its receive buffer, and a driver that stops
//! calling [`StreamSession::read_records`] stops reading: back-pressure through QUIC flow
//! control (section 12). An opened frame's batch is checked whole, then its records are
//! handed on at most 1024 per step.
//!
//! ```
//! use shards::handshake::Role;
//! use shards::identity::Identity;
//! use shards::stream_session::{StreamError, StreamRead, StreamSession};
//! use shards::wire::{Message, Record};
//!
//! /// Moves what `from` wrote to `to`, as a transport's stream would, and returns the
//! /// records `to` decoded.
//! fn carry(from: &mut StreamSession, to: &mut StreamSession) -> Result<Vec<Record>, StreamError> {
//!     let bytes = from.outgoing().to_vec();
//!     from.advance_outgoing(bytes.len());
//!     let mut rest = &bytes[..];
//!     let mut source = |dst: &mut [u8]| {
//!         let n = dst.len().min(rest.len());
//!         if n == 0 {
//!             return Ok::<_, StreamError>(StreamRead::Done);
//!         }
//!         dst[..n].copy_from_slice(&rest[..n]);
//!         rest = &rest[n..];
//!         Ok(StreamRead::Data { n, fin: false })
//!     };
//!     to.read_handshake(&mut source)?;
//!     let mut out = Vec::new();
//!     while to.read_records(&mut out, 16, &mut source)? > 0 {}
//!     Ok(out)
//! }
//!
//! let (cid, sid) = (Identity::generate()?, Identity::generate()?);
//! let mut client = StreamSession::new(Role::Initiator, &cid)?;
//! let mut server = StreamSession::new(Role::Responder, &sid)?;
//! client.begin(); // the transport can carry stream data now: msg1 is queued
//! for _ in 0..2 {
//!     carry(&mut client, &mut server)?;
//!     carry(&mut server, &mut client)?;
//! }
//! assert!(client.is_open() && server.is_open());
//! assert_eq!(server.peer(), Some(cid.peer_id()));
//!
//! let record = Record::Message(Message {
//!     dst: sid.peer_id(),
//!     src: cid.peer_id(),
//!     seq: 1,
//!     payload: b"hi".to_vec(),
//! });
//! client.send_batch([&record])?;
//! assert_eq!(carry(&mut client, &mut server)?, vec![record]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::frames::FrameReader;
use crate::handshake::{Handshake, HandshakeError, Role};
use crate::identity::Identity;
use crate::seal::{self, Opener, SealError, SealKey, Sealer};
use crate::wire::{self, PayloadPool, PeerId, Record, WireError, close_code};

pub use crate::frames::StreamRead;

/// Why the session stream failed; each maps to the QUIC application close code sent to the
/// peer ([`StreamError::close_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The Noise handshake failed (bad message, wrong key, oversize).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A sealed frame did not authenticate (tampered, replayed, reordered, truncated) or
    /// its header announced more than the frame limit.
    #[error("seal: {0}")]
    Seal(#[from] SealError),
    /// A batch did not decode.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// The peer broke a protocol rule.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A send was attempted before the handshake finished or after the stream finished.
    #[error("session is not open for sending")]
    NotOpen,
    /// The peer finished the session stream with part of a sealed frame still buffered
    /// (a truncated frame); closed with `SEAL_FAILED` and reason [`FIN_MID_FRAME`].
    #[error("{FIN_MID_FRAME}")]
    FinMidFrame,
}

/// Close reason text sent when the peer's stream FIN arrives inside a sealed frame.
pub const FIN_MID_FRAME: &str = "stream finished mid-frame";

impl StreamError {
    /// The QUIC application close code this error is reported with.
    pub fn close_code(&self) -> u64 {
        match self {
            StreamError::NotOpen => close_code::INTERNAL_ERROR,
            StreamError::Handshake(_) => close_code::HANDSHAKE_FAILED,
            StreamError::Seal(SealError::TooLarge { .. } | SealError::TooShort { .. }) => {
                close_code::FRAME_TOO_LARGE
            }
            StreamError::Seal(_) | StreamError::FinMidFrame => close_code::SEAL_FAILED,
            StreamError::Wire(_) | StreamError::Protocol(_) => close_code::PROTOCOL_VIOLATION,
        }
    }
}

enum Phase {
    /// Noise handshake in progress.
    Handshaking(Box<Handshake>),
    /// Keys agreed; sealed frames flow.
    Open { sealer: Sealer, opener: Opener },
    /// A fatal error happened; nothing more is read or sealed.
    Failed,
}

/// Most bytes read from the stream per step while the handshake runs (a message is at most
/// `2 + MAX_HANDSHAKE_MSG`); bytes after msg3 go to the frame reader.
const HANDSHAKE_READ: usize = 1024;

/// One side's session-stream protocol state: handshake, seal and open, buffers, FIN flags.
pub struct StreamSession {
    phase: Phase,
    peer: Option<PeerId>,
    /// Bytes read from the stream that do not yet form a whole sealed frame (or an opened
    /// frame whose records are being handed on), and whether the peer finished the stream.
    rx: FrameReader,
    /// Handshake and sealed bytes waiting for the transport to take them.
    tx: Vec<u8>,
    tx_off: usize,
    /// Bytes the transport has taken since the session started; it only moves while the
    /// peer grants flow-control credit (the driver's stall detector).
    tx_accepted: u64,
    fin_wanted: bool,
    fin_sent: bool,
}

impl std::fmt::Debug for StreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSession")
            .field("peer", &self.peer)
            .field("established", &self.is_established())
            .field("received", &self.rx.buffered())
            .field("pending_out", &self.pending_bytes())
            .finish_non_exhaustive()
    }
}

impl StreamSession {
    /// Starts the protocol as `role` (the QUIC client is the initiator) with this side's
    /// static identity.
    pub fn new(role: Role, identity: &Identity) -> Result<StreamSession, StreamError> {
        Ok(Self::with_phase(Phase::Handshaking(Box::new(
            Handshake::new(role, identity)?,
        ))))
    }

    fn with_phase(phase: Phase) -> StreamSession {
        StreamSession {
            phase,
            peer: None,
            rx: FrameReader::default(),
            tx: Vec::new(),
            tx_off: 0,
            tx_accepted: 0,
            fin_wanted: false,
            fin_sent: false,
        }
    }

    /// A session past its handshake, opening frames sealed under `recv` (the fuzz target's
    /// way in, without a Noise handshake).
    pub(crate) fn open_with_keys(send: SealKey, recv: SealKey, peer: PeerId) -> StreamSession {
        let mut s = Self::with_phase(Phase::Open {
            sealer: Sealer::new(send),
            opener: Opener::new(recv),
        });
        s.peer = Some(peer);
        s
    }

    /// Queues the handshake bytes this side owes before reading anything (the initiator's
    /// msg1). Call it once the transport can carry stream data (the QUIC handshake is
    /// complete); [`StreamSession::read_handshake`] calls it too, and calling it again does
    /// nothing.
    pub fn begin(&mut self) {
        if let Phase::Handshaking(hs) = &mut self.phase
            && let Some(out) = hs.take_outgoing()
        {
            self.tx.extend_from_slice(&out);
        }
    }

    /// The authenticated peer id, once the Noise handshake finished.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// Whether the Noise handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshaking(_))
    }

    /// Whether keys are agreed and the session has not failed.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Whether batches can be sealed: established and not finishing.
    pub fn is_open(&self) -> bool {
        self.is_established() && !self.fin_wanted
    }

    /// Whether the peer finished its direction of the stream.
    pub fn peer_finished(&self) -> bool {
        self.rx.fin_received()
    }

    /// Runs the Noise handshake over what `read` gives: queues this side's messages in
    /// [`StreamSession::outgoing`], reads at most 1024 bytes a call, and stops when `read`
    /// has nothing more ([`StreamRead::Done`]) or the handshake finished; bytes after the
    /// last message are kept for [`StreamSession::read_records`]. Does nothing once the
    /// handshake is over. A FIN inside the handshake is a protocol violation.
    ///
    /// On an error (the protocol's, or one `read` returned) the session has failed and the
    /// connection must be closed ([`StreamError::close_code`]).
    pub fn read_handshake<E: From<StreamError>>(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> Result<StreamRead, E>,
    ) -> Result<(), E> {
        self.begin();
        let res = self.read_handshake_inner(&mut read);
        if res.is_err() {
            self.fail();
        }
        res
    }

    fn read_handshake_inner<E: From<StreamError>>(
        &mut self,
        read: &mut impl FnMut(&mut [u8]) -> Result<StreamRead, E>,
    ) -> Result<(), E> {
        let Phase::Handshaking(hs) = &mut self.phase else {
            return Ok(());
        };
        let mut buf = [0u8; HANDSHAKE_READ];
        while !hs.is_finished() {
            let (n, fin) = match read(&mut buf)? {
                StreamRead::Data { n: 0, fin: false } | StreamRead::Done => break,
                StreamRead::Data { n, fin } => (n, fin),
            };
            let data = buf.get(..n).unwrap_or(&[]);
            let used = hs.feed(data).map_err(|e| E::from(e.into()))?;
            self.rx.extend(data.get(used..).unwrap_or(&[]));
            if let Some(out) = hs.take_outgoing() {
                self.tx.extend_from_slice(&out);
            }
            if fin {
                if !hs.is_finished() {
                    return Err(StreamError::Protocol("stream finished in handshake").into());
                }
                self.rx.set_fin();
            }
        }
        if hs.is_finished() {
            if let Some(out) = hs.take_outgoing() {
                self.tx.extend_from_slice(&out);
            }
            let Phase::Handshaking(hs) = std::mem::replace(&mut self.phase, Phase::Failed) else {
                return Err(StreamError::NotOpen.into());
            };
            let keys = hs.into_keys().map_err(|e| E::from(e.into()))?;
            self.peer = Some(keys.remote_peer);
            self.phase = Phase::Open {
                sealer: Sealer::new(SealKey::from_bytes(*keys.send)),
                opener: Opener::new(SealKey::from_bytes(*keys.recv)),
            };
        }
        Ok(())
    }

    /// Takes up to `max_steps` steps of the frame reader, appending records to `out`, and
    /// returns how many steps gave records (0 before the handshake finished, after a
    /// failure, when `read` has nothing more or when the peer finished after a whole
    /// frame). A step opens the next whole frame (its batch checked whole before any record
    /// is used) or continues the open one, and hands on at most 1024 records. `read` is
    /// asked only for bytes the current frame still lacks, at most 64 KiB a call, so data
    /// that is not read stays with the transport (flow control) and the buffer grows with
    /// bytes that arrived, not with what a frame header announces.
    ///
    /// On an error (bad header, failed authentication, invalid batch, FIN inside a frame,
    /// or one `read` returned) the session has failed and the connection must be closed
    /// ([`StreamError::close_code`]).
    pub fn read_records<E: From<StreamError>>(
        &mut self,
        out: &mut Vec<Record>,
        max_steps: usize,
        read: impl FnMut(&mut [u8]) -> Result<StreamRead, E>,
    ) -> Result<usize, E> {
        self.read_records_pooled(out, &mut PayloadPool::none(), max_steps, read)
    }

    /// [`StreamSession::read_records`], taking message payload buffers from `pool` where
    /// they fit (the node's and the client's hot path: no allocation per message).
    pub fn read_records_pooled<E: From<StreamError>>(
        &mut self,
        out: &mut Vec<Record>,
        pool: &mut PayloadPool,
        max_steps: usize,
        read: impl FnMut(&mut [u8]) -> Result<StreamRead, E>,
    ) -> Result<usize, E> {
        let Phase::Open { opener, .. } = &mut self.phase else {
            return Ok(0);
        };
        let res = self.rx.read_frames(opener, out, pool, max_steps, read);
        if res.is_err() {
            self.fail();
        }
        res
    }

    /// Bytes read from the stream and not yet consumed (part of a frame, or an opened frame
    /// whose records are still being handed on): what the receive side holds in memory.
    pub fn received_bytes(&self) -> usize {
        self.rx.buffered()
    }

    /// Whether part of a sealed frame is held and the rest has not been read, while the
    /// session is open: the frame deadline runs while this holds and the transport has
    /// none of the rest readable (a whole or opened frame does not count).
    pub fn awaiting_frame_bytes(&self) -> bool {
        self.is_open() && self.rx.awaiting_bytes()
    }

    /// Sealed frames opened so far: while [`StreamSession::awaiting_frame_bytes`] holds,
    /// the index of the frame awaited, so a deadline can be kept per frame.
    pub fn frames_opened(&self) -> u64 {
        self.rx.frames_opened()
    }

    /// Whether an opened frame's records are still being handed on: more records come
    /// without reading the stream.
    pub fn holds_open_frame(&self) -> bool {
        self.rx.holds_open_frame()
    }

    /// Hands bytes to the frame reader as if read after the handshake's last message (the
    /// fuzz target's leftover op).
    pub(crate) fn extend_received(&mut self, bytes: &[u8]) {
        self.rx.extend(bytes);
    }

    /// Capacity of the receive buffer (what a partial frame costs in memory).
    pub(crate) fn rx_capacity(&self) -> usize {
        self.rx.capacity()
    }

    /// Encodes and seals `records` as one batch (one AEAD operation) and appends the frame
    /// to the outgoing bytes. [`StreamError::NotOpen`] before the handshake finished, after
    /// [`StreamSession::finish`] or after a failure.
    pub fn send_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(), StreamError> {
        if self.fin_wanted {
            return Err(StreamError::NotOpen);
        }
        let Phase::Open { sealer, .. } = &mut self.phase else {
            return Err(StreamError::NotOpen);
        };
        // Encoded straight into the outgoing bytes after room for the frame header, then
        // sealed in place: the plaintext is never copied.
        let start = self.tx.len();
        self.tx.extend_from_slice(&[0; seal::HEADER_LEN]);
        wire::encode_batch(records, &mut self.tx);
        if self.tx.len() == start + seal::HEADER_LEN {
            self.tx.truncate(start);
            return Ok(());
        }
        sealer.seal_tail(&mut self.tx, start)?;
        Ok(())
    }

    /// Appends raw bytes to the outgoing stream, bypassing the seal. Only for tests that
    /// check how a peer reacts to forged or replayed frames.
    #[doc(hidden)]
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.tx.extend_from_slice(bytes);
    }

    /// Seals `records` and returns the frame bytes without queuing them. Only for tests
    /// that replay or reorder frames.
    #[doc(hidden)]
    pub fn seal_detached(&mut self, records: &[Record]) -> Result<Vec<u8>, StreamError> {
        let Phase::Open { sealer, .. } = &mut self.phase else {
            return Err(StreamError::NotOpen);
        };
        let mut plain = Vec::new();
        wire::encode_batch(records, &mut plain);
        let mut out = Vec::new();
        sealer.seal_into(&plain, &mut out)?;
        Ok(out)
    }

    /// The bytes to write to the stream next (handshake messages, then sealed frames).
    pub fn outgoing(&self) -> &[u8] {
        self.tx.get(self.tx_off..).unwrap_or(&[])
    }

    /// The transport took the first `n` bytes of [`StreamSession::outgoing`] (0 when it
    /// could take none).
    pub fn advance_outgoing(&mut self, n: usize) {
        let n = n.min(self.tx.len() - self.tx_off);
        self.tx_off += n;
        self.tx_accepted += n as u64;
        if self.tx_off == self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        } else if self.tx_off > 64 * 1024 && self.tx_off * 2 > self.tx.len() {
            self.tx.drain(..self.tx_off);
            self.tx_off = 0;
        }
    }

    /// Outgoing bytes not yet taken by the transport.
    pub fn pending_bytes(&self) -> usize {
        self.tx.len() - self.tx_off
    }

    /// Outgoing bytes the transport has taken so far. It stops moving while the peer
    /// withholds flow-control credit, which tells a peer that stopped reading from one that
    /// is merely slow.
    pub fn accepted_bytes(&self) -> u64 {
        self.tx_accepted
    }

    /// Ends this side's direction once every outgoing byte is taken: no batch is sealed
    /// after it, and [`StreamSession::fin_due`] says when to send the FIN.
    pub fn finish(&mut self) {
        self.fin_wanted = true;
    }

    /// Whether the transport should send the stream's FIN now: [`StreamSession::finish`]
    /// was called, everything before it was taken, the handshake finished, and the FIN was
    /// not sent yet.
    pub fn fin_due(&self) -> bool {
        self.fin_wanted && !self.fin_sent && self.tx.is_empty() && self.peer.is_some()
    }

    /// The transport sent the FIN.
    pub fn fin_written(&mut self) {
        self.fin_sent = true;
    }

    /// Whether this side's FIN was sent.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// Whether both directions finished with nothing received left over (the transport
    /// still has to say whether what this side sent was acknowledged).
    pub fn both_finished(&self) -> bool {
        self.fin_sent && self.rx.fin_received() && self.rx.buffered() == 0
    }

    /// Marks the session failed (also for errors the transport found): nothing more is
    /// read or sealed.
    pub fn fail(&mut self) {
        self.phase = Phase::Failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::RECORDS_PER_STEP;
    use crate::seal;
    use crate::wire::{ErrorCode, ErrorRecord, Message};

    fn message(seq: u64, payload: &[u8]) -> Record {
        Record::Message(Message {
            dst: PeerId([2; 16]),
            src: PeerId([1; 16]),
            seq,
            payload: payload.to_vec(),
        })
    }

    /// Takes everything `from` has to write.
    fn take(from: &mut StreamSession) -> Vec<u8> {
        let out = from.outgoing().to_vec();
        from.advance_outgoing(out.len());
        out
    }

    /// A stream the tests write to and a session reads from, at most `chunk` bytes a read;
    /// it records the largest read asked for.
    struct Pipe {
        bytes: Vec<u8>,
        off: usize,
        chunk: usize,
        fin: bool,
        asked: Vec<usize>,
    }

    impl Pipe {
        fn new(chunk: usize) -> Pipe {
            Pipe {
                bytes: Vec::new(),
                off: 0,
                chunk,
                fin: false,
                asked: Vec::new(),
            }
        }

        fn read(&mut self, dst: &mut [u8]) -> Result<StreamRead, StreamError> {
            self.asked.push(dst.len());
            let n = dst.len().min(self.chunk).min(self.bytes.len() - self.off);
            dst[..n].copy_from_slice(&self.bytes[self.off..self.off + n]);
            self.off += n;
            let fin = self.fin && self.off == self.bytes.len();
            if n == 0 && !fin {
                return Ok(StreamRead::Done);
            }
            Ok(StreamRead::Data { n, fin })
        }

        fn unread(&self) -> usize {
            self.bytes.len() - self.off
        }
    }

    /// Runs both handshakes, moving stream bytes `chunk` at a time.
    fn open_pair(chunk: usize) -> (StreamSession, StreamSession, Identity, Identity) {
        let (cid, sid) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let mut c = StreamSession::new(Role::Initiator, &cid).unwrap();
        let mut s = StreamSession::new(Role::Responder, &sid).unwrap();
        let (mut to_s, mut to_c) = (Pipe::new(chunk), Pipe::new(chunk));
        c.begin();
        for _ in 0..64 {
            to_s.bytes.extend(take(&mut c));
            s.read_handshake(|d: &mut [u8]| to_s.read(d)).unwrap();
            to_c.bytes.extend(take(&mut s));
            c.read_handshake(|d: &mut [u8]| to_c.read(d)).unwrap();
            if c.is_open() && s.is_open() {
                break;
            }
        }
        assert!(c.is_open() && s.is_open());
        (c, s, cid, sid)
    }

    /// Reads every record `pipe` holds, `steps` steps a call.
    fn read_all(s: &mut StreamSession, pipe: &mut Pipe, steps: usize) -> Vec<Record> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            if s.read_records(&mut out, steps, |d: &mut [u8]| pipe.read(d))
                .unwrap()
                == 0
            {
                break;
            }
        }
        out
    }

    #[test]
    fn handshake_and_frames_survive_byte_by_byte_delivery() {
        let (mut c, mut s, cid, sid) = open_pair(1);
        assert_eq!(s.peer(), Some(cid.peer_id()));
        assert_eq!(c.peer(), Some(sid.peer_id()));
        let records = vec![message(1, b"one"), message(2, b"")];
        c.send_batch(&records).unwrap();
        c.send_batch([&records[0]]).unwrap();
        let mut pipe = Pipe::new(1);
        pipe.bytes = take(&mut c);
        let out = read_all(&mut s, &mut pipe, 1);
        assert_eq!(
            out,
            vec![records[0].clone(), records[1].clone(), records[0].clone()]
        );
        assert_eq!(pipe.unread(), 0);
    }

    #[test]
    fn sealed_bytes_right_after_msg3_are_kept_for_the_frame_phase() {
        let (cid, sid) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let mut c = StreamSession::new(Role::Initiator, &cid).unwrap();
        let mut s = StreamSession::new(Role::Responder, &sid).unwrap();
        let mut to_s = Pipe::new(usize::MAX);
        let mut to_c = Pipe::new(usize::MAX);
        c.begin();
        to_s.bytes = take(&mut c);
        s.read_handshake(|d: &mut [u8]| to_s.read(d)).unwrap();
        to_c.bytes = take(&mut s);
        c.read_handshake(|d: &mut [u8]| to_c.read(d)).unwrap();
        // msg3 and a frame in one write, as the engine client may send them: the responder
        // reads both in one handshake read.
        assert!(c.is_open());
        c.send_batch([&message(9, b"early")]).unwrap();
        to_s.bytes.extend(take(&mut c));
        s.read_handshake(|d: &mut [u8]| to_s.read(d)).unwrap();
        assert!(s.is_open());
        assert_eq!(
            to_s.unread(),
            0,
            "one handshake read took msg3 and the frame"
        );
        assert!(s.received_bytes() > 0);
        assert_eq!(read_all(&mut s, &mut to_s, 16), vec![message(9, b"early")]);
    }

    #[test]
    fn reads_ask_for_no_more_than_the_current_frame_lacks() {
        let (mut c, mut s, _, _) = open_pair(usize::MAX);
        c.send_batch([&message(1, &[7; 100])]).unwrap();
        c.send_batch([&message(2, b"next")]).unwrap();
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = take(&mut c);
        let mut out = Vec::new();
        let n = s
            .read_records(&mut out, 1, |d: &mut [u8]| pipe.read(d))
            .unwrap();
        assert_eq!((n, out), (1, vec![message(1, &[7; 100])]));
        let header: [u8; seal::HEADER_LEN] = pipe.bytes[..seal::HEADER_LEN].try_into().unwrap();
        let first = seal::HEADER_LEN + seal::frame_len(header).unwrap();
        assert_eq!(pipe.asked, [seal::HEADER_LEN, first - seal::HEADER_LEN]);
        assert_eq!(pipe.off, first, "the second frame stays with the transport");
    }

    #[test]
    fn a_partial_frame_is_awaited_only_while_open() {
        let (mut c, mut s, _, _) = open_pair(usize::MAX);
        c.send_batch([&message(1, b"half")]).unwrap();
        let frame = take(&mut c);
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = frame[..frame.len() / 2].to_vec();
        let mut out = Vec::new();
        s.read_records(&mut out, 4, |d: &mut [u8]| pipe.read(d))
            .unwrap();
        assert!(out.is_empty());
        assert!(s.awaiting_frame_bytes());
        assert_eq!(s.received_bytes(), frame.len() / 2);
        s.finish();
        assert!(!s.awaiting_frame_bytes(), "this side is finishing");
    }

    #[test]
    fn a_large_batch_is_handed_on_a_step_at_a_time() {
        let (mut c, mut s, _, _) = open_pair(usize::MAX);
        let records: Vec<Record> = (0..3000).map(|i| message(i, b"")).collect();
        c.send_batch(&records).unwrap();
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = take(&mut c);
        let mut got = Vec::new();
        let mut steps = 0;
        for _ in 0..100 {
            let mut step = Vec::new();
            if s.read_records(&mut step, 1, |d: &mut [u8]| pipe.read(d))
                .unwrap()
                == 0
            {
                break;
            }
            assert!(step.len() <= RECORDS_PER_STEP);
            steps += 1;
            got.extend(step);
            if got.len() < records.len() {
                assert!(s.holds_open_frame());
            }
        }
        assert_eq!(got, records);
        assert_eq!(steps, 3000usize.div_ceil(RECORDS_PER_STEP));
        assert!(!s.holds_open_frame());
        assert_eq!(s.received_bytes(), 0);
    }

    #[test]
    fn fin_between_frames_finishes_and_fin_inside_one_fails() {
        let (mut c, mut s, _, _) = open_pair(usize::MAX);
        c.send_batch([&message(1, b"whole")]).unwrap();
        c.finish();
        assert!(!c.fin_due(), "the frame goes out before the FIN");
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = take(&mut c);
        pipe.fin = true;
        assert!(c.fin_due());
        c.fin_written();
        assert_eq!(read_all(&mut s, &mut pipe, 16), vec![message(1, b"whole")]);
        assert!(s.peer_finished() && !s.both_finished());

        let (mut c, mut s, _, _) = open_pair(usize::MAX);
        c.send_batch([&message(1, b"cut short")]).unwrap();
        let frame = take(&mut c);
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = frame[..frame.len() / 2].to_vec();
        pipe.fin = true;
        let mut out = Vec::new();
        let err = s
            .read_records(&mut out, 16, |d: &mut [u8]| pipe.read(d))
            .unwrap_err();
        assert!(matches!(err, StreamError::FinMidFrame), "{err}");
        assert_eq!(err.close_code(), close_code::SEAL_FAILED);
        assert!(!s.is_established());
    }

    #[test]
    fn fin_during_the_handshake_is_a_protocol_violation() {
        let (cid, sid) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let mut c = StreamSession::new(Role::Initiator, &cid).unwrap();
        let mut s = StreamSession::new(Role::Responder, &sid).unwrap();
        c.begin();
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = take(&mut c);
        pipe.fin = true;
        let err = s.read_handshake(|d: &mut [u8]| pipe.read(d)).unwrap_err();
        assert_eq!(err.close_code(), close_code::PROTOCOL_VIOLATION);
        assert_eq!(
            err.to_string(),
            "protocol violation: stream finished in handshake"
        );
        assert!(!s.is_handshaking() && !s.is_established());
    }

    #[test]
    fn header_tamper_and_replay_map_to_their_close_codes() {
        let (mut c, mut s, _, _) = open_pair(usize::MAX);
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = u32::MAX.to_be_bytes().to_vec();
        let mut out = Vec::new();
        let err = s
            .read_records(&mut out, 1, |d: &mut [u8]| pipe.read(d))
            .unwrap_err();
        assert_eq!(err.close_code(), close_code::FRAME_TOO_LARGE);
        assert_eq!(
            s.read_records(&mut out, 1, |d: &mut [u8]| pipe.read(d))
                .unwrap(),
            0,
            "a failed session reads nothing more"
        );

        let (_, mut s2, _, _) = open_pair(usize::MAX);
        let mut pipe = Pipe::new(usize::MAX);
        pipe.bytes = c.seal_detached(&[message(1, b"a")]).unwrap();
        let err = s2
            .read_records(&mut out, 1, |d: &mut [u8]| pipe.read(d))
            .unwrap_err();
        assert_eq!(err.close_code(), close_code::SEAL_FAILED);
        assert!(err.to_string().starts_with("seal: "), "{err}");
    }

    #[test]
    fn a_source_error_fails_the_session() {
        let (_, mut s, _, _) = open_pair(usize::MAX);
        let mut out = Vec::new();
        let err = s
            .read_records(&mut out, 1, |_: &mut [u8]| {
                Err::<StreamRead, _>(StreamError::Protocol("transport gone"))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "protocol violation: transport gone");
        assert!(!s.is_established());
    }

    #[test]
    fn nothing_is_sealed_before_the_handshake_or_after_finish() {
        let id = Identity::generate().unwrap();
        let mut s = StreamSession::new(Role::Responder, &id).unwrap();
        let r = Record::Error(ErrorRecord {
            code: ErrorCode::UnknownDestination,
            seq: 1,
            dst: PeerId([3; 16]),
            reason: String::new(),
        });
        assert!(matches!(s.send_batch([&r]), Err(StreamError::NotOpen)));
        assert!(!s.fin_due(), "no FIN before the handshake");
        let (mut c, _, _, _) = open_pair(usize::MAX);
        c.finish();
        assert!(matches!(c.send_batch([&r]), Err(StreamError::NotOpen)));
    }
}
