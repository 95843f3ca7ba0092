# Shell helpers the benchmark scripts share (bench/envoy.sh, bench/h2load-rls.sh):
# background processes stopped on exit, free ports, and waiting for a port or a log line.
# Sourced, not run.

# Every background process a script starts goes into PIDS; all are stopped on exit.
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_line() { # file prefix -> the line
  for _ in $(seq 600); do
    if grep -q "^$2" "$1" 2>/dev/null; then grep -m1 "^$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "no '$2' in $1" >&2; cat "$1" >&2; return 1
}
