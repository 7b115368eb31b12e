//! One connection's turn: complete its handshake, read and route what it sent (as far as
//! destinations have room), seal its due batches, and collect the datagrams quiche wants
//! sent, then re-arm its deadline.

use std::time::Instant;

use rand::RngCore;

use crate::cid;
use crate::wire::{PeerId, Record, close_code};

use super::conns::{ConnKey, Kind, SealedFrame};
use super::interface::ShardMsg;
use super::routing::{Origin, RouteOutcome};
use super::stats::{add, inc};
use super::timers::TimerKey;
use super::{Endpoint, FRAMES_PER_TURN, MAX_SESSION_BACKLOG, Transmit};

impl Endpoint {
    /// Reads and routes what a session has for us, as far as destinations have room.
    pub(super) fn service(&mut self, key: ConnKey, now: Instant) {
        // Refused over the cap (and closing): nothing it sent is read.
        if self.conns.get(key).is_some_and(|c| c.refused) {
            return;
        }
        // Handshake completion.
        let ready = self.conns.get_mut(key).and_then(|c| c.session.take_ready());
        if let Some(peer) = ready {
            self.on_ready(key, peer, now);
        }
        let mut frames = 0;
        loop {
            // First route what this session already had decoded.
            while let Some((r, t)) = self.conns.get_mut(key).and_then(|c| c.unpark()) {
                if let RouteOutcome::Blocked(r) = self.route(Origin::Conn(key), r, t, now) {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.park_front(r, t);
                    }
                    self.mark_blocked(key);
                    return;
                }
            }
            if frames >= FRAMES_PER_TURN {
                // More may be readable with no datagram coming to prompt us: resume soon.
                // Listed once (a flag, not a search: thousands of busy connections a turn).
                if let Some(c) = self.conns.get_mut(key)
                    && !std::mem::replace(&mut c.resuming, true)
                {
                    self.resume.push(key);
                }
                return;
            }
            let over_memory = self.memory_over();
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            // Replies and errors go to this session's own queue: keep room for them.
            if c.queue.bytes() + c.session.pending_bytes() >= self.cfg.queue_capacity {
                self.mark_blocked(key);
                return;
            }
            // The node is at its memory ceiling: read nothing more until it is below.
            if over_memory {
                if !self.memory_blocked {
                    self.memory_blocked = true;
                    inc(&self.cfg.stats.memory_pauses);
                }
                self.mark_blocked(key);
                return;
            }
            let mut buf = std::mem::take(&mut self.decode_buf);
            buf.clear();
            let res = c
                .session
                .read_records_pooled(&mut buf, &mut self.payloads, 1);
            match res {
                Ok(0) => {
                    self.decode_buf = buf;
                    // Peer finished its direction: finish ours once our queue is out.
                    if c.session.peer_finished() && !c.finished {
                        self.flush_queue(key, now, true);
                        if let Some(c) = self.conns.get_mut(key)
                            && c.queue.is_empty()
                        {
                            c.session.finish();
                            c.mark_finished(now, self.draining.is_none());
                        }
                    }
                    if let Some(c) = self.conns.get_mut(key)
                        && c.session.is_client()
                        && c.session.is_complete()
                    {
                        c.session.close(close_code::NO_ERROR, "done");
                    }
                    return;
                }
                Ok(_) => {
                    frames += 1;
                    for r in &buf {
                        if matches!(r, Record::Message(_)) {
                            c.activity.messages_in += 1;
                            self.activity_dirty = true;
                        }
                        c.activity.bytes_in += r.encoded_len() as u64;
                    }
                    c.last_activity = now;
                    // Routed straight from the decode buffer; `stalled` (empty here, it
                    // was drained above) takes only what finds no room, in order.
                    let mut records = buf.drain(..);
                    let mut blocked = false;
                    for r in records.by_ref() {
                        if let RouteOutcome::Blocked(r) = self.route(Origin::Conn(key), r, now, now)
                        {
                            match self.conns.get_mut(key) {
                                Some(c) => {
                                    c.park(r, now);
                                    for r in records.by_ref() {
                                        c.park(r, now);
                                    }
                                }
                                // Connections go only at the end of a turn, so this is not
                                // reached; were it, what could not be routed is counted.
                                None => {
                                    let n = std::iter::once(r)
                                        .chain(records.by_ref())
                                        .filter(|r| matches!(r, Record::Message(_)))
                                        .count();
                                    for _ in 0..n {
                                        self.tally.message_in();
                                    }
                                    add(&self.cfg.stats.dropped_sender_gone, n as u64);
                                }
                            }
                            blocked = true;
                            break;
                        }
                    }
                    drop(records);
                    self.decode_buf = buf;
                    if blocked {
                        self.mark_blocked(key);
                        return;
                    }
                }
                Err(e) => {
                    // Counted by `drive`, with failures found outside reads.
                    self.decode_buf = buf;
                    tracing::info!(conn = key, "closing session: {e}");
                    return;
                }
            }
        }
    }

    /// The Noise handshake of `key` finished with `peer`: index it, give the peer spare
    /// CIDs, settle duplicates, and hand a dialed peer what waited for it.
    pub(super) fn on_ready(&mut self, key: ConnKey, peer: PeerId, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if std::mem::take(&mut c.handshaking) {
            self.handshaking = self.handshaking.saturating_sub(1);
        }
        // An accepted peer is counted against the connection cap now that it has proven
        // who it is (dialed connections took their place when they were dialed).
        if c.outbound.is_none() && !c.holds_slot {
            if self.cfg.slots.try_acquire(self.cfg.pool.max_connections) {
                c.holds_slot = true;
                inc(&self.cfg.stats.accepted);
            } else {
                c.refused = true;
                inc(&self.cfg.stats.refused);
                c.session
                    .close(close_code::CONNECTION_LIMIT, "connection limit reached");
                return;
            }
        }
        c.peer = Some(peer);
        let addr = c.session.peer_addr().unwrap_or(self.local_addr);
        let outbound = c.session.is_client();
        let pool_addr = c.outbound;
        if let Some(d) = c.session.handshake_duration() {
            self.hist
                .handshake_ns
                .saturating_record(d.as_nanos() as u64);
        }
        // Give the peer spare connection IDs (all naming this shard) for migration.
        let mut issued = Vec::new();
        while c.session.quic().scids_left() > 0 && issued.len() < 3 {
            let scid = cid::new_cid(self.cfg.index as u8, &mut self.rng);
            let token = u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64());
            let id = quiche::ConnectionId::from_ref(&scid);
            if c.session.quic_mut().new_scid(&id, token, false).is_err() {
                break;
            }
            issued.push(scid.to_vec());
        }
        for s in issued {
            self.conns.add_cid(key, s);
        }
        // Two connections with one peer (both sides dialed at once): both nodes keep the
        // one initiated by the smaller peer id and finish the other.
        // A connection in the same direction as an existing one is a reconnection (the peer
        // restarted, or its old connection is dying): the new one wins.
        let existing = self
            .cfg
            .directory
            .owner(&peer)
            .filter(|&(shard, conn, _)| (shard, conn) != (self.cfg.index, key));
        let mut replaced = None;
        if let Some((shard, conn, existing_outbound)) = existing {
            let initiator = if outbound { self.self_id } else { peer };
            let keep_new = existing_outbound == outbound || initiator == self.self_id.min(peer);
            if !keep_new {
                tracing::debug!(%peer, "duplicate connection: keeping the existing one");
                if let Some(pool_addr) = pool_addr {
                    self.outbound_superseded(pool_addr, peer, now);
                }
                self.finish_conn(key, now);
                return;
            }
            tracing::debug!(%peer, "duplicate connection: replacing the existing one");
            replaced = Some((shard, conn));
        }
        self.conns.set_peer(peer, key);
        self.router.forget(&peer);
        self.cfg
            .directory
            .connected(peer, self.cfg.index, key, addr, outbound);
        // Retire the replaced connection after the new one is registered, so what it
        // still had queued is routed to the new one.
        match replaced {
            Some((shard, conn)) if shard == self.cfg.index => self.finish_conn(conn, now),
            Some((shard, conn)) => self.push_hop(shard, ShardMsg::Finish(conn)),
            None => {}
        }
        if let Some(pool_addr) = pool_addr {
            self.outbound_ready(pool_addr, key, peer, now);
        }
        tracing::debug!(shard = self.cfg.index, %peer, %addr, "peer connected");
    }

    /// Seals due batches of `key`'s queue into its session while the session has room.
    pub(super) fn flush_queue(&mut self, key: ConnKey, now: Instant, force: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        // Nothing more goes into a session that is closing (its frames would never leave).
        if !c.session.is_open() || c.session.is_closing() || c.stall_closed {
            return;
        }
        let mut sealed_any = false;
        while !c.queue.is_empty()
            && (force || c.queue.is_due(now))
            && c.session.pending_bytes() < MAX_SESSION_BACKLOG
        {
            // The batch is read and sealed where it lies in the queue, then dropped from
            // it: no record is moved out first.
            let n = c.queue.next_batch_len();
            let mut bytes = 0usize;
            let mut msgs = 0u64;
            let mut echoes = 0u64;
            // Messages queued in one turn share their enqueue time: one histogram entry
            // per run of equal times, with its count.
            let mut run: Option<(Instant, u64)> = None;
            for (q, enqueued) in c.queue.front_items(n) {
                bytes += q.record.encoded_len();
                if matches!(q.record, Record::Message(_)) {
                    msgs += 1;
                    run = match run {
                        Some((t, k)) if t == enqueued => Some((t, k + 1)),
                        Some((t, k)) => {
                            record_waits(&mut self.hist, now, t, k);
                            Some((enqueued, 1))
                        }
                        None => Some((enqueued, 1)),
                    };
                    if q.kind == Kind::EchoReply {
                        echoes += 1;
                    }
                    if q.kind == Kind::Relayed {
                        let since = now.saturating_duration_since(q.received);
                        self.hist
                            .relay_delay_ns
                            .saturating_record(since.as_nanos() as u64);
                    }
                }
            }
            if let Some((t, k)) = run {
                record_waits(&mut self.hist, now, t, k);
            }
            self.tally.unqueued(bytes as u64);
            self.tally.held(bytes as u64, 0);
            // Sealed into the session's outgoing bytes; offered to QUIC once, below.
            let sealed = c
                .session
                .queue_batch(c.queue.front_items(n).map(|(q, _)| &q.record));
            // Sealed or not, the batch leaves the queue; its payload buffers are reused.
            let payloads = &mut self.payloads;
            c.queue.pop_front_n(n, |q, _| {
                if let Record::Message(m) = q.record {
                    payloads.put(m.payload);
                }
            });
            match sealed {
                Ok(()) => {
                    sealed_any = true;
                    self.hist.batch_size.saturating_record(n as u64);
                    self.tally.sealed(msgs);
                    // Echo replies count as delivered once QUIC takes the frame.
                    c.sealed.push_back(SealedFrame {
                        end: c.session.accepted_bytes() + c.session.pending_bytes() as u64,
                        messages: msgs,
                        echoes,
                    });
                    c.activity.messages_out += msgs;
                    self.activity_dirty = true;
                    c.activity.bytes_out += bytes as u64;
                    c.last_activity = now;
                    c.last_ping = now;
                }
                Err(e) => {
                    tracing::debug!(conn = key, "batch not sent: {e}");
                    add(&self.cfg.stats.dropped_unreachable, msgs);
                    break;
                }
            }
        }
        // One stream write for every frame sealed this call. Should QUIC fail, the session
        // is closed and its frames QUIC never took are counted as lost with it.
        if sealed_any && let Err(e) = c.session.flush_stream() {
            tracing::debug!(conn = key, "frames not offered: {e}");
        }
    }

    /// Runs the session's send loop until quiche has nothing more to send, counts the
    /// frames QUIC took, and re-arms the connection's deadline.
    pub(super) fn drive(&mut self, key: ConnKey, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let payload = self.cfg.transport.max_udp_payload.max(1500);
        loop {
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.resize(payload, 0);
            match c.session.send(&mut buf) {
                Some((n, info)) => {
                    buf.truncate(n);
                    self.outbox.push_back(Transmit {
                        to: info.to,
                        data: buf,
                        flow: key,
                    });
                }
                None => {
                    self.spare.push(buf);
                    break;
                }
            }
        }
        let delivered = c.note_progress(now);
        add(&self.cfg.stats.delivered_local, delivered);
        // Records opened from a frame but parked behind a destination without room are
        // held too: their bytes left the frame buffer when it was opened.
        let own = (c.session.pending_bytes() + c.session.received_bytes() + c.stalled_bytes) as u64;
        self.tally.held(c.held, own);
        c.held = own;
        // The deadline is per frame: it restarts when a later frame is the one awaited.
        let frame = c.session.frames_opened();
        c.partial_since = match c.partial_since {
            _ if !c.session.awaiting_frame_bytes() => None,
            Some(t) if c.partial_frame == frame => Some(t),
            _ => {
                c.partial_frame = frame;
                Some(now)
            }
        };
        // A protocol failure closed the session (in the handshake, a sealed frame, a
        // batch): count it once, by kind.
        if !c.failure_counted
            && let Some((code, _)) = c.session.error()
        {
            c.failure_counted = true;
            let counter = match *code {
                close_code::SEAL_FAILED | close_code::FRAME_TOO_LARGE => {
                    &self.cfg.stats.seal_failures
                }
                close_code::HANDSHAKE_FAILED => &self.cfg.stats.handshake_failures,
                _ => &self.cfg.stats.protocol_errors,
            };
            inc(counter);
        }
        let deadline = if c.session.is_closed() {
            // Removed at the end of this turn.
            self.closed.push(key);
            None
        } else {
            c.deadline(&self.cfg.pool, MAX_SESSION_BACKLOG)
        };
        self.timers.set(TimerKey::Conn(key), deadline);
    }
}

/// Records that `n` messages queued at `enqueued` waited until `now` to be sealed.
fn record_waits(hist: &mut crate::hist::Histograms, now: Instant, enqueued: Instant, n: u64) {
    let waited = now.saturating_duration_since(enqueued);
    hist.queue_delay_ns
        .saturating_record_n(waited.as_nanos() as u64, n);
}
