#!/usr/bin/env bash
# The test command (what CI runs), in two tiers (README, "Testing"):
#   fast: cargo fmt --check, clippy -D warnings, and every unit, integration and doc test
#         not marked slow;
#   slow: the tests marked `#[ignore = "slow tier: ..."]`, bounded by SLOW_TIMEOUT (default
#         15m), then the API docs with rustdoc warnings as errors. The 10-minute soak test
#         (`soak_*`) is not in either tier; the README says how to run it.
# SLOW=0 runs the fast tier only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

step() {
  local start=$SECONDS
  echo "test.sh: $*" >&2
  "$@"
  echo "test.sh: done in $((SECONDS - start)) s: $*" >&2
}

fast_start=$SECONDS
step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets --locked -- -D warnings
step cargo test --workspace --locked
echo "test.sh: fast tier passed in $((SECONDS - fast_start)) s" >&2

if [ "${SLOW:-1}" = 0 ]; then
  echo "test.sh: slow tier skipped (SLOW=0)" >&2
  exit 0
fi

slow_start=$SECONDS
# timeout signals the whole process group: cargo, the test binaries and any engine they run.
status=0
step timeout --kill-after=30s "${SLOW_TIMEOUT:-15m}" cargo test --workspace --locked -- --ignored --skip soak || status=$?
if [ "$status" -eq 124 ]; then
  echo "test.sh: slow tier exceeded SLOW_TIMEOUT=${SLOW_TIMEOUT:-15m}" >&2
  exit 1
elif [ "$status" -ne 0 ]; then
  exit "$status"
fi
step env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "test.sh: slow tier passed in $((SECONDS - slow_start)) s" >&2
