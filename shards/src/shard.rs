//! The shard driver: one glommio executor pinned to one core, owning one UDP socket of the
//! SO_REUSEPORT group and its end of the cross-shard mesh, feeding an
//! [`Endpoint`] and carrying out what it asks for.
//!
//! Everything the shard decides lives in [`crate::endpoint`]; this module only moves
//! datagrams, commands and cross-shard records in and out, sleeps until the endpoint's
//! next deadline, and reads the clock for it. Shard-local state lives in a `RefCell`
//! inside an `Rc`: nothing here is shared with other threads except atomic counters
//! ([`ShardStats`]), the peer directory and the channels.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::UdpSocket;
use tracing::Instrument;

use crate::endpoint::{Endpoint, EndpointError, Transmit};
use crate::hist::SharedHistograms;
use crate::sockstat::{Notify, kernel_queue_delay, socket_inode};
use crate::udp_batch::{RecvBatch, SendBatch, enable_gro, gso_supported};

pub use crate::endpoint::{
    App, Command, ConnectionSlots, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_STALL_TIMEOUT, Delivery, Hop,
    MemoryBudget, PeerActivity, PeerDirectory, PoolConfig, ShardConfig, ShardMsg, ShardStats,
};

/// Pause after a failed UDP receive before trying again.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(1);
/// One datagram in this many has its time in the kernel's receive queue measured
/// (SIOCGSTAMPNS costs a system call).
const RX_DELAY_SAMPLE: u64 = 64;
/// Datagrams (or GRO runs) read with one `recvmmsg`.
const RECV_BURST: usize = 32;
/// Most datagrams handled as one turn before its replies are sealed and sent. A GRO burst
/// from one busy source (a proxy, a load generator with many connections on one socket)
/// can hold over a thousand datagrams; handled as one turn, the first reply would wait
/// for the last datagram's work (milliseconds). Batches still fill: a turn of this many
/// datagrams carries hundreds of messages.
const TURN_DATAGRAMS: usize = 64;
/// Datagrams handed to one `sendmmsg`.
const SEND_BURST: usize = 64;
/// How long the timer task sleeps when the endpoint has no deadline at all.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Why a shard stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// The shard's UDP socket could not be used.
    #[error("shard socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The endpoint could not be built (TLS or QUIC configuration).
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The cross-shard mesh could not be joined.
    #[error("cross-shard mesh join failed")]
    Mesh,
}

/// A started shard's handle, held by the engine.
#[derive(Debug)]
pub struct ShardHandle {
    /// Commands into the shard.
    pub commands: flume::Sender<Command>,
    /// Starts the shard's drain (the deadline) ahead of any command: a shutdown must not
    /// wait behind commands that wait for room, nor for room in the command channel.
    pub stop: flume::Sender<Instant>,
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// The shard's published histograms.
    pub histograms: SharedHistograms,
}

/// Runs one shard to completion inside the current glommio executor. `socket` is this
/// shard's member of the reuseport group. `ready` is called once, when the shard serves
/// (its endpoint is built and the mesh joined) or failed to. Returns when a shutdown
/// finished.
///
/// `stop` starts the drain with its deadline, ahead of queued commands ([`ShardHandle::stop`]).
///
/// `busy_poll`: for this long after its last datagram, a shard whose socket is empty
/// reads it again instead of waiting through the executor, unless a timer of its
/// endpoint falls due first. Each wait through the executor costs io_uring submissions
/// (a peek, the executor's preemption timers armed and cancelled) and a wake-up, several
/// times a message's own work on a VM; between datagrams that arrive tens of
/// microseconds apart the shard then spends its core on those instead of on messages.
/// While it polls, its other tasks (timers, commands, cross-shard records) wait, at most
/// `busy_poll`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: ShardConfig,
    busy_poll: Duration,
    socket: std::net::UdpSocket,
    commands: flume::Receiver<Command>,
    stop: flume::Receiver<Instant>,
    mesh: Option<MeshBuilder<ShardMsg, Full>>,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), ShardError> {
    let span = tracing::info_span!("shard", shard = cfg.index);
    drive(
        cfg,
        busy_poll,
        socket,
        commands,
        stop,
        mesh,
        ready,
        span.clone(),
    )
    .instrument(span)
    .await
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    cfg: ShardConfig,
    busy_poll: Duration,
    socket: std::net::UdpSocket,
    commands: flume::Receiver<Command>,
    stop: flume::Receiver<Instant>,
    mesh: Option<MeshBuilder<ShardMsg, Full>>,
    ready: impl FnOnce(Result<(), String>),
    span: tracing::Span,
) -> Result<(), ShardError> {
    let stats = cfg.stats.clone();
    // Receive slots fit the largest datagram QUIC is allowed to send us, or with GRO a
    // coalesced run (then `slot` is unused).
    let slot = cfg.transport.max_udp_payload.max(1500) + 64;
    let gro = cfg.transport.gro && enable_gro(socket.as_raw_fd());
    if cfg.transport.gro && !gro {
        tracing::info!("UDP GRO not supported by this kernel; one datagram per recvmmsg slot");
    }
    let gso = cfg.transport.gso && gso_supported(socket.as_raw_fd());
    if cfg.transport.gso && !gso {
        tracing::info!("UDP GSO not supported by this kernel; one datagram per sendmmsg slot");
    }
    let started = (|| -> Result<Endpoint, ShardError> {
        let local_addr = socket.local_addr().map_err(ShardError::Socket)?;
        if let Some(ino) = socket_inode(socket.as_raw_fd()) {
            stats.socket_inode.store(ino, Ordering::Relaxed);
        }
        let seed = rand::random::<u64>();
        Ok(Endpoint::new(
            cfg,
            local_addr,
            seed,
            Instant::now(),
            SystemTime::now(),
        )?)
    })();
    let endpoint = match started {
        Ok(ep) => ep,
        Err(e) => {
            ready(Err(e.to_string()));
            return Err(e);
        }
    };
    let (senders, receivers) = match mesh {
        Some(m) => match m.join().await {
            Ok((s, r)) => (Some(s), Some(r)),
            Err(_) => {
                ready(Err(ShardError::Mesh.to_string()));
                return Err(ShardError::Mesh);
            }
        },
        None => (None, None),
    };
    // SAFETY: the fd comes from a std socket we own; ownership moves to glommio.
    let socket = unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) };
    let shard = Rc::new(Shard {
        ep: RefCell::new(endpoint),
        socket,
        senders,
        stats,
        wake: flume::bounded(1),
        timer_at: Cell::new(None),
        room: Notify::default(),
        hops: Notify::default(),
        send_batch: RefCell::new(SendBatch::new(gso)),
        outbox: RefCell::new(VecDeque::with_capacity(SEND_BURST)),
        busy_poll,
    });
    ready(Ok(()));

    let mut tasks = Vec::new();
    // Kept after the mesh tasks end, to account for what other shards sent too late.
    let mut mesh_rx = Vec::new();
    if let Some(mut receivers) = receivers {
        for (_, rx) in receivers.streams() {
            let rx = Rc::new(rx);
            mesh_rx.push(rx.clone());
            let sh = shard.clone();
            let task = async move {
                loop {
                    // Stop taking from the mesh while earlier records still wait for room:
                    // the channel then fills and the sending shard pauses its senders.
                    loop {
                        let wait = sh.room.wait();
                        if sh.ep.borrow().accepts_hops() {
                            break;
                        }
                        wait.await;
                    }
                    let Some(msg) = rx.recv().await else { break };
                    sh.ep.borrow_mut().handle_hop(Instant::now(), msg);
                    sh.settle().await;
                }
            };
            tasks.push(glommio::spawn_local(task.instrument(span.clone())));
        }
    }
    {
        let sh = shard.clone();
        tasks.push(glommio::spawn_local(
            async move { sh.recv_loop(slot, gro).await }.instrument(span.clone()),
        ));
    }
    if shard.senders.is_some() {
        let sh = shard.clone();
        tasks.push(glommio::spawn_local(
            async move { sh.hop_loop().await }.instrument(span.clone()),
        ));
    }
    {
        let sh = shard.clone();
        tasks.push(glommio::spawn_local(
            async move { sh.timer_loop().await }.instrument(span.clone()),
        ));
    }
    // The command loop is the shard's lifetime: it ends after a drain.
    shard.command_loop(commands, stop).await;
    for t in tasks {
        drop(t.cancel());
    }
    // Records other shards handed over that this shard will never route, and records
    // this shard had for the others, are counted as dropped (shutting down), not lost
    // with the channels. (A record another shard, itself still draining, sends after this
    // last look and before the channel closes, once the cancelled tasks and this list
    // are gone, is still lost uncounted; its sender counted it relayed.)
    let now = Instant::now();
    for rx in &mesh_rx {
        while let Some(Some(msg)) = futures_lite::future::poll_once(rx.recv()).await {
            shard.ep.borrow_mut().handle_hop_failed(now, msg);
        }
    }
    loop {
        let next = shard.ep.borrow_mut().poll_hop();
        let Some((_, msg)) = next else { break };
        shard.ep.borrow_mut().handle_hop_failed(now, msg);
    }
    shard.ep.borrow_mut().publish(Instant::now());
    if let Some(s) = &shard.senders {
        s.close();
    }
    Ok(())
}

struct Shard {
    ep: RefCell<Endpoint>,
    socket: UdpSocket,
    senders: Option<Senders<ShardMsg>>,
    stats: Arc<ShardStats>,
    /// Wakes the timer task when the endpoint may have an earlier deadline.
    wake: (flume::Sender<()>, flume::Receiver<()>),
    /// When the timer task is due to wake up (None while it is working).
    timer_at: Cell<Option<Instant>>,
    /// Signalled when records waiting for room moved (the command and mesh tasks wait).
    room: Notify,
    /// Signalled when the endpoint has records for other shards (the hop task waits).
    hops: Notify,
    /// `sendmmsg` headers, reused.
    send_batch: RefCell<SendBatch>,
    /// Datagrams taken from the endpoint for the next `sendmmsg` (kept to reuse its memory).
    outbox: RefCell<VecDeque<Transmit>>,
    /// How long to keep reading an empty socket after the last datagram ([`run`]).
    busy_poll: Duration,
}

impl Shard {
    /// After any input: pass on the endpoint's signals, wake the timer task if the next
    /// deadline moved earlier than the one it sleeps towards, and send what is due.
    async fn settle(&self) {
        {
            let mut ep = self.ep.borrow_mut();
            if ep.take_room_signal() {
                self.room.notify();
            }
            if ep.hops_pending() {
                self.hops.notify();
            }
            if let (Some(next), Some(at)) = (ep.poll_timeout(), self.timer_at.get())
                && next < at
            {
                let _ = self.wake.0.try_send(());
            }
        }
        self.flush_outbox().await;
    }

    /// Reads up to [`RECV_BURST`] queued datagrams, or GRO runs, with one `recvmmsg` and
    /// hands them to the endpoint in turns of at most [`TURN_DATAGRAMS`] (replies to a turn
    /// share batches; each turn's are sent before the next turn starts). Only when
    /// the socket is empty does it wait, with a one-byte peek through the executor (which
    /// does not consume the datagram), so a busy shard spends one system call per turn on
    /// receiving. Every datagram is read by `recvmmsg`, so a GRO socket never has a run
    /// read without its segment size. Yields to the other tasks when its time slice is used
    /// up, so timers run under a flood.
    async fn recv_loop(self: Rc<Self>, slot: usize, gro: bool) {
        let mut peek = [0u8; 1];
        let mut burst = if gro {
            RecvBatch::with_gro(RECV_BURST)
        } else {
            RecvBatch::new(RECV_BURST, slot)
        };
        let fd = self.socket.as_raw_fd();
        let mut count = 0u64;
        // Datagram count at which the next receive delay is sampled (bursts move the count
        // by more than one, so a modulus would skip samples).
        let mut next_sample = 0u64;
        // Until when an empty socket is read again rather than waited for ([`run`]).
        let mut poll_until = Instant::now();
        loop {
            self.stats.receive_calls.fetch_add(1, Ordering::Relaxed);
            match burst.recv(fd) {
                Ok(_) => {
                    if !self.busy_poll.is_zero() {
                        poll_until = Instant::now() + self.busy_poll;
                    }
                    if count >= next_sample {
                        next_sample = count + RX_DELAY_SAMPLE;
                        if let Some(d) = kernel_queue_delay(fd) {
                            self.ep.borrow_mut().record_receive_delay(d);
                        }
                    }
                    let n = burst.datagrams();
                    count += n as u64;
                    let stats = &self.stats;
                    let mut datagrams = burst.iter_mut().filter_map(|(from, pkt, truncated)| {
                        if truncated || from.is_none() {
                            stats.truncated_datagrams.fetch_add(1, Ordering::Relaxed);
                            stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                        from.map(|f| (f, pkt))
                    });
                    // A turn per TURN_DATAGRAMS, each sealed and sent before the next.
                    for _ in 0..n.div_ceil(TURN_DATAGRAMS).saturating_sub(1) {
                        self.ep.borrow_mut().handle_datagrams(
                            Instant::now(),
                            datagrams.by_ref().take(TURN_DATAGRAMS),
                        );
                        self.settle().await;
                    }
                    self.ep
                        .borrow_mut()
                        .handle_datagrams(Instant::now(), datagrams);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.keep_polling(poll_until) {
                        glommio::yield_if_needed().await;
                        continue;
                    }
                    // Empty: wait until a datagram is queued.
                    self.stats.receive_calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.socket.peek_from(&mut peek).await {
                        let e = std::io::Error::from(e);
                        // A queued ICMP error is reported (and cleared) here; anything
                        // else is unexpected but must not spin.
                        if e.kind() != std::io::ErrorKind::ConnectionRefused {
                            tracing::warn!("udp recv failed: {e}");
                            glommio::timer::sleep(RECV_ERROR_PAUSE).await;
                        }
                    }
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => {
                    tracing::warn!("udp recv failed: {e}");
                    glommio::timer::sleep(RECV_ERROR_PAUSE).await;
                }
            }
            self.settle().await;
            glommio::yield_if_needed().await;
        }
    }

    /// Whether an empty socket should be read again at once instead of waited for: until
    /// `until`, and only while no endpoint timer is due (the timer task must run it).
    fn keep_polling(&self, until: Instant) -> bool {
        let now = Instant::now();
        if now >= until {
            return false;
        }
        match self.ep.borrow_mut().poll_timeout() {
            Some(t) if t <= now => false,
            _ => {
                std::hint::spin_loop();
                true
            }
        }
    }

    /// Moves records bound for other shards into the mesh, in order, waiting (without
    /// polling) while a channel is full.
    async fn hop_loop(self: Rc<Self>) {
        let Some(senders) = &self.senders else { return };
        loop {
            let next = self.ep.borrow_mut().poll_hop();
            let Some((shard, msg)) = next else {
                let wait = self.hops.wait();
                if !self.ep.borrow().hops_pending() {
                    wait.await;
                }
                continue;
            };
            match senders.send_to(shard, msg).await {
                Ok(()) => self.ep.borrow_mut().handle_hop_sent(Instant::now()),
                Err(glommio::GlommioError::Closed(glommio::ResourceType::Channel(msg))) => {
                    // The other shard has stopped (drain): report what cannot go there.
                    self.ep.borrow_mut().handle_hop_failed(Instant::now(), msg);
                }
                Err(e) => {
                    tracing::warn!("cross-shard send to {shard} failed: {e}");
                    self.stats
                        .dropped_shutting_down
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            self.settle().await;
        }
    }

    async fn timer_loop(self: Rc<Self>) {
        loop {
            let next = self.ep.borrow_mut().poll_timeout();
            let now = Instant::now();
            let at = next.unwrap_or(now + IDLE_WAKE);
            let wait = at.saturating_duration_since(now);
            if !wait.is_zero() {
                self.timer_at.set(Some(at));
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
            self.ep.borrow_mut().handle_timeout(Instant::now());
            self.settle().await;
        }
    }

    async fn command_loop(
        &self,
        commands: flume::Receiver<Command>,
        stop: flume::Receiver<Instant>,
    ) {
        loop {
            // Stop taking commands while earlier ones wait for room (back-pressure to the
            // app); a stop ends that wait, since draining refuses what waits.
            loop {
                if let Ok(deadline) = stop.try_recv() {
                    self.begin_drain(deadline, &commands);
                }
                let wait = self.room.wait();
                if self.ep.borrow().accepts_commands() {
                    break;
                }
                let stopping = futures_lite::future::or(
                    async {
                        wait.await;
                        None
                    },
                    async { Some(stopped(&stop).await) },
                )
                .await;
                if let Some(deadline) = stopping {
                    self.begin_drain(deadline, &commands);
                }
            }
            let draining = self.ep.borrow().draining();
            let cmd = match draining {
                Some(deadline) => {
                    let now = Instant::now();
                    if self.ep.borrow_mut().drain_done(now) || now >= deadline {
                        // Commands that came after the drain began are refused (and
                        // counted) by the draining endpoint, not dropped with the channel.
                        while let Ok(cmd) = commands.try_recv() {
                            self.ep.borrow_mut().handle_command(Instant::now(), cmd);
                        }
                        self.ep.borrow_mut().close_all(Instant::now());
                        self.flush_outbox().await;
                        return;
                    }
                    self.settle().await;
                    match futures_lite::future::or(
                        async { commands.recv_async().await.ok() },
                        async {
                            glommio::timer::sleep(crate::endpoint::DRAIN_POLL).await;
                            None
                        },
                    )
                    .await
                    {
                        Some(c) => c,
                        None => continue,
                    }
                }
                None => {
                    let next = futures_lite::future::or(
                        async { commands.recv_async().await.ok() },
                        async {
                            Some(Command::Shutdown {
                                deadline: stopped(&stop).await,
                            })
                        },
                    )
                    .await;
                    match next {
                        Some(c) => c,
                        // The engine went away without a shutdown: drain with a short
                        // deadline.
                        None => Command::Shutdown {
                            deadline: Instant::now() + Duration::from_secs(2),
                        },
                    }
                }
            };
            {
                let mut ep = self.ep.borrow_mut();
                ep.handle_command(Instant::now(), cmd);
                ep.handle_timeout(Instant::now());
            }
            let _ = self.wake.0.try_send(());
            self.settle().await;
        }
    }

    /// Starts the drain (a stop from the runtime) and lets the other tasks see it. Every
    /// command already queued was sent before the stop (the application's sends end
    /// before a shutdown starts), so they are taken first, in order: sends to peers
    /// without room wait behind what already waits, and the drain then flushes them or
    /// counts them, instead of refusing them for a drain they preceded.
    fn begin_drain(&self, deadline: Instant, commands: &flume::Receiver<Command>) {
        let mut ep = self.ep.borrow_mut();
        while let Ok(cmd) = commands.try_recv() {
            ep.handle_command(Instant::now(), cmd);
        }
        ep.handle_command(Instant::now(), Command::Shutdown { deadline });
        ep.handle_timeout(Instant::now());
        let _ = self.wake.0.try_send(());
    }

    /// Sends what the endpoint has queued, up to [`SEND_BURST`] datagrams per `sendmmsg`;
    /// when the socket buffer is full, waits for room through glommio with one datagram.
    async fn flush_outbox(&self) {
        let fd = self.socket.as_raw_fd();
        loop {
            // Send a burst; keep the first datagram the kernel refused (no borrow of the
            // shared outbox is held across the await below).
            let refused = {
                let mut pending = self.outbox.borrow_mut();
                let mut ep = self.ep.borrow_mut();
                while pending.len() < SEND_BURST {
                    match ep.poll_transmit() {
                        Some(t) => pending.push_back(t),
                        None => break,
                    }
                }
                if pending.is_empty() {
                    return;
                }
                let sent = self.send_batch.borrow_mut().send_flows(
                    fd,
                    pending.iter().map(|t| (t.to, t.flow, t.data.as_slice())),
                );
                match sent {
                    Ok(k) => {
                        let (gso_sends, gso_datagrams) = self.send_batch.borrow().last_coalesced();
                        self.stats
                            .gso_sends
                            .fetch_add(gso_sends as u64, Ordering::Relaxed);
                        self.stats
                            .gso_datagrams
                            .fetch_add(gso_datagrams as u64, Ordering::Relaxed);
                        self.stats.send_calls.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .datagrams_out
                            .fetch_add(k as u64, Ordering::Relaxed);
                        let k = k.min(pending.len());
                        for t in pending.drain(..k) {
                            ep.recycle(t.data);
                        }
                        None
                    }
                    Err(e) => pending.pop_front().map(|t| (t, e)),
                }
            };
            let Some((t, e)) = refused else { continue };
            if e.kind() == std::io::ErrorKind::WouldBlock {
                // The socket buffer is full: wait for room with this one.
                match self.socket.send_to(&t.data, t.to).await {
                    Ok(_) => {
                        self.stats.send_calls.fetch_add(1, Ordering::Relaxed);
                        self.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!("udp send to {} failed: {e}", t.to),
                }
            } else {
                // This datagram cannot be sent (e.g. its destination is unreachable).
                tracing::debug!("udp send to {} failed: {e}", t.to);
            }
            self.ep.borrow_mut().recycle(t.data);
        }
    }
}

/// The deadline of a stop from the runtime; never, once the runtime is gone (a dropped
/// runtime's shards drain through their closed command channel instead).
async fn stopped(stop: &flume::Receiver<Instant>) -> Instant {
    match stop.recv_async().await {
        Ok(deadline) => deadline,
        Err(_) => futures_lite::future::pending().await,
    }
}
