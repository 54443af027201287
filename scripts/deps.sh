#!/usr/bin/env bash
# Installs the system packages the build and tests need, when missing (Debian/apt; root or sudo).
set -euo pipefail

# hiredis for the publisher; redis-server and redis-cli for `make run` and the tests;
# python3 for the test and fuzz scripts; prometheus for promtool (alert rule tests in check-deploy.sh).
packages=(libhiredis-dev redis-server redis-tools python3 prometheus)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v swift >/dev/null; then
    echo "deps: swift is not on PATH; install the Swift 6.3 toolchain first" >&2
    exit 1
fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Only promtool is wanted from the prometheus package: on a host run by systemd, the package also starts
# a Prometheus server on :9090 (the server's own metrics port), so stop and disable it.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
