//! `bench-harness ceiling`: the raw UDP echo ceiling, run as an engineer runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;

use bench_harness::summary::Summary;

use crate::common::harness_bin as bin;

/// The rows of `ceiling-runs.csv` by column name. The verdict, last, may hold commas
/// (quoted), so a row is split into at most as many cells as there are headers.
fn runs_csv(text: &str) -> Vec<HashMap<String, String>> {
    let mut lines = text.lines();
    let headers: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.splitn(headers.len(), ',').collect();
            assert_eq!(cells.len(), headers.len(), "{l}");
            headers
                .iter()
                .zip(cells)
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect()
        })
        .collect()
}

/// One run per io mode at a low rate: every mode's row in the report, nothing lost, and the
/// counts add up in the table and in each run's summary.
#[test]
fn a_single_rate_run_reports_every_io_mode_and_loses_nothing() {
    let out = std::env::temp_dir().join(format!("bh-ceiling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(bin())
        .args(["ceiling", "--rate", "2000", "--duration", "1s"])
        .args(["--warmup", "200ms", "--drain", "1s", "--threads", "2"])
        .args(["--no-pin", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("SO_RCVBUF"), "{stdout}");
    let md = std::fs::read_to_string(out.join("ceiling.md")).unwrap();
    let rows = runs_csv(&std::fs::read_to_string(out.join("ceiling-runs.csv")).unwrap());
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, io) in rows.iter().zip(["per-datagram", "batched", "offload"]) {
        assert_eq!(row["config"], format!("udp io={io}"));
        assert!(md.contains(&format!("udp io={io}")), "{md}");
        let n = |k: &str| -> u64 { row[k].parse().unwrap_or_else(|_| panic!("{k}: {row:?}")) };
        // 1000/s per thread for 1 s measured: exactly 2000 measured datagrams.
        assert_eq!(
            (n("offered"), n("sent"), n("refused")),
            (2000, 2000, 0),
            "{row:?}"
        );
        assert_eq!(
            n("sent"),
            n("received") + n("lost") + n("corrupted"),
            "{row:?}"
        );
        assert_eq!((n("lost"), n("corrupted")), (0, 0), "{row:?}");
        assert_eq!(
            (n("dropped before server"), n("dropped after server")),
            (0, 0),
            "{row:?}"
        );
        // The verdict depends on this run's p99 (a timing on a shared machine): only its
        // form is checked.
        assert!(
            row["verdict"] == "holds" || row["verdict"].starts_with("p99 "),
            "{row:?}"
        );
        let dir = out.join(format!("io-{io}")).join("r2000");
        let s = Summary::read_json(&dir.join("summary.json")).unwrap();
        assert_eq!((s.sent, s.received, s.lost), (2000, 2000, 0), "{s:?}");
        assert_eq!(s.sent, s.received + s.lost + s.corrupted);
        assert_eq!(s.config.cores, 2);
        assert!(!s.saturated, "{s:?}");
        let server: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("server.json")).unwrap())
                .unwrap();
        assert_eq!(server["io"], io);
        // Warm-up datagrams reach the server too: 400 of them at 2000/s over 200 ms.
        assert_eq!(server["server"]["received"], 2400, "{server}");
        assert_eq!(server["server"]["sent"], 2400, "{server}");
        assert_eq!(server["duplicates"], 0, "{server}");
        for f in ["latency.hgrm", "latency.hlog"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ceiling.json")).unwrap()).unwrap();
    assert_eq!(report["runs"].as_array().unwrap().len(), 3);
    assert!(report["knees"].as_array().unwrap().is_empty());
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--threads` is the documented name for generator threads, `--cores` still works, and
/// bad input is a clear error.
#[test]
fn threads_is_documented_cores_still_works_and_bad_input_is_refused() {
    for cmd in ["run", "sweep", "knee", "ceiling"] {
        let o = Command::new(bin()).args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("--threads"), "{cmd}: {help}");
        assert!(help.contains("alias: --cores"), "{cmd}: {help}");
    }
    let o = Command::new(bin())
        .args(["ceiling", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for want in ["per-datagram", "batched", "[default: 10ms]", "--rate"] {
        assert!(help.contains(want), "{want}: {help}");
    }
    // `--cores` parses where `--threads` does (a bad message size fails after parsing).
    let o = Command::new(bin())
        .args([
            "ceiling",
            "--cores",
            "1",
            "--rate",
            "100",
            "--message-size",
            "8",
        ])
        .args(["--no-pin", "--out"])
        .arg(std::env::temp_dir().join(format!("bh-ceiling-bad-{}", std::process::id())))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("message size"),
        "{err}"
    );
}
