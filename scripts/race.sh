#!/usr/bin/env bash
# The fill race and replica lag, measured: readers fill a Redis cache
# (plain SET, or walbust's fenced fills) while writers update 50 hot rows
# and walbust invalidates them (at commit, or once a streaming replica that
# applies commits 30 ms late replayed them); after every round it counts
# the cached entries left stale. Method and results: docs/consistency.md.
#
#   scripts/race.sh             full run (20 rounds per mode; a few minutes);
#                               replaces the table in docs/consistency.md
#   scripts/race.sh --quick     3 rounds per mode; docs left alone
#
# Other options go to walbust-race (`scripts/race.sh --help`), e.g.
# `--rounds 40`, `--apply-delay-ms 100`, `--only fenced/replica/replica-aware`.
# Exit status: 0 done, 1 a --check failed, 2 the run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
walbust_require_cargo
walbust_install_missing

cargo build --release -p walbust -p walbust-race

args=(--docs docs/consistency.md --check)
rest=()
for arg in "$@"; do
    case "$arg" in
        --quick) args=(--rounds 3 --check) ;;
        --help|-h) args=() ; rest+=("$arg") ;;
        *) rest+=("$arg") ;;
    esac
done
exec target/release/walbust-race --walbust target/release/walbust "${args[@]}" "${rest[@]}"
