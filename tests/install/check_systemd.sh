#!/usr/bin/env bash
# The installed systemd unit: systemd-analyze verify accepts it (with the
# install's man pages for its Documentation= lines and its ExecStart binary),
# it starts the installed broker with the installed configuration, and every
# system call the broker makes while serving, reloading and stopping is one
# its SystemCallFilter allows (a call outside it would fail with EPERM).
#   check_systemd.sh PREFIX SRC BUILD
. "$(dirname "$0")/common.sh"

UNIT="$PREFIX/lib/systemd/system/batchbroker.service"
[ -f "$UNIT" ] || fail "no unit at $UNIT"
command -v systemd-analyze >/dev/null || fail "systemd-analyze missing (Debian package systemd)"

grep -qx "ExecStart=\"$PREFIX/sbin/batchbroker\" --config \"$PREFIX/etc/batchbroker.ini\"" "$UNIT" \
    || fail "ExecStart does not name this install: $(grep ExecStart= "$UNIT")"
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$UNIT" || fail "ExecReload"
grep -qx 'RuntimeDirectory=batchbroker' "$UNIT" || fail "RuntimeDirectory"
grep -q '^socket = /run/batchbroker/bb.sock' "$PREFIX/etc/batchbroker.ini" \
    || fail "the installed configuration's socket is not in the unit's RuntimeDirectory"
MANPATH="$PREFIX/share/man" systemd-analyze verify "$UNIT" 2>"$WORK/verify.err" \
    || { cat "$WORK/verify.err" >&2; fail "systemd-analyze verify"; }
# verify passes some findings as warnings on stderr only: none are expected.
[ ! -s "$WORK/verify.err" ] || { cat "$WORK/verify.err" >&2; fail "systemd-analyze verify warned"; }
echo "ok: systemd-analyze verify"

# The prefix is the install's, not the configure's. --prefix /usr keeps the
# configuration in /etc, as GNUInstallDirs does for a configure-time /usr
# (it went to /usr/etc); and a prefix with a space, a % and a $ in it gives
# a unit that runs what it installed (ExecStart split the path at the space).
DEST="$WORK/dest"
DESTDIR="$DEST" cmake --install "$BUILD" --prefix /usr --component runtime >/dev/null
[ -f "$DEST/etc/batchbroker.ini" ] && [ ! -e "$DEST/usr/etc" ] \
    || fail "--prefix /usr put the configuration in $(cd "$DEST" && find . -name batchbroker.ini)"
grep -qx 'ExecStart="/usr/sbin/batchbroker" --config "/etc/batchbroker.ini"' \
    "$DEST/usr/lib/systemd/system/batchbroker.service" \
    || fail "--prefix /usr: $(grep ExecStart= "$DEST/usr/lib/systemd/system/batchbroker.service")"
ODD="$WORK/odd prefix %i \$HOME"
cmake --install "$BUILD" --prefix "$ODD" >/dev/null
MANPATH="$ODD/share/man" systemd-analyze verify "$ODD/lib/systemd/system/batchbroker.service" \
    2>"$WORK/verify.err" || { cat "$WORK/verify.err" >&2; fail "verify, prefix '$ODD'"; }
[ ! -s "$WORK/verify.err" ] || { cat "$WORK/verify.err" >&2; fail "verify warned, prefix '$ODD'"; }
echo "ok: the unit of --prefix /usr and of a prefix with a space, % and \$"

# The calls the unit allows: its SystemCallFilter groups, expanded.
filter=$(sed -n 's/^SystemCallFilter=//p' "$UNIT")
[ -n "$filter" ] || fail "no SystemCallFilter in the unit"
expand() { # group or call names -> call names, recursively
    local item
    for item in "$@"; do
        case "$item" in
        @*) # shellcheck disable=SC2046
            expand $(systemd-analyze syscall-filter "$item" 2>/dev/null \
                     | sed -n 's/^    \([@a-z_0-9-][@a-z_0-9-]*\)$/\1/p') ;;
        *) echo "$item" ;;
        esac
    done
}
# shellcheck disable=SC2086
expand $filter | sort -u >"$WORK/allowed"
[ "$(wc -l <"$WORK/allowed")" -gt 100 ] || fail "could not expand $filter"

command -v strace >/dev/null || fail "strace missing (Debian package strace)"
# The installed configuration, but a socket we may create here.
strace -f -qq -o "$WORK/trace" "$PREFIX/sbin/batchbroker" --config "$PREFIX/etc/batchbroker.ini" \
    -o "broker.socket=$SOCK" >"$WORK/broker.log" 2>&1 &
STRACE_PID=$!
for i in $(seq 200); do
    "$PREFIX/bin/bbctl" -s "$SOCK" health >/dev/null 2>&1 && break
    [ "$i" -lt 200 ] || fail "the broker under strace did not answer"
    sleep 0.05
done
BROKER_PID=$(pgrep -P "$STRACE_PID" | head -n1)
# Serve (a client, a dedup'd and a timed-out request, the stats), reload, stop.
PYTHONPATH="$PYDIR" /usr/bin/python3 - "$SOCK" <<'PY' || fail "client session"
import sys, asyncio
import batchbroker as bb
with bb.Client(sys.argv[1]) as c:
    m = c.model("echo")
    assert m.infer(b"x" * 100, dedup=True) == b"x" * 100
    m.stats(); m.tuning()
async def main():
    async with bb.AsyncClient(sys.argv[1]) as c:
        await asyncio.gather(*(c.infer("echo", bytes([i]) * 64) for i in range(200)))
asyncio.run(main())
PY
kill -HUP "$BROKER_PID"
"$PREFIX/bin/bbctl" -s "$SOCK" stats >/dev/null
kill -TERM "$BROKER_PID"
wait "$STRACE_PID" || fail "the broker under strace exited with $?"
BROKER_PID=""
grep -q "configuration reloaded" "$WORK/broker.log" || fail "no reload happened"

# strace lines: "PID name(args" or "PID <... name resumed>".
sed -E -n 's/^[0-9]+ +([a-z_0-9]+)\(.*/\1/p; s/^[0-9]+ +<\.\.\. ([a-z_0-9]+) resumed>.*/\1/p' \
    "$WORK/trace" | sort -u >"$WORK/used"
[ "$(wc -l <"$WORK/used")" -gt 20 ] || fail "strace saw too few calls"
if comm -23 "$WORK/used" "$WORK/allowed" | grep .; then
    fail "the broker made the calls above, which SystemCallFilter=$filter does not allow"
fi
echo "ok: all $(wc -l <"$WORK/used") system calls the broker made are in $filter"
