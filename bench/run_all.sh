#!/bin/sh
# Runs every bench/scenarios/*.ini and regenerates the measured tables in
# docs/performance.md (between the "run_all.sh: begin/end" markers). Each
# "; bb-bench: ARGS" line of a scenario is one bb-bench run with
# --spawn-broker SCENARIO. Plots (SVG) with gnuplot when it is installed.
#
# usage: bench/run_all.sh [-b BUILD_DIR] [-o OUT_DIR] [-s SCENARIO] [-q] [-n]
#   -b  build directory with bench/bb-bench and broker/batchbroker (default build)
#   -o  where the JSON, text and plots go (default BUILD_DIR/bench-results)
#   -s  run only this scenario (file name without .ini); repeatable
#   -q  quick: 2 s runs after 0.5 s warm-up (for a smoke test, not for the docs)
#   -n  do not touch docs/performance.md
# Needs jq. Exits non-zero if a run failed (the other runs still happen).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
out=
only=
quick=
nodocs=
while getopts b:o:s:qn opt; do
    case $opt in
    b) build=$(cd "$OPTARG" && pwd) ;;
    o) out=$OPTARG ;;
    s) only="$only $OPTARG" ;;
    q) quick="--duration 2 --warmup 0.5" ;;
    n) nodocs=1 ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
    esac
done
out=${out:-$build/bench-results}
bench=$build/bench/bb-bench
broker=$build/broker/batchbroker
for f in "$bench" "$broker"; do
    [ -x "$f" ] || { echo "run_all.sh: $f not built" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "run_all.sh: needs jq" >&2; exit 2; }
mkdir -p "$out"

md=$out/tables.md
: >"$md"
failed=0

# One markdown table (broker and baselines) from one JSON result.
table() {
    jq -r '
      def r2: if . == null then "-" else (. * 100 | round) / 100 | tostring end;
      def r1: if . == null then "-" else (. * 10 | round) / 10 | tostring end;
      def row($n; $r):
        if ($r.ok | not) then "| \($n) | failed: \($r.error) |||||||||"
        else "| \($n) | \($r.throughput_rps | round) | \($r.latency_us.p50 | r2) | \($r.latency_us.p90 | r2) | \($r.latency_us.p99 | r2) | \($r.latency_us.p999 | r2) | \($r.latency_us.max | r1) | \($r.batch.avg | r1) | \($r.cpu_s.broker | r2) | \($r.cpu_s.clients | r2) | \($r.cpu_us_per_request | r2) |" end;
      "| run | requests/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | batch avg | server CPU s | client CPU s | CPU µs/request |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
      (if .ok != null and .throughput_rps != null then row("broker"; .) else empty end),
      (.baselines | to_entries[] | row(.key; .value)),
      "",
      (if (.ratios | length) > 0 then
         "broker / baseline: " + ([.ratios | to_entries[] |
           "\(.key): throughput \(.value.throughput | r2)x, p50 \(.value.p50 | r2)x, p99 \(.value.p99 | r2)x"] | join("; "))
       else empty end),
      (if .backend_overhead then
         "\nbroker own CPU \(.backend_overhead.own_s | r2) s vs backend time \(.backend_overhead.backend_s | r2) s: \(.backend_overhead.ratio * 1000 | round / 10)%"
       else empty end)
    ' "$1"
}

plot() { # $1 json, $2 svg
    command -v gnuplot >/dev/null || return 0
    dat=${2%.svg}.dat
    jq -r '([{key: "broker", value: .}] + (.baselines | to_entries))[]
           | select(.value.ok == true)
           | "\(.key) \(.value.latency_us.p50) \(.value.latency_us.p99) \(.value.latency_us.p999)"' \
        "$1" >"$dat"
    gnuplot <<GP || true
set terminal svg size 640,360
set output '$2'
set style data histograms
set style histogram clustered
set style fill solid 0.8 border -1
set logscale y
set ylabel 'latency (µs)'
set key top left
plot '$dat' using 2:xtic(1) title 'p50', '' using 3 title 'p99', '' using 4 title 'p99.9'
GP
}

for ini in "$root"/bench/scenarios/*.ini; do
    name=$(basename "$ini" .ini)
    if [ -n "$only" ]; then
        case " $only " in *" $name "*) ;; *) continue ;; esac
    fi
    i=0
    grep '^; bb-bench:' "$ini" | sed 's/^; bb-bench://' | while read -r args; do
        i=$((i + 1))
        json=$out/$name-$i.json
        # shellcheck disable=SC2086 # args are words on purpose
        set -- --spawn-broker "$ini" --broker-bin "$broker" $args $quick --json "$json"
        echo "== $name #$i: bb-bench $*" >&2
        rc=0
        "$bench" "$@" </dev/null >"$out/$name-$i.txt" || rc=$?
        cat "$out/$name-$i.txt"
        {
            echo "#### $name #$i"
            echo
            echo "\`bb-bench --spawn-broker bench/scenarios/$name.ini $args $quick\`"
            echo
            if [ -s "$json" ]; then table "$json"; else echo "(no result: exit $rc)"; fi
            echo
        } >>"$md"
        plot "$json" "$out/$name-$i.svg"
        [ "$rc" = 0 ] || echo "$name #$i" >>"$out/failed"
    done
done
[ -f "$out/failed" ] && failed=1 && rm -f "$out/failed"

# The scale-out sweeps (scale_sleep, scale_spin: runs with one thread per
# process) as one plot, docs/scale.svg when the docs are regenerated.
if command -v gnuplot >/dev/null && ls "$out"/scale_*-*.json >/dev/null 2>&1; then
    for f in "$out"/scale_sleep-*.json "$out"/scale_spin-*.json; do
        [ -s "$f" ] || continue
        jq -r 'select(.ok == true and .config.threads == 1 and .config.concurrency == 8)
               | "\(.config.wait) \(.config.clients) \(.throughput_rps) \(.baselines.shm.throughput_rps)" +
                 " \(.cpu_s.broker / .completed * 1e6) \(.baselines.shm.cpu_s.broker / .baselines.shm.completed * 1e6)"' "$f"
    done | sort -k1,1 -k2,2n >"$out/scale.dat"
    svg=$out/scale.svg
    [ -z "$nodocs" ] && svg=$root/docs/scale.svg
    gnuplot -e "datafile='$out/scale.dat'; outfile='$svg'" "$root/bench/plot_scale.gp" || true
fi

if [ -z "$nodocs" ]; then
    doc=$root/docs/performance.md
    {
        echo "_Generated by \`bench/run_all.sh\` on $(uname -n), $(nproc) CPUs, kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')._"
        echo
        cat "$md"
    } >"$out/generated.md"
    awk -v gen="$out/generated.md" '
        /<!-- run_all.sh: begin -->/ { print; while ((getline l < gen) > 0) print l; skip = 1; next }
        /<!-- run_all.sh: end -->/ { skip = 0 }
        !skip { print }' "$doc" >"$doc.tmp" && mv "$doc.tmp" "$doc"
    echo "run_all.sh: updated $doc" >&2
fi
echo "run_all.sh: results in $out" >&2
exit $failed
