//! One connection's task: the stream session over quinn's stream, routing, batching,
//! the bounds, and what is left when it ends.

use super::*;

/// Sealed bytes a connection may have waiting for quinn before no more batches are sealed
/// into it (the engine's `MAX_SESSION_BACKLOG`); the rest waits in the batch queue.
const MAX_SESSION_BACKLOG: usize = 256 * 1024;
/// Most stream bytes taken from quinn by the read a connection waits on. What the frame
/// reader does not need yet stays staged (in practice one received STREAM frame, at most
/// this): that much beyond the receive window may have been read from quinn.
const READ_CHUNK: usize = 64 * 1024;
/// Frame-reader steps per connection per turn (the engine's `FRAMES_PER_TURN`); then the
/// task yields to the others and goes on.
const STEPS_PER_TURN: usize = 16;
/// Most records taken from a connection's inbox per turn after the one that woke it.
const INBOX_PER_TURN: usize = 1024;

/// One connection, from its Initial to its close.
pub(super) async fn connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let deadline = tokio::time::Instant::now() + shared.cfg.handshake_timeout;
    let Ok(Ok(quic)) = tokio::time::timeout_at(deadline, incoming).await else {
        return;
    };
    let streams = tokio::time::timeout_at(deadline, quic.accept_bi()).await;
    let (send, recv) = match streams {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return,
        Err(_) => {
            close_handshake_late(&quic, &shared.cfg);
            return;
        }
    };
    let ss = match StreamSession::new(Role::Responder, &shared.identity) {
        Ok(ss) => ss,
        Err(e) => {
            quic.close(varint(e.close_code()), e.to_string().as_bytes());
            return;
        }
    };
    let (tx, inbox) = mpsc::unbounded_channel();
    let mut conn = Conn {
        serial: shared.next_conn.fetch_add(1, Ordering::Relaxed),
        queue: BatchQueue::new(shared.cfg.batch),
        budget: Arc::new(Semaphore::new(shared.cfg.queue_capacity)),
        shared,
        quic,
        send,
        recv,
        inbound: Inbound::default(),
        ss,
        peer: None,
        tx,
        inbox,
        records: VecDeque::new(),
        opened: Vec::new(),
        payloads: PayloadPool::new(1024, 4096),
        blocked: None,
        partial_since: None,
        partial_frame: 0,
        more: false,
        peer_done: false,
        finished: false,
        draining: false,
    };
    let end = conn.run(deadline).await;
    conn.end(end);
}

fn close_handshake_late(quic: &quinn::Connection, cfg: &ControlConfig) {
    let reason = format!(
        "handshake did not finish within {} ms",
        cfg.handshake_timeout.as_millis()
    );
    quic.close(varint(close_code::HANDSHAKE_FAILED), reason.as_bytes());
}

/// A relayed message waiting for room in its destination's queue; its sender is not read
/// meanwhile (head of line, as in the engine).
struct Blocked {
    message: Message,
    to: PeerHandle,
    /// The record's encoded size.
    size: u32,
}

/// How a connection's task ended.
enum End {
    /// The connection is closed (by the peer, the idle timer or the endpoint).
    Closed,
    /// The session-stream protocol failed: close with its code.
    Protocol(StreamError),
    /// quinn's stream failed (reset, stopped): close with `INTERNAL_ERROR`.
    Stream(String),
    /// The handshakes did not finish in time.
    HandshakeLate,
    /// A sealed frame stayed incomplete for the frame timeout.
    FrameLate,
}

/// Why a read of the session stream failed.
enum ReadFail {
    Protocol(StreamError),
    Lost,
    Stream(String),
}

impl From<StreamError> for ReadFail {
    fn from(e: StreamError) -> Self {
        ReadFail::Protocol(e)
    }
}

impl From<ReadFail> for End {
    fn from(e: ReadFail) -> Self {
        match e {
            ReadFail::Protocol(e) => End::Protocol(e),
            ReadFail::Lost => End::Closed,
            ReadFail::Stream(e) => End::Stream(e),
        }
    }
}

fn read_fail(e: quinn::ReadError) -> ReadFail {
    match e {
        quinn::ReadError::ConnectionLost(_) => ReadFail::Lost,
        e => ReadFail::Stream(e.to_string()),
    }
}

/// The session stream's receive side as the stream session's source: a chunk quinn gave
/// while the task waited, then whatever quinn has readable without waiting.
#[derive(Default)]
struct Inbound {
    /// The chunk the task's wait returned and how much of it was read.
    staged: Option<(quinn::Chunk, usize)>,
    /// quinn reported the end of the stream.
    fin: bool,
    /// The last read found nothing readable (the rest of a frame has not arrived).
    starved: bool,
}

impl Inbound {
    /// Keeps `chunk` (from the task's wait) for the next reads.
    fn stage(&mut self, chunk: Option<quinn::Chunk>) {
        match chunk {
            Some(c) if !c.bytes.is_empty() => self.staged = Some((c, 0)),
            Some(_) => {}
            None => self.fin = true,
        }
        self.starved = false;
    }

    /// Fills the front of `dst` from the staged chunk, else from quinn if it has data
    /// without waiting (polled once; the task's own wait re-registers its waker).
    fn read(
        &mut self,
        recv: &mut quinn::RecvStream,
        dst: &mut [u8],
    ) -> Result<StreamRead, ReadFail> {
        if let Some((chunk, off)) = &mut self.staged {
            let rest = chunk.bytes.get(*off..).unwrap_or_default();
            let n = rest.len().min(dst.len());
            copy_front(dst, rest, n);
            *off += n;
            if *off >= chunk.bytes.len() {
                self.staged = None;
            }
            return Ok(StreamRead::Data { n, fin: false });
        }
        if self.fin {
            return Ok(StreamRead::Data { n: 0, fin: true });
        }
        let polled = {
            let mut cx = Context::from_waker(Waker::noop());
            pin!(recv.read_chunk(dst.len(), true)).poll(&mut cx)
        };
        match polled {
            Poll::Pending => {
                self.starved = true;
                Ok(StreamRead::Done)
            }
            Poll::Ready(Ok(Some(chunk))) => {
                self.starved = false;
                let n = chunk.bytes.len().min(dst.len());
                copy_front(dst, &chunk.bytes, n);
                Ok(StreamRead::Data { n, fin: false })
            }
            Poll::Ready(Ok(None)) => {
                self.fin = true;
                Ok(StreamRead::Data { n: 0, fin: true })
            }
            Poll::Ready(Err(e)) => Err(read_fail(e)),
        }
    }
}

/// Copies the first `n` bytes of `src` to the front of `dst` (`n` fits both).
fn copy_front(dst: &mut [u8], src: &[u8], n: usize) {
    if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
        d.copy_from_slice(s);
    }
}

struct Conn {
    shared: Arc<Shared>,
    serial: u64,
    quic: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    inbound: Inbound,
    ss: StreamSession,
    /// The authenticated peer, once registered.
    peer: Option<PeerId>,
    tx: mpsc::UnboundedSender<Queued>,
    inbox: mpsc::UnboundedReceiver<Queued>,
    budget: Arc<Semaphore>,
    queue: BatchQueue<Queued>,
    /// Records of opened frames not yet routed, in order; counted as received when routed,
    /// or when the connection ends with them (then also as dropped).
    records: VecDeque<Record>,
    opened: Vec<Record>,
    /// Payload buffers of sent messages, reused for the next decoded ones, as the engine's
    /// shards do (at most 1024 of at most 4 KiB).
    payloads: PayloadPool,
    blocked: Option<Blocked>,
    /// Since when part of a sealed frame has waited for its rest (the frame deadline).
    partial_since: Option<tokio::time::Instant>,
    /// Which frame (by `StreamSession::frames_opened`) `partial_since` is for: the deadline
    /// is per frame, so frames streamed back to back do not add up to one.
    partial_frame: u64,
    /// The turn stopped at its step limit with more to read.
    more: bool,
    /// The peer's FIN was read after its last frame.
    peer_done: bool,
    /// This side's direction is finishing (FIN once the queue is out).
    finished: bool,
    /// The server is shutting down: flush regardless of the timeout, then FIN.
    draining: bool,
}

impl Conn {
    async fn run(&mut self, handshake_deadline: tokio::time::Instant) -> End {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            if let Err(e) = self.turn() {
                return e;
            }
            let reading = self.can_read() && self.inbound.staged.is_none() && !self.inbound.fin;
            let writing = !self.ss.outgoing().is_empty();
            let flush_at = self.flush_deadline();
            let frame_at = self
                .partial_since
                .map(|t| t + self.shared.cfg.frame_timeout);
            let established = self.peer.is_some();
            let acquire = self.blocked.as_ref().map(|b| (b.to.budget.clone(), b.size));
            tokio::select! {
                r = self.recv.read_chunk(READ_CHUNK, true), if reading => match r {
                    Ok(chunk) => self.inbound.stage(chunk),
                    Err(e) => return read_fail(e).into(),
                },
                w = self.send.write(self.ss.outgoing()), if writing => match w {
                    Ok(n) => self.ss.advance_outgoing(n),
                    Err(quinn::WriteError::ConnectionLost(_)) => return End::Closed,
                    Err(e) => return End::Stream(e.to_string()),
                },
                q = self.inbox.recv() => {
                    if let Some(q) = q {
                        self.enqueue(q);
                        // What else is waiting joins this turn's batch, as a shard takes a
                        // burst of hops in one turn.
                        for _ in 0..INBOX_PER_TURN {
                            let Ok(q) = self.inbox.try_recv() else {
                                break;
                            };
                            self.enqueue(q);
                        }
                    }
                }
                held = wait_budget(acquire), if self.blocked.is_some() => {
                    if let Some(b) = self.blocked.take() {
                        match held {
                            Ok(held) => self.forward(b.message, &b.to, held),
                            Err(_) => self.refuse(&b.message, ErrorCode::DestinationUnreachable),
                        }
                    }
                }
                _ = tokio::task::yield_now(), if self.more => {}
                _ = sleep_until(flush_at), if flush_at.is_some() => {}
                _ = sleep_until(frame_at), if frame_at.is_some() => {
                    if self.partial_since.is_some() {
                        return End::FrameLate;
                    }
                }
                _ = tokio::time::sleep_until(handshake_deadline), if !established => {
                    return End::HandshakeLate;
                }
                _ = shutting_down(&mut shutdown), if !self.draining => self.draining = true,
                _ = self.quic.closed() => return End::Closed,
            }
        }
    }

    /// Reads the handshake, routes what was read, reads and opens frames while there is
    /// room (up to the step limit), flushes what is due, writes what quinn takes without
    /// waiting, and finishes the stream when it is time.
    fn turn(&mut self) -> Result<(), End> {
        let now = Instant::now();
        self.more = false;
        if self.ss.is_handshaking() {
            let (inbound, recv) = (&mut self.inbound, &mut self.recv);
            self.ss
                .read_handshake(|dst: &mut [u8]| inbound.read(recv, dst))
                .map_err(End::from)?;
            self.register();
        }
        let mut steps = 0;
        loop {
            self.route_records(now);
            if !self.can_open() || self.peer_done || !self.ss.is_established() {
                break;
            }
            if steps == STEPS_PER_TURN {
                self.more = true;
                break;
            }
            self.opened.clear();
            let (inbound, recv) = (&mut self.inbound, &mut self.recv);
            let n = self
                .ss
                .read_records_pooled(
                    &mut self.opened,
                    &mut self.payloads,
                    1,
                    |dst: &mut [u8]| inbound.read(recv, dst),
                )
                .map_err(End::from)?;
            if n == 0 {
                self.peer_done = self.ss.peer_finished();
                break;
            }
            steps += 1;
            self.records.extend(self.opened.drain(..));
        }
        // The frame deadline runs while part of a frame waits for bytes quinn does not
        // have; not while this side pauses reading (the rest may be waiting in quinn).
        let frame = self.ss.frames_opened();
        let awaited = self.ss.awaiting_frame_bytes()
            && self.inbound.starved
            && self.inbound.staged.is_none()
            && self.can_open();
        self.partial_since = match self.partial_since {
            _ if !awaited => None,
            Some(t) if self.partial_frame == frame => Some(t),
            _ => {
                self.partial_frame = frame;
                Some(tokio::time::Instant::now())
            }
        };
        let force = self.draining || self.peer_done;
        self.flush(now, force).map_err(End::Protocol)?;
        self.write_ready()?;
        if force
            && !self.finished
            && self.ss.is_established()
            && self.queue.is_empty()
            && self.records.is_empty()
            && self.blocked.is_none()
        {
            self.ss.finish();
            self.finished = true;
        }
        if self.ss.fin_due() {
            self.send.finish().map_err(|e| End::Stream(e.to_string()))?;
            self.ss.fin_written();
        }
        Ok(())
    }

    /// Hands quinn what it takes of the outgoing bytes without waiting (as the engine's
    /// session pushes a sealed batch into quiche at once); the rest waits for the task's
    /// write.
    fn write_ready(&mut self) -> Result<(), End> {
        let mut cx = Context::from_waker(Waker::noop());
        while !self.ss.outgoing().is_empty() {
            let polled = pin!(self.send.write(self.ss.outgoing())).poll(&mut cx);
            match polled {
                Poll::Ready(Ok(0)) | Poll::Pending => break,
                Poll::Ready(Ok(n)) => self.ss.advance_outgoing(n),
                Poll::Ready(Err(quinn::WriteError::ConnectionLost(_))) => return Err(End::Closed),
                Poll::Ready(Err(e)) => return Err(End::Stream(e.to_string())),
            }
        }
        Ok(())
    }

    /// Bytes this connection has waiting to go out: queued records and sealed bytes.
    fn backlog(&self) -> usize {
        self.queue.bytes() + self.ss.pending_bytes()
    }

    /// Whether another frame may be read: everything read so far is routed and the
    /// connection's own queue has room for replies.
    fn can_open(&self) -> bool {
        self.records.is_empty()
            && self.blocked.is_none()
            && self.backlog() < self.shared.cfg.queue_capacity
    }

    fn can_read(&self) -> bool {
        self.can_open() && !self.peer_done && (self.ss.is_handshaking() || self.ss.is_established())
    }

    /// When the oldest queued record is due, if a timer is needed for it.
    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        if self.shared.cfg.batch.timeout.is_zero() || self.ss.pending_bytes() >= MAX_SESSION_BACKLOG
        {
            return None;
        }
        self.queue.deadline().map(tokio::time::Instant::from_std)
    }

    /// The handshake finished: make the peer reachable by its id (the newest connection of
    /// a peer id wins, as in the engine).
    fn register(&mut self) {
        if self.peer.is_some() {
            return;
        }
        let Some(peer) = self.ss.peer() else {
            return;
        };
        self.peer = Some(peer);
        let handle = PeerHandle {
            conn: self.serial,
            tx: self.tx.clone(),
            budget: self.budget.clone(),
        };
        self.shared.peers().insert(peer, handle);
    }

    fn route_records(&mut self, now: Instant) {
        while self.blocked.is_none() {
            let Some(r) = self.records.pop_front() else {
                return;
            };
            self.route(r, now);
        }
    }

    /// One record from this connection's peer (docs/PROTOCOL.md 9.2).
    fn route(&mut self, r: Record, now: Instant) {
        let mut m = match r {
            Record::Message(m) => m,
            Record::Error(_) => {
                inc(&self.shared.counts.errors_in);
                return;
            }
        };
        inc(&self.shared.counts.messages_in);
        if let Some(p) = self.peer {
            m.src = p;
        }
        let limit = self.shared.cfg.max_message_size;
        if m.payload.len() > limit {
            inc(&self.shared.counts.dropped);
            let reason = format!(
                "payload of {} bytes exceeds the limit of {limit}",
                m.payload.len()
            );
            let e = Record::Error(ErrorRecord {
                code: ErrorCode::MessageTooLarge,
                seq: m.seq,
                dst: m.dst,
                reason,
            });
            self.queue_local(e, Kind::Report, now);
            return;
        }
        if m.dst == self.shared.node {
            let reply = Record::Message(Message {
                dst: m.src,
                src: self.shared.node,
                seq: m.seq,
                payload: m.payload,
            });
            self.queue_local(reply, Kind::Reply, now);
            return;
        }
        let Some(to) = self.shared.lookup(&m.dst) else {
            inc(&self.shared.counts.dropped);
            let e = error_record(ErrorCode::UnknownDestination, &m);
            self.queue_local(e, Kind::Report, now);
            return;
        };
        let size = u32::try_from(MESSAGE_HEADER_LEN + m.payload.len()).unwrap_or(u32::MAX);
        match take_budget(&to.budget, size) {
            Ok(held) => self.forward(m, &to, held),
            Err(TryAcquireError::NoPermits) => {
                self.blocked = Some(Blocked {
                    message: m,
                    to,
                    size,
                })
            }
            Err(TryAcquireError::Closed) => self.refuse(&m, ErrorCode::DestinationUnreachable),
        }
    }

    /// An ERROR about `m` for this connection's own peer, through its own inbox (picked up
    /// on the next turn), so a newer connection of the same peer id does not get it.
    fn refuse(&self, m: &Message, code: ErrorCode) {
        inc(&self.shared.counts.dropped);
        let _ = self.tx.send(Queued {
            record: error_record(code, m),
            kind: Kind::Report,
        });
    }

    /// Hands `m` (holding `held` permits of the destination's budget) to the destination.
    fn forward(&mut self, m: Message, to: &PeerHandle, held: u32) {
        let q = Queued {
            record: Record::Message(m),
            kind: Kind::Relayed { held },
        };
        match to.tx.send(q) {
            Ok(()) => inc(&self.shared.counts.relayed),
            Err(mpsc::error::SendError(q)) => {
                to.budget.add_permits(held as usize);
                if let Record::Message(m) = &q.record {
                    self.refuse(m, ErrorCode::DestinationUnreachable);
                }
            }
        }
    }

    /// Queues a reply or ERROR record for this connection's own peer; none after this
    /// side's FIN. ERROR records may go above the queue capacity up to twice it (they
    /// answer messages already read), then are dropped, as in the engine.
    fn queue_local(&mut self, record: Record, kind: Kind, now: Instant) {
        let over = self.backlog() >= 2 * self.shared.cfg.queue_capacity;
        if self.finished || (kind == Kind::Report && over) {
            if kind == Kind::Reply {
                inc(&self.shared.counts.dropped);
            }
            return;
        }
        let size = record.encoded_len();
        self.queue.push(Queued { record, kind }, size, now);
    }

    /// A record from another connection (a relayed message or an ERROR for our peer).
    fn enqueue(&mut self, q: Queued) {
        if self.finished {
            self.give_back(q, ErrorCode::DestinationUnreachable);
            return;
        }
        let size = q.record.encoded_len();
        self.queue.push(q, size, Instant::now());
    }

    /// Reports a relayed record this connection will not deliver to its sender.
    fn give_back(&self, q: Queued, code: ErrorCode) {
        let Kind::Relayed { held } = q.kind else {
            return;
        };
        self.budget.add_permits(held as usize);
        if let Record::Message(m) = &q.record {
            self.shared.refuse_to_sender(m, code);
        }
    }

    /// Seals due batches while quinn is not too far behind.
    fn flush(&mut self, now: Instant, force: bool) -> Result<(), StreamError> {
        while !self.queue.is_empty()
            && (force || self.queue.is_due(now))
            && self.ss.pending_bytes() < MAX_SESSION_BACKLOG
            && self.ss.is_open()
        {
            // Sealed where the records lie in the queue, then dropped from it (as the
            // engine does).
            let n = self.queue.next_batch_len();
            let sent = self
                .ss
                .send_batch(self.queue.front_items(n).map(|(q, _)| &q.record));
            let (payloads, budget, shared) = (&mut self.payloads, &self.budget, &self.shared);
            self.queue.pop_front_n(n, |q, _| {
                if sent.is_ok() {
                    match q.kind {
                        Kind::Relayed { held } => budget.add_permits(held as usize),
                        Kind::Reply => inc(&shared.counts.delivered_local),
                        Kind::Report => {}
                    }
                }
                if let Record::Message(m) = q.record {
                    payloads.put(m.payload);
                }
            });
            sent?;
        }
        Ok(())
    }

    /// Closes as `end` requires, unregisters the peer and reports what it held.
    fn end(mut self, end: End) {
        match end {
            End::Closed => {}
            End::Protocol(e) => {
                tracing::debug!("closing session: {e}");
                self.quic
                    .close(varint(e.close_code()), e.to_string().as_bytes());
            }
            End::Stream(e) => {
                tracing::debug!("closing session: stream failed: {e}");
                self.quic
                    .close(varint(close_code::INTERNAL_ERROR), e.as_bytes());
            }
            End::HandshakeLate => close_handshake_late(&self.quic, &self.shared.cfg),
            End::FrameLate => {
                inc(&self.shared.counts.frame_timeouts);
                let reason = format!(
                    "frame incomplete after {} ms",
                    self.shared.cfg.frame_timeout.as_millis()
                );
                self.quic
                    .close(varint(close_code::PROTOCOL_VIOLATION), reason.as_bytes());
            }
        }
        if let Some(peer) = self.peer {
            let mut peers = self.shared.peers();
            if peers.get(&peer).is_some_and(|h| h.conn == self.serial) {
                peers.remove(&peer);
            }
        }
        self.budget.close();
        self.inbox.close();
        let code = if self.draining {
            ErrorCode::ShuttingDown
        } else {
            ErrorCode::DestinationUnreachable
        };
        let mut left: Vec<Queued> = self.queue.drain_all().map(|(q, _)| q).collect();
        while let Ok(q) = self.inbox.try_recv() {
            left.push(q);
        }
        for q in left {
            match q.kind {
                Kind::Relayed { .. } => self.give_back(q, code),
                Kind::Reply => inc(&self.shared.counts.dropped),
                Kind::Report => {}
            }
        }
        // Its sender is this connection, which is gone.
        if self.blocked.take().is_some() {
            inc(&self.shared.counts.dropped);
        }
        // Records of frames already read, decoded behind the blocked one and never routed:
        // received, and dropped because their sender is gone (the engine's `sender_gone`).
        // No ERROR records: they would go to this connection, which is closed (the engine
        // sends none for them either).
        self.records.extend(self.opened.drain(..));
        for r in self.records.drain(..) {
            match r {
                Record::Message(_) => {
                    inc(&self.shared.counts.messages_in);
                    inc(&self.shared.counts.dropped);
                }
                Record::Error(_) => inc(&self.shared.counts.errors_in),
            }
        }
    }
}

/// Admits a record of `size` bytes (at least 1) to a destination's `budget` as the engine
/// admits one to a queue below its capacity: if any permit is free, takes what is free up to
/// `size` and returns how many it took. A record larger than the whole capacity is so
/// admitted once the queue has room, instead of waiting for permits that cannot exist.
fn take_budget(budget: &Semaphore, size: u32) -> Result<u32, TryAcquireError> {
    loop {
        let free = u32::try_from(budget.available_permits()).unwrap_or(u32::MAX);
        let n = free.min(size).max(1);
        match budget.try_acquire_many(n) {
            Ok(p) => {
                p.forget();
                return Ok(n);
            }
            // Another sender took some since: try again with what is left.
            Err(TryAcquireError::NoPermits) if free > 0 => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits until the destination's budget has room, then admits the blocked record as
/// [`take_budget`] does; returns the permits it holds. No await after the permits are
/// taken, so a cancelled wait holds none.
async fn wait_budget(b: Option<(Arc<Semaphore>, u32)>) -> Result<u32, tokio::sync::AcquireError> {
    match b {
        Some((sem, size)) => {
            sem.acquire().await?.forget();
            let rest = match size.saturating_sub(1) {
                0 => 0,
                rest => take_budget(&sem, rest).unwrap_or(0),
            };
            Ok(1 + rest)
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
