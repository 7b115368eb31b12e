#!/usr/bin/env bash
# The knee of each batch configuration on loopback: for batch sizes 1, 16 and 128 (timeout
# 0), the highest open-loop rate of 64-byte echo messages over 16 connections that holds
# p99 <= 10 ms with nothing lost or refused. The engine (1 shard) is pinned to the first
# core and the harness to the last; each rate must hold in 2 runs. Override with KNEE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p bench-harness
out=${OUT:-knee-out}
# shellcheck disable=SC2086
target/release/bench-harness knee --out "$out" ${KNEE_ARGS:---batch-sizes 1,16,128 --batch-timeouts 0 --connections 16 --message-size 64 --duration 3s --warmup 1s --drain 2s --min-rate 10000 --repeat 2}
