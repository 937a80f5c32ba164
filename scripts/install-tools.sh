#!/usr/bin/env bash
# Installs what hookfold's build, tests and local stack need, when missing:
#   - Debian packages: clang/libclang (RocksDB bindings), cmake and friends (librdkafka),
#     libssl-dev (librdkafka's TLS and SASL SCRAM), libcurl4-openssl-dev (its OAUTHBEARER OIDC),
#     kcat (an independent Kafka client), protobuf-compiler (protoc --decode), wrk (bench),
#     OpenJDK 17 and Maven (to fetch and run Apache Kafka), chromium and Node.js (the
#     page's browser test);
#   - just (the command runner), from crates.io;
#   - playwright-core (drives chromium), from npm into ~/.cache/hookfold/node;
#   - Apache Kafka (the broker), the version pinned in scripts/kafka/pom.xml: its jars from
#     Maven Central into ~/.cache/hookfold/kafka/<version>/libs.
# Everything goes to ~/.cache/hookfold (HOOKFOLD_TOOLS for cargo-installed tools), outside
# the repository, so a fresh clone on the same machine reuses it.
#
# `install-tools.sh kafka` installs only the Kafka jars; `install-tools.sh --background-kafka`
# installs the rest and fetches the jars in the background, so the download overlaps the
# compile that follows (`just build`, `just up`, `just test` do this); `wait-kafka` (run by
# whatever starts a broker) then waits for it, or fetches them itself if that failed.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HOOKFOLD_CACHE:-$HOME/.cache/hookfold}"
TOOLS="${HOOKFOLD_TOOLS:-$CACHE/tools}"
JUST_VERSION="1.59.0"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)"
KAFKA_HOME="$CACHE/kafka/$KAFKA_VERSION"
mkdir -p "$TOOLS/bin" "$CACHE/kafka"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"

say() { printf '\033[1minstall-tools:\033[0m %s\n' "$*" >&2; }

debian_packages() {
  local packages=(clang libclang-dev cmake pkg-config build-essential zlib1g-dev libssl-dev
    libcurl4-openssl-dev kcat protobuf-compiler libprotobuf-dev wrk curl openjdk-17-jdk-headless
    maven chromium nodejs npm)
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # A JDK and Maven installed some other way are fine too.
  if command -v java >/dev/null && java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then
    missing=("${missing[@]/openjdk-17-jdk-headless}")
  fi
  command -v mvn >/dev/null && missing=("${missing[@]/maven}")
  # A Node.js (with npm) installed some other way is fine too.
  command -v node >/dev/null && missing=("${missing[@]/nodejs}")
  command -v npm >/dev/null && missing=("${missing[@]/npm}")
  local wanted=()
  for p in "${missing[@]}"; do [ -n "$p" ] && wanted+=("$p"); done
  if ((${#wanted[@]})); then
    say "installing Debian packages: ${wanted[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
  fi
}

# `.complete` holds the pom's digest: a pom that changes (another version, another jar)
# fetches again.
POM_DIGEST="$(sha256sum scripts/kafka/pom.xml | cut -d' ' -f1)"
kafka_installed() { [ "$(cat "$KAFKA_HOME/libs/.complete" 2>/dev/null)" = "$POM_DIGEST" ]; }

kafka_jars() {
  kafka_installed && return 0
  # One fetch at a time: a foreground one waits for a background one and then finds the
  # jars there (or, if that one failed, fetches them itself).
  exec 9>"$CACHE/kafka/.lock"
  flock 9
  kafka_installed && return 0
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (about a minute, once per machine)"
  local tmp="$KAFKA_HOME/libs.partial"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # Maven's own cache also lives under ~/.cache/hookfold, so nothing lands in the clone.
  mvn -q -B -f scripts/kafka/pom.xml -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp"
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null
  ls "$tmp"/kafka-tools-"$KAFKA_VERSION".jar >/dev/null
  echo "$POM_DIGEST" > "$tmp/.complete"
  rm -rf "$KAFKA_HOME/libs"
  mv "$tmp" "$KAFKA_HOME/libs"
}

# playwright-core (npm) drives Debian's chromium in the page's browser test
# (tests/browser/page.cjs); it downloads no browser of its own.
PLAYWRIGHT_VERSION=1.65.2
NODE_HOME="$CACHE/node"
install_playwright() {
  if ! grep -qs "\"version\": \"$PLAYWRIGHT_VERSION\"" "$NODE_HOME/node_modules/playwright-core/package.json"; then
    say "installing playwright-core $PLAYWRIGHT_VERSION (npm) into $NODE_HOME"
    mkdir -p "$NODE_HOME"
    npm install --silent --no-audit --no-fund --prefix "$NODE_HOME" "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
  fi
}

install_just() {
  if ! command -v just >/dev/null 2>&1; then
    say "installing just $JUST_VERSION into $TOOLS (about a minute)"
    cargo install just --version "$JUST_VERSION" --locked --root "$TOOLS" --quiet
  fi
}

case "${1:-all}" in
  kafka)
    kafka_jars
    ;;
  --background-kafka)
    debian_packages
    install_just
    install_playwright
    if ! kafka_installed; then
      say "fetching Apache Kafka $KAFKA_VERSION in the background (log: $CACHE/kafka/install.log)"
      (kafka_jars >"$CACHE/kafka/install.log" 2>&1 || echo "failed" >>"$CACHE/kafka/install.log") &
    fi
    ;;
  wait-kafka)
    if ! kafka_installed; then
      say "waiting for Apache Kafka $KAFKA_VERSION's jars ($CACHE/kafka/install.log)"
      kafka_jars
    fi
    ;;
  all)
    debian_packages
    install_just
    install_playwright
    kafka_jars
    say "tools ready: just $(just --version | cut -d' ' -f2), $(java -version 2>&1 | head -1), Apache Kafka $KAFKA_VERSION ($KAFKA_HOME/libs)"
    ;;
  *) echo "usage: $0 [all|kafka|--background-kafka|wait-kafka]" >&2; exit 2 ;;
esac
