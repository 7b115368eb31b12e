//! `compare` over synthetic run directories, `.hlog` and `.hgrm` inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bench_harness::compare::{CompareError, compare, compare_outputs};
use bench_harness::hgrm::{NS_TO_MS, percentile_distribution_string};
use bench_harness::hlog::HlogWriter;
use bench_harness::summary::{Counts, Mode, RunConfig, Summary, Timing};
use hdrhistogram::Histogram;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Latencies around `base_us` microseconds with a tail, in nanoseconds.
fn latencies(base_us: u64, seed: u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut s = seed | 1;
    for i in 0..20_000u64 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let mut v = base_us * 1_000 + s % (base_us * 500);
        if i.is_multiple_of(500) {
            v *= 8;
        }
        h.record(v).unwrap();
    }
    h
}

/// A run directory as the load driver leaves it: summary.json + latency.hlog.
fn run_dir(root: &Path, name: &str, batch: u32, rate: f64, base_us: u64) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let lat = latencies(base_us, batch as u64 * 31 + rate as u64);
    let file = fs::File::create(dir.join("latency.hlog")).unwrap();
    let mut w = HlogWriter::new(file, SystemTime::now()).unwrap();
    // Two intervals whose merge is `lat`.
    let mut first = Histogram::<u64>::new_from(&lat);
    let mut second = Histogram::<u64>::new_from(&lat);
    for (n, v) in lat.iter_recorded().enumerate() {
        let target = if n.is_multiple_of(2) {
            &mut first
        } else {
            &mut second
        };
        target
            .record_n(v.value_iterated_to(), v.count_at_value())
            .unwrap();
    }
    w.write_interval(Duration::ZERO, Duration::from_secs(1), &first)
        .unwrap();
    w.write_interval(Duration::from_secs(1), Duration::from_secs(1), &second)
        .unwrap();
    w.flush().unwrap();
    let config = RunConfig {
        target: "127.0.0.1:4433".into(),
        mode: Mode::Echo,
        connections: 8,
        rate,
        duration_s: 2.0,
        warmup_s: 1.0,
        message_size: 256,
        batch_size: Some(batch),
        batch_timeout_ms: Some(0.5),
        cores: 1,
    };
    let counts = Counts {
        offered: (rate * 2.0) as u64,
        refused: 0,
        deferred: 0,
        connection_errors: 0,
        sent: (rate * 2.0) as u64,
        received: (rate * 2.0) as u64 - 3,
        lost: 3,
        corrupted: 0,
        duplicates: 0,
        errors: BTreeMap::new(),
    };
    let lag = Histogram::<u64>::new(3).unwrap();
    let timing = Timing {
        measured: Duration::from_secs(2),
        receive_window: Duration::from_secs(2),
        wall: Duration::from_secs(3),
        steal: None,
    };
    Summary::from_histograms(config, &lat, &lag, counts, timing)
        .write_json(&dir)
        .unwrap();
    dir
}

fn assert_png(path: &Path) {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.len() > 10_000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    assert!(
        bytes.starts_with(PNG_SIGNATURE),
        "{} is not a PNG",
        path.display()
    );
}

fn assert_svg_with(path: &Path, labels: &[&str]) {
    let svg = fs::read_to_string(path).unwrap();
    assert!(svg.starts_with("<svg"), "{} is not an SVG", path.display());
    for l in labels {
        assert!(svg.contains(l), "{} lacks {l:?}", path.display());
    }
}

#[test]
fn compare_two_run_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run_dir(tmp.path(), "bs1", 1, 1000.0, 300);
    let b = run_dir(tmp.path(), "bs16", 16, 1000.0, 500);
    let out = tmp.path().join("out");

    let md = compare(&[a, b], &out).unwrap();

    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 4, "{md}");
    assert!(lines[0].starts_with("| config "));
    assert!(lines[0].contains("| p99.9 |"));
    assert!(lines[2].starts_with("| bs=1 bt=0.5ms @1000/s "), "{md}");
    assert!(lines[2].contains("| 1000.0 |"), "{md}");
    assert!(
        lines[0].trim_end().ends_with("| verdict | lag p99 |"),
        "{md}"
    );
    assert!(
        lines[2]
            .trim_end()
            .ends_with("|    3 |  3.0 |      ok |   0.000 |"),
        "{md}"
    );
    assert!(lines[3].starts_with("| bs=16 bt=0.5ms @1000/s "), "{md}");
    assert_eq!(fs::read_to_string(out.join("comparison.md")).unwrap(), md);

    let csv = fs::read_to_string(out.join("comparison.csv")).unwrap();
    let csv_lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        csv_lines[0],
        "config,rate,offered,sent,refused,achieved,p50,p90,p99,p99.9,max,lost,wall,verdict,lag p99"
    );
    assert!(
        csv_lines[1].starts_with("bs=1 bt=0.5ms @1000/s,1000.0,2000,2000,0,998.5,0.3"),
        "{csv}"
    );
    assert!(csv_lines[2].ends_with(",3,3.0,ok,0.000"), "{csv}");

    for name in ["percentiles", "latency_vs_throughput"] {
        assert_png(&out.join(format!("{name}.png")));
        assert_svg_with(
            &out.join(format!("{name}.svg")),
            &[
                if name == "percentiles" {
                    "bs=1 bt=0.5ms @1000/s"
                } else {
                    "bs=1 bt=0.5ms"
                },
                "bs=16",
            ],
        );
    }
    assert_svg_with(&out.join("percentiles.svg"), &["99.99%", "Latency (ms)"]);
}

#[test]
fn compare_mixed_inputs_and_families() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = vec![
        run_dir(tmp.path(), "a1", 1, 1000.0, 200),
        run_dir(tmp.path(), "a2", 1, 2000.0, 260),
        run_dir(tmp.path(), "a3", 1, 4000.0, 900),
        run_dir(tmp.path(), "b1", 8, 1000.0, 300),
        run_dir(tmp.path(), "b2", 8, 2000.0, 320),
        run_dir(tmp.path(), "b3", 8, 4000.0, 380),
    ];
    // A bare .hgrm (ms) and a bare .hlog (ns): latency columns only.
    let h = latencies(700, 99);
    let hgrm = tmp.path().join("old-run.hgrm");
    fs::write(&hgrm, percentile_distribution_string(&h, NS_TO_MS, 5)).unwrap();
    let hlog = tmp.path().join("other.hlog");
    let mut w = HlogWriter::new(fs::File::create(&hlog).unwrap(), SystemTime::now()).unwrap();
    w.write_interval(Duration::ZERO, Duration::from_secs(1), &latencies(450, 7))
        .unwrap();
    w.flush().unwrap();
    inputs.push(hgrm);
    inputs.push(hlog);
    let out = tmp.path().join("out");

    let result = compare_outputs(&inputs, &out).unwrap();
    let md = &result.markdown;
    let old = md.lines().find(|l| l.starts_with("| old-run ")).unwrap();
    // rates, counts, loss and verdict are unknown for a .hgrm
    let cells: Vec<&str> = old.split('|').map(str::trim).collect();
    assert_eq!(&cells[2..7], ["", "", "", "", ""], "{old}");
    assert_eq!(&cells[12..15], ["", "", ""], "{old}");
    assert!(cells[7].parse::<f64>().unwrap() > 0.7, "{old}");
    assert!(md.lines().any(|l| l.starts_with("| other ")), "{md}");
    assert_eq!(result.files.len(), 6);
    for f in &result.files {
        assert!(fs::metadata(f).unwrap().len() > 0, "{}", f.display());
    }
    assert_svg_with(
        &out.join("percentiles.svg"),
        &["old-run", "other", "bs=8 bt=0.5ms @4000/s"],
    );
    assert_svg_with(
        &out.join("latency_vs_throughput.svg"),
        &["bs=1 bt=0.5ms", "bs=8 bt=0.5ms"],
    );
    let thr = fs::read_to_string(out.join("latency_vs_throughput.svg")).unwrap();
    assert!(
        !thr.contains("old-run"),
        "only inputs with a summary are in the throughput plot"
    );
    // Keep a copy for eyeballing when asked to.
    if let Some(keep) = std::env::var_os("BENCH_HARNESS_KEEP_PLOTS") {
        let keep = PathBuf::from(keep);
        fs::create_dir_all(&keep).unwrap();
        for f in &result.files {
            fs::copy(f, keep.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn bad_inputs_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    assert!(matches!(compare(&[], &out), Err(CompareError::NoInputs)));
    let txt = tmp.path().join("notes.txt");
    fs::write(&txt, "hi").unwrap();
    assert!(matches!(
        compare(&[txt], &out),
        Err(CompareError::UnknownInput(_))
    ));
    let empty = tmp.path().join("empty-run");
    fs::create_dir_all(&empty).unwrap();
    assert!(matches!(
        compare(&[empty], &out),
        Err(CompareError::EmptyRunDir(_))
    ));
}

#[test]
fn empty_inputs_give_a_table_without_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = Histogram::<u64>::new(3).unwrap();
    let hgrm = tmp.path().join("idle.hgrm");
    fs::write(&hgrm, percentile_distribution_string(&empty, NS_TO_MS, 5)).unwrap();
    let out = tmp.path().join("out");
    let result = compare_outputs(&[hgrm], &out).unwrap();
    assert!(
        result.markdown.contains("| idle   |"),
        "{}",
        result.markdown
    );
    assert_eq!(result.files.len(), 2, "table only: {:?}", result.files);
    assert!(!out.join("percentiles.png").exists());
    let missing = tmp.path().join("nope.hlog");
    assert!(matches!(
        compare(&[missing], &out),
        Err(CompareError::Missing(_))
    ));
}
