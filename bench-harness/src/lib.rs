//! Output side of the engine's load-generator harness: HdrHistogram `.hgrm` and `.hlog`
//! files, the per-run `summary.json`, comparison tables, plots, and `compare`; and the
//! tokio + quinn control server the engine is measured against ([`control`]).
//!
//! Convention: the harness records latency in **nanoseconds** in `Histogram<u64>`s; people see
//! **milliseconds** (`.hgrm` files, summaries, tables, plots).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod ceiling;
pub mod cli;
pub mod compare;
pub mod control;
pub mod hgrm;
pub mod hlog;
pub mod knee;
pub mod load;
pub mod output;
pub mod perf_report;
pub mod plot;
pub mod report;
pub mod stalls;
pub mod steal;
pub mod summary;
pub mod sweep;
pub mod syscalls;
