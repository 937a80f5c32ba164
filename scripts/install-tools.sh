#!/usr/bin/env bash
# Installs what hookfold's build, tests and local stack need, when missing:
#   - Debian packages: clang/libclang (RocksDB bindings), cmake and friends (librdkafka),
#     kcat (an independent Kafka client), protobuf-compiler (protoc --decode), wrk (bench);
#   - just (the command runner), from crates.io;
#   - tansu 0.6.0 (the Kafka-compatible broker), from crates.io.
# Cargo-installed tools go to $HOOKFOLD_TOOLS (default ~/.cache/hookfold/tools), outside
# the repository, so a fresh clone on the same machine reuses them (a cold tansu build
# takes about 11 minutes).
set -euo pipefail

TOOLS="${HOOKFOLD_TOOLS:-$HOME/.cache/hookfold/tools}"
TANSU_VERSION="0.6.0"
JUST_VERSION="1.59.0"
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"

say() { printf '\033[1minstall-tools:\033[0m %s\n' "$*" >&2; }

packages=(clang libclang-dev cmake pkg-config build-essential zlib1g-dev kcat protobuf-compiler wrk curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v just >/dev/null 2>&1; then
  say "installing just $JUST_VERSION into $TOOLS (about a minute)"
  cargo install just --version "$JUST_VERSION" --locked --root "$TOOLS" --quiet
fi

if ! "$TOOLS/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  say "building tansu $TANSU_VERSION into $TOOLS (about 11 minutes, once per machine)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql --locked --root "$TOOLS" --quiet
fi
say "tools ready: just $(just --version | cut -d' ' -f2), $("$TOOLS/bin/tansu" --version 2>/dev/null | head -1)"
