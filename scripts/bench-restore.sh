#!/usr/bin/env bash
# `just bench-restore`: how fast a processor restores a partition from the changelog, and
# the time from assignment to the first processed event, for KEYS entity states (default
# 1,000,000), against a plain consumer reading the same changelog partition in the same
# run on the same broker (bench/src/bin/changelog-fill.rs). Writes the figures into
# docs/BENCHMARKS.md between the restore markers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
KEYS="${BENCH_KEYS:-1000000}"
say() { printf '\033[1mbench-restore:\033[0m %s\n' "$*" >&2; }

# tansu on SQLite cannot serve a read from the start of a large partition (30,000 records did
# not arrive within 100 s), and a restore is exactly that: memory storage, one record per batch.
start_bench_broker memory
export BENCH_KAFKA_PROPERTIES="batch.num.messages=1"
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
[kafka.properties]
"batch.num.messages" = "1"
TOML
"$BIN/hookfold-processor" --config "$WORK/processor.toml" topics --create --partitions 1 >&2

say "writing $KEYS states to the changelog $RUN.group.state"
read -r _ f_n f_bytes f_s < <("$BIN/changelog-fill" --bootstrap "$KAFKA" --topic "$RUN.group.state" fill --keys "$KEYS")
say "baseline: a plain consumer reads the changelog partition"
read -r _ r_n r_s < <("$BIN/changelog-fill" --bootstrap "$KAFKA" --topic "$RUN.group.state" read)
# One webhook waiting in the input: the first event processed after the restore.
"$BIN/hookfold-dev" fill --topic "$RUN.webhooks" --count 1 --shape mixed >&2

say "processor with an empty state_dir: restore, then the first event"
RUST_LOG=info "$BIN/hookfold-processor" --config "$WORK/processor.toml" >"$WORK/processor.log" 2>&1 &
PID=$!; PIDS+=($PID)
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s += $2; f = 1} END {if (f) print s}'; }
deadline=$((SECONDS + 3600))
until [ -n "$(metric hookfold_processor_assignment_to_first_event_seconds)" ]; do
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/processor.log" >&2; echo "processor exited" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "no first event within an hour" >&2; exit 1; }
  sleep 0.2
done
p_records=$(metric hookfold_processor_restore_records_total)
p_restore=$(metric hookfold_processor_restore_seconds)
p_first=$(metric hookfold_processor_assignment_to_first_event_seconds)
p_rss=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
p_keys=$(metric hookfold_processor_state_keys)
kill -TERM "$PID"; wait "$PID" || true

report=$(python3 - "$KEYS" "$f_n" "$f_bytes" "$r_n" "$r_s" "$p_records" "$p_restore" "$p_first" "$p_rss" "$BROKER" "$p_keys" <<'PY'
import sys, datetime, os
a = sys.argv[1:]
keys, f_n, f_bytes, r_n, r_s = int(a[0]), int(a[1]), int(a[2]), int(a[3]), float(a[4])
p_n, p_s, p_first, p_rss, broker, p_keys = float(a[5]), float(a[6]), float(a[7]), int(a[8]), a[9], float(a[10])
r_rate, p_rate = r_n / r_s, p_n / p_s
print(f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores; {broker}; one changelog partition holding
{keys:,} entity states ({f_bytes/2**20:,.0f} MiB of keys and values, as the processor writes them) and a batch marker.

| what | records | seconds | records/s | ratio to the baseline |
|---|---:|---:|---:|---:|
| baseline: plain consumer reading the partition | {r_n:,} | {r_s:,.1f} | {r_rate:,.0f} | 1.00 |
| **restore** into an empty state_dir (read, replay, RocksDB) | {p_n:,.0f} | {p_s:,.1f} | **{p_rate:,.0f}** | **{p_rate/r_rate:.2f}** |

Time from assignment to the first processed event (restore included): **{p_first:,.1f} s**.
The restored store holds {p_keys:,.0f} keys (RocksDB estimate); processor peak RSS {p_rss/1024:,.0f} MiB.""")
PY
)
echo "$report"
write_benchmark restore "Restore from the changelog (\`just bench-restore\`)" "$report"
say "written to docs/BENCHMARKS.md"
