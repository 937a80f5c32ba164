#!/usr/bin/env bash
# `just bench-gateway`: authenticated webhooks per second and latency through the gateway
# into the broker, against two ceilings measured in the same run:
#   - HTTP ceiling: a bare axum handler answering 202 (bench/src/bin/http-baseline.rs),
#     driven by the same wrk load;
#   - broker ceiling: a raw rdkafka producer with the gateway's settings (read from the
#     gateway's own config) sending the very records the gateway writes for this load
#     (same bodies, keys and CloudEvents headers), with the same number of records in
#     flight (bench/src/bin/produce-baseline.rs).
# The load: signed build.finished bodies for BENCH_PIPELINES pipelines (default 100), posted
# in turn, so that the routing keys spread over the partitions as real traffic's do.
# Writes the figures into docs/BENCHMARKS.md between the gateway markers.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${HOOKFOLD_TOOLS:-$HOME/.cache/hookfold/tools}"
BIN="${CARGO_TARGET_DIR:-target}/release"
SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
PIPELINES="${BENCH_PIPELINES:-100}"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
say() { printf '\033[1mbench-gateway:\033[0m %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SECRET="bench-secret"
BODIES="$WORK/bodies"
BROKER_PID="" # only when the broker is ours, for its CPU time
if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  EXTERNAL="$KAFKA_BOOTSTRAP_SERVERS"; BROKER="Kafka at $EXTERNAL"
else
  EXTERNAL=""; BROKER="tansu 0.6.0, SQLite storage"
fi

# Each broker phase (gateway, broker ceiling, reference) gets a fresh tansu with an empty
# database, so that none runs on records a previous phase wrote (tansu's SQLite storage
# slows down as it fills) and the order of the phases favours none. With an external
# Kafka, each phase gets a fresh topic instead. Sets KAFKA, TOPIC and the gateway config.
fresh_broker() { # phase name
  if [ -n "$EXTERNAL" ]; then
    KAFKA="$EXTERNAL"
  else
    local dir="$WORK/broker-$1" port
    mkdir -p "$dir"; port=$(free_port); KAFKA="127.0.0.1:$port"
    # Not memory://: tansu 0.6.0's memory engine keeps only the first record of a batch.
    # tansu reads the URL's path as relative, hence the cd.
    (cd "$dir" && RUST_LOG=warn exec "$TOOLS/bin/tansu" broker --storage-engine sqlite://tansu.db \
      --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" >"$dir/tansu.log" 2>&1) &
    BROKER_PID=$!; PIDS+=($BROKER_PID)
  fi
  "$BIN/hookfold-dev" --bootstrap "$KAFKA" wait-broker --timeout-secs 60
  TOPIC="bench.webhooks.$(date +%s).$1"
  "$BIN/hookfold-dev" --bootstrap "$KAFKA" topics "$TOPIC:4"
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
stop() { # pid: stop a process of ours, wait for it and forget it
  local p rest=()
  kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$1" ] || rest+=("$p"); done
  PIDS=(${rest[@]+"${rest[@]}"})
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

# CPU time (user + system, clock ticks) of a running process, and of a finished command.
ticks() { if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
HZ=$(getconf CLK_TCK)
measured() { # file command... : runs the command, writes its own CPU seconds to file
  python3 -c 'import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime:.2f}\n")
sys.exit(code)' "$@"
}
# Runs a load (wrk or the producer) and prints its RESULT line followed by
# "CPU <wall s> <load cpu s> <server cpu s> <broker cpu s>"; server = $SERVER_PID.
with_cpu() {
  local s0 b0 t0 t1 out
  s0=$(ticks "${SERVER_PID:-}"); b0=$(ticks "${BROKER_PID:-}"); t0=$(date +%s.%N)
  out=$(measured "$WORK/load.cpu" "$@" | grep '^RESULT')
  t1=$(date +%s.%N)
  echo "$out"
  echo "CPU $(python3 -c "print(f'{$t1 - $t0:.2f}')") $(cat "$WORK/load.cpu") \
$(python3 -c "print(f'{($(ticks "${SERVER_PID:-}") - $s0) / $HZ:.2f}')") \
$(python3 -c "print(f'{($(ticks "${BROKER_PID:-}") - $b0) / $HZ:.2f}')")"
}

run_wrk() { # url -> RESULT and CPU lines
  # Signed now: valid for the signature window (300 s), far longer than a run.
  "$BIN/webhook-bodies" --out "$BODIES" --pipelines "$PIPELINES" --secret "$SECRET"
  BODY_DIR="$BODIES" with_cpu wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/post.lua" "$1"
}
run_producer() { # extra args -> RESULT and CPU lines
  SERVER_PID="" with_cpu "$BIN/produce-baseline" --config "$WORK/gateway.toml" --source bench \
    --event build.finished --bodies "$BODIES" --concurrency "$CONNECTIONS" --seconds "$SECONDS_PER_RUN" "$@"
}

say "HTTP ceiling: bare axum 202, ${SECONDS_PER_RUN}s, $CONNECTIONS connections"
BASE_PORT=$(free_port)
"$BIN/http-baseline" --listen "127.0.0.1:$BASE_PORT" >"$WORK/baseline.log" 2>&1 &
BASE_PID=$!; PIDS+=($BASE_PID)
wait_url "http://127.0.0.1:$BASE_PORT/"
BENCH_SECONDS=3 run_wrk "http://127.0.0.1:$BASE_PORT/webhooks/bench" >/dev/null # warm-up
{ read -r _ b_n b_s b_p50 b_p99 b_err; read -r _ b_cpu; } < <(SERVER_PID=$BASE_PID run_wrk "http://127.0.0.1:$BASE_PORT/webhooks/bench")
stop "$BASE_PID"

say "gateway: signed build.finished for $PIPELINES pipelines into $BROKER"
fresh_broker gateway
RUST_LOG=warn "$BIN/hookfold-gateway" --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=($GW_PID)
wait_url "http://127.0.0.1:$GW_PORT/readyz"
BENCH_SECONDS=3 run_wrk "http://127.0.0.1:$GW_PORT/webhooks/bench" >/dev/null # warm-up
{ read -r _ g_n g_s g_p50 g_p99 g_err; read -r _ g_cpu; } < <(SERVER_PID=$GW_PID run_wrk "http://127.0.0.1:$GW_PORT/webhooks/bench")
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
stop "$GW_PID"; [ -n "$BROKER_PID" ] && stop "$BROKER_PID"

say "broker ceiling: the gateway's records from a raw producer, $CONNECTIONS in flight"
fresh_broker ceiling # the producer warms up for 3 s too
{ read -r _ p_n p_s p_p50 p_p99 p_err; read -r _ p_cpu; } < <(run_producer)
[ -n "$BROKER_PID" ] && stop "$BROKER_PID"

say "reference: the same records without their headers"
fresh_broker reference
{ read -r _ r_n r_s r_p50 r_p99 r_err; read -r _ r_cpu; } < <(run_producer --without-headers)
[ -n "$BROKER_PID" ] && stop "$BROKER_PID"

BODY_BYTES=$(cat "$BODIES"/body-*.json | wc -c)
report=$(python3 - "$b_n $b_s $b_p50 $b_p99 $b_err" "$g_n $g_s $g_p50 $g_p99 $g_err" \
  "$p_n $p_s $p_p50 $p_p99 $p_err" "$r_n $r_s $r_p50 $r_p99 $r_err" "$b_cpu" "$g_cpu" "$p_cpu" "$r_cpu" \
  "$RSS_KB" "$BROKER" "$CONNECTIONS" "$SECONDS_PER_RUN" "$PIPELINES" "$BODY_BYTES" "${BROKER_PID:+tansu}" <<'PY'
import sys, datetime, os
a = sys.argv[1:]
def run(text):
    n, s, p50, p99, err = text.split()
    return {"rate": int(n) / float(s), "p50": float(p50), "p99": float(p99), "err": int(err)}
def cpu(text):  # wall, load, server, broker seconds -> percent of one core
    wall, load, server, broker = map(float, text.split())
    return [100 * x / wall for x in (load, server, broker)]
b, g, p, r = (run(x) for x in a[0:4])
b_cpu, g_cpu, p_cpu, r_cpu = (cpu(x) for x in a[4:8])
rss_kb, broker, conns, secs, pipelines, body_bytes, ours = int(a[8]), a[9], a[10], a[11], int(a[12]), int(a[13]), a[14]
ceiling = min(b["rate"], p["rate"])
which = "HTTP" if b["rate"] <= p["rate"] else "broker"
ratio = g["rate"] / ceiling
def row(what, x, ratio_text):
    return f"| {what} | {x['rate']:,.0f} | {x['p50']:.2f} | {x['p99']:.2f} | {x['err']} | {ratio_text} |"
def split(c, load, server, broker=True):
    text = f"{load} {c[0]:.0f}%" + (f", {server} {c[1]:.0f}%" if server else "")
    return text + (f", tansu {c[2]:.0f}%" if ours and broker else "")
print(f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores; {broker}; wrk -t2 -c{conns} -d{secs}s;
signed `build.finished` bodies for {pipelines} pipelines (so {pipelines} routing keys over the topic's 4 partitions), posted
in turn, {body_bytes / pipelines:.0f} bytes on average, HMAC-SHA256 verified on every request. The broker ceiling
sends the very records the gateway writes for them (same bodies, keys and six `ce_*` headers) with
the gateway's producer settings (acks=all, idempotent, linger 2 ms). Each broker phase starts on a
fresh, empty broker and warms up for 3 s first.

| what | requests/s | p50 ms | p99 ms | errors | ratio to the lower ceiling |
|---|---:|---:|---:|---:|---:|
{row("HTTP ceiling: bare axum 202", b, f"{b['rate'] / ceiling:.2f}")}
{row(f"broker ceiling: raw producer, the gateway's records, {conns} in flight", p, f"{p['rate'] / ceiling:.2f}")}
| **gateway** (auth + parse + produce, 202 after ack) | **{g['rate']:,.0f}** | {g['p50']:.2f} | {g['p99']:.2f} | {g['err']} | **{ratio:.2f}** |
{row("reference only: raw producer, the same records without their headers", r, "–")}

The lower ceiling is the {which} one. Gateway / lower ceiling = **{ratio:.0%}** (target: at least 60%).
Gateway peak RSS (VmHWM) after the run: {rss_kb/1024:.1f} MiB.
CPU, in percent of one core, during the HTTP ceiling run: {split(b_cpu, "wrk", "axum", broker=False)}; the gateway
run: {split(g_cpu, "wrk", "gateway")}; the broker ceiling: {split(p_cpu, "producer", None)}; the
reference: {split(r_cpu, "producer", None)}.""")
PY
)
echo "$report"
python3 - "$report" <<'PY'
import sys, pathlib, re
path = pathlib.Path("docs/BENCHMARKS.md")
text = path.read_text() if path.exists() else "# Benchmarks\n"
start, end = "<!-- bench-gateway:start -->", "<!-- bench-gateway:end -->"
block = f"{start}\n{sys.argv[1]}\n{end}"
if start in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text += f"\n## Gateway (`just bench-gateway`)\n\n{block}\n"
path.write_text(text)
PY
say "written to docs/BENCHMARKS.md"
