//! The connection pool: peers this shard dials (their lifecycle, reconnection backoff and
//! the messages waiting for them), the connection cap, and the per-connection upkeep of
//! keep-alive, TTL and stall detection.
//!
//! The pool decides; the endpoint acts. [`Pool`] methods and [`upkeep`] return small
//! action values ([`DialAction`], [`LostAction`], [`PoolRoute`], [`Upkeep`]) and never
//! touch connections or routing themselves.

use super::Map;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cid;
use crate::lifecycle::{BackoffPolicy, ConnState, Event as LifeEvent, Lifecycle};
use crate::session::Session;
use crate::wire::{ErrorCode, PeerId, Record, close_code};

use super::conns::{Conn, ConnKey, Kind};
use super::routing::RouteOutcome;
use super::stats::{add, inc};
use super::timers::TimerKey;
use super::{DialReply, Endpoint};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Close a connection gracefully after this long without messages in either direction.
    pub ttl: Duration,
    /// Send a QUIC PING after this long without sending anything, so an idle connection
    /// stays alive and a vanished peer is detected by the idle timeout.
    pub keepalive: Duration,
    /// Cap on connections across all shards (accepted and dialed); `None` = no cap.
    pub max_connections: Option<usize>,
    /// Close a connection with [`crate::wire::close_code::STALLED`] when data has waited for the peer
    /// this long without the peer granting any flow-control credit (it stopped reading).
    pub stall_timeout: Duration,
    /// Close a connection whose QUIC and Noise handshakes have not both finished this long
    /// after it was opened (with `HANDSHAKE_FAILED`), freeing its slot: an unauthenticated
    /// peer cannot hold connection state longer than this.
    pub handshake_timeout: Duration,
    /// Close a connection with `PROTOCOL_VIOLATION` when a sealed frame it started sending
    /// is still incomplete this long after its first bytes arrived: a peer cannot hold a
    /// partial frame buffer (up to 16 MiB) open by trickling or stopping mid-frame.
    pub frame_timeout: Duration,
    /// Ceiling on the bytes the node's connections hold, across all shards: batch queues,
    /// sealed frames QUIC has not taken, and receive buffers. At the ceiling shards stop
    /// reading from peers (QUIC flow control then slows them) and drop new peers' Initials
    /// until it falls back below. `None` = no ceiling beyond the per-connection bounds.
    pub memory_limit: Option<u64>,
    /// Most connections per shard whose handshakes are in progress (accepted or dialed, not
    /// yet authenticated). A new peer's Initial beyond it is dropped without state and
    /// counted, so a flood of handshakes that never finish cannot grow memory without bound.
    pub max_handshakes: usize,
    /// While at least this many handshakes are in progress on a shard, or this many were
    /// started without address validation in the last second, a new peer's first Initial is
    /// answered with a QUIC Retry (stateless address validation) instead of a connection:
    /// floods from spoofed addresses then cost neither state nor a TLS setup each.
    /// 0 = always validate.
    pub retry_threshold: usize,
}

/// Default [`PoolConfig::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`PoolConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`PoolConfig::frame_timeout`]: a 256 KiB batch at 26 KB/s, a 16 MiB frame at
/// 1.7 MB/s.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`PoolConfig::max_handshakes`].
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default [`PoolConfig::retry_threshold`]: far above what a node's peers reconnecting at
/// once keep in progress, far below the handshake budget.
pub const DEFAULT_RETRY_THRESHOLD: usize = 64;

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            ttl: Duration::from_secs(300),
            keepalive: Duration::from_secs(10),
            max_connections: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            memory_limit: None,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            retry_threshold: DEFAULT_RETRY_THRESHOLD,
        }
    }
}

/// The bytes every connection of the node holds (queues, unsent sealed frames, receive
/// buffers), shared by all shards, against [`PoolConfig::memory_limit`].
#[derive(Debug, Default)]
pub struct MemoryBudget {
    used: AtomicU64,
}

impl MemoryBudget {
    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `limit` (if any) is reached.
    pub fn over(&self, limit: Option<u64>) -> bool {
        limit.is_some_and(|l| self.used() >= l)
    }

    /// Moves one connection's share from `old` to `new` bytes.
    pub(super) fn update(&self, old: u64, new: u64) {
        if new > old {
            self.used.fetch_add(new - old, Ordering::Relaxed);
        } else if old > new {
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(old - new))
                });
        }
    }
}

/// Connection slots shared by every shard; a connection holds one from accept or dial
/// until it is dropped, so the cap is never exceeded, even under a burst on all shards.
#[derive(Debug, Default)]
pub struct ConnectionSlots {
    used: AtomicU64,
}

impl ConnectionSlots {
    /// Takes a slot if fewer than `max` are in use (always, when `max` is `None`).
    pub fn try_acquire(&self, max: Option<usize>) -> bool {
        let Some(max) = max else {
            self.used.fetch_add(1, Ordering::AcqRel);
            return true;
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max as u64).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns a slot.
    pub fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// A peer this shard dials: its lifecycle, and messages waiting for (re)connection.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) peer: Option<PeerId>,
    pub(super) conn: Option<ConnKey>,
    pub(super) life: Lifecycle,
    pending: VecDeque<(Record, Instant)>,
    pending_bytes: usize,
    waiters: Vec<DialReply>,
}

/// What a dial request needs from the endpoint.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DialAction {
    /// Already connected: the caller was answered.
    Answered,
    /// A dial is in progress; the caller waits for it.
    Waiting,
    /// Open a new connection (the lifecycle was moved to connecting).
    Start,
}

/// A dialed connection's handshake finished ([`Pool::ready`]).
pub(super) struct Ready {
    /// The messages that waited for the connection, in order.
    pub(super) pending: Vec<(Record, Instant)>,
    /// The identity the address had before, when the node answered with another: the
    /// pending messages were for it.
    pub(super) gone: Option<PeerId>,
}

/// What the endpoint does after a dialed connection ended or could not start.
#[derive(Debug)]
pub(super) enum LostAction {
    /// Nothing (no such entry, or a retry is scheduled at the given time).
    Nothing,
    /// A retry is scheduled.
    RetryAt(Instant),
    /// Given up on the peer: refuse these waiting messages.
    GiveUp(Vec<(Record, Instant)>),
    /// Closed gracefully with messages still waiting: dial again now.
    Redial,
}

/// Where a message for a disconnected dialed peer went.
#[derive(Debug)]
pub(super) enum PoolRoute {
    /// Held until the connection is back.
    Held,
    /// Held, and the entry rests after a graceful close: dial it now.
    HeldDial,
    /// The entry holds its capacity in waiting messages: not taken.
    Full(Record),
    /// The peer was given up on.
    Failed(Record),
}

/// The pool's entries, by dialed address, and the addresses of known dialed peers.
#[derive(Debug)]
pub(super) struct Pool {
    entries: Map<SocketAddr, Outbound>,
    by_peer: Map<PeerId, SocketAddr>,
    backoff: BackoffPolicy,
}

/// A lifecycle transition the endpoint records: the new state, and the peer if known.
pub(super) type Transition = Option<(ConnState, Option<PeerId>)>;

impl Pool {
    pub(super) fn new(backoff: BackoffPolicy) -> Self {
        Pool {
            entries: Map::default(),
            by_peer: Map::default(),
            backoff,
        }
    }

    pub(super) fn get(&self, addr: &SocketAddr) -> Option<&Outbound> {
        self.entries.get(addr)
    }

    /// The dialed address of a known peer.
    pub(super) fn addr_of(&self, peer: &PeerId) -> Option<SocketAddr> {
        self.by_peer.get(peer).copied()
    }

    pub(super) fn addrs(&self) -> Vec<SocketAddr> {
        self.entries.keys().copied().collect()
    }

    /// Entries without a connection that hold waiting messages.
    pub(super) fn idle_with_pending(&self) -> Vec<SocketAddr> {
        self.entries
            .iter()
            .filter(|(_, ob)| ob.conn.is_none() && !ob.pending.is_empty())
            .map(|(a, _)| *a)
            .collect()
    }

    /// Applies a lifecycle event; `unit` in [0, 1) is the backoff jitter.
    pub(super) fn transition(
        &mut self,
        addr: SocketAddr,
        ev: LifeEvent,
        now: Instant,
        unit: f64,
    ) -> Transition {
        let ob = self.entries.get_mut(&addr)?;
        match ob.life.on(ev, now, unit) {
            Ok(state) => Some((state, ob.peer)),
            Err(e) => {
                tracing::debug!(%addr, "lifecycle: {e}");
                None
            }
        }
    }

    /// A dial request for `addr`: answers it at once when connected, else records the
    /// caller as waiting.
    pub(super) fn dial(&mut self, addr: SocketAddr, reply: DialReply) -> DialAction {
        let backoff = self.backoff;
        let ob = self.entries.entry(addr).or_insert_with(|| Outbound {
            peer: None,
            conn: None,
            life: Lifecycle::new(backoff, true),
            pending: VecDeque::new(),
            pending_bytes: 0,
            waiters: Vec::new(),
        });
        match ob.life.state() {
            ConnState::Connected => {
                if let Some(peer) = ob.peer {
                    let _ = reply.send(Ok(peer));
                    return DialAction::Answered;
                }
            }
            ConnState::Connecting => {
                ob.waiters.push(reply);
                return DialAction::Waiting;
            }
            _ => {}
        }
        ob.waiters.push(reply);
        DialAction::Start
    }

    /// Notes the connection that now serves `addr`.
    pub(super) fn attach(&mut self, addr: SocketAddr, key: ConnKey) {
        if let Some(ob) = self.entries.get_mut(&addr) {
            ob.conn = Some(key);
        }
    }

    /// The connection of `addr` ended (or never started): answer waiting dialers with
    /// `why` and detach it. Call [`Pool::after_loss`] once the transition is recorded.
    pub(super) fn detach(&mut self, addr: SocketAddr, why: &str) -> bool {
        let Some(ob) = self.entries.get_mut(&addr) else {
            return false;
        };
        ob.conn = None;
        for w in ob.waiters.drain(..) {
            let _ = w.send(Err(why.to_string()));
        }
        true
    }

    /// What follows a loss, once the `Closed` transition was applied.
    pub(super) fn after_loss(&mut self, addr: SocketAddr) -> LostAction {
        let Some(ob) = self.entries.get_mut(&addr) else {
            return LostAction::Nothing;
        };
        if ob.life.state() == ConnState::Failed {
            return LostAction::GiveUp(ob.take_pending());
        }
        match ob.life.next_retry() {
            Some(t) => LostAction::RetryAt(t),
            None if !ob.pending.is_empty() => LostAction::Redial,
            None => LostAction::Nothing,
        }
    }

    /// Takes every message waiting for `addr`.
    pub(super) fn take_pending(&mut self, addr: SocketAddr) -> Vec<(Record, Instant)> {
        self.entries
            .get_mut(&addr)
            .map(Outbound::take_pending)
            .unwrap_or_default()
    }

    /// A dialed connection finished its handshake: answer the dialers and hand back the
    /// messages that waited for it, in order. When the node at `addr` answered with
    /// another identity than before (it restarted with a new key, or another node took the
    /// address), the old identity is forgotten here and returned with the messages that
    /// waited for it: they are not for this peer.
    pub(super) fn ready(&mut self, addr: SocketAddr, key: ConnKey, peer: PeerId) -> Option<Ready> {
        let ob = self.entries.get_mut(&addr)?;
        let before = ob.peer.replace(peer);
        ob.conn = Some(key);
        for w in ob.waiters.drain(..) {
            let _ = w.send(Ok(peer));
        }
        let pending = ob.take_pending();
        let gone = before.filter(|old| *old != peer);
        if let Some(old) = gone
            && self.by_peer.get(&old) == Some(&addr)
        {
            self.by_peer.remove(&old);
        }
        self.by_peer.insert(peer, addr);
        Some(Ready { pending, gone })
    }

    /// A dialed connection lost to an existing connection with the same peer: answer the
    /// dialers with the peer id and detach it (the caller records Established then Closed).
    pub(super) fn superseded(&mut self, addr: SocketAddr, peer: PeerId) -> bool {
        let Some(ob) = self.entries.get_mut(&addr) else {
            return false;
        };
        ob.peer = Some(peer);
        ob.conn = None;
        for w in ob.waiters.drain(..) {
            let _ = w.send(Ok(peer));
        }
        true
    }

    /// Holds `r` for the disconnected entry of `addr`, up to `cap` bytes.
    pub(super) fn hold(
        &mut self,
        addr: SocketAddr,
        r: Record,
        received: Instant,
        cap: usize,
    ) -> PoolRoute {
        let Some(ob) = self.entries.get_mut(&addr) else {
            return PoolRoute::Failed(r);
        };
        if ob.life.state() == ConnState::Failed {
            return PoolRoute::Failed(r);
        }
        if ob.pending_bytes >= cap {
            return PoolRoute::Full(r);
        }
        ob.pending_bytes += r.encoded_len();
        ob.pending.push_back((r, received));
        if ob.conn.is_none() && ob.life.next_retry().is_none() {
            PoolRoute::HeldDial
        } else {
            PoolRoute::Held
        }
    }

    /// Moves what a closed connection still had queued back to `addr`'s entry while it
    /// fits in `cap` bytes; returns what did not fit.
    pub(super) fn requeue(
        &mut self,
        addr: SocketAddr,
        records: Vec<(Record, Instant)>,
        cap: usize,
    ) -> Vec<Record> {
        let Some(ob) = self.entries.get_mut(&addr) else {
            return records.into_iter().map(|(r, _)| r).collect();
        };
        let mut rest = Vec::new();
        for (r, received) in records {
            let size = r.encoded_len();
            if ob.pending_bytes + size <= cap {
                ob.pending_bytes += size;
                ob.pending.push_back((r, received));
            } else {
                rest.push(r);
            }
        }
        rest
    }

    /// Whether the entry of `addr` is served by connection `key` right now.
    pub(super) fn is_served_by(&self, addr: &SocketAddr, key: ConnKey) -> bool {
        self.entries
            .get(addr)
            .is_some_and(|ob| ob.conn == Some(key))
    }

    /// Whether `addr` has no connection and its backoff expired.
    pub(super) fn retry_due(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.entries
            .get(addr)
            .is_some_and(|ob| ob.conn.is_none() && ob.life.retry_due(now))
    }
}

impl Outbound {
    fn take_pending(&mut self) -> Vec<(Record, Instant)> {
        self.pending_bytes = 0;
        self.pending.drain(..).collect()
    }
}

/// What the pool wants done to one connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upkeep {
    /// Nothing is due.
    Nothing,
    /// The handshakes did not finish in time: close with HANDSHAKE_FAILED.
    HandshakeTimeout,
    /// A sealed frame stayed incomplete for the frame timeout: close with
    /// PROTOCOL_VIOLATION.
    FrameTimeout,
    /// Data waited the stall timeout without the peer taking any: close with STALLED.
    Stalled,
    /// We finished our direction the stall timeout ago and the graceful close has not
    /// completed (the peer has not finished, or not closed): close with NO_ERROR.
    Unfinished,
    /// Idle past the TTL: finish gracefully.
    Expired,
    /// The TTL passed but the connection is not idle, only behind a slow peer: restart
    /// its idle clock.
    Busy,
    /// Nothing was sent for the keep-alive interval: send a PING.
    Ping,
}

/// Decides the pool's work on connection `c` at `now`.
pub(super) fn upkeep(c: &Conn, cfg: &PoolConfig, now: Instant) -> Upkeep {
    if c.handshake_deadline(cfg).is_some_and(|t| t <= now) {
        return Upkeep::HandshakeTimeout;
    }
    if c.frame_deadline(cfg).is_some_and(|t| t <= now) {
        return Upkeep::FrameTimeout;
    }
    if c.stall_deadline(cfg).is_some_and(|t| t <= now) {
        return Upkeep::Stalled;
    }
    if c.finish_deadline(cfg).is_some_and(|t| t <= now) {
        return Upkeep::Unfinished;
    }
    if c.pool_deadline(cfg).is_none_or(|t| t > now) {
        return Upkeep::Nothing;
    }
    if now.saturating_duration_since(c.last_activity) >= cfg.ttl {
        if !c.queue.is_empty() || !c.stalled.is_empty() {
            return Upkeep::Busy;
        }
        return Upkeep::Expired;
    }
    if now.saturating_duration_since(c.last_ping) >= cfg.keepalive {
        return Upkeep::Ping;
    }
    Upkeep::Nothing
}

impl Endpoint {
    /// Dials `addr`, or reuses the connection this shard already has (or is making) to it.
    pub(super) fn dial(&mut self, addr: SocketAddr, reply: DialReply, now: Instant) {
        if self.draining.is_some() {
            let _ = reply.send(Err("node is shutting down".into()));
            return;
        }
        if self.pool.dial(addr, reply) == DialAction::Start {
            self.transition(addr, LifeEvent::Dial, now);
            self.start_dial(addr, now);
        }
    }

    /// Opens a new outbound connection for the pool entry of `addr`.
    pub(super) fn start_dial(&mut self, addr: SocketAddr, now: Instant) {
        let scid = cid::new_cid(self.cfg.index as u8, &mut self.rng);
        let session = Session::connect(
            &mut self.client_cfg,
            &self.cfg.identity,
            &scid,
            self.local_addr,
            addr,
            now,
        );
        let failure = match session {
            Ok(s) if self.cfg.slots.try_acquire(self.cfg.pool.max_connections) => {
                inc(&self.stats().dialed);
                let key = self.insert_conn(s, scid.to_vec(), now);
                if let Some(c) = self.conns.get_mut(key) {
                    c.holds_slot = true;
                    c.outbound = Some(addr);
                }
                self.pool.attach(addr, key);
                self.timers.cancel(TimerKey::Redial(addr));
                self.drive(key, now);
                return;
            }
            Ok(_) => {
                inc(&self.stats().refused);
                format!(
                    "connection limit of {} reached",
                    self.cfg.pool.max_connections.unwrap_or(0)
                )
            }
            Err(e) => format!("dial {addr}: {e}"),
        };
        self.outbound_lost(addr, false, &failure, now);
    }

    /// An outbound connection ended or could not start: schedule a retry or give up.
    pub(super) fn outbound_lost(
        &mut self,
        addr: SocketAddr,
        graceful: bool,
        why: &str,
        now: Instant,
    ) {
        if !self.pool.detach(addr, why) {
            return;
        }
        self.transition(addr, LifeEvent::Closed { graceful }, now);
        match self.pool.after_loss(addr) {
            LostAction::Nothing => {}
            LostAction::GiveUp(pending) => {
                tracing::warn!(%addr, "giving up on peer: {why}");
                self.refuse_pending(pending, now);
            }
            LostAction::Redial => {
                if self.draining.is_some() {
                    let pending = self.pool.take_pending(addr);
                    self.refuse_pending(pending, now);
                } else {
                    self.transition(addr, LifeEvent::Dial, now);
                    self.start_dial(addr, now);
                }
            }
            LostAction::RetryAt(t) => {
                let attempt = self.pool.get(&addr).map_or(0, |ob| ob.life.attempt());
                tracing::info!(%addr, attempt,
                    "connection lost ({why}); retrying in {:?}", t.saturating_duration_since(now));
                self.timers.set(TimerKey::Redial(addr), Some(t));
            }
        }
    }

    /// Refuses messages that waited for a dialed peer.
    pub(super) fn refuse_pending(&mut self, pending: Vec<(Record, Instant)>, now: Instant) {
        for (r, _) in pending {
            let origin = self.origin_of(&r);
            self.undeliverable(origin, r, ErrorCode::DestinationUnreachable, now);
        }
    }

    /// Applies a lifecycle event to the pool entry of `addr`, records and counts it.
    pub(super) fn transition(&mut self, addr: SocketAddr, ev: LifeEvent, now: Instant) {
        let unit: f64 = rand::Rng::r#gen(&mut self.rng);
        if let Some((state, peer)) = self.pool.transition(addr, ev, now, unit) {
            if let Some(c) = self.cfg.stats.transitions.get(state as usize) {
                inc(c);
            }
            if let Some(peer) = peer {
                self.cfg.directory.state(peer, self.cfg.index, state);
            }
        }
    }

    /// A dialed connection finished its handshake: hand it the messages that waited for
    /// it, in order.
    pub(super) fn outbound_ready(
        &mut self,
        addr: SocketAddr,
        key: ConnKey,
        peer: PeerId,
        now: Instant,
    ) {
        let Some(Ready { pending, gone }) = self.pool.ready(addr, key, peer) else {
            return;
        };
        self.room_freed = true;
        self.transition(addr, LifeEvent::Established, now);
        if let Some(old) = gone {
            tracing::info!(
                %addr, %old, new = %peer,
                "dialed node answered with a new identity: messages for the old one are refused"
            );
            // The old identity's entry in the index (kept while it was re-dialed) goes.
            if let Some((shard, conn, _)) = self.cfg.directory.owner(&old)
                && shard == self.cfg.index
                && self.conns.get(conn).is_none()
            {
                self.cfg.directory.disconnected(old, self.cfg.index, conn);
            }
            self.router.forget(&old);
            // Routed again by identity: refused as for an unknown destination unless the
            // old identity is connected elsewhere (this node's own sends then follow it
            // to another shard; relayed ones are refused, as for any stale index). In
            // order: once one waits for room the rest wait behind it, and all of them
            // ahead of newer records for that identity already waiting.
            let mut held = Vec::new();
            for (r, received) in pending {
                let origin = self.origin_of(&r);
                if !held.is_empty() {
                    held.push((origin, old, r, received));
                } else if let RouteOutcome::Blocked(r) =
                    self.route_to_peer(origin, old, r, received, now)
                {
                    held.push((origin, old, r, received));
                }
            }
            for w in held.into_iter().rev() {
                self.waiting.push_front(w);
            }
            return;
        }
        for (r, received) in pending {
            let kind = if matches!(&r, Record::Message(m) if m.src != self.self_id) {
                Kind::Relayed
            } else {
                Kind::Other
            };
            self.enqueue(key, r, received, kind, now);
        }
    }

    /// A dialed connection lost to an existing connection with the same peer: the pool
    /// entry rests (messages route over the existing connection; nothing is re-dialed when
    /// this one closes).
    pub(super) fn outbound_superseded(&mut self, addr: SocketAddr, peer: PeerId, now: Instant) {
        if !self.pool.superseded(addr, peer) {
            return;
        }
        self.transition(addr, LifeEvent::Established, now);
        self.transition(addr, LifeEvent::Closed { graceful: true }, now);
        // Anything that waited for this dial goes over the existing connection.
        for (r, received) in self.pool.take_pending(addr) {
            let origin = self.origin_of(&r);
            if let RouteOutcome::Blocked(r) = self.route_to_peer(origin, peer, r, received, now) {
                self.waiting.push_back((origin, peer, r, received));
            }
        }
    }

    /// Re-dials `addr` if its backoff expired.
    pub(super) fn redial_if_due(&mut self, addr: SocketAddr, now: Instant) {
        if self.draining.is_some() || !self.pool.retry_due(&addr, now) {
            return;
        }
        self.transition(addr, LifeEvent::RetryDue, now);
        self.start_dial(addr, now);
    }

    /// Stall detection, keep-alive and TTL for one connection.
    pub(super) fn pool_work(&mut self, key: ConnKey, now: Instant) {
        let pool = &self.cfg.pool;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let delivered = c.note_progress(now);
        add(&self.cfg.stats.delivered_local, delivered);
        match upkeep(c, pool, now) {
            Upkeep::Nothing => {}
            Upkeep::HandshakeTimeout => {
                tracing::debug!(conn = key, "handshake did not finish in time: closing");
                inc(&self.cfg.stats.handshake_failures);
                inc(&self.cfg.stats.handshake_timeouts);
                let reason = format!(
                    "handshake did not finish within {} ms",
                    pool.handshake_timeout.as_millis()
                );
                c.session.close(close_code::HANDSHAKE_FAILED, &reason);
                // The slot and the handshake budget are free now, not once QUIC's closing
                // period ends.
                if std::mem::take(&mut c.holds_slot) {
                    self.cfg.slots.release();
                }
                if std::mem::take(&mut c.handshaking) {
                    self.handshaking = self.handshaking.saturating_sub(1);
                }
            }
            Upkeep::FrameTimeout => {
                tracing::debug!(conn = key, "sealed frame incomplete for too long: closing");
                inc(&self.cfg.stats.frame_timeouts);
                inc(&self.cfg.stats.protocol_errors);
                let reason = format!(
                    "frame incomplete after {} ms",
                    pool.frame_timeout.as_millis()
                );
                c.session.close(close_code::PROTOCOL_VIOLATION, &reason);
            }
            Upkeep::Stalled => {
                // Data has waited this long without the peer granting any credit: it
                // stopped reading. What it still holds is counted as `stalled` when it is
                // removed.
                tracing::info!(
                    conn = key,
                    queued = c.queue.len(),
                    "peer made no flow-control progress for {:?}: closing",
                    pool.stall_timeout
                );
                inc(&self.cfg.stats.stalled_closed);
                c.stall_closed = true;
                let reason = format!(
                    "no flow-control progress for {} ms",
                    pool.stall_timeout.as_millis()
                );
                c.session.close(close_code::STALLED, &reason);
            }
            Upkeep::Unfinished => {
                tracing::debug!(
                    conn = key,
                    "graceful close not complete {:?} after our FIN: closing",
                    pool.stall_timeout
                );
                let reason = format!(
                    "graceful close not complete within {} ms",
                    pool.stall_timeout.as_millis()
                );
                c.session.close(close_code::NO_ERROR, &reason);
            }
            Upkeep::Busy => c.last_activity = now,
            Upkeep::Expired => {
                tracing::debug!(conn = key, "pool TTL expired");
                inc(&self.cfg.stats.ttl_closed);
                c.session.finish();
                c.mark_finished(now, self.draining.is_none());
            }
            Upkeep::Ping => {
                let _ = c.session.quic_mut().send_ack_eliciting();
                c.last_ping = now;
            }
        }
    }

    /// Queues `r` for a dialed peer that is not connected right now: it goes out when the
    /// connection is back, or is refused once the peer is given up on.
    pub(super) fn route_to_pool(
        &mut self,
        addr: SocketAddr,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        let outcome = if self.draining.is_some() {
            PoolRoute::Failed(r)
        } else {
            self.pool.hold(addr, r, received, self.cfg.queue_capacity)
        };
        match outcome {
            PoolRoute::Held => {}
            // Closed gracefully (TTL, or the peer drained): dial again now that there is
            // something to send.
            PoolRoute::HeldDial => {
                self.transition(addr, LifeEvent::Dial, now);
                self.start_dial(addr, now);
            }
            PoolRoute::Full(r) => return RouteOutcome::Blocked(r),
            PoolRoute::Failed(r) => {
                let origin = self.origin_of(&r);
                let code = self.gone_code();
                self.undeliverable(origin, r, code, now);
                return RouteOutcome::Refused;
            }
        }
        RouteOutcome::Done
    }
}
