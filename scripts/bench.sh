#!/usr/bin/env bash
# Benchmarks walbust end to end against pg_recvlogical (Postgres's own
# logical replication client) on throwaway Postgres, Redis and Kafka (the
# librdkafka mock cluster), installing the Debian packages that are missing.
#
#   scripts/bench.sh            full run (a few minutes); prints the tables,
#                               writes target/bench/results.json and adds the
#                               tables to docs/benchmarks.md
#   scripts/bench.sh --quick    small sizes, to check the harness; docs left alone
#
# Other options go to walbust-bench (`scripts/bench.sh --help`), e.g.
# `--only w1,w3` or `--w3-seconds 30`. Figures are only worth comparing on
# an otherwise idle machine: the load average is recorded with them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
walbust_require_cargo
walbust_install_missing

cargo build --release -p walbust -p walbust-bench

docs=(--docs docs/benchmarks.md)
for arg in "$@"; do
    case "$arg" in
        --quick|--help|-h|--docs|--docs=*) docs=() ;;
    esac
done
exec target/release/walbust-bench --walbust target/release/walbust \
    --json target/bench/results.json "${docs[@]}" "$@"
