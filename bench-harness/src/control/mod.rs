//! `bench-harness control-server`: a tokio + quinn node speaking `qme/1`, the matched
//! control the engine's throughput is measured against.
//!
//! It runs the engine's own session-stream code ([`StreamSession`]: Noise XX handshake, the
//! frame reader, sealed batches) over a quinn stream instead of quiche, and does the
//! engine's work with the engine's rules (docs/PROTOCOL.md sections 8 to 12): a MESSAGE to
//! the node's peer id is echoed to its sender, one to another connected peer is relayed to
//! it, one to anybody else (or larger than the message size limit) comes back as an ERROR
//! record; replies and relays are batched per connection with [`BatchPolicy`] (flush on
//! size, bytes or timeout; timeout 0 flushes at the end of each turn); a sender is not read
//! while its own queue or a destination's is at the queue capacity; a peer's FIN is
//! answered with the node's FIN once its queue is out, and the QUIC client closes.
//!
//! The engine's per-connection bounds hold as well: the queue capacity (above, and ERROR
//! records owed to one sender capped at twice it), the 16 MiB frame limit and the receive
//! buffer that grows only with bytes that arrived (the frame reader's own), records handed
//! on 1024 per step, the handshake deadline (QUIC and Noise, `HANDSHAKE_FAILED`) and the
//! frame deadline (a sealed frame still incomplete that long after its first bytes,
//! `PROTOCOL_VIOLATION`).
//!
//! With one thread (the default, matched to one engine shard) everything runs on one
//! tokio current-thread runtime on one thread, pinned to core 0 as an engine's first shard
//! is; with `threads` above one, on a multi-thread runtime whose workers are pinned to cores
//! 0 and up. Each connection is one task; peers find each other through one locked map of
//! peer ids. A connection's turn reads what quinn has for it without waiting, up to 16
//! steps of the frame reader (the engine's per-connection limit per turn).
//!
//! Not matched: the QUIC implementation itself (quinn-proto and rustls against quiche and
//! BoringSSL); datagram I/O (quinn-udp receives with GRO where the kernel has it, the
//! engine with `recvmmsg`; both send with GSO unless `--no-gso`); scheduling (a task per
//! connection woken by quinn's endpoint driver, against one event loop per shard); and the
//! engine's operations around the protocol: no Retry, no handshake budget, connection cap,
//! stall timeout or memory limit, no metrics, no dialing, a self-signed certificate only,
//! connection IDs without a shard byte.
//!
//! ```no_run
//! use bench_harness::control::{ControlConfig, ControlServer};
//! use shards::identity::Identity;
//!
//! let server = ControlServer::start(ControlConfig::default(), Identity::generate()?)?;
//! println!("control on {} (peer id {})", server.local_addr(), server.peer_id());
//! let counts = server.shutdown();
//! println!("{} messages in", counts.messages_in);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use clap::Args;
use shards::batch::{BatchPolicy, BatchQueue};
use shards::config::ConfigError;
use shards::handshake::{ALPN, Role};
use shards::identity::Identity;
use shards::session::TransportConfig;
use shards::shard::PoolConfig;
use shards::stream_session::{StreamError, StreamRead, StreamSession};
use shards::wire::{
    ErrorCode, ErrorRecord, MESSAGE_HEADER_LEN, Message, PayloadPool, PeerId, Record, close_code,
};
use tokio::sync::{Semaphore, TryAcquireError, mpsc, watch};

use crate::cli::parse_duration;

/// How long the endpoint may take to send its last closes after the drain.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

mod cli;
mod conn;

pub use cli::{ControlArgs, serve_cmd};

/// What the control server runs with; the defaults are the engine's.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Threads: 1 is a current-thread runtime (one engine shard), more a multi-thread
    /// runtime with that many workers.
    pub threads: usize,
    /// Pin the runtime's threads to cores 0 and up, as the engine pins its shards.
    pub pin: bool,
    /// Flush policy of each connection's outgoing queue.
    pub batch: BatchPolicy,
    /// Idle timeout, receive window, UDP payload size and GSO ([`transport_config`]).
    pub transport: TransportConfig,
    /// QUIC PING interval on idle connections.
    pub keepalive: Duration,
    /// Largest payload relayed or echoed; larger ones get a `MessageTooLarge` ERROR.
    pub max_message_size: usize,
    /// Bytes of records one connection may have queued before its senders are not read.
    pub queue_capacity: usize,
    /// A connection whose QUIC and Noise handshakes have not finished by then is closed
    /// with `HANDSHAKE_FAILED`.
    pub handshake_timeout: Duration,
    /// A connection whose sealed frame is still incomplete this long after its first bytes
    /// arrived is closed with `PROTOCOL_VIOLATION`.
    pub frame_timeout: Duration,
    /// How long [`ControlServer::shutdown`] waits for peers to finish their streams.
    pub drain_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        let transport = TransportConfig::default();
        ControlConfig {
            listen: engine::config::DEFAULT_LISTEN,
            threads: 1,
            pin: true,
            batch: BatchPolicy::default(),
            keepalive: transport.idle_timeout / 3,
            transport,
            max_message_size: engine::config::DEFAULT_MAX_MESSAGE_SIZE,
            queue_capacity: engine::config::DEFAULT_QUEUE_CAPACITY,
            handshake_timeout: shards::endpoint::DEFAULT_HANDSHAKE_TIMEOUT,
            frame_timeout: shards::endpoint::DEFAULT_FRAME_TIMEOUT,
            drain_timeout: engine::config::DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl ControlConfig {
    /// Checks the settings with the engine's own rules (`shards::config`), so the control
    /// runs only configurations the engine would: the batch policy, the transport, the
    /// payload limit, the queue capacity, the keep-alive below the idle timeout, and every
    /// duration's bound (at most a day, so no deadline overflows). Beyond the engine: at
    /// least one thread, and a queue capacity within `u32` (the budget's permits).
    fn validate(&self) -> Result<(), ControlError> {
        if self.threads == 0 {
            return Err(ControlError::Config("threads must be at least 1".into()));
        }
        let pool = PoolConfig {
            keepalive: self.keepalive,
            handshake_timeout: self.handshake_timeout,
            frame_timeout: self.frame_timeout,
            ..PoolConfig::default()
        };
        self.batch
            .validate()
            .and_then(|()| self.transport.validate())
            .and_then(|()| pool.validate_for(&self.transport))
            .and_then(|()| shards::config::validate_max_message_size(self.max_message_size))
            .and_then(|()| shards::config::validate_queue_capacity(self.queue_capacity))
            .and_then(|()| shards::config::validate_timeout("drain_timeout", self.drain_timeout))
            .map_err(ControlError::Invalid)?;
        if u32::try_from(self.queue_capacity).is_err() {
            return Err(ControlError::Config(format!(
                "queue capacity above {} bytes",
                u32::MAX
            )));
        }
        Ok(())
    }
}

/// The `control-server` flag that sets the field a [`ConfigError`] names, if it has one.
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "batch.max_messages" => "--batch-size",
        "batch.max_bytes" => "--batch-bytes",
        "batch.timeout" => "--batch-timeout",
        "transport.window" => "--window",
        "max_message_size" => "--max-message-size",
        "queue_capacity" => "--queue-capacity",
        "pool.handshake_timeout" => "--handshake-timeout",
        "pool.frame_timeout" => "--frame-timeout",
        "drain_timeout" => "--drain-timeout",
        _ => return None,
    })
}

/// ` (--flag)` after a rule broken by a value a flag sets.
fn flag_note(e: &ConfigError) -> String {
    flag_of(e.field())
        .map(|f| format!(" ({f})"))
        .unwrap_or_default()
}

/// Why the control server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A setting is out of range.
    #[error("invalid control-server configuration: {0}")]
    Config(String),
    /// A setting breaks one of the engine's rules (the same limits `engine serve` checks).
    #[error("invalid control-server configuration: {0}{note}", note = flag_note(.0))]
    Invalid(ConfigError),
    /// The thread, the tokio runtime or the UDP socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The self-signed certificate or the TLS configuration failed.
    #[error("TLS setup: {0}")]
    Tls(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

/// What the server counted, as [`ControlServer::shutdown`] returns it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlCounts {
    /// Connections accepted.
    pub connections: u64,
    /// MESSAGE records received.
    pub messages_in: u64,
    /// Echo replies sealed to their sender.
    pub delivered_local: u64,
    /// Of those, handed to another connected peer.
    pub relayed: u64,
    /// Of those, not delivered (unknown destination, too large, destination gone, nowhere
    /// to send the reply, or their sender's connection ended before they were routed).
    pub dropped: u64,
    /// ERROR records received (counted, never answered).
    pub errors_in: u64,
    /// Connections closed because a sealed frame stayed incomplete for the frame timeout.
    pub frame_timeouts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    messages_in: AtomicU64,
    delivered_local: AtomicU64,
    relayed: AtomicU64,
    dropped: AtomicU64,
    errors_in: AtomicU64,
    frame_timeouts: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ControlCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ControlCounts {
            connections: get(&self.connections),
            messages_in: get(&self.messages_in),
            delivered_local: get(&self.delivered_local),
            relayed: get(&self.relayed),
            dropped: get(&self.dropped),
            errors_in: get(&self.errors_in),
            frame_timeouts: get(&self.frame_timeouts),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// quinn's transport settings, matched to the engine's quiche settings
/// (`shards::session::server_config`, docs/PROTOCOL.md section 2.2):
///
/// * connection and stream receive windows both `transport.window` (128 KiB), fixed (quinn
///   does not grow them; the engine sets quiche's maximum windows equal to the initial
///   ones), and the send window the same, so quinn buffers no more unacknowledged data per
///   connection than the peer's window lets quiche hold;
/// * one peer-initiated bidirectional stream, no unidirectional ones, no DATAGRAM frames;
/// * idle timeout `transport.idle_timeout` (30 s) with a PING every `keepalive` (10 s);
/// * UDP payloads of `transport.max_udp_payload` (1350) from the first packet on, without
///   path MTU discovery (quiche sends that size and does no discovery; the advertised
///   `max_udp_payload_size` is set on the endpoint, [`ControlServer::start`]).
///
/// * GSO on sends as `transport.gso` says (the engine's `--no-gso`); quinn-udp's GRO on
///   receive cannot be turned off.
///
/// Congestion control stays quinn's default (CUBIC, as quiche's). Not matched: quinn
/// issues its own connection IDs (8 random bytes, no shard byte) and advertises its own
/// `active_connection_id_limit`; neither matters to one loopback client.
pub fn transport_config(
    transport: &TransportConfig,
    keepalive: Duration,
) -> Result<quinn::TransportConfig, ControlError> {
    let window = quinn::VarInt::from_u64(transport.window)
        .map_err(|_| ControlError::Config(format!("window {} too large", transport.window)))?;
    let mtu = u16::try_from(transport.max_udp_payload).map_err(|_| {
        ControlError::Config(format!(
            "UDP payload {} above 65535",
            transport.max_udp_payload
        ))
    })?;
    let idle = quinn::IdleTimeout::try_from(transport.idle_timeout)
        .map_err(|_| ControlError::Config("idle timeout too large".into()))?;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .receive_window(window)
        .stream_receive_window(window)
        .send_window(transport.window)
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(keepalive))
        .initial_mtu(mtu)
        .mtu_discovery_config(None)
        .datagram_receive_buffer_size(None)
        .enable_segmentation_offload(transport.gso);
    Ok(t)
}

/// A peer's connection as other connections reach it.
#[derive(Clone)]
struct PeerHandle {
    conn: u64,
    tx: mpsc::UnboundedSender<Queued>,
    /// Bytes of relayed records the connection may still take (its queue capacity). As in
    /// the engine, a record is admitted while any is left and may take the queue over the
    /// capacity; it then holds only what was left ([`Kind::Relayed`]), so the semaphore
    /// never needs more permits than it has.
    budget: Arc<Semaphore>,
}

/// A record in a connection's outgoing queue.
struct Queued {
    record: Record,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An echo reply; counted as delivered when it is sealed, as in the engine.
    Reply,
    /// A relayed message; holds `held` permits of the destination's budget (its size, or
    /// what was left when it was admitted) until it is sealed or given back.
    Relayed { held: u32 },
    /// An ERROR record for the connection's peer.
    Report,
}

struct Shared {
    cfg: ControlConfig,
    identity: Identity,
    node: PeerId,
    peers: Mutex<HashMap<PeerId, PeerHandle>>,
    next_conn: AtomicU64,
    counts: Counters,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, PeerHandle>> {
        // A panicking task cannot leave the map half-updated (single inserts and removes).
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, peer: &PeerId) -> Option<PeerHandle> {
        self.peers().get(peer).cloned()
    }

    /// Sends an ERROR about `m` to its sender `m.src` wherever that sender is connected.
    fn refuse_to_sender(&self, m: &Message, code: ErrorCode) {
        inc(&self.counts.dropped);
        if let Some(h) = self.lookup(&m.src) {
            let _ = h.tx.send(Queued {
                record: error_record(code, m),
                kind: Kind::Report,
            });
        }
    }
}

fn error_record(code: ErrorCode, m: &Message) -> Record {
    let reason = match code {
        ErrorCode::UnknownDestination => format!("no connected peer {}", m.dst),
        ErrorCode::ShuttingDown => "node is shutting down".to_string(),
        _ => format!("connection to {} ended before delivery", m.dst),
    };
    Record::Error(ErrorRecord {
        code,
        seq: m.seq,
        dst: m.dst,
        reason,
    })
}

/// A running control server: one thread running the tokio runtime with the quinn endpoint
/// and its connections.
pub struct ControlServer {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("local_addr", &self.local_addr)
            .field("peer_id", &self.shared.node)
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Binds `cfg.listen`, starts the runtime on its own thread (pinned when `cfg.pin`)
    /// and accepts connections until [`ControlServer::shutdown`].
    pub fn start(cfg: ControlConfig, identity: Identity) -> Result<ControlServer, ControlError> {
        cfg.validate()?;
        let server_config = server_config(&cfg)?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        let payload = u16::try_from(cfg.transport.max_udp_payload).unwrap_or(u16::MAX);
        endpoint_config
            .max_udp_payload_size(payload)
            .map_err(|e| ControlError::Config(format!("max UDP payload {payload}: {e}")))?;
        let socket = std::net::UdpSocket::bind(cfg.listen)
            .map_err(io_error(format!("binding {}", cfg.listen)))?;
        let local_addr = socket
            .local_addr()
            .map_err(io_error("reading the bound address"))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            node: identity.peer_id(),
            identity,
            cfg,
            peers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            counts: Counters::default(),
            shutdown: shutdown_rx,
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("control".into())
                .spawn(move || run_thread(shared, socket, endpoint_config, server_config, ready_tx))
                .map_err(io_error("starting the control thread"))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ControlServer {
                shared,
                shutdown,
                thread: Some(thread),
                local_addr,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ControlError::Io {
                    what: "starting the control thread".into(),
                    source: std::io::Error::other("the thread ended before it was ready"),
                })
            }
        }
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's peer id (messages to it are echoed).
    pub fn peer_id(&self) -> PeerId {
        self.shared.node
    }

    /// What has been counted so far.
    pub fn counts(&self) -> ControlCounts {
        self.shared.counts.snapshot()
    }

    /// Drains like the engine (docs/PROTOCOL.md 11.2): stops accepting, flushes every
    /// queue, sends each connection's FIN and waits for the peers' closes up to the drain
    /// timeout, then closes what is left with `NO_ERROR` ("shutting down").
    pub fn shutdown(mut self) -> ControlCounts {
        self.stop();
        self.shared.counts.snapshot()
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control thread: pins itself (or the runtime's workers), builds the runtime, starts
/// the endpoint, reports readiness and serves until shutdown.
fn run_thread(
    shared: Arc<Shared>,
    socket: std::net::UdpSocket,
    endpoint_config: quinn::EndpointConfig,
    server_config: quinn::ServerConfig,
    ready: std::sync::mpsc::Sender<Result<(), ControlError>>,
) {
    let runtime = match build_runtime(&shared.cfg) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async {
        let endpoint = match quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        ) {
            Ok(e) => e,
            Err(e) => {
                let _ = ready.send(Err(io_error("starting the QUIC endpoint")(e)));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        serve(endpoint, shared).await;
    });
    runtime.shutdown_timeout(CLOSE_GRACE);
}

/// One thread: a current-thread runtime on this thread, pinned to core 0. More: a
/// multi-thread runtime whose workers are pinned to cores 0 and up, one each (this thread
/// then only waits for shutdown).
fn build_runtime(cfg: &ControlConfig) -> Result<tokio::runtime::Runtime, ControlError> {
    let cores = if cfg.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let built = if cfg.threads == 1 {
        if let Some(core) = cores.first() {
            core_affinity::set_for_current(*core);
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let next = AtomicUsize::new(0);
        let threads = cfg.threads;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("control")
            .on_thread_start(move || {
                let i = next.fetch_add(1, Ordering::Relaxed) % threads;
                if let Some(core) = cores.get(i) {
                    core_affinity::set_for_current(*core);
                }
            })
            .enable_all()
            .build()
    };
    built.map_err(io_error("starting the tokio runtime"))
}

/// Accepts until shutdown, then drains (see [`ControlServer::shutdown`]).
async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
    shutting_down(&mut shared.shutdown.clone()).await;
    endpoint.set_server_config(None);
    let _ = tokio::time::timeout(shared.cfg.drain_timeout, accept).await;
    endpoint.close(varint(close_code::NO_ERROR), b"shutting down");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

/// A close code as quinn takes it (the codes are small constants).
fn varint(code: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(code).unwrap_or(quinn::VarInt::MAX)
}

/// Resolves once shutdown was asked for (or the server is gone).
async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// rustls (ring provider, TLS 1.3 only) with a fresh self-signed certificate for
/// `localhost` and ALPN `qme/1`; peers are authenticated by Noise, not by it.
fn server_config(cfg: &ControlConfig) -> Result<quinn::ServerConfig, ControlError> {
    let tls = |e: &dyn std::fmt::Display| ControlError::Tls(e.to_string());
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).map_err(|e| tls(&e))?;
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| tls(&e))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| tls(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(&cfg.transport, cfg.keepalive)?));
    Ok(server)
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    inc(&shared.counts.connections);
                    tasks.spawn(conn::connection(incoming, shared.clone()));
                }
                None => break,
            },
            _ = shutting_down(&mut shutdown) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use shards::client::{Client, ClientConfig};
    use shards::config::{MAX_MESSAGE_SIZE_LIMIT, MIN_QUEUE_CAPACITY};
    use shards::shard::Delivery;

    /// A control server on a free loopback port, unpinned, flushing every turn, with
    /// `queue_capacity` and a short drain.
    fn server(queue_capacity: usize) -> ControlServer {
        let cfg = ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pin: false,
            batch: BatchPolicy {
                timeout: Duration::ZERO,
                ..BatchPolicy::default()
            },
            queue_capacity,
            drain_timeout: Duration::from_millis(300),
            ..ControlConfig::default()
        };
        ControlServer::start(cfg, Identity::generate().unwrap()).unwrap()
    }

    fn client_with(s: &ControlServer, batch: BatchPolicy) -> Client {
        let cfg = ClientConfig {
            batch,
            ..ClientConfig::default()
        };
        Client::connect(s.local_addr(), &Identity::generate().unwrap(), cfg).unwrap()
    }

    fn client(s: &ControlServer) -> Client {
        client_with(
            s,
            BatchPolicy {
                timeout: Duration::ZERO,
                ..BatchPolicy::default()
            },
        )
    }

    /// Receives up to `n` deliveries on `to` within `timeout`, driving `from` meanwhile
    /// (it may still have bytes to push through QUIC's congestion window).
    fn recv_n(to: &mut Client, from: &mut Client, n: usize, timeout: Duration) -> Vec<Delivery> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < end {
            from.poll(Duration::from_millis(1)).unwrap();
            if let Some(d) = to.recv(Duration::from_millis(10)).unwrap() {
                got.push(d);
            }
        }
        got
    }

    /// One echo round trip, after which the server has the client's peer id registered.
    fn echo_once(c: &mut Client, seq: u64) {
        let node = c.node_id();
        c.send_with_seq(node, seq, b"ping".to_vec()).unwrap();
        c.flush().unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Some(d) = c.recv(Duration::from_millis(20)).unwrap() {
                assert!(
                    matches!(d, Delivery::Message { seq: s, .. } if s == seq),
                    "{d:?}"
                );
                return;
            }
        }
        panic!("echo {seq} not answered");
    }

    #[test]
    fn settings_are_checked_with_the_engines_limits() {
        let refused = |cfg: ControlConfig| {
            ControlServer::start(cfg, Identity::generate().unwrap())
                .unwrap_err()
                .to_string()
        };
        let ok = ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pin: false,
            ..ControlConfig::default()
        };
        let huge = Duration::from_secs(u64::MAX);
        for (cfg, expect) in [
            (
                ControlConfig {
                    queue_capacity: MIN_QUEUE_CAPACITY - 1,
                    ..ok.clone()
                },
                "queue_capacity (4095) must be at least 4096 (--queue-capacity)",
            ),
            (
                ControlConfig {
                    max_message_size: 0,
                    ..ok.clone()
                },
                "max_message_size (0) must be at least 1 (--max-message-size)",
            ),
            (
                ControlConfig {
                    max_message_size: MAX_MESSAGE_SIZE_LIMIT + 1,
                    ..ok.clone()
                },
                "(--max-message-size)",
            ),
            (
                ControlConfig {
                    handshake_timeout: huge,
                    ..ok.clone()
                },
                "pool.handshake_timeout (18446744073709551615s) must be at most 1d (--handshake-timeout)",
            ),
            (
                ControlConfig {
                    frame_timeout: Duration::ZERO,
                    ..ok.clone()
                },
                "pool.frame_timeout must be above zero (--frame-timeout)",
            ),
            (
                ControlConfig {
                    drain_timeout: huge,
                    ..ok.clone()
                },
                "(--drain-timeout)",
            ),
            (
                ControlConfig {
                    batch: BatchPolicy {
                        timeout: huge,
                        ..BatchPolicy::default()
                    },
                    ..ok.clone()
                },
                "batch.timeout (18446744073709551615s) must be at most 1d (--batch-timeout)",
            ),
        ] {
            let err = refused(cfg);
            assert!(
                err.starts_with("invalid control-server configuration: ") && err.contains(expect),
                "{err}"
            );
        }
        // At the engine's limits the control starts.
        let at = ControlConfig {
            queue_capacity: MIN_QUEUE_CAPACITY,
            max_message_size: MAX_MESSAGE_SIZE_LIMIT,
            drain_timeout: shards::config::MAX_TIMEOUT,
            ..ok
        };
        drop(ControlServer::start(at, Identity::generate().unwrap()).unwrap());
    }

    /// A relayed message larger than the destination's whole queue capacity is admitted
    /// while the queue has room, as the engine admits it, instead of waiting forever for
    /// permits the budget never has (which stopped its sender from being read again).
    #[test]
    fn relays_larger_than_the_queue_capacity_go_through() {
        let s = server(MIN_QUEUE_CAPACITY);
        let (mut a, mut b) = (client(&s), client(&s));
        echo_once(&mut a, 1_000);
        echo_once(&mut b, 1_000);
        const N: u64 = 5;
        let size = 3 * MIN_QUEUE_CAPACITY;
        for i in 0..N {
            a.send_with_seq(b.peer_id(), i, vec![i as u8; size])
                .unwrap();
        }
        a.flush().unwrap();
        let got = recv_n(&mut b, &mut a, N as usize, Duration::from_secs(10));
        let seqs: Vec<u64> = got
            .iter()
            .map(|d| match d {
                Delivery::Message { from, seq, payload } => {
                    assert_eq!((*from, payload.len()), (a.peer_id(), size));
                    *seq
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "{:?}", s.counts());
        // The sender is still read.
        echo_once(&mut a, 2_000);
        let c = s.shutdown();
        assert_eq!(
            (c.messages_in, c.relayed, c.dropped),
            (N + 3, N, 0),
            "{c:?}"
        );
    }

    /// A sender blocked on a destination that stopped reading holds decoded records behind
    /// the blocked one; when its connection ends they are counted as received and dropped
    /// (the engine's `sender_gone`), not lost from the counts.
    #[test]
    fn records_behind_a_blocked_relay_are_counted_when_the_connection_ends() {
        let s = server(MIN_QUEUE_CAPACITY);
        // One frame of N records: all of them are decoded as soon as it is read.
        let mut a = client_with(
            &s,
            BatchPolicy {
                max_messages: 4096,
                max_bytes: 4 << 20,
                timeout: Duration::from_secs(30),
            },
        );
        let mut b = client(&s);
        echo_once(&mut a, 1_000_000);
        echo_once(&mut b, 1_000_000);
        // B reads nothing from here on: its window, the sealed backlog and its queue fill
        // (about 400 KB), and A's relays to it block behind them.
        const N: u64 = 1000;
        for i in 0..N {
            a.send_with_seq(b.peer_id(), i, vec![7; 1000]).unwrap();
        }
        a.flush().unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        let (mut relayed, mut since) = (0, Instant::now());
        loop {
            a.poll(Duration::from_millis(10)).unwrap();
            let now = s.counts().relayed;
            if now != relayed {
                (relayed, since) = (now, Instant::now());
            } else if relayed > 0 && since.elapsed() > Duration::from_millis(500) {
                break;
            }
            assert!(
                Instant::now() < end,
                "relays did not settle: {:?}",
                s.counts()
            );
        }
        let c = s.shutdown();
        assert!(
            c.relayed < N - 1,
            "nothing was left behind a blocked relay: {c:?}"
        );
        assert_eq!(
            c.messages_in,
            N + 2,
            "every decoded record is counted: {c:?}"
        );
        // Each of A's messages was relayed or dropped when A's connection ended (relayed
        // ones B still held are dropped as well).
        assert!(c.dropped >= N - c.relayed, "{c:?}");
        assert_eq!(c.delivered_local, 2, "{c:?}");
        drop((a, b));
    }
}
