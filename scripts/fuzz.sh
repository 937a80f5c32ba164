#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo-fuzz and libFuzzer) on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # default: 600 s each, every target
#   HOOKFOLD_FUZZ_RUNS=10000000 scripts/fuzz.sh 7200 fold   # stop at 10 million executions
#
# Each target starts from its stored seed corpus (fuzz/corpus/<target>, written by
# `hookfold-dev fuzz-seeds`) plus what earlier runs on this machine found
# (~/.cache/hookfold/fuzz/corpus/<target>), and reports its executions, coverage and
# crashes. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run; replay it
# with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` from fuzz/'s parent.
#
# Stable Rust: cargo-fuzz passes nightly-only flags (-Z...), which RUSTC_BOOTSTRAP=1 lets
# the stable compiler take. No sanitizer (`-s none`): the code under test is safe Rust,
# so what is searched for is a panic, an abort, a hang or unbounded memory, which libFuzzer
# catches by itself (with -timeout, -rss_limit_mb and -malloc_limit_mb); overflow checks
# and debug assertions stay on (cargo-fuzz's default).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HOOKFOLD_CACHE:-$HOME/.cache/hookfold}"
TOOLS="${HOOKFOLD_TOOLS:-$CACHE/tools}"
CARGO_FUZZ_VERSION="0.13.1"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
# Target directories of their own (below): the fuzz flags would otherwise rebuild the
# workspace's.
SECONDS_EACH="${1:-600}"
shift || true
TARGETS=("$@")
ALL=(webhook_record webhook_request state_codec changelog_replay fold)
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")

say() { printf '\033[1mfuzz:\033[0m %s\n' "$*" >&2; }

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS (a minute or two, once)"
  CARGO_TARGET_DIR="$CACHE/fuzz-target" cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS" --quiet
fi

# The fold target without comparison tracing: its input is a list of choices from small
# sets (arbitrary), which comparison feedback guides little, while the tracing took 45% of
# its time (perf). Other flags mean other artifacts, hence a target dir of its own.
flags() { [ "$1" = fold ] && echo --no-trace-compares; true; }
target_dir() { if [ "$1" = fold ]; then echo "$CACHE/fuzz-target-fold"; else echo "$CACHE/fuzz-target"; fi; }

say "building ${TARGETS[*]}"
for target in "${TARGETS[@]}"; do
  # shellcheck disable=SC2046 # flags are words
  CARGO_TARGET_DIR=$(target_dir "$target") cargo fuzz build -s none $(flags "$target") "$target" 2>&1 |
    grep -vE '^\s+(Compiling|Finished|Running)' >&2 || true
done

failed=0
for target in "${TARGETS[@]}"; do
  found="$CACHE/fuzz/corpus/$target"
  mkdir -p "$found" "fuzz/artifacts/$target" "fuzz/corpus/$target"
  log="$CACHE/fuzz/$target.log"
  extra=()
  [ -n "${HOOKFOLD_FUZZ_RUNS:-}" ] && extra+=(-runs="$HOOKFOLD_FUZZ_RUNS")
  case "$target" in webhook_record | webhook_request) extra+=(-dict=fuzz/json.dict) ;; esac
  say "$target: ${SECONDS_EACH} s (log: $log)"
  set +e
  # shellcheck disable=SC2046
  CARGO_TARGET_DIR=$(target_dir "$target") cargo fuzz run -s none $(flags "$target") "$target" "$found" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -max_len=65536 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
  status=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  corpus=$(find "$found" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    say "$target: ${runs:-?} executions (${rate:-?}/s), ${cov:-no coverage line}, corpus $corpus inputs, no crash"
  else
    failed=1
    say "$target: FAILED (exit $status) after ${runs:-?} executions; artifacts in fuzz/artifacts/$target/:"
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -10 >&2 || true
  fi
done
exit "$failed"
