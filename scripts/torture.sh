#!/usr/bin/env bash
# Fault-injection ("torture") run of walbust on throwaway Postgres 18 (a
# primary and a failover standby), Redis and Kafka: kills, SIGTERMs, Postgres
# crashes and failovers, standby takeovers, walsender terminations, schema
# and slot changes and sink outages at random moments, checking that every
# committed change was invalidated. Method and results: docs/reliability.md.
#
#   scripts/torture.sh --quick        the test suite's short run (about a minute)
#   scripts/torture.sh --cycles 40    a medium run (minutes)
#   scripts/torture.sh --full         the acceptance run (about 1.5 hours; release build)
#
# Other options go to walbust-torture (--seed, --rate, --only KIND, --keep-going,
# ...; see `walbust-torture --help`). --release / --debug choose the build
# (default: debug, release for --full). The results table is appended to
# docs/reliability.md (not for --quick); walbust's logs, one per start, stay in
# target/torture/<time>/. Exit status: 0 clean, 1 finding, 2 the run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
walbust_require_cargo
walbust_install_missing
walbust_install_pg18

export WALBUST_TORTURE_COMMAND="scripts/torture.sh $*"
profile=""
mode=""
append=yes
scratch=yes
args=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        --debug) profile=debug ;;
        *)
            case "$arg" in
                --quick) mode=quick ;;
                --full) mode=full ;;
                --append|--append=*) append=no ;;
                --scratch|--scratch=*) scratch=no ;;
            esac
            args+=("$arg")
            ;;
    esac
done
if [ -z "$profile" ]; then
    if [ "$mode" = full ]; then profile=release; else profile=debug; fi
fi
if [ "$mode" = quick ]; then append=no; fi

if [ "$profile" = release ]; then
    cargo build --release -p walbust -p walbust-torture
else
    cargo build -p walbust -p walbust-torture
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"

if [ "$append" = yes ]; then args+=(--append docs/reliability.md); fi
if [ "$scratch" = yes ]; then
    args+=(--scratch "${CARGO_TARGET_DIR:-target}/torture/$(date -u +%Y%m%dT%H%M%SZ)")
fi
exec "$bin/walbust-torture" --walbust "$bin/walbust" "${args[@]}"
