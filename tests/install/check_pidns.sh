#!/usr/bin/env bash
# The container sidecar recipe of docs/operations.md, with Linux pid
# namespaces standing in for containers (no container engine needed; root
# is). The socket directory is shared, the pid namespaces are not:
#  A. broker in its own pid namespace, client outside: SO_PEERCRED gives the
#     broker pid 0, so it has no pidfd; a killed client is still noticed, by
#     its socket hang-up, and a new client is served.
#  B. client in its own pid namespace, broker outside: the broker sees the
#     client's pid as it is in the broker's namespace, and its pidfd reports
#     the client's death.
# Exit 77 (skipped) without root or unshare.
#   check_pidns.sh PREFIX SRC BUILD
. "$(dirname "$0")/common.sh"

if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null; then
    echo "SKIP: needs root and unshare (util-linux) for pid namespaces"
    exit 77
fi
if ! unshare --pid --fork --mount-proc true 2>/dev/null; then
    echo "SKIP: this kernel or container does not allow new pid namespaces"
    exit 77
fi

SLOW=(-o model.slow.backend=synthetic -o model.slow.param.mode=sleep
      -o model.slow.param.batch_us=2000000 -o model.slow.max_wait_us=0)
CLIENT=$(cat <<'PY'
import os, sys, time
import batchbroker as bb
c = bb.Client(sys.argv[1])
assert c.model("echo").infer(b"ns") == b"ns"
r = c.model("slow").submit(b"pending")          # still pending when we are killed
print("ready", os.getpid(), flush=True)
time.sleep(60)
PY
)

wait_for() { # TEXT: in the broker log within 10 s
    local i
    for i in $(seq 200); do
        grep -q "$1" "$WORK/broker.log" && return 0
        sleep 0.05
    done
    fail "'$1' not in the broker log"
}

one_client_dies() { # [unshare ...]: a client (maybe in its own pid namespace) is killed
    PYTHONPATH="$PYDIR" "$@" /usr/bin/python3 -c "$CLIENT" "$SOCK" >"$WORK/client.out" 2>&1 &
    local cpid=$! i
    for i in $(seq 200); do
        grep -q ready "$WORK/client.out" && break
        sleep 0.05
    done
    grep -q ready "$WORK/client.out" || { cat "$WORK/client.out" >&2; fail "client did not start"; }
    # The broker's pidfds while the client lives (bbctl's session has none).
    PIDFDS=$(find "/proc/$BROKER_PID/fd" -lname 'anon_inode:\[pidfd\]' | wc -l)
    kill -KILL "$cpid"
    wait "$cpid" 2>/dev/null || true
}

# A: the broker in a pid namespace of its own. unshare does not pass
# signals on: BROKER_PID is the broker itself (unshare's child), and
# unshare's exit status is the broker's.
unshare --pid --fork --mount-proc "$PREFIX/sbin/batchbroker" -s "$SOCK" "${SLOW[@]}" \
    >"$WORK/broker.log" 2>&1 &
UNSHARE_PID=$!
for i in $(seq 200); do
    BROKER_PID=$(pgrep -P "$UNSHARE_PID" || true)
    [ -n "$BROKER_PID" ] && "$PREFIX/bin/bbctl" -s "$SOCK" health >/dev/null 2>&1 && break
    [ "$i" -lt 200 ] || fail "the namespaced broker did not answer"
    sleep 0.05
done
grep -q "listening on $SOCK (pid 1)" "$WORK/broker.log" || fail "the broker is not pid 1 of its namespace"
one_client_dies
wait_for "(pid 0) attached"
# No pidfd for pid 0: the socket's end (read as "disconnected" or "hung up").
wait_for "(pid 0) gone: "
grep -Eq "\(pid 0\) gone: (disconnected|hung up)" "$WORK/broker.log" || fail "gone line"
[ "$PIDFDS" -eq 0 ] || fail "the broker has $PIDFDS pidfds for a client it sees as pid 0"
PYTHONPATH="$PYDIR" /usr/bin/python3 -c "
import sys, batchbroker as bb
with bb.Client(sys.argv[1]) as c: assert c.model('echo').infer(b'after') == b'after'" "$SOCK" \
    || fail "a new client after the dead one"
echo "ok: A. broker in its own pid namespace sees pid 0, notices a death by hang-up"
kill -TERM "$BROKER_PID"
BROKER_PID=""
wait "$UNSHARE_PID" || fail "namespaced broker exit status $?"

# B: the client in a pid namespace of its own.
start_broker "${SLOW[@]}"
one_client_dies unshare --pid --fork --mount-proc --kill-child
# Its pid in our namespace, not 1 (its own namespace's view).
pid=$(sed -n 's/.*client [0-9]* (pid \([0-9]*\)) attached.*/\1/p' "$WORK/broker.log" | head -n1)
[ -n "$pid" ] && [ "$pid" -gt 1 ] || fail "the broker saw pid '$pid' for the namespaced client"
wait_for "(pid $pid) gone: "
[ "$PIDFDS" -eq 1 ] || fail "the broker has $PIDFDS pidfds for the namespaced client, not 1"
echo "ok: B. a client in its own pid namespace is seen as pid $pid, with a pidfd"
stop_broker
