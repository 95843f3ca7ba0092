#!/usr/bin/env bash
# Runs every test quorate has: formatting, lints, unit, property, integration and
# end-to-end tests (real processes on loopback). This is the command README and CI use.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== no module imports a module that imports it back (server/src: files, then folders)"
python3 scripts/module-cycles.py server/src
python3 scripts/module-cycles.py server/src 1

echo "== build the quorate binary (the end-to-end tests run it)"
cargo build -p quorate-server --bin quorate

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

echo "== python end-to-end (grpcio clients from Envoy's rls.proto and external_auth.proto)"
bash tests/python/run.sh

echo "== proxies end-to-end (real nginx and Caddy in front of quorate's forward-auth)"
bash tests/proxies/run.sh

echo "== dashboard in headless Chromium (WebDriver) against a live 3-node cluster"
bash tests/dashboard/run.sh
