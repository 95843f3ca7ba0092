#!/usr/bin/env bash
# The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven
# by Python's selenium over WebDriver) against a live 3-node cluster of the real binary
# under load. Screenshots of each step land in target/dashboard-screenshots/.
#
# Needs the binary (QUORATE_BIN, default target/debug/quorate), chromium, chromedriver and
# python3 with pytest, selenium, grpcio and grpcio-tools (scripts/install-deps.sh installs
# them).
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

# Python gRPC stubs for Envoy's RLQS service (from the protos inside the envoy-types
# crate): the test opens real RLQS streams so the page's RLQS panel has proxies to show.
stubs="$(mktemp -d)"
trap 'rm -rf "$stubs"' EXIT
proto_root="$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
paths = [p["manifest_path"] for p in meta["packages"] if p["name"] == "envoy-types"]
if not paths:
    sys.exit("envoy-types is not in cargo metadata")
print(os.path.join(os.path.dirname(paths[0]), "proto"))
')"
python3 tests/python/gen_stubs.py "$proto_root" "$stubs" \
  envoy/service/rate_limit_quota/v3/rlqs.proto
PYTHONPATH="$stubs${PYTHONPATH:+:$PYTHONPATH}" \
  python3 -m pytest -q -x -p no:cacheprovider tests/dashboard/test_dashboard.py "$@"
