#!/usr/bin/env bash
# The Python client beside the C client on one workload: one process, 64
# requests in flight, 64-byte requests to the echo model of a broker with
# the default configuration, all rows against the same broker, one after
# the other. Prints the markdown table of docs/performance.md ("Python
# client").
#
#   bench/python_client.sh [-b BUILD_DIR] [-d SECONDS] [-i INFLIGHT]
#
# Needs /usr/bin/python3 with numpy (Debian python3-numpy).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
duration=5
inflight=64
while getopts b:d:i: opt; do
    case $opt in
    b) build=$(cd "$OPTARG" && pwd) ;;
    d) duration=$OPTARG ;;
    i) inflight=$OPTARG ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
    esac
done
work=$(mktemp -d /tmp/bb-python-bench.XXXXXX)
sock=$work/bb.sock
"$build/broker/batchbroker" -s "$sock" -o broker.log_level=warn \
    -o "broker.plugin_dir=$build/backends" >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work"' EXIT
for i in $(seq 100); do
    "$build/tools/bbctl" -s "$sock" health >/dev/null 2>&1 && break
    sleep 0.1
done

echo "| client | requests/s | p50 µs | p99 µs | avg batch | client CPU µs/request |"
echo "|---|---:|---:|---:|---:|---:|"
for wait in sleep spin; do
    "$build/bench/bb-bench" --socket "$sock" --concurrency "$inflight" --wait "$wait" \
        --duration "$duration" --warmup 1 --json "$work/c.json" >"$work/c.txt" 2>&1 ||
        { cat "$work/c.txt" >&2; exit 1; }
    /usr/bin/python3 - "$work/c.json" "$wait" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"], r.get("error")
print(f"| C, bb-bench --wait {sys.argv[2]} | {r['throughput_rps']:,.0f} "
      f"| {r['latency_us']['p50']:.1f} | {r['latency_us']['p99']:.1f} | {r['batch']['avg']:.1f} "
      f"| {r['cpu_s']['clients'] * 1e6 / max(1, r['completed']):.2f} |")
PY
done
for mode in infer zero-copy; do
    BATCHBROKER_LIB="$build/client/libbatchbroker.so.$(sed -n 's/^project(batchbroker VERSION \([0-9]*\).*/\1/p' "$root/CMakeLists.txt")" \
        /usr/bin/python3 "$root/python/bench_asyncio.py" --socket "$sock" --mode "$mode" \
        --inflight "$inflight" --duration "$duration" --json "$work/py.json" >/dev/null
    /usr/bin/python3 - "$work/py.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
what = {"infer": "await model.submit(bytes)", "zero-copy": "await model.run(request)"}[r["mode"]]
print(f"| Python asyncio, {what} | {r['throughput_rps']:,.0f} | {r['p50_us']:.1f} "
      f"| {r['p99_us']:.1f} | {r['avg_batch']:.1f} | {r['client_cpu_us_per_req']:.2f} |")
PY
done
