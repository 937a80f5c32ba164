# Shared by the bench scripts (sourced): a work dir cleaned on exit, and a broker: the
# Kafka named by KAFKA_BOOTSTRAP_SERVERS, or a tansu of our own with SQLite storage.
TOOLS="${HOOKFOLD_TOOLS:-$HOME/.cache/hookfold/tools}"
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sets KAFKA (bootstrap servers) and BROKER (a description for the report). With the
# argument `memory`, tansu keeps records in memory: its memory engine keeps only the first
# record of a batch, so every producer must then send one record per batch
# (batch.num.messages=1), but it serves reads from far behind the end, which SQLite does not.
start_bench_broker() {
  local storage="sqlite://tansu.db" described="SQLite storage"
  if [ "${1:-}" = memory ]; then storage="memory://tansu/"; described="memory storage, one record per batch"; fi
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    KAFKA="$KAFKA_BOOTSTRAP_SERVERS"; BROKER="Kafka at $KAFKA"
  else
    local port; port=$(free_port); KAFKA="127.0.0.1:$port"; BROKER="tansu 0.6.0, $described"
    # tansu reads the URL's path as relative, hence the cd.
    (cd "$WORK" && RUST_LOG=warn exec "$TOOLS/bin/tansu" broker --storage-engine "$storage" \
      --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" >"$WORK/tansu.log" 2>&1) &
    PIDS+=($!)
  fi
  export KAFKA_BOOTSTRAP_SERVERS="$KAFKA"
  "$BIN/hookfold-dev" wait-broker --timeout-secs 60
}

# write_benchmark NAME TITLE REPORT: replaces the block between the NAME markers in
# docs/BENCHMARKS.md (appends a section TITLE the first time).
write_benchmark() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, pathlib, re
name, title, report = sys.argv[1:]
path = pathlib.Path("docs/BENCHMARKS.md")
text = path.read_text()
start, end = f"<!-- bench-{name}:start -->", f"<!-- bench-{name}:end -->"
block = f"{start}\n{report}\n{end}"
if start in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text += f"\n## {title}\n\n{block}\n"
path.write_text(text)
PY
}
