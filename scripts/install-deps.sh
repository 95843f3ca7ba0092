#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh Debian machine, idempotently:
# system packages via apt-get (after apt-get update) and Python packages via pip.
set -euo pipefail

APT_PACKAGES=(python3)
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

# Python packages for tests/python (a grpcio client generated from Envoy's rls.proto),
# installed into the machine's python3 only when missing.
PY_PACKAGES=(grpcio grpcio-tools pytest)
if ! python3 -c 'import grpc, grpc_tools, pytest' >/dev/null 2>&1; then
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
