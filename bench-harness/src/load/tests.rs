use super::thread::{Unpublished, account_message};
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
        max_backlog: MAX_BACKLOG,
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
