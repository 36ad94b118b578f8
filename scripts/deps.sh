# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/run.sh: make sure the Debian 12
# packages the build needs are installed. Installs only what is missing and
# skips apt entirely when nothing is; without root it says what to install
# and fails.

BB_DEPS=(build-essential cmake pkg-config liburing-dev libnuma-dev
         libcriterion-dev libinih-dev libxxhash-dev
         # The Python client and its tests (Debian's python3 sees these).
         python3 python3-numpy python3-pytest
         # The install checks: man pages, the systemd unit and its syscall
         # filter, pid namespaces, pgrep.
         man-db groff-base systemd strace util-linux procps)

bb_missing_deps() {
    local p
    for p in "${BB_DEPS[@]}"; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
            printf '%s\n' "$p"
        fi
    done
}

bb_install_deps() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "deps: dpkg-query not found; this script supports Debian 12." >&2
        echo "deps: install these (or your distribution's equivalents): ${BB_DEPS[*]}" >&2
        return 1
    fi
    local missing
    mapfile -t missing < <(bb_missing_deps)
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
    apt-get -o DPkg::Lock::Timeout=300 update
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
        --no-install-recommends "${missing[@]}"
}
