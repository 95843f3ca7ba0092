#!/usr/bin/env bash
# Envoy RLS with h2load, every server in ONE run (issues 12 and 15; docs/benchmarks.md,
# "Issue 12/15 tooling"). A benchmark, not a test: nothing in .ci/run or scripts/test.sh
# calls it.
#
#   bench/h2load-rls.sh --quorate BIN --bench BIN [--limitador BIN] [--out DIR]
#                       [--duration S] [--warmup S] [--clients N] [--streams N]
#                       [--rounds N] [--only LIST]
#
#   --quorate    a release `quorate` (any build: rerun against new binaries to compare)
#   --bench      a release `quorate-bench` (null-rls, rls-frame, nodes)
#   --limitador  a release `limitador-server` built from Kuadrant/limitador outside this
#                repository; without it the Limitador rows are skipped
#   --out        where logs and results go (default: a new directory under /tmp)
#   --duration   measured seconds per case (default 10); --warmup: an unmeasured h2load
#                run first, so connections and allocators are warm (default 2)
#   --clients / --streams: h2load -c / -m; in flight = clients × streams (default 8 × 16
#                = 128)
#   --rounds     the whole sequence N times; ratios are per round, medians shown
#   --only       comma-separated subset of: null,lim_mem,lim_redis,lim_cached,q1,q3,qredis
#
# Servers (all started here, all on loopback, all killed on exit):
#   null        quorate-bench null-rls: a do-nothing tonic RLS server (the ceiling)
#   lim_mem     Limitador, counters in memory
#   lim_redis   Limitador, counters in Redis (each hit a Redis round trip)
#   lim_cached  Limitador `redis_cached` (counts in memory, flushed to Redis in batches:
#               approximate across instances; shown for reference)
#   q1, q3      quorate, 1 node and 3 nodes (bench/envoy/policy.yaml: strict, durable
#               Raft log in --out), load sent to the leader
#   qredis      quorate --store redis:// (stateless node, counters in the same Redis)
# Same request for every server: domain bench1, one descriptor k1=k42 (one counter), a
# limit of 10^12 per hour (bench/envoy/limitador-limits.yaml for Limitador), so every
# answer is OK. h2load sends the frame written by `quorate-bench rls-frame` with
# content-type application/grpc and te: trailers.
#
# Verification: h2load counts an HTTP 200 as success whatever the grpc-status, so for
# quorate the delta of quorate_rls_responses_total (/metrics) must match h2load's
# successes (up to the requests in flight when h2load stopped); for every server one
# response is also fetched with curl and decoded (grpc-status 0, overall_code OK).
# Latency percentiles come from h2load --log-file (one line per request).
set -euo pipefail

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

QUORATE="" BENCH="" LIMITADOR="" OUT="" DURATION=10 WARMUP=2 CLIENTS=8 STREAMS=16 ROUNDS=1
ONLY="null,lim_mem,lim_redis,lim_cached,q1,q3,qredis"
while [[ $# -gt 0 ]]; do
  case $1 in
    --quorate) QUORATE=$2; shift 2 ;;
    --bench) BENCH=$2; shift 2 ;;
    --limitador) LIMITADOR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ -x $QUORATE ]] || { echo "--quorate: no executable at '$QUORATE'" >&2; usage; }
[[ -x $BENCH ]] || { echo "--bench: no executable at '$BENCH'" >&2; usage; }
[[ -z $LIMITADOR || -x $LIMITADOR ]] || { echo "--limitador: no executable at '$LIMITADOR'" >&2; usage; }
for n in DURATION WARMUP CLIENTS STREAMS ROUNDS; do
  [[ ${!n} =~ ^[0-9]+$ && ${!n} -gt 0 ]] || { echo "--${n,,} must be a positive integer" >&2; exit 2; }
done
for tool in h2load curl protoc python3 redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nghttp2-client curl protobuf-compiler python3 redis-server)" >&2; exit 2; }
done
QUORATE=$(realpath "$QUORATE"); BENCH=$(realpath "$BENCH")
[[ -n $LIMITADOR ]] && LIMITADOR=$(realpath "$LIMITADOR")
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$(mktemp -d /tmp/h2load-rls.XXXXXX)}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
RES="$OUT/results.jsonl"; : >"$RES"

wanted() { [[ ",$ONLY," == *",$1,"* ]]; }
# PIDS, cleanup on exit, free_port, wait_port, wait_line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
field() { sed -E "s/.* $1=([^ ,]*).*/\1/" <<<"$2"; } # first value of key in a ready line

{
  echo "started: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "uptime before: $(uptime)"
  echo "quorate: $QUORATE ($("$QUORATE" --version 2>/dev/null || echo '?'))"
  echo "quorate-bench: $BENCH"
  echo "limitador: ${LIMITADOR:-none}"
  echo "h2load: $(h2load --version | head -1); -c $CLIENTS -m $STREAMS -D $DURATION (warm-up run ${WARMUP}s)"
} | tee "$OUT/meta.txt"

declare -A GRPC HTTP LABEL PID
LABEL[null]="do-nothing tonic RLS server"
LABEL[lim_mem]="Limitador, in memory"
LABEL[lim_redis]="Limitador, Redis"
LABEL[lim_cached]="Limitador, redis_cached (async batches)"
LABEL[q1]="quorate, 1 node, strict"
LABEL[q3]="quorate, 3 nodes, strict (leader)"
LABEL[qredis]="quorate, --store redis://"
SERVERS=()

# --- servers ---
if wanted null; then
  port=$(free_port)
  "$BENCH" null-rls --grpc "127.0.0.1:$port" >"$OUT/null-rls.out" 2>&1 &
  PIDS+=($!); PID[null]=$!; GRPC[null]=127.0.0.1:$port; SERVERS+=(null)
fi
start_nodes() { # name count [server-arg...]
  local name=$1 count=$2; shift 2
  local extra=()
  for a in "$@"; do extra+=("--server-arg=$a"); done
  mkdir -p "$OUT/$name"
  "$BENCH" nodes --quorate "$QUORATE" --policy "$HERE/envoy/policy.yaml" --nodes "$count" \
    --work-dir "$OUT/$name" "${extra[@]}" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  PIDS+=($!)
}
wanted q1 && start_nodes q1 1
wanted q3 && start_nodes q3 3

REDIS_PORT=""
if wanted qredis || { [[ -n $LIMITADOR ]] && { wanted lim_redis || wanted lim_cached; }; }; then
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no >"$OUT/redis.log" 2>&1 &
  PIDS+=($!); wait_port "$REDIS_PORT"
  echo "redis: $(redis-server --version)" | tee -a "$OUT/meta.txt"
fi
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
if wanted qredis; then
  # Its own key prefix, so the Redis key count of each system can be told apart.
  start_nodes qredis 1 "--store=$REDIS_URL" "--store-prefix=qbench:"
fi

start_limitador() { # name storage-args...
  local name=$1; shift
  local rls http
  rls=$(free_port); http=$(free_port)
  "$LIMITADOR" --rls-ip 127.0.0.1 --rls-port "$rls" --http-ip 127.0.0.1 --http-port "$http" \
    "$HERE/envoy/limitador-limits.yaml" "$@" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!); PID[$name]=$!; GRPC[$name]=127.0.0.1:$rls
  wait_port "$rls"; SERVERS+=("$name")
}
if [[ -n $LIMITADOR ]]; then
  wanted lim_mem && start_limitador lim_mem memory
  wanted lim_redis && start_limitador lim_redis redis "$REDIS_URL"
  wanted lim_cached && start_limitador lim_cached redis_cached "$REDIS_URL"
fi

for name in q1 q3 qredis; do
  wanted "$name" || continue
  line=$(wait_line "$OUT/$name.out" "nodes ready:")
  GRPC[$name]=$(field grpc "$line"); HTTP[$name]=$(field http "$line"); PID[$name]=$(field pids "$line")
  SERVERS+=("$name")
done
[[ -n ${GRPC[null]:-} ]] && { wait_line "$OUT/null-rls.out" "quorate-bench null-rls ready" >/dev/null; }
echo "servers: $(for s in "${SERVERS[@]}"; do printf '%s=%s ' "$s" "${GRPC[$s]}"; done)" | tee -a "$OUT/meta.txt"

FRAME="$OUT/frame.bin"
"$BENCH" rls-frame --domain bench1 --descriptors 1 --key 42 --out "$FRAME"

rls_answers() { # http addr -> sum of quorate_rls_responses_total over its outcomes
  curl -s "http://$1/metrics" | awk '/^quorate_rls_responses_total/ {s += $NF} END {printf "%d", s}'
}

# One decoded answer per server: what h2load cannot check by itself.
sample() { # server -> "ok" or what was wrong
  local url="http://${GRPC[$1]}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
  curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary "@$FRAME" -D "$OUT/sample-$1.headers" -o "$OUT/sample-$1.bin" "$url" || true
  tail -c +6 "$OUT/sample-$1.bin" | protoc --decode_raw >"$OUT/sample-$1.txt" 2>&1 || true
  # grpc-status 0 in the trailers (curl -D prints them too) and overall_code (field 1) 1 = OK.
  if grep -qi '^grpc-status: *0' "$OUT/sample-$1.headers" && grep -q '^1: 1$' "$OUT/sample-$1.txt"; then
    echo ok
  else
    echo "bad (see $OUT/sample-$1.*)"
  fi
}

h2load_run() { # url seconds logfile [--log-file ...]
  local url=$1 secs=$2 log=$3; shift 3
  h2load -c "$CLIENTS" -m "$STREAMS" -t 1 -D "$secs" -d "$FRAME" \
    -H 'content-type: application/grpc' -H 'te: trailers' "$@" "$url" >"$log" 2>&1 || true
}

case_run() { # round server
  local r=$1 s=$2
  local url="http://${GRPC[$s]}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
  h2load_run "$url" "$WARMUP" "$OUT/warmup-$r-$s.txt"
  local before=-1 after=-1
  [[ -n ${HTTP[$s]:-} ]] && before=$(rls_answers "${HTTP[$s]%%,*}")
  local log="$OUT/h2load-$r-$s.txt" lat="$OUT/latency-$r-$s.tsv"
  h2load_run "$url" "$DURATION" "$log" --log-file="$lat"
  [[ -n ${HTTP[$s]:-} ]] && after=$(rls_answers "${HTTP[$s]%%,*}")
  python3 - "$log" "$lat" "$r" "$s" "$before" "$after" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES" <<'EOF'
import json, re, sys
log, lat, rnd, server, before, after, load = sys.argv[1:]
t = open(log).read()
def num(pat, conv=float):
    m = re.search(pat, t)
    return conv(m.group(1)) if m else None
lats = []
with open(lat) as f:
    for line in f:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            lats.append(int(parts[2]))
lats.sort()
def q(p):
    return lats[min(len(lats) - 1, int(p * len(lats)))] if lats else None
out = {
    "round": int(rnd), "server": server, "load": load,
    "rps": num(r"finished in [^,]+, ([\d.]+) req/s"),
    "succeeded": num(r"(\d+) succeeded", int),
    "failed": num(r"(\d+) failed", int),
    "errored": num(r"(\d+) errored", int),
    "p50_us": q(0.50), "p99_us": q(0.99), "p999_us": q(0.999),
    "mean_us": sum(lats) / len(lats) if lats else None,
}
if int(before) >= 0:
    out["server_answers"] = int(after) - int(before)
print(json.dumps(out))
EOF
  rm -f "$lat"
  echo "round $r $s: $(tail -1 "$RES")" >&2
}

VERIFY="$OUT/verify.txt"; : >"$VERIFY"
for s in "${SERVERS[@]}"; do echo "$s $(sample "$s")" | tee -a "$VERIFY"; done
for r in $(seq "$ROUNDS"); do
  for s in "${SERVERS[@]}"; do case_run "$r" "$s"; done
done
if [[ -n $REDIS_PORT ]]; then
  echo "redis keys after the run: $(redis-cli -p "$REDIS_PORT" dbsize) ($(redis-cli -p "$REDIS_PORT" --scan --pattern 'qbench:*' | wc -l) with quorate's prefix)" | tee -a "$OUT/meta.txt"
fi
echo "uptime after: $(uptime)" | tee -a "$OUT/meta.txt"

# --- the table: medians over rounds of per-round ratios ---
LABELS=$(for s in "${SERVERS[@]}"; do printf '%s\t%s\n' "$s" "${LABEL[$s]}"; done)
python3 - "$RES" "$VERIFY" "$((CLIENTS * STREAMS))" <<EOF | tee "$OUT/table.md"
import json, statistics, sys
res, verify, inflight = sys.argv[1], sys.argv[2], int(sys.argv[3])
labels = dict(l.split("\t", 1) for l in """$LABELS""".strip().splitlines())
order = list(labels)
rows = [json.loads(l) for l in open(res)]
samples = dict(l.split(" ", 1) for l in open(verify).read().strip().splitlines())
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["server"]] = r
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def ratio(s, ref, key):
    return med([rd[s][key] / rd[ref][key] for rd in by.values()
                if s in rd and ref in rd and rd[s].get(key) and rd[ref].get(key)])
def fmt(v, d=2):
    return "—" if v is None else f"{v:,.{d}f}"
refs = [x for x in ("null", "lim_mem", "lim_redis") if x in order]
print(f"h2load, {inflight} in flight, {len(by)} round(s); medians of per-round ratios.\n")
head = ["server", "req/s"] + [f"× {x}" for x in refs] + ["p50 µs", "p99 µs", "p999 µs", "p50 × null", "p99 × null", "failed", "verified"]
print("| " + " | ".join(head) + " |")
print("|---" + "|---:" * (len(head) - 2) + "|---|")
for s in order:
    rs = [rd[s] for rd in by.values() if s in rd]
    if not rs:
        continue
    checks = {"sample " + samples.get(s, "?").strip()}
    for r in rs:
        if "server_answers" in r and r.get("succeeded") is not None:
            gap = r["server_answers"] - r["succeeded"]
            checks.add("metrics ok" if 0 <= gap <= inflight else f"**metrics gap {gap}**")
    cells = [labels[s], fmt(med([r["rps"] for r in rs]), 0)]
    cells += [fmt(ratio(s, ref, "rps")) for ref in refs]
    cells += [fmt(med([r["p50_us"] for r in rs]), 0), fmt(med([r["p99_us"] for r in rs]), 0),
              fmt(med([r["p999_us"] for r in rs]), 0)]
    cells += [fmt(ratio(s, "null", "p50_us")) if "null" in order else "—",
              fmt(ratio(s, "null", "p99_us")) if "null" in order else "—"]
    cells += [str(sum((r.get("failed") or 0) + (r.get("errored") or 0) for r in rs)),
              "; ".join(sorted(checks, reverse=True))]
    print("| " + " | ".join(cells) + " |")
EOF
echo "results: $RES, table: $OUT/table.md"
