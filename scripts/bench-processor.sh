#!/usr/bin/env bash
# `just bench-processor`: events per second through the running processor, from a
# pre-filled webhook topic of BENCH_EVENTS mixed events (default 1,000,000) to the incident
# topic, against a raw consume-and-produce copy of the same topic with the same producer
# and batch settings and no state (bench/src/bin/copy-baseline.rs), in the same run on the
# same broker; then grouped routes against the same routes ungrouped, on the mixed events
# received 1 ms apart; then state size on disk and RSS after the running processor has folded
# BENCH_DISTINCT distinct keys (default 1,000,000; `hookfold-dev fill --shape distinct`).
# The broker is a fresh Apache Kafka of our own (or KAFKA_BOOTSTRAP_SERVERS); the CPU of
# the broker and of our processes is measured in every phase. Writes the figures into
# docs/BENCHMARKS.md between the processor markers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
EVENTS="${BENCH_EVENTS:-1000000}"
DISTINCT="${BENCH_DISTINCT:-1000000}"
PARTITIONS=4
say() { printf '\033[1mbench-processor:\033[0m %s\n' "$*" >&2; }
LOAD_AT_START=$(loadavg)
say "load average at the start: $LOAD_AT_START"
start_bench_broker
RUN="bench.$(date +%s)"

# The bytes of a topic's records on our broker's disk (its log segments, not the
# preallocated indexes); "0" for an external broker.
topic_bytes() {
  [ -n "$BROKER_DIR" ] || { echo 0; return; }
  find "$BROKER_DIR"/node-1/data -path "*/$1-[0-9]*/*.log" -printf '%s\n' | awk '{s += $1} END {print s + 0}'
}

say "filling $RUN.mixed with $EVENTS mixed events"
"$BIN/hookfold-dev" topics "$RUN.mixed:$PARTITIONS" "$RUN.copy:$PARTITIONS" >/dev/null 2>&1
"$BIN/hookfold-dev" fill --topic "$RUN.mixed" --count "$EVENTS" --shape mixed

# The fill warmed up the broker's produce path; the copy also fetches. Warm-up copies of
# (up to) 200,000 records, each in a group of its own, until the broker's JIT has settled.
WARM_COUNT=$((EVENTS < 200000 ? EVENTS : 200000))
# The copy connects as a processor would: the same configuration file format and client
# settings (hookfold-kafka::client_config).
cat >"$WORK/copy.toml" <<TOML
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$RUN.mixed"
TOML
"$BIN/hookfold-dev" topics "$RUN.warmup:$PARTITIONS" >/dev/null 2>&1
warm_broker "$BIN/copy-baseline" --config "$WORK/copy.toml" --output "$RUN.warmup" --count "$WARM_COUNT"

say "ceiling: raw consume-and-produce copy of $EVENTS records"
cpu_start
measured "$WORK/copy.cpu" "$BIN/copy-baseline" --config "$WORK/copy.toml" --output "$RUN.copy" --count "$EVENTS" >"$WORK/copy.out"
read -r _ c_n c_s <"$WORK/copy.out"
c_cpu=$(cpu_end "copy=$(cat "$WORK/copy.cpu")")
say "processor over the same $EVENTS records"
run_processor mixed "$RUN.mixed"
m_s=$P_SECONDS m_hwm=$P_HWM_KB m_cpu=$P_CPU
m_out=$("$BIN/hookfold-dev" count --topic "$RUN.mixed.incidents")
m_changelog=$("$BIN/hookfold-dev" count --topic "$RUN.mixed.group.state")

# Grouped routes against the same routes without group_by, on the mixed events received
# 1 ms apart (so groups open, update and resolve): the cost of the second stage.
say "filling $RUN.timed with $EVENTS mixed events 1 ms apart"
"$BIN/hookfold-dev" topics "$RUN.timed:$PARTITIONS" >/dev/null 2>&1
"$BIN/hookfold-dev" fill --topic "$RUN.timed" --count "$EVENTS" --shape mixed-timed
ROUTES='[[rules.routes]]\nname = "fleet"\nkinds = ["agent"]\nlabels = { team = "ci-infra" }\nGROUP_FLEET\n[[rules.routes]]\nname = "platform"\npipelines = ["pipeline-1*"]\nlabels = { team = "platform" }\nGROUP_PLATFORM\n'
UNGROUPED=${ROUTES//GROUP_FLEET/}; UNGROUPED=${UNGROUPED//GROUP_PLATFORM/}
GROUPED=${ROUTES//GROUP_FLEET/group_by = [\"team\"]\\ngroup_wait = \"30s\"\\ngroup_interval = \"1m\"}
GROUPED=${GROUPED//GROUP_PLATFORM/group_by = [\"branch\"]\\ngroup_wait = \"1m\"}
say "processor over them with routes, ungrouped"
run_processor ungrouped "$RUN.timed" "$UNGROUPED"
u_s=$P_SECONDS u_cpu=$P_CPU
u_out=$("$BIN/hookfold-dev" count --topic "$RUN.ungrouped.incidents")
say "processor over them with the same routes grouped"
run_processor grouped "$RUN.timed" "$GROUPED"
g_s=$P_SECONDS g_cpu=$P_CPU g_hwm=$P_HWM_KB
g_out=$("$BIN/hookfold-dev" count --topic "$RUN.grouped.incidents")
g_groups=$("$BIN/hookfold-dev" count --topic "$RUN.grouped.group.groups")

say "filling $RUN.distinct with $DISTINCT distinct keys"
"$BIN/hookfold-dev" topics "$RUN.distinct:$PARTITIONS" >/dev/null 2>&1
"$BIN/hookfold-dev" fill --topic "$RUN.distinct" --count "$DISTINCT" --shape distinct
d_input=$(topic_bytes "$RUN.distinct")
say "processor over the $DISTINCT distinct keys"
run_processor distinct "$RUN.distinct"
d_out=$("$BIN/hookfold-dev" count --topic "$RUN.distinct.incidents")

report=$(python3 - "$EVENTS" "$c_n" "$c_s" "$c_cpu" "$m_s" "$m_hwm" "$m_cpu" "$m_out" "$m_changelog" \
  "$DISTINCT" "$d_input" "$P_SECONDS" "$P_HWM_KB" "$P_RSS_KB" "$P_STATE_BYTES" "$P_CPU" "$d_out" \
  "$BROKER" "$BROKER_PID" "$LOAD_AT_START" "$PARTITIONS" "$WARMUP" \
  "$u_s" "$u_cpu" "$u_out" "$g_s" "$g_cpu" "$g_out" "$g_groups" "$g_hwm" <<'PY'
import sys, datetime, os
exec(os.environ["CPU_PY"])
a = sys.argv[1:]
events, c_n, c_s, c_cpu = int(a[0]), int(a[1]), float(a[2]), a[3]
m_s, m_hwm, m_cpu, m_out, m_changelog = float(a[4]), int(a[5]), a[6], int(a[7]), int(a[8])
distinct, d_input, d_s, d_hwm, d_rss, d_bytes, d_cpu, d_out = int(a[9]), int(a[10]), float(a[11]), int(a[12]), int(a[13]), int(a[14]), a[15], int(a[16])
broker, ours, load, partitions, warmup = a[17], bool(a[18]), a[19], a[20], a[21]
u_s, u_cpu, u_out, g_s, g_cpu, g_out, g_groups, g_hwm = float(a[22]), a[23], int(a[24]), float(a[25]), a[26], int(a[27]), int(a[28]), int(a[29])
u_rate, g_rate = events / u_s, events / g_s
c_rate, m_rate, d_rate = c_n / c_s, events / m_s, distinct / d_s
cpu = lambda line: split(line, ours)
mib = lambda b: f"{b / 2**20:,.0f} MiB"
input_row = (f"| baseline: the input records on the broker's disk (log segments) | {mib(d_input)} | 1.00 |"
             if d_input else "| baseline: the input records on the broker's disk | not measured (external broker) | |")
state_ratio = f"{d_bytes / d_input:.2f}" if d_input else ""
print(f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores, load average {load} at the start;
{broker}. {events:,} mixed webhook records (builds over 120 pipeline branches, stale builds,
repeated deliveries, agents) on {partitions} partitions, through the running processor with its default
batches (`batch.max_records = 5000`, `max_wait = 50ms`). Before the measured runs, the {warmup}
(copies of the first {min(events, 200000):,} records). Times include starting and joining the consumer group, for both.

| what | events/s | seconds | ratio to the ceiling |
|---|---:|---:|---:|
| ceiling: raw consume-and-produce copy (same producer and batch settings, no state) | {c_rate:,.0f} | {c_s:,.1f} | 1.00 |
| **processor** (parse, fold, RocksDB, incidents + changelog, flush, commit) | **{m_rate:,.0f}** | {m_s:,.1f} | **{m_rate/c_rate:.2f}** |

Processor / ceiling = **{m_rate/c_rate:.0%}** (target: at least 50%). It wrote {m_out:,} incident events and
{m_changelog:,} changelog records (states and batch markers) for those records; peak RSS {m_hwm/1024:,.0f} MiB.

CPU, in percent of one core ({os.cpu_count()} cores = {100 * os.cpu_count()}%): during the copy, {cpu(c_cpu)};
during the processor run, {cpu(m_cpu)}.

Grouped routes (the agents one group per team, `pipeline-1*` one group per branch) against
the same routes without `group_by`, over the same {events:,} mixed records received 1 ms apart;
the grouped run counts until its group stages have folded everything the input sent them:

| what | events/s | seconds | ratio to ungrouped |
|---|---:|---:|---:|
| baseline: routes, ungrouped ({u_out:,} incident events) | {u_rate:,.0f} | {u_s:,.1f} | 1.00 |
| **the same routes grouped** ({g_out:,} incident events; {g_groups:,} groups-topic records) | **{g_rate:,.0f}** | {g_s:,.1f} | **{g_rate/u_rate:.2f}** |

Grouped / ungrouped = **{g_rate/u_rate:.2f}** (target: at least 0.8); peak RSS grouped {g_hwm/1024:,.0f} MiB.
CPU: ungrouped, {cpu(u_cpu)}; grouped, {cpu(g_cpu)}.

State after the running processor folded {distinct:,} distinct keys (half new pipelines with a failed
build, half lost agents: every one holds state and an open incident; {d_out:,} incident events written),
at {d_rate:,.0f} events/s ({d_s:,.1f} s); CPU: {cpu(d_cpu)}.

| what | value | ratio |
|---|---:|---:|
{input_row}
| state on disk (RocksDB, LZ4, the state_dir after a clean stop) | {mib(d_bytes)} ({d_bytes/distinct:,.0f} bytes per key) | {state_ratio} |
| processor RSS at the end / peak (VmRSS / VmHWM) | {d_rss/1024:,.0f} / {d_hwm/1024:,.0f} MiB | |""")
PY
)
echo "$report"
write_benchmark processor "Processor (\`just bench-processor\`)" "$report"
say "written to docs/BENCHMARKS.md"
