#!/usr/bin/env bash
# End-to-end over real gRPC from another language: generates Python stubs from Envoy's own
# rls.proto and external_auth.proto (shipped inside the envoy-types crate), starts a real
# `quorate serve` on free loopback ports with a temporary data dir and
# tests/python/policy.yaml, waits until it is ready, runs tests/python/test_rls.py and
# test_ext_authz.py with pytest (and test_envoy_snippet.py, which checks
# examples/envoy/envoy.yaml against Envoy's bootstrap proto), and stops the server.
#
# Needs the binary (QUORATE_BIN, default target/debug/quorate) and python3 with grpcio,
# grpcio-tools, pytest and pyyaml (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${QUORATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/quorate}"
READY_DEADLINE_S=30

if [ ! -x "$BIN" ]; then
  echo "run.sh: $BIN not found; build it with: cargo build -p quorate-server --bin quorate" >&2
  exit 1
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== python: stubs from Envoy's rls.proto, external_auth.proto and bootstrap.proto"
proto_root="$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
paths = [p["manifest_path"] for p in meta["packages"] if p["name"] == "envoy-types"]
if not paths:
    sys.exit("envoy-types is not in cargo metadata")
print(os.path.join(os.path.dirname(paths[0]), "proto"))
')"
python3 tests/python/gen_stubs.py "$proto_root" "$work/stubs" \
  envoy/service/ratelimit/v3/rls.proto \
  envoy/service/auth/v3/external_auth.proto \
  envoy/config/bootstrap/v3/bootstrap.proto \
  envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto \
  envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto \
  envoy/extensions/filters/http/ratelimit/v3/rate_limit.proto \
  envoy/extensions/filters/http/router/v3/router.proto \
  envoy/extensions/upstreams/http/v3/http_protocol_options.proto \
  envoy/extensions/filters/http/rate_limit_quota/v3/rate_limit_quota.proto \
  envoy/type/matcher/v3/http_inputs.proto

echo "== python: starting $BIN serve"
"$BIN" serve --grpc 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$work/data" \
  --policy tests/python/policy.yaml >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

# The server prints one line once it is ready (leader elected, startup policy live):
#   quorate ready: node 1 grpc=ADDR http=ADDR data=DIR policy_version=N
ready=""
deadline=$((SECONDS + READY_DEADLINE_S))
while [ -z "$ready" ]; do
  ready="$(grep -m1 '^quorate ready:' "$work/stdout" || true)"
  [ -n "$ready" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "run.sh: quorate exited before becoming ready; stderr:" >&2
    cat "$work/stderr" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "run.sh: quorate not ready after ${READY_DEADLINE_S}s; stderr:" >&2
    cat "$work/stderr" >&2
    exit 1
  fi
  sleep 0.05
done
echo "$ready"
grpc_addr="$(sed -n 's/.* grpc=\([^ ]*\).*/\1/p' <<<"$ready")"
version="$(sed -n 's/.* policy_version=\([0-9]*\).*/\1/p' <<<"$ready")"
if [ -z "$grpc_addr" ] || [ "${version:-0}" -lt 1 ]; then
  echo "run.sh: unexpected ready line (no gRPC address or no live policy): $ready" >&2
  exit 1
fi

echo "== python: pytest tests/python/test_rls.py test_ext_authz.py test_envoy_snippet.py test_rlqs_snippet.py"
set +e
PYTHONDONTWRITEBYTECODE=1 QUORATE_GRPC="$grpc_addr" PYTHONPATH="$work/stubs${PYTHONPATH:+:$PYTHONPATH}" \
  python3 -m pytest -q -p no:cacheprovider tests/python/test_rls.py \
  tests/python/test_ext_authz.py tests/python/test_envoy_snippet.py \
  tests/python/test_rlqs_snippet.py
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "run.sh: pytest collected no tests" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "run.sh: pytest failed ($rc); server stderr:" >&2
  tail -n 50 "$work/stderr" >&2
fi
exit "$rc"
