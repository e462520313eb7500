#!/usr/bin/env bash
# Runs walbust's whole test suite against real, throwaway Postgres
# (wal_level=logical), redis-server, Varnish (with vmod xkey) and a Kafka
# broker (librdkafka's mock cluster), installing the Debian packages that are missing. The Node
# subscriber package in clients/node is installed and tested first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
walbust_require_cargo
walbust_install_missing
walbust_install_pg18

# The Node subscriber package: its own tests (node:test), and the build that
# tests/node_subscriber.rs runs against walbust. No install scripts run.
(cd clients/node && npm ci --ignore-scripts --no-audit --no-fund && npm test)
# The example warmer (examples/warmer), run by tests/examples.rs.
(cd examples/warmer && npm ci --ignore-scripts --no-audit --no-fund)

if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --profile ci "$@"
else
    exec cargo test --workspace "$@"
fi
