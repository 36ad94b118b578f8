#!/usr/bin/env bash
# Configure-time options: -DBB_BUILD_CUDA=ON on a machine without a CUDA
# compiler (here: CUDACXX naming none) stops the configure with a message
# instead of building without the backend; and a client-only configure
# (-DBB_BUILD_BROKER=OFF) needs none of the broker's libraries and builds the
# library.
#   check_cmake_options.sh SRC
set -euo pipefail
SRC=$1
WORK=$(mktemp -d /tmp/bb-cmake-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

if CUDACXX=/nonexistent/nvcc cmake -S "$SRC" -B "$WORK/cuda" -DBB_BUILD_CUDA=ON \
        -DBB_BUILD_TESTS=OFF >"$WORK/cuda.log" 2>&1; then
    fail "-DBB_BUILD_CUDA=ON configured without a CUDA compiler"
fi
grep -q "BB_BUILD_CUDA=ON but no CUDA compiler" "$WORK/cuda.log" \
    || { cat "$WORK/cuda.log" >&2; fail "no message for BB_BUILD_CUDA"; }
echo "ok: -DBB_BUILD_CUDA=ON without a CUDA compiler is refused with a message"

cmake -S "$SRC" -B "$WORK/client" -DBB_BUILD_BROKER=OFF -DBB_BUILD_TESTS=OFF -DBB_BUILD_BENCH=OFF \
    -DBB_BUILD_EXAMPLES=OFF >"$WORK/client.log" 2>&1 || { cat "$WORK/client.log" >&2; fail "client-only configure"; }
grep -Eq "liburing|libnuma|inih|libxxhash" "$WORK/client/CMakeCache.txt" \
    && fail "a client-only configure looked for the broker's libraries"
cmake --build "$WORK/client" --target bbclient bbclient_static >"$WORK/client.log" 2>&1 \
    || { cat "$WORK/client.log" >&2; fail "client-only build"; }
echo "ok: client-only configure and build"
