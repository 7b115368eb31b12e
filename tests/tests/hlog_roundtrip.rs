//! `.hlog` written by `HlogWriter` reads back with the same histograms and offsets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bench_harness::hlog::{HlogWriter, LEGEND, merge, read_hlog};
use hdrhistogram::Histogram;

/// Interval `i` holds pseudo-random latencies between 20 µs and ~20 ms, in nanoseconds.
fn interval(i: u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut s = 0x9E37_79B9_7F4A_7C15_u64 ^ i;
    for _ in 0..5_000 + i * 1_000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        h.record(20_000 + s % (2_000_000 * (i + 1))).unwrap();
    }
    h
}

#[test]
fn round_trip_preserves_histograms_and_offsets() {
    let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let originals: Vec<Histogram<u64>> = (0..5).map(interval).collect();
    let mut w = HlogWriter::new(Vec::new(), start).unwrap();
    for (i, h) in originals.iter().enumerate() {
        let offset = Duration::from_millis(1000 * i as u64 + 250);
        w.write_interval(offset, Duration::from_secs(1), h).unwrap();
    }
    let bytes = w.into_inner();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "#[Logged with bench-harness 0.1.0]");
    assert_eq!(lines[1], "#[Histogram log format version 1.3]");
    assert_eq!(
        lines[2],
        "#[StartTime: 1700000000.123 (seconds since epoch)]"
    );
    assert_eq!(
        lines[3],
        "#[BaseTime: 1700000000.123 (seconds since epoch)]"
    );
    assert_eq!(lines[4], LEGEND);
    assert!(lines[5].starts_with("0.250,1.000,"), "{}", lines[5]);
    assert!(
        lines[5].contains(",HISTF"),
        "compressed V2 payload: {}",
        lines[5]
    );

    let back = read_hlog(&bytes[..]).unwrap();
    assert_eq!(back.len(), originals.len());
    for (i, ((offset, len, h), orig)) in back.iter().zip(&originals).enumerate() {
        assert_eq!(*offset, Duration::from_millis(1000 * i as u64 + 250));
        assert_eq!(*len, Duration::from_secs(1));
        assert_eq!(h.len(), orig.len());
        assert_eq!(h.min(), orig.min());
        assert_eq!(h.max(), orig.max());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(
                h.value_at_quantile(q),
                orig.value_at_quantile(q),
                "interval {i} q {q}"
            );
        }
        assert_eq!(h, orig);
    }

    let merged = merge(&back).unwrap();
    let mut expected = Histogram::<u64>::new(3).unwrap();
    for h in &originals {
        expected.add(h).unwrap();
    }
    assert_eq!(merged.len(), expected.len());
    assert_eq!(merged.max(), expected.max());
    assert_eq!(
        merged.value_at_quantile(0.99),
        expected.value_at_quantile(0.99)
    );
}

#[test]
fn reads_java_style_log_without_base_time() {
    // Java HistogramLogWriter without BaseTime: absolute timestamps, legend, and a
    // comment line between intervals.
    let h = interval(0);
    let mut w = HlogWriter::new(Vec::new(), SystemTime::UNIX_EPOCH).unwrap();
    w.write_interval(
        Duration::from_secs(1_700_000_010),
        Duration::from_secs(1),
        &h,
    )
    .unwrap();
    let text = String::from_utf8(w.into_inner()).unwrap();
    let line = text.lines().last().unwrap();
    let java = format!(
        "#[Histogram log format version 1.3]\n\
         #[StartTime: 1700000000.000 (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]\n\
         {LEGEND}\n#a comment\n{line}\n"
    );
    let back = read_hlog(java.as_bytes()).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, Duration::from_secs(10));
    assert_eq!(back[0].2, h);
}

#[test]
fn garbage_is_an_error() {
    assert!(read_hlog(&b"not a log\n"[..]).is_err());
    assert!(read_hlog(&b"0.000,1.000,1.0,!!!notbase64\n"[..]).is_err());
}
