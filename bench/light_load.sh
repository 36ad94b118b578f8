#!/bin/sh
# Issue 12's light-load acceptance: with the default configuration, one
# client with one request in flight, the round trip's p99 is within 1.5x of
# the same broker with max_wait_us = 0. Runs bench/scenarios/light_default.ini
# and light_nowait.ini in turn, ROUNDS times each, with spinning and with
# sleeping clients, and prints p50 / p99 of every run and the p99 ratio of
# each pair (run one after the other, so that a busy machine disturbs both).
# The client runs on CPU 1, the broker on CPU 0 (as echo_spin does): unpinned,
# where the spinning client lands decides between two modes of p50.
#
# usage: bench/light_load.sh [-b BUILD_DIR] [-o OUT_DIR] [-r ROUNDS] [-q]
#   -b  build directory with bench/bb-bench and broker/batchbroker (default build)
#   -o  JSON and text go here (default BUILD_DIR/bench-light)
#   -r  pairs of runs per wait mode (default 3)
#   -q  quick: 2 s runs after 0.5 s warm-up
# Needs jq. Exits non-zero if a run failed.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
out=
rounds=3
quick=
while getopts b:o:r:q opt; do
    case $opt in
    b) build=$(cd "$OPTARG" && pwd) ;;
    o) out=$OPTARG ;;
    r) rounds=$OPTARG ;;
    q) quick="--duration 2 --warmup 0.5" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
    esac
done
case $rounds in
'' | *[!0-9]* | 0) echo "light_load.sh: -r $rounds: expected a positive number" >&2; exit 2 ;;
esac
out=${out:-$build/bench-light}
bench=$build/bench/bb-bench
broker=$build/broker/batchbroker
for f in "$bench" "$broker"; do
    [ -x "$f" ] || { echo "light_load.sh: $f not built" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "light_load.sh: needs jq" >&2; exit 2; }
mkdir -p "$out"

run() { # $1 scenario, $2 wait mode, $3 round -> "p50 p99 queue-wait" on stdout
    json=$out/$1-$2-$3.json
    # shellcheck disable=SC2086 # $quick is words on purpose
    "$bench" --spawn-broker "$root/bench/scenarios/$1.ini" --broker-bin "$broker" \
        --wait "$2" --concurrency 1 --cpus 1 --server-cpus 0 --duration 5 --warmup 1 $quick \
        --json "$json" \
        </dev/null >"$out/$1-$2-$3.txt" 2>&1 || return 1
    jq -r '"\(.latency_us.p50) \(.latency_us.p99) \(.broker_stats.avg_queue_wait_us)"' "$json"
}

failed=0
# "queue wait": the broker's mean time from reading a request to dispatching
# it (bb_model_stats.avg_queue_wait_us). A request held for company adds its
# hold: one in a thousand held for max_wait_us adds 1 µs to the mean.
echo "| clients wait | round | default p50 / p99 µs | max_wait_us = 0 p50 / p99 µs | p99 ratio | queue wait µs, default / 0 |"
echo "|---|---:|---:|---:|---:|---:|"
for wait in spin sleep; do
    i=1
    while [ "$i" -le "$rounds" ]; do
        if d=$(run light_default "$wait" "$i") && z=$(run light_nowait "$wait" "$i"); then
            echo "$wait $i $d $z" | awk '{ printf "| %s | %s | %.2f / %.2f | %.2f / %.2f | %.2fx | %.3f / %.3f |\n",
                $1, $2, $3, $4, $6, $7, $4 / $7, $5, $8 }'
        else
            echo "| $wait | $i | failed (see $out) | | | |"
            failed=1
        fi
        i=$((i + 1))
    done
done
echo "light_load.sh: results in $out" >&2
exit $failed
