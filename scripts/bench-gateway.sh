#!/usr/bin/env bash
# `just bench-gateway`: authenticated webhooks per second and latency through the gateway
# into the broker, against two ceilings measured in the same run:
#   - HTTP ceiling: a bare axum handler answering 202 (bench/src/bin/http-baseline.rs),
#     driven by the same wrk load;
#   - broker ceiling: a raw rdkafka producer with the gateway's settings and the same
#     number of records in flight (bench/src/bin/produce-baseline.rs).
# Writes the figures into docs/BENCHMARKS.md between the gateway markers.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${HOOKFOLD_TOOLS:-$HOME/.cache/hookfold/tools}"
BIN="${CARGO_TARGET_DIR:-target}/release"
SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
say() { printf '\033[1mbench-gateway:\033[0m %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  KAFKA="$KAFKA_BOOTSTRAP_SERVERS"; BROKER="Kafka at $KAFKA"
else
  port=$(free_port); KAFKA="127.0.0.1:$port"; BROKER="tansu 0.6.0, SQLite storage"
  # Not memory://: tansu 0.6.0's memory engine keeps only the first record of a batch.
  # tansu reads the URL's path as relative, hence the cd.
  (cd "$WORK" && RUST_LOG=warn exec "$TOOLS/bin/tansu" broker --storage-engine sqlite://tansu.db \
    --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" >"$WORK/tansu.log" 2>&1) &
  PIDS+=($!)
fi
export KAFKA_BOOTSTRAP_SERVERS="$KAFKA"
"$BIN/hookfold-dev" wait-broker --timeout-secs 60
TOPIC="bench.webhooks.$(date +%s)"
"$BIN/hookfold-dev" topics "$TOPIC:4"

"$BIN/hookfold-dev" build-body --out "$WORK/body.json"
SECRET="bench-secret"
GW_PORT=$(free_port); BASE_PORT=$(free_port)
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
RUST_LOG=warn "$BIN/hookfold-gateway" --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=($GW_PID)
"$BIN/http-baseline" --listen "127.0.0.1:$BASE_PORT" >"$WORK/baseline.log" 2>&1 &
PIDS+=($!)
for url in "http://127.0.0.1:$GW_PORT/readyz" "http://127.0.0.1:$BASE_PORT/"; do
  for _ in $(seq 1 300); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
done

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Buildkite-Event"] = "build.finished"
wrk.headers["X-Buildkite-Signature"] = os.getenv("SIGNATURE")
done = function(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %.3f %.3f %.3f %d\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, bad))
end
LUA

run_wrk() { # url -> RESULT line
  # The signature is made now and stays valid for the signature window (300 s).
  SIGNATURE=$("$BIN/hookfold-dev" sign --secret "$SECRET" --body "$WORK/body.json") BODY_FILE="$WORK/body.json" \
    wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/post.lua" "$1" | grep '^RESULT'
}

say "warm-up"
BENCH_SECONDS=3 run_wrk "http://127.0.0.1:$GW_PORT/webhooks/bench" >/dev/null
say "HTTP ceiling: bare axum 202, ${SECONDS_PER_RUN}s, $CONNECTIONS connections"
read -r _ b_n b_s b_p50 b_p99 b_err < <(run_wrk "http://127.0.0.1:$BASE_PORT/webhooks/bench")
say "gateway: signed build.finished into $BROKER"
read -r _ g_n g_s g_p50 g_p99 g_err < <(run_wrk "http://127.0.0.1:$GW_PORT/webhooks/bench")
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
say "broker ceiling: raw producer, $CONNECTIONS in flight"
read -r _ p_n p_s p_p50 p_p99 p_err < <("$BIN/produce-baseline" --bootstrap "$KAFKA" --topic "$TOPIC" \
  --payload "$WORK/body.json" --concurrency "$CONNECTIONS" --seconds "$SECONDS_PER_RUN")

report=$(python3 - "$b_n" "$b_s" "$b_p50" "$b_p99" "$b_err" "$g_n" "$g_s" "$g_p50" "$g_p99" "$g_err" \
  "$p_n" "$p_s" "$p_p50" "$p_p99" "$p_err" "$RSS_KB" "$BROKER" "$CONNECTIONS" "$SECONDS_PER_RUN" "$(stat -c %s "$WORK/body.json")" <<'PY'
import sys, datetime, os
a = sys.argv[1:]
b_n, b_s, b_p50, b_p99, b_err = int(a[0]), float(a[1]), float(a[2]), float(a[3]), int(a[4])
g_n, g_s, g_p50, g_p99, g_err = int(a[5]), float(a[6]), float(a[7]), float(a[8]), int(a[9])
p_n, p_s, p_p50, p_p99, p_err = int(a[10]), float(a[11]), float(a[12]), float(a[13]), int(a[14])
rss_kb, broker, conns, secs, body = int(a[15]), a[16], a[17], a[18], a[19]
b_rate, g_rate, p_rate = b_n / b_s, g_n / g_s, p_n / p_s
ceiling = min(b_rate, p_rate)
which = "HTTP" if b_rate <= p_rate else "broker"
ratio = g_rate / ceiling
print(f"""Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on {os.cpu_count()} cores; {broker}; wrk -t2 -c{conns} -d{secs}s;
a {body}-byte signed `build.finished` body (HMAC-SHA256 verified on every request).

| what | requests/s | p50 ms | p99 ms | errors | ratio to the lower ceiling |
|---|---:|---:|---:|---:|---:|
| HTTP ceiling: bare axum 202 | {b_rate:,.0f} | {b_p50:.2f} | {b_p99:.2f} | {b_err} | {b_rate/ceiling:.2f} |
| broker ceiling: raw producer, {conns} in flight | {p_rate:,.0f} | {p_p50:.2f} | {p_p99:.2f} | {p_err} | {p_rate/ceiling:.2f} |
| **gateway** (auth + parse + produce, 202 after ack) | **{g_rate:,.0f}** | {g_p50:.2f} | {g_p99:.2f} | {g_err} | **{ratio:.2f}** |

The lower ceiling is the {which} one. Gateway / lower ceiling = **{ratio:.0%}** (target: at least 60%).
Gateway peak RSS (VmHWM) after the run: {rss_kb/1024:.1f} MiB.""")
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
