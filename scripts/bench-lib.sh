# Shared by the bench scripts (sourced): a work dir cleaned on exit, a broker (the Kafka
# named by KAFKA_BOOTSTRAP_SERVERS, or an Apache Kafka of our own in the work dir), CPU
# accounting and the report writer.
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d)
PIDS=()
BROKER_DIR="" # set when the broker is ours: `hookfold-dev kafka stop` on exit
BROKER_PID="" # the broker's JVM, for its CPU time (empty for an external Kafka)
cleanup() {
  local p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$BROKER_DIR" ]; then
    "$BIN/hookfold-dev" kafka stop --data-dir "$BROKER_DIR" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop() { # pid: stop a process of ours, wait for it and forget it
  local p rest=()
  kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$1" ] || rest+=("$p"); done
  PIDS=(${rest[@]+"${rest[@]}"})
}
# The load average when a run starts: the machine is shared, so the report says how busy
# it already was.
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Sets KAFKA (bootstrap servers) and BROKER (a description for the report). Our own broker
# is a fresh single-node Apache Kafka (KRaft) with its data in the work dir, heap
# BENCH_KAFKA_HEAP (default 1g), stopped on exit.
start_bench_broker() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    KAFKA="$KAFKA_BOOTSTRAP_SERVERS"
    BROKER="an external Kafka at $KAFKA (not started here: its version, heap and CPU are not measured)"
  else
    local port heap="${BENCH_KAFKA_HEAP:-1g}" version java
    port=$(free_port); KAFKA="127.0.0.1:$port"
    BROKER_DIR="$WORK/kafka"
    "$BIN/hookfold-dev" kafka start --data-dir "$BROKER_DIR" --port "$port" --heap "$heap" >&2
    BROKER_PID=$(cat "$BROKER_DIR/node-1/kafka.pid")
    # The version the running broker reports about itself, not the one we asked for.
    version=$(sed -n 's/.*Kafka version: \([^ ]*\).*/\1/p' "$BROKER_DIR/node-1/kafka.log" | head -1)
    java=$(java -version 2>&1 | sed -n '1s/.*version "\([^"]*\)".*/\1/p')
    BROKER="Apache Kafka ${version:-?} (KRaft, one node, broker and controller in one JVM, heap $heap, Java $java)"
  fi
  export KAFKA_BOOTSTRAP_SERVERS="$KAFKA"
  "$BIN/hookfold-dev" wait-broker --timeout-secs 60 >&2
}

# CPU accounting, in clock ticks (user + system) as /proc reports them.
HZ=$(getconf CLK_TCK)
ticks() { # pid: the CPU time of a running process so far, all threads (0 once it is gone)
  if [ -n "${1:-}" ]; then ticks_of_stat "/proc/$1/stat"; else echo 0; fi
}
# The fields after the command name, which may hold spaces: utime and stime are 14 and 15.
ticks_of_stat() { if [ -r "$1" ]; then sed 's/^.*) //' "$1" | awk '{print $12 + $13}'; else echo 0; fi; }
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
jit_ticks() { # the CPU time of the broker JVM's JIT compiler threads so far
  [ -n "$BROKER_PID" ] || { echo 0; return; }
  local t s=0
  for t in /proc/"$BROKER_PID"/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in
      C1\ CompilerThre*|C2\ CompilerThre*) s=$((s + $(ticks_of_stat "$t/stat"))) ;;
    esac
  done
  echo "$s"
}
# cpu_start: marks the start of a measured window (clock, whole machine, broker, its JIT).
cpu_start() { CPU_T0=$(date +%s.%N); CPU_M0=$(machine_ticks); CPU_B0=$(ticks "$BROKER_PID"); CPU_J0=$(jit_ticks); }
# cpu_end LABEL=SECONDS...: prints one line "wall machine broker broker-jit LABEL=SECONDS..."
# (seconds of CPU), for the report's CPU split; the labels are our own processes.
cpu_end() {
  local t1 m1 b1 j1
  t1=$(date +%s.%N); m1=$(machine_ticks); b1=$(ticks "$BROKER_PID"); j1=$(jit_ticks)
  python3 -c "print(f'{$t1 - $CPU_T0:.2f} {($m1 - $CPU_M0) / $HZ:.2f} {($b1 - $CPU_B0) / $HZ:.2f} {($j1 - $CPU_J0) / $HZ:.2f}')" | tr -d '\n'
  printf ' %s' "$@"; echo
}

# A fresh JVM compiles the broker's hot paths while it serves: for the first tens of
# seconds under load its JIT compiler threads take up to a core of a 2-core machine, and a
# phase that ran then would pay for it. warm_broker COMMAND... runs an unmeasured load until
# the JIT has settled (under 5% of a core during a run; at most BENCH_WARMUP_RUNS runs,
# default 8), and sets WARMUP (what it did, for the report).
warm_broker() {
  if [ -z "$BROKER_PID" ]; then WARMUP="broker got one unmeasured run of that load (an external broker: its JIT is not watched)"; "$@" >/dev/null; return; fi
  local runs=0 max="${BENCH_WARMUP_RUNS:-8}" line jit wall total=0
  while :; do
    runs=$((runs + 1))
    cpu_start; "$@" >/dev/null; line=$(cpu_end)
    read -r wall _ _ jit <<<"$line"
    total=$(python3 -c "print($total + $wall)")
    if python3 -c "import sys; sys.exit(0 if $jit < 0.05 * $wall else 1)"; then
      WARMUP="broker warmed up for $(printf '%.0f' "$total") s ($runs runs) until its JIT compiler took under 5% of a core"; break
    fi
    if [ "$runs" -ge "$max" ]; then
      WARMUP="broker warmed up for $(printf '%.0f' "$total") s ($runs runs); its JIT compiler still took $(python3 -c "print(f'{100 * $jit / $wall:.0f}')")% of a core in the last"; break
    fi
  done
  say "$WARMUP"
}
ticks_to_s() { python3 -c "print(f'{$1 / $HZ:.2f}')"; }
# measured FILE COMMAND...: runs the command and writes its own CPU seconds to FILE.
measured() {
  python3 -c 'import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime:.2f}\n")
sys.exit(code)' "$@"
}

# The python helper the reports use: `split(line)` turns a cpu_end line into the text
# "broker 85% (of which JIT compiler 1%), processor 60%, everything else on the machine 12%"
# (percent of one core; the machine has `nproc` cores).
export CPU_PY='
def split(line, broker_known=True):
    parts = line.split()
    wall, machine, broker, jit = map(float, parts[:4])
    ours = [(p.split("=")[0], float(p.split("=")[1])) for p in parts[4:]]
    pct = lambda s: f"{100 * s / wall:.0f}%"
    text = ([f"broker {pct(broker)} (of which JIT compiler {pct(jit)})"] if broker_known else []) + [f"{name} {pct(s)}" for name, s in ours]
    others = machine - (broker if broker_known else 0) - sum(s for _, s in ours)
    label = "everything else on the machine" if broker_known else "everything else on the machine, including the broker if local"
    return ", ".join(text) + f", {label} {pct(max(others, 0))}"
'

# write_benchmark NAME TITLE REPORT: replaces the block between the NAME markers in
# docs/BENCHMARKS.md (appends a section TITLE the first time).
write_benchmark() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, pathlib, re
name, title, report = sys.argv[1:]
path = pathlib.Path("docs/BENCHMARKS.md")
text = path.read_text() if path.exists() else "# Benchmarks\n"
start, end = f"<!-- bench-{name}:start -->", f"<!-- bench-{name}:end -->"
block = f"{start}\n{report}\n{end}"
if start in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text += f"\n## {title}\n\n{block}\n"
path.write_text(text)
PY
}

# run_processor NAME INPUT [TOML]: a processor of its own (group, output, changelog,
# state_dir; TOML appended to its configuration) over INPUT until it has committed every
# record there (RUN and PARTITIONS are the calling script's). Sets P_SECONDS (from the start of
# the process), P_HWM_KB and P_RSS_KB (peak and current RSS at the end), P_STATE_BYTES
# (state_dir after a clean stop), P_CPU (a cpu_end line) and P_LOG.
run_processor() {
  local name=$1 input=$2 port start end pid
  port=$(free_port)
  "$BIN/hookfold-dev" topics "$RUN.$name.incidents:$PARTITIONS" "$RUN.$name.incidents.open:$PARTITIONS:compact" "$RUN.$name.group.state:$PARTITIONS:compact" "$RUN.$name.group.groups:$PARTITIONS" >/dev/null 2>&1
  cat >"$WORK/$name.toml" <<TOML
state_dir = "$WORK/$name-state"
metrics_listen = "127.0.0.1:$port"
[kafka]
bootstrap_servers = "$KAFKA"
input_topic = "$input"
output_topic = "$RUN.$name.incidents"
group_id = "$RUN.$name.group"
TOML
  [ -z "${3:-}" ] || printf '%b\n' "$3" >>"$WORK/$name.toml"
  P_LOG="$WORK/$name.log"
  cpu_start
  start=$(date +%s.%N)
  RUST_LOG=warn "$BIN/hookfold-processor" --config "$WORK/$name.toml" >"$P_LOG" 2>&1 &
  pid=$!; PIDS+=($pid)
  # With grouped routes, done once the group stages have folded what the input gave too.
  local groups=()
  case "${3:-}" in *group_by*) groups=(--groups-topic "$RUN.$name.group.groups") ;; esac
  "$BIN/hookfold-dev" wait-processed --topic "$input" --metrics "http://127.0.0.1:$port/metrics" --timeout-secs 1800 "${groups[@]}" >&2
  end=$(date +%s.%N)
  P_CPU=$(cpu_end "processor=$(ticks_to_s "$(ticks "$pid")")")
  P_HWM_KB=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  P_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || { cat "$P_LOG" >&2; say "processor $name did not stop cleanly"; exit 1; }
  stop "$pid"
  P_STATE_BYTES=$(du -sb "$WORK/$name-state" | cut -f1)
  P_SECONDS=$(python3 -c "print(f'{$end - $start:.3f}')")
}

