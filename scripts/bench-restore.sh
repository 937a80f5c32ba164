#!/usr/bin/env bash
# `just bench-restore`: how fast a processor restores a partition from the changelog, and
# the time from assignment to the first processed event, for BENCH_KEYS entity states
# (default 1,000,000), against a plain consumer reading the same changelog partition in
# the same run on the same broker (bench/src/bin/changelog-fill.rs). The broker is a fresh
# Apache Kafka of our own (or KAFKA_BOOTSTRAP_SERVERS); the CPU of the broker and of our
# processes is measured for the read and the restore. Writes the figures into
# docs/BENCHMARKS.md between the restore markers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
KEYS="${BENCH_KEYS:-1000000}"
say() { printf '\033[1mbench-restore:\033[0m %s\n' "$*" >&2; }
LOAD_AT_START=$(loadavg)
say "load average at the start: $LOAD_AT_START"
start_bench_broker
RUN="bench-restore.$(date +%s)"
PORT=$(free_port)
cat >"$WORK/processor.toml" <<TOML
state_dir = "$WORK/state"
metrics_listen = "127.0.0.1:$PORT"
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$RUN.webhooks"
output_topic = "$RUN.incidents"
group_id = "$RUN.group"
TOML
"$BIN/hookfold-processor" --config "$WORK/processor.toml" topics --create --partitions 1 >&2

say "writing $KEYS states to the changelog $RUN.group.state"
read -r _ f_n f_bytes f_s < <("$BIN/changelog-fill" --config "$WORK/processor.toml" fill --keys "$KEYS")
# The fill warmed up the broker's produce path; a restore fetches. Unmeasured reads of the
# partition until the broker's JIT has settled (they also leave it in the page cache, as it
# is for the restore after them).
warm_broker "$BIN/changelog-fill" --config "$WORK/processor.toml" read
say "baseline: a plain consumer reads the changelog partition"
cpu_start
measured "$WORK/read.cpu" "$BIN/changelog-fill" --config "$WORK/processor.toml" read >"$WORK/read.out"
read -r _ r_n r_s <"$WORK/read.out"
r_cpu=$(cpu_end "reader=$(cat "$WORK/read.cpu")")
# One webhook waiting in the input: the first event processed after the restore.
"$BIN/hookfold-dev" fill --topic "$RUN.webhooks" --count 1 --shape mixed >&2

say "processor with an empty state_dir: restore, then the first event"
cpu_start
RUST_LOG=info "$BIN/hookfold-processor" --config "$WORK/processor.toml" >"$WORK/processor.log" 2>&1 &
PID=$!; PIDS+=($PID)
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s += $2; f = 1} END {if (f) print s}'; }
deadline=$((SECONDS + 1800))
until [ -n "$(metric hookfold_processor_assignment_to_first_event_seconds)" ]; do
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/processor.log" >&2; echo "processor exited" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "no first event within 30 minutes" >&2; exit 1; }
  sleep 0.2
done
p_cpu=$(cpu_end "processor=$(ticks_to_s "$(ticks "$PID")")")
p_records=$(metric hookfold_processor_restore_records_total)
p_restore=$(metric hookfold_processor_restore_seconds)
p_first=$(metric hookfold_processor_assignment_to_first_event_seconds)
p_rss=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
p_keys=$(metric hookfold_processor_state_keys)
kill -TERM "$PID"; wait "$PID" || true
# The processor's log outlives the work dir: its restore lines say where the time went.
LOGS="${HOOKFOLD_CACHE:-$HOME/.cache/hookfold}/bench"
mkdir -p "$LOGS" && cp "$WORK/processor.log" "$LOGS/restore-processor.log"
say "processor log: $LOGS/restore-processor.log"
stop "$PID"

report=$(python3 - "$KEYS" "$f_n" "$f_bytes" "$r_n" "$r_s" "$p_records" "$p_restore" "$p_first" "$p_rss" "$BROKER" "$p_keys" \
  "$r_cpu" "$p_cpu" "$BROKER_PID" "$LOAD_AT_START" "$WARMUP" <<'PY'
import sys, datetime, os
exec(os.environ["CPU_PY"])
a = sys.argv[1:]
keys, f_n, f_bytes, r_n, r_s = int(a[0]), int(a[1]), int(a[2]), int(a[3]), float(a[4])
p_n, p_s, p_first, p_rss, broker, p_keys = float(a[5]), float(a[6]), float(a[7]), int(a[8]), a[9], float(a[10])
r_cpu, p_cpu, ours, load, warmup = a[11], a[12], bool(a[13]), a[14], a[15]
r_rate, p_rate = r_n / r_s, p_n / p_s
cpu = lambda line: split(line, ours)
print(f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores, load average {load} at the start;
{broker}. One changelog partition holding {keys:,} entity states ({f_bytes/2**20:,.0f} MiB of keys and values,
as the processor writes them) and a batch marker, written with ordinary batching. Before the measured
runs, the {warmup} (full reads of the partition).

| what | records | seconds | records/s | ratio to the baseline |
|---|---:|---:|---:|---:|
| baseline: plain consumer reading the partition | {r_n:,} | {r_s:,.1f} | {r_rate:,.0f} | 1.00 |
| **restore** into an empty state_dir (read, replay, RocksDB) | {p_n:,.0f} | {p_s:,.1f} | **{p_rate:,.0f}** | **{p_rate/r_rate:.2f}** |

Restore / plain read = **{p_rate/r_rate:.0%}** (target: at least 50%). Time from assignment to the first
processed event (restore included): **{p_first:,.1f} s** (target: at most 30 s).
The restored store holds {p_keys:,.0f} keys (RocksDB estimate); processor peak RSS {p_rss/1024:,.0f} MiB.

CPU, in percent of one core ({os.cpu_count()} cores = {100 * os.cpu_count()}%): during the plain read, {cpu(r_cpu)};
from the processor's start to its first event, {cpu(p_cpu)}.""")
PY
)
echo "$report"
write_benchmark restore "Restore from the changelog (\`just bench-restore\`)" "$report"
say "written to docs/BENCHMARKS.md"
