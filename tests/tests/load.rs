//! The load driver against real engines on loopback: open-loop latency includes stalls
//! (no coordinated omission), and a tiny sweep produces every file it promises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bench_harness::load::{self, LoadConfig, Mode, Progress};
use bench_harness::sweep::{self, SweepConfig};
use engine::{AppKind, Engine, EngineConfig};
use shards::client::{Client, ClientConfig};
use shards::identity::Identity;
use shards::shard::Delivery;

const STALL: Duration = Duration::from_millis(500);

/// The application thread of [`stalling_echo`]; [`StallingEcho::stop`] ends it.
struct StallingEcho {
    engine: Arc<Engine>,
    stalled: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    app: std::thread::JoinHandle<()>,
}

impl StallingEcho {
    /// Ends the application thread once the measurement is over (it also ends by itself
    /// after 3 s without messages).
    fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        self.app.join().unwrap();
    }
}

/// An engine whose application is this test: it echoes every message back, except during
/// one known stall, when it answers nothing.
fn stalling_echo() -> StallingEcho {
    stalling_echo_with(|_| {})
}

/// [`stalling_echo`] with its engine configuration adjusted by `tune`.
fn stalling_echo_with(tune: impl FnOnce(&mut EngineConfig)) -> StallingEcho {
    let mut cfg = EngineConfig::loopback(1);
    cfg.app = AppKind::Channel;
    tune(&mut cfg);
    let e = Arc::new(Engine::start(cfg).unwrap());
    let stalled = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (e2, s2, d2) = (e.clone(), stalled.clone(), done.clone());
    let app = std::thread::spawn(move || {
        let mut idle = Instant::now();
        while !d2.load(Ordering::Relaxed) {
            while s2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            match e2.recv_timeout(Duration::from_millis(50)) {
                Some(Delivery::Message { from, payload, .. }) => {
                    idle = Instant::now();
                    if e2.send(from, payload).is_err() {
                        return;
                    }
                }
                _ if idle.elapsed() > Duration::from_secs(3) => return,
                _ => {}
            }
        }
    });
    StallingEcho {
        engine: e,
        stalled,
        done,
        app,
    }
}

fn stall_after(stalled: &Arc<AtomicBool>, after: Duration) -> std::thread::JoinHandle<()> {
    let s = stalled.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        s.store(true, Ordering::Relaxed);
        std::thread::sleep(STALL);
        s.store(false, Ordering::Relaxed);
    })
}

/// Against a server that stalls for 500 ms in the middle of a 2 s run, the open-loop
/// harness's high percentiles show the stall (every message scheduled during it waited),
/// while a closed-loop measurement of the same stall reports it for one message only.
#[test]
fn open_loop_latency_shows_a_stall_that_closed_loop_hides() {
    // Open loop, through the harness.
    let server = stalling_echo();
    let cfg = LoadConfig {
        target: server.engine.local_addr(),
        threads: 1,
        connections: 2,
        rate: 1_000.0,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(200),
        message_size: 32,
        mode: Mode::Echo,
        drain: Duration::from_secs(3),
        pin: false,
        max_backlog: bench_harness::load::MAX_BACKLOG,
    };
    let staller = stall_after(&server.stalled, Duration::from_millis(50 + 200 + 700));
    let r = load::run(&cfg, Arc::new(Progress::default())).unwrap();
    staller.join().unwrap();
    server.stop();
    assert_eq!(r.lost(), 0, "{r:?}");
    assert_eq!(r.corrupted, 0);
    let p90_ms = r.latency.value_at_quantile(0.90) as f64 / 1e6;
    let p99_ms = r.latency.value_at_quantile(0.99) as f64 / 1e6;
    assert!(r.latency.max() as f64 / 1e6 >= 400.0, "max shows the stall");
    assert!(p99_ms >= 300.0, "open-loop p99 {p99_ms} ms shows the stall");
    assert!(p90_ms >= 50.0, "open-loop p90 {p90_ms} ms shows the stall");

    // Closed loop: one message in flight, latency from the actual send.
    let server = stalling_echo();
    let id = Identity::generate().unwrap();
    let mut cfg = ClientConfig::default();
    cfg.batch.timeout = Duration::ZERO;
    let mut c = Client::connect(server.engine.local_addr(), &id, cfg).unwrap();
    let node = c.node_id();
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let staller = stall_after(&server.stalled, Duration::from_millis(700));
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < Duration::from_secs(2) {
        let sent = Instant::now();
        // The embedding app answers with its own sequence numbers: match the payload.
        c.send_with_seq(node, seq, seq.to_le_bytes().to_vec())
            .unwrap();
        c.flush().unwrap();
        let got = c.recv(Duration::from_secs(5)).unwrap();
        assert!(
            matches!(&got, Some(Delivery::Message { payload, .. }) if *payload == seq.to_le_bytes()),
            "reply to {seq}: {got:?}"
        );
        h.record(sent.elapsed().as_nanos() as u64).unwrap();
        seq += 1;
        // Pace like the open-loop run (one message per millisecond at most).
        std::thread::sleep(Duration::from_millis(1));
    }
    staller.join().unwrap();
    drop(c);
    server.stop();
    let closed_p99_ms = h.value_at_quantile(0.99) as f64 / 1e6;
    assert!(
        h.max() as f64 / 1e6 >= 400.0,
        "the one stalled message saw it"
    );
    assert!(
        closed_p99_ms < 100.0,
        "closed loop hides the stall: p99 {closed_p99_ms} ms over {} messages",
        h.len()
    );
}

/// A server that stops taking messages pushes back: the harness defers what a full
/// connection cannot take and sends it once the connection takes it again, its latency
/// counted from its intended time, so a 500 ms stall shows as 500 ms of latency with
/// nothing refused while the backlog bound is longer than the stall; with a bound shorter
/// than the stall, the messages deferred past it are refused instead. Small engine buffers make
/// the connection fill within the stall.
#[test]
fn back_pressure_defers_messages_until_the_backlog_bound() {
    for max_backlog in [Duration::from_secs(2), Duration::from_millis(20)] {
        let server = stalling_echo_with(|c| {
            c.channel_capacity = 16;
            c.transport.window = 16 * 1024;
        });
        let cfg = LoadConfig {
            target: server.engine.local_addr(),
            threads: 1,
            connections: 1,
            rate: 5_000.0,
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(200),
            message_size: 32,
            mode: Mode::Echo,
            drain: Duration::from_secs(3),
            pin: false,
            max_backlog,
        };
        let staller = stall_after(&server.stalled, Duration::from_millis(50 + 200 + 400));
        let r = load::run(&cfg, Arc::new(Progress::default())).unwrap();
        staller.join().unwrap();
        server.stop();
        assert_eq!((r.lost(), r.corrupted), (0, 0), "{r:?}");
        assert_eq!(r.offered, r.sent + r.refused, "{r:?}");
        let max_ms = r.latency.max() as f64 / 1e6;
        if max_backlog > STALL {
            assert_eq!(r.refused, 0, "deferred, not refused: {r:?}");
            assert!(
                r.deferred > 100,
                "the full connection deferred messages: {r:?}"
            );
            assert!(
                max_ms >= 300.0,
                "deferred messages are late by the stall: {max_ms} ms"
            );
            // The harness kept its schedule: the hold is not counted as its own lag.
            let lag_p99_ms = r.lag.value_at_quantile(0.99) as f64 / 1e6;
            assert!(lag_p99_ms < 100.0, "generator lag p99 {lag_p99_ms} ms");
        } else {
            assert!(r.refused > 100, "deferred past the bound, refused: {r:?}");
        }
    }
}

/// A server that answers every message twice: the second replies are counted as duplicates,
/// not as received, so they hide no loss and do not end the drain early; every first reply
/// matches its connection's schedule (nothing counted corrupted).
#[test]
fn duplicated_replies_are_counted_apart_and_hide_no_loss() {
    let mut ecfg = EngineConfig::loopback(1);
    ecfg.app = AppKind::Channel;
    let e = Arc::new(Engine::start(ecfg).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let (e2, d2) = (e.clone(), done.clone());
    let app = std::thread::spawn(move || {
        while !d2.load(Ordering::Relaxed) {
            let Some(Delivery::Message { from, payload, .. }) =
                e2.recv_timeout(Duration::from_millis(20))
            else {
                continue;
            };
            if e2.send(from, payload.clone()).is_err() || e2.send(from, payload).is_err() {
                return;
            }
        }
    });
    let cfg = LoadConfig {
        target: e.local_addr(),
        threads: 1,
        connections: 2,
        rate: 1_000.0,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        message_size: 32,
        mode: Mode::Echo,
        drain: Duration::from_secs(2),
        pin: false,
        max_backlog: bench_harness::load::MAX_BACKLOG,
    };
    let r = load::run(&cfg, Arc::new(Progress::default())).unwrap();
    done.store(true, Ordering::Relaxed);
    app.join().unwrap();
    assert_eq!(r.offered, 500, "{r:?}");
    assert_eq!((r.sent, r.received, r.lost()), (500, 500, 0), "{r:?}");
    assert_eq!((r.corrupted, r.measured_corrupted), (0, 0), "{r:?}");
    // Warm-up messages were duplicated too; the last replies' second copies may come after
    // the drain ended, which it does as soon as every measured message is back.
    assert!(r.duplicates >= 450, "{r:?}");
}

/// At the highest rate accepted the generator is soon far more than the backlog bound
/// behind: it refuses what is stale in one step per pass, so it keeps reading replies and
/// ends on time, and its counts add up (every message of the schedule offered, each sent
/// or refused, every one sent answered).
#[test]
fn the_highest_rate_ends_on_time_with_consistent_counts() {
    let e = Engine::start(EngineConfig::loopback(1)).unwrap();
    let cfg = LoadConfig {
        target: e.local_addr(),
        threads: 1,
        connections: 2,
        rate: load::MAX_RATE,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        message_size: 32,
        mode: Mode::Echo,
        drain: Duration::from_secs(2),
        pin: false,
        max_backlog: bench_harness::load::MAX_BACKLOG,
    };
    let r = load::run(&cfg, Arc::new(Progress::default())).unwrap();
    // 50,000,000 msg/s per connection over the 1 s measured.
    assert_eq!(r.offered, 100_000_000, "{r:?}");
    assert_eq!(r.offered, r.sent + r.refused, "{r:?}");
    assert!(r.sent > 0 && r.refused > r.sent, "{r:?}");
    assert_eq!(
        (r.received, r.lost(), r.corrupted, r.duplicates),
        (r.sent, 0, 0, 0),
        "{r:?}"
    );
    assert!(
        r.wall_time < Duration::from_millis(200 + 1000 + 2000 + 2000),
        "{:?}",
        r.wall_time
    );
}

/// Two configurations of about a second each: every run directory and every comparison
/// file is written, and nothing is lost.
#[test]
fn tiny_sweep_writes_every_file() {
    let out = std::env::temp_dir().join(format!("tiny-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = SweepConfig {
        batch_sizes: vec![1, 64],
        batch_timeouts: vec![Duration::ZERO],
        rates: vec![500.0],
        engine_shards: 1,
        load: LoadConfig {
            target: "127.0.0.1:1".parse().unwrap(),
            threads: 1,
            connections: 2,
            rate: 0.0,
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            message_size: 64,
            mode: Mode::Echo,
            drain: Duration::from_secs(2),
            pin: false,
            max_backlog: bench_harness::load::MAX_BACKLOG,
        },
        out: out.clone(),
    };
    let runs = sweep::sweep(&cfg, |_| {}).unwrap();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        for f in ["latency.hgrm", "latency.hlog", "summary.json"] {
            let p = r.dir.join(f);
            assert!(std::fs::metadata(&p).unwrap().len() > 0, "{}", p.display());
        }
        assert_eq!(r.summary.lost, 0, "{}", r.label);
        assert!(
            r.summary.received > 300,
            "{}: {}",
            r.label,
            r.summary.received
        );
    }
    let table = bench_harness::compare::compare(&sweep::dirs(&runs), &out).unwrap();
    for r in &runs {
        assert!(table.contains(&r.summary.label()), "{table}");
    }
    for f in [
        "comparison.md",
        "comparison.csv",
        "percentiles.svg",
        "percentiles.png",
        "latency_vs_throughput.svg",
        "latency_vs_throughput.png",
    ] {
        let p = out.join(f);
        assert!(std::fs::metadata(&p).unwrap().len() > 0, "{}", p.display());
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// Relay mode: each harness peer sends to the next through a 2-shard engine; every message
/// arrives (one-way latency measured on the shared clock).
#[test]
fn relay_mode_delivers_everything() {
    let e = Engine::start(EngineConfig::loopback(2)).unwrap();
    let cfg = LoadConfig {
        target: e.local_addr(),
        threads: 2,
        connections: 6,
        rate: 3_000.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        message_size: 100,
        mode: Mode::Relay,
        drain: Duration::from_secs(3),
        pin: false,
        max_backlog: bench_harness::load::MAX_BACKLOG,
    };
    let r = load::run(&cfg, Arc::new(Progress::default())).unwrap();
    // 500/s per peer, due times in [0.2 s, 1.2 s): messages 100..600 of each of 6 peers,
    // including the ones that fall due just before the end of the schedule.
    assert_eq!(r.offered, 3_000, "{r:?}");
    assert_eq!((r.sent, r.refused), (3_000, 0), "{r:?}");
    assert_eq!(r.lost(), 0, "{r:?}");
    assert_eq!(r.received, r.sent);
    assert!(
        r.wall_time < Duration::from_millis(200 + 1000 + 3000 + 2000),
        "{r:?}"
    );
    assert!(r.errors.is_empty());
    assert!(e.stats().relayed >= r.sent);
    // The harness's own QUIC view covers every connection: 3600 messages went out and as
    // many came in (several may share a packet after a stall, hence the loose bound), and
    // every active path has a round-trip time and a congestion window.
    let q = r.quic;
    assert_eq!(q.connections, 6, "{q:?}");
    assert!(q.packets_sent >= 600 && q.packets_received >= 600, "{q:?}");
    assert!(q.packets_lost <= q.packets_sent, "{q:?}");
    assert!(
        q.srtt_ms_mean > 0.0 && q.rtt_ms_max >= q.srtt_ms_mean / 2.0,
        "{q:?}"
    );
    assert!(
        q.cwnd_min_bytes > 0 && q.cwnd_min_bytes <= q.cwnd_max_bytes,
        "{q:?}"
    );
}
