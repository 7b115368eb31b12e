//! Counters a shard keeps without locks, and the periodic publication of its histograms
//! and per-peer traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Endpoint;
use super::interface::PeerActivity;

/// How often a shard publishes histograms and peer activity.
pub(super) const PUBLISH_PERIOD: Duration = Duration::from_millis(250);

/// Counters a shard keeps without locks; the engine sums them across shards.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// UDP datagrams received.
    pub datagrams_in: AtomicU64,
    /// UDP datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Receive calls made: every `recvmmsg`, including one that found the socket empty
    /// (with busy polling, many do), and every io_uring peek that waited for the socket;
    /// `datagrams_in / receive_calls` is datagrams per receive call, the cost it measures.
    pub receive_calls: AtomicU64,
    /// Send system calls (and io_uring sends) that sent datagrams.
    pub send_calls: AtomicU64,
    /// GSO sends: buffers the kernel cut into several datagrams (one pass through the stack).
    pub gso_sends: AtomicU64,
    /// Datagrams that left inside GSO sends (of `datagrams_out`).
    pub gso_datagrams: AtomicU64,
    /// Datagrams dropped before QUIC saw them because they did not fit a receive slot.
    pub truncated_datagrams: AtomicU64,
    /// Datagrams whose connection ID names another shard (steering failure).
    pub misrouted: AtomicU64,
    /// Datagrams for no known connection that were not a new Initial.
    pub unknown_datagrams: AtomicU64,
    /// Datagrams whose QUIC header did not parse.
    pub unparsable_datagrams: AtomicU64,
    /// Long-header datagrams for no known connection that start no connection: under
    /// 1200 bytes or a DCID under 8 bytes (dropped unanswered), an unsupported version
    /// (answered with Version Negotiation), or an Initial arriving while the shard drains,
    /// does not accept connections, or that quiche refused (dropped without state).
    pub rejected_initials: AtomicU64,
    /// Retry packets sent: a new peer was asked to prove its address before any state.
    pub retries_sent: AtomicU64,
    /// Initials whose Retry token checked out (the peer's address is validated).
    pub address_validated: AtomicU64,
    /// Initials dropped because their token was malformed, forged, for another address or
    /// connection ID, or expired.
    pub invalid_tokens: AtomicU64,
    /// Peers accepted: inbound connections whose QUIC and Noise handshakes completed and
    /// that found a place under the connection cap.
    pub accepted: AtomicU64,
    /// Connections dialed.
    pub dialed: AtomicU64,
    /// Connections currently held (gauge).
    pub connections: AtomicU64,
    /// Connections closed for any reason.
    pub closed: AtomicU64,
    /// Connections that failed the Noise handshake (including handshake timeouts).
    pub handshake_failures: AtomicU64,
    /// New peers' Initials dropped without state because the shard already had
    /// `PoolConfig::max_handshakes` handshakes in progress.
    pub handshake_budget_drops: AtomicU64,
    /// Connections closed because their handshakes did not finish within the handshake
    /// timeout (also counted in `handshake_failures`).
    pub handshake_timeouts: AtomicU64,
    /// Connections closed because a sealed frame failed authentication.
    pub seal_failures: AtomicU64,
    /// Connections closed for other protocol violations.
    pub protocol_errors: AtomicU64,
    /// Messages received from peers.
    pub messages_in: AtomicU64,
    /// Messages handed to the node's own application.
    pub delivered_local: AtomicU64,
    /// Messages queued towards another peer (relay), on this shard or another.
    pub relayed: AtomicU64,
    /// Messages sealed and written to a connection.
    pub messages_out: AtomicU64,
    /// Batches sealed and written.
    pub batches_out: AtomicU64,
    /// Error records sent back to senders.
    pub errors_out: AtomicU64,
    /// Error records received.
    pub errors_in: AtomicU64,
    /// Error records not sent because their sender's queue already held twice its capacity
    /// (the messages they were about are counted as dropped regardless).
    pub error_records_dropped: AtomicU64,
    /// Dropped: destination unknown.
    pub dropped_unknown_destination: AtomicU64,
    /// Dropped: larger than the message size limit.
    pub dropped_too_large: AtomicU64,
    /// Dropped: the destination's connection ended before delivery.
    pub dropped_unreachable: AtomicU64,
    /// Dropped: the node was shutting down.
    pub dropped_shutting_down: AtomicU64,
    /// Dropped: the sender's own connection ended before its messages were routed.
    pub dropped_sender_gone: AtomicU64,
    /// Dropped: the destination stopped reading and its connection was closed for it
    /// ([`crate::wire::close_code::STALLED`]) with these messages still queued.
    pub dropped_stalled: AtomicU64,
    /// Connections closed because a sealed frame stayed incomplete for the frame timeout.
    pub frame_timeouts: AtomicU64,
    /// Connections closed because the peer made no flow-control progress for the stall
    /// timeout while data waited for it.
    pub stalled_closed: AtomicU64,
    /// Inode of this shard's UDP socket (0 = unknown), so the engine can read the kernel's
    /// receive-queue drops for it from `/proc/net/udp`.
    pub socket_inode: AtomicU64,
    /// Bytes held in batch queues, not yet sealed (gauge).
    pub queued_bytes: AtomicU64,
    /// This shard's share of the node's memory budget: batch queues, unsent sealed frames
    /// and receive buffers of its connections (gauge).
    pub buffered_bytes: AtomicU64,
    /// New peers' Initials dropped because the node was at its memory limit.
    pub memory_limit_drops: AtomicU64,
    /// Times this shard stopped reading from peers because the node reached its memory
    /// limit (counted once per episode).
    pub memory_pauses: AtomicU64,
    /// Connections refused (connection limit, draining).
    pub refused: AtomicU64,
    /// Connections closed by the pool TTL.
    pub ttl_closed: AtomicU64,
    /// Lifecycle transitions of dialed peers into each state, indexed like `ConnState::ALL`.
    pub transitions: [AtomicU64; 5],
}

/// Adds one to a counter.
pub(super) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The byte gauges and message counts a turn changes for every message (queued, sealed,
/// held), kept shard-local during the turn and added into the shared atomics once at its
/// end ([`Tally::settle`]): one atomic update of each per turn instead of several per
/// message, and none per message on the node's memory budget, whose cache line every
/// shard writes. Readers of the gauges see them as of the last finished turn.
#[derive(Debug, Default)]
pub(super) struct Tally {
    messages_in: u64,
    batches_out: u64,
    messages_out: u64,
    queued_up: u64,
    queued_down: u64,
    held_up: u64,
    held_down: u64,
}

impl Tally {
    /// One message record arrived from a peer, the app or another shard.
    pub(super) fn message_in(&mut self) {
        self.messages_in = self.messages_in.wrapping_add(1);
    }

    /// Takes back a `message_in` (the record is routed again later and counted then).
    pub(super) fn unmessage_in(&mut self) {
        self.messages_in = self.messages_in.wrapping_sub(1);
    }

    /// A batch of `messages` message records was sealed.
    pub(super) fn sealed(&mut self, messages: u64) {
        self.batches_out += 1;
        self.messages_out += messages;
    }

    /// `n` bytes of records went into a batch queue.
    pub(super) fn queued(&mut self, n: u64) {
        self.queued_up += n;
    }

    /// `n` bytes of records left a batch queue (sealed, rerouted or dropped).
    pub(super) fn unqueued(&mut self, n: u64) {
        self.queued_down += n;
    }

    /// Moves `old` bytes of held memory to `new` (the node's budget and this shard's gauge).
    pub(super) fn held(&mut self, old: u64, new: u64) {
        self.held_up += new;
        self.held_down += old;
    }

    /// Bytes of held memory this turn added on balance (negative: freed), not yet in the
    /// node's budget.
    pub(super) fn held_pending(&self) -> i128 {
        i128::from(self.held_up) - i128::from(self.held_down)
    }

    /// Adds what the turn counted into the shared counters, the node's memory budget and
    /// this shard's gauges, and starts over.
    pub(super) fn settle(&mut self, stats: &ShardStats, memory: &super::pool::MemoryBudget) {
        let t = std::mem::take(self);
        if t.messages_in != 0 {
            // Wrapping: a record counted in and taken back in one turn nets to zero.
            add(&stats.messages_in, t.messages_in);
        }
        if t.batches_out != 0 {
            add(&stats.batches_out, t.batches_out);
            add(&stats.messages_out, t.messages_out);
        }
        if t.queued_up != t.queued_down {
            if t.queued_up > t.queued_down {
                add(&stats.queued_bytes, t.queued_up - t.queued_down);
            } else {
                sub(&stats.queued_bytes, t.queued_down - t.queued_up);
            }
        }
        if t.held_up != t.held_down {
            memory.update(t.held_down, t.held_up);
            if t.held_up > t.held_down {
                add(&stats.buffered_bytes, t.held_up - t.held_down);
            } else {
                let _ =
                    stats
                        .buffered_bytes
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                            Some(b.saturating_sub(t.held_down - t.held_up))
                        });
            }
        }
    }
}

/// Subtracts `n` from a gauge.
pub(super) fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Ordering::Relaxed);
}

impl Endpoint {
    /// Whether the node is at its memory limit, counting what this turn holds that is not
    /// settled into the shared budget yet.
    pub(super) fn memory_over(&self) -> bool {
        self.cfg.pool.memory_limit.is_some_and(|l| {
            i128::from(self.cfg.memory.used()) + self.tally.held_pending() >= i128::from(l)
        })
    }

    /// Adds local histograms into the shared copy (one short lock per period) and reports
    /// each connection's traffic to the peer index if it changed.
    pub fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        self.activity_dirty = false;
        if !self.hist.is_empty() {
            self.cfg.histograms.lock().add(&self.hist);
            self.hist.clear();
        }
        let wall = self.wall_clock(now);
        for (key, c) in self.conns.iter_mut() {
            let Some(peer) = c.peer else { continue };
            let mut a: PeerActivity = c.activity;
            a.addr = c.session.peer_addr();
            a.last_activity = wall.checked_sub(now.saturating_duration_since(c.last_activity));
            if (a.messages_in, a.messages_out, a.addr)
                != (
                    c.published.messages_in,
                    c.published.messages_out,
                    c.published.addr,
                )
            {
                self.cfg.directory.activity(peer, self.cfg.index, *key, a);
                c.published = a;
            }
        }
    }

    /// When the next publication is due: only while something changed since the last.
    pub(super) fn publish_deadline(&self) -> Option<Instant> {
        (!self.hist.is_empty() || self.activity_dirty).then(|| self.last_publish + PUBLISH_PERIOD)
    }
}

/// How often at most a shard warns about datagrams it dropped.
pub const JUNK_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The drop counters a flood moves, by name, as the warning lists them.
fn junk_counters(s: &ShardStats) -> [(&'static str, u64); 8] {
    let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
    [
        ("unparsable", r(&s.unparsable_datagrams)),
        ("unknown_connection", r(&s.unknown_datagrams)),
        ("misrouted", r(&s.misrouted)),
        ("short_initial", r(&s.rejected_initials)),
        ("handshake_budget", r(&s.handshake_budget_drops)),
        ("invalid_token", r(&s.invalid_tokens)),
        ("truncated", r(&s.truncated_datagrams)),
        ("retry_sent", r(&s.retries_sent)),
    ]
}

/// At most one warning per [`JUNK_LOG_INTERVAL`] naming what was dropped since the last,
/// so a flood is visible in the log without the log becoming the flood.
pub(super) struct JunkLog {
    next: Instant,
    seen: [u64; 8],
}

impl JunkLog {
    pub(super) fn new(now: Instant) -> Self {
        JunkLog {
            next: now,
            seen: [0; 8],
        }
    }

    /// The warning due at `now`, if the interval has passed and anything moved.
    pub(super) fn due(&mut self, now: Instant, stats: &ShardStats) -> Option<String> {
        if now < self.next {
            return None;
        }
        let counts = junk_counters(stats);
        let mut parts = Vec::new();
        for ((name, n), seen) in counts.iter().zip(self.seen.iter_mut()) {
            let delta = n.saturating_sub(*seen);
            *seen = *n;
            if delta > 0 {
                parts.push(format!("{name}={delta}"));
            }
        }
        if parts.is_empty() {
            return None;
        }
        self.next = now + JUNK_LOG_INTERVAL;
        Some(parts.join(" "))
    }
}

impl Endpoint {
    /// Something was dropped (or a Retry sent): warn if the rate limit allows.
    pub(super) fn note_junk(&mut self, now: Instant) {
        if let Some(line) = self.junk.due(now, &self.cfg.stats) {
            tracing::warn!(
                shard = self.cfg.index,
                "datagrams dropped unanswered or answered with a Retry since the last report: {line}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn a_turn_tally_settles_net_into_the_shared_gauges_and_budget() {
        let (s, budget) = (
            ShardStats::default(),
            super::super::pool::MemoryBudget::default(),
        );
        budget.update(0, 1_000); // another shard holds 1000 bytes
        let mut t = Tally::default();
        for _ in 0..3 {
            t.message_in();
            t.queued(100);
            t.held(0, 100);
        }
        t.unmessage_in(); // one of them found no room and is routed again later
        t.unqueued(100); // one sealed
        t.held(100, 0);
        assert_eq!(t.held_pending(), 200);
        assert_eq!(
            get(&s.messages_in),
            0,
            "nothing shared moves before the turn ends"
        );
        assert_eq!(budget.used(), 1_000);
        t.sealed(1);
        t.sealed(0); // a batch of error records only
        assert_eq!(get(&s.batches_out), 0);
        t.settle(&s, &budget);
        assert_eq!(get(&s.messages_in), 2);
        assert_eq!((get(&s.batches_out), get(&s.messages_out)), (2, 1));
        assert_eq!(get(&s.queued_bytes), 200);
        assert_eq!(get(&s.buffered_bytes), 200);
        assert_eq!(budget.used(), 1_200);
        assert_eq!(t.held_pending(), 0, "settling starts a new turn");
        // A turn that frees more than it adds lowers both, never below zero for the gauge.
        t.unqueued(200);
        t.held(200, 0);
        t.held(50, 0);
        t.settle(&s, &budget);
        assert_eq!(get(&s.queued_bytes), 0);
        assert_eq!(get(&s.buffered_bytes), 0);
        assert_eq!(budget.used(), 950);
        // A message counted in and taken back within the turn leaves the count alone.
        t.unmessage_in();
        t.message_in();
        t.settle(&s, &budget);
        assert_eq!(get(&s.messages_in), 2);
        assert_eq!((get(&s.batches_out), get(&s.messages_out)), (2, 1));
    }

    #[test]
    fn the_junk_warning_is_rate_limited_and_names_what_moved() {
        let s = ShardStats::default();
        let t0 = Instant::now();
        let mut log = JunkLog::new(t0);
        assert_eq!(log.due(t0, &s), None, "nothing dropped yet");
        inc(&s.rejected_initials);
        assert_eq!(log.due(t0, &s).as_deref(), Some("short_initial=1"));
        for _ in 0..500 {
            inc(&s.rejected_initials);
            inc(&s.invalid_tokens);
        }
        // Within the interval: silent, however much arrives.
        assert_eq!(log.due(t0 + Duration::from_secs(9), &s), None);
        inc(&s.unparsable_datagrams);
        assert_eq!(
            log.due(t0 + JUNK_LOG_INTERVAL, &s).as_deref(),
            Some("unparsable=1 short_initial=500 invalid_token=500")
        );
        // Quiet afterwards: no warning even when the interval has passed.
        assert_eq!(log.due(t0 + 3 * JUNK_LOG_INTERVAL, &s), None);
    }
}
