#!/usr/bin/env bash
# Acceptance of issue 10: examples/hello.c built out of tree three ways
# (pkg-config, find_package, add_subdirectory), each run against a broker
# started from the installed binary with its installed plugins; then the
# installed Python package and bb-bench against the same broker.
#   check_consumers.sh PREFIX SRC BUILD
. "$(dirname "$0")/common.sh"

start_broker
# It found its plugins by itself, in the install, not in the build tree.
grep -q "loaded backend \"echo\" (ABI [0-9]*) from $(realpath "$LIBDIR")/batchbroker/bb_backend_echo.so" \
    "$WORK/broker.log" || fail "the installed broker did not load the installed echo plugin"
export BATCHBROKER_SOCKET="$SOCK"

run_hello() { # BINARY: must answer through the broker, with no LD_LIBRARY_PATH
    local out
    out=$(env -u LD_LIBRARY_PATH "$1") || fail "$1 failed: $out"
    [ "$out" = "success: hello" ] || fail "$1 printed '$out'"
    echo "ok: $1"
}
needs_shared_lib() { # BINARY: linked against libbatchbroker.so.MAJOR from the prefix
    readelf -d "$1" | grep -q "NEEDED.*\[libbatchbroker.so.$MAJOR\]" \
        || fail "$1 does not need libbatchbroker.so.$MAJOR"
    local loaded
    loaded=$(env -u LD_LIBRARY_PATH ldd "$1" | sed -n "s/^[[:space:]]*libbatchbroker.so.$MAJOR => \([^ ]*\) .*/\1/p")
    [ -n "$loaded" ] && [ "$(realpath "$loaded")" = "$(realpath "$LIBDIR/libbatchbroker.so.$MAJOR")" ] \
        || fail "$1 does not load the installed library: $(ldd "$1")"
}

# 1. pkg-config
[ "$(pkg-config --modversion batchbroker)" = "$VERSION" ] || fail "pkg-config version"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror "$SRC/examples/hello.c" -o "$WORK/hello-pkgconfig" \
    $(pkg-config --cflags --libs batchbroker) \
    -Wl,-rpath,"$(pkg-config --variable=libdir batchbroker)"
needs_shared_lib "$WORK/hello-pkgconfig"
run_hello "$WORK/hello-pkgconfig"

# 2. find_package, shared and static
mkdir -p "$WORK/fp"
cp "$SRC/examples/hello.c" "$WORK/fp/"
cat >"$WORK/fp/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.16)
project(hello_find_package C)
find_package(batchbroker $VERSION EXACT REQUIRED)
if(NOT EXISTS "\${batchbroker_PLUGIN_DIR}/bb_backend_echo.so")
  message(FATAL_ERROR "batchbroker_PLUGIN_DIR is \${batchbroker_PLUGIN_DIR}")
endif()
add_executable(hello hello.c)
target_link_libraries(hello PRIVATE batchbroker::client)
add_executable(hello_static hello.c)
target_link_libraries(hello_static PRIVATE batchbroker::client_static)
CMAKE
cmake -S "$WORK/fp" -B "$WORK/fp/build" -DCMAKE_PREFIX_PATH="$PREFIX" >/dev/null
cmake --build "$WORK/fp/build" >/dev/null
needs_shared_lib "$WORK/fp/build/hello"
run_hello "$WORK/fp/build/hello"
if readelf -d "$WORK/fp/build/hello_static" | grep -q libbatchbroker; then
    fail "hello_static links libbatchbroker dynamically"
fi
run_hello "$WORK/fp/build/hello_static"

# 3. add_subdirectory of the source tree (only what hello needs is built)
mkdir -p "$WORK/sub"
cp "$SRC/examples/hello.c" "$WORK/sub/"
cat >"$WORK/sub/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.25)
project(hello_add_subdirectory C)
add_subdirectory("$SRC" batchbroker EXCLUDE_FROM_ALL)
add_executable(hello hello.c)
target_link_libraries(hello PRIVATE batchbroker::client)
CMAKE
cmake -S "$WORK/sub" -B "$WORK/sub/build" >"$WORK/sub.log" 2>&1 \
    || { cat "$WORK/sub.log" >&2; fail "add_subdirectory configure"; }
cmake --build "$WORK/sub/build" --target hello >"$WORK/sub.log" 2>&1 \
    || { cat "$WORK/sub.log" >&2; fail "add_subdirectory build"; }
[ ! -e "$WORK/sub/build/batchbroker/broker/batchbroker" ] || fail "EXCLUDE_FROM_ALL built the broker"
run_hello "$WORK/sub/build/hello"

# 4. the installed Python package finds the installed library by itself
PYTHONPATH="$PYDIR" /usr/bin/python3 - "$PREFIX" <<'PY' || fail "installed Python package"
import os, sys
import batchbroker as bb
prefix = os.path.realpath(sys.argv[1])
assert os.path.realpath(bb.library_path).startswith(prefix + "/"), bb.library_path
with bb.Client() as c:
    assert c.model("echo").infer(b"python") == b"python"
print("ok: python", bb.__version__, bb.library_path)
PY

# 5. the installed bb-bench against the installed broker
"$PREFIX/bin/bb-bench" --socket "$SOCK" --duration 0.3 --warmup 0 --concurrency 8 \
    >"$WORK/bench.out" 2>&1 || { cat "$WORK/bench.out" >&2; fail "installed bb-bench"; }
echo "ok: bb-bench"

stop_broker
echo "all consumers passed"
