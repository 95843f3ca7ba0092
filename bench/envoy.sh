#!/usr/bin/env bash
# Envoy RLS v3 and ext_authz v3 benchmark, all servers in one run (docs/benchmarks.md,
# "Envoy RLS (issue 4)" and "ext_authz (issue 5)"). A benchmark, not a test: nothing in
# .ci/run calls it, and Limitador is optional (skipped when LIMITADOR is unset or absent).
#
#   bench/envoy.sh OUT_DIR
#
# Environment:
#   QB         directory holding release `quorate` and `quorate-bench` (default /tmp/qb;
#              copy them out of target/ first if others rebuild it)
#   LIMITADOR  a release `limitador-server` binary (built from Kuadrant/limitador outside
#              this repository); unset = no Limitador rows
#   DURATION   measured seconds per case (default 10), WARMUP (default 2), C (default 64)
#   ROUNDS     times the whole sequence runs (default 1)
#   QUORATE_ALT  a second quorate binary, measured as extra rows (q1x, q3x)
#
# Starts: quorate-bench null-rls; one quorate node and a 3-node cluster (quorate-bench
# nodes, the suite's machinery) with bench/envoy/policy.yaml; redis-server on loopback;
# Limitador in memory and on that Redis with bench/envoy/limitador-limits.yaml. Then per
# server and descriptor count (1, 3): quorate-bench rls (verifies every answer), h2load
# with the brief's recipe (verified by quorate's own metrics, or by a decoded response
# sample for the others); then ext_authz (none / api-key / jwt) against the single node
# next to rls with the same limit. Every result is one JSON line in OUT_DIR/results.jsonl.
set -euo pipefail

OUT=${1:?usage: bench/envoy.sh OUT_DIR}
QB=${QB:-/tmp/qb}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
C=${C:-64}
ROUNDS=${ROUNDS:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RES="$OUT/results.jsonl"
: >"$RES"
# PIDS, cleanup on exit, free_port, wait_port, wait_line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

echo "load before: $(cat /proc/loadavg)" | tee "$OUT/meta.txt"

# --- servers ---
declare -A GRPC HTTP
NULL_PORT=$(free_port)
"$QB/quorate-bench" null-rls --grpc "127.0.0.1:$NULL_PORT" >"$OUT/null-rls.out" 2>&1 &
PIDS+=($!); GRPC[null]=127.0.0.1:$NULL_PORT

"$QB/quorate-bench" nodes --quorate "$QB/quorate" --policy "$HERE/envoy/policy.yaml" --nodes 1 \
  --work-dir "$OUT" >"$OUT/single.out" 2>"$OUT/single.err" &
PIDS+=($!)
"$QB/quorate-bench" nodes --quorate "$QB/quorate" --policy "$HERE/envoy/policy.yaml" --nodes 3 \
  --work-dir "$OUT" >"$OUT/cluster.out" 2>"$OUT/cluster.err" &
PIDS+=($!)
line=$(wait_line "$OUT/single.out" "nodes ready:")
GRPC[q1]=$(sed -E 's/.*grpc=([^ ]*).*/\1/' <<<"$line"); HTTP[q1]=$(sed -E 's/.*http=([^ ]*).*/\1/' <<<"$line")
line=$(wait_line "$OUT/cluster.out" "nodes ready:")
GRPC[q3]=$(sed -E 's/.*grpc=([^,]*),.*/\1/' <<<"$line"); HTTP[q3]=$(sed -E 's/.*http=([^,]*),.*/\1/' <<<"$line")
SERVERS=(null q1 q3)

# Optional: a second quorate build measured in the same run (rows q1x / q3x), e.g. a
# candidate fix; QUORATE_ALT is its binary.
if [[ -n "${QUORATE_ALT:-}" ]]; then
  for n in 1 3; do
    "$QB/quorate-bench" nodes --quorate "$QUORATE_ALT" --policy "$HERE/envoy/policy.yaml" --nodes $n \
      --work-dir "$OUT" >"$OUT/alt$n.out" 2>"$OUT/alt$n.err" &
    PIDS+=($!)
  done
  line=$(wait_line "$OUT/alt1.out" "nodes ready:")
  GRPC[q1x]=$(sed -E 's/.*grpc=([^ ]*).*/\1/' <<<"$line"); HTTP[q1x]=$(sed -E 's/.*http=([^ ]*).*/\1/' <<<"$line")
  line=$(wait_line "$OUT/alt3.out" "nodes ready:")
  GRPC[q3x]=$(sed -E 's/.*grpc=([^,]*),.*/\1/' <<<"$line"); HTTP[q3x]=$(sed -E 's/.*http=([^,]*),.*/\1/' <<<"$line")
  SERVERS+=(q1x q3x)
fi

if [[ -n "${LIMITADOR:-}" && -x "${LIMITADOR:-}" ]]; then
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no >"$OUT/redis.log" 2>&1 &
  PIDS+=($!); wait_port "$REDIS_PORT"
  LM_RLS=$(free_port); LM_HTTP=$(free_port)
  "$LIMITADOR" --rls-ip 127.0.0.1 --rls-port "$LM_RLS" --http-ip 127.0.0.1 --http-port "$LM_HTTP" \
    "$HERE/envoy/limitador-limits.yaml" memory >"$OUT/limitador-memory.log" 2>&1 &
  PIDS+=($!); GRPC[lim_mem]=127.0.0.1:$LM_RLS
  LR_RLS=$(free_port); LR_HTTP=$(free_port)
  "$LIMITADOR" --rls-ip 127.0.0.1 --rls-port "$LR_RLS" --http-ip 127.0.0.1 --http-port "$LR_HTTP" \
    "$HERE/envoy/limitador-limits.yaml" redis "redis://127.0.0.1:$REDIS_PORT" \
    >"$OUT/limitador-redis.log" 2>&1 &
  PIDS+=($!); GRPC[lim_redis]=127.0.0.1:$LR_RLS
  wait_port "$LM_RLS"; wait_port "$LR_RLS"
  SERVERS+=(lim_mem lim_redis)
fi
echo "servers: $(for s in "${SERVERS[@]}"; do printf '%s=%s ' "$s" "${GRPC[$s]}"; done)" | tee -a "$OUT/meta.txt"

for d in 1 3; do
  "$QB/quorate-bench" rls-frame --domain "bench$d" --descriptors "$d" --key 42 --out "$OUT/frame$d.bin"
done

rls_ok_total() { # http addr -> sum of quorate_rls_responses_total
  curl -s "http://$1/metrics" | awk '/^quorate_rls_responses_total/ {s += $NF} END {printf "%d", s}'
}

# One decoded response per server and frame (what h2load cannot check by itself).
sample() { # server d
  local url="http://${GRPC[$1]}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
  curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary "@$OUT/frame$2.bin" -D "$OUT/sample-$1-$2.headers" -o "$OUT/sample-$1-$2.bin" "$url"
  tail -c +6 "$OUT/sample-$1-$2.bin" | protoc --decode_raw >"$OUT/sample-$1-$2.txt" 2>&1 || true
}

record() { # json-line extra-fields
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2])); print(json.dumps(d))' "$1" "$2" >>"$RES"
}

rls_case() { # round server d
  local extra=()
  [[ $2 == lim_* ]] && extra=(--no-statuses)
  local j
  j=$("$QB/quorate-bench" rls --target "http://${GRPC[$2]}" --domain "bench$3" --descriptors "$3" \
    --concurrency "$C" --duration "${DURATION}s" --warmup "${WARMUP}s" --json --allow-errors "${extra[@]}")
  record "$j" "{\"round\":$1,\"server\":\"$2\",\"client\":\"quorate-bench\",\"descriptors\":$3}"
  echo "round $1 $2 d=$3 quorate-bench: $j" >&2
}

h2load_case() { # round server d
  local url="http://${GRPC[$2]}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
  local before=0 after=0 http=""
  [[ $2 == q1* || $2 == q3* ]] && http=${HTTP[$2]} && before=$(rls_ok_total "$http")
  local log="$OUT/h2load-$1-$2-$3.txt"
  h2load -c 8 -m 16 -t 1 -D "$DURATION" -d "$OUT/frame$3.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "$url" >"$log" 2>&1 || true
  [[ -n $http ]] && after=$(rls_ok_total "$http")
  python3 - "$log" "$1" "$2" "$3" "$before" "$after" >>"$RES" <<'EOF'
import json, re, sys
log, rnd, server, d, before, after = sys.argv[1:]
t = open(log).read()
def num(pat, default=None, conv=float):
    m = re.search(pat, t)
    return conv(m.group(1)) if m else default
def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
m = re.search(r"time for request:\s+(\S+?)(us|ms|s)\s+(\S+?)(us|ms|s)\s+(\S+?)(us|ms|s)", t)
out = {
    "round": int(rnd), "server": server, "client": "h2load", "descriptors": int(d),
    "throughput_rps": num(r"finished in [^,]+, ([\d.]+) req/s"),
    "succeeded": num(r"(\d+) succeeded", conv=int),
    "failed": num(r"(\d+) failed", conv=int),
    "errored": num(r"(\d+) errored", conv=int),
    "mean_us": us(m.group(5), m.group(6)) if m else None,
    "max_us": us(m.group(3), m.group(4)) if m else None,
}
if server.startswith(("q1", "q3")):
    out["server_rls_answers"] = int(after) - int(before)
    out["verified"] = out["server_rls_answers"] == out["succeeded"]
print(json.dumps(out))
EOF
  echo "round $1 $2 d=$3 h2load: $(tail -1 "$RES")" >&2
}

authz_case() { # round server identity
  local j
  j=$("$QB/quorate-bench" ext-authz --target "http://${GRPC[$2]}" --identity "$3" \
    --jwt-key "$REPO/server/src/authz/testdata/ed1.key" \
    --concurrency "$C" --duration "${DURATION}s" --warmup "${WARMUP}s" --json --allow-errors)
  record "$j" "{\"round\":$1,\"server\":\"$2\",\"client\":\"ext-authz\",\"identity\":\"$3\"}"
  echo "round $1 $2 ext-authz $3: $j" >&2
}

for s in "${SERVERS[@]}"; do for d in 1 3; do sample "$s" "$d"; done; done

for r in $(seq "$ROUNDS"); do
  for d in 1 3; do
    for s in "${SERVERS[@]}"; do
      rls_case "$r" "$s" "$d"
      h2load_case "$r" "$s" "$d"
    done
  done
  # ext_authz next to the pure rate-limit decision (RLS, one descriptor, same limit),
  # serially (c=1: p50 is the service time) and at C.
  AUTHZ_SERVERS=(q1); [[ -n "${GRPC[q1x]:-}" ]] && AUTHZ_SERVERS+=(q1x)
  for s in "${AUTHZ_SERVERS[@]}"; do
    for ac in 1 "$C"; do
      C=$ac rls_case "$r" "$s" 1
      sed -i '$ s/"client": "quorate-bench"/"client": "rls-reference"/' "$RES"
      for id in none api-key jwt; do C=$ac authz_case "$r" "$s" "$id"; done
    done
  done
done
echo "load after: $(cat /proc/loadavg)" | tee -a "$OUT/meta.txt"
echo "results: $RES"
