#!/usr/bin/env bash
# Build batchbroker, start a broker on a private socket with the default
# configuration (it serves the model "echo"), run the bb-demo workload against
# it from several client processes, print what it measured, and stop the
# broker with SIGTERM.
#
#   scripts/run.sh                  # as root on Debian 12: installs what is missing
#   scripts/run.sh -d 10 -p 8       # extra arguments go to bb-demo (see bb-demo -h)
#
# Environment: BUILD_DIR (default build/), JOBS (default: nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/deps.sh
. "$ROOT/scripts/deps.sh"

BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc)}"

bb_install_deps

cmake -S "$ROOT" -B "$BUILD_DIR" -DBB_WERROR=ON
# What the demo and the README's next steps use (the client library, shared
# and static, bb-bench, bb-hello), not the tests: a test still being written
# must not stop the demo.
cmake --build "$BUILD_DIR" --parallel "$JOBS" --target batchbroker bbctl bb-demo bb-hello \
    bbclient bbclient_static bb-bench

BROKER="$BUILD_DIR/broker/batchbroker"
BBCTL="$BUILD_DIR/tools/bbctl"
DEMO="$BUILD_DIR/examples/bb-demo"

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

echo "run.sh: starting $BROKER on $SOCK"
"$BROKER" --socket "$SOCK" >"$LOG" 2>&1 &
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
"$DEMO" -s "$SOCK" -m echo "$@" || demo_rc=$?
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
