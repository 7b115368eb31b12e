#!/usr/bin/env bash
# The main job on an embedded default: a short batch-configuration sweep on loopback. For
# each configuration the harness starts an engine (1 shard, echo, pinned to the first
# core), drives it open-loop from a pinned thread on the last core, and records latency
# from each message's intended send time; then it prints the comparison table and writes
# the plots. Override with SWEEP_ARGS, e.g.
#   SWEEP_ARGS="--batch-sizes 1,128 --rates 5000 --duration 10s" scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p bench-harness -p engine
out=${OUT:-sweep-out}
# shellcheck disable=SC2086
target/release/bench-harness sweep --out "$out" ${SWEEP_ARGS:---batch-sizes 1,32,128 --batch-timeouts 0,1ms --rates 2000,10000 --duration 3s --warmup 1s}
echo
echo "run directories (latency.hgrm, latency.hlog, summary.json) are under $out/"
