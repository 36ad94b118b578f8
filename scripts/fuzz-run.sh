#!/usr/bin/env bash
# Run one libFuzzer harness for a bounded time (ctest runs this; see
# fuzz/CMakeLists.txt):
#
#   scripts/fuzz-run.sh FUZZER SEED_DIR ARTIFACT_DIR SECONDS
#
# New inputs go to a scratch corpus, never into the seed directory in the
# tree. A crash, leak, sanitizer report or timeout fails the run; libFuzzer
# saves the input that caused it in ARTIFACT_DIR (printed below). Reproduce
# with: FUZZER ARTIFACT_DIR/NAME-crash-...
set -uo pipefail
fuzzer=$1 seeds=$2 artifacts=$3 seconds=$4
name=$(basename "$fuzzer")
mkdir -p "$artifacts"
work=$(mktemp -d "${TMPDIR:-/tmp}/bb-$name-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
log="$artifacts/$name.log"
# Sanitizer reports go to the fuzzer's own log, not to test.sh's report files.
env ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$name-" "$work" "$seeds" >"$log" 2>&1
rc=$?
tail -n 15 "$log"
if [ "$rc" -ne 0 ]; then
    echo "fuzz-run: $name failed (exit $rc); full log: $log"
    for f in "$artifacts/$name-"*; do
        case $f in *.log) ;; *) [ -e "$f" ] && echo "fuzz-run: input saved: $f   (reproduce: $fuzzer $f)" ;; esac
    done
    exit 1
fi
echo "fuzz-run: $name ran ${seconds}s without a finding"
