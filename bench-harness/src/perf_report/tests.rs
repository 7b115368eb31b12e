use super::read::median;
use super::*;
use crate::knee::Step;

fn outcome(config: &str, knee: f64) -> Outcome {
    Outcome {
        config: config.into(),
        knee: Some(knee),
        p99_at_knee_ms: Some(4.0),
        first_failure: Some(knee * 1.05),
        failure: Some("p99 12.000 ms above 10.000 ms".into()),
        failed_below: Vec::new(),
        capped: false,
        probe_above: 1,
        harness_limited: false,
        steps: vec![
            Step {
                rate: knee,
                achieved: knee,
                p99_ms: 4.0,
                held: true,
                why: String::new(),
                steal_ms: 0.0,
                disturbed: 0,
                saturated: false,
                lag_p99_ms: 0.2,
                deferred: 0,
            },
            Step {
                rate: knee * 1.05,
                achieved: knee,
                p99_ms: 12.0,
                held: false,
                why: "p99".into(),
                steal_ms: 120.0,
                disturbed: 0,
                saturated: false,
                lag_p99_ms: 2.0,
                deferred: 0,
            },
        ],
    }
}

fn report() -> PerfReport {
    let e = |server, c, k| Entry {
        server,
        outcome: outcome(c, k),
    };
    PerfReport {
        machine: "test machine".into(),
        entries: vec![
            e(Server::Ceiling, "udp io=batched", 200_000.0),
            e(Server::Ceiling, "udp io=per-datagram", 150_000.0),
            e(Server::Engine, "bs=1 bt=0", 100_000.0),
            e(Server::Engine, "bs=128 bt=0", 160_000.0),
            e(Server::Control, "bs=128 bt=0", 40_000.0),
        ],
        syscalls: [
            "engine-bs128",
            "control-bs128",
            "engine-bs128-saturated",
            "control-bs128-saturated",
        ]
        .iter()
        .zip([2.0, 6.0, 1.0, 1.25])
        .map(|(name, cpu_us)| SyscallRun {
            name: (*name).into(),
            rate: 20_000.0,
            achieved: 20_000.0,
            p99_ms: 1.0,
            lost: u64::from(name.starts_with("control-bs128-sat")),
            syscalls: SyscallReport {
                window_s: 5.0,
                messages: 100_000,
                server: crate::syscalls::ProcessCount {
                    pid: 1,
                    syscalls: 150_000,
                    cpu_s: cpu_us * 0.1,
                },
                harness: crate::syscalls::ProcessCount {
                    pid: 2,
                    syscalls: 90_000,
                    cpu_s: 1.0,
                },
            },
        })
        .collect(),
        adaptive: Some(Adaptive {
            rate: 16_000.0,
            p50_bs1_ms: 0.5,
            batch_size: 128,
            p50_ms: 0.55,
            rounds: 1,
            round_ratios: vec![1.1],
        }),
        p99_target_ms: Some(10.0),
        stalls: Vec::new(),
        target: None,
    }
}

#[test]
fn the_stall_floor_is_on_the_page_when_measured() {
    let mut r = report();
    assert!(!r.markdown().contains("Stall floor"));
    r.stalls = vec![crate::stalls::CoreStalls {
        core: Some(0),
        duration_s: 10.0,
        threshold_us: 100,
        stalls: 30,
        over_1ms: 12,
        over_5ms: 1,
        longest_ms: 6.6,
        stalled_ms: 40.0,
    }];
    let md = r.markdown();
    assert!(
        md.contains("1.2 stalls over 1 ms per core-second, the longest 6.6 ms"),
        "{md}"
    );
}

#[test]
fn ratios_and_targets_come_from_the_knees() {
    let mut r = report();
    r.entries[3].outcome.failed_below = vec![20_000.0, 40_000.0];
    let md = r.markdown();
    // Engine against the control at the same configuration, and against the best ceiling.
    let cells = md.replace(' ', "");
    assert!(cells.contains("|bs=128bt=0|160000|"), "{md}");
    assert!(cells.contains("|2000040000|4.00x|80%|120|2.000|"), "{md}");
    assert!(
        md.contains("Searches probed up to 1 doubling(s) past a failure"),
        "{md}"
    );
    assert!(cells.contains("||50%|"), "{md}");
    assert!(
        md.contains("bs=128 bt=0: 160000 against 40000 msg/s, 4.00x, met"),
        "{md}"
    );
    assert!(md.contains("50 %, not met"), "{md}");
    assert!(md.contains("best knee 160000 msg/s, not met"), "{md}");
    assert!(md.contains("1.10x, met"), "{md}");
    assert!(
        md.contains("engine 2.00 us, control 6.00 us: at this rate the engine carries 3.00x"),
        "{md}"
    );
    assert!(
        cells.contains("|engine-bs128|20000|20000|0|1.000|1.50|0.90|4%|2.00|500000|10.00|"),
        "{md}"
    );
    assert!(
        md.contains("Saturated at batch 128 (20000 msg/s offered): the engine carried 20000 msg/s with its core 2 % busy, 1.00 us a message (1000000 msg/s per core-second); the control 20000 msg/s, 2 % busy, 1.25 us (800000): the engine carries 1.25x"),
        "{md}"
    );
    assert!(
        md.contains(
            "control-bs128-saturated lost or corrupted 1 messages: its CPU per message is not comparable"
        ),
        "{md}"
    );
    assert!(!md.contains("engine-bs128-saturated lost"), "{md}");
    // The harness spent 10 us a message (1 s of CPU for 100,000) against the engine's 1.
    assert!(
        md.contains("the harness spent 10.00 us a message driving the engine there (20 % of a core): no cheaper than the engine"),
        "{md}"
    );
    assert!(
        !md.contains("Saturated at batch 1 "),
        "no saturated line without both runs: {md}"
    );
}

#[test]
fn a_harness_limited_knee_is_called_a_lower_bound() {
    let mut r = report();
    r.entries[3].outcome.harness_limited = true;
    // A harness cheaper than the engine: 0.05 s of CPU for 100,000 messages, 0.5 us each.
    for run in &mut r.syscalls {
        run.syscalls.harness.cpu_s = 0.05;
    }
    let md = r.markdown();
    let cells = md.replace(' ', "");
    assert!(
        cells.contains("|bs=128bt=0|>=160000(harness-limited)|"),
        "{md}"
    );
    assert!(
        md.contains(
            "best knee 160000 msg/s (harness-limited: a lower bound of the engine's), not met"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "0.50 us a message driving the engine there (1 % of a core): cheaper than the engine"
        ),
        "{md}"
    );
}

/// Writes `dir/round{round}/{server}/knee.json`: one step at `rate`, held or failed with
/// `why` at `p99_ms`.
fn write_target_run(dir: &Path, round: u32, server: &str, rate: f64, p99_ms: f64, why: &str) {
    let mut o = outcome("bs=128 bt=0", rate);
    let held = why.is_empty();
    o.steps.truncate(1);
    if let Some(s) = o.steps.first_mut() {
        s.p99_ms = p99_ms;
        s.held = held;
        s.why = why.into();
    }
    let knees = [crate::knee::Knee {
        batch_size: 128,
        batch_timeout_ms: 0.0,
        outcome: o,
    }];
    let d = dir.join(format!("round{round}")).join(server);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("knee.json"), serde_json::to_string(&knees).unwrap()).unwrap();
}

#[test]
fn the_target_rate_is_checked_in_rounds_of_single_runs() {
    let dir = tempfile::tempdir().unwrap();
    let refused = "lost 0, refused 20, corrupted 0, errors 0";
    let slow = "p99 12.800 ms above 10.000 ms";
    write_target_run(dir.path(), 1, "engine", 1e6, 6.0, "");
    write_target_run(dir.path(), 1, "control", 1e6, 1.8, "");
    write_target_run(dir.path(), 2, "engine", 1e6, 9.8, refused);
    write_target_run(dir.path(), 2, "control", 1e6, 12.8, slow);
    write_target_run(dir.path(), 3, "engine", 1e6, 5.2, "");
    // A round at another rate is not part of the check; a round without a control is.
    write_target_run(dir.path(), 4, "engine", 5e5, 1.0, "");
    // Rounds are in numeric order: round10 comes last.
    write_target_run(dir.path(), 10, "engine", 1e6, 7.5, "");
    let mut t = read_target(dir.path()).unwrap().unwrap();
    assert_eq!((t.rate, t.engine.len(), t.control.len()), (1e6, 4, 2));
    t.engine[3].disturbed = 1;
    // Deferred messages are listed per run when any run had them.
    t.engine[1].deferred = 1200;
    let mut r = report();
    r.target = Some(t);
    let md = r.markdown();
    assert!(
        md.contains(&format!(
            "- 1000000 msg/s per core at bs=128 bt=0, single runs at that rate in 4 interleaved rounds (the same verdict as the knee's): the engine held in 3 of 4 runs (p99 6.0, 9.8, 5.2, 7.5 ms; deferred by back-pressure and sent late 0, 1200, 0, 0 messages; failed on: {refused}; 1 failing run(s) made while the hypervisor took CPU time were made again); the control held in 1 of 2 runs (p99 1.8, 12.8 ms; failed on: {slow}).\n"
        )),
        "{md}"
    );
    // Nothing to check: no page line, and an empty directory reads as no check.
    let empty = tempfile::tempdir().unwrap();
    assert!(read_target(empty.path()).unwrap().is_none());
    assert!(!report().markdown().contains("interleaved rounds"));
}

#[test]
fn a_missing_control_is_said_not_invented() {
    let mut r = report();
    r.entries.retain(|e| e.server != Server::Control);
    r.adaptive = None;
    let md = r.markdown();
    assert!(md.contains("3x the control: not measured"), "{md}");
    assert!(md.contains("adaptive batching: not measured"), "{md}");
    assert!(
        !md.replace(' ', "").contains("x|"),
        "no ratio column filled: {md}"
    );
}

/// Writes `dir/bs{bs}-bt0-r{rate}/summary.json` of a run at `rate` whose every message
/// took `p50_us` microseconds.
fn write_sweep_run(dir: &Path, bs: u32, rate: f64, p50_us: u64) {
    let wall = std::time::Duration::from_secs(1);
    let latency = std::time::Duration::from_micros(p50_us);
    let s = crate::summary::testing::echo_run(rate, latency, Some(bs), wall, None);
    let run = dir.join(format!("bs{bs}-bt0-r{rate}"));
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("summary.json"), serde_json::to_string(&s).unwrap()).unwrap();
}

#[test]
fn the_adaptive_check_takes_medians_over_its_rounds() {
    let dir = tempfile::tempdir().unwrap();
    // Three rounds: batch 1 at 100, 200, 150 us; batch 128 at 300 (a bad pair), 210, 160.
    for (i, (a, b)) in [(100, 300), (200, 210), (150, 160)].into_iter().enumerate() {
        let round = dir.path().join(format!("round{}", i + 1));
        write_sweep_run(&round, 1, 31_000.0, a);
        write_sweep_run(&round, 128, 31_000.0, b);
    }
    let a = read_adaptive(dir.path()).unwrap().unwrap();
    assert_eq!((a.rounds, a.batch_size, a.rate), (3, 128, 31_000.0));
    // Medians 0.150 and 0.210 ms: 1.40x; the one bad round does not decide alone.
    assert!((a.p50_bs1_ms - 0.150).abs() < 0.001, "{a:?}");
    assert!((a.p50_ms - 0.210).abs() < 0.001, "{a:?}");
    assert_eq!(a.round_ratios.len(), 3);
    assert!((a.round_ratios[0] - 3.0).abs() < 0.01, "{a:?}");
    let mut r = report();
    r.adaptive = Some(a);
    let md = r.markdown();
    assert!(
        md.contains("medians of 3 interleaved rounds (single rounds 1.05x to 3.00x) 0.210 against 0.150 ms, 1.40x, not met"),
        "{md}"
    );
    // One sweep directory without rounds is one round, as before.
    let single = tempfile::tempdir().unwrap();
    write_sweep_run(single.path(), 1, 31_000.0, 100);
    write_sweep_run(single.path(), 128, 31_000.0, 110);
    let a = read_adaptive(single.path()).unwrap().unwrap();
    assert_eq!(a.rounds, 1);
    assert!((a.ratio() - 1.1).abs() < 0.01, "{a:?}");
}

#[test]
fn median_of_odd_even_and_empty() {
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(median(&mut []), None);
}

#[test]
fn reads_knee_results_written_before_probing() {
    // A knee.json as written before `failed_below`, `probe_above` and `saturated`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("knee.json"),
        r#"[{"batch_size": 1, "batch_timeout_ms": 0.0, "config": "bs=1 bt=0",
            "knee": 360000.0, "p99_at_knee_ms": 5.8, "first_failure": 370000.0,
            "failure": "p99 11.682 ms above 10.000 ms", "capped": false,
            "steps": [{"rate": 360000.0, "achieved": 360000.0, "p99_ms": 5.8,
                       "held": true, "why": "", "steal_ms": 70.0, "disturbed": 0},
                      {"rate": 370000.0, "achieved": 370000.0, "p99_ms": 11.7,
                       "held": false, "why": "p99", "steal_ms": 0.0, "disturbed": 0}]}]"#,
    )
    .unwrap();
    let got = read_knees(dir.path(), Server::Engine).unwrap();
    let o = &got[0].outcome;
    assert_eq!(o.knee, Some(360_000.0));
    assert!(o.failed_below.is_empty());
    assert_eq!(o.probe_above, 0);
    assert!(!o.steps[1].saturated);
    let mut r = build(Some(dir.path()), None, None, None, None, None, None).unwrap();
    // The p99 target comes from a ceiling report, not given here.
    r.p99_target_ms = Some(10.0);
    let md = r.markdown();
    assert!(
        md.contains("Each search stopped ramping at its first failure."),
        "{md}"
    );
    assert!(!md.contains("Searches probed"), "{md}");
}

#[test]
fn reads_what_knee_and_ceiling_write() {
    let dir = tempfile::tempdir().unwrap();
    let knees = vec![crate::knee::Knee {
        batch_size: 16,
        batch_timeout_ms: 0.0,
        outcome: outcome("bs=16 bt=0", 50_000.0),
    }];
    let kd = dir.path().join("engine");
    crate::knee::write(&kd, &knees, std::time::Duration::from_millis(10)).unwrap();
    let got = read_knees(&kd, Server::Engine).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].outcome.knee, Some(50_000.0));
    assert!(matches!(
        build(None, None, None, None, None, None, None),
        Err(PerfReportError::Empty)
    ));
    let out = dir.path().join("out");
    let r = build(Some(&kd), None, None, None, None, None, None).unwrap();
    let files = r.write(&out).unwrap();
    assert!(files.iter().all(|f| f.exists()));
}
