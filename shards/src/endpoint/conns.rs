//! Connections and their indexes: by key, by connection ID (every CID a connection was
//! given, so any datagram finds it) and by authenticated peer; and what happens to a
//! connection at its ends (accept, insert, finish, removal with its accounting).

use super::Map;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::batch::BatchQueue;
use crate::cid;
use crate::session::Session;
use crate::wire::{ErrorCode, PeerId, Record, close_code};

use super::Endpoint;
use super::interface::PeerActivity;
use super::pool::PoolConfig;
use super::routing::{Origin, RouteOutcome};
use super::stats::Tally;
use super::stats::{add, inc, sub};
use super::timers::TimerKey;

/// A connection's key, unique within its shard.
pub(super) type ConnKey = u64;

/// What a queued record is, for the counters and histograms kept when it is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A message relayed for another peer (relay-delay histogram).
    Relayed,
    /// The echo handler's reply: the message counts as delivered once this is sealed.
    EchoReply,
    /// Anything else (the local application's messages, ERROR records).
    Other,
}

/// A record in a destination's batch queue.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) record: Record,
    /// When it reached this node.
    pub(super) received: Instant,
    pub(super) kind: Kind,
}

/// A finished connection is closed at most this many stall timeouts after our FIN, however
/// much the peer still sends ([`Conn::finish_deadline`]).
pub(super) const FINISH_LIMIT: u32 = 3;

/// One QUIC connection and what the endpoint keeps for it.
pub(super) struct Conn {
    pub(super) session: Session,
    pub(super) queue: BatchQueue<Queued>,
    /// Records decoded from this session but not yet routed (destination was full), with
    /// when they arrived.
    pub(super) stalled: VecDeque<(Record, Instant)>,
    /// Bytes of the records in `stalled` (kept as they come and go: the memory budget
    /// reads it every turn).
    pub(super) stalled_bytes: usize,
    pub(super) scids: Vec<Vec<u8>>,
    pub(super) peer: Option<PeerId>,
    /// Our direction of the session stream is finished (FIN sent or queued).
    pub(super) finished: bool,
    /// When it was: a peer that has not finished its own direction
    /// [`PoolConfig::stall_timeout`] later is closed ([`Conn::finish_deadline`]).
    pub(super) finished_at: Option<Instant>,
    /// When this node last started reading the peer again after records waited for room
    /// (the finish deadline does not count the time it was not reading).
    pub(super) resumed_at: Option<Instant>,
    /// Listed in `Endpoint::resume` (more frames may be readable without a datagram).
    pub(super) resuming: bool,
    /// Over the connection cap once authenticated: closing with CONNECTION_LIMIT.
    pub(super) refused: bool,
    /// Listed in `Endpoint::dirty` this turn.
    pub(super) dirty: bool,
    /// [`Session::accepted_bytes`] before this turn's first datagram, when it received one:
    /// the end of the turn compares, to learn whether the peer granted credit.
    pub(super) turn_accepted: Option<u64>,
    /// Listed in `Endpoint::blocked`: it stopped reading because a destination (or its own
    /// queue) was full, and is serviced again when room appears.
    pub(super) blocked: bool,
    /// When the peer last made flow-control progress (or nothing waited for it).
    pub(super) progress_at: Instant,
    /// [`Session::accepted_bytes`] when progress was last seen.
    pub(super) accepted_mark: u64,
    /// Counted in `Endpoint::handshaking` (not authenticated yet, not given up on).
    pub(super) handshaking: bool,
    /// When the connection was accepted or dialed.
    pub(super) opened_at: Instant,
    /// The session's protocol failure (if any) has been counted.
    pub(super) failure_counted: bool,
    /// Closed by the stall detector: what it still holds counts as `stalled`.
    pub(super) stall_closed: bool,
    /// Frames sealed into the session that QUIC has not taken whole yet, oldest first.
    pub(super) sealed: VecDeque<SealedFrame>,
    /// The pool entry (dialed address) this connection serves, for outbound connections.
    pub(super) outbound: Option<SocketAddr>,
    /// Whether this connection holds a slot of the connection cap.
    pub(super) holds_slot: bool,
    /// Since when part of a sealed frame from the peer is buffered, waiting for the rest.
    pub(super) partial_since: Option<Instant>,
    /// Which frame (by [`crate::session::Session::frames_opened`]) `partial_since` is for.
    pub(super) partial_frame: u64,
    /// Bytes of this session's own buffers (unsent sealed frames, received bytes) counted
    /// in the node's memory budget at the end of its last turn. Its batch queue is counted
    /// as records enter and leave it.
    pub(super) held: u64,
    /// When a keep-alive PING was last sent.
    pub(super) last_ping: Instant,
    /// Traffic counters published to the peer index each period.
    pub(super) activity: PeerActivity,
    pub(super) last_activity: Instant,
    pub(super) published: PeerActivity,
}

/// A frame sealed into a session but possibly not yet taken by QUIC: what it carried, so
/// that echo replies count as delivered once QUIC takes them and a connection that closes
/// first counts them as dropped.
#[derive(Debug, Clone, Copy)]
pub(super) struct SealedFrame {
    /// [`Session::accepted_bytes`] once QUIC has taken the whole frame.
    pub(super) end: u64,
    pub(super) messages: u64,
    pub(super) echoes: u64,
}

impl Conn {
    /// Whether sealed or queued data waits for this peer's flow-control credit.
    pub(super) fn output_waiting(&self) -> bool {
        !self.queue.is_empty() || self.session.pending_bytes() > 0
    }

    /// Notes flow-control progress: the peer took bytes since the last look, or nothing
    /// waits for it. Returns the echo replies in frames QUIC has now taken whole (they count
    /// as delivered).
    pub(super) fn note_progress(&mut self, now: Instant) -> u64 {
        let accepted = self.session.accepted_bytes();
        if accepted != self.accepted_mark || !self.output_waiting() {
            self.accepted_mark = accepted;
            self.progress_at = now;
        }
        let mut echoes = 0;
        while self.sealed.front().is_some_and(|f| f.end <= accepted) {
            if let Some(f) = crate::batch::pop_front_rewound(&mut self.sealed) {
                echoes += f.echoes;
            }
        }
        echoes
    }

    /// Parks `r` (received at `at`) behind the records already parked.
    pub(super) fn park(&mut self, r: Record, at: Instant) {
        self.stalled_bytes += r.encoded_len();
        self.stalled.push_back((r, at));
    }

    /// Puts back at the head a record taken with [`Conn::unpark`].
    pub(super) fn park_front(&mut self, r: Record, at: Instant) {
        self.stalled_bytes += r.encoded_len();
        self.stalled.push_front((r, at));
    }

    /// Takes the oldest parked record.
    pub(super) fn unpark(&mut self) -> Option<(Record, Instant)> {
        let (r, at) = self.stalled.pop_front()?;
        self.stalled_bytes = self.stalled_bytes.saturating_sub(r.encoded_len());
        Some((r, at))
    }

    /// Marks our direction finished at `now` (the caller has finished the session);
    /// `deadline`: whether the finish deadline applies (not in a drain, which its own
    /// deadline bounds).
    pub(super) fn mark_finished(&mut self, now: Instant, deadline: bool) {
        self.finished = true;
        if deadline {
            self.finished_at.get_or_insert(now);
        }
    }

    /// When a connection whose direction we finished is closed if the graceful close has
    /// not completed by then (the peer has not finished its own direction, or not closed):
    /// a replaced or expired connection that the peer keeps open (pinging, or sending to
    /// unknown destinations) must not live on.
    /// It counts from the last sign of life after our FIN (frames read, or credit for
    /// what we sent) or from when this node resumed reading the peer, and does not run
    /// while this node has stopped reading it (its records wait for room): a close still
    /// making progress is not cut short. But never later than [`FINISH_LIMIT`] stall
    /// timeouts after our FIN: a peer that keeps sending (to unknown destinations, say)
    /// cannot keep a finished connection for ever.
    pub(super) fn finish_deadline(&self, pool: &PoolConfig) -> Option<Instant> {
        if self.session.is_closing() || self.blocked {
            return None;
        }
        let finished = self.finished_at?;
        let mut since = finished.max(self.last_activity);
        if let Some(t) = self.resumed_at {
            since = since.max(t);
        }
        // Credit for what we still send is a sign of life (with nothing waiting,
        // `progress_at` just follows the clock).
        if self.output_waiting() {
            since = since.max(self.progress_at);
        }
        Some((since + pool.stall_timeout).min(finished + pool.stall_timeout * FINISH_LIMIT))
    }

    /// When an unauthenticated connection is closed if its handshakes have not finished.
    pub(super) fn handshake_deadline(&self, pool: &PoolConfig) -> Option<Instant> {
        if self.peer.is_some() || self.session.is_closing() {
            return None;
        }
        Some(self.opened_at + pool.handshake_timeout)
    }

    /// When this connection is closed if the sealed frame it is sending stays incomplete.
    pub(super) fn frame_deadline(&self, pool: &PoolConfig) -> Option<Instant> {
        if self.session.is_closing() {
            return None;
        }
        self.partial_since.map(|t| t + pool.frame_timeout)
    }

    /// When the stall detector closes this connection if the peer still takes nothing.
    pub(super) fn stall_deadline(&self, pool: &PoolConfig) -> Option<Instant> {
        if self.peer.is_none() || self.session.is_closing() || !self.output_waiting() {
            return None;
        }
        Some(self.progress_at + pool.stall_timeout)
    }

    /// When this connection next needs a turn without a datagram arriving: quiche's timer,
    /// its batch timeout (unless QUIC holds `backlog` unsent bytes: then ACKs, not time,
    /// free room), keep-alive, TTL or the stall detector.
    pub(super) fn deadline(&self, pool: &PoolConfig, backlog: usize) -> Option<Instant> {
        let queue = (self.session.is_open() && self.session.pending_bytes() < backlog)
            .then(|| self.queue.deadline())
            .flatten();
        [
            self.session.timeout_at(),
            queue,
            self.pool_deadline(pool),
            self.stall_deadline(pool),
            self.handshake_deadline(pool),
            self.frame_deadline(pool),
            self.finish_deadline(pool),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the pool next has work on this connection: a keep-alive PING or the TTL.
    pub(super) fn pool_deadline(&self, pool: &PoolConfig) -> Option<Instant> {
        if self.peer.is_none() || self.finished || self.session.is_closing() {
            return None;
        }
        Some((self.last_ping + pool.keepalive).min(self.last_activity + pool.ttl))
    }
}

/// Connections by key, with their connection-ID and peer indexes.
#[derive(Default)]
pub(super) struct ConnIndex {
    /// Boxed: a connection (its quiche state inline) is kilobytes, and every record routed
    /// looks one up; boxed, the table's probes stay on a few dense cache lines.
    conns: Map<ConnKey, Box<Conn>>,
    by_cid: Map<Vec<u8>, ConnKey>,
    by_peer: Map<PeerId, ConnKey>,
    next_key: ConnKey,
}

impl ConnIndex {
    pub(super) fn get(&self, key: ConnKey) -> Option<&Conn> {
        self.conns.get(&key).map(|c| &**c)
    }

    pub(super) fn get_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.conns.get_mut(&key).map(|c| &mut **c)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&ConnKey, &mut Conn)> {
        self.conns.iter_mut().map(|(k, c)| (k, &mut **c))
    }

    pub(super) fn keys(&self) -> Vec<ConnKey> {
        let mut keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection a datagram's destination CID names.
    pub(super) fn by_cid(&self, dcid: &[u8]) -> Option<ConnKey> {
        self.by_cid.get(dcid).copied()
    }

    /// Routes datagrams for `cid` to `key` as well.
    pub(super) fn add_cid(&mut self, key: ConnKey, cid: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&key) {
            self.by_cid.insert(cid.clone(), key);
            c.scids.push(cid);
        }
    }

    /// The connection that carries traffic for `peer`.
    pub(super) fn of_peer(&self, peer: &PeerId) -> Option<ConnKey> {
        self.by_peer.get(peer).copied()
    }

    pub(super) fn peer_map(&self) -> &Map<PeerId, ConnKey> {
        &self.by_peer
    }

    pub(super) fn set_peer(&mut self, peer: PeerId, key: ConnKey) {
        self.by_peer.insert(peer, key);
    }

    /// Stops routing `peer`'s traffic to `key` (if it still is).
    pub(super) fn unset_peer(&mut self, peer: &PeerId, key: ConnKey) {
        if self.by_peer.get(peer) == Some(&key) {
            self.by_peer.remove(peer);
        }
    }

    fn insert(&mut self, conn: Conn) -> ConnKey {
        self.next_key += 1;
        let key = self.next_key;
        for s in &conn.scids {
            self.by_cid.insert(s.clone(), key);
        }
        self.conns.insert(key, Box::new(conn));
        key
    }

    fn remove(&mut self, key: ConnKey) -> Option<Box<Conn>> {
        let c = self.conns.remove(&key)?;
        for s in &c.scids {
            self.by_cid.remove(s);
        }
        if let Some(peer) = c.peer {
            self.unset_peer(&peer, key);
        }
        Some(c)
    }
}

impl Endpoint {
    /// A new Initial from `from` for the unknown connection ID `odcid`: a server session.
    /// It takes a place in the shard's handshake budget, not under the connection cap: the
    /// cap counts authenticated peers only (checked when the Noise handshake completes).
    ///
    /// `validated` is the original destination connection ID a Retry token vouched for:
    /// the peer has proven its address, and `odcid` (its Initial's destination) is the
    /// connection ID the Retry gave it, which becomes this connection's own.
    pub(super) fn accept(
        &mut self,
        odcid: &[u8],
        validated: Option<&[u8]>,
        from: SocketAddr,
        now: Instant,
    ) -> Option<ConnKey> {
        if self.draining.is_some() || self.server_cfg.is_none() {
            inc(&self.stats().rejected_initials);
            self.note_junk(now);
            return None;
        }
        if self.handshaking >= self.cfg.pool.max_handshakes {
            inc(&self.stats().handshake_budget_drops);
            self.note_junk(now);
            return None;
        }
        if self.memory_over() {
            inc(&self.stats().memory_limit_drops);
            self.note_junk(now);
            return None;
        }
        let server_cfg = self.server_cfg.as_mut()?;
        let scid = match validated {
            Some(_) => odcid.to_vec(),
            None => cid::new_cid(self.cfg.index as u8, &mut self.rng).to_vec(),
        };
        let session = match Session::accept(
            server_cfg,
            &self.cfg.identity,
            &scid,
            validated,
            self.local_addr,
            from,
            now,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("accept from {from} failed: {e}");
                inc(&self.stats().rejected_initials);
                self.note_junk(now);
                return None;
            }
        };
        let retried = validated.is_some();
        let key = self.insert_conn(session, scid, now);
        if !retried {
            // Retransmits of the peer's first Initial still name its chosen DCID.
            self.conns.add_cid(key, odcid.to_vec());
        }
        Some(key)
    }

    pub(super) fn insert_conn(&mut self, session: Session, scid: Vec<u8>, now: Instant) -> ConnKey {
        add(&self.cfg.stats.connections, 1);
        self.handshaking += 1;
        self.conns.insert(Conn {
            session,
            queue: BatchQueue::new(self.cfg.batch),
            stalled: VecDeque::new(),
            stalled_bytes: 0,
            scids: vec![scid],
            peer: None,
            finished: false,
            finished_at: None,
            resumed_at: None,
            resuming: false,
            refused: false,
            dirty: false,
            turn_accepted: None,
            blocked: false,
            progress_at: now,
            accepted_mark: 0,
            stall_closed: false,
            failure_counted: false,
            opened_at: now,
            handshaking: true,
            sealed: VecDeque::new(),
            outbound: None,
            holds_slot: false,
            partial_since: None,
            partial_frame: 0,
            held: 0,
            last_ping: now,
            activity: PeerActivity::default(),
            last_activity: now,
            published: PeerActivity::default(),
        })
    }

    /// Appends `record` to connection `key`'s batch queue and accounts for its bytes.
    pub(super) fn enqueue(
        &mut self,
        key: ConnKey,
        record: Record,
        received: Instant,
        kind: Kind,
        now: Instant,
    ) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        push_queued(
            c,
            key,
            record,
            received,
            kind,
            now,
            &mut self.tally,
            &mut self.dirty,
        );
    }

    /// Notes that `key`'s queue got records this turn (once per connection per turn).
    pub(super) fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Lists `key` as having stopped reading for lack of room.
    pub(super) fn mark_blocked(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key)
            && !c.blocked
        {
            c.blocked = true;
            self.blocked.push(key);
        }
    }

    /// Finishes connection `key` gracefully: flush its queue, then FIN.
    /// Used for a connection replaced by another one with the same peer: what it could not
    /// seal any more is routed again (to the connection that replaced it).
    pub(super) fn finish_conn(&mut self, key: ConnKey, now: Instant) {
        self.flush_queue(key, now, true);
        let mut rest = Vec::new();
        let mut peer = None;
        if let Some(c) = self.conns.get_mut(key) {
            while !c.queue.is_empty() {
                rest.extend(c.queue.pop_batch());
            }
            c.session.finish();
            c.mark_finished(now, self.draining.is_none());
            peer = c.peer;
        }
        if let Some(peer) = peer {
            self.conns.unset_peer(&peer, key);
            for (q, _) in rest {
                self.tally.unqueued(q.record.encoded_len() as u64);
                self.tally.held(q.record.encoded_len() as u64, 0);
                let origin = self.origin_of(&q.record);
                if let RouteOutcome::Blocked(r) =
                    self.route_to_peer(origin, peer, q.record, q.received, now)
                {
                    self.waiting.push_back((origin, peer, r, q.received));
                }
            }
        }
        self.drive(key, now);
    }

    /// Removes the closed sessions noted since the last call, reporting what they left
    /// undelivered.
    pub(super) fn reap(&mut self, now: Instant) {
        self.reap_closed(now);
        self.tally.settle(&self.cfg.stats, &self.cfg.memory);
    }

    /// The work of [`Endpoint::reap`].
    fn reap_closed(&mut self, now: Instant) {
        if self.closed.is_empty() {
            return;
        }
        let closed = std::mem::take(&mut self.closed);
        let mut any = false;
        for k in closed {
            if self.conns.get(k).is_some_and(|c| c.session.is_closed()) {
                self.drop_conn_state(k, ErrorCode::DestinationUnreachable, now);
                any = true;
            }
        }
        // Senders blocked on a connection that is gone now get their ERROR records.
        if any && (!self.blocked.is_empty() || !self.waiting.is_empty()) {
            self.retry_blocked(now);
            self.end_turn(now);
        }
    }

    /// Forgets connection `key`: its slot, indexes and timers, and counts (and reports to
    /// their senders) what it still held.
    pub(super) fn drop_conn_state(&mut self, key: ConnKey, code: ErrorCode, now: Instant) {
        let Some(mut c) = self.conns.remove(key) else {
            return;
        };
        self.timers.cancel(TimerKey::Conn(key));
        sub(&self.cfg.stats.connections, 1);
        if c.handshaking {
            self.handshaking = self.handshaking.saturating_sub(1);
        }
        inc(&self.stats().closed);
        if c.holds_slot {
            self.cfg.slots.release();
        }
        if let Some(info) = c.session.close_info() {
            tracing::debug!(conn = key, ?info, "session closed");
        }
        if let Some(peer) = c.peer {
            // Dialed peers stay in the index (as Disconnected) while the pool re-dials.
            if c.outbound.is_none() || self.draining.is_some() {
                self.cfg.directory.disconnected(peer, self.cfg.index, key);
            }
        }
        let pool_addr = c
            .outbound
            .filter(|a| self.draining.is_none() && self.pool.is_served_by(a, key));
        if let Some(addr) = pool_addr {
            // Messages still queued for a dialed peer wait for the re-established
            // connection, as far as the queue bound allows (not when the peer was closed for
            // not reading: those count as stalled below).
            let mut rest = Vec::new();
            if !c.stall_closed {
                let mut queued = Vec::new();
                while !c.queue.is_empty() {
                    for (q, _) in c.queue.pop_batch() {
                        self.tally.unqueued(q.record.encoded_len() as u64);
                        self.tally.held(q.record.encoded_len() as u64, 0);
                        queued.push((q.record, q.received));
                    }
                }
                rest = self.pool.requeue(addr, queued, self.cfg.queue_capacity);
            }
            let graceful = c.finished
                || c.session
                    .close_info()
                    .is_some_and(|i| i.is_app && i.code == close_code::NO_ERROR);
            let why = c
                .session
                .close_info()
                .map(|i| format!("connection closed (code {:#x}: {})", i.code, i.reason))
                .unwrap_or_else(|| "connection closed".into());
            for r in rest {
                self.undeliverable(Origin::Remote, r, ErrorCode::DestinationUnreachable, now);
            }
            self.outbound_lost(addr, graceful, &why, now);
        }
        let code = if self.draining.is_some() {
            ErrorCode::ShuttingDown
        } else if c.stall_closed {
            ErrorCode::DestinationStalled
        } else {
            code
        };
        // Frames sealed into the session that QUIC never took: their messages are lost with
        // the connection; count them (their records are gone, so no ERROR can be sent).
        // Frames QUIC took since the last look count as delivered first.
        let delivered = c.note_progress(now);
        add(&self.cfg.stats.delivered_local, delivered);
        let unsent: u64 = c.sealed.iter().map(|f| f.messages).sum();
        if unsent > 0 {
            let counter = match code {
                ErrorCode::ShuttingDown => &self.cfg.stats.dropped_shutting_down,
                ErrorCode::DestinationStalled => &self.cfg.stats.dropped_stalled,
                _ => &self.cfg.stats.dropped_unreachable,
            };
            add(counter, unsent);
        }
        self.room_freed = true;
        // Undelivered records queued for this peer: count and tell their senders.
        let mut left = Vec::new();
        while !c.queue.is_empty() {
            left.extend(c.queue.pop_batch().into_iter().map(|(q, _)| q.record));
        }
        let bytes: usize = left.iter().map(Record::encoded_len).sum();
        self.tally.unqueued(bytes as u64);
        self.tally.held(bytes as u64 + c.held, 0);
        for r in left {
            let origin = self.origin_of(&r);
            self.undeliverable(origin, r, code, now);
        }
        // Records this peer sent that were never routed: received, and dropped (a
        // message is counted in when it is routed, so these were not yet).
        c.stalled_bytes = 0;
        for (r, _) in c.stalled.drain(..) {
            if matches!(r, Record::Message(_)) {
                self.tally.message_in();
                inc(&self.stats().dropped_sender_gone);
            }
        }
    }
}

/// Queues `record` on connection `c` (`key`), starts its stall clock if nothing was
/// waiting, counts its bytes and lists the connection as dirty (once a turn). A free
/// function over the endpoint's parts, so a caller that already holds the connection
/// does not look it up again.
#[allow(clippy::too_many_arguments)]
pub(super) fn push_queued(
    c: &mut Conn,
    key: ConnKey,
    record: Record,
    received: Instant,
    kind: Kind,
    now: Instant,
    tally: &mut Tally,
    dirty: &mut Vec<ConnKey>,
) {
    if !c.output_waiting() {
        // The stall clock starts when data starts waiting for this peer.
        c.progress_at = now;
        c.accepted_mark = c.session.accepted_bytes();
    }
    let size = record.encoded_len();
    c.queue.push(
        Queued {
            record,
            received,
            kind,
        },
        size,
        now,
    );
    tally.queued(size as u64);
    tally.held(0, size as u64);
    if !c.dirty {
        c.dirty = true;
        dirty.push(key);
    }
}
