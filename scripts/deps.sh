# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/run.sh: make sure the Debian 12
# packages the build needs (and any given as arguments to bb_install_deps)
# are installed. Installs only what is missing and
# skips apt entirely when nothing is; without root it says what to install
# and fails.

BB_DEPS=(build-essential cmake pkg-config liburing-dev libnuma-dev
         libcriterion-dev libinih-dev libxxhash-dev zlib1g-dev
         # blas backend: OpenBLAS itself (openblas_set_num_threads is in
         # libopenblas.so.0, not in the generic libblas.so.3).
         libopenblas-dev
         # torch backend: libtorch, and libopenblas0 explicitly: without it
         # libtorch runs on the reference BLAS, ~26x slower at batch 64.
         libtorch-dev libopenblas0
         # The demo model: Fashion-MNIST and the PyTorch that trains it in
         # seconds at build time (scripts/train_fmnist.py, /usr/bin/python3).
         python3-torch dataset-fashion-mnist
         # libmicrohttpd-dev: the metrics endpoint. prometheus: promtool and
         # the server the metrics tests run against (about 20 MB to fetch,
         # 100 MB installed with its web assets); installed with its service
         # kept stopped.
         libmicrohttpd-dev prometheus
         # The Python client and its tests (Debian's python3 sees these).
         python3 python3-numpy python3-pytest
         # The install checks: man pages, the systemd unit and its syscall
         # filter, pid namespaces, pgrep.
         man-db groff-base systemd strace util-linux procps)
# The sanitizer tree and the fuzzers of scripts/test.sh: clang, its
# sanitizer and libFuzzer runtimes, and llvm-symbolizer for readable reports.
BB_SAN_DEPS=(clang libclang-rt-14-dev llvm)

bb_missing_deps() {
    local p
    for p in "${BB_DEPS[@]}" "$@"; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
            printf '%s\n' "$p"
        fi
    done
}

# apt-get update. DPkg::Lock::Timeout waits for dpkg's lock only: the lists
# lock, held by another update (apt-daily on a fresh machine, or another
# engineer), fails at once with "Could not get lock". Wait for that one here,
# up to 300 s as for dpkg's.
bb__apt_update() {
    local i out rc
    for i in $(seq 60); do
        rc=0
        out=$(LC_ALL=C apt-get -o DPkg::Lock::Timeout=300 update 2>&1) || rc=$?
        printf '%s\n' "$out"
        if [ "$rc" -eq 0 ] || ! grep -q 'Could not get lock' <<<"$out"; then
            return "$rc"
        fi
        echo "deps: the package lists are locked by another apt; retrying in 5 s ($i of 60)" >&2
        sleep 5
    done
    return 1
}

bb_install_deps() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "deps: dpkg-query not found; this script supports Debian 12." >&2
        echo "deps: install these (or your distribution's equivalents): ${BB_DEPS[*]} $*" >&2
        return 1
    fi
    local missing
    mapfile -t missing < <(bb_missing_deps "$@")
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "deps: all build dependencies are installed"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: missing packages: ${missing[*]}" >&2
        echo "deps: run as root, or: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        return 1
    fi
    echo "deps: installing ${missing[*]}"
    bb__apt_update
    # A package that ships a service (prometheus) must not start it here: it
    # would take port 9090 and scrape on a CI machine. policy-rc.d answers
    # "not now" to invoke-rc.d and deb-systemd-invoke for the install only.
    # Interrupted (Ctrl-C), the script must not leave it behind either: every
    # later install on the machine would keep its services stopped. (Callers
    # set their own traps after this returns.)
    local policy=/usr/sbin/policy-rc.d own_policy=
    if [ ! -e "$policy" ]; then
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
        --no-install-recommends "${missing[@]}" || rc=$?
    if [ -n "$own_policy" ]; then
        rm -f "$policy"
        trap - EXIT INT TERM
    fi
    return "$rc"
}
