"""asyncio integration: many requests in flight from one event loop.

The loop watches the client's descriptor (bb_client_fd, readable when a
request completes or the broker goes away) with ``loop.add_reader``; the
callback collects the completed requests (bb_client_poll) and resolves
their futures. Submitting is a few stores into shared memory, so nothing
here blocks the loop except connecting and opening a model (one short
round trip on the control socket each).

    async with batchbroker.AsyncClient() as client:
        y = await client.infer("echo", b"hello")
        model = client.model("ranker", output_dtype="float32", output_shape=(10,))
        scores = await model.submit(x, priority="high")   # the seed's batcher.submit
        results = await asyncio.gather(*(model.submit(x) for x in xs))

Cancelling the task that awaits a request cancels the request in the broker
if it has not run yet; one already running completes all the same. Its
slot (model.submit) is freed, and a prepared Request (model.run) can be
submitted again, once the broker lets go of it.
"""

import asyncio
import collections
import ctypes

from . import _lib
from .client import Client, Model, _nbytes
from .errors import BY_CODE, CODES, BatchBrokerError, error_for

lib = _lib.lib

_BB_EDISCONNECTED = CODES["BB_EDISCONNECTED"]
_BB_EPENDING = CODES["BB_EPENDING"]


def _ignore_outcome(fut):
    # A submission nobody awaits any more: its error is retrieved here.
    if not fut.cancelled():
        fut.exception()


class AsyncClient(Client):
    """A Client whose completions are delivered to an asyncio event loop.

    Make it inside a running loop (``async with AsyncClient(...)``) or pass
    ``loop``. Everything Client does works too (stats, the zero-copy
    Request API); ``await client.submit(request)`` waits for a prepared
    Request without blocking the loop.
    """

    def __init__(self, path=None, *, segment_bytes=0, max_inflight=0, loop=None, spin_ns=0,
                 timeout_ms=0):
        # The loop first, and what close() reads: a client that fails to
        # start (no running loop) must not leave its session connected.
        self._loop = loop or asyncio.get_running_loop()
        self._watching = False
        self._pending = {}  # request handle -> (future, Request)
        # spin_ns 0: nothing here waits in the C library, and a synchronous
        # wait on the loop's thread should not spin.
        super().__init__(path, segment_bytes=segment_bytes, max_inflight=max_inflight,
                         spin_ns=spin_ns, timeout_ms=timeout_ms)
        # Backpressure for AsyncModel.submit: with every slot (or all the
        # segment) taken, a submission waits for one of ours to be freed
        # instead of failing with BB_ENOMEM.
        self._owned = 0                   # requests AsyncModel.submit holds
        self._room_waiters = collections.deque()
        self._events = (ctypes.c_void_p * 256)()
        try:
            self._fd = self.fileno()
            self._loop.add_reader(self._fd, self._on_readable)
        except BaseException:
            super().close()
            raise
        self._watching = True

    _model_class = None  # set below: AsyncModel

    def _on_readable(self):
        while True:
            n = lib.bb_client_poll(self._c, self._events, len(self._events))
            if n < 0:
                self._fail_all(n)
                return
            for i in range(n):
                entry = self._pending.pop(self._events[i], None)
                if entry is None:
                    continue  # a request awaited by nobody (or already cancelled)
                fut, req = entry
                if not fut.done():
                    st = lib.bb_request_status(req._r)
                    if st == 0:
                        fut.set_result(req)
                    else:
                        fut.set_exception(error_for(st, f"request on {req.model.name}"))
            if n < len(self._events):
                return

    def _fail_all(self, code):
        """The broker is gone: fail every pending future and every task
        waiting for a slot, and stop watching."""
        self._stop_watching()
        pending, self._pending = self._pending, {}
        for fut, req in pending.values():
            if not fut.done():
                fut.set_exception(error_for(code, f"request on {req.model.name}"))
        self._fail_room_waiters(code, "the broker is gone")

    def _fail_room_waiters(self, code, why):
        # No slot will come: the requests that would free one failed too.
        waiters, self._room_waiters = self._room_waiters, collections.deque()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error_for(code, f"waiting for a request slot: {why}"))

    def _stop_watching(self):
        if self._watching:
            self._watching = False
            try:
                self._loop.remove_reader(self._fd)
            except Exception:
                pass  # the loop is closed already

    async def submit(self, request, *, priority=None, timeout=None, dedup=False, tag=0):
        """Submit a prepared Request and wait for it without blocking the
        loop; returns the Request (read ``request.output``), or raises its
        error. timeout (seconds) is the broker's deadline for it. If an
        earlier submit of this request was cancelled while the broker ran
        it, waits for that one to complete first."""
        if request.client is not self:
            # Its completion would reach the other client, never this loop.
            raise error_for(CODES["BB_EINVAL"], "the request belongs to another client")
        prev = self._pending.get(request._r)
        if prev is not None and request.status == _BB_EPENDING:
            await asyncio.wait((prev[0],))  # its outcome is nobody's; never cancelled
        if not self._watching:
            raise error_for(_BB_EDISCONNECTED, "the broker is gone")
        fut = self._loop.create_future()
        r = request._handle()
        self._pending[r] = (fut, request)
        try:
            request.submit(priority=priority, timeout=timeout, dedup=dedup, tag=tag)
        except BaseException:
            self._pending.pop(r, None)
            raise
        try:
            return await fut
        except asyncio.CancelledError:
            try:
                request.cancel()
            except BatchBrokerError:
                pass  # the broker is gone or the client closed: nothing runs
            if self._watching and request.status == _BB_EPENDING:
                # A cancel cannot stop a batch that runs (and a queued one
                # completes when the broker sees the cancel): a future for
                # this submission, that no task awaits, stays in _pending
                # until the broker lets go of the request; its next submit
                # and _free_request wait for that. (Not asyncio.shield on
                # every await: that costs each request a few microseconds.)
                left = self._loop.create_future()
                left.add_done_callback(_ignore_outcome)
                self._pending[r] = (left, request)
            else:
                self._pending.pop(r, None)
            raise

    async def _new_request(self, model, in_bytes, out_bytes):
        fut = None
        try:
            while True:
                if not self._watching:
                    raise error_for(_BB_EDISCONNECTED, "the broker is gone" if self._c
                                    else "the client was closed")
                try:
                    req = model.request(in_bytes, out_bytes)
                    self._owned += 1
                    return req
                except BY_CODE[CODES["BB_ENOMEM"]]:
                    if self._owned == 0:
                        raise  # nothing of ours will free room: it cannot fit
                fut = self._loop.create_future()
                self._room_waiters.append(fut)
                await fut
        except BaseException:
            # Each freed slot wakes one waiter: one that leaves without
            # using its wake-up (cancelled before it ran, or failed since)
            # passes it on, or the next waiter sleeps on beside a free slot.
            if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                self._wake_room_waiter()
            raise

    def _free_request(self, req):
        entry = self._pending.get(req._r)
        if entry is not None and not entry[0].done():
            # Cancelled while the broker may still run it: its slot is the
            # broker's until then, so it counts as ours, and wakes a waiter
            # only when it is really free.
            entry[0].add_done_callback(lambda _fut: self._free_request(req))
            return
        req.close()
        self._owned -= 1
        self._wake_room_waiter()

    def _wake_room_waiter(self):
        while self._room_waiters:
            fut = self._room_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    async def infer(self, model, data, **kwargs):
        """``await client.infer("name" or model, data, ...)``: AsyncModel.submit."""
        if isinstance(model, str):
            model = self.model(model)
        return await model.submit(data, **kwargs)

    def close(self):
        """Fail what is pending and what waits for a slot (BB_EDISCONNECTED),
        stop watching, disconnect."""
        if self._c is None:
            return
        self._stop_watching()
        pending, self._pending = self._pending, {}
        try:
            for fut, _req in pending.values():
                if not fut.done():
                    fut.set_exception(error_for(_BB_EDISCONNECTED, "the client was closed"))
            self._fail_room_waiters(_BB_EDISCONNECTED, "the client was closed")
        finally:
            # Even where a future's callbacks cannot be scheduled (its loop
            # is closed: a client collected after asyncio.run returned).
            super().close()

    async def aclose(self):
        self.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()


class AsyncModel(Model):
    """A model of an AsyncClient: ``await model.submit(data, priority=...)``."""

    async def submit(self, data, *, out=None, output_bytes=None, priority=None, timeout=None,
                     dedup=False):
        """Run one input and return its output, as Model.infer does (same
        arguments and result types), without blocking the event loop. When
        every request slot of the client is taken, waits for one to free."""
        src = _nbytes(data)
        client = self.client
        req = await client._new_request(self, len(src),
                                        self._output_bytes(len(src), out, output_bytes))
        try:
            req.input[:len(src)] = src
            await client.submit(req, priority=priority, timeout=timeout, dedup=dedup)
            return self._result(data, req.output, out)
        finally:
            client._free_request(req)

    infer = submit

    async def run(self, request, **kwargs):
        """Submit a prepared (zero-copy) Request of this model and await it."""
        if request.model is not self and request.model.name != self.name:
            raise error_for(CODES["BB_EINVAL"], "the request belongs to another model")
        return await self.client.submit(request, **kwargs)


AsyncClient._model_class = AsyncModel
