//! What a search found, for people and spreadsheets: the knee table's cells, knee.md,
//! knee.csv, knee.json and the p99-against-achieved-rate plot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{HARNESS_LIMITED_SHARE, Knee, Outcome};

impl Outcome {
    /// The knee as a table shows it: `>= N` when capped or harness-limited (then with the
    /// reason), `none` when not even the minimum held.
    pub fn knee_cell(&self) -> String {
        match (self.knee, self.capped, self.harness_limited) {
            (Some(r), true, _) => format!(">= {r:.0}"),
            (Some(r), false, true) => format!(">= {r:.0} (harness-limited)"),
            (Some(r), false, false) => format!("{r:.0}"),
            (None, _, true) => "below the minimum (harness-limited)".to_string(),
            (None, _, false) => "below the minimum".to_string(),
        }
    }

    /// The generators' lag p99 (ms) at the first failing rate, as a table cell (empty when
    /// no rate above the knee failed).
    pub fn lag_at_failure_cell(&self) -> String {
        self.failing_step()
            .map(|s| format!("{:.3}", s.lag_p99_ms))
            .unwrap_or_default()
    }

    /// p99 at the knee (ms), the first failing rate above it and why, as table cells.
    pub fn result_cells(&self) -> [String; 3] {
        [
            self.p99_at_knee_ms
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
            self.first_failure
                .map(|v| format!("{v:.0}"))
                .unwrap_or_default(),
            self.failure.clone().unwrap_or_default().replace('|', "/"),
        ]
    }

    /// The rates that failed below the knee, `20000 40000` (empty when none did).
    pub fn failed_below_cell(&self) -> String {
        self.failed_below
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The knee table as Markdown.
pub fn markdown(knees: &[Knee], p99_target: Duration) -> String {
    outcome_markdown(knees.iter().map(|k| &k.outcome), p99_target)
}

/// A knee table of any configurations (config, knee, p99 at the knee, first failing rate
/// above it, why it failed, rates that failed below it, rates tried) as Markdown, with the
/// rule a rate held to below it.
pub fn outcome_markdown<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    p99_target: Duration,
) -> String {
    let mut s = String::from(
        "| config | knee (msg/s) | p99 at knee (ms) | first failing rate above | why it failed | harness lag p99 there (ms) | failed below the knee | rates tried |\n\
         | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |\n",
    );
    let mut limited = Vec::new();
    for k in outcomes {
        let [p99, first_failure, why] = k.result_cells();
        s.push_str(&format!(
            "| {} | {} | {p99} | {first_failure} | {why} | {} | {} | {} |\n",
            k.config,
            k.knee_cell(),
            k.lag_at_failure_cell(),
            k.failed_below_cell(),
            k.steps.len()
        ));
        if k.harness_limited {
            limited.push(k.config.as_str());
        }
    }
    let target_ms = p99_target.as_secs_f64() * 1000.0;
    s.push_str(&format!(
        "\nA rate holds when p99 <= {target_ms} ms with nothing lost, refused, corrupted or duplicated and at least 95 % of it achieved. Harness lag is how late the generators sent against their schedule; it is part of every latency measured.\n",
    ));
    if !limited.is_empty() {
        s.push_str(&format!(
            "\nHarness-limited ({}): at the first failing rate the generators' own lag p99 was at least {:.0} % of the target, so the harness (its core busy, or the machine stalling it) spent that much of the budget before the server saw the messages. These knees are where this harness stops measuring on this machine: lower bounds for the server's.\n",
            limited.join(", "),
            HARNESS_LIMITED_SHARE * 100.0
        ));
    }
    s
}

/// The knee table as CSV:
/// config,batch_size,batch_timeout_ms,knee,p99_at_knee_ms,capped,failed_below (rates
/// separated by spaces),harness_limited.
pub fn csv(knees: &[Knee]) -> String {
    let mut s = String::from(
        "config,batch_size,batch_timeout_ms,knee,p99_at_knee_ms,capped,failed_below,harness_limited\n",
    );
    for Knee {
        batch_size,
        batch_timeout_ms,
        outcome: k,
    } in knees
    {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            k.config,
            batch_size,
            batch_timeout_ms,
            k.knee.map(|v| format!("{v:.0}")).unwrap_or_default(),
            k.p99_at_knee_ms
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
            k.capped,
            k.failed_below_cell(),
            k.harness_limited
        ));
    }
    s
}

/// Writes knee.md, knee.csv, knee.json and the p99-against-achieved-rate plot (knee.svg/png) into
/// `dir`; returns the files written.
pub fn write(
    dir: &Path,
    knees: &[Knee],
    p99_target: Duration,
) -> Result<Vec<PathBuf>, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let md = dir.join("knee.md");
    std::fs::write(&md, markdown(knees, p99_target))?;
    files.push(md);
    let c = dir.join("knee.csv");
    std::fs::write(&c, csv(knees))?;
    files.push(c);
    let j = dir.join("knee.json");
    std::fs::write(&j, serde_json::to_string_pretty(knees)? + "\n")?;
    files.push(j);
    let (svg, png) = (dir.join("knee.svg"), dir.join("knee.png"));
    plot(knees.iter().map(|k| &k.outcome), &svg, &png)?;
    files.push(svg);
    files.push(png);
    Ok(files)
}

/// p99 against achieved rate, one line per configuration (the knee is where it leaves the
/// target); failing steps are plotted too, at their measured p99.
pub fn plot<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    svg: &Path,
    png: &Path,
) -> Result<(), crate::plot::PlotError> {
    let points: Vec<(String, f64, f64)> = outcomes
        .into_iter()
        .flat_map(|k| {
            k.steps
                .iter()
                .map(|s| (format!("{} @", k.config), s.achieved, s.p99_ms))
        })
        .collect();
    crate::plot::latency_vs_throughput_plot(&points, svg, png)
}
