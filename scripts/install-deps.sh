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
