#!/usr/bin/env bash
# make check-deploy (and make test): static checks of the packaging and deployment files.
#
#   Dockerfile                            hadolint (strictest threshold); release.sh --print quoting; base images
#                                         fully qualified (and pinned by digest with REQUIRE_DIGEST_PINS=1),
#                                         HEALTHCHECK on /healthz, a docker run --stop-timeout above the drain
#   deploy/prometheus/alerts.yml          promtool check rules; labels/annotations; runbook anchors exist
#   deploy/prometheus/alerts.test.yml     promtool test rules; every alert tested firing and not firing
#   deploy/k8s/teltonika-ingest.yaml      PyYAML + structure (Deployment, PodDisruptionBudget, PodMonitor, device
#                                         Service; image pinned to the server's version, preStop, topology spread,
#                                         probes, grace period, resources, ...; the device Service's PROXY v2
#                                         annotation agrees with PROXY_PROTOCOL, PROXY_TRUSTED_CIDRS set, the
#                                         balancer's health check on /readyz)
#   deploy/systemd/*.service              systemd-analyze verify (when available) + required keys (Type=notify,
#                                         WatchdogSec, LimitNOFILE, MemoryMax, SystemCallFilter, backtracer)
#   deploy/grafana/teltonika-ingest.json  valid JSON, variables, every panel has PromQL targets, one unit per axis
#
# The tools (hadolint, promtool, PyYAML, systemd-analyze) come from scripts/deps.sh; this script installs
# nothing. Without systemd-analyze the unit gets the key checks alone.
# Exits 1 when any check fails (all checks run; failures are listed at the end), 2 when a tool is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "check-deploy: $*"; }

# --- tools (installed by scripts/deps.sh; nothing is installed here) ------------------------------------
# Python with PyYAML: the python3 on PATH, else Debian's own (python3-yaml installs there).
py=""
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
        py="$candidate"
        break
    fi
done
[[ -n "$py" ]] || { log "no python3 with PyYAML: run scripts/deps.sh (make deps)" >&2; exit 2; }
command -v promtool >/dev/null 2>&1 || { log "promtool missing: run scripts/deps.sh (make deps)" >&2; exit 2; }
hadolint="$(command -v hadolint || echo .build-tools/venv/bin/hadolint)"
[[ -x "$hadolint" ]] || { log "hadolint missing: run scripts/deps.sh (make deps)" >&2; exit 2; }

# --- checks ----------------------------------------------------------------------------------------------
passed=0
failed=()
check() {  # check "what" command...: runs it, prints ok/FAIL, keeps its output for failures
    local what="$1" out
    shift
    if out="$("$@" 2>&1)"; then
        passed=$((passed + 1))
        log "ok    $what${out:+ ($out)}"
    else
        failed+=("$what")
        log "FAIL  $what"
        printf '%s\n' "$out" | sed 's/^/    /'
    fi
}

# The structural checks are one Python program, scripts/check_deploy.py; its first argument picks the check.

# Checks written as functions; `check` runs each in a subshell and keeps its output for the report.
release_print_quotes_revision() {
    local out
    out="$(REVISION=0123456789ab scripts/release.sh --print)"
    if [[ "$out" != 'env TELTONIKA_REVISION=0123456789ab swift build -c release --product teltonika-ingest --static-swift-stdlib'* ]]; then
        echo "unexpected command: $out"
        return 1
    fi
    if REVISION='bad"rev' scripts/release.sh --print >/dev/null 2>&1; then
        echo "a quote in REVISION was accepted"
        return 1
    fi
}

dockerfile_facts() {
    local want
    for want in "scripts/release.sh" "USER 10001" 'ENTRYPOINT ["/usr/bin/tini", "--"' "STOPSIGNAL SIGTERM" \
        "HEALTHCHECK" "EXPOSE 5027" "swift-backtrace=/usr/local/libexec/swift-backtrace-static"; do
        grep -qF -- "$want" Dockerfile || { echo "Dockerfile lacks: $want"; return 1; }
    done
    grep -qx ".build" .dockerignore || { echo ".dockerignore must exclude .build"; return 1; }
}

quiet() {  # run a command, show its output only when it fails
    local out
    out="$("$@" 2>&1)" || { echo "$out"; return 1; }
}

# systemd-analyze verify insists that ExecStart's binary exists: verify a copy that names a stub (the real
# path is checked by the key checks). Unknown keys and bad values are warnings with exit 0, so any output
# fails the check.
systemd_verify() {
    local tmp out
    tmp="$(mktemp -d)"
    printf '#!/bin/sh\n' >"$tmp/teltonika-ingest"
    chmod +x "$tmp/teltonika-ingest"
    sed "s#^ExecStart=/usr/local/bin/teltonika-ingest#ExecStart=$tmp/teltonika-ingest#" "$1" >"$tmp/teltonika-ingest.service"
    out="$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp/teltonika-ingest.service" 2>&1)" || true
    rm -rf "$tmp"
    if [[ -n "$out" ]]; then echo "$out"; return 1; fi
}

# Dockerfile
check "hadolint Dockerfile" "$hadolint" --failure-threshold style Dockerfile
check "release.sh --print passes REVISION to the build (CBuildInfo alone), refusing quotes" release_print_quotes_revision
check "Dockerfile builds with scripts/release.sh, runs as 10001 under tini" dockerfile_facts
check "Dockerfile base images, HEALTHCHECK, stop timeout" "$py" scripts/check_deploy.py dockerfile Dockerfile

# Prometheus
check "promtool check rules deploy/prometheus/alerts.yml" quiet promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules deploy/prometheus/alerts.test.yml" quiet promtool test rules deploy/prometheus/alerts.test.yml
check "alerts: severity, summary, description, runbook anchors in OPERATIONS.md, tests both ways" \
    "$py" scripts/check_deploy.py alerts deploy/prometheus/alerts.yml deploy/prometheus/alerts.test.yml OPERATIONS.md

# Kubernetes
check "k8s manifest deploy/k8s/teltonika-ingest.yaml" "$py" scripts/check_deploy.py k8s deploy/k8s/teltonika-ingest.yaml

# systemd
unit=deploy/systemd/teltonika-ingest.service
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze verify $unit" systemd_verify "$unit"
else
    log "skip  systemd-analyze verify (no systemd here): key checks only"
fi
check "systemd unit keys $unit" "$py" scripts/check_deploy.py systemd "$unit"

# Grafana. That dashboard and alerts name only metrics the server defines: here against the sources, and
# against a real scrape of the real binary in Tests/IntegrationTests/MetricsTests.swift (both with
# scripts/metric-names.py).
check "dashboard deploy/grafana/teltonika-ingest.json" "$py" scripts/check_deploy.py dashboard deploy/grafana/teltonika-ingest.json
check "every metric the dashboard and alerts use is defined by the server" \
    "$py" scripts/check_deploy.py series deploy/grafana/teltonika-ingest.json deploy/prometheus/alerts.yml

if [[ ${#failed[@]} -gt 0 ]]; then
    log "${#failed[@]} of $((passed + ${#failed[@]})) checks FAILED: ${failed[*]}"
    exit 1
fi
log "all $passed checks passed"
