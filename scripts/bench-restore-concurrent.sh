#!/usr/bin/env bash
# `just bench-restore-concurrent`: several partitions restored at once. A changelog of
# BENCH_PARTITIONS partitions (default 6) holding BENCH_KEYS entity states each (default
# 200,000) and one webhook waiting in each input partition; a processor with an empty
# state_dir is assigned them all at once, and the time from assignment to the first event of
# each partition is read from its metrics. The baseline, in the same run on the same broker:
# the same processor restoring one such partition alone. With BENCH_BEFORE_PROCESSOR (a
# hookfold-processor binary of an earlier build), that one is measured the same way beside
# it. Writes the figures into docs/BENCHMARKS.md between the restore-concurrent markers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
KEYS="${BENCH_KEYS:-200000}"
N="${BENCH_PARTITIONS:-6}"
BEFORE="${BENCH_BEFORE_PROCESSOR:-}"
say() { printf '\033[1mbench-restore-concurrent:\033[0m %s\n' "$*" >&2; }
LOAD_AT_START=$(loadavg)
say "load average at the start: $LOAD_AT_START"
start_bench_broker
RUN="bench-restore-concurrent.$(date +%s)"

# fill NAME PARTITIONS: topics for NAME, their changelog filled, one webhook in each input
# partition.
fill() {
  local name=$1 partitions=$2
  cat >"$WORK/$name.fill.toml" <<TOML
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$RUN.$name.webhooks"
output_topic = "$RUN.$name.incidents"
group_id = "$RUN.$name.fill"
TOML
  "$BIN/hookfold-processor" --config "$WORK/$name.fill.toml" topics --create --partitions "$partitions" >&2
  say "$name: writing $KEYS states to each of $partitions changelog partitions"
  "$BIN/changelog-fill" --config "$WORK/$name.fill.toml" fill --keys "$KEYS" --partitions "$partitions" >/dev/null
  # Distinct keys: every input partition gets some (60 keys over 6 partitions miss one with
  # a chance of about 1 in 10,000; the wait below would then say so).
  "$BIN/hookfold-dev" fill --topic "$RUN.$name.webhooks" --count $((10 * partitions)) --shape distinct >&2
}

# restore NAME PROCESSOR LABEL PARTITIONS: a processor with an empty state_dir, its own
# group and outputs, reading NAME's changelog; prints "max min sum_restore_seconds rss_kib".
restore() {
  local name=$1 processor=$2 label=$3 partitions=$4 port pid deadline
  port=$(free_port)
  "$BIN/hookfold-dev" topics "$RUN.$name.$label.incidents:$partitions" "$RUN.$name.$label.incidents.open:$partitions:compact" >/dev/null 2>&1
  cat >"$WORK/$name.$label.toml" <<TOML
state_dir = "$WORK/$name.$label.state"
metrics_listen = "127.0.0.1:$port"
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$RUN.$name.webhooks"
output_topic = "$RUN.$name.$label.incidents"
open_incidents_topic = "$RUN.$name.$label.incidents.open"
group_id = "$RUN.$name.$label.group"
changelog_topic = "$RUN.$name.fill.state"
TOML
  RUST_LOG=info "$processor" --config "$WORK/$name.$label.toml" >"$WORK/$name.$label.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  firsts() { curl -s "http://127.0.0.1:$port/metrics" | awk '$1 ~ /^hookfold_processor_assignment_to_first_event_seconds\{/ {print $2}'; }
  deadline=$((SECONDS + 1800))
  until [ "$(firsts | wc -l)" -ge "$partitions" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.$label.log" >&2; say "processor exited"; exit 1; }
    [ "$SECONDS" -lt "$deadline" ] || { say "not every partition had its first event within 30 minutes"; exit 1; }
    sleep 0.2
  done
  local rss restore_s
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  restore_s=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 ~ /^hookfold_processor_restore_seconds\{/ {if ($2 > m) m = $2} END {print m + 0}')
  firsts | sort -g | awk -v r="$restore_s" -v rss="$rss" 'NR == 1 {min = $1} {max = $1} END {print max, min, r, rss}'
  stop "$pid"
}

results=()
for label in after ${BEFORE:+before}; do
  # Changelogs of their own: a processor writes to the changelog it restored from.
  fill "one-$label" 1
  fill "many-$label" "$N"
  processor="$BIN/hookfold-processor"
  [ "$label" = before ] && processor="$BEFORE"
  say "$label: one partition alone (the baseline)"
  read -r one _ one_r one_rss < <(restore "one-$label" "$processor" "$label" 1)
  say "$label: $N partitions at once"
  read -r max min many_r many_rss < <(restore "many-$label" "$processor" "$label" "$N")
  results+=("$label $one $max $min $many_r $one_rss $many_rss")
  mkdir -p "${HOOKFOLD_CACHE:-$HOME/.cache/hookfold}/bench"
  cp "$WORK/many-$label.$label.log" "${HOOKFOLD_CACHE:-$HOME/.cache/hookfold}/bench/restore-concurrent-$label.log"
done

report=$(python3 - "$KEYS" "$N" "$BROKER" "$LOAD_AT_START" "${results[@]}" <<'PY'
import sys, datetime, os
keys, n, broker, load = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [r.split() for r in sys.argv[5:]]
out = [f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores, load average {load} at the start;
{broker}. Each changelog partition holds {keys:,} entity states and a batch marker, and each input
partition a few webhooks; a processor with an empty state_dir is assigned the partitions at once, and
its metric `assignment_to_first_event_seconds` says, per partition, how long it took from the
assignment to the first event folded (the restore included). Baseline: the same build restoring one
such partition alone, in the same run.

| build | one partition alone: first event | {n} at once: last partition's first event | first partition's | ratio (last ÷ alone) | peak RSS alone / {n} at once |
|---|---:|---:|---:|---:|---:|"""]
for label, one, mx, mn, _, one_rss, many_rss in rows:
    one, mx, mn = float(one), float(mx), float(mn)
    name = "this build" if label == "after" else "before (issue 24)"
    out.append(f"| {name} | {one:.2f} s | {mx:.2f} s | {mn:.2f} s | **{mx / one:.2f}** | {int(one_rss) / 1024:,.0f} / {int(many_rss) / 1024:,.0f} MiB |")
out.append("")
out.append(f"Target (issue 29): the last of {n} partitions restored at once has its first event within 2 × one partition's time alone.")
print("\n".join(out))
PY
)
echo "$report"
write_benchmark restore-concurrent "Several partitions restored at once (\`just bench-restore-concurrent\`)" "$report"
say "written to docs/BENCHMARKS.md"
