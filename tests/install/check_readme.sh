#!/usr/bin/env bash
# The README's compile lines for examples/hello.c, run as written (from the
# source root, with build/ standing for this build's directory), and each
# program run with no LD_LIBRARY_PATH against a broker from the build tree.
#   check_readme.sh SRC BUILD
set -euo pipefail
SRC=$1 BUILD=$2
WORK=$(mktemp -d /tmp/bb-readme-check.XXXXXX)
BROKER_PID=""
cleanup() {
    [ -z "$BROKER_PID" ] || { kill -TERM "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# scripts/run.sh builds what the README's next sections use after it: the
# shared library (the compile lines below) and bb-bench.
for t in bbclient bb-bench; do
    grep -qE "^targets=\(.*[ (]$t( |\))" "$SRC/scripts/run.sh" || fail "scripts/run.sh does not build $t"
done

# The compile lines of README.md that build from the build tree.
grep -E '^cc .*examples/hello\.c.* build/' "$SRC/README.md" >"$WORK/lines" || true
[ "$(wc -l <"$WORK/lines")" -ge 2 ] || fail "README.md has no build-tree compile lines for examples/hello.c"

"$BUILD/broker/batchbroker" -s "$WORK/bb.sock" -o "broker.plugin_dir=$BUILD/backends" \
    >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for i in $(seq 200); do
    "$BUILD/tools/bbctl" -s "$WORK/bb.sock" health >/dev/null 2>&1 && break
    [ "$i" -lt 200 ] || fail "broker did not start"
    sleep 0.05
done

n=0
while read -r line; do
    n=$((n + 1))
    # As written, from a copy of the tree's layout: examples/, include/, build/.
    mkdir -p "$WORK/tree$n"
    ln -s "$SRC/examples" "$WORK/tree$n/examples"
    ln -s "$SRC/include" "$WORK/tree$n/include"
    ln -s "$BUILD" "$WORK/tree$n/build"
    cmd=${line%%#*}
    (cd "$WORK/tree$n" && eval "$cmd") || fail "README line failed: $line"
    out=$(cd "$WORK/tree$n" && env -u LD_LIBRARY_PATH BATCHBROKER_SOCKET="$WORK/bb.sock" ./hello) \
        || fail "the program of '$line' does not run: $out"
    [ "$out" = "success: hello" ] || fail "'$line' printed '$out'"
    echo "ok: $cmd"
done <"$WORK/lines"
