# hookfold: `just up` runs the system on a local broker, `just demo` shows it working,
# `just test` runs every test. `just --list` shows the rest.

set shell := ["bash", "-euo", "pipefail", "-c"]

tools := env_var_or_default("HOOKFOLD_TOOLS", env_var("HOME") + "/.cache/hookfold/tools")
export PATH := tools + "/bin:" + env_var("HOME") + "/.cargo/bin:" + env_var("PATH")
bin := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() + "/target") + "/debug"

# List the recipes
default:
    @just --list

# Install what is missing: Debian packages (JDK 17, Maven, ...), just, the Apache Kafka jars
# (cached in ~/.cache/hookfold)
tools:
    scripts/install-tools.sh

# The same, with the Kafka jars fetched in the background while the build that follows runs
[private]
tools-overlapped:
    scripts/install-tools.sh --background-kafka

# Build the binaries the stack and the tests run (debug; the benchmarks build their own, in
# release). The same dependency build serves `just test`: see [profile.dev.package."*"].
build:
    cargo build --workspace --exclude hookfold-bench --bins

# Start Apache Kafka (KRaft) on 127.0.0.1:9092 (data in .data/kafka/) and create the topics
broker: tools-overlapped build
    scripts/stack.sh broker

# Start the whole system in the background: broker, gateway, processor
up: tools-overlapped build
    scripts/stack.sh up

# Stop what `just up` started
down:
    scripts/stack.sh down

# What is running
status:
    scripts/stack.sh status

# Post a scripted story of signed webhooks through the running system and show the incidents
demo: up
    {{bin}}/hookfold-dev demo --gateway http://127.0.0.1:8080
    {{bin}}/hookfold-dev wait-processed --topic hookfold.webhooks --metrics http://127.0.0.1:9464/metrics
    @echo "ci-agent-9 opens once its grace has passed (10 s in deploy/local/processor.toml; ticks move time on)..."
    @for i in $(seq 1 60); do \
        {{bin}}/hookfold-processor -c deploy/local/processor.toml incidents --json --prefix buildkite/demo-buildkite/agent/ci-agent-9 | grep -q . && exit 0; \
        sleep 1; \
    done; echo "ci-agent-9 did not open within 60 s: see .data/processor.log" >&2; exit 1
    @echo
    @echo "--- hookfold.incidents (hookfold-processor tail --from-beginning --summary) ---"
    {{bin}}/hookfold-processor --config deploy/local/processor.toml tail --from-beginning --summary
    @echo
    @echo "--- open now (hookfold-processor incidents: the table hookfold.incidents.open) ---"
    {{bin}}/hookfold-processor --config deploy/local/processor.toml incidents
    @echo
    @echo "Full records: {{bin}}/hookfold-processor -c deploy/local/processor.toml tail --from-beginning"
    @echo "What is open, live: {{bin}}/hookfold-processor -c deploy/local/processor.toml incidents --watch"
    @echo "The page of open incidents (live): http://127.0.0.1:8090/"

# Run every test: unit, property and end to end (against Apache Kafka, or KAFKA_BOOTSTRAP_SERVERS)
test: tools-overlapped build
    scripts/install-tools.sh wait-kafka
    cargo test --workspace --no-fail-fast

# Formatting and lints, as CI wants them
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code
fmt:
    cargo fmt --all

# Fuzz every target (or those named) for SECONDS each, from the stored corpus; reports
# executions, coverage and crashes (fuzz/, scripts/fuzz.sh)
fuzz seconds="600" *targets: tools
    scripts/fuzz.sh {{seconds}} {{targets}}

# Rewrite the fuzz targets' seed corpus (fuzz/corpus/) from the fixtures and the tests' records
fuzz-seeds: build
    {{bin}}/hookfold-dev fuzz-seeds --out fuzz/corpus

# Every benchmark
bench: bench-gateway bench-processor bench-restore bench-restore-concurrent bench-ticks bench-eos

# hookfold under effectively_once and exactly_once beside Kafka Streams under at_least_once
# and exactly_once_v2 on one broker: throughput, p99 latency at 1,000 events/s, RSS
bench-eos: tools
    cargo build --release --workspace --bins
    scripts/bench-eos.sh

# What a tick costs to fold next to a webhook, and the partition clock's size per batch
bench-ticks: tools
    cargo build --release -p hookfold-bench --bin fold-ticks
    scripts/bench-ticks.sh

# Gateway throughput and latency against the bare-HTTP and raw-producer ceilings
bench-gateway: tools
    cargo build --release --workspace --bins
    scripts/bench-gateway.sh

# Processor throughput against a raw consume-and-produce copy; state size with 1,000,000 keys
bench-processor: tools
    cargo build --release --workspace --bins
    scripts/bench-processor.sh

# Restore rate from the changelog and time to the first event with 1,000,000 keys, against a plain read
bench-restore: tools
    cargo build --release --workspace --bins
    scripts/bench-restore.sh

# Several partitions restored at once (6 x 200,000 states) against one alone, in one run;
# BENCH_BEFORE_PROCESSOR=<an earlier hookfold-processor> measures that build beside it
bench-restore-concurrent: tools
    cargo build --release --workspace --bins
    scripts/bench-restore-concurrent.sh
