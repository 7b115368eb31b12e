#!/usr/bin/env bash
# One performance run, everything side by side on this machine, then one page:
#   0. the machine's stall floor (bench-harness stalls: a spinning thread per core, 10 s);
#   1. the raw UDP echo ceiling (bench-harness ceiling: per-datagram, batched and offload I/O);
#   2. the engine's knee for batch sizes 1, 16 and 128 (timeout 0), 1 shard on core 0;
#   3. the tokio + quinn control's knee for the same configurations, on core 0;
#   4. system calls and CPU per message of each server and of the harness at one fixed rate
#      below every knee (perf stat -e raw_syscalls:sys_enter,task-clock), servers pinned to
#      core 0; then the same counts with each server saturated (SATURATE msg/s offered,
#      default 1,500,000, more than the two cores carry) at batch 1, 16 and 128: CPU per
#      message when the server is as busy as the harness can make it;
#   5. the adaptive-batching check: batch 1 against batch 128 (timeout 0) at 10 % of the
#      engine's batch-128 knee, in ADAPTIVE_ROUNDS rounds (default 5) of one run each,
#      compared by their medians;
#   6. the throughput target itself: single runs of the engine and the control at
#      TARGET_RATE (default 1,000,000 msg/s) at batch 128, in TARGET_ROUNDS interleaved
#      rounds (default 5), each judged as a knee step: how often the rate held;
#   7. bench-harness perf-report: $OUT/performance.md/.json/.svg/.png.
# Every search: 16 connections, 64-byte echo, 3 s measured after 1 s warm-up, p99 <= 10 ms,
# each rate run twice (REPEAT). The harness runs on the last core. Takes about 24 minutes
# on 2 cores. Run it on a quiet machine: other load moves every number.
#
#   scripts/perf.sh                     # everything, into perf-out/
#   OUT=/tmp/p REPEAT=1 scripts/perf.sh # quicker, noisier
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh perf:linux-perf jq:jq # perf: system call counts
cargo build --release --locked -p engine -p bench-harness
bh=target/release/bench-harness
eng=target/release/engine
out=${OUT:-perf-out}
repeat=${REPEAT:-2}
saturate=${SATURATE:-1500000}
[[ "$saturate" =~ ^[1-9][0-9]*$ ]] || { echo "perf.sh: SATURATE '$saturate' is not a positive rate" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out"
search=(--message-size 64 --duration 3s --warmup 1s --drain 2s
        --p99-target 10ms --min-rate 10000 --repeat "$repeat")

echo "== 0/7 stall floor of the idle machine" >&2
$bh stalls --duration 10s --out "$out/stalls"
echo "== 1/7 raw UDP ceiling" >&2
$bh ceiling --out "$out/ceiling" "${search[@]}"
echo "== 2/7 engine knee" >&2
$bh knee --out "$out/engine" --connections 16 --batch-sizes 1,16,128 --batch-timeouts 0 "${search[@]}"
control=()
if $bh knee --help | grep -q -- '--server'; then
  echo "== 3/7 control knee" >&2
  $bh knee --server control --out "$out/control" --connections 16 --batch-sizes 1,16,128 \
    --batch-timeouts 0 "${search[@]}"
  control=(--control "$out/control")
else
  echo "== 3/7 control knee: skipped (this bench-harness has no control server)" >&2
fi

# The lowest knee of all, halved: every server is below saturation there.
low=$(jq -s '[.[][] | .knee // empty] | min // 10000' "$out/engine/knee.json" ${control:+"$out/control/knee.json"})
rate=$(jq -n --argjson k "$low" '[($k / 2 | floor), 1000] | max')
port=4533
# Starts a server on core 0, waits for its banner, counts its syscalls during one run.
count() { # name, rate, then the server command
  local name=$1 at=$2; shift 2
  local log="$out/syscalls/$name.log"
  mkdir -p "$out/syscalls"
  taskset -c 0 "$@" > "$log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  grep -q "listening on" "$log" || { echo "perf.sh: $name did not start: $(cat "$log")" >&2; kill $pid; return 1; }
  # A run that lost messages exits 1: the page's lost column and targets say so; the other
  # runs go on.
  $bh run --target 127.0.0.1:$port --rate "$at" --connections 16 --message-size 64 \
    --duration 5s --warmup 1s --drain 2s --out "$out/syscalls/$name" --count-syscalls $pid \
    --allow-saturation || true
  kill -INT $pid 2>/dev/null || true
  wait $pid || true
}
echo "== 4/7 system calls per message at $rate msg/s" >&2
for bs in 1 128; do
  count "engine-bs$bs" "$rate" $eng serve --listen 127.0.0.1:$port --shards 1 --batch-size $bs --batch-timeout 0
  [ ${#control[@]} -eq 0 ] || count "control-bs$bs" "$rate" $bh control-server --listen 127.0.0.1:$port --batch-size $bs --batch-timeout 0
done
echo "== 4/7 CPU per message, saturated ($saturate msg/s offered)" >&2
for bs in 1 16 128; do
  count "engine-bs$bs-saturated" "$saturate" $eng serve --listen 127.0.0.1:$port --shards 1 --batch-size $bs --batch-timeout 0
  [ ${#control[@]} -eq 0 ] || count "control-bs$bs-saturated" "$saturate" $bh control-server --listen 127.0.0.1:$port --batch-size $bs --batch-timeout 0
done

knee128=$(jq '[.[] | select(.batch_size == 128) | .knee // empty] | first // 10000' "$out/engine/knee.json")
arate=$(jq -n --argjson k "$knee128" '[($k / 10 | floor), 1000] | max')
rounds=${ADAPTIVE_ROUNDS:-5}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "perf.sh: ADAPTIVE_ROUNDS '$rounds' is not a positive count" >&2; exit 2; }
echo "== 5/7 adaptive batching at $arate msg/s, $rounds rounds" >&2
for i in $(seq 1 "$rounds"); do
  $bh sweep --out "$out/adaptive/round$i" --batch-sizes 1,128 --batch-timeouts 0 --rates "$arate" \
    --connections 16 --message-size 64 --duration 5s --warmup 1s --drain 2s
done

trate=${TARGET_RATE:-1000000}
trounds=${TARGET_ROUNDS:-5}
[[ "$trate" =~ ^[1-9][0-9]*$ ]] || { echo "perf.sh: TARGET_RATE '$trate' is not a positive rate" >&2; exit 2; }
[[ "$trounds" =~ ^[1-9][0-9]*$ ]] || { echo "perf.sh: TARGET_ROUNDS '$trounds' is not a positive count" >&2; exit 2; }
echo "== 6/7 the target rate: $trate msg/s at batch 128, $trounds rounds" >&2
one_rate=(--connections 16 --batch-sizes 128 --batch-timeouts 0 --message-size 64 --duration 3s
          --warmup 1s --drain 2s --p99-target 10ms --min-rate "$trate" --max-rate "$trate" --repeat 1)
for i in $(seq 1 "$trounds"); do
  $bh knee --out "$out/target/round$i/engine" "${one_rate[@]}"
  [ ${#control[@]} -eq 0 ] || $bh knee --server control --out "$out/target/round$i/control" "${one_rate[@]}"
done

echo "== 7/7 report" >&2
$bh perf-report --out "$out" --engine "$out/engine" "${control[@]}" \
  --ceiling "$out/ceiling" --syscalls "$out/syscalls" --adaptive "$out/adaptive" \
  --stalls "$out/stalls" --target "$out/target"
