//! Metrics export: a [`MetricsSource`] that a metrics thread can hold, a [`NetworkMetrics`]
//! snapshot, the exported metric families ([`families`], declared once each and encoded with
//! the `prometheus-client` crate in [`encode`] by [`EngineCollector`] / [`render_prometheus`]) and a small
//! blocking HTTP server for `GET /metrics` ([`MetricsServer`], in [`server`]).
//!
//! Reading metrics never touches the data path: counters are relaxed atomic loads, the
//! histograms are the copies each shard publishes every 250 ms (one short lock per shard),
//! and the peer index is a concurrent map. The server runs on plain, unpinned threads: one
//! accepts, and each connection is served on its own, at most 8 at once.
//!
//! The table of exported metrics is in [`families`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use shards::hist::{Histograms, SharedHistograms};
use shards::lifecycle::ConnState;
use shards::shard::ShardStats;

use crate::index::PeerIndex;
use crate::stats::EngineStats;

pub mod encode;
pub mod families;
pub mod server;

pub use encode::{CONTENT_TYPE, EngineCollector, render_prometheus};
pub use server::MetricsServer;

/// Drop reasons, as the `reason` label spells them.
pub const DROP_REASONS: [&str; 6] = [
    "unknown_destination",
    "too_large",
    "unreachable",
    "shutting_down",
    "sender_gone",
    "stalled",
];

/// What metrics are read from: shared handles to every shard's counters and published
/// histograms and to the peer index. Cheap to clone, `Send + Sync`, and independent of the
/// [`crate::Engine`]'s lifetime (after shutdown it keeps reporting the final counters).
#[derive(Clone)]
pub struct MetricsSource {
    stats: Vec<Arc<ShardStats>>,
    histograms: Vec<SharedHistograms>,
    peers: Arc<PeerIndex>,
}

/// A shard's socket as the kernel sees it: `None` when `/proc/net/udp` has no entry for it.
pub type SocketQueues = Vec<Option<crate::stats::SocketQueue>>;

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource")
            .field("shards", &self.stats.len())
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl MetricsSource {
    /// A source over the given shards (`stats[i]` and `histograms[i]` belong to shard `i`).
    pub fn new(
        stats: Vec<Arc<ShardStats>>,
        histograms: Vec<SharedHistograms>,
        peers: Arc<PeerIndex>,
    ) -> Self {
        MetricsSource {
            stats,
            histograms,
            peers,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.stats.len()
    }

    /// Counters summed over every shard.
    pub fn totals(&self) -> EngineStats {
        EngineStats::collect(self.stats.iter().map(|s| &**s))
    }

    /// Counters of each shard.
    pub fn shard_totals(&self) -> Vec<EngineStats> {
        self.stats
            .iter()
            .map(|s| EngineStats::collect(std::iter::once(&**s)))
            .collect()
    }

    /// Histograms merged across shards, as last published (cumulative since start).
    pub fn histograms(&self) -> Histograms {
        let mut total = Histograms::new();
        for h in &self.histograms {
            total.add(&h.lock());
        }
        total
    }

    /// Peers in each lifecycle state.
    pub fn state_counts(&self) -> Vec<(ConnState, usize)> {
        self.peers.state_counts()
    }

    /// Each shard socket's kernel receive queue and drop count (`/proc/net/udp`).
    pub fn socket_queues(&self) -> SocketQueues {
        let inodes: Vec<u64> = self
            .stats
            .iter()
            .map(|s| s.socket_inode.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        crate::stats::socket_queues(&inodes)
    }

    /// A snapshot of the headline numbers; samples `rate` with the current message total.
    pub fn network_metrics(&self, rate: &mut RateMeter) -> NetworkMetrics {
        Snapshot::take(self, rate).network()
    }
}

/// Headline numbers at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkMetrics {
    /// Messages received from peers per second, exponentially weighted over
    /// [`RateMeter::DEFAULT_WINDOW`].
    pub messages_per_second: f64,
    /// Connections the shards hold right now (including ones still handshaking).
    pub connections: u64,
    /// Messages in the queue-delay histogram (0 means the latency fields are 0).
    pub latency_samples: u64,
    /// Mean queue delay in nanoseconds.
    pub latency_avg_ns: f64,
    /// Median queue delay in nanoseconds.
    pub latency_p50_ns: u64,
    /// 90th percentile queue delay in nanoseconds.
    pub latency_p90_ns: u64,
    /// 99th percentile queue delay in nanoseconds.
    pub latency_p99_ns: u64,
    /// 99.9th percentile queue delay in nanoseconds.
    pub latency_p999_ns: u64,
    /// Resident set size of this process, if `/proc/self/statm` could be read.
    pub resident_memory_bytes: Option<u64>,
    /// Bytes waiting in batch queues, not yet sealed.
    pub queued_bytes: u64,
    /// Datagrams the kernel dropped at the shard sockets' full receive queues.
    pub socket_receive_drops: u64,
    /// 99th percentile time a datagram waited in a socket receive queue, nanoseconds.
    pub receive_delay_p99_ns: u64,
    /// Messages received from peers.
    pub messages_in: u64,
    /// Messages sealed and written.
    pub messages_out: u64,
    /// Messages handed to the node's application.
    pub delivered: u64,
    /// Messages relayed towards another peer.
    pub relayed: u64,
    /// Messages dropped, all reasons.
    pub dropped: u64,
    /// Batches sealed and written.
    pub batches: u64,
}

/// A moving messages-per-second rate: an exponentially weighted moving average with time
/// constant `window`, correct for irregular sampling intervals. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct RateMeter {
    window: Duration,
    last: Option<(u64, Instant)>,
    rate: f64,
    primed: bool,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self::new(Self::DEFAULT_WINDOW)
    }
}

impl RateMeter {
    /// The default averaging window (time constant): 10 s.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

    /// A meter averaging over `window` (a zero window means "last interval only").
    pub fn new(window: Duration) -> Self {
        RateMeter {
            window,
            last: None,
            rate: 0.0,
            primed: false,
        }
    }

    /// Feeds the running total of messages at `now` and returns the smoothed rate per
    /// second. The first sample only sets the baseline (rate 0); the first interval sets the
    /// rate outright; later intervals move it towards the interval's rate by
    /// `1 - exp(-dt / window)`. A total that goes backwards counts as no progress, and a
    /// sample at (or before) the previous instant changes nothing.
    pub fn sample(&mut self, total_messages: u64, now: Instant) -> f64 {
        let Some((prev, at)) = self.last else {
            self.last = Some((total_messages, now));
            return self.rate;
        };
        let dt = now.saturating_duration_since(at).as_secs_f64();
        if dt <= 0.0 {
            return self.rate;
        }
        let interval_rate = total_messages.saturating_sub(prev) as f64 / dt;
        let tau = self.window.as_secs_f64();
        if !self.primed || tau <= 0.0 {
            self.rate = interval_rate;
            self.primed = true;
        } else {
            let alpha = 1.0 - (-dt / tau).exp();
            self.rate += alpha * (interval_rate - self.rate);
        }
        self.last = Some((prev.max(total_messages), now));
        self.rate
    }

    /// The rate as of the last sample.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// Resident set size of this process in bytes: resident pages from `/proc/self/statm` times
/// the page size. `None` where that file does not exist or cannot be parsed.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|p| *p > 0)?;
    Some(pages.saturating_mul(page))
}

/// Everything one scrape needs, read once.
struct Snapshot {
    totals: EngineStats,
    /// `"0"`, `"1"`, ...: the `shard` label of each entry of `shards`.
    shard_labels: Vec<String>,
    shards: Vec<EngineStats>,
    hist: Histograms,
    states: Vec<(ConnState, usize)>,
    rss: Option<u64>,
    rate: f64,
    sockets: SocketQueues,
}

impl Snapshot {
    fn take(src: &MetricsSource, rate: &mut RateMeter) -> Snapshot {
        let shards = src.shard_totals();
        let totals = EngineStats::collect(src.stats.iter().map(|s| &**s));
        let rate = rate.sample(totals.messages_in, Instant::now());
        Snapshot {
            totals,
            shard_labels: (0..shards.len()).map(|i| i.to_string()).collect(),
            shards,
            hist: src.histograms(),
            states: src.state_counts(),
            rss: resident_memory_bytes(),
            rate,
            sockets: src.socket_queues(),
        }
    }

    fn network(&self) -> NetworkMetrics {
        let q = &self.hist.queue_delay_ns;
        let at = |quantile: f64| {
            if q.is_empty() {
                0
            } else {
                q.value_at_quantile(quantile)
            }
        };
        let t = &self.totals;
        NetworkMetrics {
            messages_per_second: self.rate,
            connections: t.connections,
            latency_samples: q.len(),
            latency_avg_ns: if q.is_empty() { 0.0 } else { q.mean() },
            latency_p50_ns: at(0.5),
            latency_p90_ns: at(0.9),
            latency_p99_ns: at(0.99),
            latency_p999_ns: at(0.999),
            resident_memory_bytes: self.rss,
            queued_bytes: t.queued_bytes,
            socket_receive_drops: self.sockets.iter().flatten().map(|q| q.drops).sum(),
            receive_delay_p99_ns: if self.hist.receive_delay_ns.is_empty() {
                0
            } else {
                self.hist.receive_delay_ns.value_at_quantile(0.99)
            },
            messages_in: t.messages_in,
            messages_out: t.messages_out,
            delivered: t.delivered_local,
            relayed: t.relayed,
            dropped: t.dropped(),
            batches: t.batches_out,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;

    /// A source over `shards` idle shards.
    pub(crate) fn source(shards: usize) -> MetricsSource {
        MetricsSource::new(
            (0..shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            (0..shards)
                .map(|_| Arc::new(parking_lot::Mutex::new(Histograms::new())))
                .collect(),
            Arc::new(PeerIndex::new()),
        )
    }

    /// Two shards with traffic, histograms and a connected peer; shard 0's socket is a real
    /// UDP socket (kept open for the process's lifetime) so `/proc/net/udp` lists it.
    pub(crate) fn busy_source() -> MetricsSource {
        use shards::shard::PeerDirectory;
        use std::os::fd::AsRawFd;
        static SOCKET: std::sync::OnceLock<std::net::UdpSocket> = std::sync::OnceLock::new();
        let socket = SOCKET.get_or_init(|| std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        // SAFETY: fstat on an open descriptor into a zeroed stat buffer.
        let inode = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(socket.as_raw_fd(), &mut st), 0);
            st.st_ino
        };
        let src = source(2);
        let s0 = &src.stats[0];
        s0.socket_inode.store(inode, Ordering::Relaxed);
        s0.ttl_closed.store(2, Ordering::Relaxed);
        s0.transitions[2].store(3, Ordering::Relaxed);
        s0.messages_in.store(100, Ordering::Relaxed);
        s0.delivered_local.store(90, Ordering::Relaxed);
        s0.dropped_too_large.store(4, Ordering::Relaxed);
        s0.messages_out.store(90, Ordering::Relaxed);
        s0.batches_out.store(3, Ordering::Relaxed);
        s0.connections.store(1, Ordering::Relaxed);
        src.stats[1].relayed.store(6, Ordering::Relaxed);
        src.stats[1].dropped_sender_gone.store(1, Ordering::Relaxed);
        {
            let mut h = src.histograms[0].lock();
            for v in [1_000u64, 2_000, 3_000, 1_000_000] {
                h.queue_delay_ns.saturating_record(v);
            }
            h.batch_size.saturating_record(30);
            h.batch_size.saturating_record(60);
        }
        src.histograms[1]
            .lock()
            .queue_delay_ns
            .saturating_record(5_000);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        src.peers
            .connected(shards::wire::PeerId([1; 16]), 0, 1, a, false);
        src
    }

    fn start() -> Instant {
        Instant::now()
    }

    #[test]
    fn source_can_move_to_a_metrics_thread() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<MetricsSource>();
    }

    #[test]
    fn rate_meter_constant_rate_is_exact() {
        let t0 = start();
        let mut m = RateMeter::default();
        assert_eq!(m.sample(0, t0), 0.0);
        for i in 1..=30u64 {
            let r = m.sample(i * 500, t0 + Duration::from_secs(i));
            assert!((r - 500.0).abs() < 1e-9, "second {i}: {r}");
        }
    }

    #[test]
    fn rate_meter_moves_with_the_window() {
        let t0 = start();
        let mut m = RateMeter::new(Duration::from_secs(10));
        m.sample(0, t0);
        // The first interval primes the rate at 1000/s.
        m.sample(1000, t0 + Duration::from_secs(1));
        // Traffic stops: after one window the rate has decayed by 1/e.
        let mut at = 1;
        let mut r = 0.0;
        for _ in 0..10 {
            at += 1;
            r = m.sample(1000, t0 + Duration::from_secs(at));
        }
        let expect = 1000.0 * (-1.0f64).exp();
        assert!((r - expect).abs() < 1e-6, "{r} vs {expect}");
        // The same decay whether sampled every second or once after 10 s.
        let mut once = RateMeter::new(Duration::from_secs(10));
        once.sample(0, t0);
        once.sample(1000, t0 + Duration::from_secs(1));
        let r_once = once.sample(1000, t0 + Duration::from_secs(11));
        assert!((r_once - expect).abs() < 1e-6);
        // Traffic resumes at 2000/s: the rate climbs towards it but not past it.
        let mut total = 1000;
        for _ in 0..60 {
            at += 1;
            total += 2000;
            r = m.sample(total, t0 + Duration::from_secs(at));
            assert!(r <= 2000.0 + 1e-9);
        }
        assert!((r - 2000.0).abs() < 2000.0 * 0.01, "{r}");
    }

    #[test]
    fn rate_meter_ignores_backward_counters_and_zero_intervals() {
        let t0 = start();
        let mut m = RateMeter::default();
        m.sample(100, t0);
        let r = m.sample(200, t0 + Duration::from_secs(1));
        assert!((r - 100.0).abs() < 1e-9);
        // Same instant: nothing changes, no division by zero.
        assert_eq!(m.sample(10_000, t0 + Duration::from_secs(1)), r);
        // A total that went backwards is no progress, never a negative rate, and the
        // messages are not counted twice when it comes back.
        let r2 = m.sample(150, t0 + Duration::from_secs(2));
        assert!(r2 >= 0.0 && r2 < r);
        let r3 = m.sample(200, t0 + Duration::from_secs(3));
        assert!(r3 < r2);
        // An instant before the last sample changes nothing.
        assert_eq!(m.sample(900, t0), r3);
        assert_eq!(m.rate(), r3);
    }

    #[test]
    fn network_metrics_are_real_numbers() {
        let src = busy_source();
        let t0 = Instant::now();
        let mut rate = RateMeter::default();
        rate.sample(0, t0 - Duration::from_secs(2));
        let m = src.network_metrics(&mut rate);
        assert!(m.messages_per_second > 0.0);
        assert_eq!(m.connections, 1);
        assert_eq!(m.latency_samples, 5);
        assert!((m.latency_p50_ns as f64 - 3000.0).abs() < 30.0);
        assert!(m.latency_p99_ns >= 999_000);
        assert!(m.latency_avg_ns > 200_000.0 && m.latency_avg_ns < 210_000.0);
        assert!(m.resident_memory_bytes.unwrap() > 1024 * 1024);
        assert_eq!(
            (
                m.messages_in,
                m.messages_out,
                m.delivered,
                m.relayed,
                m.dropped,
                m.batches
            ),
            (100, 90, 90, 6, 5, 3)
        );
    }
}
