#!/usr/bin/env bash
# Shard scaling: the engine's knee (batch 128, timeout 0; 64-byte echo, p99 <= 10 ms, nothing
# lost) with 1, 2, 4 and 8 shards, each count with as many harness generator threads on the
# other cores. Shards are pinned from core 0 up and generators from the last core down, so
# a count runs only where the machine has at least twice as many cores; the others are
# skipped and said so. Each count's knee.md is under $OUT/shardsN; the table at the end
# gathers them (needs jq).
#
#   scripts/scaling.sh                    # 1/2/4/8 shards where the cores allow, into scaling-out/
#   SHARDS="1 2" REPEAT=1 scripts/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh jq:jq
cargo build --release --locked -p bench-harness
bh=target/release/bench-harness
out=${OUT:-scaling-out}
cores=$(nproc)
mkdir -p "$out"
ran=()
for n in ${SHARDS:-1 2 4 8}; do
  if [ $((2 * n)) -gt "$cores" ]; then
    echo "scaling.sh: skipping $n shards: needs $((2 * n)) cores for shards and generators, this machine has $cores" >&2
    continue
  fi
  echo "== $n shard(s), $n generator thread(s)" >&2
  $bh knee --out "$out/shards$n" --engine-shards "$n" --threads "$n" --connections $((16 * n)) \
    --batch-sizes 128 --batch-timeouts 0 --message-size 64 --duration 3s --warmup 1s --drain 2s \
    --p99-target 10ms --min-rate 10000 --repeat "${REPEAT:-2}"
  ran+=("$n")
done
{
  echo "| shards | knee (msg/s) | per shard | p99 at knee (ms) | first failing rate above | why | failed below the knee |"
  echo "| ---: | ---: | ---: | ---: | ---: | --- | ---: |"
  for n in "${ran[@]}"; do
    jq -r --argjson n "$n" '.[0] | "| \($n) | \(.knee // "none") | \(if .knee then (.knee / $n | floor) else "" end) | \(.p99_at_knee_ms // "") | \(.first_failure // "") | \(.failure // "") | \((.failed_below // []) | map(floor | tostring) | join(" ")) |"' "$out/shards$n/knee.json"
  done
} | tee "$out/scaling.md"
