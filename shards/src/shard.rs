//! The shard: one glommio executor pinned to one core, owning one UDP socket of the
//! SO_REUSEPORT group, the QUIC sessions whose connection IDs name it, their batch queues,
//! and its end of the cross-shard mesh.
//!
//! Shard-local state lives in a `RefCell` inside an `Rc`: nothing here is shared with other
//! threads except atomic counters ([`ShardStats`]), the peer directory (consulted on
//! connect, disconnect and on a cache miss) and the channels.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::Senders;
use glommio::net::UdpSocket;
use rand::RngCore;

use crate::batch::{BatchPolicy, BatchQueue};
use crate::cid::{self, CID_LEN};
use crate::hist::{Histograms, SharedHistograms};
use crate::identity::Identity;
use crate::lifecycle::{BackoffPolicy, ConnState, Event as LifeEvent, Lifecycle};
use crate::session::{self, Session, TransportConfig};
use crate::sockstat::{Notify, kernel_queue_delay, socket_inode};
use crate::wire::{ErrorCode, ErrorRecord, Message, PeerId, Record, close_code};

/// Largest UDP datagram the shard reads.
const MAX_DATAGRAM: usize = 65_535;
/// Frames opened per session per service call, for fairness between connections.
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
/// Pause after a failed UDP receive before trying again.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(1);
/// One datagram in this many has its time in the kernel's receive queue measured
/// (SIOCGSTAMPNS costs a system call).
const RX_DELAY_SAMPLE: u64 = 64;

/// What the node does with messages addressed to itself.
#[derive(Clone, Debug)]
pub enum App {
    /// Send each message back to its sender.
    Echo,
    /// Count and discard.
    Sink,
    /// Hand each message to the embedding program.
    Channel(flume::Sender<Delivery>),
}

/// Something the engine hands to the embedding program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A message addressed to this node.
    Message {
        /// The authenticated sender.
        from: PeerId,
        /// The sender's sequence number.
        seq: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A message this node sent could not be delivered.
    Error(ErrorRecord),
}

/// Traffic of one connection since it was established, published by its shard now and
/// then (never per message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerActivity {
    /// Messages received from the peer.
    pub messages_in: u64,
    /// Messages sealed towards the peer.
    pub messages_out: u64,
    /// Sealed-frame bytes received from the peer.
    pub bytes_in: u64,
    /// Sealed-frame bytes queued towards the peer.
    pub bytes_out: u64,
    /// When the last message moved in either direction.
    pub last_activity: Option<std::time::SystemTime>,
    /// The peer's current address.
    pub addr: Option<SocketAddr>,
}

/// The cluster-wide peer index as the shards see it. The engine implements it over a
/// concurrent map; shards consult it on connect, disconnect, cache misses and a periodic
/// publish, never per message.
pub trait PeerDirectory: Send + Sync + 'static {
    /// A peer finished its handshake on `shard`; `conn` is unique within that shard.
    fn connected(&self, peer: PeerId, shard: usize, conn: u64, addr: SocketAddr, outbound: bool);
    /// Periodic traffic report for a connected peer.
    fn activity(&self, peer: PeerId, shard: usize, conn: u64, activity: PeerActivity);
    /// A dialed peer's lifecycle state changed. Dialed peers stay in the index while
    /// disconnected (so messages for them reach the shard that re-dials them).
    fn state(&self, peer: PeerId, shard: usize, state: ConnState);
    /// The connection `conn` on `shard` to `peer` ended.
    fn disconnected(&self, peer: PeerId, shard: usize, conn: u64);
    /// Which shard holds a connection to `peer`.
    fn shard_of(&self, peer: &PeerId) -> Option<usize>;
    /// The shard, connection key and direction (true = this node dialed) currently
    /// registered for `peer`, if connected.
    fn owner(&self, peer: &PeerId) -> Option<(usize, u64, bool)>;
    /// Bumped on every disconnect so shard-local caches know when to re-check.
    fn generation(&self) -> u64;
}

/// Counters a shard keeps without locks; the engine sums them across shards.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// UDP datagrams received.
    pub datagrams_in: AtomicU64,
    /// UDP datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams whose connection ID names another shard (steering failure).
    pub misrouted: AtomicU64,
    /// Datagrams for no known connection that were not a new Initial.
    pub unknown_datagrams: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections dialed.
    pub dialed: AtomicU64,
    /// Connections currently held (gauge).
    pub connections: AtomicU64,
    /// Connections closed for any reason.
    pub closed: AtomicU64,
    /// Connections that failed the Noise handshake.
    pub handshake_failures: AtomicU64,
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
    /// ([`close_code::STALLED`]) with these messages still queued.
    pub dropped_stalled: AtomicU64,
    /// Connections closed because the peer made no flow-control progress for the stall
    /// timeout while data waited for it.
    pub stalled_closed: AtomicU64,
    /// Inode of this shard's UDP socket (0 = unknown), so the engine can read the kernel's
    /// receive-queue drops for it from `/proc/net/udp`.
    pub socket_inode: AtomicU64,
    /// Bytes held in batch queues, not yet sealed (gauge).
    pub queued_bytes: AtomicU64,
    /// Connections refused (connection limit, draining).
    pub refused: AtomicU64,
    /// Connections closed by the pool TTL.
    pub ttl_closed: AtomicU64,
    /// Lifecycle transitions of dialed peers into each state, indexed like `ConnState::ALL`.
    pub transitions: [AtomicU64; 5],
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Commands from the embedding program or the engine to one shard.
#[derive(Debug)]
pub enum Command {
    /// Dial a peer node; the reply carries its authenticated peer id.
    Dial {
        /// Where to dial.
        addr: SocketAddr,
        /// Receives the outcome.
        reply: flume::Sender<Result<PeerId, String>>,
    },
    /// Send a message from this node's application to `dst` (held on this shard).
    Send {
        /// Destination peer.
        dst: PeerId,
        /// Sender's sequence number.
        seq: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Drain: stop accepting, flush every queue, finish every session, and stop once all
    /// sessions are closed or `deadline` passes.
    Shutdown {
        /// When to give up waiting for peers.
        deadline: Instant,
    },
}

/// A record crossing from one shard to another.
#[derive(Debug)]
pub struct Hop {
    /// The peer that should receive `record`.
    pub to: PeerId,
    /// The record.
    pub record: Record,
    /// When the record reached this node.
    pub received: Instant,
}

/// What one shard sends another over the mesh.
#[derive(Debug)]
pub enum ShardMsg {
    /// A record for a peer held by the receiving shard.
    Deliver(Hop),
    /// Finish (gracefully close) the receiving shard's connection with this key: it lost
    /// to another connection with the same peer (simultaneous dials).
    Finish(u64),
}

/// What a queued record is, for the counters and histograms kept when it is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A message relayed for another peer (relay-delay histogram).
    Relayed,
    /// The echo handler's reply: the message counts as delivered once this is sealed.
    EchoReply,
    /// Anything else (the local application's messages, ERROR records).
    Other,
}

/// A record in a destination's batch queue.
#[derive(Debug)]
struct Queued {
    record: Record,
    /// When it reached this node.
    received: Instant,
    kind: Kind,
}

/// Everything a shard needs to run.
pub struct ShardConfig {
    /// This shard's index (also the first byte of every connection ID it issues).
    pub index: usize,
    /// How many shards the node runs.
    pub shards: usize,
    /// The node's static identity.
    pub identity: Arc<Identity>,
    /// PEM files of the TLS certificate and key (not used for peer authentication).
    pub cert_pem: String,
    /// See `cert_pem`.
    pub key_pem: String,
    /// QUIC transport tuning.
    pub transport: TransportConfig,
    /// When batches flush.
    pub batch: BatchPolicy,
    /// Largest accepted payload.
    pub max_message_size: usize,
    /// Bytes a destination may have queued before senders feeding it are paused.
    pub queue_capacity: usize,
    /// What to do with messages for this node.
    pub app: App,
    /// Whether to accept incoming connections.
    pub accept: bool,
    /// The cluster-wide peer index.
    pub directory: Arc<dyn PeerDirectory>,
    /// This shard's counters.
    pub stats: Arc<ShardStats>,
    /// Where this shard publishes its histograms.
    pub histograms: SharedHistograms,
    /// Connection pool policy: TTL, keep-alive, connection cap.
    pub pool: PoolConfig,
    /// Connection slots shared by every shard of the node (for the cap).
    pub slots: Arc<ConnectionSlots>,
    /// Reconnection schedule for dialed peers.
    pub reconnect: BackoffPolicy,
}

/// How connections are kept, expired and capped.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Close a connection gracefully after this long without messages in either direction.
    pub ttl: Duration,
    /// Send a QUIC PING after this long without sending anything, so an idle connection
    /// stays alive and a vanished peer is detected by the idle timeout.
    pub keepalive: Duration,
    /// Cap on connections across all shards (accepted and dialed); `None` = no cap.
    pub max_connections: Option<usize>,
    /// Close a connection with [`close_code::STALLED`] when data has waited for the peer
    /// this long without the peer granting any flow-control credit (it stopped reading).
    pub stall_timeout: Duration,
}

/// Default [`PoolConfig::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            ttl: Duration::from_secs(300),
            keepalive: Duration::from_secs(10),
            max_connections: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
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

/// How often a shard publishes histograms and peer activity.
const PUBLISH_PERIOD: Duration = Duration::from_millis(250);

type ConnKey = u64;

/// Where a routed record came from, for error reporting and back-pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Conn(ConnKey),
    Local,
    Remote,
}

enum RouteOutcome {
    Done,
    /// Destination full: the record was not consumed.
    Blocked(Record),
}

struct Conn {
    session: Session,
    queue: BatchQueue<Queued>,
    /// Records decoded from this session but not yet routed (destination was full), with
    /// when they arrived.
    stalled: VecDeque<(Record, Instant)>,
    scids: Vec<Vec<u8>>,
    peer: Option<PeerId>,
    finished: bool,
    /// Over the connection cap: close with CONNECTION_LIMIT once QUIC is established.
    refused: bool,
    /// Listed in `State::dirty` this turn.
    dirty: bool,
    /// Listed in `State::blocked`: it stopped reading because a destination (or its own
    /// queue) was full, and is serviced again when room appears.
    blocked: bool,
    /// When the peer last made flow-control progress (or nothing waited for it).
    progress_at: Instant,
    /// [`Session::accepted_bytes`] when progress was last seen.
    accepted_mark: u64,
    /// Closed by the stall detector: what it still holds counts as `stalled`.
    stall_closed: bool,
    /// Frames sealed into the session that QUIC has not taken whole yet, oldest first.
    sealed: VecDeque<SealedFrame>,
    /// The pool entry (dialed address) this connection serves, for outbound connections.
    outbound: Option<SocketAddr>,
    /// Whether this connection holds a slot of the connection cap.
    holds_slot: bool,
    /// When a keep-alive PING was last sent.
    last_ping: Instant,
    /// Traffic counters published to the peer index each period.
    activity: PeerActivity,
    last_activity: Instant,
    published: PeerActivity,
}

/// A frame sealed into a session but possibly not yet taken by QUIC: what it carried, so
/// that echo replies count as delivered once QUIC takes them and a connection that closes
/// first counts them as dropped.
#[derive(Debug, Clone, Copy)]
struct SealedFrame {
    /// [`Session::accepted_bytes`] once QUIC has taken the whole frame.
    end: u64,
    messages: u64,
    echoes: u64,
}

/// A peer this shard dials: its lifecycle, and messages waiting for (re)connection.
struct Outbound {
    peer: Option<PeerId>,
    conn: Option<ConnKey>,
    life: Lifecycle,
    pending: VecDeque<(Record, Instant)>,
    pending_bytes: usize,
    waiters: Vec<flume::Sender<Result<PeerId, String>>>,
}

impl Conn {
    /// Whether sealed or queued data waits for this peer's flow-control credit.
    fn output_waiting(&self) -> bool {
        !self.queue.is_empty() || self.session.pending_bytes() > 0
    }

    /// Notes flow-control progress: the peer took bytes since the last look, or nothing
    /// waits for it. Returns the echo replies in frames QUIC has now taken whole (they count
    /// as delivered).
    fn note_progress(&mut self, now: Instant) -> u64 {
        let accepted = self.session.accepted_bytes();
        if accepted != self.accepted_mark || !self.output_waiting() {
            self.accepted_mark = accepted;
            self.progress_at = now;
        }
        let mut echoes = 0;
        while self.sealed.front().is_some_and(|f| f.end <= accepted) {
            if let Some(f) = self.sealed.pop_front() {
                echoes += f.echoes;
            }
        }
        echoes
    }

    /// When the stall detector closes this connection if the peer still takes nothing.
    fn stall_deadline(&self, pool: &PoolConfig) -> Option<Instant> {
        if self.peer.is_none() || self.session.is_closing() || !self.output_waiting() {
            return None;
        }
        Some(self.progress_at + pool.stall_timeout)
    }

    /// When the pool next has work on this connection: a keep-alive PING or the TTL.
    fn pool_deadline(&self, pool: &PoolConfig) -> Option<Instant> {
        if self.peer.is_none() || self.finished || self.session.is_closing() {
            return None;
        }
        Some((self.last_ping + pool.keepalive).min(self.last_activity + pool.ttl))
    }
}

struct State {
    cfg: ShardConfig,
    self_id: PeerId,
    local_addr: SocketAddr,
    server_cfg: Option<quiche::Config>,
    client_cfg: quiche::Config,
    conns: HashMap<ConnKey, Conn>,
    by_cid: HashMap<Vec<u8>, ConnKey>,
    by_peer: HashMap<PeerId, ConnKey>,
    remote_cache: HashMap<PeerId, usize>,
    cache_generation: u64,
    next_key: ConnKey,
    outbox: VecDeque<(Vec<u8>, SocketAddr)>,
    spare: Vec<Vec<u8>>,
    /// Conns with queued records that may be due at the end of this turn.
    dirty: Vec<ConnKey>,
    /// Records for other shards that did not fit in the channel yet.
    hop_backlog: VecDeque<(usize, ShardMsg)>,
    /// Records from the local app or other shards waiting for a full destination.
    waiting: VecDeque<(Origin, PeerId, Record, Instant)>,
    draining: Option<Instant>,
    /// Earliest deadline of any connection processed since the timer last looked.
    wake_hint: Option<Instant>,
    /// Connections that still have readable data after their per-turn frame budget.
    resume: Vec<ConnKey>,
    /// Connections that stopped reading for lack of room somewhere (see `Conn::blocked`).
    blocked: Vec<ConnKey>,
    /// A record waits for the embedding program's delivery channel (retried on a timer).
    app_blocked: bool,
    /// Room may have appeared somewhere other than the connection a datagram is for (a
    /// connection closed, a dialed peer's waiting messages moved): retry what is blocked.
    room_freed: bool,
    /// Datagrams received, for sampling the receive delay.
    rx_count: u64,
    /// Peers this shard dials, by address, and their ids once known.
    outbound: HashMap<SocketAddr, Outbound>,
    outbound_peer: HashMap<PeerId, SocketAddr>,
    decode_buf: Vec<Record>,
    batch_buf: Vec<(Queued, Instant)>,
    /// Shard-local histograms, added into `cfg.histograms` every publish period.
    hist: Histograms,
    last_publish: Instant,
    rng: rand::rngs::ThreadRng,
    /// Signalled when `waiting` shrinks (the command and mesh tasks wait for it).
    room: Rc<Notify>,
    /// Signalled when `hop_backlog` gains records (the hop task waits for it).
    hops: Rc<Notify>,
}

/// Records waiting for other shards before senders feeding them are paused.
const HOP_BACKLOG_LIMIT: usize = 1024;

/// A started shard's handle, held by the engine.
#[derive(Debug)]
pub struct ShardHandle {
    /// Commands into the shard.
    pub commands: flume::Sender<Command>,
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// The shard's published histograms.
    pub histograms: SharedHistograms,
}

/// Runs one shard to completion inside the current glommio executor. `socket` is this
/// shard's member of the reuseport group. Returns when a shutdown finished.
pub async fn run(
    cfg: ShardConfig,
    socket: std::net::UdpSocket,
    commands: flume::Receiver<Command>,
    mesh: Option<
        glommio::channels::channel_mesh::MeshBuilder<
            ShardMsg,
            glommio::channels::channel_mesh::Full,
        >,
    >,
) -> Result<(), String> {
    let local_addr = socket.local_addr().map_err(|e| e.to_string())?;
    if let Some(ino) = socket_inode(std::os::fd::AsRawFd::as_raw_fd(&socket)) {
        cfg.stats.socket_inode.store(ino, Ordering::Relaxed);
    }
    // SAFETY: the fd comes from a std socket we own; ownership moves to glommio.
    let socket = unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) };
    let server_cfg = if cfg.accept {
        Some(
            session::server_config(&cfg.transport, &cfg.cert_pem, &cfg.key_pem)
                .map_err(|e| format!("TLS certificate or key not usable: {e}"))?,
        )
    } else {
        None
    };
    let client_cfg = session::client_config(&cfg.transport).map_err(|e| e.to_string())?;
    let (senders, receivers) = match mesh {
        Some(m) => {
            let (s, r) = m.join().await.map_err(|_| "cross-shard mesh join failed")?;
            (Some(s), Some(r))
        }
        None => (None, None),
    };
    let self_id = cfg.identity.peer_id();
    let shard = Rc::new(Shard {
        st: RefCell::new(State {
            cfg,
            self_id,
            local_addr,
            server_cfg,
            client_cfg,
            conns: HashMap::new(),
            by_cid: HashMap::new(),
            by_peer: HashMap::new(),
            remote_cache: HashMap::new(),
            cache_generation: 0,
            next_key: 1,
            outbox: VecDeque::new(),
            spare: Vec::new(),
            dirty: Vec::new(),
            hop_backlog: VecDeque::new(),
            waiting: VecDeque::new(),
            draining: None,
            wake_hint: None,
            resume: Vec::new(),
            blocked: Vec::new(),
            app_blocked: false,
            room_freed: false,
            rx_count: 0,
            outbound: HashMap::new(),
            outbound_peer: HashMap::new(),
            decode_buf: Vec::new(),
            batch_buf: Vec::new(),
            hist: Histograms::new(),
            last_publish: Instant::now(),
            rng: rand::thread_rng(),
            room: Rc::new(Notify::default()),
            hops: Rc::new(Notify::default()),
        }),
        socket,
        senders,
        wake: flume::bounded(1),
        timer_at: std::cell::Cell::new(None),
    });

    let mut tasks = Vec::new();
    if let Some(mut receivers) = receivers {
        for (_, rx) in receivers.streams() {
            let sh = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                loop {
                    // Stop taking from the mesh while earlier records still wait for room:
                    // the channel then fills and the sending shard pauses its senders.
                    loop {
                        let room = sh.st.borrow().room.clone();
                        if sh.st.borrow().waiting.len() < WAITING_LIMIT {
                            break;
                        }
                        room.wait().await;
                    }
                    let Some(msg) = rx.recv().await else { break };
                    match msg {
                        ShardMsg::Deliver(hop) => sh.on_hop(hop),
                        ShardMsg::Finish(conn) => sh.st.borrow_mut().finish_conn(conn),
                    }
                    sh.flush_outbox().await;
                    sh.poke();
                }
            }));
        }
    }
    {
        let sh = shard.clone();
        tasks.push(glommio::spawn_local(async move { sh.recv_loop().await }));
    }
    if shard.senders.is_some() {
        let sh = shard.clone();
        tasks.push(glommio::spawn_local(async move { sh.hop_loop().await }));
    }
    {
        let sh = shard.clone();
        tasks.push(glommio::spawn_local(async move { sh.timer_loop().await }));
    }
    // The command loop is the shard's lifetime: it ends after a drain.
    let result = shard.command_loop(commands).await;
    shard.st.borrow_mut().publish(Instant::now());
    for t in tasks {
        drop(t.cancel());
    }
    if let Some(s) = &shard.senders {
        s.close();
    }
    result
}

struct Shard {
    st: RefCell<State>,
    socket: UdpSocket,
    senders: Option<Senders<ShardMsg>>,
    /// Wakes the timer task when a new, earlier deadline may exist.
    wake: (flume::Sender<()>, flume::Receiver<()>),
    /// When the timer task is due to wake up (None while it is working).
    timer_at: std::cell::Cell<Option<Instant>>,
}

impl Shard {
    /// Wakes the timer task if work done since it last looked has an earlier deadline
    /// than the one it sleeps towards (while it runs, it recomputes anyway).
    fn poke(&self) {
        let hint = self.st.borrow_mut().wake_hint.take();
        if let (Some(h), Some(t)) = (hint, self.timer_at.get())
            && h < t
        {
            let _ = self.wake.0.try_send(());
        }
    }

    /// Wakes the timer task unconditionally (new commands, drain).
    fn poke_now(&self) {
        let _ = self.wake.0.try_send(());
    }

    async fn recv_loop(self: Rc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        loop {
            match self.socket.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    {
                        let mut st = self.st.borrow_mut();
                        st.rx_count += 1;
                        if st.rx_count % RX_DELAY_SAMPLE == 1
                            && let Some(d) = kernel_queue_delay(fd)
                        {
                            st.hist
                                .receive_delay_ns
                                .saturating_record(d.as_nanos() as u64);
                        }
                        if let Some(pkt) = buf.get_mut(..n) {
                            st.on_datagram(pkt, from);
                        }
                    }
                    self.flush_outbox().await;
                    self.poke();
                }
                Err(e) => {
                    tracing::warn!("udp recv failed: {e}");
                    glommio::timer::sleep(RECV_ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Moves records bound for other shards into the mesh, in order, waiting (without
    /// polling) while a channel is full; senders blocked on the backlog limit are retried
    /// as it drains.
    async fn hop_loop(self: Rc<Self>) {
        let Some(senders) = &self.senders else { return };
        loop {
            let next = {
                let mut st = self.st.borrow_mut();
                let full = st.hop_backlog.len() >= HOP_BACKLOG_LIMIT;
                st.hop_backlog.pop_front().map(|h| (h, full))
            };
            let Some(((shard, msg), was_full)) = next else {
                let hops = self.st.borrow().hops.clone();
                let wait = hops.wait();
                if self.st.borrow().hop_backlog.is_empty() {
                    wait.await;
                }
                continue;
            };
            match senders.send_to(shard, msg).await {
                Ok(()) => {}
                Err(glommio::GlommioError::Closed(glommio::ResourceType::Channel(msg))) => {
                    // The other shard has stopped (drain): report what cannot go there.
                    if let ShardMsg::Deliver(h) = msg {
                        let mut st = self.st.borrow_mut();
                        let origin = st.origin_of(&h.record);
                        st.undeliverable(origin, h.record, ErrorCode::ShuttingDown, Instant::now());
                    }
                }
                Err(e) => {
                    tracing::warn!("cross-shard send to {shard} failed: {e}");
                    inc(&self.st.borrow().cfg.stats.dropped_shutting_down);
                }
            }
            if was_full {
                self.st.borrow_mut().retry_blocked(Instant::now());
                self.flush_outbox().await;
                self.poke();
            }
        }
    }

    async fn timer_loop(self: Rc<Self>) {
        loop {
            let next = self.st.borrow().next_deadline();
            let now = Instant::now();
            let at = next.unwrap_or(now + Duration::from_secs(1));
            let wait = at.saturating_duration_since(now);
            if !wait.is_zero() {
                self.timer_at.set(Some(at));
                self.st.borrow_mut().wake_hint = None;
                futures_lite::future::or(glommio::timer::sleep(wait), async {
                    let _ = self.wake.1.recv_async().await;
                })
                .await;
            } else {
                // Work is due now; still let the receive and channel tasks run between
                // rounds, so nothing this task waits for can be starved by it.
                futures_lite::future::yield_now().await;
            }
            self.timer_at.set(None);
            self.tick();
            self.flush_outbox().await;
        }
    }

    fn tick(&self) {
        self.st.borrow_mut().on_tick(Instant::now());
    }

    fn on_hop(&self, hop: Hop) {
        let mut st = self.st.borrow_mut();
        let now = Instant::now();
        if !st.waiting.is_empty() {
            st.waiting
                .push_back((Origin::Remote, hop.to, hop.record, hop.received));
        } else if let RouteOutcome::Blocked(r) =
            st.route_to_peer(Origin::Remote, hop.to, hop.record, hop.received, now)
        {
            st.waiting
                .push_back((Origin::Remote, hop.to, r, hop.received));
        }
        st.end_turn(now);
    }

    async fn command_loop(
        self: &Rc<Self>,
        commands: flume::Receiver<Command>,
    ) -> Result<(), String> {
        loop {
            // Stop taking commands while earlier ones wait for room (back-pressure to the app).
            loop {
                let room = self.st.borrow().room.clone();
                let wait = room.wait();
                {
                    let st = self.st.borrow();
                    if st.waiting.is_empty() || st.draining.is_some() {
                        break;
                    }
                }
                wait.await;
            }
            let draining = self.st.borrow().draining;
            let cmd = match draining {
                Some(deadline) => {
                    if self.st.borrow_mut().drain_done(Instant::now()) || Instant::now() >= deadline
                    {
                        self.st.borrow_mut().close_all();
                        self.flush_outbox().await;
                        return Ok(());
                    }
                    match futures_lite::future::or(
                        async { commands.recv_async().await.ok() },
                        async {
                            glommio::timer::sleep(Duration::from_millis(5)).await;
                            None
                        },
                    )
                    .await
                    {
                        Some(c) => c,
                        None => continue,
                    }
                }
                None => match commands.recv_async().await {
                    Ok(c) => c,
                    // The engine went away without a shutdown: drain with a short deadline.
                    Err(_) => Command::Shutdown {
                        deadline: Instant::now() + Duration::from_secs(2),
                    },
                },
            };
            {
                let mut st = self.st.borrow_mut();
                st.on_command(cmd);
            }
            self.tick();
            self.flush_outbox().await;
            self.poke_now();
        }
    }

    async fn flush_outbox(&self) {
        loop {
            let item = self.st.borrow_mut().outbox.pop_front();
            let Some((pkt, to)) = item else { break };
            match self.socket.send_to(&pkt, to).await {
                Ok(_) => inc(&self.st.borrow().cfg.stats.datagrams_out),
                Err(e) => tracing::debug!("udp send to {to} failed: {e}"),
            }
            self.st.borrow_mut().recycle(pkt);
        }
    }
}

impl State {
    fn stats(&self) -> &ShardStats {
        &self.cfg.stats
    }

    fn recycle(&mut self, mut pkt: Vec<u8>) {
        if self.spare.len() < 256 {
            pkt.clear();
            self.spare.push(pkt);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for c in self.conns.values() {
            consider(c.session.timeout_at());
            // A queue its session cannot take more from is flushed when ACKs arrive (the
            // datagram path), not by the timer: counting it would spin the timer.
            if c.session.is_open() && c.session.pending_bytes() < MAX_SESSION_BACKLOG {
                consider(c.queue.deadline());
            }
            consider(c.pool_deadline(&self.cfg.pool));
            consider(c.stall_deadline(&self.cfg.pool));
        }
        if self.draining.is_none() {
            for ob in self.outbound.values() {
                if ob.conn.is_none() {
                    consider(ob.life.next_retry());
                }
            }
        }
        let now = Instant::now();
        if !self.resume.is_empty() {
            consider(Some(now));
        }
        // Records blocked on a peer's flow control or on the mesh are retried when room
        // appears (datagrams, the hop task); only the application channel needs a timer.
        if self.app_blocked {
            consider(Some(now + APP_RETRY));
        }
        if self.draining.is_some() {
            consider(Some(now + Duration::from_millis(5)));
        }
        let unpublished = |c: &Conn| {
            (c.activity.messages_in, c.activity.messages_out)
                != (c.published.messages_in, c.published.messages_out)
        };
        if !self.hist.is_empty() || self.conns.values().any(unpublished) {
            consider(Some(self.last_publish + PUBLISH_PERIOD));
        }
        next
    }

    fn on_datagram(&mut self, pkt: &mut [u8], from: SocketAddr) {
        inc(&self.stats().datagrams_in);
        let now = Instant::now();
        let hdr = match quiche::Header::from_slice(pkt, CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                inc(&self.stats().unknown_datagrams);
                return;
            }
        };
        let known = self.by_cid.get(hdr.dcid.as_ref()).copied();
        let key = match known {
            Some(k) => k,
            None => {
                let dcid = hdr.dcid.as_ref().to_vec();
                if hdr.ty != quiche::Type::Initial {
                    if cid::shard_of(&dcid, self.cfg.shards) != Some(self.cfg.index) {
                        inc(&self.stats().misrouted);
                    }
                    inc(&self.stats().unknown_datagrams);
                    return;
                }
                if !quiche::version_is_supported(hdr.version) {
                    let mut out = self.spare.pop().unwrap_or_default();
                    out.resize(1500, 0);
                    if let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                        out.truncate(n);
                        self.outbox.push_back((out, from));
                    }
                    return;
                }
                match self.accept(&dcid, from, now) {
                    Some(k) => k,
                    None => return,
                }
            }
        };
        let local = self.local_addr;
        let accepted_before = self
            .conns
            .get(&key)
            .map_or(0, |c| c.session.accepted_bytes());
        if let Some(c) = self.conns.get_mut(&key) {
            c.session.recv(pkt, from, local);
        }
        self.service(key, now);
        // ACKs may have opened the window: seal what is due, then run the send loop.
        self.flush_queue(key, now, false);
        self.drive(key);
        // If the peer granted credit (QUIC took more of our bytes), room appeared for the
        // senders that stopped reading because this connection was full.
        let credit = self
            .conns
            .get(&key)
            .is_some_and(|c| c.session.accepted_bytes() > accepted_before);
        if (credit || self.room_freed) && (!self.blocked.is_empty() || !self.waiting.is_empty()) {
            self.retry_blocked(now);
        }
        self.end_turn(now);
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
            if let Some(c) = self.conns.get_mut(&k) {
                c.blocked = false;
            } else {
                continue;
            }
            self.service(k, now);
            self.flush_queue(k, now, false);
            self.drive(k);
        }
    }

    /// Lists `key` as having stopped reading for lack of room.
    fn mark_blocked(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key)
            && !c.blocked
        {
            c.blocked = true;
            self.blocked.push(key);
        }
    }

    /// Queues a record for another shard; the hop task sends it.
    fn push_hop(&mut self, shard: usize, msg: ShardMsg) {
        self.hop_backlog.push_back((shard, msg));
        self.hops.notify();
    }

    fn accept(&mut self, odcid: &[u8], from: SocketAddr, now: Instant) -> Option<ConnKey> {
        if self.draining.is_some() {
            return None;
        }
        let server_cfg = self.server_cfg.as_mut()?;
        let scid = cid::new_cid(self.cfg.index as u8, &mut self.rng);
        let session = match Session::accept(
            server_cfg,
            &self.cfg.identity,
            &scid,
            self.local_addr,
            from,
            now,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("accept from {from} failed: {e}");
                return None;
            }
        };
        inc(&self.stats().accepted);
        let holds_slot = self.cfg.slots.try_acquire(self.cfg.pool.max_connections);
        let key = self.insert_conn(session, scid.to_vec());
        if let Some(c) = self.conns.get_mut(&key) {
            c.holds_slot = holds_slot;
            c.refused = !holds_slot;
        }
        if !holds_slot {
            inc(&self.stats().refused);
        }
        self.by_cid.insert(odcid.to_vec(), key);
        if let Some(c) = self.conns.get_mut(&key) {
            c.scids.push(odcid.to_vec());
        }
        Some(key)
    }

    fn insert_conn(&mut self, session: Session, scid: Vec<u8>) -> ConnKey {
        let key = self.next_key;
        self.next_key += 1;
        self.by_cid.insert(scid.clone(), key);
        self.cfg.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(
            key,
            Conn {
                session,
                queue: BatchQueue::new(self.cfg.batch),
                stalled: VecDeque::new(),
                scids: vec![scid],
                peer: None,
                finished: false,
                refused: false,
                dirty: false,
                blocked: false,
                progress_at: Instant::now(),
                accepted_mark: 0,
                stall_closed: false,
                sealed: VecDeque::new(),
                outbound: None,
                holds_slot: false,
                last_ping: Instant::now(),
                activity: PeerActivity::default(),
                last_activity: Instant::now(),
                published: PeerActivity::default(),
            },
        );
        key
    }

    /// Dials `addr`, or reuses the connection this shard already has (or is making) to it.
    fn dial(&mut self, addr: SocketAddr, reply: flume::Sender<Result<PeerId, String>>) {
        if self.draining.is_some() {
            let _ = reply.send(Err("node is shutting down".into()));
            return;
        }
        let now = Instant::now();
        let ob = self.outbound.entry(addr).or_insert_with(|| Outbound {
            peer: None,
            conn: None,
            life: Lifecycle::new(self.cfg.reconnect, true),
            pending: VecDeque::new(),
            pending_bytes: 0,
            waiters: Vec::new(),
        });
        match ob.life.state() {
            ConnState::Connected => {
                if let Some(peer) = ob.peer {
                    let _ = reply.send(Ok(peer));
                    return;
                }
            }
            ConnState::Connecting => {
                ob.waiters.push(reply);
                return;
            }
            _ => {}
        }
        ob.waiters.push(reply);
        self.transition(addr, LifeEvent::Dial, now);
        self.start_dial(addr, now);
    }

    /// Opens a new outbound connection for the pool entry of `addr`.
    fn start_dial(&mut self, addr: SocketAddr, now: Instant) {
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
                let key = self.insert_conn(s, scid.to_vec());
                if let Some(c) = self.conns.get_mut(&key) {
                    c.holds_slot = true;
                    c.outbound = Some(addr);
                }
                if let Some(ob) = self.outbound.get_mut(&addr) {
                    ob.conn = Some(key);
                }
                self.drive(key);
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
    fn outbound_lost(&mut self, addr: SocketAddr, graceful: bool, why: &str, now: Instant) {
        let Some(ob) = self.outbound.get_mut(&addr) else {
            return;
        };
        ob.conn = None;
        for w in ob.waiters.drain(..) {
            let _ = w.send(Err(why.to_string()));
        }
        self.transition(addr, LifeEvent::Closed { graceful }, now);
        let Some(ob) = self.outbound.get(&addr) else {
            return;
        };
        if ob.life.state() == ConnState::Failed {
            tracing::warn!(shard = self.cfg.index, %addr, "giving up on peer: {why}");
            self.fail_pending(addr, now);
        } else if ob.life.next_retry().is_none() && !ob.pending.is_empty() {
            // Closed gracefully with messages still waiting for it: dial again for them.
            if self.draining.is_some() {
                self.fail_pending(addr, now);
            } else {
                self.transition(addr, LifeEvent::Dial, now);
                self.start_dial(addr, now);
            }
        } else if let Some(t) = ob.life.next_retry() {
            tracing::info!(shard = self.cfg.index, %addr, attempt = ob.life.attempt(),
                "connection lost ({why}); retrying in {:?}", t.saturating_duration_since(now));
        }
    }

    /// Refuses every message waiting for the pool entry of `addr`.
    fn fail_pending(&mut self, addr: SocketAddr, now: Instant) {
        let Some(ob) = self.outbound.get_mut(&addr) else {
            return;
        };
        let pending: Vec<_> = ob.pending.drain(..).collect();
        ob.pending_bytes = 0;
        for (r, _) in pending {
            let origin = self.origin_of(&r);
            self.undeliverable(origin, r, ErrorCode::DestinationUnreachable, now);
        }
    }

    /// Applies a lifecycle event to the pool entry of `addr`, records and counts it.
    fn transition(&mut self, addr: SocketAddr, ev: LifeEvent, now: Instant) {
        let unit: f64 = rand::Rng::r#gen(&mut self.rng);
        let Some(ob) = self.outbound.get_mut(&addr) else {
            return;
        };
        match ob.life.on(ev, now, unit) {
            Ok(state) => {
                if let Some(c) = self.cfg.stats.transitions.get(state as usize) {
                    inc(c);
                }
                if let Some(peer) = ob.peer {
                    self.cfg.directory.state(peer, self.cfg.index, state);
                }
            }
            Err(e) => tracing::debug!(%addr, "lifecycle: {e}"),
        }
    }

    /// A dialed connection finished its handshake: answer the dialers and hand it the
    /// messages that waited for it, in order.
    fn outbound_ready(&mut self, addr: SocketAddr, key: ConnKey, peer: PeerId) {
        let now = Instant::now();
        let Some(ob) = self.outbound.get_mut(&addr) else {
            return;
        };
        ob.peer = Some(peer);
        ob.conn = Some(key);
        for w in ob.waiters.drain(..) {
            let _ = w.send(Ok(peer));
        }
        let pending: Vec<_> = ob.pending.drain(..).collect();
        ob.pending_bytes = 0;
        self.room_freed = true;
        self.outbound_peer.insert(peer, addr);
        self.transition(addr, LifeEvent::Established, now);
        for (r, received) in pending {
            let kind = if matches!(&r, Record::Message(m) if m.src != self.self_id) {
                Kind::Relayed
            } else {
                Kind::Other
            };
            self.enqueue(key, r, received, kind, now);
        }
    }

    /// Appends `record` to connection `key`'s batch queue and accounts for its bytes.
    fn enqueue(
        &mut self,
        key: ConnKey,
        record: Record,
        received: Instant,
        kind: Kind,
        now: Instant,
    ) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
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
        self.cfg
            .stats
            .queued_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        self.mark_dirty(key);
    }

    /// A dialed connection lost to an existing connection with the same peer: answer the
    /// dialers with the peer id and let the pool entry rest (messages route over the
    /// existing connection; nothing is re-dialed when this one closes).
    fn outbound_superseded(&mut self, addr: SocketAddr, peer: PeerId) {
        let now = Instant::now();
        let Some(ob) = self.outbound.get_mut(&addr) else {
            return;
        };
        ob.peer = Some(peer);
        ob.conn = None;
        for w in ob.waiters.drain(..) {
            let _ = w.send(Ok(peer));
        }
        self.transition(addr, LifeEvent::Established, now);
        self.transition(addr, LifeEvent::Closed { graceful: true }, now);
        // Anything that waited for this dial goes over the existing connection.
        let pending: Vec<_> = self
            .outbound
            .get_mut(&addr)
            .map(|ob| {
                ob.pending_bytes = 0;
                ob.pending.drain(..).collect()
            })
            .unwrap_or_default();
        for (r, received) in pending {
            let origin = self.origin_of(&r);
            if let RouteOutcome::Blocked(r) = self.route_to_peer(origin, peer, r, received, now) {
                self.waiting.push_back((origin, peer, r, received));
            }
        }
    }

    /// Finishes connection `key` gracefully: flush its queue, then FIN.
    /// Used for a connection replaced by another one with the same peer: what it could not
    /// seal any more is routed again (to the connection that replaced it).
    fn finish_conn(&mut self, key: ConnKey) {
        let now = Instant::now();
        self.flush_queue(key, now, true);
        let mut rest = Vec::new();
        let mut peer = None;
        if let Some(c) = self.conns.get_mut(&key) {
            while !c.queue.is_empty() {
                rest.extend(c.queue.pop_batch());
            }
            c.session.finish();
            c.finished = true;
            peer = c.peer;
        }
        if let Some(peer) = peer {
            if self.by_peer.get(&peer) == Some(&key) {
                self.by_peer.remove(&peer);
            }
            for (q, _) in rest {
                let size = q.record.encoded_len() as u64;
                self.cfg
                    .stats
                    .queued_bytes
                    .fetch_sub(size, Ordering::Relaxed);
                let origin = self.origin_of(&q.record);
                if let RouteOutcome::Blocked(r) =
                    self.route_to_peer(origin, peer, q.record, q.received, now)
                {
                    self.waiting.push_back((origin, peer, r, q.received));
                }
            }
        }
        self.drive(key);
    }

    /// Re-dials pool entries whose backoff expired.
    fn retry_due(&mut self, now: Instant) {
        let due: Vec<SocketAddr> = self
            .outbound
            .iter()
            .filter(|(_, ob)| ob.conn.is_none() && ob.life.retry_due(now))
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            if self.draining.is_some() {
                break;
            }
            self.transition(addr, LifeEvent::RetryDue, now);
            self.start_dial(addr, now);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Dial { addr, reply } => self.dial(addr, reply),
            Command::Send { dst, seq, payload } => {
                let src = self.self_id;
                let r = Record::Message(Message {
                    dst,
                    src,
                    seq,
                    payload,
                });
                if let RouteOutcome::Blocked(r) =
                    self.route_to_peer(Origin::Local, dst, r, now, now)
                {
                    self.waiting.push_back((Origin::Local, dst, r, now));
                }
            }
            Command::Shutdown { deadline } => self.begin_drain(deadline, now),
        }
        self.end_turn(now);
    }

    fn begin_drain(&mut self, deadline: Instant, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        tracing::info!(shard = self.cfg.index, "draining");
        self.draining = Some(deadline);
        // Messages waiting for a dialed peer to come back will not see it now.
        let idle_pool: Vec<SocketAddr> = self
            .outbound
            .iter()
            .filter(|(_, ob)| ob.conn.is_none() && !ob.pending.is_empty())
            .map(|(a, _)| *a)
            .collect();
        for addr in idle_pool {
            self.fail_pending(addr, now);
        }
        // Route what waits, then flush every queue regardless of its timeout.
        self.retry_waiting(now);
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in &keys {
            self.service(*k, now);
        }
        for k in keys {
            self.flush_queue(k, now, true);
            if let Some(c) = self.conns.get_mut(&k)
                && c.queue.is_empty()
                && c.stalled.is_empty()
            {
                c.session.finish();
                c.finished = true;
            }
            self.drive(k);
        }
    }

    /// Whether every session finished cleanly (drain can stop).
    fn drain_done(&mut self, now: Instant) -> bool {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.flush_queue(k, now, true);
            if let Some(c) = self.conns.get_mut(&k) {
                if !c.finished && c.queue.is_empty() && c.stalled.is_empty() {
                    c.session.finish();
                    c.finished = true;
                }
                if c.session.is_client() && c.session.is_complete() {
                    c.session.close(close_code::NO_ERROR, "done");
                }
            }
            self.drive(k);
        }
        self.reap();
        self.conns.is_empty()
    }

    fn close_all(&mut self) {
        // Whatever still waits for room or for another shard is not going anywhere now.
        let now = Instant::now();
        let waiting: Vec<_> = self.waiting.drain(..).collect();
        self.room.notify();
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
        let pool: Vec<SocketAddr> = self.outbound.keys().copied().collect();
        for addr in pool {
            self.fail_pending(addr, now);
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            if let Some(c) = self.conns.get_mut(&k) {
                tracing::warn!(
                    shard = self.cfg.index,
                    conn = k,
                    client = c.session.is_client(),
                    queued = c.queue.len(),
                    stalled = c.stalled.len(),
                    "drain deadline reached before the peer finished: {}",
                    c.session.close_progress()
                );
                c.session.close(close_code::NO_ERROR, "shutting down");
            }
            self.drive(k);
        }
        // Count what could not be delivered before the deadline.
        for k in self.conns.keys().copied().collect::<Vec<_>>() {
            self.drop_conn_state(k, ErrorCode::ShuttingDown);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let mut keys: Vec<ConnKey> = std::mem::take(&mut self.resume);
        keys.extend(self.conns.iter().filter_map(|(k, c)| {
            let due = c.session.timeout_at().is_some_and(|t| t <= now)
                || c.queue.deadline().is_some_and(|t| t <= now)
                || c.pool_deadline(&self.cfg.pool).is_some_and(|t| t <= now)
                || c.stall_deadline(&self.cfg.pool).is_some_and(|t| t <= now)
                || c.session.is_closed();
            due.then_some(*k)
        }));
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            if let Some(c) = self.conns.get_mut(&k)
                && c.session.timeout_at().is_some_and(|t| t <= now)
            {
                c.session.on_timeout();
            }
            self.pool_work(k, now);
            self.service(k, now);
            self.flush_queue(k, now, false);
            self.drive(k);
        }
        self.retry_blocked(now);
        self.retry_due(now);
        self.end_turn(now);
        self.reap();
        if now.saturating_duration_since(self.last_publish) >= PUBLISH_PERIOD {
            self.publish(now);
        }
    }

    /// Stall detection, keep-alive and TTL for one connection.
    fn pool_work(&mut self, key: ConnKey, now: Instant) {
        let pool = self.cfg.pool.clone();
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let delivered = c.note_progress(now);
        self.cfg
            .stats
            .delivered_local
            .fetch_add(delivered, Ordering::Relaxed);
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.stall_deadline(&pool).is_some_and(|t| t <= now) {
            // Data has waited this long without the peer granting any credit: it stopped
            // reading. What it still holds is counted as `stalled` when it is removed.
            tracing::info!(
                shard = self.cfg.index,
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
            return;
        }
        if c.pool_deadline(&pool).is_none_or(|t| t > now) {
            return;
        }
        if now.saturating_duration_since(c.last_activity) >= pool.ttl {
            if !c.queue.is_empty() || !c.stalled.is_empty() {
                // Not idle, only stuck behind a slow peer: not a TTL case.
                c.last_activity = now;
                return;
            }
            // Idle past the TTL: close gracefully (FIN, close when both finished).
            tracing::debug!(shard = self.cfg.index, conn = key, "pool TTL expired");
            inc(&self.cfg.stats.ttl_closed);
            c.session.finish();
            c.finished = true;
            return;
        }
        if now.saturating_duration_since(c.last_ping) >= pool.keepalive {
            let _ = c.session.quic_mut().send_ack_eliciting();
            c.last_ping = now;
        }
    }

    /// Adds local histograms into the shared copy (one short lock per period) and reports
    /// each connection's traffic to the peer index if it changed.
    fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        if !self.hist.is_empty() {
            self.cfg.histograms.lock().add(&self.hist);
            self.hist.clear();
        }
        let wall = std::time::SystemTime::now();
        for (key, c) in self.conns.iter_mut() {
            let Some(peer) = c.peer else { continue };
            let mut a = c.activity;
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

    fn retry_waiting(&mut self, now: Instant) {
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
            self.room.notify();
        }
    }

    /// Reads and routes what a session has for us, as far as destinations have room.
    fn service(&mut self, key: ConnKey, now: Instant) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.refused && c.session.quic().is_established() && !c.session.is_closing() {
                c.session
                    .close(close_code::CONNECTION_LIMIT, "connection limit reached");
                return;
            }
            if c.refused {
                return;
            }
        }
        // Handshake completion.
        let ready = self
            .conns
            .get_mut(&key)
            .and_then(|c| c.session.take_ready());
        if let Some(peer) = ready {
            self.on_ready(key, peer, now);
        }
        let mut frames = 0;
        loop {
            // First route what this session already had decoded.
            while let Some((r, t)) = self.conns.get_mut(&key).and_then(|c| c.stalled.pop_front()) {
                if let RouteOutcome::Blocked(r) = self.route(Origin::Conn(key), r, t, now) {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.stalled.push_front((r, t));
                    }
                    self.mark_blocked(key);
                    return;
                }
            }
            if frames >= FRAMES_PER_TURN {
                // More may be readable with no datagram coming to prompt us: resume soon.
                if !self.resume.contains(&key) {
                    self.resume.push(key);
                }
                return;
            }
            let Some(c) = self.conns.get_mut(&key) else {
                return;
            };
            // Replies and errors go to this session's own queue: keep room for them.
            if c.queue.bytes() + c.session.pending_bytes() >= self.cfg.queue_capacity {
                self.mark_blocked(key);
                return;
            }
            let mut buf = std::mem::take(&mut self.decode_buf);
            buf.clear();
            let res = c.session.read_records(&mut buf, 1);
            match res {
                Ok(0) => {
                    self.decode_buf = buf;
                    // Peer finished its direction: finish ours once our queue is out.
                    if c.session.peer_finished() && !c.finished {
                        self.flush_queue(key, now, true);
                        if let Some(c) = self.conns.get_mut(&key)
                            && c.queue.is_empty()
                        {
                            c.session.finish();
                            c.finished = true;
                        }
                    }
                    if let Some(c) = self.conns.get_mut(&key)
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
                        }
                        c.activity.bytes_in += r.encoded_len() as u64;
                    }
                    c.last_activity = now;
                    c.stalled.extend(buf.drain(..).map(|r| (r, now)));
                    self.decode_buf = buf;
                }
                Err(e) => {
                    self.decode_buf = buf;
                    match e.close_code() {
                        close_code::SEAL_FAILED | close_code::FRAME_TOO_LARGE => {
                            inc(&self.stats().seal_failures)
                        }
                        close_code::HANDSHAKE_FAILED => inc(&self.stats().handshake_failures),
                        _ => inc(&self.stats().protocol_errors),
                    }
                    tracing::info!(conn = key, "closing session: {e}");
                    return;
                }
            }
        }
    }

    fn on_ready(&mut self, key: ConnKey, peer: PeerId, _now: Instant) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
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
            self.by_cid.insert(s.clone(), key);
            if let Some(c) = self.conns.get_mut(&key) {
                c.scids.push(s);
            }
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
                    self.outbound_superseded(pool_addr, peer);
                }
                self.finish_conn(key);
                return;
            }
            tracing::debug!(%peer, "duplicate connection: replacing the existing one");
            replaced = Some((shard, conn));
        }
        self.by_peer.insert(peer, key);
        self.remote_cache.remove(&peer);
        self.cfg
            .directory
            .connected(peer, self.cfg.index, key, addr, outbound);
        // Retire the replaced connection after the new one is registered, so what it
        // still had queued is routed to the new one.
        match replaced {
            Some((shard, conn)) if shard == self.cfg.index => self.finish_conn(conn),
            Some((shard, conn)) => self.push_hop(shard, ShardMsg::Finish(conn)),
            None => {}
        }
        if let Some(pool_addr) = pool_addr {
            self.outbound_ready(pool_addr, key, peer);
        }
        tracing::debug!(shard = self.cfg.index, %peer, %addr, "peer connected");
    }

    /// Routes one record that arrived from `origin`.
    fn route(
        &mut self,
        origin: Origin,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        match r {
            Record::Message(mut m) => {
                inc(&self.stats().messages_in);
                if let Origin::Conn(k) = origin {
                    // The sender is whoever authenticated on this connection.
                    if let Some(p) = self.conns.get(&k).and_then(|c| c.peer) {
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
                match self.route_to_peer(origin, dst, Record::Message(m), received, now) {
                    RouteOutcome::Blocked(Record::Message(m)) => {
                        // Undo the count; it will be counted again on retry.
                        self.stats().messages_in.fetch_sub(1, Ordering::Relaxed);
                        RouteOutcome::Blocked(Record::Message(m))
                    }
                    RouteOutcome::Done if dst != self.self_id => {
                        inc(&self.stats().relayed);
                        RouteOutcome::Done
                    }
                    o => o,
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

    /// Delivers `r` to peer `to`: this node's app, a session on this shard, or another shard.
    fn route_to_peer(
        &mut self,
        origin: Origin,
        to: PeerId,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        if to == self.self_id {
            return self.deliver_local(origin, r, received);
        }
        if let Some(&key) = self.by_peer.get(&to) {
            let cap = self.cfg.queue_capacity;
            let Some(c) = self.conns.get_mut(&key) else {
                return RouteOutcome::Done;
            };
            if c.finished || c.session.is_closing() {
                let code = if c.stall_closed {
                    ErrorCode::DestinationStalled
                } else {
                    self.gone_code()
                };
                self.undeliverable(origin, r, code, now);
                return RouteOutcome::Done;
            }
            if c.queue.bytes() + c.session.pending_bytes() >= cap {
                return RouteOutcome::Blocked(r);
            }
            let kind = match &r {
                Record::Message(m) if m.src != self.self_id && origin != Origin::Local => {
                    Kind::Relayed
                }
                // Our own message made while reading a peer's connection: an echo reply.
                Record::Message(_) if matches!(origin, Origin::Conn(_)) => Kind::EchoReply,
                _ => Kind::Other,
            };
            self.enqueue(key, r, received, kind, now);
            return RouteOutcome::Done;
        }
        if let Some(shard) = self.lookup_remote(&to) {
            if origin == Origin::Remote {
                // Stale index on the sending shard: the peer is not here.
                self.undeliverable(origin, r, ErrorCode::DestinationUnreachable, now);
                return RouteOutcome::Done;
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
            return RouteOutcome::Done;
        }
        // A dialed peer whose connection is down (or being re-dialed) on this shard.
        if let Some(addr) = self.outbound_peer.get(&to).copied() {
            return self.route_to_pool(addr, r, received, now);
        }
        self.undeliverable(origin, r, ErrorCode::UnknownDestination, now);
        RouteOutcome::Done
    }

    /// Queues `r` for a dialed peer that is not connected right now: it goes out when the
    /// connection is back, or is refused once the peer is given up on.
    fn route_to_pool(
        &mut self,
        addr: SocketAddr,
        r: Record,
        received: Instant,
        now: Instant,
    ) -> RouteOutcome {
        let cap = self.cfg.queue_capacity;
        let Some(ob) = self.outbound.get_mut(&addr) else {
            return RouteOutcome::Done;
        };
        if ob.life.state() == ConnState::Failed || self.draining.is_some() {
            let origin = self.origin_of(&r);
            let code = self.gone_code();
            self.undeliverable(origin, r, code, now);
            return RouteOutcome::Done;
        }
        if ob.pending_bytes >= cap {
            return RouteOutcome::Blocked(r);
        }
        ob.pending_bytes += r.encoded_len();
        ob.pending.push_back((r, received));
        // Closed gracefully (TTL, or the peer drained): dial again now that there is
        // something to send.
        if ob.conn.is_none() && ob.life.next_retry().is_none() {
            self.transition(addr, LifeEvent::Dial, now);
            self.start_dial(addr, now);
        }
        RouteOutcome::Done
    }

    fn lookup_remote(&mut self, to: &PeerId) -> Option<usize> {
        let generation = self.cfg.directory.generation();
        if generation != self.cache_generation {
            self.remote_cache.clear();
            self.cache_generation = generation;
        }
        if let Some(s) = self.remote_cache.get(to) {
            return Some(*s);
        }
        let shard = self.cfg.directory.shard_of(to)?;
        if shard == self.cfg.index {
            return None;
        }
        self.remote_cache.insert(*to, shard);
        Some(shard)
    }

    fn deliver_local(&mut self, origin: Origin, r: Record, received: Instant) -> RouteOutcome {
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
            App::Echo => {
                let reply = Record::Message(Message {
                    dst: m.src,
                    src: self.self_id,
                    seq: m.seq,
                    payload: m.payload,
                });
                let to = m.src;
                // Counted as delivered when the reply is sealed (flush_queue), not here.
                match self.route_to_peer(origin, to, reply, received, Instant::now()) {
                    RouteOutcome::Done => RouteOutcome::Done,
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

    /// Counts a record that cannot be delivered and reports it to the message's sender.
    fn undeliverable(&mut self, origin: Origin, r: Record, code: ErrorCode, now: Instant) {
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
    fn send_error(
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
        // Error records may exceed the queue bound by their own (small) size: they are
        // caused by messages already consumed, and dropping them would hide a loss. (The
        // message itself is counted by the caller; an error that cannot be sent because
        // the sender is gone is not counted again.)
        if let Some(&key) = self.by_peer.get(&to) {
            if self
                .conns
                .get(&key)
                .is_some_and(|c| !c.finished && !c.session.is_closing())
            {
                inc(&self.stats().errors_out);
                self.enqueue(key, e, now, Kind::Other, now);
            }
            return;
        }
        if let Some(shard) = self.lookup_remote(&to) {
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
    fn origin_of(&self, r: &Record) -> Origin {
        match r {
            Record::Message(m) if m.src == self.self_id => Origin::Local,
            _ => Origin::Remote,
        }
    }

    /// The error for a message whose destination's connection is gone or going.
    fn gone_code(&self) -> ErrorCode {
        if self.draining.is_some() {
            ErrorCode::ShuttingDown
        } else {
            ErrorCode::DestinationUnreachable
        }
    }

    /// Notes that `key`'s queue got records this turn (once per connection per turn).
    fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Flushes queues that became due during this turn (batch timeout 0, or full).
    fn end_turn(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for k in dirty {
            if let Some(c) = self.conns.get_mut(&k) {
                c.dirty = false;
            }
            self.flush_queue(k, now, false);
            self.drive(k);
        }
    }

    /// Seals due batches of `key`'s queue into its session while the session has room.
    fn flush_queue(&mut self, key: ConnKey, now: Instant, force: bool) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        // Nothing more goes into a session that is closing (its frames would never leave).
        if !c.session.is_open() || c.session.is_closing() || c.stall_closed {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch_buf);
        while !c.queue.is_empty()
            && (force || c.queue.is_due(now))
            && c.session.pending_bytes() < MAX_SESSION_BACKLOG
        {
            batch.clear();
            c.queue.pop_batch_into(&mut batch);
            let mut bytes = 0usize;
            let mut msgs = 0u64;
            let mut echoes = 0u64;
            for (q, enqueued) in &batch {
                bytes += q.record.encoded_len();
                if matches!(q.record, Record::Message(_)) {
                    msgs += 1;
                    let waited = now.saturating_duration_since(*enqueued);
                    self.hist
                        .queue_delay_ns
                        .saturating_record(waited.as_nanos() as u64);
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
            self.cfg
                .stats
                .queued_bytes
                .fetch_sub(bytes as u64, Ordering::Relaxed);
            match c.session.send_batch(batch.iter().map(|(q, _)| &q.record)) {
                Ok(()) => {
                    self.hist.batch_size.saturating_record(batch.len() as u64);
                    self.cfg.stats.batches_out.fetch_add(1, Ordering::Relaxed);
                    self.cfg
                        .stats
                        .messages_out
                        .fetch_add(msgs, Ordering::Relaxed);
                    // Echo replies count as delivered once QUIC takes the frame.
                    c.sealed.push_back(SealedFrame {
                        end: c.session.accepted_bytes() + c.session.pending_bytes() as u64,
                        messages: msgs,
                        echoes,
                    });
                    c.activity.messages_out += msgs;
                    c.activity.bytes_out += bytes as u64;
                    c.last_activity = now;
                    c.last_ping = now;
                }
                Err(e) => {
                    tracing::debug!(conn = key, "batch not sent: {e}");
                    self.cfg
                        .stats
                        .dropped_unreachable
                        .fetch_add(msgs, Ordering::Relaxed);
                    break;
                }
            }
        }
        batch.clear();
        self.batch_buf = batch;
    }

    /// Runs the session's send loop until quiche has nothing more to send, and notes the
    /// connection's next deadline for the timer.
    fn drive(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut hint = c.session.timeout_at();
        if let Some(q) = c.queue.deadline() {
            hint = Some(hint.map_or(q, |h| h.min(q)));
        }
        // Records stalled on a full destination are retried when room appears (see
        // `retry_blocked`), not by waking the timer.
        if self.resume.contains(&key) {
            hint = Some(Instant::now());
        }
        if let Some(h) = hint {
            self.wake_hint = Some(self.wake_hint.map_or(h, |w| w.min(h)));
        }
        loop {
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.resize(self.cfg.transport.max_udp_payload.max(1500), 0);
            match c.session.send(&mut buf) {
                Some((n, info)) => {
                    buf.truncate(n);
                    self.outbox.push_back((buf, info.to));
                }
                None => {
                    buf.clear();
                    self.spare.push(buf);
                    break;
                }
            }
        }
        let delivered = c.note_progress(Instant::now());
        self.cfg
            .stats
            .delivered_local
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Removes closed sessions, reporting what they left undelivered.
    fn reap(&mut self) {
        let closed: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.is_closed())
            .map(|(k, _)| *k)
            .collect();
        let any = !closed.is_empty();
        for k in closed {
            self.drop_conn_state(k, ErrorCode::DestinationUnreachable);
        }
        // Senders blocked on a connection that is gone now get their ERROR records.
        if any && (!self.blocked.is_empty() || !self.waiting.is_empty()) {
            self.retry_blocked(Instant::now());
            self.end_turn(Instant::now());
        }
    }

    fn drop_conn_state(&mut self, key: ConnKey, code: ErrorCode) {
        let Some(mut c) = self.conns.remove(&key) else {
            return;
        };
        for s in &c.scids {
            self.by_cid.remove(s);
        }
        self.cfg.stats.connections.fetch_sub(1, Ordering::Relaxed);
        inc(&self.stats().closed);
        if c.holds_slot {
            self.cfg.slots.release();
        }
        if let Some(info) = c.session.close_info() {
            tracing::debug!(conn = key, ?info, "session closed");
        }
        if let Some(peer) = c.peer {
            if self.by_peer.get(&peer) == Some(&key) {
                self.by_peer.remove(&peer);
            }
            // Dialed peers stay in the index (as Disconnected) while the pool re-dials.
            if c.outbound.is_none() || self.draining.is_some() {
                self.cfg.directory.disconnected(peer, self.cfg.index, key);
            }
        }
        let pool_addr = c.outbound.filter(|a| {
            self.draining.is_none() && self.outbound.get(a).is_some_and(|ob| ob.conn == Some(key))
        });
        if let Some(addr) = pool_addr {
            // Messages still queued for a dialed peer wait for the re-established
            // connection, as far as the queue bound allows (not when the peer was closed for
            // not reading: those count as stalled below).
            let cap = self.cfg.queue_capacity;
            let mut rest = Vec::new();
            if let Some(ob) = self.outbound.get_mut(&addr).filter(|_| !c.stall_closed) {
                while !c.queue.is_empty() {
                    for (q, _) in c.queue.pop_batch() {
                        let size = q.record.encoded_len();
                        self.cfg
                            .stats
                            .queued_bytes
                            .fetch_sub(size as u64, Ordering::Relaxed);
                        if ob.pending_bytes + size <= cap {
                            ob.pending_bytes += size;
                            ob.pending.push_back((q.record, q.received));
                        } else {
                            rest.push(q.record);
                        }
                    }
                }
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
            let now = Instant::now();
            for r in rest {
                self.undeliverable(Origin::Remote, r, ErrorCode::DestinationUnreachable, now);
            }
            self.outbound_lost(addr, graceful, &why, now);
        }
        let now = Instant::now();
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
        self.cfg
            .stats
            .delivered_local
            .fetch_add(delivered, Ordering::Relaxed);
        let unsent: u64 = c.sealed.iter().map(|f| f.messages).sum();
        if unsent > 0 {
            let counter = match code {
                ErrorCode::ShuttingDown => &self.cfg.stats.dropped_shutting_down,
                ErrorCode::DestinationStalled => &self.cfg.stats.dropped_stalled,
                _ => &self.cfg.stats.dropped_unreachable,
            };
            counter.fetch_add(unsent, Ordering::Relaxed);
        }
        self.room_freed = true;
        // Undelivered records queued for this peer: count and tell their senders.
        let mut left = Vec::new();
        while !c.queue.is_empty() {
            left.extend(c.queue.pop_batch().into_iter().map(|(q, _)| q.record));
        }
        let bytes: usize = left.iter().map(Record::encoded_len).sum();
        self.cfg
            .stats
            .queued_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed);
        for r in left {
            let origin = self.origin_of(&r);
            self.undeliverable(origin, r, code, now);
        }
        // Records this peer sent that were never routed.
        for (r, _) in c.stalled.drain(..) {
            if matches!(r, Record::Message(_)) {
                inc(&self.stats().dropped_sender_gone);
            }
        }
    }
}
