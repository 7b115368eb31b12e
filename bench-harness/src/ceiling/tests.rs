use super::*;

fn tally() -> Tally {
    // 1000/s, offset half an interval: datagram k due at (k + 0.5) ms; measured from
    // 10 ms for 20 ms, so datagrams 10..30 are measured.
    Tally::new(
        1000.0,
        0.5,
        64,
        Duration::from_millis(10),
        Duration::from_millis(20),
    )
}

fn send_upto(t: &mut Tally, seq: u64) {
    while t.next_seq() < seq {
        let at = t.intended(t.next_seq());
        t.on_sent(at + Duration::from_micros(100));
    }
}

#[test]
fn schedule_and_payload_round_trip() {
    let t = tally();
    assert_eq!(t.intended(0), Duration::from_micros(500));
    assert_eq!(t.intended(10), Duration::from_micros(10_500));
    assert!(t.is_due(10, Duration::from_micros(10_500)));
    assert!(!t.is_due(11, Duration::from_micros(10_500)));
    // Datagram 30 is due at 30.5 ms, after the schedule's end.
    assert!(!t.is_due(30, Duration::from_secs(1)));
    // 3/s offset half an interval, measured from 1 s for 2 s: datagram k is due at
    // (k + 0.5) / 3 s, so 3..=8 are measured.
    let odd = Tally::new(3.0, 0.5, 64, Duration::from_secs(1), Duration::from_secs(2));
    assert_eq!((odd.offered(), odd.unsent()), (6, 6));
    let mut buf = [0u8; 64];
    t.fill(12, &mut buf);
    assert_eq!(
        load::parse_payload(&buf, 64),
        Some((12, t.intended(12).as_nanos() as u64))
    );
}

#[test]
fn latency_counts_from_the_intended_time_and_only_measured_datagrams() {
    let mut t = tally();
    send_upto(&mut t, 30);
    assert!(t.schedule_done());
    assert_eq!(t.sent, 20, "datagrams 10..30 are measured");
    assert_eq!((t.offered(), t.unsent()), (20, 0));
    assert!(
        t.lag.max().abs_diff(100_000) < 100,
        "lag recorded: {}",
        t.lag.max()
    );
    let mut buf = [0u8; 64];
    // A warm-up reply is not recorded.
    t.fill(3, &mut buf);
    assert_eq!(t.on_reply(&buf, Duration::from_millis(5)), Reply::WarmUp);
    // A measured one, 2 ms after it was due (whatever time it left).
    t.fill(12, &mut buf);
    let at = t.intended(12) + Duration::from_millis(2);
    assert_eq!(
        t.on_reply(&buf, at),
        Reply::Measured(Duration::from_millis(2))
    );
    assert_eq!(t.received, 1);
    assert_eq!(t.latency.len(), 1);
    assert!((t.latency.max() as i64 - 2_000_000).abs() < 2_000);
    assert_eq!(t.outstanding(), 19);
    assert_eq!(t.intervals.len(), 1);
}

#[test]
fn duplicates_corruption_and_unsent_sequence_numbers_are_told_apart() {
    let mut t = tally();
    send_upto(&mut t, 15);
    // Behind its schedule: 15 of the 20 measured datagrams not sent.
    assert_eq!((t.sent, t.unsent()), (5, 15));
    let mut buf = [0u8; 64];
    t.fill(11, &mut buf);
    let at = Duration::from_millis(12);
    assert!(matches!(t.on_reply(&buf, at), Reply::Measured(_)));
    assert_eq!(t.on_reply(&buf, at), Reply::Duplicate);
    assert_eq!((t.received, t.duplicates), (1, 1));
    // A flipped filler byte.
    let mut bad = buf;
    bad[40] ^= 1;
    assert_eq!(t.on_reply(&bad, at), Reply::Corrupted);
    // Short.
    assert_eq!(t.on_reply(&buf[..20], at), Reply::Corrupted);
    // Never sent: 20 is past next_seq.
    t.fill(20, &mut buf);
    assert_eq!(t.on_reply(&buf, at), Reply::Corrupted);
    // The right sequence number with another intended time.
    load::write_payload(&mut buf, 12, 1);
    assert_eq!(t.on_reply(&buf, at), Reply::Corrupted);
    t.on_oversized();
    assert_eq!(t.corrupted, 5);
    // Of those, only the one naming 12 stands for a datagram: sent, measured, not yet
    // answered. The copies of 11 (answered already), 20 (never sent) and the oversized
    // one stand for none.
    assert_eq!(t.measured_corrupted, 1);
    // A second corrupted reply naming 12 stands for nothing more.
    load::write_payload(&mut buf, 12, 2);
    assert_eq!(t.on_reply(&buf, at), Reply::Corrupted);
    assert_eq!(t.measured_corrupted, 1);
    // sent 5 measured (10..15), 1 received, 1 measured corrupted: three outstanding.
    assert_eq!(t.outstanding(), 3);
}

#[test]
fn a_low_rate_run_loses_nothing_and_counts_add_up() {
    for io in [IoMode::PerDatagram, IoMode::Batched, IoMode::Offload] {
        let cfg = LoadConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 2,
            connections: 2,
            rate: 2000.0,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            message_size: 64,
            mode: Mode::Echo,
            drain: Duration::from_secs(2),
            pin: false,
            max_backlog: crate::load::MAX_BACKLOG,
        };
        let run = run_once(&cfg, io).unwrap();
        let r = &run.result;
        // 1000/s per thread over 500 ms: 500 each, 1000 in all.
        assert_eq!(
            (r.offered, r.sent, r.refused),
            (1000, 1000, 0),
            "{io}: {r:?}"
        );
        assert_eq!(r.received + r.corrupted + r.lost(), r.sent, "{io}");
        assert_eq!((r.lost(), r.corrupted, run.duplicates), (0, 0, 0), "{io}");
        // 100 ms of warm-up at 2000/s: 200 more reached the server.
        assert_eq!(run.server.received, 1200, "{io}: {:?}", run.server);
        assert_eq!(run.server.sent, run.server.received, "{io}");
        assert_eq!(run.generator_datagrams, (1200, 1200), "{io}");
        assert!(run.load.target.port() != 0);
    }
}

#[test]
fn a_bad_configuration_is_refused_before_anything_starts() {
    let cfg = LoadConfig {
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: 1,
        connections: 1,
        rate: 100.0,
        duration: Duration::from_millis(100),
        warmup: Duration::ZERO,
        message_size: 8,
        mode: Mode::Echo,
        drain: Duration::ZERO,
        pin: false,
        max_backlog: crate::load::MAX_BACKLOG,
    };
    assert!(matches!(
        run_once(&cfg, IoMode::Batched),
        Err(CeilingError::Config(_))
    ));
}
