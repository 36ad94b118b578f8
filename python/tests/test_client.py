"""The synchronous client against a real broker: data paths (bytes, numpy,
zero copy), priorities, timeouts, dedup, cancel, statistics, errors."""

import ctypes
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import batchbroker as bb
from batchbroker import _lib

# A model whose batches take long enough to hold requests in its queue.
SLOW = ["model.slow.backend=synthetic", "model.slow.param.mode=sleep",
        "model.slow.param.batch_us=300000", "model.slow.max_batch_size=1",
        "model.slow.max_wait_us=0", "model.slow.instances=1"]


def stats_when(model, pred, timeout=5):
    """The model's stats once pred(stats) holds: a batch's requests are
    counted when the dispatcher reaps it, just after the clients see them."""
    end = time.monotonic() + timeout
    while True:
        s = model.stats()
        if pred(s) or time.monotonic() > end:
            return s
        time.sleep(0.01)


def test_infer_bytes_and_arrays(broker):
    with bb.Client(broker.sock) as c:
        echo = c.model("echo")
        assert echo.infer(b"hello") == b"hello"
        assert echo.infer(bytearray(b"abc")) == b"abc"
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        y = echo.infer(x)
        assert y.dtype == np.float32 and y.shape == (3, 4) and (y == x).all()
        out = np.zeros(12, dtype=np.float32)
        assert echo.infer(x, out=out) is out and (out == x.ravel()).all()
        typed = c.model("echo", output_dtype=np.int16, output_shape=(2, 3))
        z = typed.infer(np.arange(6, dtype=np.int16))
        assert z.shape == (2, 3) and z.dtype == np.int16 and z[1, 2] == 5
        with pytest.raises(ValueError):
            echo.infer(x[:, ::2])  # not contiguous


def test_zero_copy_views(broker):
    """The input and output views are the shared segment itself."""
    with bb.Client(broker.sock) as c:
        echo = c.model("echo")
        with echo.request(64, 64) as r:
            a = r.input_array(np.float32)
            assert a.flags.writeable and a.size == 16
            # The array's memory is the request's input buffer in the segment.
            assert a.ctypes.data == _lib.lib.bb_request_input(r._r)
            a[:] = np.arange(16)
            r.submit()
            out = r.wait(5).output_array(np.float32)
            n = ctypes.c_size_t()
            assert out.ctypes.data == _lib.lib.bb_request_output(r._r, ctypes.byref(n))
            assert not out.flags.writeable
            with pytest.raises(ValueError):
                out[0] = 1
            assert (out == np.arange(16)).all()
            assert r.output.readonly and r.input.readonly is False
            # Reuse: same slot, same buffers, no allocation.
            a[:] = 7
            r.set_input_len(8)
            assert r.submit().result(5).tobytes() == np.full(2, 7, np.float32).tobytes()


def test_views_keep_their_request_alive(broker):
    with bb.Client(broker.sock) as c:
        echo = c.model("echo")
        r = echo.request(16, 16)
        r.write(b"0123456789abcdef")
        view = r.submit().result(5)
        del r  # the view still refers to it: not collected, not freed
        assert bytes(view) == b"0123456789abcdef"


def test_priorities_are_counted(brokers):
    b = brokers.start()
    with bb.Client(b.sock) as c:
        echo = c.model("echo")
        for p in ("critical", bb.Priority.HIGH, 3, "low", None):
            assert echo.infer(b"x", priority=p) == b"x"
        s = stats_when(echo, lambda s: s.completed == 5)
        # None is the model's default_priority, normal.
        assert s.completed_by_priority == (0, 1, 1, 2, 1), s
        with pytest.raises(ValueError):
            echo.infer(b"x", priority="urgent")
        with pytest.raises(ValueError):
            echo.infer(b"x", priority=9)


def test_timeout_expires_in_the_queue(brokers):
    b = brokers.start(overrides=SLOW)
    with bb.Client(b.sock) as c:
        slow = c.model("slow")
        blocker = slow.submit(b"first")        # runs for 300 ms
        time.sleep(0.05)
        with pytest.raises(bb.BB_ETIMEDOUT) as e:
            slow.infer(b"late", timeout=0.02)  # its deadline passes in the queue
        assert isinstance(e.value, TimeoutError)
        assert bytes(blocker.result(5)) == b"first"
        assert stats_when(slow, lambda s: s.timed_out == 1).timed_out == 1
        # A wait that gives up: the request is canceled, BB_ETIMEDOUT here.
        blocker = slow.submit(b"again")
        with pytest.raises(bb.BB_ETIMEDOUT):
            slow.infer(b"x", wait_timeout=0.05)
        blocker.close()


def test_cancel_before_it_runs(brokers):
    b = brokers.start(overrides=SLOW)
    with bb.Client(b.sock) as c:
        slow = c.model("slow")
        running = slow.submit(b"runs")
        time.sleep(0.05)
        queued = slow.submit(b"queued")
        assert not queued.done()
        assert queued.cancel() is True
        with pytest.raises(bb.BB_ECANCELED):
            queued.wait(5)
        assert queued.cancel() is False  # no longer pending
        assert bytes(running.result(5)) == b"runs"


def test_dedup_shares_one_computation(brokers):
    b = brokers.start(overrides=SLOW)
    with bb.Client(b.sock) as c:
        slow = c.model("slow")
        blocker = slow.submit(b"blocker")
        time.sleep(0.05)
        same = [slow.submit(b"same input", dedup=True) for _ in range(4)]
        for r in same:
            assert bytes(r.result(10)) == b"same input"
        blocker.result(5)
        assert stats_when(slow, lambda s: s.deduplicated >= 3).deduplicated >= 3


def test_full_queue_is_bb_ebusy(brokers):
    b = brokers.start(overrides=SLOW + ["model.slow.max_queue=1"])
    with bb.Client(b.sock) as c:
        slow = c.model("slow")
        running = slow.submit(b"a")
        time.sleep(0.05)
        queued = slow.submit(b"b")
        with pytest.raises(bb.BB_EBUSY):
            slow.infer(b"c")
        running.result(5)
        queued.result(5)
        assert stats_when(slow, lambda s: s.rejected == 1).rejected == 1


def test_stats_and_tuning(broker):
    with bb.Client(broker.sock) as c:
        echo = c.model("echo")
        for _ in range(5):
            echo.infer(b"12345678")
        s = stats_when(echo, lambda s: s.completed == 5)
        assert isinstance(s, bb.ModelStats)
        assert s.submitted == 5 and s.completed == 5 and s.batches >= 1
        t = echo.tuning()
        assert isinstance(t, bb.ModelTuning) and t.max_batch_size == 32 and t.adaptive is True  # the default
        echo.pin(4)  # we are root or the broker's user
        assert echo.tuning().pinned == 4 and echo.stats().batch_target == 4
        echo.unpin()  # back to the controller's choice, somewhere in 1..max_batch_size
        t = echo.tuning()
        assert t.pinned == 0 and 1 <= t.batch_target <= 32


def test_errors(broker, tmp_path):
    with pytest.raises(bb.BB_ENOBROKER):
        bb.Client(str(tmp_path / "nobody.sock"))
    with bb.Client(broker.sock) as c:
        with pytest.raises(bb.BB_ENOMODEL) as e:
            c.model("nope")
        assert "model 'nope'" in str(e.value)
        r = c.model("echo").request(8)
        with pytest.raises(bb.BB_ESTATE):
            r.wait(0.1)  # never submitted
        with pytest.raises(bb.BB_EINVAL):
            r.write(b"123456789")
    with pytest.raises(bb.BB_EINVAL):
        r.submit()  # the client closed it


def test_default_socket_from_environment(broker, monkeypatch):
    monkeypatch.setenv("BATCHBROKER_SOCKET", broker.sock)
    with bb.connect() as c:
        assert c.model("echo").infer(b"env") == b"env"


def test_poll_and_fileno(broker):
    import select
    with bb.Client(broker.sock) as c:
        echo = c.model("echo")
        fd = c.fileno()
        reqs = [echo.request(4) for _ in range(10)]
        for i, r in enumerate(reqs):
            r.write(bytes([i]) * 4)
            r.submit(tag=i)
        seen = set()
        end = time.monotonic() + 10
        while len(seen) < 10 and time.monotonic() < end:
            select.select([fd], [], [], 1)
            for r in c.poll():
                seen.add(r.tag)
                assert bytes(r.output) == bytes([r.tag]) * 4
        assert seen == set(range(10))


def test_lanes_share_one_client_among_threads(brokers):
    """Client(lanes=2): threads sharing the client submit through two broker
    sessions (two workers serve them), every answer is the thread's own,
    and poll() reports the completions of both lanes."""
    import select
    b = brokers.start(overrides=["broker.workers=2"])
    with pytest.raises(bb.BatchBrokerError):
        bb.Client(b.sock, lanes=0)
    with bb.Client(b.sock, lanes=2) as c:
        echo = c.model("echo")
        errors = []

        def work(k):
            try:
                for i in range(200):
                    data = bytes([k, i % 256]) * 8
                    if echo.infer(data) != data:
                        errors.append((k, i))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        stats_when(echo, lambda s: s.completed == 800)

        # Requests made on two threads: two lanes, one fileno and poll().
        reqs = []

        def make(k):
            for i in range(5):
                r = echo.request(4)
                r.write(bytes([10 * k + i]) * 4)
                reqs.append(r)
        for k in range(2):
            t = threading.Thread(target=make, args=(k,))
            t.start()
            t.join()
        for r in reqs:
            r.submit(tag=r.input[0])
        seen = set()
        end = time.monotonic() + 10
        while len(seen) < 10 and time.monotonic() < end:
            select.select([c.fileno()], [], [], 1)
            for r in c.poll():
                seen.add(r.tag)
                assert bytes(r.output) == bytes([r.tag]) * 4
        assert seen == {0, 1, 2, 3, 4, 10, 11, 12, 13, 14}


def test_wait_sees_a_dead_broker(brokers):
    """A wait longer than one 100 ms slice ends with BB_EDISCONNECTED when the
    broker dies, not with slice after slice of BB_ETIMEDOUT until its end."""
    b = brokers.start(overrides=SLOW)
    with bb.Client(b.sock) as c:
        slow = c.model("slow")
        running = slow.submit(b"runs")
        queued = slow.submit(b"queued")
        b.kill()
        with pytest.raises(bb.BB_EDISCONNECTED):
            queued.wait(30)
        with pytest.raises(bb.BB_EDISCONNECTED):
            running.result()  # no timeout: it would never end


def test_poll_while_other_threads_make_requests(broker):
    """poll() while other threads make and close requests: it must not
    iterate the live requests as they change (RuntimeError, with the
    completions bb_client_poll had already handed over lost)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches within poll's lookup
    stop = threading.Event()
    errors = []

    def churn(model):
        try:
            while not stop.is_set():
                for r in [model.request(8) for _ in range(16)]:
                    r.close()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    try:
        with bb.Client(broker.sock) as c:
            echo = c.model("echo")
            c.fileno()
            keep = [echo.request(8) for _ in range(600)]  # a set worth iterating
            threads = [threading.Thread(target=churn, args=(echo,)) for _ in range(2)]
            for t in threads:
                t.start()
            polls = 0
            try:
                while polls < 5000:
                    for i, r in enumerate(keep[:10]):
                        r.write(bytes([i]) * 8)
                        r.submit(tag=i)
                    seen = set()
                    end = time.monotonic() + 10
                    while len(seen) < 10 and time.monotonic() < end:
                        seen.update(r.tag for r in c.poll())
                        polls += 1
                    assert seen == set(range(10))
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert not errors, errors
    finally:
        sys.setswitchinterval(old)


# Run in a child: before Client.close() waited for the calls in flight, it
# unmapped the segment under a waiting thread (SIGSEGV).
_CLOSE_WHILE_WAITING = """
import sys, threading, time
import batchbroker as bb

c = bb.Client(sys.argv[1])
slow = c.model("slow")
reqs = [slow.submit(b"runs"), slow.submit(b"queued")]
got = []

def waiter(r):
    try:
        r.wait()
        got.append("completed")
    except bb.BatchBrokerError as e:
        got.append(e.name)

threads = [threading.Thread(target=waiter, args=(r,)) for r in reqs]
for t in threads:
    t.start()
time.sleep(0.05)  # both are waiting by now (the first runs for 300 ms)
c.close()
for t in threads:
    t.join(10)
assert not any(t.is_alive() for t in threads)
print(sorted(got))
"""


def test_close_while_another_thread_waits(brokers):
    """Client.close() while other threads wait on its requests: close waits
    for their calls into the library to return, then frees; the waiters
    get the closed client's error."""
    b = brokers.start(overrides=SLOW)
    p = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_WAITING, b.sock],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert p.stdout.split("\n")[-2] == "['BB_EINVAL', 'BB_EINVAL']", p.stdout


def test_close_refuses_to_wait_for_its_own_thread(broker):
    """close() from inside a call of its own thread (a signal handler that
    interrupts a wait, say) would wait for itself: it refuses instead."""
    c = bb.Client(broker.sock)
    c._calls.append(threading.get_ident())  # as _call notes a call under way
    with pytest.raises(bb.BB_ESTATE):
        c.close()
    c._calls.remove(threading.get_ident())
    assert c.model("echo").infer(b"still open") == b"still open"
    c.close()
    assert c.closed


def test_an_interrupted_close_leaves_the_client_open(broker):
    """A close() interrupted while it waits for another thread's call (Ctrl-C)
    leaves the client usable, and a later close() works."""
    import signal
    c = bb.Client(broker.sock)
    inside, done = threading.Event(), threading.Event()

    def a_long_call():  # as _call notes a call under way, until told
        me = threading.get_ident()
        c._calls.append(me)
        inside.set()
        done.wait(30)
        c._leave(me)
    other = threading.Thread(target=a_long_call)
    other.start()
    assert inside.wait(10)

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            c.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not c.closed and not c._closing
    done.set()
    other.join(10)
    assert c.model("echo").infer(b"still open") == b"still open"
    c.close()
    assert c.closed


_FORK_CHILD = """
import os, sys, threading
import batchbroker as bb

c = bb.Client(sys.argv[1])
echo, slow = c.model("echo"), c.model("slow")
assert echo.infer(b"before") == b"before"
pending = slow.submit(b"slow")
waiting = threading.Event()

def waiter():  # inside a call with the client when the fork comes
    waiting.set()
    pending.wait()

t = threading.Thread(target=waiter)
t.start()
waiting.wait()
pid = os.fork()
if pid == 0:
    code = 0
    try:
        echo.infer(b"child")
        code = 2
    except bb.BB_EFORKED:
        pass
    try:
        pending.cancel()
        code = 3
    except bb.BB_EFORKED:
        pass
    pending.close()
    c.close()  # no wait for the parent's thread, whose call is not here
    with bb.Client(sys.argv[1]) as own:
        if own.model("echo").infer(b"own") != b"own":
            code = 4
    os._exit(code)
_, status = os.waitpid(pid, 0)
t.join(30)
assert not t.is_alive()
print("child", os.waitstatus_to_exitcode(status))
print("pending", pending.status)
print("after", echo.infer(b"after"))
c.close()
"""


def test_a_fork_child_gets_bb_eforked_and_leaves_the_parent_alone(brokers):
    """In a fork child, the inherited client raises BB_EFORKED, and closing
    it (and its requests) there neither waits for the parent's threads nor
    cancels the parent's pending request; a new Client serves the child."""
    b = brokers.start(overrides=SLOW)
    p = subprocess.run([sys.executable, "-c", _FORK_CHILD, b.sock],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert p.stdout.split("\n")[-4:] == ["child 0", "pending 0", "after b'after'", ""], p.stdout


def test_a_negative_wait_timeout_does_not_wait_forever(brokers):
    """wait(-1) polls, as a Future's result(-1) does: it was passed to
    bb_wait as a negative timeout, a wait for ever in one call that neither
    Ctrl-C nor close() could end (here it would end, wrongly without an
    error, when the request completes)."""
    b = brokers.start(overrides=SLOW)
    with bb.Client(b.sock) as c:
        slow = c.model("slow")
        running = slow.submit(b"runs")
        queued = slow.submit(b"queued")  # done 2 batches (600 ms) from now
        with pytest.raises(bb.BB_ETIMEDOUT):
            queued.wait(-1)
        with pytest.raises(bb.BB_ETIMEDOUT):
            queued.result(-0.5)
        running.close()
        queued.close()


def test_a_tag_out_of_range_is_refused():
    """A tag must fit the slot's 64 bits: 2**64 + 5 came back as 5 and -1
    as 2**64 - 1 (ctypes masks), a tag that was not the one given."""
    for bad in (-1, 2**64, 2**64 + 5):
        with pytest.raises(ValueError):
            bb.submit_opts(tag=bad)
    assert bb.submit_opts(tag=2**64 - 1).tag == 2**64 - 1
