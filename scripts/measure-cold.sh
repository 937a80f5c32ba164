#!/usr/bin/env bash
# Times what a new user waits for on this machine, from a fresh clone with empty caches:
# installing the tools, the build, `just demo` up to its first incident, and `just test`.
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

START=$(date +%s)
mark() { printf 'measure-cold: %-40s %5d s\n' "$1" $(($(date +%s) - START)); }

scripts/install-tools.sh >"$ROOT/install.log" 2>&1
mark "install-tools (just, JDK, Maven, Kafka jars)"
just build >"$ROOT/build.log" 2>&1
mark "just build"
just demo >"$ROOT/demo.log" 2>&1
mark "just demo (incidents printed)"
just down >/dev/null 2>&1 || true
just test >"$ROOT/test.log" 2>&1
mark "just test"
echo "logs and caches in $ROOT (scripts/measure-cold.sh --warm $ROOT for a warm run)"
