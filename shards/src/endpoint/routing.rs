//! Routing: where a record for a peer goes (this node's application, a connection on
//! this shard, another shard, a dialed peer's pool entry, or nowhere), decided by
//! [`Router::target`] without side effects; the endpoint then queues it, hands it over,
//! or answers its sender with an ERROR record.

use super::Map;
use std::net::SocketAddr;
use std::time::Instant;

use crate::wire::{ErrorCode, ErrorRecord, Message, PeerId, Record};

use super::Endpoint;
use super::conns::{ConnKey, Kind, push_queued};
use super::interface::{App, Delivery, Hop, PeerDirectory, ShardMsg};
use super::pool::Pool;
use super::stats::inc;

/// Records waiting for other shards before senders feeding them are paused.
pub(super) const HOP_BACKLOG_LIMIT: usize = 1024;

/// Where a routed record came from, for error reporting and back-pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// Read from this connection.
    Conn(ConnKey),
    /// This node's application.
    Local,
    /// Another shard.
    Remote,
}

/// What became of a record offered to a destination.
#[derive(Debug)]
pub(super) enum RouteOutcome {
    /// Taken: queued, handed to another shard or to the application.
    Done,
    /// Taken, but refused: counted as dropped and its sender told with an ERROR record.
    Refused,
    /// Destination full: the record was not consumed.
    Blocked(Record),
}

/// Where records for a peer go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// This node.
    Local,
    /// A connection on this shard.
    Conn(ConnKey),
    /// Another shard holds the peer's connection.
    Shard(usize),
    /// A peer this shard dials, not connected right now.
    Pool(SocketAddr),
    /// Nobody.
    Unknown,
}

/// The routing decision, with a cache of which shard holds which remote peer
/// (invalidated whenever the directory's generation moves, i.e. on any disconnect).
#[derive(Debug)]
pub(super) struct Router {
    self_id: PeerId,
    index: usize,
    remote: Map<PeerId, usize>,
    generation: u64,
}

impl Router {
    pub(super) fn new(self_id: PeerId, index: usize) -> Self {
        Router {
            self_id,
            index,
            remote: Map::default(),
            generation: 0,
        }
    }

    /// Where records for `to` go: local connections first, then other shards (as the
    /// directory says), then this shard's pool.
    pub(super) fn target(
        &mut self,
        to: &PeerId,
        local: &Map<PeerId, ConnKey>,
        pool: &Pool,
        directory: &dyn PeerDirectory,
    ) -> Target {
        if *to == self.self_id {
            return Target::Local;
        }
        if let Some(&key) = local.get(to) {
            return Target::Conn(key);
        }
        if let Some(shard) = self.remote_shard(to, directory) {
            return Target::Shard(shard);
        }
        match pool.addr_of(to) {
            Some(addr) => Target::Pool(addr),
            None => Target::Unknown,
        }
    }

    /// The other shard holding `to`, if any.
    pub(super) fn remote_shard(
        &mut self,
        to: &PeerId,
        directory: &dyn PeerDirectory,
    ) -> Option<usize> {
        let generation = directory.generation();
        if generation != self.generation {
            self.remote.clear();
            self.generation = generation;
        }
        if let Some(s) = self.remote.get(to) {
            return Some(*s);
        }
        let shard = directory.shard_of(to)?;
        if shard == self.index {
            return None;
        }
        self.remote.insert(*to, shard);
        Some(shard)
    }

    /// Forgets the cached shard of `peer` (it is connected here now).
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.remote.remove(peer);
    }
}

impl Endpoint {
    /// Routes one record that arrived from `origin`.
    pub(super) fn route(
        &mut self,
        origin: Origin,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        match r {
            Record::Message(mut m) => {
                self.tally.message_in();
                if let Origin::Conn(k) = origin {
                    // The sender is whoever authenticated on this connection.
                    if let Some(p) = self.conns.get(k).and_then(|c| c.peer) {
                        m.src = p;
                    }
                }
                if m.payload.len() > self.cfg.max_message_size {
                    inc(&self.stats().dropped_too_large);
                    let reason = format!(
                        "payload of {} bytes exceeds the limit of {}",
                        m.payload.len(),
                        self.cfg.max_message_size
                    );
                    self.send_error(
                        origin,
                        m.src,
                        ErrorCode::MessageTooLarge,
                        m.seq,
                        m.dst,
                        reason,
                        now,
                    );
                    return RouteOutcome::Done;
                }
                let dst = m.dst;
                // An echo request answers straight to its sender, without first routing
                // the request to this node's application (what route_to_peer would do).
                let outcome = if dst == self.self_id && matches!(self.cfg.app, App::Echo) {
                    self.echo(origin, m, received, now)
                } else {
                    self.route_to_peer(origin, dst, Record::Message(m), received, now)
                };
                match outcome {
                    RouteOutcome::Blocked(Record::Message(m)) => {
                        // Undo the count; it will be counted again on retry.
                        self.tally.unmessage_in();
                        RouteOutcome::Blocked(Record::Message(m))
                    }
                    // Relayed only when it went somewhere (not when it was refused).
                    RouteOutcome::Done => {
                        if dst != self.self_id {
                            inc(&self.stats().relayed);
                        }
                        RouteOutcome::Done
                    }
                    // Each variant rebuilt, not passed on whole: copying the whole outcome
                    // (a record's size) after a callee wrote only its tag stalled the copy.
                    RouteOutcome::Refused => RouteOutcome::Refused,
                    RouteOutcome::Blocked(other) => RouteOutcome::Blocked(other),
                }
            }
            Record::Error(e) => {
                inc(&self.stats().errors_in);
                tracing::debug!(code = ?e.code, seq = e.seq, dst = %e.dst, "peer reported: {}", e.reason);
                if let App::Channel(tx) = &self.cfg.app {
                    let _ = tx.try_send(Delivery::Error(e));
                }
                RouteOutcome::Done
            }
        }
    }

    /// Delivers `r` to peer `to`: this node's app, a session on this shard, another
    /// shard, or a dialed peer's pool entry.
    pub(super) fn route_to_peer(
        &mut self,
        origin: Origin,
        to: PeerId,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        let target =
            self.router
                .target(&to, self.conns.peer_map(), &self.pool, &*self.cfg.directory);
        match target {
            Target::Local => self.deliver_local(origin, r, received, now),
            Target::Conn(key) => self.route_to_conn(origin, key, r, received, now),
            Target::Shard(shard) => {
                if origin == Origin::Remote {
                    // Stale index on the sending shard: the peer is not here.
                    self.undeliverable(origin, r, ErrorCode::DestinationUnreachable, now);
                    return RouteOutcome::Refused;
                }
                if self.hop_backlog.len() >= HOP_BACKLOG_LIMIT {
                    return RouteOutcome::Blocked(r);
                }
                self.push_hop(
                    shard,
                    ShardMsg::Deliver(Hop {
                        to,
                        record: r,
                        received,
                    }),
                );
                RouteOutcome::Done
            }
            // A dialed peer whose connection is down (or being re-dialed) on this shard.
            Target::Pool(addr) => self.route_to_pool(addr, r, received, now),
            Target::Unknown => {
                self.undeliverable(origin, r, ErrorCode::UnknownDestination, now);
                RouteOutcome::Refused
            }
        }
    }

    /// Queues `r` on connection `key` if it has room.
    fn route_to_conn(
        &mut self,
        origin: Origin,
        key: ConnKey,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        let cap = self.cfg.queue_capacity;
        let self_id = self.self_id;
        let Some(c) = self.conns.get_mut(key) else {
            return RouteOutcome::Done;
        };
        if c.finished || c.session.is_closing() {
            let stalled = c.stall_closed;
            let code = if stalled {
                ErrorCode::DestinationStalled
            } else {
                self.gone_code()
            };
            self.undeliverable(origin, r, code, now);
            return RouteOutcome::Refused;
        }
        if c.queue.bytes() + c.session.pending_bytes() >= cap {
            return RouteOutcome::Blocked(r);
        }
        let kind = match &r {
            Record::Message(m) if m.src != self_id && origin != Origin::Local => Kind::Relayed,
            // Our own message made while reading a peer's connection: an echo reply.
            Record::Message(_) if matches!(origin, Origin::Conn(_)) => Kind::EchoReply,
            _ => Kind::Other,
        };
        push_queued(
            c,
            key,
            r,
            received,
            kind,
            now,
            &mut self.tally,
            &mut self.dirty,
        );
        RouteOutcome::Done
    }

    /// Hands `r` to this node's application (echo, sink or the embedding program).
    pub(super) fn deliver_local(
        &mut self,
        origin: Origin,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        let Record::Message(m) = r else {
            if let Record::Error(e) = r
                && let App::Channel(tx) = &self.cfg.app
            {
                let _ = tx.try_send(Delivery::Error(e));
            }
            return RouteOutcome::Done;
        };
        match &self.cfg.app {
            App::Sink => {
                inc(&self.stats().delivered_local);
                RouteOutcome::Done
            }
            App::Echo => self.echo(origin, m, received, now),
            App::Channel(tx) => {
                let d = Delivery::Message {
                    from: m.src,
                    seq: m.seq,
                    payload: m.payload,
                };
                match tx.try_send(d) {
                    Ok(()) => {
                        inc(&self.stats().delivered_local);
                        RouteOutcome::Done
                    }
                    Err(flume::TrySendError::Full(Delivery::Message { from, seq, payload })) => {
                        self.app_blocked = true;
                        RouteOutcome::Blocked(Record::Message(Message {
                            dst: self.self_id,
                            src: from,
                            seq,
                            payload,
                        }))
                    }
                    Err(_) => {
                        inc(&self.stats().dropped_shutting_down);
                        RouteOutcome::Done
                    }
                }
            }
        }
    }

    /// Answers message `m` (addressed to this node) with the same payload to its sender.
    /// Counted as delivered when the reply is sealed (flush_queue), not here. A reply that
    /// finds no room comes back as the original message, to be routed again later.
    fn echo(
        &mut self,
        origin: Origin,
        m: Message,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        let to = m.src;
        let reply = Record::Message(Message {
            dst: to,
            src: self.self_id,
            seq: m.seq,
            payload: m.payload,
        });
        match self.route_to_peer(origin, to, reply, received, now) {
            RouteOutcome::Done => RouteOutcome::Done,
            RouteOutcome::Refused => RouteOutcome::Refused,
            RouteOutcome::Blocked(Record::Message(reply)) => {
                RouteOutcome::Blocked(Record::Message(Message {
                    dst: self.self_id,
                    src: reply.dst,
                    seq: reply.seq,
                    payload: reply.payload,
                }))
            }
            RouteOutcome::Blocked(other) => RouteOutcome::Blocked(other),
        }
    }

    /// Counts a record that cannot be delivered and reports it to the message's sender.
    pub(super) fn undeliverable(
        &mut self,
        origin: Origin,
        r: Record,
        code: ErrorCode,
        now: Instant,
    ) {
        let Record::Message(m) = r else {
            // Errors about errors are not sent: that could loop.
            return;
        };
        match code {
            ErrorCode::UnknownDestination => inc(&self.stats().dropped_unknown_destination),
            ErrorCode::ShuttingDown => inc(&self.stats().dropped_shutting_down),
            ErrorCode::DestinationStalled => inc(&self.stats().dropped_stalled),
            _ => inc(&self.stats().dropped_unreachable),
        }
        let reason = match code {
            ErrorCode::UnknownDestination => format!("no connected peer {}", m.dst),
            ErrorCode::ShuttingDown => "node is shutting down".to_string(),
            ErrorCode::DestinationStalled => {
                format!("{} stopped reading; its connection was closed", m.dst)
            }
            _ => format!("connection to {} ended before delivery", m.dst),
        };
        self.send_error(origin, m.src, code, m.seq, m.dst, reason, now);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_error(
        &mut self,
        origin: Origin,
        to: PeerId,
        code: ErrorCode,
        seq: u64,
        dst: PeerId,
        reason: String,
        now: Instant,
    ) {
        let e = Record::Error(ErrorRecord {
            code,
            seq,
            dst,
            reason,
        });
        if to == self.self_id || origin == Origin::Local {
            if let (App::Channel(tx), Record::Error(e)) = (&self.cfg.app, e) {
                let _ = tx.try_send(Delivery::Error(e));
            }
            return;
        }
        // Error records may exceed the queue bound: they are caused by messages already
        // consumed, and each tells a sender of a loss. Up to twice the bound, though: past
        // that (one frame of many undeliverable messages) they are counted and dropped, so
        // a peer cannot make the node buffer without limit. (The message itself is counted
        // by the caller; an error that cannot be sent because the sender is gone is not
        // counted again.)
        if let Some(key) = self.conns.of_peer(&to) {
            let limit = 2 * self.cfg.queue_capacity;
            match self.conns.get(key) {
                Some(c) if c.finished || c.session.is_closing() => {}
                Some(c) if c.queue.bytes() + c.session.pending_bytes() >= limit => {
                    inc(&self.stats().error_records_dropped);
                }
                Some(_) => {
                    inc(&self.stats().errors_out);
                    self.enqueue(key, e, now, Kind::Other, now);
                }
                None => {}
            }
            return;
        }
        if let Some(shard) = self.router.remote_shard(&to, &*self.cfg.directory) {
            // Bounded like the connection queue above: past twice the backlog a message
            // may wait behind, an error for another shard is counted and dropped (the
            // backlog grows while that shard takes nothing, and a peer can cause one
            // error per 45 bytes it sends).
            if self.hop_backlog.len() >= 2 * HOP_BACKLOG_LIMIT {
                inc(&self.stats().error_records_dropped);
                return;
            }
            inc(&self.stats().errors_out);
            self.push_hop(
                shard,
                ShardMsg::Deliver(Hop {
                    to,
                    record: e,
                    received: now,
                }),
            );
        }
    }

    /// Who to tell when `r` cannot be delivered: this node's application when it sent it,
    /// else the peer named as its source.
    pub(super) fn origin_of(&self, r: &Record) -> Origin {
        match r {
            Record::Message(m) if m.src == self.self_id => Origin::Local,
            _ => Origin::Remote,
        }
    }

    /// The error for a message whose destination's connection is gone or going.
    pub(super) fn gone_code(&self) -> ErrorCode {
        if self.draining.is_some() {
            ErrorCode::ShuttingDown
        } else {
            ErrorCode::DestinationUnreachable
        }
    }

    /// Routes the records that waited for room, in order, until one is blocked again.
    pub(super) fn retry_waiting(&mut self, now: Instant) {
        let n = self.waiting.len();
        for _ in 0..n {
            let Some((origin, to, r, received)) = self.waiting.pop_front() else {
                break;
            };
            if let RouteOutcome::Blocked(r) = self.route_to_peer(origin, to, r, received, now) {
                self.waiting.push_front((origin, to, r, received));
                break;
            }
        }
        if self.waiting.len() < n {
            self.room_signal = true;
        }
    }

    /// Queues a record for another shard; the hop task sends it.
    pub(super) fn push_hop(&mut self, shard: usize, msg: ShardMsg) {
        self.hop_backlog.push_back((shard, msg));
    }
}
