//! Integration tests over real loopback sockets: engines, clients, shards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_path;
mod pool;
