//! The shard's endpoint, sans I/O: every QUIC session whose connection IDs name this shard,
//! their batch queues, the connection pool, routing between peers and shards, drain, and
//! the shard's counters, driven entirely by its caller.
//!
//! Input comes in through `handle_*` calls, each given the current time:
//! [`Endpoint::handle_datagram`], [`Endpoint::handle_command`], [`Endpoint::handle_hop`]
//! and [`Endpoint::handle_timeout`]. Output is collected with `poll_*` calls:
//! [`Endpoint::poll_transmit`] (datagrams to send), [`Endpoint::poll_hop`] (records for
//! other shards) and [`Endpoint::poll_timeout`] (when to call `handle_timeout` next).
//! The endpoint never reads a clock and never touches a socket; its randomness (connection
//! IDs, reset tokens, backoff jitter) comes from a seeded generator, so tests drive two
//! endpoints in memory with simulated time. (quiche keeps its own loss-recovery and idle
//! timers on the real clock; the endpoint's pool, TTL, keep-alive, stall, backoff, batch
//! and drain timers all run on the time passed in.)
//!
//! The glommio driver ([`crate::shard`]) owns the socket and the cross-shard channels
//! and does nothing else.
//!
//! Modules, by responsibility: `conns` (connections and their CID and peer indexes),
//! `service` (one connection's turn: read, route, seal, send), `routing` (where a record
//! goes), `pool` (dialed peers, backoff, connection cap, keep-alive, TTL, stall),
//! `drain`, `timers` (deadlines ordered by time) and `stats`.
//!
//! ```
//! use shards::endpoint::{Endpoint, ShardConfig};
//! # fn drive(ep: &mut Endpoint, socket: &std::net::UdpSocket) -> std::io::Result<()> {
//! let now = std::time::Instant::now();
//! let mut buf = [0u8; 65_535];
//! let (n, from) = socket.recv_from(&mut buf)?;
//! ep.handle_datagram(now, from, &mut buf[..n]);
//! while let Some(t) = ep.poll_transmit() {
//!     socket.send_to(&t.data, t.to)?;
//!     ep.recycle(t.data);
//! }
//! // ... sleep until ep.poll_timeout(), then ep.handle_timeout(now)
//! # Ok(()) }
//! ```

mod conns;
mod drain;
mod interface;
mod pool;
pub mod retry;
mod routing;
mod service;
mod stats;
mod timers;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

/// The endpoint's hash maps: foldhash, randomly seeded (see the workspace Cargo.toml).
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::cid::{self, CID_LEN};
use crate::hist::Histograms;
use crate::session;
use crate::wire::{ErrorCode, Message, PayloadPool, PeerId, Record};

use conns::{ConnIndex, ConnKey};
use routing::{Origin, RouteOutcome, Router};
use stats::inc;
use timers::{TimerKey, Timers};

pub use interface::{
    App, Command, Delivery, Hop, PeerActivity, PeerDirectory, ShardConfig, ShardMsg,
};
pub use pool::{
    ConnectionSlots, DEFAULT_FRAME_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES,
    DEFAULT_RETRY_THRESHOLD, DEFAULT_STALL_TIMEOUT, MemoryBudget, PoolConfig,
};
pub use stats::{JUNK_LOG_INTERVAL, ShardStats};

/// How often a shard that stopped reading at the memory limit looks whether the node is
/// below it again (the memory may be held by other shards, which do not wake it).
const MEMORY_RECHECK: Duration = Duration::from_millis(5);
/// Frames opened per session per turn, for fairness between connections.
const FRAMES_PER_TURN: usize = 16;
/// Sealed bytes a session may hold beyond what QUIC accepted before the shard stops sealing.
const MAX_SESSION_BACKLOG: usize = 256 * 1024;
/// Records from the app or other shards held while their destination is full, before the
/// shard stops taking more from the mesh.
const WAITING_LIMIT: usize = 1024;
/// How often a record blocked on the embedding program's full delivery channel is retried
/// (that channel cannot say when it has room). Records blocked on a peer's flow control or
/// on the mesh are retried when room appears, never on a timer.
const APP_RETRY: Duration = Duration::from_millis(1);
/// How often a draining endpoint (and its driver, for new commands) looks at its sessions
/// again.
pub const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Smallest datagram that may carry a client's first Initial (RFC 9000 14.1).
pub(crate) const MIN_INITIAL_DATAGRAM: usize = 1200;
/// Shortest destination connection ID of a client's first Initial (RFC 9000 7.2).
pub(crate) const MIN_INITIAL_DCID: usize = 8;
/// Spare datagram buffers kept for reuse.
const SPARE_BUFFERS: usize = 256;
/// Payload buffers of sent messages kept for the next decoded ones (a full turn's worth).
const SPARE_PAYLOADS: usize = 1024;
/// Largest payload buffer kept, so the spares hold at most 4 MiB per shard.
const SPARE_PAYLOAD_BYTES: usize = 4096;
/// Flush rounds at the end of a turn: records routed by senders that room woke up are
/// flushed in the next round.
const END_TURN_ROUNDS: usize = 4;

/// What the endpoint does with a datagram whose destination CID names none of its
/// connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownCid {
    /// Not an Initial: dropped, and counted as misrouted when its CID names another shard.
    Stray {
        /// The DCID's routing byte names another shard (or the DCID is empty).
        misrouted: bool,
    },
    /// An Initial smaller than a client's first datagram or with too short a DCID: dropped
    /// without an answer or state.
    TooSmall,
    /// An Initial of a QUIC version not spoken here: answered with Version Negotiation.
    UnsupportedVersion,
    /// A new connection attempt.
    Accept,
}

/// Screens a datagram for an unknown CID before any state is made for it; pure, so the
/// rules can be checked on arbitrary datagrams.
pub(crate) fn screen_unknown(
    hdr: &quiche::Header<'_>,
    datagram_len: usize,
    shards: usize,
    index: usize,
) -> UnknownCid {
    if hdr.ty != quiche::Type::Initial {
        return UnknownCid::Stray {
            misrouted: cid::shard_of(hdr.dcid.as_ref(), shards) != Some(index),
        };
    }
    // RFC 9000 14.1 and 7.2: a client's first datagram is at least 1200 bytes and its DCID
    // at least 8. Anything smaller gets no answer and no state, so small spoofed datagrams
    // cannot be amplified or fill the table.
    if datagram_len < MIN_INITIAL_DATAGRAM || hdr.dcid.as_ref().len() < MIN_INITIAL_DCID {
        return UnknownCid::TooSmall;
    }
    if !quiche::version_is_supported(hdr.version) {
        return UnknownCid::UnsupportedVersion;
    }
    UnknownCid::Accept
}

/// Where the answer to a dial goes.
pub type DialReply = flume::Sender<Result<PeerId, String>>;

/// A datagram the endpoint wants sent.
#[derive(Debug)]
pub struct Transmit {
    /// Destination address.
    pub to: SocketAddr,
    /// The datagram; hand the buffer back with [`Endpoint::recycle`] once sent.
    pub data: Vec<u8>,
    /// Which connection sent it ([`STATELESS_FLOW`] for a Retry or version negotiation).
    /// Only datagrams of one flow may share a GSO send: a peer with several shards steers a
    /// whole GSO train (and a GRO run) by its first datagram's connection ID, so packets of
    /// two connections to one address in one train would reach one shard and be dropped
    /// there as misrouted.
    pub flow: u64,
}

/// [`Transmit::flow`] of datagrams that belong to no connection.
pub const STATELESS_FLOW: u64 = u64::MAX;

/// Why an endpoint could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The TLS certificate or key could not be loaded into QUIC.
    #[error("TLS certificate or key not usable: {0}")]
    Tls(String),
    /// The QUIC client configuration could not be built.
    #[error("QUIC client configuration: {0}")]
    Quic(String),
    /// A policy in the configuration breaks a rule.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// One shard's QUIC endpoint and everything it routes, without I/O (see the module docs).
pub struct Endpoint {
    cfg: ShardConfig,
    self_id: PeerId,
    local_addr: SocketAddr,
    server_cfg: Option<quiche::Config>,
    /// Mints and checks the address-validation tokens of Retry packets.
    retry: retry::RetryTokens,
    /// Rate-limits the warning about dropped datagrams during floods.
    junk: stats::JunkLog,
    /// Connections accepted without address validation in the current second (start, count):
    /// junk Initials fail and are freed at once, so the handshakes in progress alone would
    /// not show a flood that costs a TLS setup each.
    unvalidated: (Instant, usize),
    /// Reading stopped because the node reached its memory limit: recheck soon.
    memory_blocked: bool,
    client_cfg: quiche::Config,
    conns: ConnIndex,
    router: Router,
    pool: pool::Pool,
    timers: Timers<TimerKey>,
    outbox: VecDeque<Transmit>,
    spare: Vec<Vec<u8>>,
    /// Conns with queued records that may be due at the end of this turn.
    dirty: Vec<ConnKey>,
    /// Records for other shards not yet taken by the driver.
    hop_backlog: VecDeque<(usize, ShardMsg)>,
    /// The hop backlog was at its limit when the driver last took from it: senders it
    /// paused are retried once the driver says the record went out.
    hop_unblocked: bool,
    /// Records from the local app or other shards waiting for a full destination.
    waiting: VecDeque<(Origin, PeerId, Record, Instant)>,
    draining: Option<Instant>,
    /// Connections that still have readable data after their per-turn frame budget.
    resume: Vec<ConnKey>,
    /// Connections that stopped reading for lack of room somewhere.
    blocked: Vec<ConnKey>,
    /// Connections whose handshakes are in progress (bounded by `PoolConfig::max_handshakes`).
    handshaking: usize,
    /// Connections whose session closed this turn, removed at its end.
    closed: Vec<ConnKey>,
    /// A record waits for the embedding program's delivery channel (retried on a timer).
    app_blocked: bool,
    /// Room may have appeared somewhere other than the connection a datagram is for (a
    /// connection closed, a dialed peer's waiting messages moved): retry what is blocked.
    room_freed: bool,
    /// `waiting` shrank: the driver may take commands and hops again.
    room_signal: bool,
    decode_buf: Vec<Record>,
    /// Payload buffers of sealed messages, reused for the payloads of messages decoded
    /// next (bounded: [`SPARE_PAYLOADS`] of at most [`SPARE_PAYLOAD_BYTES`], 4 MiB).
    payloads: PayloadPool,
    /// Shard-local histograms, added into `cfg.histograms` every publish period.
    hist: Histograms,
    /// Per-message counts and gauges of this turn, added into the shared ones at its end.
    tally: stats::Tally,
    last_publish: Instant,
    /// Peer traffic changed since the last publish.
    activity_dirty: bool,
    rng: StdRng,
    /// A monotonic instant and the wall-clock time it corresponds to, for the wall-clock
    /// times published to the peer index.
    epoch: (Instant, SystemTime),
    /// The time of the latest `handle_*` call.
    last_now: Instant,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("shard", &self.cfg.index)
            .field("local_addr", &self.local_addr)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Endpoint {
    /// An endpoint for shard `cfg.index` reachable at `local_addr`. `seed` feeds every
    /// random choice; `now` and `wall` are the same moment on the monotonic and the wall
    /// clock.
    pub fn new(
        cfg: ShardConfig,
        local_addr: SocketAddr,
        seed: u64,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Endpoint, EndpointError> {
        crate::config::validate_shards(cfg.shards)?;
        cfg.batch.validate()?;
        cfg.transport.validate()?;
        cfg.pool.validate_for(&cfg.transport)?;
        crate::config::validate_backoff("reconnect", &cfg.reconnect)?;
        crate::config::validate_max_message_size(cfg.max_message_size)?;
        crate::config::validate_queue_capacity(cfg.queue_capacity)?;
        let server_cfg = if cfg.accept {
            Some(
                session::server_config(&cfg.transport, &cfg.cert_pem, &cfg.key_pem)
                    .map_err(|e| EndpointError::Tls(e.to_string()))?,
            )
        } else {
            None
        };
        let client_cfg = session::client_config(&cfg.transport)
            .map_err(|e| EndpointError::Quic(e.to_string()))?;
        let self_id = cfg.identity.peer_id();
        let mut rng = StdRng::seed_from_u64(seed);
        let retry = retry::RetryTokens::new(&mut rng, now);
        Ok(Endpoint {
            retry,
            junk: stats::JunkLog::new(now),
            unvalidated: (now, 0),
            memory_blocked: false,
            router: Router::new(self_id, cfg.index),
            pool: pool::Pool::new(cfg.reconnect),
            self_id,
            local_addr,
            server_cfg,
            client_cfg,
            conns: ConnIndex::default(),
            timers: Timers::default(),
            outbox: VecDeque::new(),
            spare: Vec::new(),
            dirty: Vec::new(),
            hop_backlog: VecDeque::new(),
            hop_unblocked: false,
            waiting: VecDeque::new(),
            draining: None,
            resume: Vec::new(),
            blocked: Vec::new(),
            closed: Vec::new(),
            handshaking: 0,
            app_blocked: false,
            room_freed: false,
            room_signal: false,
            decode_buf: Vec::new(),
            payloads: PayloadPool::new(SPARE_PAYLOADS, SPARE_PAYLOAD_BYTES),
            hist: Histograms::new(),
            tally: stats::Tally::default(),
            last_publish: now,
            activity_dirty: false,
            rng,
            epoch: (now, wall),
            last_now: now,
            cfg,
        })
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.cfg.stats
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.cfg.index
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.self_id
    }

    /// Connections held (in any state).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The drain deadline, once a shutdown started.
    pub fn draining(&self) -> Option<Instant> {
        self.draining
    }

    /// Whether the driver should take more commands: nothing waits for room (or the node
    /// is draining, when commands are refused anyway).
    pub fn accepts_commands(&self) -> bool {
        self.waiting.is_empty() || self.draining.is_some()
    }

    /// Whether the driver should take more records from other shards.
    pub fn accepts_hops(&self) -> bool {
        self.waiting.len() < WAITING_LIMIT
    }

    /// Whether records for other shards wait for [`Endpoint::poll_hop`].
    pub fn hops_pending(&self) -> bool {
        !self.hop_backlog.is_empty()
    }

    /// Whether room appeared for commands and hops since the last call.
    pub fn take_room_signal(&mut self) -> bool {
        std::mem::take(&mut self.room_signal)
    }

    /// Records one sample of the time a datagram spent in the kernel's receive queue.
    pub fn record_receive_delay(&mut self, delay: Duration) {
        self.hist
            .receive_delay_ns
            .saturating_record(delay.as_nanos() as u64);
    }

    /// The wall-clock time of `now`.
    fn wall_clock(&self, now: Instant) -> SystemTime {
        let (t0, w0) = self.epoch;
        match now.checked_duration_since(t0) {
            Some(d) => w0 + d,
            None => w0.checked_sub(t0 - now).unwrap_or(w0),
        }
    }

    /// A UDP datagram arrived from `from`. `pkt` is decrypted in place.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, pkt: &mut [u8]) {
        self.receive(now, from, pkt);
        self.end_turn(now);
        self.reap(now);
    }

    /// Datagrams that arrived together (one receive burst): each is handled as by
    /// [`Endpoint::handle_datagram`], but due queues are sealed once, after the last, so
    /// the replies and relays a burst causes share batches and datagrams.
    pub fn handle_datagrams<'a>(
        &mut self,
        now: Instant,
        datagrams: impl IntoIterator<Item = (SocketAddr, &'a mut [u8])>,
    ) {
        for (from, pkt) in datagrams {
            self.receive(now, from, pkt);
        }
        self.end_turn(now);
        self.reap(now);
    }

    fn receive(&mut self, now: Instant, from: SocketAddr, pkt: &mut [u8]) {
        self.last_now = now;
        inc(&self.stats().datagrams_in);
        let hdr = match quiche::Header::from_slice(pkt, CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                inc(&self.stats().unparsable_datagrams);
                self.note_junk(now);
                return;
            }
        };
        let key = match self.conns.by_cid(hdr.dcid.as_ref()) {
            Some(k) => k,
            None => match screen_unknown(&hdr, pkt.len(), self.cfg.shards, self.cfg.index) {
                UnknownCid::Stray { misrouted } => {
                    if misrouted {
                        inc(&self.stats().misrouted);
                    }
                    inc(&self.stats().unknown_datagrams);
                    self.note_junk(now);
                    return;
                }
                UnknownCid::TooSmall => {
                    inc(&self.stats().rejected_initials);
                    self.note_junk(now);
                    return;
                }
                UnknownCid::UnsupportedVersion => {
                    inc(&self.stats().rejected_initials);
                    self.note_junk(now);
                    let mut out = self.spare.pop().unwrap_or_default();
                    out.resize(1500, 0);
                    if let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                        out.truncate(n);
                        self.outbox.push_back(Transmit {
                            to: from,
                            data: out,
                            flow: STATELESS_FLOW,
                        });
                    }
                    return;
                }
                UnknownCid::Accept => {
                    let dcid = hdr.dcid.as_ref().to_vec();
                    let token = hdr.token.as_deref().unwrap_or_default();
                    let odcid = if !token.is_empty() {
                        // The peer echoes a Retry token: it receives at `from`.
                        match self.retry.validate(now, token, from, &dcid) {
                            Ok(odcid) => {
                                inc(&self.stats().address_validated);
                                Some(odcid)
                            }
                            Err(e) => {
                                inc(&self.stats().invalid_tokens);
                                tracing::trace!("Initial from {from} dropped: {e}");
                                self.note_junk(now);
                                return;
                            }
                        }
                    } else if self.draining.is_none()
                        && self.server_cfg.is_some()
                        && self.retry_pressure(now)
                    {
                        self.send_retry(now, from, &hdr);
                        self.note_junk(now);
                        return;
                    } else {
                        None
                    };
                    if odcid.is_none() {
                        self.unvalidated.1 += 1;
                    }
                    match self.accept(&dcid, odcid.as_deref(), from, now) {
                        Some(k) => k,
                        None => return,
                    }
                }
            },
        };
        let local = self.local_addr;
        if let Some(c) = self.conns.get_mut(key) {
            // Credit granted by this turn's ACKs is judged at the end of the turn.
            if c.turn_accepted.is_none() {
                c.turn_accepted = Some(c.session.accepted_bytes());
            }
            c.session.recv(pkt, from, local);
        }
        self.service(key, now);
        // Sealing and the send loop wait for the end of the turn: the replies to every
        // datagram of a burst share batches and packets, and one ACK covers them all.
        self.mark_dirty(key);
    }

    /// Whether a new peer must validate its address first: at least `retry_threshold`
    /// handshakes are in progress, or were started without validation in the last second.
    fn retry_pressure(&mut self, now: Instant) -> bool {
        let (start, count) = &mut self.unvalidated;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        let threshold = self.cfg.pool.retry_threshold;
        self.handshaking >= threshold || *count >= threshold
    }

    /// Answers a new peer's Initial with a Retry naming a fresh connection ID of this shard
    /// and a token bound to `from` (RFC 9000 8.1.2). No state is kept.
    fn send_retry(&mut self, now: Instant, from: SocketAddr, hdr: &quiche::Header<'_>) {
        let new_cid = cid::new_cid(self.cfg.index as u8, &mut self.rng);
        let token = self.retry.mint(now, from, hdr.dcid.as_ref(), &new_cid);
        let new_cid = quiche::ConnectionId::from_ref(&new_cid);
        let mut out = self.spare.pop().unwrap_or_default();
        out.resize(1500, 0);
        match quiche::retry(
            &hdr.scid,
            &hdr.dcid,
            &new_cid,
            &token,
            hdr.version,
            &mut out,
        ) {
            Ok(n) => {
                out.truncate(n);
                inc(&self.stats().retries_sent);
                self.outbox.push_back(Transmit {
                    to: from,
                    data: out,
                    flow: STATELESS_FLOW,
                });
            }
            Err(e) => {
                tracing::debug!("no Retry for {from}: {e}");
                self.spare.push(out);
            }
        }
    }

    /// A command from the embedding program or the engine.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.last_now = now;
        match cmd {
            Command::Dial { addr, reply } => self.dial(addr, reply, now),
            Command::Send { dst, seq, payload } => {
                let src = self.self_id;
                let r = Record::Message(Message {
                    dst,
                    src,
                    seq,
                    payload,
                });
                // Behind what already waits for room, in order (the driver takes commands
                // while records wait only when a shutdown makes it take every one).
                if !self.waiting.is_empty() {
                    self.waiting.push_back((Origin::Local, dst, r, now));
                } else if let RouteOutcome::Blocked(r) =
                    self.route_to_peer(Origin::Local, dst, r, now, now)
                {
                    self.waiting.push_back((Origin::Local, dst, r, now));
                }
            }
            Command::Shutdown { deadline } => self.begin_drain(deadline, now),
        }
        self.end_turn(now);
        self.reap(now);
    }

    /// A record or request from another shard.
    pub fn handle_hop(&mut self, now: Instant, msg: ShardMsg) {
        self.last_now = now;
        match msg {
            ShardMsg::Deliver(hop) => {
                if !self.waiting.is_empty() {
                    self.waiting
                        .push_back((Origin::Remote, hop.to, hop.record, hop.received));
                } else if let RouteOutcome::Blocked(r) =
                    self.route_to_peer(Origin::Remote, hop.to, hop.record, hop.received, now)
                {
                    self.waiting
                        .push_back((Origin::Remote, hop.to, r, hop.received));
                }
            }
            ShardMsg::Finish(conn) => self.finish_conn(conn, now),
        }
        self.end_turn(now);
        self.reap(now);
    }

    /// A record for another shard that will never be routed there: [`Endpoint::poll_hop`]
    /// found that shard stopped (drain), or this shard stopped before taking it from
    /// its channel. It is counted as dropped (shutting down) and its sender is told.
    pub fn handle_hop_failed(&mut self, now: Instant, msg: ShardMsg) {
        self.last_now = now;
        if let ShardMsg::Deliver(h) = msg {
            let origin = self.origin_of(&h.record);
            self.undeliverable(origin, h.record, ErrorCode::ShuttingDown, now);
        }
        self.end_turn(now);
    }

    /// A record from [`Endpoint::poll_hop`] was handed to its shard: if the backlog had
    /// been full, the senders it paused are retried.
    pub fn handle_hop_sent(&mut self, now: Instant) {
        if std::mem::take(&mut self.hop_unblocked) {
            self.last_now = now;
            self.retry_blocked(now);
            self.end_turn(now);
            self.reap(now);
        }
    }

    /// Time passed: runs every deadline due at `now` (QUIC timers, batch timeouts,
    /// keep-alive, TTL, stall detection, reconnection backoff, publication).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        self.note_junk(now);
        // Another shard may have freed what kept the node at its memory limit.
        if self.memory_blocked && !self.memory_over() {
            self.memory_blocked = false;
            self.room_freed = true;
        }
        let mut keys: Vec<ConnKey> = std::mem::take(&mut self.resume);
        for k in &keys {
            if let Some(c) = self.conns.get_mut(*k) {
                c.resuming = false;
            }
        }
        let mut redials = Vec::new();
        for k in self.timers.expired(now) {
            match k {
                TimerKey::Conn(c) => keys.push(c),
                TimerKey::Redial(addr) => redials.push(addr),
            }
        }
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            if let Some(c) = self.conns.get_mut(k)
                && c.session.timeout_at().is_some_and(|t| t <= now)
            {
                c.session.on_timeout();
            }
            self.pool_work(k, now);
            self.service(k, now);
            self.flush_queue(k, now, false);
            self.drive(k, now);
        }
        self.retry_blocked(now);
        for addr in redials {
            self.redial_if_due(addr, now);
        }
        self.end_turn(now);
        self.reap(now);
        if self.publish_deadline().is_some_and(|t| t <= now) {
            self.publish(now);
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        crate::batch::pop_front_rewound(&mut self.outbox)
    }

    /// Hands back a sent datagram's buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        // Kept at its length, bytes and all: every user resizes a spare buffer to the size
        // it writes into and truncates it to what it wrote, so only the bytes a resize adds
        // past the old length are zeroed (not the whole buffer once per packet).
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(buf);
        }
    }

    /// The next record for another shard, with that shard's index. Report the outcome with
    /// [`Endpoint::handle_hop_sent`] or [`Endpoint::handle_hop_failed`].
    #[must_use]
    pub fn poll_hop(&mut self) -> Option<(usize, ShardMsg)> {
        let full = self.hop_backlog.len() >= routing::HOP_BACKLOG_LIMIT;
        let next = self.hop_backlog.pop_front();
        if full && next.is_some() {
            self.hop_unblocked = true;
        }
        next
    }

    /// When [`Endpoint::handle_timeout`] is next due (`None`: only input can make work).
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // (A reconnection deadline passing during a drain fires once and is not re-armed.)
        let mut next = self.timers.next();
        let consider = |next: &mut Option<Instant>, t: Option<Instant>| {
            if let Some(t) = t {
                *next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if !self.resume.is_empty() {
            consider(&mut next, Some(self.last_now));
        }
        if self.app_blocked {
            consider(&mut next, Some(self.last_now + APP_RETRY));
        }
        if self.draining.is_some() {
            consider(&mut next, Some(self.last_now + DRAIN_POLL));
        }
        if self.memory_blocked {
            consider(&mut next, Some(self.last_now + MEMORY_RECHECK));
        }
        consider(&mut next, self.publish_deadline());
        next
    }

    /// Routes what waited for room: records from the application and other shards, then
    /// the connections that stopped reading. Called when room may have appeared (a
    /// datagram, the hop backlog draining, a connection closing, a tick).
    fn retry_blocked(&mut self, now: Instant) {
        self.app_blocked = false;
        self.room_freed = false;
        self.retry_waiting(now);
        let keys = std::mem::take(&mut self.blocked);
        for k in keys {
            if let Some(c) = self.conns.get_mut(k) {
                c.blocked = false;
                c.resumed_at = Some(now);
            } else {
                continue;
            }
            self.service(k, now);
            self.flush_queue(k, now, false);
            self.drive(k, now);
        }
    }

    /// Flushes queues that became due during this turn (batch timeout 0, or full).
    ///
    /// Connections that received datagrams this turn are driven here too (ACKs, handshake
    /// replies). If a peer's ACKs granted credit (QUIC took more of our bytes), room
    /// appeared for the senders that stopped reading because that connection was full:
    /// they are serviced, and what they queued is flushed in a further round.
    fn end_turn(&mut self, now: Instant) {
        self.end_turn_rounds(now);
        self.tally.settle(&self.cfg.stats, &self.cfg.memory);
    }

    /// The rounds of [`Endpoint::end_turn`].
    fn end_turn_rounds(&mut self, now: Instant) {
        for round in 0..END_TURN_ROUNDS {
            let dirty = std::mem::take(&mut self.dirty);
            if dirty.is_empty() {
                return;
            }
            let mut credit = false;
            for k in dirty {
                let before = match self.conns.get_mut(k) {
                    Some(c) => {
                        c.dirty = false;
                        c.turn_accepted.take()
                    }
                    None => continue,
                };
                self.flush_queue(k, now, false);
                self.drive(k, now);
                credit |= before.is_some_and(|b| {
                    self.conns
                        .get(k)
                        .is_some_and(|c| c.session.accepted_bytes() > b)
                });
            }
            // Flushing and driving mark nothing dirty, so after the last round, which
            // retries no one, nothing queued waits for a timer. Credit is only learned in
            // the first round (every connection that received is dirty there); later rounds
            // retry for `room_freed`, which stays set for the next turn if the last cannot.
            let last = round + 1 == END_TURN_ROUNDS;
            if !last
                && (credit || self.room_freed)
                && (!self.blocked.is_empty() || !self.waiting.is_empty())
            {
                self.retry_blocked(now);
            }
        }
    }
}
