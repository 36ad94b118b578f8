"""The asyncio client: completions through loop.add_reader on
bb_client_fd, many requests in flight from one loop, backpressure when the
slots run out, task cancellation, and a broker that dies under it."""

import asyncio
import gc
import os
import time

import numpy as np
import pytest

import batchbroker as bb
from test_client import SLOW, stats_when


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_await_infer_and_the_seed_shape(broker):
    async def main():
        async with bb.AsyncClient(broker.sock) as client:
            assert await client.infer("echo", b"hello") == b"hello"
            model = client.model("echo")
            x = np.arange(8, dtype=np.float64)
            y = await model.submit(x, priority="high")   # the seed's batcher.submit
            assert (y == x).all() and y.dtype == np.float64
            assert await model.infer(b"alias") == b"alias"
    run(main())


def test_many_in_flight_more_than_slots(broker):
    """2,000 concurrent submissions on a client of 64 slots: the surplus waits
    for a slot instead of failing, and every answer is its own."""
    async def main():
        async with bb.AsyncClient(broker.sock, max_inflight=64) as client:
            model = client.model("echo")
            xs = [np.full(32, i, dtype=np.int32) for i in range(2000)]
            ys = await asyncio.gather(*(model.submit(x) for x in xs))
            for i, y in enumerate(ys):
                assert (y == i).all()
            assert client._owned == 0 and not client._pending
            return stats_when(model, lambda s: s.completed == 2000)
    s = run(main())
    assert s.completed == 2000  # (how they batch depends on timing: not asserted)


def test_zero_copy_request_awaited(broker):
    async def main():
        async with bb.AsyncClient(broker.sock) as client:
            model = client.model("echo")
            with model.request(16 * 4) as r:
                r.input_array(np.float32)[:] = np.linspace(0, 1, 16)
                await model.run(r, priority="low")
                out = r.output_array(np.float32)
                assert not out.flags.writeable
                assert np.allclose(out, np.linspace(0, 1, 16))
    run(main())


def test_errors_arrive_as_exceptions(brokers):
    b = brokers.start(overrides=SLOW + ["model.slow.max_queue=1"])

    async def main():
        async with bb.AsyncClient(b.sock) as client:
            slow = client.model("slow")
            first = asyncio.ensure_future(slow.submit(b"a"))
            # Until the first runs: queued beside it, the second (its own
            # timeout first within the client's round) would run before it.
            for _ in range(1000):
                await asyncio.sleep(0.005)
                if slow.stats().running == 1:
                    break
            second = asyncio.ensure_future(slow.submit(b"b", timeout=0.05))
            third = asyncio.ensure_future(slow.submit(b"c"))
            with pytest.raises(bb.BB_EBUSY):
                await third
            with pytest.raises(bb.BB_ETIMEDOUT):
                await second
            assert await first == b"a"
            with pytest.raises(bb.BB_ENOMODEL):
                await client.infer("nope", b"x")
    run(main())


def test_cancelling_the_task_cancels_the_request(brokers):
    b = brokers.start(overrides=SLOW)

    async def main():
        async with bb.AsyncClient(b.sock, max_inflight=4) as client:
            slow = client.model("slow")
            running = asyncio.ensure_future(slow.submit(b"runs"))
            await asyncio.sleep(0.05)
            queued = asyncio.ensure_future(slow.submit(b"queued"))
            await asyncio.sleep(0.05)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert await running == b"runs"
            # The canceled one never ran, and its slot came back.
            s = stats_when(slow, lambda s: s.completed + s.cancelled == 2)
            assert s.completed == 1 and s.cancelled == 1
            assert client._owned == 0
            assert await slow.submit(b"more") == b"more"
    run(main())


def test_broker_death_fails_pending_futures(brokers):
    b = brokers.start(overrides=SLOW)

    async def main():
        async with bb.AsyncClient(b.sock) as client:
            slow = client.model("slow")
            pending = [asyncio.ensure_future(slow.submit(b"x")) for _ in range(3)]
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            b.kill()
            results = await asyncio.gather(*pending, return_exceptions=True)
            assert all(isinstance(r, bb.BB_EDISCONNECTED) for r in results), results
            assert time.monotonic() - t0 < 5
            with pytest.raises(bb.BatchBrokerError):
                await slow.submit(b"after")
    run(main())


async def _outcomes(tasks, timeout=10):
    """Each task's exception (or result) once all end, failing the test if
    any is still pending after timeout seconds."""
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    assert not pending, f"{len(pending)} of {len(tasks)} tasks still pending"
    return [t.exception() or t.result() for t in tasks]


@pytest.mark.parametrize("end", ["broker death", "close"])
def test_tasks_waiting_for_a_slot_fail_with_the_client(brokers, end):
    """Two slots, six submissions: when the broker dies, or the client is
    closed, the four waiting for a slot fail with BB_EDISCONNECTED too."""
    b = brokers.start(overrides=SLOW)

    async def main():
        async with bb.AsyncClient(b.sock, max_inflight=2) as client:
            slow = client.model("slow")
            tasks = [asyncio.ensure_future(slow.submit(b"x")) for _ in range(6)]
            await asyncio.sleep(0.05)
            b.kill() if end == "broker death" else client.close()
            for r in await _outcomes(tasks):
                assert isinstance(r, bb.BB_EDISCONNECTED), r
    run(main())


def test_a_cancelled_waiter_passes_its_slot_on(brokers):
    """One slot: A runs, W1 and W2 wait. A's slot frees and wakes W1, which
    is cancelled before it runs: W2 must get the slot."""
    b = brokers.start(overrides=SLOW)

    async def main():
        async with bb.AsyncClient(b.sock, max_inflight=1) as client:
            slow = client.model("slow")

            async def a():
                y = await slow.submit(b"a")  # on return its slot is freed, W1 woken
                w1.cancel()                   # before W1 runs
                return y

            first = asyncio.ensure_future(a())
            w1 = asyncio.ensure_future(slow.submit(b"w1"))
            w2 = asyncio.ensure_future(slow.submit(b"w2"))
            assert await first == b"a"
            with pytest.raises(asyncio.CancelledError):
                await w1
            assert await asyncio.wait_for(w2, 10) == b"w2"
    run(main())


def test_a_cancelled_run_still_completes(brokers):
    """A Request whose await was cancelled while its batch ran: the batch
    completes, and the next run of that Request waits for it, then runs."""
    b = brokers.start(overrides=SLOW)

    async def main():
        async with bb.AsyncClient(b.sock) as client:
            slow = client.model("slow")
            with slow.request(8) as r:
                r.write(b"running!")
                first = asyncio.ensure_future(slow.run(r))
                for _ in range(1000):  # until its batch runs: a cancel cannot stop it then
                    await asyncio.sleep(0.005)
                    if slow.stats().running == 1:
                        break
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
                assert await slow.run(r) is r
                assert bytes(r.output) == b"running!"
            s = stats_when(slow, lambda s: s.completed == 2)
            assert s.completed == 2 and s.cancelled == 0
    run(main())


def test_a_cancelled_submit_gives_its_slot_back(brokers):
    """The slot of a model.submit cancelled while its batch ran stays the
    broker's until the batch ends: submissions wait for it meanwhile
    instead of failing with BB_ENOMEM."""
    b = brokers.start(overrides=SLOW)

    async def main():
        async with bb.AsyncClient(b.sock, max_inflight=1) as client:
            slow = client.model("slow")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(slow.submit(b"a"), 0.05)
            assert await asyncio.gather(slow.submit(b"b"), slow.submit(b"c")) == [b"b", b"c"]
            assert client._owned == 0
    run(main())


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_an_async_client_made_outside_a_loop_leaves_nothing_behind(broker):
    """AsyncClient() with no running loop raises RuntimeError; the session it
    had connected was left open (its close() failed on a missing attribute
    inside __del__): descriptors, the mapping and a broker session leaked."""
    gc.collect()
    before = _open_fds()
    for _ in range(3):
        with pytest.raises(RuntimeError):
            bb.AsyncClient(broker.sock)
        gc.collect()
    assert _open_fds() == before


def test_a_request_of_another_client_is_refused(broker):
    """model.run(request) with a request of another client (the same model
    name) is BB_EINVAL: its completion reaches the other client's
    descriptor, never this loop's, so the await waited for ever."""
    async def main():
        with bb.Client(broker.sock) as other:
            async with bb.AsyncClient(broker.sock) as client:
                model = client.model("echo")
                with other.model("echo").request(4) as r:
                    r.write(b"abcd")
                    with pytest.raises(bb.BB_EINVAL):
                        await asyncio.wait_for(model.run(r), 5)
                    with pytest.raises(bb.BB_EINVAL):
                        await asyncio.wait_for(client.submit(r), 5)
                    assert not client._pending
    run(main())


def test_an_async_client_collected_after_its_loop_closed_disconnects(brokers):
    """An AsyncClient left open, with a cancelled submission still running
    in the broker, and collected after asyncio.run() closed its loop: failing
    that submission's future raised 'Event loop is closed' inside close(),
    before the disconnect, and __del__ swallowed it: the session leaked."""
    b = brokers.start(overrides=SLOW + ["model.slow.param.batch_us=3000000"])
    gc.collect()
    before = _open_fds()

    async def main():
        client = bb.AsyncClient(b.sock)
        slow = client.model("slow")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow.submit(b"runs"), 0.05)
        assert client._pending  # the broker still runs it
        return client

    client = asyncio.run(main())
    del client
    gc.collect()
    assert _open_fds() == before
