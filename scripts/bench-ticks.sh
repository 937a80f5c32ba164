#!/usr/bin/env bash
# `just bench-ticks`: what folding a tick costs next to folding a webhook, measured in the
# same run (bench/src/bin/fold-ticks.rs: the processor's own fold step, no broker), and
# what the partition's clock costs to write per batch. Writes the figures into
# docs/BENCHMARKS.md between the ticks markers. BENCH_WEBHOOKS sizes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
WEBHOOKS="${BENCH_WEBHOOKS:-200000}"
say() { printf '\033[1mbench-ticks:\033[0m %s\n' "$*" >&2; }
LOAD=$(loadavg)
say "load average at the start: $LOAD; folding $WEBHOOKS webhooks with and without a tick after each"
OUT="$WORK/fold-ticks.json"
CPU=$(python3 -c 'import resource, subprocess, sys, time
t0 = time.time()
code = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], "w")).returncode
wall = time.time() - t0
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.2f} {u.ru_utime:.2f} {u.ru_stime:.2f}")
sys.exit(code)' "$OUT" "$BIN/fold-ticks" --webhooks "$WEBHOOKS")
REPORT=$(python3 - "$OUT" "$CPU" "$LOAD" "$(nproc)" <<'PY'
import json, sys, datetime
r = json.load(open(sys.argv[1]))
wall, user, sys_s = map(float, sys.argv[2].split())
load, cores = sys.argv[3], sys.argv[4]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"""Run {now} on {cores} cores, load average {load} at the start. {r['webhooks']:,} webhooks (half
`build.finished` of 200 pipelines, half `agent.lost` of distinct agents, so {r['timers']:,} grace
periods wait in the timer index), folded through `hookfold_rules::fold` alone and with a tick
after each webhook; best of three runs each, after a warm-up. Both emitted the same
{r['outputs']:,} incident events.

| what | per record | ratio |
|---|---:|---:|
| baseline: a webhook (parse excluded, fold into its key's state) | {r['per_webhook_ns']:,.0f} ns | 1.00 |
| a tick (advance the clock, find nothing due) | {r['per_tick_ns']:,.0f} ns | {r['tick_to_webhook']:.2f} |

A batch of ticks writes {r['tick_batch_writes']} record(s) to RocksDB and the changelog: the
partition's watermark, {r['watermark_bytes']} bytes, whatever the {r['timers']:,} timers waiting
(each timer is a key of its own, written when armed and deleted when it fires).

CPU: {100 * (user + sys_s) / wall:.0f}% of one core over {wall:.1f} s (user {user:.1f} s, system {sys_s:.1f} s), one thread.""")
PY
)
write_benchmark ticks "Ticks (\`just bench-ticks\`)" "$REPORT"
printf '%s\n' "$REPORT"
