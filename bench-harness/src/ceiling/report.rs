//! The report: one row per run, the knee per io mode, markdown, CSV and JSON files.

use super::*;

/// What to measure: the io modes, the load, and the knee search or a single rate.
#[derive(Debug, Clone)]
pub struct CeilingConfig {
    /// Server I/O modes, one row each.
    pub io: Vec<IoMode>,
    /// The generators' load (its rate is set per run).
    pub load: LoadConfig,
    /// One run per mode at this rate instead of a knee search.
    pub rate: Option<f64>,
    /// The knee search's limits and target.
    pub search: SearchParams,
    /// Where run directories and the report go.
    pub out: PathBuf,
}

/// One run as the report lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRow {
    /// The server's I/O mode.
    pub io: IoMode,
    /// Its run directory.
    pub dir: PathBuf,
    /// What the generators measured.
    pub summary: Summary,
    /// What the server did.
    pub server: ServerStats,
    /// Replies that came back twice.
    pub duplicates: u64,
    /// The server socket's receive and send buffers (bytes, as the kernel reports them).
    pub server_buffers: (usize, usize),
    /// Generator send and receive system calls.
    pub generator_calls: (u64, u64),
    /// Datagrams the generators sent and read back, all phases.
    pub generator_datagrams: (u64, u64),
}

impl RunRow {
    /// Datagrams sent that the server never read: dropped at its full socket.
    pub fn dropped_before_server(&self) -> u64 {
        self.generator_datagrams
            .0
            .saturating_sub(self.server.received)
    }

    /// Replies the server sent that the generators never read: dropped at their sockets
    /// (or still in flight when the run ended).
    pub fn dropped_after_server(&self) -> u64 {
        self.server.sent.saturating_sub(self.generator_datagrams.1)
    }
}

/// One io mode's knee.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CeilingKnee {
    /// The server's I/O mode.
    pub io: IoMode,
    /// The search's result.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Everything a `ceiling` command measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Every run, in order.
    pub runs: Vec<RunRow>,
    /// Per io mode, the knee (empty for single-rate runs).
    pub knees: Vec<CeilingKnee>,
    /// The p99 target of the search, ms.
    pub p99_target_ms: f64,
}

/// The configuration label of an io mode in tables and plots.
pub fn label(io: IoMode) -> String {
    format!("udp io={io}")
}

/// Runs one measurement and writes its run directory (`latency.hgrm`, `latency.hlog`,
/// `summary.json`, `server.json`).
pub fn run_to_dir(cfg: &LoadConfig, io: IoMode, dir: &Path) -> Result<RunRow, CeilingError> {
    let run = run_once(cfg, io)?;
    let meta = RunMeta {
        load: run.load.clone(),
        batch_size: None,
        batch_timeout: None,
    };
    let summary = output::write_run(dir, &meta, &run.result)?;
    let row = RunRow {
        io,
        dir: dir.to_path_buf(),
        summary,
        server: run.server,
        duplicates: run.duplicates,
        server_buffers: run.server_buffers,
        generator_calls: run.generator_calls,
        generator_datagrams: run.generator_datagrams,
    };
    let path = dir.join("server.json");
    let json = serde_json::json!({
        "io": io,
        "server": row.server,
        "server_buffers": row.server_buffers,
        "duplicates": row.duplicates,
        "generator_calls": row.generator_calls,
        "generator_datagrams": row.generator_datagrams,
    });
    std::fs::write(&path, format!("{json:#}\n")).map_err(|e| CeilingError::Report(path, e))?;
    Ok(row)
}

/// Runs every io mode, as a knee search or at the single rate; `on_run` is told about each
/// run (with the verdict against the p99 target) as it finishes.
pub fn ceiling(
    cfg: &CeilingConfig,
    mut on_run: impl FnMut(&RunRow, &Result<(), String>),
) -> Result<Report, CeilingError> {
    if cfg.io.is_empty() {
        return Err(CeilingError::Config("give at least one --io mode".into()));
    }
    check(&LoadConfig {
        rate: cfg.rate.unwrap_or(cfg.search.min_rate),
        ..cfg.load.clone()
    })?;
    let mut runs = Vec::new();
    let mut knees = Vec::new();
    for &io in &cfg.io {
        let dir = cfg.out.join(format!("io-{io}"));
        if let Some(rate) = cfg.rate {
            let load = LoadConfig {
                rate,
                ..cfg.load.clone()
            };
            let row = run_to_dir(&load, io, &dir.join(rate_dir(rate)))?;
            on_run(&row, &knee::verdict(&row.summary, cfg.search.p99_target));
            runs.push(row);
            continue;
        }
        cfg.search
            .check()
            .map_err(|e| CeilingError::Config(e.to_string()))?;
        let outcome = knee::search_config(
            &label(io),
            &cfg.search,
            |rate, i, retry| {
                let load = LoadConfig {
                    rate,
                    ..cfg.load.clone()
                };
                let d = knee::run_dir(&dir.join(rate_dir(rate)), i, retry);
                let row = run_to_dir(&load, io, &d)?;
                on_run(&row, &knee::verdict(&row.summary, cfg.search.p99_target));
                let s = row.summary.clone();
                runs.push(row);
                Ok::<_, CeilingError>(s)
            },
            |_, _| {},
        )?;
        knees.push(CeilingKnee { io, outcome });
    }
    Ok(Report {
        runs,
        knees,
        p99_target_ms: cfg.search.p99_target.as_secs_f64() * 1000.0,
    })
}

fn rate_dir(rate: f64) -> String {
    format!("r{}", rate.round() as u64)
}

/// Columns of the runs table (`ceiling-runs.csv` and the runs part of `ceiling.md`).
pub const RUN_HEADERS: [&str; 19] = [
    "config",
    "rate",
    "offered",
    "refused",
    "sent",
    "received",
    "lost",
    "corrupted",
    "achieved",
    "p50",
    "p99",
    "p99.9",
    "max",
    "lag p99",
    "server dgrams/recv call",
    "server send dropped",
    "dropped before server",
    "dropped after server",
    "verdict",
];

/// The cells of one run's row, in [`RUN_HEADERS`] order.
pub fn run_cells(r: &RunRow, p99_target: Duration) -> Vec<String> {
    let s = &r.summary;
    let verdict = match knee::verdict(s, p99_target) {
        Ok(()) => "holds".to_string(),
        Err(why) => why,
    };
    vec![
        label(r.io),
        format!("{:.0}", s.config.rate),
        s.offered.to_string(),
        s.refused.to_string(),
        s.sent.to_string(),
        s.received.to_string(),
        s.lost.to_string(),
        s.corrupted.to_string(),
        format!("{:.0}", s.achieved_rate),
        format!("{:.3}", s.latency_ms.p50),
        format!("{:.3}", s.latency_ms.p99),
        format!("{:.3}", s.latency_ms.p999),
        format!("{:.3}", s.latency_ms.max),
        format!("{:.3}", s.harness_lag_ms.p99),
        format!("{:.1}", r.server.per_receive_call()),
        r.server.send_dropped.to_string(),
        r.dropped_before_server().to_string(),
        r.dropped_after_server().to_string(),
        verdict,
    ]
}

/// Columns of `ceiling-knee.csv`.
pub const KNEE_HEADERS: [&str; 10] = [
    "config",
    "io",
    "knee",
    "p99_at_knee_ms",
    "first_failure",
    "failure",
    "capped",
    "rates_tried",
    "failed_below",
    "harness_limited",
];

/// The report as Markdown: the knee table (knee searches only) and every run.
pub fn markdown(report: &Report) -> String {
    let target = Duration::from_secs_f64(report.p99_target_ms / 1000.0);
    let mut s = String::new();
    if !report.knees.is_empty() {
        s.push_str(&knee::outcome_markdown(
            report.knees.iter().map(|k| &k.outcome),
            target,
        ));
        s.push('\n');
    }
    let rows: Vec<Vec<String>> = report.runs.iter().map(|r| run_cells(r, target)).collect();
    s.push_str(&crate::report::markdown_table(&RUN_HEADERS, &rows));
    s.push_str(
        "\nLatency in ms from each datagram's intended send time; lag p99 is how late the \
         generators sent against their schedule; achieved is replies per second over the \
         receive window.\n",
    );
    s
}

/// Writes `ceiling.md`, `ceiling-runs.csv` and `ceiling.json`, and for a knee search
/// `ceiling-knee.csv` and `ceiling.svg/png` (p99 against achieved rate per io mode), into
/// `dir`; returns the files written.
pub fn write(dir: &Path, report: &Report) -> Result<Vec<PathBuf>, CeilingError> {
    let put = |name: &str, text: String| -> Result<PathBuf, CeilingError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| CeilingError::Report(path.clone(), e))?;
        Ok(path)
    };
    std::fs::create_dir_all(dir).map_err(|e| CeilingError::Report(dir.to_path_buf(), e))?;
    let target = Duration::from_secs_f64(report.p99_target_ms / 1000.0);
    let mut files = vec![put("ceiling.md", markdown(report))?];
    let rows: Vec<Vec<String>> = report.runs.iter().map(|r| run_cells(r, target)).collect();
    files.push(put(
        "ceiling-runs.csv",
        crate::report::csv_table(&RUN_HEADERS, &rows),
    )?);
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| CeilingError::Report(dir.join("ceiling.json"), io::Error::other(e)))?;
    files.push(put("ceiling.json", json + "\n")?);
    if !report.knees.is_empty() {
        let rows: Vec<Vec<String>> = report
            .knees
            .iter()
            .map(|k| {
                let o = &k.outcome;
                let [p99, first_failure, why] = o.result_cells();
                vec![
                    o.config.clone(),
                    k.io.to_string(),
                    o.knee.map(|v| format!("{v:.0}")).unwrap_or_default(),
                    p99,
                    first_failure,
                    why,
                    o.capped.to_string(),
                    o.steps.len().to_string(),
                    o.failed_below_cell(),
                    o.harness_limited.to_string(),
                ]
            })
            .collect();
        files.push(put(
            "ceiling-knee.csv",
            crate::report::csv_table(&KNEE_HEADERS, &rows),
        )?);
        let (svg, png) = (dir.join("ceiling.svg"), dir.join("ceiling.png"));
        knee::plot(report.knees.iter().map(|k| &k.outcome), &svg, &png)
            .map_err(|e| CeilingError::Report(svg.clone(), io::Error::other(e)))?;
        files.push(svg);
        files.push(png);
    }
    Ok(files)
}
