#!/usr/bin/env bash
# Runs walbust end to end on throwaway local Postgres, Redis and Kafka and
# shows what it invalidates, live. Ctrl-C stops it and removes everything.
# Arguments go to `walbust demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
walbust_require_cargo
walbust_install_missing
exec cargo run --quiet --bin walbust -- demo "$@"
