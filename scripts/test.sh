#!/usr/bin/env bash
# Build batchbroker from scratch and run everything CI runs, in two trees:
#
#  1. $BUILD_DIR (default build/): gcc, warnings as errors, every test (ctest),
#     the ThreadSanitizer stress test included.
#  2. $SAN_BUILD_DIR (default build-san/): clang with AddressSanitizer and
#     UndefinedBehaviorSanitizer in every target (-DBB_SANITIZE=address,undefined)
#     and the libFuzzer harnesses (-DBB_FUZZ=ON): the whole Criterion suite
#     again against the sanitized broker and client library, then each fuzz
#     harness for FUZZ_SECONDS. Any sanitizer report, in a test or in a broker
#     it started, fails the run (they are written to SAN_BUILD_DIR/sanitizer-logs
#     and printed); a fuzzer's finding is kept in SAN_BUILD_DIR/fuzz-artifacts/.
#
#   scripts/test.sh                 # as root on Debian 12: installs what is missing
#   BUILD_DIR=/tmp/bb scripts/test.sh
#
# Environment: BUILD_DIR, SAN_BUILD_DIR, JOBS (default: nproc), TEST_TIMEOUT
# (seconds per test, default 600), CTEST_ARGS (extra ctest arguments for both
# trees, e.g. "-R test_ring"), SANITIZE=0 (skip the second tree),
# FUZZ_SECONDS (per harness, default 60; 0 skips fuzzing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/deps.sh
. "$ROOT/scripts/deps.sh"

BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
SAN_BUILD_DIR="${SAN_BUILD_DIR:-$ROOT/build-san}"
JOBS="${JOBS:-$(nproc)}"
TEST_TIMEOUT="${TEST_TIMEOUT:-600}"
SANITIZE="${SANITIZE:-1}"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"

if [ "$SANITIZE" = 1 ]; then
    bb_install_deps "${BB_SAN_DEPS[@]}"
else
    bb_install_deps
fi

# A fresh configuration every time: a stale cache hides missing dependencies.
# Only ever delete a directory that is empty or holds a CMake build.
fresh_dir() {
    if [ -e "$1" ]; then
        if [ -f "$1/CMakeCache.txt" ] || [ -z "$(ls -A "$1")" ]; then
            rm -rf "$1"
        else
            echo "test.sh: $1 exists and is not a CMake build directory; not deleting it" >&2
            exit 1
        fi
    fi
}

start=$SECONDS
fresh_dir "$BUILD_DIR"
configure_log=$(cmake -S "$ROOT" -B "$BUILD_DIR" -DBB_WERROR=ON -DBB_BUILD_TESTS=ON 2>&1) || {
    printf '%s\n' "$configure_log"
    exit 1
}
printf '%s\n' "$configure_log"
cmake --build "$BUILD_DIR" --parallel "$JOBS"
rc=0
# shellcheck disable=SC2086
(cd "$BUILD_DIR" && ctest --output-on-failure --timeout "$TEST_TIMEOUT" ${CTEST_ARGS:-}) || rc=$?
# What this machine could not build or run, and why (optional backends, the
# demo model, the GPU): the parts of the build that are missing, and the
# tests that skipped.
# A CMake warning (the Python and command-line tests without numpy or pytest)
# comes wrapped over several lines, up to a blank one: all of them.
skipped=$(printf '%s\n' "$configure_log" | awk '
    /^CMake Warning/ { warning = 1; next }
    warning && /^$/ { warning = 0; next }
    warning || /not built|not trained|not found in/')
if [ -n "$skipped" ]; then
    echo "test.sh: skipped parts of this build:"
    printf '%s\n' "$skipped" | sed 's/^-- /  /'
fi
# Skip reasons as each kind of test prints them: Criterion's [SKIP] (the
# suites run --verbose), pytest -rs, and the probes' own lines.
last_log="$BUILD_DIR/Testing/Temporary/LastTest.log"
if [ -f "$last_log" ]; then
    skipped=$(grep -hE '^(\[SKIP\] |SKIPPED \[|SKIPPED: |SKIP: |skipped: )' "$last_log" | sort -u || true)
    if [ -n "$skipped" ]; then
        echo "test.sh: skipped tests, and why:"
        printf '%s\n' "$skipped" | sed 's/^/  /'
    fi
fi

echo "test.sh: gcc tree built and tested in $((SECONDS - start)) s"

if [ "$SANITIZE" != 1 ]; then
    echo "test.sh: SANITIZE=$SANITIZE: the sanitizer tree and the fuzzers were skipped"
    exit "$rc"
fi
start=$SECONDS
fresh_dir "$SAN_BUILD_DIR"
fuzz=ON
[ "$FUZZ_SECONDS" -gt 0 ] || fuzz=OFF
# The optional backends are the gcc tree's business: libtorch and CUDA are not
# instrumented, and the broker's own code is what this tree is for.
CC=clang CXX=clang++ cmake -S "$ROOT" -B "$SAN_BUILD_DIR" -DBB_WERROR=ON -DBB_BUILD_TESTS=ON \
    -DBB_SANITIZE=address,undefined -DBB_FUZZ=$fuzz -DBB_FUZZ_SECONDS="$FUZZ_SECONDS" \
    -DBB_BUILD_BLAS=OFF -DBB_BUILD_TORCH=OFF -DBB_BUILD_CUDA=OFF
cmake --build "$SAN_BUILD_DIR" --parallel "$JOBS"
logs="$SAN_BUILD_DIR/sanitizer-logs"
mkdir -p "$logs"
# Every process the suites start, brokers included, writes its reports to
# $logs; reports are fatal (-fno-sanitize-recover, halt_on_error).
export ASAN_OPTIONS="log_path=$logs/asan:detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="log_path=$logs/ubsan:print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp:print_suppressions=0"
# shellcheck disable=SC2086
(cd "$SAN_BUILD_DIR" && ctest --output-on-failure --timeout "$TEST_TIMEOUT" ${CTEST_ARGS:-}) || rc=$?
reports=$(grep -l -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$logs"/* 2>/dev/null || true)
if [ -n "$reports" ]; then
    for f in $reports; do
        echo "==== $f"
        cat "$f"
    done
    echo "test.sh: sanitizer reports above (in $logs)" >&2
    rc=1
fi
echo "test.sh: sanitizer tree built and tested in $((SECONDS - start)) s"
exit "$rc"
