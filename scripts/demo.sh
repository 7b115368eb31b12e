#!/usr/bin/env bash
# The main job on an embedded default: start an engine on loopback (2 shards, echo), drive
# it with `engine ping`, then stop it with SIGTERM and show its graceful drain.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p engine
bin=target/release/engine
addr=${ADDR:-127.0.0.1:4433}
log=$(mktemp)
"$bin" serve --listen "$addr" --shards "${SHARDS:-2}" --batch-timeout "${BATCH_TIMEOUT:-0}" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening on" "$log" && break; sleep 0.1; done
if ! grep -q "listening on" "$log"; then cat "$log"; exit 1; fi
grep "listening on" "$log"
echo "--- round trips, one message in flight"
"$bin" ping --target "$addr" --count "${COUNT:-10000}" --size 64
echo "--- pipelined, 64 in flight"
"$bin" ping --target "$addr" --count "${COUNT:-10000}" --size 1024 --window 64
kill -TERM $pid
wait $pid
trap - EXIT
tail -n 2 "$log"
