//! The `bench-harness` binary as an engineer uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use engine::{AppKind, Engine, EngineConfig};

const BIN: &str = env!("CARGO_BIN_EXE_bench-harness");

/// `run` against an echo engine: exit 0, the three files, a summary on stdout.
#[test]
fn run_writes_its_files_and_exits_zero() {
    let e = Engine::start(EngineConfig::loopback(1)).unwrap();
    let out = std::env::temp_dir().join(format!("bh-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(BIN)
        .args([
            "run",
            "--rate",
            "500",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--no-pin",
        ])
        .args(["--target", &e.local_addr().to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("lost 0"), "{stdout}");
    assert!(
        stdout.contains("latency from intended send time"),
        "{stdout}"
    );
    for f in ["latency.hgrm", "latency.hlog", "summary.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let summary = bench_harness::summary::Summary::read_json(&out.join("summary.json")).unwrap();
    assert_eq!(summary.lost, 0);
    assert!(summary.sent >= 450, "{summary:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Messages that never come back (a sink node answers nothing) make `run` exit non-zero.
#[test]
fn run_exits_non_zero_when_messages_are_lost() {
    let mut cfg = EngineConfig::loopback(1);
    cfg.app = AppKind::Sink;
    let e = Engine::start(cfg).unwrap();
    let out = std::env::temp_dir().join(format!("bh-lost-{}", std::process::id()));
    let o = Command::new(BIN)
        .args([
            "run",
            "--rate",
            "200",
            "--duration",
            "500ms",
            "--warmup",
            "0",
            "--no-pin",
        ])
        .args(["--drain", "300ms", "--target", &e.local_addr().to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lost"));
    let _ = std::fs::remove_dir_all(&out);
}

/// Bad input is a clear error, not a panic.
#[test]
fn bad_arguments_are_rejected() {
    let o = Command::new(BIN)
        .args(["run", "--target", "127.0.0.1:1", "--rate", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rate must be above zero"));
    let o = Command::new(BIN)
        .args(["run", "--target", "127.0.0.1:1", "--message-size", "4"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("message size"),
        "{err}"
    );
}
