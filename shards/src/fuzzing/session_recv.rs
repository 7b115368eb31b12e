//! `session_recv`: the sealed-frame receive path after the handshake, without QUIC.

use super::Input;
use crate::frames::RX_CHUNK;
use crate::seal::{self, HEADER_LEN, MAX_SEALED_LEN, Opener, SealKey, Sealer};
use crate::stream_session::{StreamError, StreamRead, StreamSession};
use crate::wire::{self, ErrorCode, ErrorRecord, Message, PeerId, Record};

/// The receive key: the key of the sealed-frame test vector in docs/PROTOCOL.md (bytes
/// `00..1f`), so frames sealed by hand with it are valid seeds.
pub(crate) fn fuzz_key() -> SealKey {
    let mut k = [0u8; 32];
    for (i, b) in (0u8..).zip(k.iter_mut()) {
        *b = i;
    }
    SealKey::from_bytes(k)
}

/// Most bytes a program may put on the stream (large frames are built by one op).
const MAX_STREAM: usize = 1 << 20;
/// Largest payload of the op that seals one big message.
const MAX_BIG_PAYLOAD: usize = 512 * 1024;

/// Feeds a stream to [`StreamSession::read_records`] (the receive path of the engine's
/// sessions and of the harness's control server) after its handshake, in arbitrary chunks,
/// and checks it against a one-shot oracle that opens the same bytes
/// from one contiguous buffer: the records and the error (if any) must not depend on how
/// the bytes arrived. Along the way: no read returns more frames than asked; the buffer
/// never holds bytes past the frame it assembles, so unread data stays with QUIC; its size
/// and capacity follow the bytes that arrived, not what a header announces.
///
/// `data[0]` with the top bit set: `data[1..]` is the raw stream, delivered in chunks of
/// `1 << (data[0] & 0x0f)` bytes, finished at the end when bit 6 is set, read with
/// `[1, 2, 16, 1024][(data[0] >> 4) & 3]` frames per call. Otherwise `data` is a program
/// of one-byte ops (`op % 8`) with their operands: 0 seal raw plaintext (u16 length), 1
/// seal a batch of records, 2 seal one big message, 3 raw bytes (u8 length), 4 deliver
/// (u16 bytes), 5 read (u8 frames), 6 finish the stream, 7 hand delivered bytes over as
/// the handshake's leftover (u8 bytes, only before the first read). When every byte on
/// the stream was sealed by an op, the records must also be exactly the sealed ones.
pub fn session_recv(data: &[u8]) {
    let mut input = Input::new(data);
    let mut sim = Sim::new();
    match input.u8() {
        Some(mode) if mode & 0x80 != 0 => {
            let chunk = 1usize << (mode & 0x0f);
            let per_read = [1, 2, 16, 1024][usize::from((mode >> 4) & 3)];
            let stream = input.rest();
            sim.stream.extend_from_slice(stream);
            sim.clean = false;
            sim.ended = mode & 0x40 != 0;
            while sim.delivered < sim.stream.len() && sim.error.is_none() {
                sim.deliver(chunk);
                sim.read(per_read);
            }
        }
        Some(first) => {
            let mut op = Some(first);
            while let Some(code) = op {
                sim.op(code, &mut input);
                op = input.u8();
            }
        }
        None => {}
    }
    sim.finish();
}

/// The expected outcome of one sealed op: the records its plaintext decodes to.
struct Sealed {
    end: usize,
    decoded: Result<Vec<Record>, wire::WireError>,
}

struct Sim {
    /// The receiving side, past its handshake, opening frames sealed under the fuzz key.
    session: StreamSession,
    sealer: Sealer,
    /// Every byte the peer put on the stream.
    stream: Vec<u8>,
    /// Bytes that arrived (readable).
    delivered: usize,
    /// Bytes the reader took.
    taken: usize,
    /// The peer finished the stream at its current end.
    ended: bool,
    fin_reported: bool,
    /// Only sealing ops wrote the stream.
    clean: bool,
    sealed: Vec<Sealed>,
    reads: usize,
    leftover_used: bool,
    out: Vec<Record>,
    error: Option<StreamError>,
    /// The most bytes the buffer can have held so far.
    peak: usize,
}

impl Sim {
    fn new() -> Self {
        Sim {
            session: StreamSession::open_with_keys(fuzz_key(), fuzz_key(), PeerId([0; 16])),
            sealer: Sealer::new(fuzz_key()),
            stream: Vec::new(),
            delivered: 0,
            taken: 0,
            ended: false,
            fin_reported: false,
            clean: true,
            sealed: Vec::new(),
            reads: 0,
            leftover_used: false,
            out: Vec::new(),
            error: None,
            peak: 0,
        }
    }

    fn op(&mut self, code: u8, input: &mut Input<'_>) {
        match code % 8 {
            0 => {
                let len = usize::from(input.u16().unwrap_or(0));
                let plain = input.take(len).to_vec();
                self.seal(&plain);
            }
            1 => {
                let records = records(input);
                let mut plain = Vec::new();
                wire::encode_batch(&records, &mut plain);
                self.seal(&plain);
            }
            2 => {
                let len = (usize::from(input.u16().unwrap_or(0)) * 8).min(MAX_BIG_PAYLOAD);
                let fill = input.u8().unwrap_or(0);
                let record = Record::Message(Message {
                    dst: PeerId([fill; 16]),
                    src: PeerId([!fill; 16]),
                    seq: len as u64,
                    payload: vec![fill; len],
                });
                let mut plain = Vec::new();
                record.encode(&mut plain);
                self.seal(&plain);
            }
            3 => {
                let len = usize::from(input.u8().unwrap_or(0));
                let raw = input.take(len);
                if self.writable(raw.len()) {
                    self.stream.extend_from_slice(raw);
                    self.clean = false;
                }
            }
            4 => {
                let n = usize::from(input.u16().unwrap_or(0));
                self.deliver(n);
            }
            5 => {
                let n = usize::from(input.u8().unwrap_or(0) % 24);
                self.read(n);
            }
            6 => self.ended = true,
            _ => {
                let n = usize::from(input.u8().unwrap_or(0));
                self.leftover(n);
            }
        }
    }

    fn writable(&self, n: usize) -> bool {
        !self.ended && self.stream.len() + n <= MAX_STREAM
    }

    fn seal(&mut self, plain: &[u8]) {
        if !self.writable(HEADER_LEN + plain.len() + seal::TAG_LEN) {
            return;
        }
        let Ok(()) = self.sealer.seal_into(plain, &mut self.stream) else {
            panic!("a plaintext under the frame limit seals");
        };
        let mut decoded = Vec::new();
        let decoded = wire::decode_batch(plain, &mut decoded).map(|()| decoded);
        self.sealed.push(Sealed {
            end: self.stream.len(),
            decoded,
        });
    }

    fn deliver(&mut self, n: usize) {
        self.delivered = self.delivered.saturating_add(n).min(self.stream.len());
    }

    /// Bytes that arrived before the sealed-frame phase go in as the handshake's leftover.
    fn leftover(&mut self, n: usize) {
        if self.reads > 0 {
            return;
        }
        let end = (self.taken + n).min(self.delivered);
        self.session
            .extend_received(self.stream.get(self.taken..end).unwrap_or_default());
        self.taken = end;
        self.leftover_used = true;
        self.peak = self.peak.max(self.session.received_bytes());
    }

    fn read(&mut self, max_frames: usize) {
        if self.error.is_some() {
            return;
        }
        self.reads += 1;
        // The most the buffer can hold during this call: what it held plus what it takes.
        let (held_before, taken_before) = (self.session.received_bytes(), self.taken);
        let (stream, delivered, ended) = (&self.stream, self.delivered, self.ended);
        let (taken, fin_reported) = (&mut self.taken, &mut self.fin_reported);
        let result = self.session.read_records(
            &mut self.out,
            max_frames,
            |dst: &mut [u8]| -> Result<StreamRead, StreamError> {
                assert!(!*fin_reported, "read after the stream's FIN");
                assert!(
                    !dst.is_empty() && dst.len() <= RX_CHUNK,
                    "read of {}",
                    dst.len()
                );
                let avail = stream.get(*taken..delivered).unwrap_or_default();
                let n = dst.len().min(avail.len());
                if let (Some(d), Some(a)) = (dst.get_mut(..n), avail.get(..n)) {
                    d.copy_from_slice(a);
                }
                *taken += n;
                let fin = ended && *taken == stream.len() && delivered == stream.len();
                if n == 0 && !fin {
                    return Ok(StreamRead::Done);
                }
                *fin_reported |= fin;
                Ok(StreamRead::Data { n, fin })
            },
        );
        let buffered = self.session.received_bytes();
        assert!(
            buffered <= self.taken,
            "{buffered} buffered of {} taken",
            self.taken
        );
        assert!(buffered <= HEADER_LEN + MAX_SEALED_LEN);
        match result {
            Ok(frames) => {
                assert!(
                    frames <= max_frames,
                    "{frames} frames for {max_frames} asked"
                );
                self.check_buffer();
            }
            Err(e) => {
                assert!(
                    !self.session.is_established(),
                    "a session that failed reads on"
                );
                self.error = Some(e);
            }
        }
        self.peak = self.peak.max(held_before + (self.taken - taken_before));
        assert!(
            self.session.rx_capacity() <= 2 * (self.peak + RX_CHUNK),
            "capacity {} for at most {} bytes held",
            self.session.rx_capacity(),
            self.peak
        );
    }

    /// After a read that did not fail, the buffer holds at most the frame being assembled
    /// (unless leftover bytes were handed over, which may span frames).
    /// An opened frame whose records are still being handed on stays whole in the buffer.
    fn check_buffer(&self) {
        if self.leftover_used || self.session.holds_open_frame() {
            return;
        }
        let buffered = self.session.received_bytes();
        let held = self.stream.get(self.taken - buffered..self.taken);
        if let Some(header) = held.and_then(|h| h.first_chunk::<HEADER_LEN>()) {
            match seal::frame_len(*header) {
                Ok(len) => assert!(
                    buffered < HEADER_LEN + len,
                    "a whole frame is left unopened in the buffer"
                ),
                Err(e) => panic!("a read succeeded with a bad header buffered: {e}"),
            }
        }
    }

    /// Everything arrives, the reader reads until it has nothing more, and the result is
    /// compared with the oracle.
    fn finish(&mut self) {
        self.delivered = self.stream.len();
        // Every call reads at least one byte, hands on at least one record of an open frame
        // (a record is at least one byte), or ends the loop.
        let bound = 2 * self.stream.len() + 2;
        for _ in 0..bound {
            let before = (self.out.len(), self.taken, self.fin_reported);
            self.read(16);
            if self.error.is_some() || before == (self.out.len(), self.taken, self.fin_reported) {
                break;
            }
        }
        let fin = self.ended;
        let expect = oracle(&self.stream, fin);
        assert_eq!(
            self.out, expect.records,
            "records depend on how bytes arrived"
        );
        let got = self.error.as_ref().map(ToString::to_string);
        assert_eq!(got, expect.error, "the error depends on how bytes arrived");
        if self.error.is_none() {
            assert_eq!(self.taken, self.stream.len(), "arrived bytes left unread");
            assert_eq!(
                self.session.received_bytes(),
                self.stream.len() - expect.consumed
            );
            assert_eq!(self.session.peer_finished(), fin);
        }
        if self.clean {
            self.check_sealed(&expect);
        }
    }

    /// A stream written only by sealing ops opens to exactly the records sealed, up to the
    /// first plaintext that is not a batch.
    fn check_sealed(&self, expect: &Outcome) {
        let mut records = Vec::new();
        let mut frames = 0;
        let mut failed = false;
        for s in &self.sealed {
            match &s.decoded {
                Ok(r) => {
                    records.extend(r.iter().cloned());
                    frames += 1;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert_eq!(expect.frames, frames, "frames opened from a sealed stream");
        if !failed {
            assert_eq!(expect.records, records);
            assert!(expect.error.is_none());
        }
        let sealed_end = self.sealed.last().map_or(0, |s| s.end);
        assert_eq!(sealed_end, self.stream.len());
    }
}

/// A batch of records from operands: a count, then per record a kind byte, a length and
/// that many bytes (a payload, or a reason made valid UTF-8).
fn records(input: &mut Input<'_>) -> Vec<Record> {
    let count = input.u8().unwrap_or(0) % 8 + 1;
    (0..count)
        .map(|i| {
            let kind = input.u8().unwrap_or(0);
            let len = usize::from(input.u8().unwrap_or(0));
            let bytes = input.take(len);
            if kind & 1 == 0 {
                Record::Message(Message {
                    dst: PeerId([kind; 16]),
                    src: PeerId([i; 16]),
                    seq: u64::from(i),
                    payload: bytes.to_vec(),
                })
            } else {
                Record::Error(ErrorRecord {
                    code: ErrorCode::from_u16(u16::from(kind >> 1)),
                    seq: u64::from(i),
                    dst: PeerId([kind; 16]),
                    reason: String::from_utf8_lossy(bytes).into_owned(),
                })
            }
        })
        .collect()
}

/// What opening a whole stream from one buffer gives.
pub(super) struct Outcome {
    pub(super) records: Vec<Record>,
    pub(super) error: Option<String>,
    pub(super) frames: usize,
    /// Bytes of the whole frames opened.
    pub(super) consumed: usize,
}

/// Opens `stream` front to back from one contiguous buffer, as the protocol defines it:
/// header, length check, body, open, decode; a partial frame at a FIN is an error.
pub(super) fn oracle(stream: &[u8], fin: bool) -> Outcome {
    let mut opener = Opener::new(fuzz_key());
    let mut o = Outcome {
        records: Vec::new(),
        error: None,
        frames: 0,
        consumed: 0,
    };
    let mut rest = stream;
    let fail = |o: &mut Outcome, e: StreamError| o.error = Some(e.to_string());
    loop {
        let Some(header) = rest.first_chunk::<HEADER_LEN>() else {
            if fin && !rest.is_empty() {
                fail(&mut o, StreamError::FinMidFrame);
            }
            return o;
        };
        let len = match seal::frame_len(*header) {
            Ok(len) => len,
            Err(e) => {
                fail(&mut o, e.into());
                return o;
            }
        };
        let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            if fin {
                fail(&mut o, StreamError::FinMidFrame);
            }
            return o;
        };
        let mut body = body.to_vec();
        let n = match opener.open_in_place(*header, &mut body) {
            Ok(n) => n,
            Err(e) => {
                fail(&mut o, e.into());
                return o;
            }
        };
        // A frame's batch is checked whole before any record is used: a malformed one
        // adds none.
        let mut records = Vec::new();
        if let Err(e) = wire::decode_batch(body.get(..n).unwrap_or_default(), &mut records) {
            fail(&mut o, e.into());
            return o;
        }
        o.records.extend(records);
        o.frames += 1;
        o.consumed += HEADER_LEN + len;
        rest = rest.get(HEADER_LEN + len..).unwrap_or_default();
    }
}
