//! A blocking client: one QUIC session to one node over an ordinary UDP socket, driven by
//! the calling thread. Used by `engine ping`, the load harness and the tests; every message
//! goes through the connected node, which delivers or relays it.
//!
//! ```no_run
//! use shards::client::{Client, ClientConfig};
//! use shards::identity::Identity;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let me = Identity::generate()?;
//! let mut c = Client::connect("127.0.0.1:4433".parse()?, &me, ClientConfig::default())?;
//! let node = c.node_id();
//! c.send(node, b"hello".to_vec())?; // to the node's own handler (echo)
//! c.flush()?;
//! let reply = c.recv(std::time::Duration::from_secs(1))?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::batch::{BatchPolicy, BatchQueue, pop_front_rewound};
use crate::cid;
use crate::endpoint::Delivery;
use crate::identity::Identity;
use crate::session::{self, CloseInfo, Session, SessionError, TransportConfig};
use crate::udp_batch::{RecvBatch, SendBatch, enable_gro, gso_supported};
use crate::wire::{Message, PayloadPool, PeerId, Record, close_code};

/// Datagrams one `recvmmsg` reads and one `sendmmsg` sends: a burst of replies or of
/// packets costs one system call, and a read that returns fewer has emptied the socket (no
/// second call to learn that it is empty).
const IO_BURST: usize = 16;
/// Receive slots when the socket has UDP GRO: each holds a whole run of datagrams
/// ([`crate::udp_batch::GRO_SLOT`] bytes), so fewer are needed.
const GRO_BURST: usize = 8;
/// Bytes of one send slot: quiche writes packets up to the path's payload limit, at most
/// this.
const SEND_SLOT: usize = 1500;

/// Client tuning.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// When the client's outgoing batch flushes.
    pub batch: BatchPolicy,
    /// QUIC tuning.
    pub transport: TransportConfig,
    /// How long to wait for the QUIC and Noise handshakes.
    pub connect_timeout: Duration,
    /// How long `send` may block waiting for room before it fails.
    pub send_timeout: Duration,
    /// Bytes queued or unacknowledged before `send` blocks.
    pub send_capacity: usize,
    /// Received deliveries held before the client stops reading (back-pressure).
    pub inbox_capacity: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            batch: BatchPolicy::default(),
            transport: TransportConfig::default(),
            connect_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(30),
            send_capacity: 4 * 1024 * 1024,
            inbox_capacity: 65_536,
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Socket trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// QUIC configuration or connection setup failed.
    #[error("quic: {0}")]
    Quic(#[from] quiche::Error),
    /// The session failed.
    #[error("session: {0}")]
    Session(#[from] SessionError),
    /// The handshake did not finish in time.
    #[error("handshake with {0} did not finish within {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    /// `send` waited `send_timeout` for room.
    #[error("send blocked for {0:?}: the node is not accepting data")]
    SendTimeout(Duration),
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(String),
}

/// One client session.
pub struct Client {
    socket: UdpSocket,
    /// The local address quiche believes it uses (kept across `rebind`).
    local: SocketAddr,
    session: Session,
    queue: BatchQueue<Record>,
    inbox: VecDeque<Delivery>,
    records: Vec<Record>,
    node: PeerId,
    me: PeerId,
    seq: u64,
    cfg: ClientConfig,
    /// Receive slots for `recvmmsg`.
    rx: RecvBatch,
    /// Packets quiche wrote, with their length and destination, sent with one `sendmmsg`.
    out: Vec<(Vec<u8>, usize, SocketAddr)>,
    tx: SendBatch,
    /// Payload buffers of sealed messages and of deliveries handed back with
    /// [`Client::recycle`], reused by [`Client::try_send_slice`] and for the payloads of
    /// messages received (at most [`SPARE_PAYLOADS`] of at most [`SPARE_PAYLOAD_BYTES`]).
    spare: PayloadPool,
    /// Datagrams read since QUIC last had the chance to send, and when the first of them
    /// was read: [`Client::poll_ready`] holds back a packet that would carry only their
    /// acknowledgement ([`ACK_DELAY`]).
    unacked: u32,
    unacked_since: Option<Instant>,
}

/// How long [`Client::poll_ready`] may hold back the acknowledgement of one datagram while
/// no message is going out to carry it: well under QUIC's default `max_ack_delay` (25 ms),
/// which bounds it. A second datagram is acknowledged at once (RFC 9000, 13.2.2). Holding
/// it spares the node a datagram of its own for most replies, since the next message
/// usually carries it.
pub const ACK_DELAY: Duration = Duration::from_millis(1);

/// Payload buffers a client keeps for reuse: one full batch's worth.
const SPARE_PAYLOADS: usize = 1024;
/// Largest payload buffer kept for reuse, so the spares hold at most 4 MiB however large
/// the messages once were.
const SPARE_PAYLOAD_BYTES: usize = 4096;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("me", &self.me)
            .field("node", &self.node)
            .finish()
    }
}

impl Client {
    /// Connects to the node at `addr` and completes the Noise handshake.
    pub fn connect(
        addr: SocketAddr,
        identity: &Identity,
        cfg: ClientConfig,
    ) -> Result<Client, ClientError> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!())
        } else {
            "[::1]:0".parse().unwrap_or_else(|_| unreachable!())
        };
        let bind = if addr.ip().is_loopback() {
            bind
        } else if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        let gro = cfg.transport.gro && enable_gro(socket.as_raw_fd());
        let gso = cfg.transport.gso && gso_supported(socket.as_raw_fd());
        let local = socket.local_addr()?;
        let mut qcfg = session::client_config(&cfg.transport)?;
        let scid = cid::new_cid(0, &mut rand::thread_rng());
        let session = Session::connect(&mut qcfg, identity, &scid, local, addr, Instant::now())?;
        let mut c = Client {
            socket,
            local,
            session,
            queue: BatchQueue::new(cfg.batch),
            inbox: VecDeque::new(),
            records: Vec::new(),
            node: PeerId([0; 16]),
            me: identity.peer_id(),
            seq: 0,
            // A node sends datagrams up to the payload size this client advertises (1200
            // bytes during the handshake); a larger one would be cut short and dropped.
            rx: if gro {
                RecvBatch::with_gro(GRO_BURST)
            } else {
                RecvBatch::new(IO_BURST, cfg.transport.max_udp_payload.max(SEND_SLOT))
            },
            cfg,
            out: (0..IO_BURST)
                .map(|_| (vec![0; SEND_SLOT], 0, addr))
                .collect(),
            tx: SendBatch::new(gso),
            spare: PayloadPool::new(SPARE_PAYLOADS, SPARE_PAYLOAD_BYTES),
            unacked: 0,
            unacked_since: None,
        };
        let deadline = after(c.cfg.connect_timeout);
        loop {
            c.drive()?;
            if let Some(node) = c.session.take_ready() {
                c.node = node;
                return Ok(c);
            }
            if let Some(info) = c.session.close_info() {
                return Err(ClientError::Closed(describe(&info)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::ConnectTimeout(addr, c.cfg.connect_timeout));
            }
            c.wait_and_read(deadline - now)?;
        }
    }

    /// The node's authenticated peer id.
    pub fn node_id(&self) -> PeerId {
        self.node
    }

    /// This client's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// The client's UDP socket, for callers that wait on many clients at once (poll(2));
    /// after it is readable, call [`Client::poll`] with a zero timeout.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// When the client next needs [`Client::poll`] even without incoming data (QUIC timers,
    /// batch deadline, a held acknowledgement).
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.session.timeout_at(),
            self.queue.deadline(),
            self.unacked_since.map(|t| t + ACK_DELAY),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The UDP address this client currently sends from.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Queues a message to `dst` (any peer the node can reach, or the node itself) and
    /// returns its sequence number. Blocks while too much is queued.
    pub fn send(&mut self, dst: PeerId, payload: Vec<u8>) -> Result<u64, ClientError> {
        self.seq += 1;
        let seq = self.seq;
        self.send_with_seq(dst, seq, payload)?;
        Ok(seq)
    }

    /// Like [`Client::send`] with a caller-chosen sequence number.
    pub fn send_with_seq(
        &mut self,
        dst: PeerId,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        let start = Instant::now();
        while self.is_full() {
            self.check_open()?;
            if start.elapsed() >= self.cfg.send_timeout {
                return Err(ClientError::SendTimeout(self.cfg.send_timeout));
            }
            self.poll(Duration::from_millis(5))?;
        }
        self.check_open()?;
        self.queue_message(dst, seq, payload)
    }

    /// Whether the client holds `send_capacity` bytes the node has not taken.
    fn is_full(&self) -> bool {
        self.queue.bytes() + self.session.pending_bytes() >= self.cfg.send_capacity
    }

    fn queue_message(
        &mut self,
        dst: PeerId,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.queue_message_at(dst, seq, payload, Instant::now())
    }

    fn queue_message_at(
        &mut self,
        dst: PeerId,
        seq: u64,
        payload: Vec<u8>,
        now: Instant,
    ) -> Result<(), ClientError> {
        let r = Record::Message(Message {
            dst,
            src: self.me,
            seq,
            payload,
        });
        let size = r.encoded_len();
        self.queue.push(r, size, now);
        if self.queue.is_due(now) && self.cfg.batch.timeout > Duration::ZERO {
            self.flush_due(false)?;
        }
        Ok(())
    }

    /// Queues a message without blocking: returns `Ok(false)`, leaving nothing queued, when
    /// the client already holds `send_capacity` bytes that the node has not taken
    /// (back-pressure), after first sealing what was queued so QUIC can take what it may.
    pub fn try_send_with_seq(
        &mut self,
        dst: PeerId,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<bool, ClientError> {
        if !self.make_room()? {
            return Ok(false);
        }
        self.queue_message(dst, seq, payload)?;
        Ok(true)
    }

    /// Whether one more message may be queued without blocking: fails on a closed
    /// connection; when full, seals what was queued first so QUIC can take what it may.
    fn make_room(&mut self) -> Result<bool, ClientError> {
        self.check_open()?;
        if self.is_full() {
            self.flush()?;
        }
        Ok(!self.is_full())
    }

    /// [`Client::try_send_with_seq`] for a caller that keeps its payload in a buffer of its
    /// own: the bytes are copied into a buffer a sealed message left behind, so a steady
    /// sender allocates nothing per message. `now` is the caller's clock reading (one per
    /// pass over many clients, instead of one per message); it starts the batch timeout.
    ///
    /// ```no_run
    /// use shards::client::{Client, ClientConfig};
    /// use shards::identity::Identity;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut c = Client::connect("127.0.0.1:4433".parse()?, &Identity::generate()?, ClientConfig::default())?;
    /// let node = c.node_id();
    /// let mut body = [0u8; 64];
    /// for seq in 0..1000u64 {
    ///     body[..8].copy_from_slice(&seq.to_le_bytes());
    ///     if !c.try_send_slice(node, seq, &body, std::time::Instant::now())? {
    ///         break; // back-pressure: the node has not taken what this client holds
    ///     }
    /// }
    /// c.poll_ready(true)?; // read, then seal and send what was queued
    /// # Ok(()) }
    /// ```
    pub fn try_send_slice(
        &mut self,
        dst: PeerId,
        seq: u64,
        payload: &[u8],
        now: Instant,
    ) -> Result<bool, ClientError> {
        if !self.make_room()? {
            return Ok(false);
        }
        let body = self.spare.copy_of(payload);
        self.queue_message_at(dst, seq, body, now)?;
        Ok(true)
    }

    /// Runs QUIC's timers if they are due (loss recovery, idle timeout, close); whether
    /// they were.
    fn run_timers(&mut self) -> bool {
        let due = self
            .session
            .timeout_at()
            .is_some_and(|t| t <= Instant::now());
        if due {
            self.session.on_timeout();
        }
        due
    }

    fn check_open(&self) -> Result<(), ClientError> {
        if let Some(info) = self.session.close_info() {
            return Err(ClientError::Closed(describe(&info)));
        }
        if self.session.is_closing() {
            return Err(ClientError::Closed("closing".into()));
        }
        Ok(())
    }

    /// Seals everything queued now, regardless of the batch timeout, and sends it.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.flush_due(true)
    }

    /// Whether a batch is to be sealed now: something is queued and it is due (or `force`).
    fn seals(&self, force: bool, now: Instant) -> bool {
        !self.queue.is_empty() && (force || self.queue.is_due(now))
    }

    fn flush_due(&mut self, force: bool) -> Result<(), ClientError> {
        let now = Instant::now();
        let mut sealed_any = false;
        while self.seals(force, now) {
            sealed_any = true;
            // Sealed where the records lie in the queue, then dropped from it.
            let n = self.queue.next_batch_len();
            let sent = self
                .session
                .queue_batch(self.queue.front_items(n).map(|(r, _)| r));
            let spare = &mut self.spare;
            self.queue.pop_front_n(n, |r, _| {
                if let Record::Message(m) = r {
                    spare.put(m.payload);
                }
            });
            sent?;
        }
        // One stream write for all the frames sealed above.
        if sealed_any {
            self.session.flush_stream()?;
        }
        self.drive()
    }

    /// Waits up to `timeout` for a delivery (a message, or an error about one we sent).
    /// Fails with [`ClientError::Closed`] once the connection is closed and nothing is left.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        let deadline = after(timeout);
        loop {
            if let Some(d) = pop_front_rewound(&mut self.inbox) {
                return Ok(Some(d));
            }
            // A closing connection still needs its timers run until it is closed.
            if self.session.is_closed() {
                let why = self
                    .session
                    .close_info()
                    .map_or_else(|| "closed".into(), |i| describe(&i));
                return Err(ClientError::Closed(why));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.poll(deadline - now)?;
        }
    }

    /// A delivery already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        pop_front_rewound(&mut self.inbox)
    }

    /// Hands back the payload of a delivery once it has been read, so the next message
    /// received or sent reuses its buffer instead of allocating one (the client keeps at
    /// most 1024 buffers of at most 4 KiB; others are dropped).
    ///
    /// ```no_run
    /// use shards::client::{Client, ClientConfig};
    /// use shards::endpoint::Delivery;
    /// use shards::identity::Identity;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut c = Client::connect("127.0.0.1:4433".parse()?, &Identity::generate()?, ClientConfig::default())?;
    /// while let Some(Delivery::Message { payload, .. }) = c.recv(std::time::Duration::from_millis(10))? {
    ///     println!("{} bytes", payload.len());
    ///     c.recycle(payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn recycle(&mut self, payload: Vec<u8>) {
        self.spare.put(payload);
    }

    /// Runs I/O for at most `timeout`: flushes due batches, reads datagrams, runs timers.
    /// Returns early once something was delivered.
    pub fn poll(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = after(timeout);
        let before = self.inbox.len();
        loop {
            self.poll_ready(true)?;
            if self.inbox.len() > before || self.session.is_closed() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            self.wait_and_read(deadline - now)?;
        }
    }

    /// One service turn without waiting, for a caller that waits on many clients' sockets
    /// with one `poll(2)` ([`Client::raw_fd`]): runs due timers, reads the socket only if
    /// `readable` (what `poll(2)` reported; reading an empty socket costs a system call to
    /// learn nothing), delivers what arrived, then seals what is due and sends. Reading
    /// first lets the acknowledgement of what was read ride in the same packets as the
    /// messages queued since the last turn, instead of an ACK-only datagram of its own;
    /// when nothing is queued, the acknowledgement of a single datagram waits up to
    /// [`ACK_DELAY`] for a message to ride with ([`Client::next_deadline`] includes that
    /// deadline). `poll_ready(true)` is `poll(Duration::ZERO)`.
    pub fn poll_ready(&mut self, readable: bool) -> Result<(), ClientError> {
        // Timers run on every call, so a caller that services many clients in turn never
        // leaves one without loss recovery or idle detection.
        let timed_out = self.run_timers();
        if readable {
            self.read_socket()?;
        }
        self.read_session()?;
        let now = Instant::now();
        let force = self.cfg.batch.timeout.is_zero();
        // With nothing of ours to send, a lone datagram's acknowledgement waits (up to
        // ACK_DELAY) for the next message to carry it. Everything else goes at once, except
        // stream bytes QUIC already took but held for want of congestion window, which
        // wait with it (at most ACK_DELAY).
        let hold = !self.seals(force, now)
            && !timed_out
            && self.unacked == 1
            && self.session.pending_bytes() == 0
            && self.session.quic().is_established()
            && !self.session.is_closing()
            && self.unacked_since.is_some_and(|t| now < t + ACK_DELAY);
        if hold {
            return Ok(());
        }
        self.flush_due(force)
    }

    /// Waits for a datagram, the QUIC timer or the batch deadline, whichever comes first.
    fn wait_and_read(&mut self, max: Duration) -> Result<(), ClientError> {
        let now = Instant::now();
        let mut wait = max;
        if let Some(t) = self.next_deadline() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        self.run_timers();
        self.read_socket()?;
        self.read_session()?;
        self.drive()
    }

    /// Reads what the socket holds, [`IO_BURST`] datagrams (or [`GRO_BURST`] GRO runs) per
    /// `recvmmsg`, until a call returns fewer (the socket was empty then).
    fn read_socket(&mut self) -> Result<(), ClientError> {
        let fd = self.socket.as_raw_fd();
        loop {
            match self.rx.recv(fd) {
                Ok(n) => {
                    let local = self.local;
                    for (from, pkt, truncated) in self.rx.iter_mut() {
                        self.unacked = self.unacked.saturating_add(1);
                        self.unacked_since.get_or_insert_with(Instant::now);
                        // Cut short: larger than this client allows; QUIC would drop it.
                        if let (Some(from), false) = (from, truncated) {
                            self.session.recv(pkt, from, local);
                        }
                    }
                    if n < self.rx.slots() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ICMP errors surface here on Linux; QUIC's timers handle the loss.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn read_session(&mut self) -> Result<(), ClientError> {
        while self.inbox.len() < self.cfg.inbox_capacity {
            self.records.clear();
            let n = self
                .session
                .read_records_pooled(&mut self.records, &mut self.spare, 1)?;
            if n == 0 {
                break;
            }
            for r in self.records.drain(..) {
                self.inbox.push_back(match r {
                    Record::Message(m) => Delivery::Message {
                        from: m.src,
                        seq: m.seq,
                        payload: m.payload,
                    },
                    Record::Error(e) => Delivery::Error(e),
                });
            }
        }
        // The node finished its direction: finish ours, close once everything is acked.
        if self.session.peer_finished() && self.session.is_open() {
            self.flush()?;
            self.session.finish();
        }
        if self.session.is_complete() {
            self.session.close(close_code::NO_ERROR, "done");
        }
        Ok(())
    }

    /// Runs the QUIC send loop until quiche has nothing more to send, handing the kernel
    /// up to [`IO_BURST`] packets per `sendmmsg`. Packets a full socket buffer does not
    /// take are dropped (QUIC's loss recovery sends their data again).
    fn drive(&mut self) -> Result<(), ClientError> {
        let fd = self.socket.as_raw_fd();
        self.unacked = 0;
        self.unacked_since = None;
        loop {
            let mut n = 0;
            for (buf, len, to) in self.out.iter_mut() {
                match self.session.send(buf) {
                    Some((l, info)) => {
                        *len = l;
                        *to = info.to;
                        n += 1;
                    }
                    None => break,
                }
            }
            let mut done = 0;
            while done < n {
                let burst = self
                    .out
                    .iter()
                    .take(n)
                    .skip(done)
                    .map(|(buf, len, to)| (*to, buf.get(..*len).unwrap_or(&[])));
                match self.tx.send(fd, burst) {
                    Ok(0) => break,
                    Ok(k) => done += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    // An ICMP error from an earlier datagram: this one is lost, go on.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => done += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            if n < IO_BURST {
                return Ok(());
            }
        }
    }

    /// Moves to a new UDP socket (a new source port) without telling QUIC, as a NAT
    /// rebinding does. Returns the new local address.
    pub fn rebind(&mut self) -> Result<SocketAddr, ClientError> {
        let s = UdpSocket::bind(SocketAddr::new(self.local.ip(), 0))?;
        s.set_nonblocking(true)?;
        // The receive slots were sized for GRO runs or not; the new socket must match.
        if self.rx.gro() && !enable_gro(s.as_raw_fd()) {
            self.rx = RecvBatch::new(IO_BURST, self.cfg.transport.max_udp_payload.max(SEND_SLOT));
        }
        self.socket = s;
        Ok(self.socket.local_addr()?)
    }

    /// The session, for tests that need to forge frames.
    #[doc(hidden)]
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// How the connection ended, if it did.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.session.close_info()
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Starts a graceful close without waiting: flushes what is queued and finishes the
    /// session stream. Keep calling [`Client::poll`] until [`Client::is_closed`], then (or
    /// at the caller's deadline) [`Client::abort`]. Lets a caller close many clients at
    /// once under one deadline.
    pub fn start_close(&mut self) -> Result<(), ClientError> {
        if self.session.is_open() {
            self.flush()?;
            self.session.finish();
        }
        self.drive()
    }

    /// Closes the connection now (`NO_ERROR`, reason `client closing`) if it is not closed
    /// yet, and sends the close.
    pub fn abort(&mut self) {
        if !self.session.is_closed() {
            self.session.close(close_code::NO_ERROR, "client closing");
            let _ = self.drive();
        }
    }

    /// Flushes what is queued, finishes the session stream and waits (up to `timeout`) for
    /// the node to finish too, collecting what it still sends; returns those deliveries.
    pub fn close(mut self, timeout: Duration) -> Result<Vec<Delivery>, ClientError> {
        let deadline = after(timeout);
        if self.session.is_open() {
            self.flush()?;
            self.session.finish();
        }
        while !self.session.is_closed() && Instant::now() < deadline {
            self.poll(deadline.saturating_duration_since(Instant::now()))?;
        }
        if !self.session.is_closed() {
            self.session.close(close_code::NO_ERROR, "client closing");
            let _ = self.drive();
        }
        Ok(self.inbox.into_iter().collect())
    }
}

/// `d` from now ([`crate::deadline_after`]).
fn after(d: Duration) -> Instant {
    crate::deadline_after(Instant::now(), d)
}

fn describe(info: &CloseInfo) -> String {
    format!(
        "{} closed with {} code {:#x}{}{}",
        if info.by_peer { "peer" } else { "we" },
        if info.is_app {
            "application"
        } else {
            "transport"
        },
        info.code,
        if info.reason.is_empty() { "" } else { ": " },
        info.reason
    )
}
