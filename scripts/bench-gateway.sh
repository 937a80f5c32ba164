#!/usr/bin/env bash
# `just bench-gateway`: authenticated webhooks per second and latency through the gateway
# into Apache Kafka, against two ceilings measured in the same run:
#   - HTTP ceiling: a bare axum handler answering 202 (bench/src/bin/http-baseline.rs),
#     driven by the same wrk load;
#   - broker ceiling: a raw rdkafka producer with the gateway's settings (read from the
#     gateway's own config) sending the very records the gateway writes for this load
#     (same bodies, keys and CloudEvents headers), with the same number of records in
#     flight (bench/src/bin/produce-baseline.rs).
# The load: signed build.finished bodies for BENCH_PIPELINES pipelines (default 100), posted
# in turn, so that the routing keys spread over the partitions as real traffic's do.
# One broker for every phase (a fresh Apache Kafka of our own, or KAFKA_BOOTSTRAP_SERVERS);
# the gateway and the ceiling write to topics of their own. The three phases run in
# BENCH_ROUNDS rounds (default 3) of BENCH_SECONDS each (default 10), their order rotating.
# The CPU of the broker, the server under test and the load tool is measured in every run.
# Writes the figures into docs/BENCHMARKS.md between the gateway markers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
PIPELINES="${BENCH_PIPELINES:-100}"
PARTITIONS=4
say() { printf '\033[1mbench-gateway:\033[0m %s\n' "$*" >&2; }

SECRET="bench-secret"
BODIES="$WORK/bodies"
LOAD_AT_START=$(loadavg)
say "load average at the start: $LOAD_AT_START"
start_bench_broker

# A topic of its own for a phase, and the gateway config that writes to it. Sets TOPIC
# and GW_PORT.
new_topic() { # phase name
  TOPIC="bench.webhooks.$(date +%s).$1"
  "$BIN/hookfold-dev" topics "$TOPIC:$PARTITIONS" >&2
  GW_PORT=$(free_port)
  cat >"$WORK/gateway.toml" <<TOML
listen = "127.0.0.1:$GW_PORT"
[kafka]
bootstrap_servers = "$KAFKA"
topic = "$TOPIC"
[[sources]]
id = "bench"
kind = "buildkite"
secrets = ["$SECRET"]
TOML
}
wait_url() { for _ in $(seq 1 300); do curl -s -o /dev/null "$1" && return; sleep 0.1; done; }

cat >"$WORK/post.lua" <<'LUA'
-- Each thread posts the signed bodies listed in requests.tsv in turn.
local dir = os.getenv("BODY_DIR")
local prepared, count, turn = {}, 0, 0
init = function(args)
  for line in io.lines(dir .. "/requests.tsv") do
    local name, signature = line:match("^([^\t]+)\t(.+)$")
    local f = io.open(dir .. "/" .. name, "rb"); local body = f:read("*a"); f:close()
    count = count + 1
    prepared[count] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["X-Buildkite-Event"] = "build.finished",
      ["X-Buildkite-Signature"] = signature,
    }, body)
  end
end
request = function()
  turn = turn % count + 1
  return prepared[turn]
end
done = function(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %.3f %.3f %.3f %d\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, bad))
end
LUA

# Runs a load (wrk or the producer) and prints its RESULT line, then a cpu_end line with
# the load's and the server's ($SERVER_PID, with SERVER_NAME) CPU seconds.
with_cpu() { # load name, command...
  local name=$1 s0 s1 out; shift
  s0=$(ticks "${SERVER_PID:-}"); cpu_start
  out=$(measured "$WORK/load.cpu" "$@" | grep '^RESULT')
  s1=$(ticks "${SERVER_PID:-}")
  echo "$out"
  if [ -n "${SERVER_PID:-}" ]; then
    cpu_end "$SERVER_NAME=$(ticks_to_s $((s1 - s0)))" "$name=$(cat "$WORK/load.cpu")"
  else
    cpu_end "$name=$(cat "$WORK/load.cpu")"
  fi
}
run_wrk() { # url -> RESULT and CPU lines
  # Signed now: valid for the signature window (300 s), far longer than a run.
  "$BIN/webhook-bodies" --out "$BODIES" --pipelines "$PIPELINES" --secret "$SECRET"
  BODY_DIR="$BODIES" with_cpu wrk wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/post.lua" "$1"
}
run_producer() { # extra args -> RESULT and CPU lines
  SERVER_PID="" with_cpu producer "$BIN/produce-baseline" --config "$WORK/gateway.toml" --source bench \
    --event build.finished --bodies "$BODIES" --concurrency "$CONNECTIONS" --seconds "$SECONDS_PER_RUN" "$@"
}

# The phases run in ROUNDS rounds, their order rotating from round to round, so that a
# change in the machine's other load (it is shared) falls on every phase alike; each ratio
# is taken within its round, and the report gives their median.
RESULTS="$WORK/results"; : >"$RESULTS"
record() { # phase round: reads a RESULT line and a cpu_end line from stdin, appends them
  local line cpu
  read -r line; read -r cpu
  echo "$1 $2 ${line#RESULT } | $cpu" >>"$RESULTS"
}

BASE_PORT=$(free_port)
"$BIN/http-baseline" --listen "127.0.0.1:$BASE_PORT" >"$WORK/baseline.log" 2>&1 &
BASE_PID=$!; PIDS+=($BASE_PID)
wait_url "http://127.0.0.1:$BASE_PORT/"
BENCH_SECONDS=3 run_wrk "http://127.0.0.1:$BASE_PORT/webhooks/bench" >/dev/null # warm-up

new_topic warmup
warm_broker "$BIN/produce-baseline" --config "$WORK/gateway.toml" --source bench --event build.finished \
  --bodies "$BODIES" --concurrency "$CONNECTIONS" --seconds 10 --warmup-seconds 0

new_topic gateway; GW_TOPIC=$TOPIC; cp "$WORK/gateway.toml" "$WORK/gateway-gw.toml"
RUST_LOG=warn "$BIN/hookfold-gateway" --config "$WORK/gateway-gw.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=($GW_PID)
wait_url "http://127.0.0.1:$GW_PORT/readyz"
GW_URL="http://127.0.0.1:$GW_PORT/webhooks/bench"
BENCH_SECONDS=3 run_wrk "$GW_URL" >/dev/null # warm-up
new_topic ceiling # the producer warms up for 3 s at each run

phase() { # name round
  case $1 in
    http) say "round $2: HTTP ceiling, bare axum 202, ${SECONDS_PER_RUN}s, $CONNECTIONS connections"
      SERVER_PID=$BASE_PID SERVER_NAME=axum run_wrk "http://127.0.0.1:$BASE_PORT/webhooks/bench" | record http "$2" ;;
    gateway) say "round $2: gateway, signed build.finished for $PIPELINES pipelines into $GW_TOPIC"
      SERVER_PID=$GW_PID SERVER_NAME=gateway run_wrk "$GW_URL" | record gateway "$2" ;;
    ceiling) say "round $2: broker ceiling, the gateway's records from a raw producer, $CONNECTIONS in flight"
      run_producer | record ceiling "$2" ;;
  esac
}
ORDER=(http ceiling gateway)
for round in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2; do phase "${ORDER[$(( (i + round - 1) % 3 ))]}" "$round"; done
done
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
stop "$GW_PID"; stop "$BASE_PID"
g_written=$("$BIN/hookfold-dev" count --topic "$GW_TOPIC")

say "reference: the same records without their headers"
new_topic reference
run_producer --without-headers | record reference 1

BODY_BYTES=$(cat "$BODIES"/body-*.json | wc -c)
report=$(python3 - "$RESULTS" "$RSS_KB" "$BROKER" "$CONNECTIONS" "$SECONDS_PER_RUN" "$PIPELINES" "$BODY_BYTES" \
  "${BROKER_PID}" "$LOAD_AT_START" "$g_written" "$PARTITIONS" "$ROUNDS" "$WARMUP" <<'PY'
import sys, datetime, os, statistics
exec(os.environ["CPU_PY"])
a = sys.argv[1:]
rss_kb, broker, conns, secs, pipelines, body_bytes, ours = int(a[1]), a[2], a[3], a[4], int(a[5]), int(a[6]), bool(a[7])
load, written, partitions, rounds, warmup = a[8], int(a[9]), a[10], int(a[11]), a[12]
runs = {}  # phase -> [run]
for line in open(a[0]):
    result, cpu_line = line.split(" | ")
    phase, rnd, n, s, p50, p99, err = result.split()
    runs.setdefault(phase, []).append({"round": int(rnd), "rate": int(n) / float(s), "p50": float(p50),
        "p99": float(p99), "err": int(err), "cpu": cpu_line.split()})
med = statistics.median
def summary(phase):
    rs = runs[phase]
    return {k: med([r[k] for r in rs]) for k in ("rate", "p50", "p99")} | {"err": sum(r["err"] for r in rs)}
def cpu_total(phase):
    # Every run of the phase summed into one cpu_end-shaped line: wall, machine, broker, labels.
    lines = [r["cpu"] for r in runs[phase]]
    wall, machine, brk, jit = (sum(float(l[i]) for l in lines) for i in range(4))
    labels = {}
    for l in lines:
        for part in l[4:]:
            name, value = part.split("=")
            labels[name] = labels.get(name, 0) + float(value)
    return " ".join([f"{wall}", f"{machine}", f"{brk}", f"{jit}"] + [f"{k}={v}" for k, v in labels.items()])
b, p, g, r = (summary(x) for x in ("http", "ceiling", "gateway", "reference"))
by_round = {}
for phase in ("http", "ceiling", "gateway"):
    for x in runs[phase]:
        by_round.setdefault(x["round"], {})[phase] = x["rate"]
rounds_sorted = sorted(by_round.items())
ratios = [v["gateway"] / min(v["http"], v["ceiling"]) for _, v in rounds_sorted]
ratio = med(ratios)
lower = sorted({"HTTP" if v["http"] <= v["ceiling"] else "broker" for _, v in rounds_sorted})
ceiling = min(b["rate"], p["rate"])
def row(what, x, ratio_text):
    return f"| {what} | {x['rate']:,.0f} | {x['p50']:.2f} | {x['p99']:.2f} | {x['err']} | {ratio_text} |"
cpu = lambda phase: split(cpu_total(phase), ours)
rounds_text = "; ".join(f"round {k}: gateway {v['gateway']:,.0f}, HTTP {v['http']:,.0f}, broker {v['ceiling']:,.0f} req/s, ratio {ratios[i]:.2f}"
                        for i, (k, v) in enumerate(rounds_sorted))
print(f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores, load average {load} at the start;
{broker}; wrk -t2 -c{conns}, {secs} s per run; signed `build.finished` bodies for {pipelines} pipelines (so {pipelines}
routing keys over the topic's {partitions} partitions), posted in turn, {body_bytes / pipelines:.0f} bytes on average, HMAC-SHA256
verified on every request. The broker ceiling sends the very records the gateway writes for them
(same bodies, keys and six `ce_*` headers) with the gateway's producer settings (acks=all,
idempotent, linger 2 ms). Before the first measured run, the {warmup}
(a raw producer sending the same records). Then {rounds} rounds of the three phases, their order
rotating; the table gives each phase's median over the rounds, and the ratio is the median of the
rounds' ratios.

| what | requests/s | p50 ms | p99 ms | errors | ratio to the lower ceiling |
|---|---:|---:|---:|---:|---:|
{row("HTTP ceiling: bare axum 202", b, f"{b['rate'] / ceiling:.2f}")}
{row(f"broker ceiling: raw producer, the gateway's records, {conns} in flight", p, f"{p['rate'] / ceiling:.2f}")}
| **gateway** (auth + parse + produce, 202 after ack) | **{g['rate']:,.0f}** | {g['p50']:.2f} | {g['p99']:.2f} | {g['err']} | **{ratio:.2f}** |
{row("reference only: raw producer, the same records without their headers (one run)", r, "–")}

Per round: {rounds_text}. The lower ceiling: {" and ".join(lower)}.
Gateway / lower ceiling = **{ratio:.0%}** (median of the rounds; target: at least 70%).
The gateway's topic holds {written:,} records after its runs (warm-ups included: every 202 is a record).
Gateway peak RSS (VmHWM) over all its runs: {rss_kb/1024:.1f} MiB.

CPU, in percent of one core ({os.cpu_count()} cores = {100 * os.cpu_count()}%), over each phase's runs:
- HTTP ceiling: {cpu("http")};
- gateway: {cpu("gateway")};
- broker ceiling: {cpu("ceiling")};
- reference: {cpu("reference")}.""")
PY
)
echo "$report"
write_benchmark gateway "Gateway (\`just bench-gateway\`)" "$report"
say "written to docs/BENCHMARKS.md"
