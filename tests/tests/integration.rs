//! Integration tests over real loopback sockets: engines, clients, shards, and the `engine`
//! and `bench-harness` binaries. One test binary for the workspace (one link of BoringSSL).
//! Tests that take more than a few seconds are `#[ignore = "slow tier: ..."]` and run with
//! `cargo test -- --ignored` (see the README's Testing section).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attack;
mod common;
mod data_path;
mod pool;

// The `engine` crate and binary.
mod engine_cli;
mod metrics;
mod reconnect;

// The `bench-harness` crate and binary.
mod ceiling_cli;
mod compare;
mod control;
mod harness_cli;
mod hgrm_golden;
mod hlog_roundtrip;
mod load;
