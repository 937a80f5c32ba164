#!/usr/bin/env bash
# Times what a new user waits for on this machine, from a fresh clone with empty caches:
# `cargo install just`, `just demo` up to its first incident (which installs the Debian
# packages, fetches the Kafka jars and builds), and `just test`, as the README says.
# The caches (~/.cache/hookfold: Kafka jars, Maven's repository, the build) are replaced by
# empty ones in a temporary directory; crates.io's download cache (~/.cargo/registry) and
# Debian's packages are what the machine has. Prints one line per phase, seconds since start.
#
#   scripts/measure-cold.sh            # cold: empty caches
#   scripts/measure-cold.sh --warm DIR # again on the caches a previous run left in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE="$PWD"

if [ "${1:-}" = --warm ]; then
  ROOT="$2"
else
  ROOT=$(mktemp -d /tmp/hookfold-cold.XXXXXX)
fi
export HOOKFOLD_CACHE="$ROOT/cache" HOOKFOLD_TOOLS="$ROOT/cache/tools"
export CARGO_TARGET_DIR="$ROOT/cache/target"
# just is a tool the clone installs itself (scripts/install-tools.sh), as on a fresh machine.
export PATH="$HOOKFOLD_TOOLS/bin:$(echo "$PATH" | tr ':' '\n' | grep -v hookfold/tools | paste -sd:)"
rm -rf "$ROOT/clone"
git clone -q "$SOURCE" "$ROOT/clone"
[ -d "$SOURCE/../shared" ] && ln -sfn "$(cd "$SOURCE/../shared" && pwd)" "$ROOT/shared"
cd "$ROOT/clone"

rm -f "$ROOT/first-incident" "$ROOT/demo.log"
START=$(date +%s)
mark() { printf 'measure-cold: %-44s %5d s\n' "$1" $(($(date +%s) - START)); }

# The README's path: `cargo install just`, then `just demo`, then `just test`.
cargo install just --locked --root "$HOOKFOLD_TOOLS" --quiet >"$ROOT/just.log" 2>&1
mark "cargo install just"
JUST_DONE=$(date +%s)
# The first incident is the first CREATED line of the demo's summary.
just demo 2>&1 | while IFS= read -r line; do
  printf '%s\n' "$line" >>"$ROOT/demo.log"
  if [ ! -f "$ROOT/first-incident" ] && [[ "$line" == CREATED* ]]; then
    echo $(($(date +%s) - JUST_DONE)) >"$ROOT/first-incident"
  fi
done
mark "just demo (all incidents printed)"
[ -f "$ROOT/first-incident" ] || { echo "measure-cold: the demo printed no incident; see $ROOT/demo.log" >&2; exit 1; }
echo "measure-cold: first incident $(cat "$ROOT/first-incident") s after just was installed"
just down >/dev/null 2>&1 || true
just test >"$ROOT/test.log" 2>&1 || { mark "just test FAILED (see $ROOT/test.log)"; exit 1; }
mark "just test"
grep -E '^test result:' "$ROOT/test.log" | awk '{p+=$4; f+=$6} END {print "measure-cold: tests passed " p ", failed " f}'
echo "logs and caches in $ROOT (scripts/measure-cold.sh --warm $ROOT for a warm run)"
