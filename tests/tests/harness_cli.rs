//! The `bench-harness` binary as an engineer uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use engine::{AppKind, Engine, EngineConfig};

use crate::common::{engine_bin, harness_bin as bin, stdout_of_success};

/// `run` against an echo engine: exit 0, the three files, a summary on stdout.
#[test]
fn run_writes_its_files_and_exits_zero() {
    let e = Engine::start(EngineConfig::loopback(1)).unwrap();
    let out = std::env::temp_dir().join(format!("bh-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(bin())
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
    let o = Command::new(bin())
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
    let o = Command::new(bin())
        .args(["run", "--target", "127.0.0.1:1", "--rate", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rate must be above zero"));
    // Message sizes outside what the header needs and an engine accepts, a backlog bound
    // that would refuse nearly everything, a rate no generator reaches and a duration that
    // would overflow the clock: usage errors, before anything starts.
    for args in [
        ["--message-size", "4"],
        ["--message-size", "100000000"],
        ["--max-backlog", "0"],
        ["--rate", "1e12"],
        ["--duration", "100000000d"],
    ] {
        let o = Command::new(bin())
            .args(["run", "--target", "127.0.0.1:1"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("error: ") && err.contains(args[0]),
            "{args:?}: {err}"
        );
    }
    // A backlog bound (default 100 ms) as long as the drain would leave a message held to
    // the end no time to be answered.
    let o = Command::new(bin())
        .args(["run", "--target", "127.0.0.1:1", "--drain", "50ms"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ")
            && err.contains("max backlog (100ms) must be shorter than the drain (50ms)"),
        "{err}"
    );
}

/// Against an engine that is SIGSTOPped in the middle of the measured phase (it reads,
/// ACKs and answers nothing any more), `run` ends within warmup + duration + drain + 2 s,
/// says "saturated" and exits 2; with `--allow-saturation` the verdict is the same but only
/// the loss decides the exit code.
#[test]
fn run_against_a_stopped_engine_ends_in_bounded_time_and_says_saturated() {
    use std::io::BufRead;
    let mut engine = Command::new(engine_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(engine.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let out = std::env::temp_dir().join(format!("bh-stop-{}", std::process::id()));
    let pid = engine.id() as libc::pid_t;
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200));
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    });
    let (warmup, duration, drain) = (0.5, 2.0, 1.0);
    let started = Instant::now();
    let o = Command::new(bin())
        .args([
            "run",
            "--target",
            &addr,
            "--rate",
            "4000",
            "--connections",
            "4",
        ])
        .args([
            "--warmup",
            "500ms",
            "--duration",
            "2s",
            "--drain",
            "1s",
            "--no-pin",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let wall = started.elapsed().as_secs_f64();
    stopper.join().unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let _ = engine.kill();
    let _ = engine.wait();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let bound = warmup + duration + drain + 2.0;
    assert!(
        wall <= bound,
        "run took {wall:.2} s, bound {bound} s\n{stdout}"
    );
    assert!(stdout.contains("SATURATED"), "{stdout}");
    let s = bench_harness::summary::Summary::read_json(&out.join("summary.json")).unwrap();
    assert!(s.saturated, "{s:?}");
    assert!(s.wall_time_s <= bound, "{s:?}");
    // Messages sent into the stopped engine were never answered; later ones were refused
    // once the connections were full.
    assert!(s.lost > 0, "{s:?}");
    assert_eq!(s.offered, s.sent + s.refused, "{s:?}");
    assert!(s.offered >= 7_900, "{s:?}");
    // Loss decides the exit code: 1.
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A saturated run without loss exits 2, or 0 with `--allow-saturation`.
#[test]
fn saturation_without_loss_exits_two_unless_allowed() {
    // An echo engine whose replies are slowed by a tiny queue and window cannot be made
    // slow enough reliably; ask for a rate far above what one shard serves instead.
    let e = Engine::start(EngineConfig::loopback(1)).unwrap();
    for (allow, want) in [(false, 2), (true, 0)] {
        let out = std::env::temp_dir().join(format!("bh-sat-{}-{allow}", std::process::id()));
        let mut cmd = Command::new(bin());
        // A short measured phase: at this rate the harness is busy the whole time, so
        // every extra 100 ms costs seconds of wall clock on two cores.
        cmd.args(["run", "--rate", "3000000", "--connections", "8"])
            .args([
                "--warmup",
                "100ms",
                "--duration",
                "300ms",
                "--drain",
                "4s",
                "--no-pin",
            ])
            .args(["--target", &e.local_addr().to_string()])
            .arg("--out")
            .arg(&out);
        if allow {
            cmd.arg("--allow-saturation");
        }
        let o = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        let s = bench_harness::summary::Summary::read_json(&out.join("summary.json")).unwrap();
        assert!(s.saturated, "{s:?}");
        assert!(s.refused > 0, "back-pressure refused messages: {s:?}");
        assert_eq!(s.lost, 0, "a live engine answers everything it took: {s:?}");
        assert_eq!(o.status.code(), Some(want), "{stdout}");
        assert!(s.wall_time_s <= 0.1 + 0.3 + 4.0 + 2.0, "{s:?}");
        let _ = std::fs::remove_dir_all(&out);
    }
    let st = e.stats();
    assert_eq!(st.dropped(), 0, "{st:?}");
}

/// `stalls`: a probe per core, the table on stdout, stalls.md and stalls.json written;
/// a zero duration is refused with a message.
#[test]
fn stalls_measures_every_core_and_writes_its_files() {
    let out = std::env::temp_dir().join(format!("bh-stalls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let stdout = stdout_of_success(
        Command::new(bin())
            .args(["stalls", "--duration", "200ms", "--threshold", "50us"])
            .arg("--out")
            .arg(&out),
    );
    assert!(stdout.contains("| core | seconds | stalls |"), "{stdout}");
    assert!(stdout.contains("Stall floor"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stalls.json")).unwrap()).unwrap();
    let cores = json.as_array().unwrap();
    assert!(!cores.is_empty(), "{json}");
    let mut ids: Vec<u64> = cores.iter().filter_map(|c| c["core"].as_u64()).collect();
    ids.dedup();
    assert_eq!(
        ids.len(),
        cores.len(),
        "one probe per core, each pinned: {json}"
    );
    for c in cores {
        assert_eq!(c["threshold_us"], 50);
        assert!(c["stalled_ms"].as_f64().unwrap() <= 200.0, "{c}");
    }
    assert!(out.join("stalls.md").exists());
    let _ = std::fs::remove_dir_all(&out);

    let o = Command::new(bin())
        .args(["stalls", "--duration", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--duration must be above zero"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
