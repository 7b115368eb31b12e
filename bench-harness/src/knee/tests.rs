use super::*;

fn step(rate: f64, knee: f64) -> Step {
    let held = rate <= knee;
    Step {
        rate,
        achieved: rate.min(knee),
        p99_ms: if held { 1.0 } else { 100.0 },
        held,
        why: if held {
            String::new()
        } else {
            "saturated".into()
        },
        steal_ms: 0.0,
        disturbed: 0,
        saturated: !held,
        lag_p99_ms: 0.0,
        deferred: 0,
    }
}

/// A server that saturates above `knee` and, below it, fails p99 (not saturated) at the
/// rates in `valley`.
fn valley_step(rate: f64, valley: std::ops::RangeInclusive<f64>, knee: f64) -> Step {
    let mut s = step(rate, knee);
    if s.held && valley.contains(&rate) {
        s.held = false;
        s.p99_ms = 14.0;
        s.why = "p99 14.000 ms above 10.000 ms".into();
    }
    s
}

/// A run at `rate` with every message back, p99 `p99_ms`, and `steal_ms` of steal over
/// a 2 s wall time.
fn run_summary(rate: f64, p99_ms: u64, steal_ms: u64) -> Summary {
    crate::summary::testing::echo_run(
        rate,
        Duration::from_millis(p99_ms),
        None,
        Duration::from_secs(2),
        Some(Duration::from_millis(steal_ms)),
    )
}

/// One rate, searched with `retries`; the runs' (p99 ms, steal ms) in order.
fn one_rate(retries: usize, runs: &[(u64, u64)]) -> (Step, usize) {
    let params = SearchParams {
        p99_target: Duration::from_millis(10),
        min_rate: 1000.0,
        max_rate: 1000.0,
        precision: 0.05,
        max_steps: 1,
        repeat: 1,
        steal_retries: retries,
        probe_above: 0,
    };
    let mut made = 0;
    let out = search_config(
        "c",
        &params,
        |rate, _, _| {
            let (p99, steal) = runs[made.min(runs.len() - 1)];
            made += 1;
            Ok::<_, SweepError>(run_summary(rate, p99, steal))
        },
        |_, _| {},
    )
    .unwrap();
    (out.steps[0].clone(), made)
}

#[test]
fn a_failing_run_the_hypervisor_disturbed_is_made_again_within_the_limit() {
    // 100 ms stolen over 2 s is 5 % of a CPU: disturbed. Two retries, then a clean run.
    let (step, made) = one_rate(2, &[(50, 100), (40, 100), (2, 0)]);
    assert!(step.held, "{step:?}");
    assert_eq!((step.disturbed, made), (2, 3));
    assert!(step.p99_ms < 3.0, "discarded runs do not count: {step:?}");
    assert_eq!(step.steal_ms, 200.0, "but their steal is reported");
    // One retry only: the second disturbed failure stands.
    let (step, made) = one_rate(1, &[(50, 100), (40, 100), (2, 0)]);
    assert!(!step.held);
    assert_eq!((step.disturbed, made), (1, 2));
    // A failure without steal (10 ms of 2 s is 0.5 %) is never made again.
    let (step, made) = one_rate(2, &[(50, 10), (2, 0)]);
    assert!(!step.held);
    assert_eq!((step.disturbed, made), (0, 1));
    // Retries off.
    let (step, made) = one_rate(0, &[(50, 100), (2, 0)]);
    assert!(!step.held);
    assert_eq!((step.disturbed, made), (0, 1));
}

/// A search of one configuration whose runs are `runs(rate)`: (achieved fraction of
/// the rate, p99 ms); `probe_above` 1.
fn search_runs(max_steps: usize, runs: impl Fn(f64) -> (f64, u64)) -> Outcome {
    let params = SearchParams {
        p99_target: Duration::from_millis(10),
        min_rate: 10_000.0,
        max_rate: 1e6,
        precision: 0.05,
        max_steps,
        repeat: 1,
        steal_retries: 0,
        probe_above: 1,
    };
    search_config(
        "c",
        &params,
        |rate, _, _| {
            let (fraction, p99) = runs(rate);
            let mut s = run_summary(rate * fraction, p99, 0);
            s.config.rate = rate;
            s.saturated = fraction < 0.95;
            Ok::<_, SweepError>(s)
        },
        |_, _| {},
    )
    .unwrap()
}

#[test]
fn a_failure_the_generators_were_late_for_is_harness_limited() {
    // Holds to 40k; 80k fails p99 while the generators' own lag p99 is `lag` ms.
    let run = |lag: f64| {
        let params = SearchParams {
            p99_target: Duration::from_millis(10),
            min_rate: 10_000.0,
            max_rate: 80_000.0,
            precision: 0.05,
            // 10k, 20k, 40k, 80k: no bisection.
            max_steps: 4,
            repeat: 1,
            steal_retries: 0,
            probe_above: 0,
        };
        search_config(
            "bs=1 bt=0",
            &params,
            |rate, _, _| {
                let mut s = run_summary(rate, if rate > 40_000.0 { 15 } else { 2 }, 0);
                s.harness_lag_ms.p99 = if rate > 40_000.0 { lag } else { 0.3 };
                Ok::<_, SweepError>(s)
            },
            |_, _| {},
        )
        .unwrap()
    };
    let o = run(5.0);
    assert_eq!((o.knee, o.first_failure), (Some(40_000.0), Some(80_000.0)));
    assert!(o.harness_limited, "{o:?}");
    assert_eq!(o.steps.last().map(|s| s.lag_p99_ms), Some(5.0));
    assert_eq!(o.knee_cell(), ">= 40000 (harness-limited)");
    assert_eq!(o.lag_at_failure_cell(), "5.000");
    let knees = [Knee {
        batch_size: 1,
        batch_timeout_ms: 0.0,
        outcome: o,
    }];
    let md = markdown(&knees, Duration::from_millis(10));
    assert!(md.contains("| >= 40000 (harness-limited) |"), "{md}");
    assert!(md.contains("| 5.000 |"), "{md}");
    assert!(
        md.contains("Harness-limited (bs=1 bt=0): at the first failing rate"),
        "{md}"
    );
    assert!(csv(&knees).lines().nth(1).unwrap().ends_with(",true"));
    // Just under half the target: the server's failure, said plainly.
    let o = run(4.9);
    assert!(!o.harness_limited, "{o:?}");
    assert_eq!(o.knee_cell(), "40000");
    let md = outcome_markdown([&o], Duration::from_millis(10));
    assert!(!md.contains("Harness-limited"), "{md}");
}

#[test]
fn a_run_short_of_its_rate_is_saturated_and_not_probed_past() {
    // 40k achieves 80 % of its rate: saturated, so 80k is never tried.
    let o = search_runs(40, |r| if r >= 40_000.0 { (0.8, 50) } else { (1.0, 2) });
    let tried: Vec<f64> = o.steps.iter().map(|s| s.rate).collect();
    assert!(tried.iter().all(|&r| r <= 40_000.0), "{tried:?}");
    let failed = o.steps.iter().find(|s| s.rate == 40_000.0).unwrap();
    assert!(failed.saturated && !failed.held, "{failed:?}");
    assert_eq!(o.probe_above, 1);
    // 40k achieves all of it with p99 50 ms: not saturated, so 80k is probed and holds.
    let o = search_runs(40, |r| if r == 40_000.0 { (1.0, 50) } else { (1.0, 2) });
    let failed = o.steps.iter().find(|s| s.rate == 40_000.0).unwrap();
    assert!(!failed.saturated && !failed.held, "{failed:?}");
    assert!(o.steps.iter().any(|s| s.rate == 80_000.0 && s.held));
    assert_eq!(o.failed_below, [40_000.0]);
    // Every rate above 40k holds up to the maximum: capped, with the hole kept.
    assert!(o.capped);
    assert_eq!(o.knee, Some(1e6));
}

#[test]
fn ramps_then_bisects_to_within_precision() {
    let s = search(1000.0, 1e9, 0.05, 40, 1, |r| {
        Ok::<_, SweepError>(step(r, 61_000.0))
    })
    .unwrap();
    let steps = s.steps;
    let knee = s.knee.unwrap();
    let fail = s.first_failure.unwrap();
    assert!((61_000.0 / 1.05..=61_000.0).contains(&knee), "{knee}");
    assert!(fail > 61_000.0 && fail - knee <= 0.05 * knee, "{fail}");
    assert!(!s.capped);
    // Doubling: 1k, 2k, ..., 64k (fails, saturated: no probe above it), then bisection.
    let rates: Vec<f64> = steps.iter().map(|s| s.rate).collect();
    assert_eq!(&rates[..7], [1e3, 2e3, 4e3, 8e3, 16e3, 32e3, 64e3]);
    assert!(rates[7] < 64e3, "{rates:?}");
    assert!(steps.len() < 15, "{rates:?}");
    assert!(s.failed_below.is_empty());
}

#[test]
fn reports_a_failing_minimum_and_a_capped_maximum() {
    let s = search(1000.0, 1e6, 0.05, 40, 1, |r| {
        Ok::<_, SweepError>(step(r, 10.0))
    })
    .unwrap();
    assert_eq!(
        (s.knee, s.first_failure, s.steps.len()),
        (None, Some(1000.0), 1)
    );
    let s = search(1000.0, 5000.0, 0.05, 40, 1, |r| {
        Ok::<_, SweepError>(step(r, 1e9))
    })
    .unwrap();
    assert_eq!(
        (s.knee, s.first_failure, s.capped),
        (Some(5000.0), None, true)
    );
}

#[test]
fn probes_past_a_band_of_failures_to_the_highest_rate_that_holds() {
    // 10k, 20k, 40k hold; 80k fails in the band; 160k (the probe) holds; 320k holds;
    // 640k saturates; bisection between 320k and 640k.
    let s = search(10_000.0, 4e6, 0.05, 40, 1, |r| {
        Ok::<_, SweepError>(valley_step(r, 60_000.0..=150_000.0, 500_000.0))
    })
    .unwrap();
    let rates: Vec<f64> = s.steps.iter().map(|s| s.rate).collect();
    assert_eq!(&rates[..6], [1e4, 2e4, 4e4, 8e4, 16e4, 32e4], "{rates:?}");
    let knee = s.knee.unwrap();
    assert!((500_000.0 / 1.05..=500_000.0).contains(&knee), "{knee}");
    let fail = s.first_failure.unwrap();
    assert!(fail > 500_000.0 && fail - knee <= 0.05 * knee, "{fail}");
    assert_eq!(s.failed_below, [80_000.0]);
    assert!(!s.capped);
    // Without probing the same server's knee is the band's edge.
    let s = search(10_000.0, 4e6, 0.05, 40, 0, |r| {
        Ok::<_, SweepError>(valley_step(r, 60_000.0..=150_000.0, 500_000.0))
    })
    .unwrap();
    let knee = s.knee.unwrap();
    assert!((40_000.0..60_000.0).contains(&knee), "{knee}");
    assert!(s.first_failure.unwrap() <= 80_000.0);
    assert!(s.failed_below.is_empty());
}

#[test]
fn a_band_wider_than_the_probes_ends_the_ramp() {
    // 80k and 160k both fail in the band; one probe is spent, so the search settles
    // between 40k and 80k and never reaches the rates that would hold above.
    let mut asked = Vec::new();
    let s = search(10_000.0, 4e6, 0.05, 40, 1, |r| {
        asked.push(r);
        Ok::<_, SweepError>(valley_step(r, 60_000.0..=200_000.0, 500_000.0))
    })
    .unwrap();
    assert!(asked.iter().all(|&r| r <= 160_000.0), "{asked:?}");
    // Bisection between the last rate that held and the first failure, 40k and 80k.
    assert!(
        asked[6..].iter().all(|&r| r > 40_000.0 && r < 80_000.0),
        "{asked:?}"
    );
    let knee = s.knee.unwrap();
    assert!((40_000.0..60_000.0).contains(&knee), "{knee}");
    assert!(s.first_failure.unwrap() <= 80_000.0);
    assert!(s.failed_below.is_empty());
    // Two probes reach 320k, which holds.
    let s = search(10_000.0, 4e6, 0.05, 40, 2, |r| {
        Ok::<_, SweepError>(valley_step(r, 60_000.0..=200_000.0, 500_000.0))
    })
    .unwrap();
    assert!(s.knee.unwrap() > 450_000.0, "{:?}", s.knee);
    assert_eq!(s.failed_below, [80_000.0, 160_000.0]);
}

#[test]
fn a_failing_minimum_is_probed_past_too() {
    let s = search(1000.0, 1e6, 0.05, 40, 1, |r| {
        Ok::<_, SweepError>(valley_step(r, 1000.0..=1000.0, 8000.0))
    })
    .unwrap();
    assert_eq!(s.failed_below, [1000.0]);
    assert_eq!(s.knee, Some(8000.0));
    // Saturated at the minimum: nothing more is tried.
    let s = search(1000.0, 1e6, 0.05, 40, 3, |r| {
        Ok::<_, SweepError>(step(r, 10.0))
    })
    .unwrap();
    assert_eq!((s.knee, s.steps.len()), (None, 1));
}

#[test]
fn stops_at_max_steps_with_a_lower_bound() {
    let s = search(1.0, 1e12, 0.0001, 5, 1, |r| {
        Ok::<_, SweepError>(step(r, 1e9))
    })
    .unwrap();
    assert_eq!(s.steps.len(), 5);
    assert_eq!(
        (s.knee, s.first_failure, s.capped),
        (Some(16.0), None, true)
    );
}

#[test]
fn a_duplicated_reply_fails_a_run() {
    let mut s = run_summary(1000.0, 1, 0);
    assert_eq!(verdict(&s, Duration::from_millis(10)), Ok(()));
    s.duplicates = 2;
    assert_eq!(
        verdict(&s, Duration::from_millis(10)),
        Err("2 replies duplicated".into())
    );
}

#[test]
fn every_run_made_keeps_its_own_directory() {
    // Two runs a rate; the first is discarded for steal twice, the second once.
    let params = SearchParams {
        p99_target: Duration::from_millis(10),
        min_rate: 1000.0,
        max_rate: 1000.0,
        precision: 0.05,
        max_steps: 1,
        repeat: 2,
        steal_retries: 3,
        probe_above: 0,
    };
    let runs = [(50, 100), (40, 100), (2, 0), (50, 100), (2, 0)];
    let mut dirs = Vec::new();
    let out = search_config(
        "c",
        &params,
        |rate, i, retry| {
            dirs.push(run_dir(Path::new("out"), i, retry));
            let (p99, steal) = runs[dirs.len() - 1];
            Ok::<_, SweepError>(run_summary(rate, p99, steal))
        },
        |_, _| {},
    )
    .unwrap();
    assert!(out.steps[0].held);
    assert_eq!(out.steps[0].disturbed, 3);
    let want = [
        "out",
        "out/retry1",
        "out/retry2",
        "out/repeat1",
        "out/repeat1/retry1",
    ];
    assert_eq!(dirs, want.map(PathBuf::from));
}
