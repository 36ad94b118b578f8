#!/usr/bin/env bash
# Build batchbroker, start a broker on a private socket serving a real model
# (a 784-256-10 network trained on Fashion-MNIST at build time, run by the
# blas backend), classify the 10,000 test images through it from several
# client processes (bb-classify: accuracy, throughput, latency, batch size),
# and stop the broker with SIGTERM.
#
#   scripts/run.sh                  # as root on Debian 12: installs what is missing
#   scripts/run.sh -p 8 -k 32       # extra arguments go to bb-classify (bb-classify -h)
#   scripts/run.sh --echo -d 10     # the echo workload instead (bb-demo; bb-demo -h)
#
# Without OpenBLAS, PyTorch or the dataset (not Debian 12, no root) the
# Fashion-MNIST demo cannot run; run.sh says why and runs the echo one.
#
# Environment: BUILD_DIR (default build/), JOBS (default: nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/deps.sh
. "$ROOT/scripts/deps.sh"

BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc)}"

DEMO_KIND=fmnist
if [ "${1:-}" = --echo ]; then
    DEMO_KIND=echo
    shift
fi

bb_install_deps

cmake -S "$ROOT" -B "$BUILD_DIR" -DBB_WERROR=ON
# What the demo and the README's next steps use (the client library, shared
# and static, bb-bench, bb-hello), not the tests: a test still being written
# must not stop the demo.
targets=(batchbroker bbctl bb-demo bb-hello bbclient bbclient_static bb-bench)
if [ "$DEMO_KIND" = fmnist ]; then
    # The blas backend and the trained model exist as targets only when
    # CMake found OpenBLAS, PyTorch and the dataset (its output says why not).
    available=$(cmake --build "$BUILD_DIR" --target help)
    if grep -q bb_backend_blas <<<"$available" && grep -q bb_fmnist_model <<<"$available"; then
        targets+=(bb-classify bb_backend_blas bb_fmnist_model)
    else
        echo "run.sh: the Fashion-MNIST demo needs the blas backend and the trained model," \
             "which this build lacks (see the CMake lines above); running the echo demo" >&2
        DEMO_KIND=echo
    fi
fi
cmake --build "$BUILD_DIR" --parallel "$JOBS" --target "${targets[@]}"

BROKER="$BUILD_DIR/broker/batchbroker"
BBCTL="$BUILD_DIR/tools/bbctl"
DEMO="$BUILD_DIR/examples/bb-demo"
CLASSIFY="$BUILD_DIR/examples/bb-classify"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/batchbroker-run.XXXXXX")"
SOCK="$WORK/bb.sock"
LOG="$WORK/broker.log"
BROKER_PID=""

stop_broker() {
    # SIGTERM: the broker stops intake, finishes running batches, fails what
    # is queued, removes its socket and exits 0. SIGKILL only if it hangs.
    local pid="$BROKER_PID" rc=0 i
    [ -n "$pid" ] || return 0
    BROKER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: broker did not stop within 10 s of SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    return "$rc"
}

# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_broker || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_log() {
    echo "--- broker log ($LOG) ---"
    sed 's/^/  /' "$LOG" || true
    echo "---"
}

CONFIG="$WORK/broker.ini"
if [ "$DEMO_KIND" = fmnist ]; then
    cat >"$CONFIG" <<EOF
; The demo model: 784-256-10, trained by scripts/train_fmnist.py at build time.
[model.fmnist]
backend = blas
param.weights = $BUILD_DIR/models/fmnist.bbdense
max_batch_size = 64
max_wait_us = 500
EOF
    sed 's/^/run.sh: model: /' "$BUILD_DIR/models/fmnist.txt" 2>/dev/null || true
else
    # Nothing configured: the broker's default, one model "echo".
    : >"$CONFIG"
fi

echo "run.sh: starting $BROKER on $SOCK"
"$BROKER" --config "$CONFIG" --socket "$SOCK" >"$LOG" 2>&1 &
BROKER_PID=$!

# Wait until it answers on its socket.
for i in $(seq 100); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        wait "$BROKER_PID" || true
        BROKER_PID=""
        echo "run.sh: the broker exited during start-up" >&2
        show_log >&2
        exit 1
    fi
    if "$BBCTL" --socket "$SOCK" health >/dev/null 2>&1; then
        break
    fi
    if [ "$i" -eq 100 ]; then
        echo "run.sh: the broker did not answer within 10 s" >&2
        show_log >&2
        exit 1
    fi
    sleep 0.1
done
echo "run.sh: broker is up (pid $BROKER_PID)"
echo

demo_rc=0
if [ "$DEMO_KIND" = fmnist ]; then
    "$CLASSIFY" -s "$SOCK" -m fmnist "$@" || demo_rc=$?
else
    "$DEMO" -s "$SOCK" -m echo "$@" || demo_rc=$?
fi
echo
"$BBCTL" --socket "$SOCK" stats || true
echo

echo "run.sh: stopping the broker (SIGTERM)"
broker_rc=0
stop_broker || broker_rc=$?
if [ -e "$SOCK" ]; then
    echo "run.sh: the broker left its socket behind" >&2
    broker_rc=1
fi
show_log
echo "run.sh: broker exited with status $broker_rc"

if [ "$demo_rc" -ne 0 ]; then
    echo "run.sh: the demo failed (status $demo_rc)" >&2
    exit "$demo_rc"
fi
exit "$broker_rc"
