#!/usr/bin/env bash
# Build batchbroker from scratch and run the test suite.
#
#   scripts/test.sh                 # as root on Debian 12: installs what is missing
#   BUILD_DIR=/tmp/bb scripts/test.sh
#
# Environment: BUILD_DIR (default build/), JOBS (default: nproc),
# TEST_TIMEOUT (seconds per test, default 600), CTEST_ARGS (extra ctest
# arguments, e.g. "-R test_ring").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/deps.sh
. "$ROOT/scripts/deps.sh"

BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc)}"
TEST_TIMEOUT="${TEST_TIMEOUT:-600}"

bb_install_deps

# A fresh configuration every time: a stale cache hides missing dependencies.
# Only ever delete a directory that is empty or holds a CMake build.
if [ -e "$BUILD_DIR" ]; then
    if [ -f "$BUILD_DIR/CMakeCache.txt" ] || [ -z "$(ls -A "$BUILD_DIR")" ]; then
        rm -rf "$BUILD_DIR"
    else
        echo "test.sh: $BUILD_DIR exists and is not a CMake build directory; not deleting it" >&2
        exit 1
    fi
fi
configure_log=$(cmake -S "$ROOT" -B "$BUILD_DIR" -DBB_WERROR=ON -DBB_BUILD_TESTS=ON 2>&1) || {
    printf '%s\n' "$configure_log"
    exit 1
}
printf '%s\n' "$configure_log"
cmake --build "$BUILD_DIR" --parallel "$JOBS"

cd "$BUILD_DIR"
rc=0
# shellcheck disable=SC2086
ctest --output-on-failure --timeout "$TEST_TIMEOUT" ${CTEST_ARGS:-} || rc=$?
# What this machine could not build or run, and why (optional backends, the
# demo model, the GPU): the parts of the build that are missing, and the
# tests that skipped.
skipped=$(printf '%s\n' "$configure_log" | grep -E 'not built|not trained|not found in' || true)
if [ -n "$skipped" ]; then
    echo "test.sh: skipped parts of this build:"
    printf '%s\n' "$skipped" | sed 's/^-- /  /'
fi
if [ -f Testing/Temporary/LastTest.log ]; then
    skipped=$(grep -hE '^(SKIPPED \[|SKIP: )' Testing/Temporary/LastTest.log | sort -u || true)
    if [ -n "$skipped" ]; then
        echo "test.sh: skipped tests, and why:"
        printf '%s\n' "$skipped" | sed 's/^/  /'
    fi
fi
exit "$rc"
