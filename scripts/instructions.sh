#!/usr/bin/env bash
# Instructions per message of the shard's whole echo path in memory (shards/benches/endpoint.rs:
# a client session seals a batch of 64-byte messages, the shard's Endpoint opens, routes and
# echoes it, the client opens the echoes), counted by valgrind's callgrind, which counts the
# same on a busy or a quiet machine. Each batch size runs twice, with A and B iterations;
# (instructions(B) - instructions(A)) / ((B - A) * batch) is per message, setup excluded.
# Client and shard work are both in it, as in the criterion bench.
#
#   scripts/instructions.sh              # batch sizes 1, 16, 128
#   BATCHES="128" scripts/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh valgrind:valgrind
bin=$(cargo bench --locked -p shards --bench endpoint --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "instructions.sh: no endpoint bench binary" >&2; exit 1; }
a=${A:-20}
b=${B:-120}
for v in "$a" "$b" ${BATCHES:-1 16 128}; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "instructions.sh: '$v' is not a positive count" >&2; exit 2; }
done
[ "$b" -gt "$a" ] || { echo "instructions.sh: B ($b) must be above A ($a)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { # batch, iterations -> total instructions
  if ! ENDPOINT_BENCH_BATCH=$1 ENDPOINT_BENCH_COUNT=$2 valgrind --tool=callgrind \
    --callgrind-out-file="$tmp/cg.out" "$bin" > "$tmp/log" 2>&1; then
    echo "instructions.sh: the bench failed under valgrind (batch $1, $2 iterations):" >&2
    tail -20 "$tmp/log" >&2
    return 1
  fi
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$tmp/log"
}
echo "| batch | instructions per message | per batch |"
echo "| ---: | ---: | ---: |"
for n in ${BATCHES:-1 16 128}; do
  ia=$(count "$n" "$a") && ib=$(count "$n" "$b") && [ -n "$ia" ] && [ -n "$ib" ] || {
    echo "instructions.sh: no instruction count for batch $n" >&2
    exit 1
  }
  awk -v ia="$ia" -v ib="$ib" -v n="$n" -v d="$((b - a))" \
    'BEGIN { per = (ib - ia) / d; printf "| %d | %.0f | %.0f |\n", n, per / n, per }'
done
