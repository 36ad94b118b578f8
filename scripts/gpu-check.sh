#!/usr/bin/env bash
# The cuda backend on a machine with an NVIDIA GPU: its tests, then the GPU
# bench rows of docs/performance.md (the network alone on device-resident
# inputs; the broker from 16 client processes; 16 Python processes each with
# its own copy of the model at batch 1). Exits non-zero if a test fails, if
# no GPU answers, or if a bench run fails.
#
# Such machines usually have the CUDA toolkit, a C/C++ compiler and Python
# with PyTorch, but no Debian package archive. Three ways to run it:
#
# 1. From the source tree, on the GPU machine:
#      scripts/gpu-check.sh [--debs DIR] [--build DIR]
#    configures with BB_BUILD_CUDA=ON (blas and torch off), builds what it
#    needs, trains the demo model with that machine's PyTorch, runs. With
#    --debs, the build dependencies (cmake, pkg-config, liburing, libnuma,
#    inih, xxhash, zlib, libmicrohttpd, Criterion) and the dataset come from a directory of
#    Debian packages unpacked beside it, made on a machine with network
#    access (Debian 12, or any machine with apt and Debian 12 sources) by:
#      scripts/gpu-check.sh --prepare-debs DIR
#    which runs `apt-get download` for those packages and their dependencies
#    (not the C library, the compiler or Debian's base, which the GPU
#    machine brings) and unpacks each with `dpkg -x` into DIR/root.
#
# 2. From a bundle: on a Debian 12 machine that has the CUDA toolkit (no GPU
#    needed) make one,
#      scripts/gpu-check.sh --pack DIR
#    (a CUDA build, packed by shared/tools/gpu-bundle.sh with the libraries
#    it loads, plus the trained model, the Fashion-MNIST test set and this
#    script), carry DIR to the GPU machine and run there
#      DIR/gpu-check.sh
#    which builds nothing.
#
# Then, since such a machine is also the one with CPUs to spare, the
# scale-out targets of issue 8 with their candidate settings
# (bench/targets.py --candidates, about 3 minutes; docs/performance.md), into
# targets.json and targets.txt beside the other results.
#
# Environment: SECONDS_PER_RUN (default 5), PROCS (client processes, 16),
# PYTHON (python3: the one with CUDA PyTorch), GPU_BUNDLE (path of
# gpu-bundle.sh), JOBS, TARGETS (1: the GPU checks, then the targets, the
# default; 0: the GPU checks alone; only: the targets alone).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECS="${SECONDS_PER_RUN:-5}"
PROCS="${PROCS:-16}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"

die() {
    echo "gpu-check: $*" >&2
    exit 1
}

# --- packages for a machine without an archive --------------------------------
DEB_PKGS=(cmake pkg-config liburing-dev libnuma-dev libinih-dev libxxhash-dev zlib1g-dev
          libmicrohttpd-dev libcriterion-dev dataset-fashion-mnist)
# What the GPU machine brings itself: the C library, the compiler and
# binutils, and Debian's essential base.
DEB_SKIP='^(libc6|libc6-dev|libc-dev-bin|libc-bin|linux-libc-dev|libcrypt1|libcrypt-dev|libgcc-s1|libstdc\+\+6|gcc-[0-9]+-base|libnsl2|libnsl-dev|libtirpc[0-9a-z-]*|gcc|gcc-[0-9]+|g\+\+|g\+\+-[0-9]+|cpp|cpp-[0-9]+|binutils|binutils-[a-z0-9-]+|libbinutils|libgcc-[0-9]+-dev|libstdc\+\+-[0-9]+-dev|debconf|dpkg|perl-base|base-files|libselinux1|tar|install-info|sensible-utils)$'

prepare_debs() {
    local dir=$1
    command -v apt-get >/dev/null || die "--prepare-debs needs apt-get (a Debian 12 machine)"
    mkdir -p "$dir/debs" "$dir/root"
    dir=$(cd "$dir" && pwd)
    local pkgs
    mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "${DEB_PKGS[@]}" |
        grep -E '^[a-z0-9]' | sed 's/:.*//' | sort -u | grep -Ev "$DEB_SKIP" || true)
    local keep=() p prio
    for p in "${pkgs[@]}"; do
        prio=$(apt-cache show --no-all-versions "$p" 2>/dev/null | awk '/^Priority:/ {print $2; exit}')
        [[ $prio == required ]] && continue
        keep+=("$p")
    done
    echo "gpu-check: downloading ${#keep[@]} packages into $dir/debs"
    (cd "$dir/debs" && apt-get download "${keep[@]}")
    for p in "$dir"/debs/*.deb; do dpkg -x "$p" "$dir/root"; done
    echo "gpu-check: unpacked into $dir/root; carry $dir to the GPU machine and run:"
    echo "  scripts/gpu-check.sh --debs $dir"
}

# Use the unpacked packages: programs, libraries, headers and pkg-config
# files whose /usr paths are rewritten into the unpacked tree (a copy, so
# that the directory can move between machines).
use_debs() {
    local dir root pc
    dir=$(cd "$1" && pwd)
    root=$dir/root
    [ -d "$root/usr" ] || die "$dir/root/usr not found: make it with --prepare-debs"
    pc=$dir/pkgconfig
    rm -rf "$pc"
    mkdir -p "$pc"
    local f
    for f in "$root"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc "$root"/usr/share/pkgconfig/*.pc; do
        [ -e "$f" ] || continue
        sed -E "s#(^prefix=|^libdir=|^includedir=|-I|-L)/usr#\1$root/usr#g" "$f" >"$pc/$(basename "$f")"
    done
    export PATH="$root/usr/bin:$PATH"
    export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PKG_CONFIG_PATH="$pc"
    export PKG_CONFIG_LIBDIR="$pc"
    DEBS_CMAKE=(-DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu"
                -DCMAKE_INCLUDE_PATH="$root/usr/include")
    export BB_FMNIST_DIR="$root/usr/share/datasets/fashion-mnist"
}

# --- build from the source tree -----------------------------------------------
build() { # $1 build dir; rest: extra cmake args
    local bdir=$1 root
    shift
    root=$(cd "$HERE/.." && pwd)
    [ -f "$root/CMakeLists.txt" ] || die "no source tree above $HERE (a bundle runs without --build)"
    cmake -S "$root" -B "$bdir" -DBB_WERROR=ON -DBB_BUILD_TESTS=ON -DBB_BUILD_CUDA=ON \
        -DBB_BUILD_TORCH=OFF -DBB_BUILD_BLAS=OFF -DBB_TSAN_TEST=OFF \
        ${BB_FMNIST_DIR:+-DBB_FMNIST_DIR="$BB_FMNIST_DIR"} "$@"
    cmake --build "$bdir" --parallel "$JOBS" --target batchbroker bb_backend_echo bb_backend_cuda \
        test_backend_cuda cuda_probe bb-bench bb-cuda-alone bb_backend_synthetic
    # The demo model: needs a Python with PyTorch and the dataset.
    local targets
    targets=$(cmake --build "$bdir" --target help)
    if grep -q bb_fmnist_model <<<"$targets"; then
        cmake --build "$bdir" --target bb_fmnist_model
    fi
}

# --- the checks -----------------------------------------------------------------
# Set by the caller: BIN (programs), TESTS (test programs), PLUGINS, MODELS,
# OUT (results). BB_FMNIST_DIR: the dataset.
check() {
    mkdir -p "$OUT"
    local failed=0
    echo "== GPU"
    "$TESTS/cuda_probe" || die "no usable CUDA device: nothing to check here"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    [ -e "$MODELS/fmnist.bbdense" ] || die "$MODELS/fmnist.bbdense missing (no Python with PyTorch, or no dataset, when it was built)"

    echo "== tests: test_backend_cuda"
    export BBT_BROKER_BIN="$BIN/batchbroker" BBT_PLUGIN_DIR="$PLUGINS" BB_MODEL_DIR="$MODELS"
    local log=$OUT/test_backend_cuda.log rc=0
    "$TESTS/test_backend_cuda" --verbose --jobs=2 >"$log" 2>&1 || rc=$?
    grep -E '^\[(PASS|FAIL|SKIP|====)\]' "$log" || true
    if [ "$rc" != 0 ] || grep -q '^\[SKIP\]' "$log"; then
        echo "gpu-check: test_backend_cuda failed or skipped with a GPU present (log: $log)" >&2
        sed -n '1,200p' "$log" >&2
        failed=1
    fi

    echo "== the network alone on device-resident inputs (bb-cuda-alone)"
    "$BIN/bb-cuda-alone" "$MODELS/fmnist.bbdense" 0 "$SECS" | tee "$OUT/alone.csv" || failed=1

    echo "== the broker, $PROCS client processes (bb-bench, cuda backend)"
    # graph on and off at 8 in flight per client (128 in all: two batches of
    # 64, the closed loop's latency-bound case), then graph on at 32 in flight
    # (the GPU never waits for a batch to form), with a second executor
    # instance as a variant of the same run.
    local run graph conc
    for run in on-8 off-8 on-32; do
        graph=${run%-*} conc=${run#*-}
        cat >"$OUT/cuda-$run.ini" <<EOF
[broker]
socket = $OUT/bb.sock
plugin_dir = $PLUGINS
log_level = warn

[model.fmnist]
backend = cuda
max_batch_size = 64
max_wait_us = 1000
instances = 1
param.weights = $MODELS/fmnist.bbdense
param.graph = $graph
EOF
        local variant=()
        [ "$conc" = 32 ] && variant=(--variant model.fmnist.instances=2)
        "$BIN/bb-bench" --spawn-broker "$OUT/cuda-$run.ini" --broker-bin "$BIN/batchbroker" \
            --model fmnist --dataset fmnist --clients "$PROCS" --concurrency "$conc" --wait sleep \
            --duration "$SECS" --warmup 1 --baseline inproc-all "${variant[@]}" \
            --json "$OUT/broker-$run.json" </dev/null | tee "$OUT/broker-$run.txt" || failed=1
    done

    echo "== $PROCS Python processes, each with its own model on the GPU (bench/gpu_per_process.py)"
    local py=$HERE/gpu_per_process.py
    [ -e "$py" ] || py=$HERE/../bench/gpu_per_process.py
    if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        "$PYTHON" "$py" --model "$MODELS/fmnist.pt" --data "$BB_FMNIST_DIR" --procs "$PROCS" \
            --seconds "$SECS" --json "$OUT/per-process.json" | tee "$OUT/per-process.csv" || failed=1
    else
        echo "gpu-check: $PYTHON has no CUDA PyTorch: per-process baseline not measured" >&2
        failed=1
    fi

    echo "== summary (results in $OUT)"
    summary || true
    return "$failed"
}

# Issue 8's scale-out targets, and the settings that might meet those one
# dispatcher misses, on this machine's CPUs (bench/targets.py).
targets() {
    mkdir -p "$OUT"
    local py=$HERE/targets.py
    [ -e "$py" ] || py=$HERE/../bench/targets.py
    echo "== the scale-out targets of issue 8 (bench/targets.py --candidates)"
    "$PYTHON" "$py" --bench "$BIN/bb-bench" --broker-bin "$BIN/batchbroker" --plugin-dir "$PLUGINS" \
        --candidates --json "$OUT/targets.json" </dev/null | tee "$OUT/targets.txt"
}

# The acceptance ratios of issue 12 from the files above (needs python3).
summary() {
    "$PYTHON" - "$OUT" <<'PY'
import csv, json, os, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "alone.csv")))) if os.path.getsize(os.path.join(out, "alone.csv")) else []
alone = {(int(r["batch"]), r["graph"]): float(r["requests_per_s"]) for r in rows}
alone_p99 = {(int(r["batch"]), r["graph"]): float(r["p99_us"]) for r in rows}
pp = json.load(open(os.path.join(out, "per-process.json")))["rows"] if os.path.exists(os.path.join(out, "per-process.json")) else []
def line(name, r, graph):
    if not r.get("ok"):
        return f"{name}: failed: {r.get('error')}"
    rps, p99 = r["throughput_rps"], r["latency_us"]["p99"]
    s = f"{name}: {rps:.0f} req/s, p50 {r['latency_us']['p50']:.0f} us, p99 {p99:.0f} us"
    if "batch" in r:
        s += f", batch {r['batch']['avg']:.1f}"
    a = alone.get((64, graph))
    if a:
        s += f"; vs alone at batch 64: {rps / a:.2f}x throughput, p99 {p99 / alone_p99[(64, graph)]:.2f}x its p99"
    if pp:
        s += f"; vs {pp[0]['processes']} processes at batch 1: {rps / pp[0]['requests_per_s']:.1f}x"
    return s
for run in ("on-8", "off-8", "on-32"):
    p = os.path.join(out, f"broker-{run}.json")
    if not os.path.exists(p):
        continue
    b = json.load(open(p))
    graph, conc = run.split("-")
    print(line(f"broker (graph {graph}, {conc} in flight per client)", b, graph))
    for k, v in (b.get("variants") or {}).items():
        print(line(f"  {k}", v, graph))
PY
}

# --- main ---------------------------------------------------------------------
DEBS=""
BUILD=""
PACK=""
while [ $# -gt 0 ]; do
    case $1 in
    --prepare-debs) prepare_debs "${2:?--prepare-debs DIR}"; exit 0 ;;
    --debs) DEBS=${2:?--debs DIR}; shift 2 ;;
    --build) BUILD=${2:?--build DIR}; shift 2 ;;
    --pack) PACK=${2:?--pack DIR}; shift 2 ;;
    -h | --help) sed -n '2,41p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
DEBS_CMAKE=()
[ -n "$DEBS" ] && use_debs "$DEBS"

if [ -n "$PACK" ]; then
    # Here: a CUDA build with what the check needs, made into a bundle.
    root=$(cd "$HERE/.." && pwd)
    bdir=${BUILD:-$root/build-gpu}
    build "$bdir" "${DEBS_CMAKE[@]}"
    bundle=${GPU_BUNDLE:-}
    for c in "$root/shared/tools/gpu-bundle.sh" "$root/../shared/tools/gpu-bundle.sh" /work/shared/tools/gpu-bundle.sh; do
        [ -z "$bundle" ] && [ -x "$c" ] && bundle=$c
    done
    [ -n "$bundle" ] || die "gpu-bundle.sh not found (set GPU_BUNDLE)"
    # Only what the check runs: the bundle tool packs every program of the
    # build directory, so hand it a directory with just those.
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/bin"
    cp -a "$bdir/broker/batchbroker" "$bdir/bench/bb-bench" "$bdir/bench/bb-cuda-alone" \
          "$bdir/tests/test_backend_cuda" "$bdir/tests/cuda_probe" "$stage/bin/"
    cp -a "$bdir"/backends/bb_backend_echo.so "$bdir"/backends/bb_backend_cuda.so \
          "$bdir"/backends/bb_backend_synthetic.so "$stage/bin/"
    "$bundle" "$stage" "$PACK"
    # The bundle tool leaves out libc, libm, libdl, libpthread, librt and the
    # loader, but copies glibc's other libraries (libresolv: Kerberos, under
    # Criterion, under test_backend_cuda). They call into libc.so.6 through
    # GLIBC_PRIVATE symbols, which only the glibc they came with has: the GPU
    # machine brings its own C library, all of it (as DEB_SKIP says for --debs).
    rm -f "$PACK"/lib/{libresolv,libanl,libutil,libBrokenLocale,libmvec,libthread_db,libnss_*,libc_malloc_debug}.so*
    mkdir -p "$PACK/models" "$PACK/data"
    cp "$bdir"/models/fmnist.bbdense "$bdir"/models/fmnist.pt "$PACK/models/" ||
        die "no trained model in $bdir/models"
    ds=${BB_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
    cp "$ds"/t10k-images-idx3-ubyte.gz "$ds"/t10k-labels-idx1-ubyte.gz "$PACK/data/"
    cp "$HERE/gpu-check.sh" "$root/bench/gpu_per_process.py" "$root/bench/targets.py" "$PACK/"
    cp -r "$root/bench/scenarios" "$PACK/"
    du -sh "$PACK" | awk '{print "gpu-check: bundle " $1}'
    echo "gpu-check: carry $PACK to the GPU machine and run $PACK/gpu-check.sh"
    exit 0
fi

if [ -f "$HERE/env.sh" ]; then
    # Running from a bundle made by --pack.
    # shellcheck source=/dev/null
    . "$HERE/env.sh"
    BIN=$HERE/bin TESTS=$HERE/bin PLUGINS=$HERE/lib MODELS=$HERE/models
    export BB_FMNIST_DIR="${BB_FMNIST_DIR:-$HERE/data}"
    OUT=${OUT:-$HERE/results}
else
    root=$(cd "$HERE/.." && pwd)
    bdir=${BUILD:-$root/build-gpu}
    build "$bdir" "${DEBS_CMAKE[@]}" -DBB_PYTHON="$(command -v "$PYTHON" || echo "$PYTHON")"
    BIN=$bdir/broker TESTS=$bdir/tests PLUGINS=$bdir/backends MODELS=$bdir/models
    export BB_FMNIST_DIR="${BB_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
    OUT=${OUT:-$bdir/gpu-check}
    # bb-bench and bb-cuda-alone live in bench/.
    mkdir -p "$bdir/gpu-bin"
    for f in "$bdir/broker/batchbroker" "$bdir/bench/bb-bench" "$bdir/bench/bb-cuda-alone"; do
        ln -sf "$f" "$bdir/gpu-bin/"
    done
    BIN=$bdir/gpu-bin
fi
case ${TARGETS:-1} in
0) check ;;
only) targets ;;
1) rc=0; check || rc=$?; targets || rc=1; exit "$rc" ;;
*) die "TARGETS is 0, 1 or only, not ${TARGETS}" ;;
esac
