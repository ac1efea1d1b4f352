#!/usr/bin/env bash
# Runs every test of the project: Rust (unit + integration against a real
# PostgreSQL the harness starts itself) and, when present, the TypeScript
# client's tests. This is the README's one test command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Rust: cargo test"
cargo test --lib --bins --tests -- --test-threads=2

# `cargo test` above built the pgsat binary (with the test build's features:
# a plain `cargo build` would resolve features differently and recompile
# dependencies); build it only when it is missing.
PGSAT_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/pgsat"
[ -x "$PGSAT_BIN" ] || cargo build --bin pgsat
export PGSAT_BIN

if [ -f clients/ts/package.json ]; then
  echo "== TypeScript client: npm ci && npm test"
  (cd clients/ts && npm ci --no-audit --no-fund && npm test)
  echo "== TypeScript client: integration tests (real Postgres + $PGSAT_BIN)"
  (cd clients/ts && npm run test:integration)
fi

if [ -f examples/todo-web/package.json ]; then
  echo "== examples/todo-web: build + browser test (headless Chromium, real pgsat + Postgres)"
  (cd examples/todo-web && npm ci --no-audit --no-fund && npm run test:browser)
fi
