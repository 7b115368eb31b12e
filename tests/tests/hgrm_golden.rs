//! `.hgrm` output against files written by Java HdrHistogram 2.1.11 (see tests/data/README.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bench_harness::hgrm::{parse_percentile_distribution, percentile_distribution_string};
use hdrhistogram::Histogram;

fn golden(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Compares line by line so a failure names the first differing row.
fn assert_same(ours: &str, name: &str) {
    let theirs = golden(name);
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(a, b, "{name}: line {} differs", i + 1);
    }
    assert_eq!(
        ours.lines().count(),
        theirs.lines().count(),
        "{name}: line count"
    );
    assert_eq!(ours, theirs, "{name}: bytes (line endings)");
}

fn seq(sigfig: u8, n: u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(sigfig).unwrap();
    for v in 1..=n {
        h.record(v).unwrap();
    }
    h
}

#[test]
fn values_1_to_10000_match_java() {
    let h = seq(3, 10_000);
    assert_same(
        &percentile_distribution_string(&h, 1.0, 5),
        "seq_1_10000_scale1.hgrm",
    );
    assert_same(
        &percentile_distribution_string(&h, 1000.0, 5),
        "seq_1_10000_scale1000.hgrm",
    );
}

#[test]
fn empty_histogram_matches_java() {
    let h = Histogram::<u64>::new(3).unwrap();
    assert_same(
        &percentile_distribution_string(&h, 1e6, 5),
        "empty_scale1e6.hgrm",
    );
}

#[test]
fn rounding_ties_match_java_half_up() {
    let h = seq(2, 2000);
    assert_same(
        &percentile_distribution_string(&h, 8.0, 5),
        "seq_1_2000_sig2_scale8.hgrm",
    );
}

#[test]
fn nanosecond_latencies_in_ms_match_java() {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
    let mut s: u64 = 42;
    for _ in 0..100_000 {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let u = s >> 33;
        let mut v = 50_000 + u % 950_000;
        if u & 0x3ff == 0 {
            v *= 40;
        }
        h.record(v).unwrap();
    }
    assert_same(
        &percentile_distribution_string(&h, 1e6, 5),
        "lcg_ns_scale1e6.hgrm",
    );
}

#[test]
fn java_file_parses_back() {
    let parsed = parse_percentile_distribution(&golden("seq_1_10000_scale1000.hgrm")).unwrap();
    assert_eq!(parsed.rows.len(), 69);
    assert_eq!(parsed.total_count, Some(10_000));
    assert_eq!(parsed.max, Some(10.007));
    assert_eq!(parsed.value_at_quantile(0.5), Some(5.003));
    // No row at exactly 0.99: the next row up (0.990625) bounds the true 9.903 from above.
    assert_eq!(parsed.value_at_quantile(0.99), Some(9.911));
    let last = parsed.rows.last().unwrap();
    assert_eq!(
        (last.value, last.quantile, last.total_count),
        (10.007, 1.0, 10_000)
    );
}
