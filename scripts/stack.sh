#!/usr/bin/env bash
# The local stack behind `just broker`, `just up`, `just down` and `just status`.
# Processes run in the background; pids in .data/run, logs in .data/logs.
# The broker is Apache Kafka (KRaft, one node) on 127.0.0.1:9092 with its data in .data/kafka/,
# kept across down/up. With HOOKFOLD_EXTERNAL_KAFKA=1 and KAFKA_BOOTSTRAP_SERVERS set, no
# broker is started: that Kafka is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="$PWD/.data"
RUN="$DATA/run"
LOGS="$DATA/logs"
TOOLS="${HOOKFOLD_TOOLS:-$HOME/.cache/hookfold/tools}"
BROKER_PORT="${HOOKFOLD_BROKER_PORT:-9092}"
KAFKA="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$BROKER_PORT}"
PARTITIONS="${HOOKFOLD_PARTITIONS:-3}"
BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug"
mkdir -p "$RUN" "$LOGS"
export KAFKA_BOOTSTRAP_SERVERS="$KAFKA" HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS="$KAFKA"

say() { printf '\033[1m%s:\033[0m %s\n' "${0##*/}" "$*" >&2; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() { # name, command...
  local name=$1; shift
  if alive "$name"; then say "$name already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  nohup "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  say "$name started (pid $!, log .data/logs/$name.log)"
}

stop() { # name
  local name=$1
  if alive "$name"; then
    local pid; pid=$(cat "$RUN/$name.pid")
    kill -TERM "$pid"
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then say "$name did not stop on SIGTERM; killing"; kill -KILL "$pid"; fi
    say "$name stopped"
  fi
  rm -f "$RUN/$name.pid"
}

wait_http() { # name url
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$2" 2>/dev/null; then return 0; fi
    alive "$1" || { say "$1 exited; its log:"; tail -n 30 "$LOGS/$1.log" >&2; exit 1; }
    sleep 0.1
  done
  say "$1 did not answer $2 within 30 s; its log:"; tail -n 30 "$LOGS/$1.log" >&2
  exit 1
}

broker() {
  if [ -n "${HOOKFOLD_EXTERNAL_KAFKA:-}" ]; then
    say "using the Kafka at $KAFKA"
  else
    # The jars may still be downloading (`just up` fetches them while it compiles).
    scripts/install-tools.sh wait-kafka
    # Formats .data/kafka on first use, starts the JVM detached, waits until it answers.
    "$BIN/hookfold-dev" kafka start --data-dir "$DATA/kafka" --port "$BROKER_PORT"
  fi
  "$BIN/hookfold-dev" wait-broker --timeout-secs 60
  # The processor's own provisioning: webhook and incident topics, and the changelog
  # compacted and co-partitioned with the webhook topic (checked if they exist).
  "$BIN/hookfold-processor" --config deploy/local/processor.toml \
    topics --create --partitions "$PARTITIONS"
}

up() {
  broker
  start gateway "$BIN/hookfold-gateway" --config deploy/local/gateway.toml
  wait_http gateway http://127.0.0.1:8080/readyz
  start processor "$BIN/hookfold-processor" --config deploy/local/processor.toml
  wait_http processor http://127.0.0.1:9464/readyz
  start view "$BIN/hookfold-processor" --config deploy/local/processor.toml view --listen 127.0.0.1:8090
  wait_http view http://127.0.0.1:8090/readyz
  status
}

down() {
  stop gateway
  stop processor
  stop view
  [ -n "${HOOKFOLD_EXTERNAL_KAFKA:-}" ] || "$BIN/hookfold-dev" kafka stop --data-dir "$DATA/kafka"
}

status() {
  if [ -z "${HOOKFOLD_EXTERNAL_KAFKA:-}" ]; then
    echo "  kafka: $("$BIN/hookfold-dev" kafka status --data-dir "$DATA/kafka" || true) (log .data/kafka/node-1/kafka.log)"
  fi
  for name in gateway processor view; do
    if alive "$name"; then echo "  $name: running (pid $(cat "$RUN/$name.pid"))"; else echo "  $name: stopped"; fi
  done
  echo "  broker:   $KAFKA"
  echo "  gateway:   http://127.0.0.1:8080/webhooks/{demo-buildkite,demo-bitbucket}  (/healthz /readyz /metrics)"
  echo "  processor: http://127.0.0.1:9464/metrics; incidents: target/debug/hookfold-processor -c deploy/local/processor.toml tail --from-beginning"
  echo "  view:      http://127.0.0.1:8090/  (open incidents, live; /api/incidents /readyz /metrics)"
}

case "${1:-}" in
  broker) broker ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 broker|up|down|status" >&2; exit 2 ;;
esac
