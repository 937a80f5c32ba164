#!/usr/bin/env bash
# `just bench-eos`: hookfold under both processing guarantees beside Kafka Streams under
# both (bench/kstreams: the build rules with a persistent RocksDB store and its changelog,
# one stream thread, commit interval = hookfold's batch.max_wait), and beside a raw
# consume-and-produce copy, on one broker in one run.
# 1. Throughput: each over the same BENCH_EVENTS mixed webhook records (default
#    1,000,000) pre-filled on 4 partitions, from its start until it has committed them all
#    (hookfold: its committed-offset gauges; Kafka Streams: its group's committed offsets;
#    the copy: its own count); peak RSS and the CPU split of the run.
# 2. Latency: each on a fresh topic fed BENCH_RATE records/s (default 1,000) for
#    BENCH_LATENCY_SECONDS (default 30), read by a read_committed consumer
#    (bench/src/bin/eos-latency.rs): webhook-topic append to incident-topic arrival, p50/p99.
# Writes the table into docs/BENCHMARKS.md between the eos markers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
EVENTS="${BENCH_EVENTS:-1000000}"
RATE="${BENCH_RATE:-1000}"
LATENCY_SECONDS="${BENCH_LATENCY_SECONDS:-30}"
PARTITIONS=4
say() { printf '\033[1mbench-eos:\033[0m %s\n' "$*" >&2; }
LOAD_AT_START=$(loadavg)
say "load average at the start: $LOAD_AT_START"

say "building the Kafka Streams baseline (mvn package, bench/kstreams)"
mvn -q -f bench/kstreams/pom.xml -DskipTests package >&2
JAR=$(ls bench/kstreams/target/hookfold-kstreams-baseline-*.jar | grep -v original | head -1)

start_bench_broker
RUN="eos.$(date +%s)"
EOS_TOML='[processing]\nguarantee = "exactly_once"'

# run_kstreams NAME GUARANTEE INPUT: the Kafka Streams baseline over INPUT until its group
# has committed every record there. Sets K_SECONDS, K_HWM_KB, K_CPU, K_LOG.
run_kstreams() {
  local name=$1 guarantee=$2 input=$3 start end pid
  "$BIN/hookfold-dev" topics "$RUN.$name.out:$PARTITIONS" >/dev/null 2>&1
  K_LOG="$WORK/$name.log"
  cpu_start
  start=$(date +%s.%N)
  java -Xmx512m -jar "$JAR" --bootstrap="$KAFKA" --input="$input" --output="$RUN.$name.out" \
    --application-id="$RUN.$name" --guarantee="$guarantee" --commit-ms=50 \
    --state-dir="$WORK/$name-state" >"$K_LOG" 2>&1 &
  pid=$!; PIDS+=($pid)
  "$BIN/hookfold-dev" wait-group --group "$RUN.$name" --topic "$input" --timeout-secs 1800 >&2 ||
    { tail -50 "$K_LOG" >&2; exit 1; }
  end=$(date +%s.%N)
  K_CPU=$(cpu_end "kafka-streams=$(ticks_to_s "$(ticks "$pid")")")
  K_HWM_KB=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  stop "$pid"
  K_SECONDS=$(python3 -c "print(f'{$end - $start:.3f}')")
}

# wait_for_line FILE TEXT PID: until FILE holds TEXT (the process PID must stay alive).
wait_for_line() {
  local i
  for i in $(seq 1 1200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { tail -30 "$1" >&2; say "process $3 exited"; exit 1; }
    sleep 0.05
  done
  tail -30 "$1" >&2; say "no '$2' in $1 within 60 s"; exit 1
}

# latency NAME KIND COMMAND...: starts COMMAND (reading $RUN.lat.NAME.in, writing
# $RUN.lat.NAME.out), waits for its READY line (set READY before), then feeds it at RATE
# records/s and prints eos-latency's RESULT line.
latency() {
  local name=$1 kind=$2 pid log="$WORK/lat.$name.log"
  shift 2
  "$@" >"$log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_for_line "$log" "$READY" "$pid"
  "$BIN/eos-latency" --bootstrap "$KAFKA" --input "$RUN.lat.$name.in" --output "$RUN.lat.$name.out" \
    --kind "$kind" --rate "$RATE" --seconds "$LATENCY_SECONDS" | sed -n 's/^RESULT //p'
  stop "$pid"
}

say "filling $RUN.mixed with $EVENTS mixed events"
"$BIN/hookfold-dev" topics "$RUN.mixed:$PARTITIONS" "$RUN.copy:$PARTITIONS" "$RUN.warmup:$PARTITIONS" >/dev/null 2>&1
"$BIN/hookfold-dev" fill --topic "$RUN.mixed" --count "$EVENTS" --shape mixed
cat >"$WORK/copy.toml" <<TOML
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$RUN.mixed"
TOML
WARM_COUNT=$((EVENTS < 200000 ? EVENTS : 200000))
warm_broker "$BIN/copy-baseline" --config "$WORK/copy.toml" --output "$RUN.warmup" --count "$WARM_COUNT"
# The copy warms the produce and fetch paths only; transactions run other broker code (the
# coordinator, markers), compiled by the JIT the first time under load: one unmeasured
# exactly_once run over the warm-up records first.
say "warming the broker's transactional paths (hookfold exactly_once over the $WARM_COUNT warm-up records)"
run_processor warm-eos "$RUN.warmup" "$EOS_TOML"
WARMUP="$WARMUP, then ran hookfold exactly_once over those $WARM_COUNT records (its transactional paths)"

say "throughput: raw consume-and-produce copy of $EVENTS records"
cpu_start
python3 -c 'import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime:.2f} {u.ru_maxrss}\n")
sys.exit(code)' "$WORK/copy.usage" "$BIN/copy-baseline" --config "$WORK/copy.toml" --output "$RUN.copy" --count "$EVENTS" >"$WORK/copy.out" 2>/dev/null
read -r _ c_n c_s <"$WORK/copy.out"
read -r c_cpu_s c_hwm <"$WORK/copy.usage"
c_cpu=$(cpu_end "copy=$c_cpu_s")

say "throughput: hookfold effectively_once"
run_processor eo "$RUN.mixed"
eo_s=$P_SECONDS eo_hwm=$P_HWM_KB eo_cpu=$P_CPU
say "throughput: hookfold exactly_once"
run_processor eos "$RUN.mixed" "$EOS_TOML"
eos_s=$P_SECONDS eos_hwm=$P_HWM_KB eos_cpu=$P_CPU
eo_out=$("$BIN/hookfold-dev" count --read --topic "$RUN.eo.incidents")
eos_out=$("$BIN/hookfold-dev" count --read --topic "$RUN.eos.incidents")
say "throughput: Kafka Streams at_least_once"
run_kstreams ks-alos at_least_once "$RUN.mixed"
ka_s=$K_SECONDS ka_hwm=$K_HWM_KB ka_cpu=$K_CPU
say "throughput: Kafka Streams exactly_once_v2"
run_kstreams ks-eos exactly_once_v2 "$RUN.mixed"
ke_s=$K_SECONDS ke_hwm=$K_HWM_KB ke_cpu=$K_CPU

say "latency at $RATE records/s for $LATENCY_SECONDS s each"
for name in copy eo eos ks-alos ks-eos; do
  "$BIN/hookfold-dev" topics "$RUN.lat.$name.in:$PARTITIONS" "$RUN.lat.$name.out:$PARTITIONS" \
    "$RUN.lat.$name.out.open:$PARTITIONS:compact" "$RUN.lat.$name.group.state:$PARTITIONS:compact" >/dev/null 2>&1
done
lat_processor_config() { # NAME [TOML]: a processor config for the latency run of NAME
  local port
  port=$(free_port)
  cat >"$WORK/lat.$1.toml" <<TOML
state_dir = "$WORK/lat.$1-state"
metrics_listen = "127.0.0.1:$port"
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$RUN.lat.$1.in"
output_topic = "$RUN.lat.$1.out"
group_id = "$RUN.lat.$1.group"
[rules.agents]
grace = "0s"
TOML
  [ -z "${2:-}" ] || printf '%b\n' "$2" >>"$WORK/lat.$1.toml"
}
cat >"$WORK/lat.copy.toml" <<TOML
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$RUN.lat.copy.in"
TOML
READY="copy-baseline: assigned"
l_copy=$(latency copy timestamp "$BIN/copy-baseline" --config "$WORK/lat.copy.toml" --output "$RUN.lat.copy.out" --count $((RATE * LATENCY_SECONDS)))
READY="partition assigned"
lat_processor_config eo
l_eo=$(latency eo hookfold env RUST_LOG=info "$BIN/hookfold-processor" --config "$WORK/lat.eo.toml")
lat_processor_config eos "$EOS_TOML"
l_eos=$(latency eos hookfold env RUST_LOG=info "$BIN/hookfold-processor" --config "$WORK/lat.eos.toml")
READY="state RUNNING"
l_ka=$(latency ks-alos timestamp java -Xmx512m -jar "$JAR" --bootstrap="$KAFKA" --input="$RUN.lat.ks-alos.in" \
  --output="$RUN.lat.ks-alos.out" --application-id="$RUN.lat.ks-alos" --guarantee=at_least_once --commit-ms=50 \
  --state-dir="$WORK/lat.ks-alos-state")
l_ke=$(latency ks-eos timestamp java -Xmx512m -jar "$JAR" --bootstrap="$KAFKA" --input="$RUN.lat.ks-eos.in" \
  --output="$RUN.lat.ks-eos.out" --application-id="$RUN.lat.ks-eos" --guarantee=exactly_once_v2 --commit-ms=50 \
  --state-dir="$WORK/lat.ks-eos-state")

report=$(python3 - "$EVENTS" "$RATE" "$LATENCY_SECONDS" "$BROKER" "$BROKER_PID" "$LOAD_AT_START" "$PARTITIONS" "$WARMUP" \
  "$c_n" "$c_s" "$c_hwm" "$c_cpu" "$l_copy" \
  "$eo_s" "$eo_hwm" "$eo_cpu" "$l_eo" "$eo_out" \
  "$eos_s" "$eos_hwm" "$eos_cpu" "$l_eos" "$eos_out" \
  "$ka_s" "$ka_hwm" "$ka_cpu" "$l_ka" \
  "$ke_s" "$ke_hwm" "$ke_cpu" "$l_ke" <<'PY'
import sys, datetime, os
exec(os.environ["CPU_PY"])
a = sys.argv[1:]
events, rate, lat_s, broker, ours, load, partitions, warmup = int(a[0]), int(a[1]), int(a[2]), a[3], bool(a[4]), a[5], a[6], a[7]
def lat(text):
    n, p50, p99, worst, sent, secs = text.split()
    return int(n), int(p50), int(p99), int(worst)
rows = []
copy_rate = int(a[8]) / float(a[9])
rows.append(("raw consume-and-produce copy (ceiling; idempotent producer, the processor's batches)", copy_rate, int(a[10]), a[11], lat(a[12])))
rows.append(("hookfold `effectively_once` (default)", events / float(a[13]), int(a[14]), a[15], lat(a[16])))
rows.append(("hookfold `exactly_once`", events / float(a[18]), int(a[19]), a[20], lat(a[21])))
rows.append(("Kafka Streams `at_least_once` (build rules only)", events / float(a[23]), int(a[24]), a[25], lat(a[26])))
rows.append(("Kafka Streams `exactly_once_v2` (build rules only)", events / float(a[27]), int(a[28]), a[29], lat(a[30])))
eo_out, eos_out = int(a[17]), int(a[22])
table = ["| what | events/s | ratio to the ceiling | p50 / p99 latency at %s events/s (outputs) | peak RSS |" % f"{rate:,}",
         "|---|---:|---:|---:|---:|"]
for name, r, hwm, cpu, (n, p50, p99, worst) in rows:
    table.append(f"| {name} | {r:,.0f} | {r / copy_rate:.2f} | {p50} / **{p99} ms** ({n:,}) | {hwm / 1024:,.0f} MiB |")
eo, eos, ka, ke = rows[1][1], rows[2][1], rows[3][1], rows[4][1]
cpus = "\n".join(f"- {name.split(' (')[0]}: {split(cpu, ours)}" for name, _, _, cpu, _ in rows)
print(f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores, load average {load} at the start;
{broker}. Throughput: each over the same {events:,} mixed webhook records on {partitions} partitions, from its
start (JVM start and group join included) until it had committed them all; before the measured runs, the
{warmup}. Latency: each on a fresh topic fed {rate:,} records/s for {lat_s} s (hookfold with
`grace = "0s"`, so every incident event follows its own webhook), read by a `read_committed` consumer; from the
input record's append to the output's arrival, counted from the sixth second on (the first five are a warm-up:
the consumers may still be seeking).

{chr(10).join(table)}

- hookfold `exactly_once` / `effectively_once`: **{eos / eo:.2f}** (target at least 0.7).
- hookfold / Kafka Streams at the same guarantee: at least once **{eo / ka:.2f}**, exactly once **{eos / ke:.2f}** (target at least 1).
- Incident events written: {eo_out:,} under `effectively_once`, {eos_out:,} under `exactly_once` (the same run, the same ids).
- Batches: hookfold's defaults (`batch.max_records = 5000`, `max_wait = 50ms`); Kafka Streams commits every 50 ms.
- Kafka Streams implements the build rules only (it skips agents and pull requests); hookfold folds every record.

CPU during the throughput runs, in percent of one core ({os.cpu_count()} cores = {100 * os.cpu_count()}%):
{cpus}""")
PY
)
echo "$report"
write_benchmark eos "Exactly once beside Kafka Streams (\`just bench-eos\`)" "$report"
say "written to docs/BENCHMARKS.md"
