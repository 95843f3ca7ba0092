#!/usr/bin/env bash
# The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven
# by Python's selenium over WebDriver) against a live 3-node cluster of the real binary
# under load. Screenshots of each step land in target/dashboard-screenshots/.
#
# Needs the binary (QUORATE_BIN, default target/debug/quorate), chromium, chromedriver and
# python3 with pytest and selenium (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."

export QUORATE_BIN="${QUORATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/quorate}"
if [ ! -x "$QUORATE_BIN" ]; then
  echo "run.sh: $QUORATE_BIN not found; build it with: cargo build -p quorate-server --bin quorate" >&2
  exit 1
fi
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found (scripts/install-deps.sh)" >&2; exit 1; }
done
python3 -m pytest -q -x tests/dashboard/test_dashboard.py "$@"
