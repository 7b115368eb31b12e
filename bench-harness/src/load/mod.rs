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
//! [`SEND_CAPACITY`] bytes the engine has not taken is *deferred* (the connection's place in its
//! schedule waits; nothing is stored) and sent as soon as the connection takes it, its
//! latency still counted from its intended time, as an application that buffers would see
//! it; one still not taken [`LoadConfig::max_backlog`] after its intended time is *refused*
//! (counted, not sent). Every pass services every connection (QUIC timers, socket, inbox),
//! and one deadline shared by
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
use shards::wire::PeerId;

use crate::summary::QuicStats;

mod inbound;
mod payload;
mod schedule;
#[cfg(test)]
mod tests;
mod thread;

use inbound::Inbound;
pub use payload::{parse_payload, payload, write_payload};
use schedule::Schedule;
use thread::{Peer, ThreadResult, drive};

/// Bytes at the start of every payload: sequence number and intended send time.
pub const PAYLOAD_HEADER: usize = 16;
/// Highest latency tracked: one minute, in nanoseconds.
const MAX_NANOS: u64 = 60_000_000_000;
/// Bytes one connection may hold queued or not yet taken by QUIC before the harness refuses
/// its due messages: small, so back-pressure shows as refusals within milliseconds.
pub const SEND_CAPACITY: usize = 64 * 1024;
/// How long after its intended time a message may wait for a connection that pushes back
/// before it is refused, by default (`--max-backlog`). Ten times the knee's default p99
/// target: a message deferred that long fails any step it is in already, and the backlog it
/// bounds is implicit (the schedule's position), so holding costs no memory.
pub const MAX_BACKLOG: Duration = Duration::from_millis(100);
/// Messages one connection may send per pass, so one far-behind connection cannot keep the
/// others from being serviced.
const SENDS_PER_PASS: usize = 1024;
/// Highest total rate accepted, messages per second: far above what one machine's
/// generators send, and low enough that a run's sequence numbers stay exact in the `f64`
/// arithmetic of its schedule.
pub const MAX_RATE: f64 = 100_000_000.0;
/// Longest warm-up, measured duration or drain accepted, each: beyond any run the harness
/// is for, and far from where the run's deadline (`Instant` plus all three) overflows.
pub const MAX_PHASE: Duration = Duration::from_secs(24 * 3600);
/// Shortest backlog bound accepted: a shorter one refuses nearly every message a
/// connection does not take at once, which measures the bound, not the server.
pub const MIN_BACKLOG: Duration = Duration::from_millis(1);
/// Largest message accepted: the most any engine accepts
/// ([`shards::config::MAX_MESSAGE_SIZE_LIMIT`]; an engine's own `max_message_size`, 64 KiB by
/// default, answers larger ones with an error record). Each generator holds one buffer of it.
pub const MAX_MESSAGE_SIZE: usize = shards::config::MAX_MESSAGE_SIZE_LIMIT;
/// Most interval histograms a run keeps (per generator thread, and merged): the interval
/// log's intervals are one second long up to this many seconds of measured duration, and
/// longer (whole seconds) beyond, so memory does not grow with `--duration`. Each histogram
/// spans 1 ns to a minute at 3 significant digits, 27,648 counters or 221 KB: at most 66 MB
/// per thread whatever the duration (one per second, an hour held 0.8 GB per thread).
pub const MAX_INTERVALS: usize = 300;
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
    /// How long a due message may wait for its connection to take it (back-pressure)
    /// before it is refused ([`MAX_BACKLOG`] by default). Its latency is still counted
    /// from its intended time, so a deferred message shows as late, not as missing.
    pub max_backlog: Duration,
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
    /// The same, one histogram per [`LoadResult::interval`] of the measured phase, by
    /// intended time (for the interval log); at most [`MAX_INTERVALS`].
    pub intervals: Vec<Histogram<u64>>,
    /// The length of each of `intervals`: [`interval_length`] of the measured duration.
    pub interval: Duration,
    /// How late the harness sent each measured message against its schedule, nanoseconds
    /// (deferred ones excepted: their wait was the connection's). A measured message
    /// refused for lateness that its connection had not pushed back for counts with how
    /// late it was when refused: the generator itself fell behind, and its lag shows it.
    pub lag: Histogram<u64>,
    /// Messages the schedule called for in the measured phase (sent + refused).
    pub offered: u64,
    /// Messages sent in the measured phase.
    pub sent: u64,
    /// Of those, messages that waited for their connection to take them (it held
    /// [`SEND_CAPACITY`] bytes the engine had not taken) and were sent late, within
    /// `max_backlog`; their latency counts from their intended time.
    pub deferred: u64,
    /// Measured-phase messages not sent: their connection did not take them within
    /// `max_backlog` of their intended time (back-pressure), had closed, or the generator
    /// itself was more than `max_backlog` behind them (then their lateness is in `lag`).
    pub refused: u64,
    /// Connections that closed (or failed) during the run.
    pub connection_errors: u64,
    /// Of those, received back intact.
    pub received: u64,
    /// Received with a payload that did not match what was sent: its filler or length, or
    /// a sequence number and intended time that are not those of a message sent to that
    /// connection (all phases).
    pub corrupted: u64,
    /// Of `corrupted`, those whose header places them in the measured phase: what
    /// [`LoadResult::lost`] sets against the measured messages sent.
    pub measured_corrupted: u64,
    /// Second or later replies to one message (all phases): a server fault, and not
    /// counted as received, where each would hide a lost message.
    pub duplicates: u64,
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
    /// Measured-phase messages that never came back (neither intact, nor corrupted, nor
    /// answered with an error record; duplicates do not count).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(
            self.received + self.measured_corrupted + self.errors.values().sum::<u64>(),
        )
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

/// The length of the interval log's intervals for a measured phase of `duration`: one
/// second, or the fewest whole seconds that keep their number within [`MAX_INTERVALS`].
pub fn interval_length(duration: Duration) -> Duration {
    let most = MAX_INTERVALS as u128 * 1_000_000_000;
    let secs = duration.as_nanos().div_ceil(most).max(1);
    Duration::from_secs(u64::try_from(secs).unwrap_or(u64::MAX))
}

/// Records `ns` in the interval histogram of a message intended `since_start` after the
/// measured phase began, creating the intervals up to it as needed (never more than
/// [`MAX_INTERVALS`] for a message within the measured phase).
pub(crate) fn record_interval(
    intervals: &mut Vec<Histogram<u64>>,
    interval: Duration,
    since_start: Duration,
    ns: u64,
) {
    let i = since_start.as_nanos() / interval.as_nanos().max(1);
    let i = usize::try_from(i)
        .unwrap_or(usize::MAX)
        .min(MAX_INTERVALS - 1);
    while intervals.len() <= i {
        intervals.push(new_hist());
    }
    if let Some(h) = intervals.get_mut(i) {
        h.saturating_record(ns);
    }
}

/// Adds `from` into `into` interval by interval, moving rather than copying what `into`
/// does not have yet, so merging the threads' intervals holds no second copy of them.
pub(crate) fn merge_intervals(into: &mut Vec<Histogram<u64>>, from: Vec<Histogram<u64>>) {
    for (i, h) in from.into_iter().enumerate() {
        match into.get_mut(i) {
            Some(t) => {
                let _ = t.add(&h);
            }
            None => into.push(h),
        }
    }
}

/// A latency histogram, 1 ns to a minute, 3 significant digits.
pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NANOS, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is valid"));
        h.auto(true);
        h
    })
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
    if cfg.rate > MAX_RATE {
        return Err(LoadError::Config(format!(
            "rate must be at most {MAX_RATE:.0} msg/s"
        )));
    }
    if cfg.message_size < PAYLOAD_HEADER {
        return Err(LoadError::Config(format!(
            "message size must be at least {PAYLOAD_HEADER} bytes (sequence and send time)"
        )));
    }
    if cfg.message_size > MAX_MESSAGE_SIZE {
        return Err(LoadError::Config(format!(
            "message size must be at most {MAX_MESSAGE_SIZE} bytes (the engine's limit)"
        )));
    }
    if cfg.duration.is_zero() {
        return Err(LoadError::Config("duration must be above zero".into()));
    }
    if [cfg.warmup, cfg.duration, cfg.drain]
        .iter()
        .any(|d| *d > MAX_PHASE)
    {
        return Err(LoadError::Config(format!(
            "warm-up, duration and drain must be at most {MAX_PHASE:?} each"
        )));
    }
    if cfg.max_backlog < MIN_BACKLOG {
        return Err(LoadError::Config(format!(
            "max backlog must be at least {MIN_BACKLOG:?}"
        )));
    }
    if cfg.max_backlog >= cfg.drain {
        return Err(LoadError::Config(format!(
            "max backlog ({:?}) must be shorter than the drain ({:?}): a message deferred that long \
             at the end of the schedule would have no time left to be answered",
            cfg.max_backlog, cfg.drain
        )));
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
    let measure_end = cfg.warmup + cfg.duration;
    for (i, client) in clients.into_iter().enumerate() {
        // In relay mode connection `i` sends to `i + 1`, so it receives what `i - 1` sends.
        let (dst, from) = match cfg.mode {
            Mode::Echo => (client.node_id(), i),
            Mode::Relay => (ids[(i + 1) % ids.len()], (i + conns - 1) % conns),
        };
        groups[i % cfg.threads].push(Peer {
            client,
            dst,
            schedule: Schedule::new(per_conn, i, conns),
            next_seq: 0,
            dead: false,
            full_at: None,
            inbound: Inbound::new(Schedule::new(per_conn, from, conns), measure_end),
            errored: (from != i)
                .then(|| Inbound::new(Schedule::new(per_conn, i, conns), measure_end)),
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
        merge_intervals(&mut total.intervals, r.intervals);
        total.offered += r.offered;
        total.sent += r.sent;
        total.deferred += r.deferred;
        total.refused += r.refused;
        total.connection_errors += r.connection_errors;
        let _ = total.arrivals.add(&r.arrivals);
        total.received += r.received;
        total.corrupted += r.corrupted;
        total.measured_corrupted += r.measured_corrupted;
        total.duplicates += r.duplicates;
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
        interval: interval_length(cfg.duration),
        lag: total.lag,
        offered: total.offered,
        sent: total.sent,
        deferred: total.deferred,
        refused: total.refused,
        connection_errors: total.connection_errors,
        received: total.received,
        corrupted: total.corrupted,
        measured_corrupted: total.measured_corrupted,
        duplicates: total.duplicates,
        errors: total.errors,
        elapsed: cfg.duration,
        receive_window,
        wall_time: wall_start.elapsed(),
        steal: steal.stolen(),
        started_at,
        quic: total.quic,
    })
}
