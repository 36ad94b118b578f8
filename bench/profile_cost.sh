#!/bin/sh
# What the profiler costs the dispatcher, in instructions (callgrind): an
# inline echo broker (instances = 0) serves batches of exactly K requests
# (max_batch_size = K, a 10 s max_wait_us, and one bb-bench client with K in
# flight, so every batch waits for its K-th request), once with
# `profile = off` and once timing every batch (`profile = on`,
# `profile_max_rate = 0`). Instruction counts do not move with the load of
# the machine, unlike the throughput runs; they count work, not time (a
# clock read is a few instructions but tens of cycles).
#
# usage: bench/profile_cost.sh [-b BUILD_DIR] [-k K]... [-n SECONDS] [-B BROKER]
#   -b  build directory (default build)
#   -k  batch size; repeatable (default: 2 and 8)
#   -n  seconds of load per run (default 3; callgrind runs about 50x slower)
#   -B  another broker binary to measure with profile = off only (e.g. a
#       build of main, to see what the statistics cost without the profiler)
# Prints, per K and mode, the requests served and the instructions per
# request in the broker's per-batch work (bb__executor_submit: the inline
# run, the reap and the statistics) and in its intake (bb__intake_drain,
# idle polls of the rings included). Needs valgrind.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
ks=
secs=3
other=
while getopts b:k:n:B: opt; do
    case $opt in
    b) build=$(cd "$OPTARG" && pwd) ;;
    k) ks="$ks $OPTARG" ;;
    n) secs=$OPTARG ;;
    B) other=$OPTARG ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
    esac
done
ks=${ks:-2 8}
command -v valgrind >/dev/null || { echo "profile_cost.sh: needs valgrind" >&2; exit 2; }
broker=$build/broker/batchbroker
bench=$build/bench/bb-bench
bbctl=$build/tools/bbctl
for f in "$broker" "$bench" "$bbctl"; do
    [ -x "$f" ] || { echo "profile_cost.sh: $f not built" >&2; exit 2; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Inclusive instructions of function $2 in callgrind output $1.
incl() {
    callgrind_annotate --inclusive=yes "$1" 2>/dev/null |
        awk -v f=":$2 " 'index($0, f) { gsub(",", "", $1); print $1; exit }'
}

# run BINARY K MODE: one broker under callgrind, one client; prints a row.
run() {
    bin=$1 k=$2 mode=$3
    sock=$tmp/bb.sock
    out=$tmp/cg.out
    rm -f "$sock" "$out"
    opts="-o broker.profile=$mode -o broker.profile_max_rate=0"
    [ "$bin" = "$broker" ] || opts= # a build without those keys
    # shellcheck disable=SC2086
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" \
        -o broker.socket="$sock" -o broker.plugin_dir="$build/backends" \
        -o broker.log_level=warn -o broker.spin_us=1000000 $opts \
        -o model.echo.instances=0 -o model.echo.max_batch_size="$k" \
        -o model.echo.max_wait_us=10000000 >"$tmp/broker.log" 2>&1 &
    pid=$!
    i=0
    while [ ! -S "$sock" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    "$bench" --socket "$sock" --concurrency "$k" --wait spin --duration "$secs" \
        --warmup 0.5 >/dev/null 2>&1 || true
    # Every request this broker served, warm-up included, as callgrind did.
    n=$("$bbctl" --socket "$sock" stats | awk 'NR == 2 { print $3 }')
    kill -TERM "$pid"
    wait "$pid" || true
    b=$(incl "$out" bb__executor_submit)
    in=$(incl "$out" bb__intake_drain)
    awk -v k="$k" -v m="$mode" -v n="$n" -v b="$b" -v i="$in" -v w="$4" 'BEGIN {
        printf "%-4s %-10s %-5s %10d %14.1f %14.1f\n", k, w, m, n, n ? b / n : 0, n ? i / n : 0 }'
}

printf '%-4s %-10s %-5s %10s %14s %14s\n' K broker mode requests "batch work/req" "intake/req"
for k in $ks; do
    [ -z "$other" ] || run "$other" "$k" off other
    run "$broker" "$k" off this
    run "$broker" "$k" on this
done
