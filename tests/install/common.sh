# shellcheck shell=bash
# Sourced by the install checks: the installed tree's paths, a private work
# directory removed on exit, and a broker started from the installed binary.
#   PREFIX SRC BUILD are the first three arguments of every check.
set -euo pipefail
PREFIX=$1 SRC=$2 BUILD=$3
WORK=$(mktemp -d /tmp/bb-install-check.XXXXXX)
BROKER_PID=""
unset BATCHBROKER_PLUGIN_DIR BATCHBROKER_SOCKET BATCHBROKER_LIB LD_LIBRARY_PATH

cleanup() {
    local rc=$?
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -f "$WORK/broker.log" ]; then
        echo "--- broker log ---" >&2
        cat "$WORK/broker.log" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# The project's version, from the one place it is set.
VERSION=$(sed -n 's/^project(batchbroker VERSION \([0-9.]*\).*/\1/p' "$SRC/CMakeLists.txt")
MAJOR=${VERSION%%.*}
[ -n "$VERSION" ] || fail "no version in $SRC/CMakeLists.txt"

# The library directory of the install (lib, lib64 or lib/<arch>).
LIBDIR=$(dirname "$(find "$PREFIX" -name "libbatchbroker.so.$MAJOR" | head -n1)")
[ -d "$LIBDIR" ] || fail "no libbatchbroker.so.$MAJOR under $PREFIX"
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig"
PYDIR="$PREFIX/lib/python3/dist-packages"

# start_broker [ARGS...]: the installed broker, no plugin directory given,
# logging at debug (it names the plugin files it loads) to $WORK/broker.log.
SOCK="$WORK/bb.sock"
start_broker() {
    "$PREFIX/sbin/batchbroker" -s "$SOCK" -o broker.log_level=debug "$@" \
        >"$WORK/broker.log" 2>&1 &
    BROKER_PID=$!
    local i
    for i in $(seq 200); do
        "$PREFIX/bin/bbctl" -s "$SOCK" health >/dev/null 2>&1 && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || fail "the installed broker exited at start-up"
        sleep 0.05
    done
    fail "the installed broker did not answer within 10 s"
}

stop_broker() {
    kill -TERM "$BROKER_PID"
    local rc=0
    wait "$BROKER_PID" || rc=$?
    BROKER_PID=""
    [ "$rc" -eq 0 ] || fail "the broker exited with $rc after SIGTERM"
}
