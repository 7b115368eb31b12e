use super::thread::{Unpublished, account_message, record, refuse_stale};
use super::*;
use shards::shard::Delivery;

/// A small deterministic generator for the table-free tests below (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (n > 0), close enough for choosing test cases.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config(warmup: Duration, duration: Duration, max_backlog: Duration) -> LoadConfig {
    LoadConfig {
        target: "127.0.0.1:9".parse().unwrap(),
        threads: 1,
        connections: 1,
        rate: 1000.0,
        duration,
        warmup,
        message_size: 64,
        mode: Mode::Echo,
        drain: max_backlog + Duration::from_secs(1),
        pin: false,
        max_backlog,
    }
}

#[test]
fn first_due_from_inverts_due() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let n = 1 + rng.below(64) as usize;
        let rate = [0.5, 3.0, 999.0, 1e4 / 3.0, 123_457.0, 2.5e6, 1e8][rng.below(7) as usize];
        let s = Schedule::new(rate / n as f64, rng.below(n as u64) as usize, n);
        // Around a message's due time (up to 2^43, beyond any run the bounds allow), and
        // anywhere.
        let bits = rng.below(44);
        let k = rng.below(1 << bits);
        let at = s.due(k).as_nanos() as u64;
        for t in [
            at.saturating_sub(1),
            at,
            at.saturating_add(1),
            rng.below(1 << 40),
            rng.below(1 << 50),
        ] {
            let t = Duration::from_nanos(t);
            let f = s.first_due_from(t);
            assert!(s.due(f) >= t, "{s:?} {t:?} {f}");
            assert!(f == 0 || s.due(f - 1) < t, "{s:?} {t:?} {f}");
        }
    }
}

/// The one-message-at-a-time refusal loop `refuse_stale` replaces, as its reference: the
/// first message not refused, the measured refused, and the exact lateness of those the
/// generator itself was late for.
fn refuse_one_by_one(
    s: Schedule,
    mut seq: u64,
    (dead, full_at): (bool, Option<Duration>),
    elapsed: Duration,
    cfg: &LoadConfig,
    lag: &mut Histogram<u64>,
) -> (u64, u64) {
    let mut measured = 0;
    loop {
        let due = s.due(seq);
        if due > elapsed || due >= cfg.warmup + cfg.duration {
            break;
        }
        if !dead && elapsed.saturating_sub(due) <= cfg.max_backlog {
            break;
        }
        if due >= cfg.warmup {
            measured += 1;
            if !dead && full_at.is_none_or(|t| due > t) {
                lag.record((elapsed - due).as_nanos() as u64).unwrap();
            }
        }
        seq += 1;
    }
    (seq, measured)
}

#[test]
fn refusing_in_one_step_matches_refusing_one_by_one() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let ms = Duration::from_millis;
    let (mut many, mut lagged) = (0, 0);
    for case in 0..2_000 {
        let n = 1 + rng.below(16) as usize;
        let rate = [1.0, 7.0, 1000.0, 3333.3, 40_000.0, 1e6 / 7.0, 1e6][rng.below(7) as usize];
        let s = Schedule::new(rate / n as f64, rng.below(n as u64) as usize, n);
        let cfg = config(
            [ms(0), ms(1), ms(250), ms(1000)][rng.below(4) as usize],
            [ms(1), ms(333), ms(1000)][rng.below(3) as usize],
            [ms(1), ms(7), ms(100)][rng.below(3) as usize],
        );
        let end = cfg.warmup + cfg.duration + cfg.max_backlog + ms(5);
        let elapsed = Duration::from_nanos(rng.below(end.as_nanos() as u64));
        let before = |rng: &mut Rng| Duration::from_nanos(rng.below(elapsed.as_nanos() as u64 + 1));
        // From the start, or from a message due anywhere before `elapsed`.
        let next_seq = match rng.below(3) {
            0 => 0,
            _ => s.first_due_from(before(&mut rng)),
        };
        let dead = rng.below(4) == 0;
        // The connection never pushed back, or last did at some point before `elapsed`.
        let full_at = match rng.below(2) {
            0 => None,
            _ => Some(before(&mut rng)),
        };
        let (mut got_lag, mut want_lag) = (new_hist(), new_hist());
        let got = refuse_stale(s, next_seq, (dead, full_at), elapsed, &cfg, &mut got_lag);
        let want = refuse_one_by_one(s, next_seq, (dead, full_at), elapsed, &cfg, &mut want_lag);
        let what = format!(
            "case {case}: {s:?} from {next_seq} at {elapsed:?}, dead {dead}, full at {full_at:?}, {cfg:?}"
        );
        assert_eq!(got, want, "{what}");
        // Every message the generator was late for is in the lag; up to 64 exactly, more
        // at most 1/64 of their spread (and the histogram's precision) less late.
        assert_eq!(got_lag.len(), want_lag.len(), "{what}");
        if want_lag.len() <= 64 {
            assert_eq!(got_lag, want_lag, "{what}");
        } else {
            let slack = (want_lag.max() - want_lag.min()) / 64 + want_lag.max() / 500 + 1;
            for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
                let (g, w) = (got_lag.value_at_quantile(q), want_lag.value_at_quantile(q));
                assert!(
                    g <= w + w / 500 && g + slack >= w,
                    "q {q}: {g} against {w}, {what}"
                );
            }
            lagged += 1;
        }
        if got.1 > 1000 {
            many += 1;
        }
    }
    // The cases include long runs of refusals and of lateness, not only the edges.
    assert!(many > 100 && lagged > 100, "{many} {lagged}");
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
        drain: Duration::from_secs(1),
        ..config(Duration::from_secs(1), Duration::from_secs(3), MAX_BACKLOG)
    };
    // One message a millisecond: message k is due at k ms.
    let s = Schedule::new(1000.0, 0, 1);
    let mut inbound = Inbound::new(s, cfg.warmup + cfg.duration);
    let mut r = ThreadResult::new();
    let at = Duration::from_secs(2);
    let (warm, measured) = (500, 1500);
    let due = |seq| s.due(seq).as_nanos() as u64;
    // Intact: a warm-up reply is not measured, a measured one is.
    account_message(
        &mut r,
        &payload(warm, due(warm), 64),
        at,
        &mut inbound,
        &cfg,
    );
    account_message(
        &mut r,
        &payload(measured, due(measured), 64),
        at,
        &mut inbound,
        &cfg,
    );
    assert_eq!((r.received, r.unpublished.measured_done), (1, 1));
    // Corrupted: all counted as corrupted, but only the one whose header places it in
    // the measured phase is accounted for in the drain and against the measured messages
    // sent; an unreadable one is neither.
    for (seq, size) in [(warm, 64), (measured + 1, 64), (measured + 2, 12)] {
        let mut p = payload(seq, due(seq), 64);
        p[40] ^= 1;
        p.truncate(size);
        account_message(&mut r, &p, at, &mut inbound, &cfg);
    }
    assert_eq!((r.corrupted, r.unpublished.measured_done), (3, 2));
    assert_eq!(r.measured_corrupted, 1);
}

#[test]
fn duplicated_and_mismatched_replies_are_not_received() {
    let cfg = LoadConfig {
        drain: Duration::from_secs(1),
        ..config(Duration::from_secs(1), Duration::from_secs(3), MAX_BACKLOG)
    };
    // Connection 1 of 2 at 1000 msg/s: message k is due at k ms + 0.5 ms; the schedule
    // ends with message 3999.
    let s = Schedule::new(1000.0, 1, 2);
    let mut inbound = Inbound::new(s, cfg.warmup + cfg.duration);
    let mut r = ThreadResult::new();
    let at = Duration::from_secs(4);
    let due = |seq| s.due(seq).as_nanos() as u64;
    for seq in [0, 1500, 1501, 3999] {
        account_message(&mut r, &payload(seq, due(seq), 64), at, &mut inbound, &cfg);
    }
    assert_eq!((r.received, r.duplicates, r.corrupted), (3, 0, 0));
    // Each again, several times: duplicates, neither received nor accounted for.
    for _ in 0..3 {
        for seq in [0, 1500, 1501, 3999] {
            account_message(&mut r, &payload(seq, due(seq), 64), at, &mut inbound, &cfg);
        }
    }
    assert_eq!((r.received, r.duplicates, r.corrupted), (3, 12, 0));
    assert_eq!(r.unpublished.measured_done, 3);
    // Intact payloads that are not messages of this schedule: another connection's
    // intended time, a sequence number past the schedule's end, a message not due yet.
    let mismatched = [
        payload(
            1600,
            Schedule::new(1000.0, 0, 2).due(1600).as_nanos() as u64,
            64,
        ),
        payload(4000, due(4000), 64),
        payload(1700, due(1700), 64),
    ];
    for p in &mismatched[..2] {
        account_message(&mut r, p, at, &mut inbound, &cfg);
    }
    account_message(
        &mut r,
        &mismatched[2],
        Duration::from_millis(1600),
        &mut inbound,
        &cfg,
    );
    assert_eq!((r.received, r.duplicates, r.corrupted), (3, 12, 3));
    // The two that name a measured message of this schedule not answered yet (1600 and
    // 1700) stand for those messages; 4000 is past the measured phase.
    assert_eq!(r.measured_corrupted, 2);
    assert_eq!(r.unpublished.measured_done, 5);
    // A message has one outcome: the genuine 1700, coming after a corrupted reply stood
    // for it, is a second one, and a second corrupted reply for 1600 stands for nothing.
    account_message(
        &mut r,
        &payload(1700, due(1700), 64),
        at,
        &mut inbound,
        &cfg,
    );
    account_message(&mut r, &mismatched[0], at, &mut inbound, &cfg);
    assert_eq!((r.received, r.duplicates, r.corrupted), (3, 13, 4));
    assert_eq!(r.measured_corrupted, 2);
    assert_eq!(r.unpublished.measured_done, 5);
}

#[test]
fn lost_counts_measured_corrupted_replies_only() {
    let mut r = LoadResult {
        latency: new_hist(),
        intervals: Vec::new(),
        interval: Duration::from_secs(1),
        lag: new_hist(),
        offered: 10,
        sent: 10,
        deferred: 0,
        refused: 0,
        connection_errors: 0,
        received: 7,
        corrupted: 5,
        measured_corrupted: 1,
        duplicates: 4,
        errors: Default::default(),
        elapsed: Duration::from_secs(1),
        receive_window: Duration::from_secs(1),
        wall_time: Duration::from_secs(1),
        steal: None,
        started_at: std::time::SystemTime::UNIX_EPOCH,
        quic: Default::default(),
    };
    // Warm-up corruption and duplicates hide no measured loss.
    assert_eq!(r.lost(), 2);
    r.errors.insert("UnknownDestination".into(), 2);
    assert_eq!(r.lost(), 0);
}

#[test]
fn replies_after_the_drain_are_not_counted() {
    // Measured phase 1..4 s, drain until 5 s.
    let cfg = config(
        Duration::from_secs(1),
        Duration::from_secs(3),
        Duration::from_millis(100),
    );
    let cfg = LoadConfig {
        drain: Duration::from_secs(1),
        ..cfg
    };
    let s = Schedule::new(1000.0, 0, 1);
    let mut inbound = Inbound::new(s, cfg.warmup + cfg.duration);
    let reply = |seq| Delivery::Message {
        from: PeerId([0; 16]),
        seq,
        payload: payload(seq, s.due(seq).as_nanos() as u64, 64),
    };
    let mut r = ThreadResult::new();
    let just_before = Duration::from_secs(5) - Duration::from_nanos(1);
    assert!(
        record(
            &mut r,
            reply(1500),
            just_before,
            s,
            (&mut inbound, None),
            &cfg
        )
        .is_some()
    );
    assert_eq!((r.received, r.unpublished.measured_done), (1, 1));
    // At or after the end of the drain the message stays lost; the buffer is still given
    // back for reuse.
    for at in [Duration::from_secs(5), Duration::from_secs(6)] {
        assert!(record(&mut r, reply(1501), at, s, (&mut inbound, None), &cfg).is_some());
    }
    assert_eq!((r.received, r.unpublished.measured_done), (1, 1));
    assert_eq!(
        (r.corrupted, r.latency.len(), r.unpublished.received),
        (0, 1, 1)
    );
}

/// A library caller gets the command line's bounds too, as errors before anything starts.
#[test]
fn out_of_bound_configurations_are_errors() {
    let ok = config(Duration::ZERO, Duration::from_secs(1), MAX_BACKLOG);
    let day = MAX_PHASE + Duration::from_secs(1);
    let bad = [
        LoadConfig {
            rate: 1e9,
            ..ok.clone()
        },
        LoadConfig {
            message_size: MAX_MESSAGE_SIZE + 1,
            ..ok.clone()
        },
        LoadConfig {
            max_backlog: Duration::ZERO,
            ..ok.clone()
        },
        LoadConfig {
            duration: day,
            ..ok.clone()
        },
        LoadConfig {
            warmup: day,
            ..ok.clone()
        },
        LoadConfig {
            drain: day,
            ..ok.clone()
        },
    ];
    for cfg in bad {
        let e = run(&cfg, Arc::new(Progress::default()));
        assert!(matches!(e, Err(LoadError::Config(_))), "{cfg:?}: {e:?}");
    }
}

#[test]
fn interval_histograms_stay_within_their_bound_whatever_the_duration() {
    let s = Duration::from_secs;
    assert_eq!(interval_length(Duration::from_millis(1)), s(1));
    assert_eq!(interval_length(s(300)), s(1));
    assert_eq!(interval_length(s(301)), s(2));
    assert_eq!(interval_length(s(3600)), s(12));
    assert_eq!(interval_length(MAX_PHASE), s(288));
    for duration in [
        s(1),
        s(10),
        s(299),
        s(300),
        s(301),
        s(3599),
        s(3600),
        MAX_PHASE,
    ] {
        let interval = interval_length(duration);
        let mut intervals = Vec::new();
        // A message at the very end of the measured phase.
        record_interval(
            &mut intervals,
            interval,
            duration - Duration::from_nanos(1),
            5,
        );
        let n = duration.as_nanos().div_ceil(interval.as_nanos()) as usize;
        assert!(n <= MAX_INTERVALS, "{duration:?}");
        assert_eq!(intervals.len(), n, "{duration:?}");
        // One claiming to be far past it goes into the last interval there can be.
        record_interval(&mut intervals, interval, MAX_PHASE * 3, 5);
        assert!(intervals.len() <= MAX_INTERVALS, "{duration:?}");
        assert_eq!(intervals.iter().map(|h| h.len()).sum::<u64>(), 2);
    }
    // Merging moves what the total does not have yet and adds the rest.
    let mut a = Vec::new();
    record_interval(&mut a, s(1), s(0), 7);
    let mut b = Vec::new();
    record_interval(&mut b, s(1), s(0), 9);
    record_interval(&mut b, s(1), s(2), 11);
    merge_intervals(&mut a, b);
    let counts: Vec<u64> = a.iter().map(|h| h.len()).collect();
    assert_eq!(counts, [2, 0, 1]);
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

#[test]
fn only_the_first_outcome_of_a_message_counts_whether_reply_or_error() {
    let cfg = config(
        Duration::from_secs(1),
        Duration::from_secs(3),
        Duration::from_millis(100),
    );
    let s = Schedule::new(1000.0, 0, 1);
    let reply = |seq: u64| Delivery::Message {
        from: PeerId([0; 16]),
        seq,
        payload: payload(seq, s.due(seq).as_nanos() as u64, 64),
    };
    let error = |seq: u64| {
        Delivery::Error(
            shards::wire::ErrorRecord::new(
                shards::wire::ErrorCode::UnknownDestination,
                seq,
                PeerId([1; 16]),
                String::new(),
            )
            .unwrap(),
        )
    };
    let at = Duration::from_secs(3);
    // Echo: one bitmap for replies and errors.
    let mut inbound = Inbound::new(s, cfg.warmup + cfg.duration);
    let mut r = ThreadResult::new();
    record(&mut r, reply(1500), at, s, (&mut inbound, None), &cfg);
    record(&mut r, error(1500), at, s, (&mut inbound, None), &cfg);
    record(&mut r, error(1600), at, s, (&mut inbound, None), &cfg);
    record(&mut r, error(1600), at, s, (&mut inbound, None), &cfg);
    // A warm-up message's error is not measured, first or not.
    record(&mut r, error(10), at, s, (&mut inbound, None), &cfg);
    record(&mut r, error(10), at, s, (&mut inbound, None), &cfg);
    assert_eq!(r.received, 1);
    assert_eq!(r.errors.values().sum::<u64>(), 1);
    assert_eq!(r.duplicates, 2);
    assert_eq!(r.unpublished.measured_done, 2);
    // Relay: errors about this connection's own messages have a bitmap of their own.
    let mut inbound = Inbound::new(Schedule::new(1000.0, 1, 2), cfg.warmup + cfg.duration);
    let mut own = Inbound::new(s, cfg.warmup + cfg.duration);
    let mut r = ThreadResult::new();
    record(
        &mut r,
        error(1500),
        at,
        s,
        (&mut inbound, Some(&mut own)),
        &cfg,
    );
    record(
        &mut r,
        error(1500),
        at,
        s,
        (&mut inbound, Some(&mut own)),
        &cfg,
    );
    assert_eq!(r.errors.values().sum::<u64>(), 1);
    assert_eq!(r.duplicates, 1);
}
