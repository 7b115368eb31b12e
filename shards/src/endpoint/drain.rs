//! Drain: stop accepting, flush every queue, finish every session, and when the deadline
//! passes close what is left, counting what it held.

use std::time::Instant;

use crate::wire::{ErrorCode, PeerId, close_code};

use super::Endpoint;
use super::interface::ShardMsg;

impl Endpoint {
    /// Starts draining: no new connections or dials; queues flush whatever their timeout,
    /// and sessions finish once their queues are out.
    pub(super) fn begin_drain(&mut self, deadline: Instant, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        tracing::info!("draining");
        self.draining = Some(deadline);
        // The drain deadline bounds every close from now on.
        for k in self.conns.keys() {
            if let Some(c) = self.conns.get_mut(k) {
                c.finished_at = None;
            }
        }
        // Messages waiting for a dialed peer to come back will not see it now.
        for addr in self.pool.idle_with_pending() {
            let pending = self.pool.take_pending(addr);
            self.refuse_pending(pending, now);
        }
        // Route what waits, then flush every queue regardless of its timeout.
        self.retry_waiting(now);
        let keys = self.conns.keys();
        for k in &keys {
            self.service(*k, now);
        }
        let awaited = self.awaited_peers();
        for k in keys {
            self.flush_queue(k, now, true);
            if let Some(c) = self.conns.get_mut(k)
                && c.queue.is_empty()
                && c.stalled.is_empty()
                && !c.peer.is_some_and(|p| awaited.contains(&p))
            {
                c.session.finish();
                // No finish deadline: the drain deadline bounds a drain.
                c.finished = true;
            }
            self.drive(k, now);
        }
    }

    /// Peers that records waiting for room are addressed to: their connections are not
    /// finished while those records may still go (a send made before the drain is
    /// delivered by it, not refused for it).
    fn awaited_peers(&self) -> std::collections::HashSet<PeerId> {
        self.waiting.iter().map(|(_, to, _, _)| *to).collect()
    }

    /// Whether every session finished cleanly (the drain can stop).
    pub fn drain_done(&mut self, now: Instant) -> bool {
        // What waited for room may fit now that queues were flushed.
        self.retry_waiting(now);
        let awaited = self.awaited_peers();
        for k in self.conns.keys() {
            self.flush_queue(k, now, true);
            if let Some(c) = self.conns.get_mut(k) {
                if !c.finished
                    && c.queue.is_empty()
                    && c.stalled.is_empty()
                    && !c.peer.is_some_and(|p| awaited.contains(&p))
                {
                    c.session.finish();
                    c.finished = true;
                }
                if c.session.is_client() && c.session.is_complete() {
                    c.session.close(close_code::NO_ERROR, "done");
                }
            }
            self.drive(k, now);
        }
        self.reap(now);
        self.conns.is_empty()
    }

    /// The drain deadline passed (or every session finished): refuse whatever still waits,
    /// close every session and count what each still held.
    pub fn close_all(&mut self, now: Instant) {
        // Whatever still waits for room or for another shard is not going anywhere now.
        let waiting: Vec<_> = self.waiting.drain(..).collect();
        self.room_signal = true;
        for (_, _, r, _) in waiting {
            let origin = self.origin_of(&r);
            self.undeliverable(origin, r, ErrorCode::ShuttingDown, now);
        }
        let hops: Vec<_> = self.hop_backlog.drain(..).collect();
        for (_, msg) in hops {
            if let ShardMsg::Deliver(h) = msg {
                let origin = self.origin_of(&h.record);
                self.undeliverable(origin, h.record, ErrorCode::ShuttingDown, now);
            }
        }
        for addr in self.pool.addrs() {
            let pending = self.pool.take_pending(addr);
            self.refuse_pending(pending, now);
        }
        for k in self.conns.keys() {
            if let Some(c) = self.conns.get_mut(k) {
                tracing::warn!(
                    conn = k,
                    client = c.session.is_client(),
                    queued = c.queue.len(),
                    stalled = c.stalled.len(),
                    "drain deadline reached before the peer finished: {}",
                    c.session.close_progress()
                );
                c.session.close(close_code::NO_ERROR, "shutting down");
            }
            self.drive(k, now);
        }
        // Count what could not be delivered before the deadline.
        for k in self.conns.keys() {
            self.drop_conn_state(k, ErrorCode::ShuttingDown, now);
        }
        self.closed.clear();
        self.tally.settle(&self.cfg.stats, &self.cfg.memory);
    }
}
