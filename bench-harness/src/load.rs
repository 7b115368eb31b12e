//! The open-loop load driver.
//!
//! Every message has an intended send time on a fixed-rate schedule (connection `i` of `n`:
//! `start + (k + i/n) / rate`, so the connections interleave into one evenly spaced stream
//! instead of sending in bursts of `n`), and its latency is measured from that intended
//! time, not from when the harness got around to sending it. A stall anywhere (engine, network, harness) then
//! shows in the histogram instead of silently lowering the offered load (no coordinated
//! omission). How far the harness itself fell behind its schedule is measured separately
//! (`lag`), so a saturated load generator is never mistaken for a slow engine.
//!
//! Connections are spread over `threads` threads, each pinned to its own core and driving its
//! connections with the engine's client ([`shards::client::Client`]) without ever blocking
//! on one of them: a message due while its connection already holds
//! [`SEND_CAPACITY`] bytes the engine has not taken is *refused* (counted, not sent), every
//! pass services every connection (QUIC timers, socket, inbox), and one deadline shared by
//! all threads (`warmup + duration + drain` after the start) ends the run whatever the
//! engine does, so a saturated or stopped engine yields a "saturated" verdict in bounded
//! time instead of a wedged harness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shards::batch::BatchPolicy;
use shards::client::{Client, ClientConfig, ClientError};
use shards::identity::Identity;
use shards::shard::Delivery;
use shards::wire::PeerId;

use crate::summary::QuicStats;

/// Bytes at the start of every payload: sequence number and intended send time.
pub const PAYLOAD_HEADER: usize = 16;
/// Highest latency tracked: one minute, in nanoseconds.
const MAX_NANOS: u64 = 60_000_000_000;
/// Bytes one connection may hold queued or not yet taken by QUIC before the harness refuses
/// its due messages: small, so back-pressure shows as refusals within milliseconds.
pub const SEND_CAPACITY: usize = 64 * 1024;
/// Messages one connection may send per pass, so one far-behind connection cannot keep the
/// others from being serviced.
const SENDS_PER_PASS: usize = 1024;
/// Time allowed for closing every connection after the run's deadline.
pub const CLOSE_BUDGET: Duration = Duration::from_millis(500);
pub use crate::summary::SATURATION_FRACTION;

/// Echo (round trip through the node's echo handler) or relay (one harness peer to
/// another through the engine, one-way latency on the shared clock).
pub use crate::summary::Mode;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The engine to drive.
    pub target: SocketAddr,
    /// Generator threads, each pinned to its own core (`--threads`).
    pub threads: usize,
    /// Client connections (peers).
    pub connections: usize,
    /// Messages per second in total, spread evenly over connections.
    pub rate: f64,
    /// Measured duration (after warm-up).
    pub duration: Duration,
    /// Warm-up: load is offered but not recorded.
    pub warmup: Duration,
    /// Payload size in bytes (at least [`PAYLOAD_HEADER`]).
    pub message_size: usize,
    /// Echo or relay.
    pub mode: Mode,
    /// How long to wait for outstanding messages after the schedule ends.
    pub drain: Duration,
    /// Pin harness threads to cores.
    pub pin: bool,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Bad configuration.
    #[error("invalid load configuration: {0}")]
    Config(String),
    /// A client could not connect.
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, ClientError),
}

/// Everything a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Latency from intended send time to receipt, nanoseconds, measured phase only.
    pub latency: Histogram<u64>,
    /// The same, one histogram per second of the measured phase (for the interval log).
    pub intervals: Vec<Histogram<u64>>,
    /// How late the harness sent each message against its schedule, nanoseconds.
    pub lag: Histogram<u64>,
    /// Messages the schedule called for in the measured phase (sent + refused).
    pub offered: u64,
    /// Messages sent in the measured phase.
    pub sent: u64,
    /// Measured-phase messages not sent: their connection held [`SEND_CAPACITY`] bytes the
    /// engine had not taken (back-pressure), or had closed.
    pub refused: u64,
    /// Connections that closed (or failed) during the run.
    pub connection_errors: u64,
    /// Of those, received back intact.
    pub received: u64,
    /// Received with a payload that did not match what was sent.
    pub corrupted: u64,
    /// Error records by kind (for example `UnknownDestination`).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// From the start of the measured phase to the later of its end and the arrival of the
    /// 99th-percentile measured reply: the window the achieved rate is computed over.
    pub receive_window: Duration,
    /// Wall time of the whole run, connecting and closing included.
    pub wall_time: Duration,
    /// CPU time the hypervisor took from this machine during the run (all CPUs together),
    /// where `/proc/stat` tells it.
    pub steal: Option<Duration>,
    /// When the measured phase started (for the interval log's start time).
    pub started_at: std::time::SystemTime,
    /// The harness's QUIC statistics over all its connections.
    pub quic: QuicStats,
}

impl LoadResult {
    /// Measured-phase messages that never came back.
    pub fn lost(&self) -> u64 {
        self.sent
            .saturating_sub(self.received + self.corrupted + self.errors.values().sum::<u64>())
    }

    /// Replies per second over the real receive window (not the schedule's duration: a
    /// saturated engine's replies trickle in during the drain).
    pub fn achieved_rate(&self) -> f64 {
        self.received as f64 / self.receive_window.as_secs_f64().max(1e-9)
    }
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages sent so far (all phases). Load threads add their counts once a pass, so
    /// this may lag by one pass.
    pub sent: AtomicU64,
    /// Messages received so far (all phases), added once a pass like `sent`.
    pub received: AtomicU64,
    /// Measured-phase messages sent, over all threads.
    pub measured_sent: AtomicU64,
    /// Measured-phase messages accounted for (received intact or corrupted, or answered
    /// with an ERROR record), over all threads: in relay mode a message sent by one thread
    /// is received by another. Refused messages were never sent and are in neither count.
    pub measured_done: AtomicU64,
    /// Load threads that still have messages due before the schedule's end (no thread
    /// drains and closes its peers, which may be relay destinations, before this is 0).
    pub sending_threads: AtomicU64,
    /// When the measured phase starts, set once the connections are up (for tools that
    /// observe the measured phase from outside, such as the system call counter).
    pub measure_start: std::sync::OnceLock<Instant>,
}

/// The payload of message `seq` intended at `intended_ns` after the run's origin.
pub fn payload(seq: u64, intended_ns: u64, size: usize) -> Vec<u8> {
    let mut p = vec![0; size.max(PAYLOAD_HEADER)];
    write_payload(&mut p, seq, intended_ns);
    p
}

/// Writes the payload of message `seq` intended at `intended_ns` into `buf`, whose length
/// is the message size (at least [`PAYLOAD_HEADER`]; a shorter `buf` gets what fits), so a
/// sender can reuse one buffer per datagram.
///
/// ```
/// use bench_harness::load::{parse_payload, payload, write_payload};
/// let mut buf = [0u8; 64];
/// write_payload(&mut buf, 7, 1_000);
/// assert_eq!(buf.to_vec(), payload(7, 1_000, 64));
/// assert_eq!(parse_payload(&buf, 64), Some((7, 1_000)));
/// ```
pub fn write_payload(buf: &mut [u8], seq: u64, intended_ns: u64) {
    let mut header = [0u8; PAYLOAD_HEADER];
    let (s, t) = header.split_at_mut(8);
    s.copy_from_slice(&seq.to_le_bytes());
    t.copy_from_slice(&intended_ns.to_le_bytes());
    let n = buf.len().min(PAYLOAD_HEADER);
    if let (Some(to), Some(from)) = (buf.get_mut(..n), header.get(..n)) {
        to.copy_from_slice(from);
    }
    let fill = (seq as u8).wrapping_mul(31);
    // A plain loop over the filler (no skip/early exit) so it compiles to vector code:
    // it runs for every message the harness sends.
    if let Some(rest) = buf.get_mut(PAYLOAD_HEADER..) {
        for (i, b) in rest.iter_mut().enumerate() {
            *b = fill ^ (i + PAYLOAD_HEADER) as u8;
        }
    }
}

/// Reads (seq, intended_ns) back from a payload and checks the filler; `None` if corrupted.
pub fn parse_payload(p: &[u8], size: usize) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(p.get(0..8)?.try_into().ok()?);
    let intended = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    if p.len() != size.max(PAYLOAD_HEADER) {
        return None;
    }
    let fill = (seq as u8).wrapping_mul(31);
    // Every byte's difference OR-ed together, without an early exit, so it compiles to
    // vector code: it runs for every reply.
    let diff = p
        .get(PAYLOAD_HEADER..)?
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, b)| {
            acc | (*b ^ fill ^ (i + PAYLOAD_HEADER) as u8)
        });
    (diff == 0).then_some((seq, intended))
}

/// A latency histogram, 1 ns to a minute, 3 significant digits.
pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NANOS, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is valid"));
        h.auto(true);
        h
    })
}

struct Peer {
    client: Client,
    /// Where this peer sends: the node (echo) or the next peer (relay).
    dst: PeerId,
    /// When each of its messages is due.
    schedule: Schedule,
    next_seq: u64,
    /// The connection closed or failed: its due messages are refused.
    dead: bool,
}

/// One connection's open-loop schedule: `rate` messages per second, offset by `phase` of
/// one interval, so that connection `i` of `n` sends `i/n` of an interval after the first.
/// Interleaved this way, the connections together offer one message every `1/(n*rate)`
/// seconds; in phase, they would offer bursts of `n` messages at once, and the latency
/// measured would be the burst's queueing rather than the node's.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Nanoseconds between two of this connection's messages (1e9 / rate).
    interval_ns: f64,
    phase: f64,
}

impl Schedule {
    /// Connection `i` of `n`, `rate` messages per second each.
    fn new(rate: f64, i: usize, n: usize) -> Self {
        Schedule {
            interval_ns: 1e9 / rate,
            phase: i as f64 / n.max(1) as f64,
        }
    }

    /// When message `seq` is due, counted from the run's origin. A multiplication and a
    /// saturating conversion to whole nanoseconds: it runs twice for every message sent.
    fn due(&self, seq: u64) -> Duration {
        // Rounded to the nearest nanosecond (the value is never negative).
        Duration::from_nanos(((seq as f64 + self.phase) * self.interval_ns + 0.5) as u64)
    }
}

struct ThreadResult {
    latency: Histogram<u64>,
    intervals: Vec<Histogram<u64>>,
    lag: Histogram<u64>,
    offered: u64,
    sent: u64,
    refused: u64,
    connection_errors: u64,
    received: u64,
    corrupted: u64,
    errors: std::collections::BTreeMap<String, u64>,
    /// When each measured reply arrived, nanoseconds after the measured phase began.
    arrivals: Histogram<u64>,
    /// This thread has sent its last message (and said so in `Progress`).
    done_sending: bool,
    /// QUIC statistics of this thread's connections, taken at the end of the drain.
    quic: QuicStats,
    /// Progress counts not yet added to the shared [`Progress`].
    unpublished: Unpublished,
    /// Replies that arrived at the same instant (every reply a connection yields in one
    /// pass is timestamped once), not yet in `arrivals`: one histogram entry per run.
    arrival_run: Option<(u64, u64)>,
}

/// A thread's progress counts since it last published them: added to the shared atomics
/// once a pass instead of four atomic additions a message.
#[derive(Debug, Default)]
struct Unpublished {
    sent: u64,
    received: u64,
    measured_sent: u64,
    measured_done: u64,
}

impl Unpublished {
    /// Adds the counts to `progress` and starts again from zero. A thread publishes before
    /// it says it has stopped sending, so once every thread has, `measured_sent` is final.
    fn publish(&mut self, progress: &Progress) {
        let counts = [
            (&progress.sent, &mut self.sent),
            (&progress.received, &mut self.received),
            (&progress.measured_sent, &mut self.measured_sent),
            (&progress.measured_done, &mut self.measured_done),
        ];
        for (shared, n) in counts {
            if *n > 0 {
                shared.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
    }
}

impl ThreadResult {
    fn new() -> Self {
        ThreadResult {
            latency: new_hist(),
            intervals: Vec::new(),
            lag: new_hist(),
            offered: 0,
            sent: 0,
            refused: 0,
            connection_errors: 0,
            received: 0,
            corrupted: 0,
            errors: Default::default(),
            arrivals: new_hist(),
            done_sending: false,
            quic: QuicStats::default(),
            unpublished: Unpublished::default(),
            arrival_run: None,
        }
    }

    /// Counts a measured reply that arrived `ns` after the measured phase began.
    fn note_arrival(&mut self, ns: u64) {
        match &mut self.arrival_run {
            Some((at, n)) if *at == ns => *n += 1,
            _ => {
                self.flush_arrivals();
                self.arrival_run = Some((ns, 1));
            }
        }
    }

    /// Adds the pending run of equal arrival times to `arrivals`.
    fn flush_arrivals(&mut self) {
        if let Some((at, n)) = self.arrival_run.take() {
            self.arrivals.saturating_record_n(at, n);
        }
    }
}

/// Runs the load and returns what it measured. `progress` is updated as it goes.
pub fn run(cfg: &LoadConfig, progress: Arc<Progress>) -> Result<LoadResult, LoadError> {
    if cfg.connections == 0 || cfg.threads == 0 {
        return Err(LoadError::Config(
            "connections and threads must be at least 1".into(),
        ));
    }
    if cfg.rate.is_nan() || cfg.rate <= 0.0 {
        return Err(LoadError::Config("rate must be above zero".into()));
    }
    if cfg.message_size < PAYLOAD_HEADER {
        return Err(LoadError::Config(format!(
            "message size must be at least {PAYLOAD_HEADER} bytes (sequence and send time)"
        )));
    }
    if cfg.duration.is_zero() {
        return Err(LoadError::Config("duration must be above zero".into()));
    }
    let wall_start = Instant::now();
    let steal = crate::steal::StealClock::start();
    let client_cfg = ClientConfig {
        send_capacity: SEND_CAPACITY,
        // Each message leaves as soon as it is due: the harness measures the engine's
        // batching, not its own.
        batch: BatchPolicy {
            timeout: Duration::ZERO,
            ..BatchPolicy::default()
        },
        ..ClientConfig::default()
    };
    // Connect everyone first, on this thread.
    let mut clients = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let id = Identity::generate().map_err(|e| LoadError::Config(e.to_string()))?;
        let c = Client::connect(cfg.target, &id, client_cfg.clone())
            .map_err(|e| LoadError::Connect(cfg.target, e))?;
        clients.push(c);
    }
    if cfg.mode == Mode::Relay {
        // Give the node a moment to register the last peers (they finished the handshake
        // one flight before it did).
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            for c in &mut clients {
                let _ = c.poll(Duration::ZERO);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let ids: Vec<PeerId> = clients.iter().map(Client::peer_id).collect();
    let per_conn = cfg.rate / cfg.connections as f64;
    let conns = clients.len();
    let mut groups: Vec<Vec<Peer>> = (0..cfg.threads).map(|_| Vec::new()).collect();
    for (i, client) in clients.into_iter().enumerate() {
        let dst = match cfg.mode {
            Mode::Echo => client.node_id(),
            Mode::Relay => ids[(i + 1) % ids.len()],
        };
        groups[i % cfg.threads].push(Peer {
            client,
            dst,
            schedule: Schedule::new(per_conn, i, conns),
            next_seq: 0,
            dead: false,
        });
    }
    let cores: Vec<core_affinity::CoreId> = core_affinity::get_core_ids().unwrap_or_default();
    let origin = Instant::now() + Duration::from_millis(50);
    let _ = progress.measure_start.set(origin + cfg.warmup);
    let started_at = std::time::SystemTime::now() + Duration::from_millis(50) + cfg.warmup;
    let threads = groups.iter().filter(|g| !g.is_empty()).count();
    progress
        .sending_threads
        .store(threads as u64, Ordering::Release);
    let handles: Vec<_> = groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(t, group)| {
            // Harness threads take cores from the end of the list, so an engine pinned from
            // core 0 upwards on the same machine does not share its cores when there are
            // enough.
            let core = cores
                .len()
                .checked_sub(1 + t % cores.len().max(1))
                .and_then(|i| cores.get(i))
                .copied();
            let cfg = cfg.clone();
            let progress = progress.clone();
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    if let (true, Some(core)) = (cfg.pin, core) {
                        core_affinity::set_for_current(core);
                    }
                    drive(group, &cfg, origin, &progress)
                })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| LoadError::Config(format!("spawning load threads: {e}")))?;
    let mut total = ThreadResult::new();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| LoadError::Config("a load thread panicked".into()))?;
        let _ = total.latency.add(&r.latency);
        let _ = total.lag.add(&r.lag);
        total.quic.merge(&r.quic);
        for (i, iv) in r.intervals.iter().enumerate() {
            if total.intervals.len() <= i {
                total.intervals.push(new_hist());
            }
            if let Some(t) = total.intervals.get_mut(i) {
                let _ = t.add(iv);
            }
        }
        total.offered += r.offered;
        total.sent += r.sent;
        total.refused += r.refused;
        total.connection_errors += r.connection_errors;
        let _ = total.arrivals.add(&r.arrivals);
        total.received += r.received;
        total.corrupted += r.corrupted;
        for (k, v) in r.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    // The window ends when 99 % of the measured replies had arrived: a saturated engine's
    // replies trickle in during the drain and stretch it, one straggler does not.
    let p99_arrival = if total.arrivals.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_nanos(total.arrivals.value_at_quantile(0.99))
    };
    let receive_window = cfg.duration.max(p99_arrival);
    Ok(LoadResult {
        latency: total.latency,
        intervals: total.intervals,
        lag: total.lag,
        offered: total.offered,
        sent: total.sent,
        refused: total.refused,
        connection_errors: total.connection_errors,
        received: total.received,
        corrupted: total.corrupted,
        errors: total.errors,
        elapsed: cfg.duration,
        receive_window,
        wall_time: wall_start.elapsed(),
        steal: steal.stolen(),
        started_at,
        quic: total.quic,
    })
}

/// One harness thread: keeps each peer's schedule, sends what is due (refusing what a full
/// connection cannot take), records what arrives, then waits for stragglers until the
/// shared deadline, and closes its connections within [`CLOSE_BUDGET`].
fn drive(
    mut peers: Vec<Peer>,
    cfg: &LoadConfig,
    origin: Instant,
    progress: &Progress,
) -> ThreadResult {
    let warm_end = cfg.warmup;
    let measure_end = cfg.warmup + cfg.duration;
    // One deadline for every thread and peer: the schedule's end plus the drain.
    let hard_deadline = origin + measure_end + cfg.drain;
    let mut r = ThreadResult::new();
    // One payload buffer, rewritten per message and copied by the client into a buffer
    // a sealed message left behind.
    let mut body = vec![0u8; cfg.message_size.max(PAYLOAD_HEADER)];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(peers.len());
    // Which peers' sockets the last poll(2) found readable; before the first, all.
    let mut readable: Vec<bool> = vec![true; peers.len()];
    'run: loop {
        let now = Instant::now();
        if now >= hard_deadline {
            break;
        }
        let elapsed = now.saturating_duration_since(origin);
        // Whether any peer still has messages due before the schedule's end (a pass that
        // starts just after the end still sends what fell due just before it).
        let mut sending = false;
        let mut next_due = now + Duration::from_millis(1);
        for (p, &ready) in peers.iter_mut().zip(readable.iter()) {
            if Instant::now() >= hard_deadline {
                break 'run;
            }
            {
                let mut budget = SENDS_PER_PASS;
                let mut full = false;
                // Send what is due by now (catching up after a stall, a bounded number per
                // pass); what a full or closed connection cannot take is refused.
                loop {
                    let due = p.schedule.due(p.next_seq);
                    if due > elapsed || due >= measure_end {
                        if due < measure_end {
                            next_due = next_due.min(origin + due);
                        }
                        break;
                    }
                    if budget == 0 {
                        next_due = now;
                        break;
                    }
                    let measured = due >= warm_end;
                    let accepted = if p.dead || full {
                        false
                    } else {
                        budget -= 1;
                        write_payload(&mut body, p.next_seq, due.as_nanos() as u64);
                        match p.client.try_send_slice(p.dst, p.next_seq, &body, now) {
                            Ok(true) => true,
                            Ok(false) => {
                                full = true;
                                false
                            }
                            Err(_) => {
                                p.dead = true;
                                r.connection_errors += 1;
                                false
                            }
                        }
                    };
                    if measured {
                        r.offered += 1;
                        if accepted {
                            r.sent += 1;
                            r.unpublished.measured_sent += 1;
                            r.lag
                                .saturating_record(elapsed.saturating_sub(due).as_nanos() as u64);
                        } else {
                            r.refused += 1;
                        }
                    }
                    if accepted {
                        r.unpublished.sent += 1;
                    }
                    p.next_seq += 1;
                }
                sending |= p.schedule.due(p.next_seq) < measure_end;
            }
            if p.dead {
                continue;
            }
            // Every pass services every connection (timers, inbox), reads the sockets
            // poll(2) found readable, then seals and sends what was queued above, with the
            // acknowledgements of what it read in the same packets.
            if p.client.poll_ready(ready).is_err() || p.client.is_closed() {
                p.dead = true;
                r.connection_errors += 1;
            }
            let at = origin.elapsed();
            while let Some(d) = p.client.try_recv() {
                if let Some(body) = record(&mut r, d, at, p.schedule, cfg) {
                    p.client.recycle(body);
                }
            }
        }
        r.unpublished.publish(progress);
        if !sending {
            // Once every thread has sent its last message, stop when everything measured
            // is accounted for, over all threads.
            if !r.done_sending {
                r.done_sending = true;
                progress.sending_threads.fetch_sub(1, Ordering::AcqRel);
            }
            let all_stopped = progress.sending_threads.load(Ordering::Acquire) == 0;
            let outstanding = progress.measured_sent.load(Ordering::Relaxed)
                > progress.measured_done.load(Ordering::Relaxed);
            if all_stopped && !outstanding {
                break;
            }
            let soon = (Instant::now() + Duration::from_millis(1)).min(hard_deadline);
            wait_readable(&mut fds, &peers, soon, &mut readable);
            continue;
        }
        // Wait for the next message to be due, a reply, or a client timer, whichever is
        // first: replies are timestamped as soon as they arrive, not after a fixed sleep.
        let deadline = peers
            .iter()
            .filter(|p| !p.dead)
            .filter_map(|p| p.client.next_deadline())
            .fold(next_due, Instant::min)
            .min(hard_deadline);
        wait_readable(&mut fds, &peers, deadline, &mut readable);
    }
    for p in &mut peers {
        if let Some(q) = quic_stats(&mut p.client) {
            r.quic.merge(&q);
        }
    }
    close_all(&mut peers, &mut r, origin, cfg, progress);
    r.flush_arrivals();
    r
}

/// One connection's QUIC statistics, from connect until now (its active path's RTT and
/// congestion window); none for a connection without an active path (one that failed).
fn quic_stats(c: &mut Client) -> Option<QuicStats> {
    let conn = c.session_mut().quic();
    let st = conn.stats();
    let mut q = QuicStats {
        connections: 1,
        packets_sent: st.sent as u64,
        packets_received: st.recv as u64,
        packets_lost: st.lost as u64,
        packets_spurious_lost: st.spurious_lost as u64,
        stream_retrans_bytes: st.stream_retrans_bytes,
        ..QuicStats::default()
    };
    let mut active = false;
    for path in conn.path_stats() {
        q.pto_count += path.total_pto_count as u64;
        if let Some(max) = path.max_rtt {
            q.rtt_ms_max = q.rtt_ms_max.max(max.as_secs_f64() * 1000.0);
        }
        if path.active {
            active = true;
            q.srtt_ms_mean = path.rtt.as_secs_f64() * 1000.0;
            q.cwnd_min_bytes = path.cwnd as u64;
            q.cwnd_max_bytes = path.cwnd as u64;
        }
    }
    active.then_some(q)
}

/// Closes every connection at once: FIN on all, then service all (collecting late
/// replies) until all are closed or [`CLOSE_BUDGET`] passes, then close what is left.
fn close_all(
    peers: &mut [Peer],
    r: &mut ThreadResult,
    origin: Instant,
    cfg: &LoadConfig,
    progress: &Progress,
) {
    let deadline = Instant::now() + CLOSE_BUDGET;
    for p in peers.iter_mut().filter(|p| !p.dead) {
        if p.client.start_close().is_err() {
            p.dead = true;
        }
    }
    let mut fds = Vec::with_capacity(peers.len());
    let mut readable = vec![true; peers.len()];
    while Instant::now() < deadline && peers.iter().any(|p| !p.dead && !p.client.is_closed()) {
        for (p, &ready) in peers.iter_mut().zip(readable.iter()) {
            if p.dead {
                continue;
            }
            if p.client.poll_ready(ready).is_err() {
                p.dead = true;
            }
            let at = origin.elapsed();
            while let Some(d) = p.client.try_recv() {
                if let Some(body) = record(r, d, at, p.schedule, cfg) {
                    p.client.recycle(body);
                }
            }
        }
        r.unpublished.publish(progress);
        let soon = (Instant::now() + Duration::from_millis(1)).min(deadline);
        wait_readable(&mut fds, peers, soon, &mut readable);
    }
    for p in peers.iter_mut() {
        p.client.abort();
    }
    r.unpublished.publish(progress);
}

/// Accounts for one delivery that arrived `at` after the run's origin, and returns a
/// message's payload for the client to reuse.
/// `schedule` is that of the connection it arrived on: an error record is about a message
/// that connection sent, whose intended time its sequence number gives.
fn record(
    r: &mut ThreadResult,
    d: Delivery,
    at: Duration,
    schedule: Schedule,
    cfg: &LoadConfig,
) -> Option<Vec<u8>> {
    let warm_end = cfg.warmup;
    let measure_end = cfg.warmup + cfg.duration;
    r.unpublished.received += 1;
    match d {
        Delivery::Message { payload: body, .. } => {
            account_message(r, &body, at, cfg);
            Some(body)
        }
        Delivery::Error(e) => {
            // Only errors about measured messages count (warm-up ones are not measured).
            let intended = schedule.due(e.seq);
            if intended >= warm_end && intended < measure_end {
                *r.errors.entry(format!("{:?}", e.code)).or_default() += 1;
                r.unpublished.measured_done += 1;
            }
            None
        }
    }
}

/// Records one echoed message's latency (measured ones only) or counts it corrupted.
fn account_message(r: &mut ThreadResult, body: &[u8], at: Duration, cfg: &LoadConfig) {
    let warm_end = cfg.warmup;
    let measure_end = cfg.warmup + cfg.duration;
    match parse_payload(body, cfg.message_size) {
        Some((_, intended_ns)) => {
            let intended = Duration::from_nanos(intended_ns);
            if intended >= warm_end && intended < measure_end {
                r.received += 1;
                r.note_arrival(at.saturating_sub(warm_end).as_nanos() as u64);
                r.unpublished.measured_done += 1;
                let lat = at.saturating_sub(intended).as_nanos() as u64;
                r.latency.saturating_record(lat);
                let sec = (intended - warm_end).as_secs() as usize;
                while r.intervals.len() <= sec {
                    r.intervals.push(new_hist());
                }
                if let Some(h) = r.intervals.get_mut(sec) {
                    h.saturating_record(lat);
                }
            }
        }
        None => {
            r.corrupted += 1;
            // Accounted for in the drain only when its header, read as sent, places it in
            // the measured phase: counting a corrupted warm-up reply could let the drain
            // end before a measured message came back; one whose header is unreadable
            // leaves the drain to its deadline.
            let intended = body
                .get(8..16)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(|b| Duration::from_nanos(u64::from_le_bytes(b)));
            if intended.is_some_and(|t| t >= warm_end && t < measure_end) {
                r.unpublished.measured_done += 1;
            }
        }
    }
}

/// How much of a wait a generator thread spends polling instead of asleep: it sleeps
/// until this long before its deadline and polls from then on. Waking a sleeping core
/// costs tens of microseconds in a VM, so a thread that slept until the deadline would
/// send late; at rates above about 10,000 msg/s per thread it never sleeps at all.
const SPIN_BEFORE_DEADLINE: Duration = Duration::from_micros(100);

/// Waits until one of the peers' sockets is readable or `deadline` passes (less
/// [`SPIN_BEFORE_DEADLINE`]), and notes in `readable` which are. Always one `ppoll`, with
/// a zero timeout once within that margin: one system call tells which of many sockets
/// hold datagrams, instead of one empty read per socket.
fn wait_readable(
    fds: &mut Vec<libc::pollfd>,
    peers: &[Peer],
    deadline: Instant,
    readable: &mut [bool],
) {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(SPIN_BEFORE_DEADLINE);
    fds.clear();
    fds.extend(peers.iter().map(|p| libc::pollfd {
        fd: p.client.raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }));
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid array of pollfd of the given length; no signal mask.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    for (r, f) in readable.iter_mut().zip(fds.iter()) {
        // On a failed poll (EINTR) nothing is known: read every socket.
        *r = n < 0 || f.revents != 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_into_one_evenly_spaced_schedule() {
        // 4 connections at 1000 msg/s each: together one message every 250 us.
        let n = 4;
        let mut due: Vec<Duration> = (0..n)
            .flat_map(|i| {
                let s = Schedule::new(1000.0, i, n);
                (0..100).map(move |k| s.due(k))
            })
            .collect();
        due.sort();
        assert_eq!(due[0], Duration::ZERO);
        for w in due.windows(2) {
            let gap = w[1] - w[0];
            let off = gap.abs_diff(Duration::from_micros(250));
            assert!(off < Duration::from_nanos(10), "gap {gap:?}");
        }
        // A connection's own messages stay `1/rate` apart.
        let s = Schedule::new(1000.0, 3, n);
        assert_eq!(s.due(0), Duration::from_micros(750));
        assert_eq!(s.due(10) - s.due(9), Duration::from_millis(1));
    }

    #[test]
    fn unpublished_counts_reach_progress_once() {
        let progress = Progress::default();
        let mut u = Unpublished {
            sent: 3,
            received: 2,
            measured_sent: 1,
            measured_done: 4,
        };
        u.publish(&progress);
        u.publish(&progress);
        u.measured_done += 1;
        u.publish(&progress);
        let got = [
            &progress.sent,
            &progress.received,
            &progress.measured_sent,
            &progress.measured_done,
        ]
        .map(|a| a.load(Ordering::Relaxed));
        assert_eq!(got, [3, 2, 1, 5]);
        assert_eq!(u.sent + u.received + u.measured_sent + u.measured_done, 0);
    }

    #[test]
    fn only_measured_replies_count_towards_the_drain() {
        let cfg = LoadConfig {
            target: "127.0.0.1:9".parse().unwrap(),
            threads: 1,
            connections: 1,
            rate: 1000.0,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            message_size: 64,
            mode: Mode::Echo,
            drain: Duration::from_secs(1),
            pin: false,
        };
        let mut r = ThreadResult::new();
        let at = Duration::from_secs(2);
        let warm = Duration::from_millis(500).as_nanos() as u64;
        let measured = Duration::from_millis(1500).as_nanos() as u64;
        // Intact: a warm-up reply is not measured, a measured one is.
        account_message(&mut r, &payload(1, warm, 64), at, &cfg);
        account_message(&mut r, &payload(2, measured, 64), at, &cfg);
        assert_eq!((r.received, r.unpublished.measured_done), (1, 1));
        // Corrupted: all counted as corrupted, but only the one whose header places it in
        // the measured phase is accounted for in the drain; an unreadable one is not.
        for (intended, size) in [(warm, 64), (measured, 64), (measured, 12)] {
            let mut p = payload(3, intended, 64);
            p[40] ^= 1;
            p.truncate(size);
            account_message(&mut r, &p, at, &cfg);
        }
        assert_eq!((r.corrupted, r.unpublished.measured_done), (3, 2));
    }

    #[test]
    fn equal_arrival_times_are_recorded_once_with_their_count() {
        let mut r = ThreadResult::new();
        for ns in [5, 5, 5, 7, 5, 5] {
            r.note_arrival(ns);
        }
        r.flush_arrivals();
        r.flush_arrivals();
        assert_eq!(r.arrivals.len(), 6);
        assert_eq!(r.arrivals.count_at(5), 5);
        assert_eq!(r.arrivals.count_at(7), 1);
    }

    #[test]
    fn payload_round_trip_and_corruption() {
        let p = payload(42, 1_000, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse_payload(&p, 64), Some((42, 1_000)));
        let mut bad = p.clone();
        bad[40] ^= 1;
        assert_eq!(parse_payload(&bad, 64), None);
        assert_eq!(parse_payload(&p[..30], 64), None);
        // A buffer shorter than the header gets the header's first bytes.
        let mut short = [0u8; 10];
        write_payload(&mut short, 42, 1_000);
        assert_eq!(short[..], payload(42, 1_000, 64)[..10]);
        // The header: the sequence number, then the intended time, little-endian.
        let p = payload(0x0102_0304_0506_0708, 0x1112_1314_1516_1718, 64);
        assert_eq!(p[..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(p[8..16], 0x1112_1314_1516_1718u64.to_le_bytes());
        // The filler is fixed by the sequence number and the position: byte i is
        // (seq * 31) ^ i, wrapping, whatever the size; any one flipped bit is caught.
        for size in [16, 17, 64, 1024] {
            let p = payload(300, 5, size);
            let fill = (300u64 as u8).wrapping_mul(31);
            for (i, b) in p.iter().enumerate().skip(PAYLOAD_HEADER) {
                assert_eq!(*b, fill ^ i as u8, "size {size} byte {i}");
            }
            assert_eq!(parse_payload(&p, size), Some((300, 5)));
            for i in PAYLOAD_HEADER..size {
                for bit in 0..8 {
                    let mut bad = p.clone();
                    bad[i] ^= 1 << bit;
                    assert_eq!(
                        parse_payload(&bad, size),
                        None,
                        "size {size} byte {i} bit {bit}"
                    );
                }
            }
        }
    }
}
