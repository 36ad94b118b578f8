"""The synchronous client: Client, Model and Request over libbatchbroker.

A Request owns a slot and two buffers inside the client's shared-memory
segment. ``request.input`` is a writable memoryview of the input buffer and
``request.output`` a read-only memoryview of the output, both over the
segment itself: numpy arrays made from them (``input_array``,
``output_array``) share that memory, nothing is copied. The rules are the C
library's (include/batchbroker/client.h): do not write the input while the
request is pending; the output view shows the last completed result until
the request is submitted again or closed; closing the client unmaps the
segment, so drop every view before ``Client.close()``.
"""

import ctypes
import enum
import os
import threading
import weakref
from dataclasses import dataclass

from . import _lib
from .errors import CODES, check, error_for

lib = _lib.lib

# A sleeping wait is cut in slices so that Ctrl-C (KeyboardInterrupt) is
# seen: ctypes runs the C call without the interpreter's signal checks.
_WAIT_SLICE_NS = 100_000_000


class Priority(enum.IntEnum):
    """Request priorities (BB_PRIORITY_*). DEFAULT is the model's default_priority."""

    DEFAULT = 0
    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4


#: BB_SUBMIT_DEDUP
SUBMIT_DEDUP = 1

#: Where Client(None) connects without $BATCHBROKER_SOCKET (bb_default_socket):
#: $XDG_RUNTIME_DIR/batchbroker.sock, /run/batchbroker/batchbroker.sock as
#: root, else /tmp/batchbroker-UID/batchbroker.sock.
def default_socket():
    buf = ctypes.create_string_buffer(108)
    n = lib.bb_default_socket(buf, len(buf))
    return buf.value.decode() if n > 0 else None


def _priority(p):
    if p is None:
        return Priority.DEFAULT
    if isinstance(p, str):
        try:
            return Priority[p.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {p!r}: one of "
                             + ", ".join(x.name.lower() for x in Priority)) from None
    p = int(p)
    if not Priority.DEFAULT <= p <= Priority.LOW:
        raise ValueError(f"priority {p} is not one of 0..4 (batchbroker.Priority)")
    return Priority(p)


def submit_opts(priority=None, timeout=None, dedup=False, tag=0):
    """A bb_submit_opts for the keyword arguments every submit takes.

    priority: a Priority, its name ("high") or number; None = the model's default.
    timeout: seconds until the broker gives up on the request (BB_ETIMEDOUT);
    None or 0 = the model's default_timeout_us.
    dedup: let the broker share one computation among identical inputs.
    tag: any integer up to 2**64-1, returned untouched by ``Request.tag``.
    """
    us = 0
    if timeout is not None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0 seconds")
        us = int(round(timeout * 1e6))
        if timeout > 0 and us == 0:
            us = 1
        if us > 0xFFFFFFFF:
            raise ValueError("timeout is longer than the broker's limit (about 71 minutes)")
    tag = int(tag)
    if not 0 <= tag <= 0xFFFFFFFFFFFFFFFF:  # ctypes would mask it to another tag
        raise ValueError(f"tag {tag} is not an unsigned 64-bit integer")
    return _lib.SubmitOpts(priority=int(_priority(priority)), timeout_us=us,
                           flags=SUBMIT_DEDUP if dedup else 0, tag=tag)


def _nbytes(data):
    """A C-contiguous, byte-addressable view of data (bytes, bytearray,
    memoryview, numpy array, any buffer)."""
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise ValueError("input must be C-contiguous (numpy.ascontiguousarray)")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def _np():
    import numpy  # only for the array helpers: bytes work without numpy
    return numpy


@dataclass(frozen=True)
class ModelStats:
    """Broker-side figures for one model (bb_model_stats)."""

    submitted: int
    completed: int
    failed: int
    timed_out: int
    rejected: int
    deduplicated: int
    batches: int
    completed_by_priority: tuple
    avg_batch_size: float
    avg_queue_wait_us: float
    throughput_rps: float
    latency_p50_us: float
    latency_p95_us: float
    latency_p99_us: float
    queued: int
    batch_target: int
    cancelled: int
    profile_stride: int
    running: int
    window_s: float
    batch_size_hist: tuple      # [k]: batches of size in (2^(k-1), 2^k]; [0]: size 1
    latency_sum_ns: int
    phase_count: int
    timed_latency_sum_ns: int
    phase_sum_ns: tuple         # queue wait, formation, backend, delivery
    phase_p50_us: tuple
    phase_p99_us: tuple
    latency_p50_by_priority_us: tuple
    latency_p99_by_priority_us: tuple


@dataclass(frozen=True)
class ModelTuning:
    """Adaptive batch sizing state of one model (bb_model_tuning)."""

    adaptive: bool
    pinned: int
    batch_target: int
    wait_us: int
    max_batch_size: int
    fit_a_us: float
    fit_b_us: float
    fit_r2: float
    best_size: float
    arrival_rps: float
    throughput_rps: float
    latency_p99_us: float
    score: float
    slo_violations: int
    changes: int


def _from_struct(cls, s):
    values = {}
    for name in cls.__dataclass_fields__:
        v = getattr(s, name)
        if isinstance(v, ctypes.Array):
            v = tuple(v)
        values[name] = v
    if cls is ModelTuning:
        values["adaptive"] = bool(values["adaptive"])
    return cls(**values)


class _Closable:
    """close() on leaving a with block, and when collected."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Client(_Closable):
    """A connection to the broker and this process's shared-memory segment.

    ``Client(path=None)`` connects to ``path``, else ``$BATCHBROKER_SOCKET``,
    else the default socket (default_socket()). segment_bytes and
    max_inflight ask for a segment size and a number of request slots (0: the
    broker's defaults). timeout_ms bounds the connection and each control
    call (open, stats) against a broker that does not answer (0:
    $BATCHBROKER_TIMEOUT_MS, else 5000); past it they raise BB_ETIMEDOUT.
    lanes > 1 puts that many broker sessions behind the one client (each with
    segment_bytes and max_inflight of its own), so that the threads sharing
    it are served by several broker workers (bb_connect_lanes: a thread's
    requests come from its own lane).
    Use it as a context manager, or call close(). One Client may be shared by
    threads (close() waits for their calls in flight). A client belongs to
    the process that made it: in a child after fork() (multiprocessing's
    fork start method included) its calls raise BB_EFORKED and close()
    releases the child's copy only; make a new Client in the child.
    """

    def __init__(self, path=None, *, segment_bytes=0, max_inflight=0, spin_ns=None,
                 timeout_ms=0, lanes=1):
        self._c = None
        # Guards _requests, which threads change as they make and close
        # requests while another polls or closes. Re-entrant: a Request
        # collected while this thread holds it closes itself.
        self._lock = threading.RLock()
        # bb_disconnect must not run while another thread is inside the
        # library with this client: _call notes each call's thread in
        # _calls, a list whose append and remove are atomic under the GIL (a
        # lock taken twice a call would double the cost of a short call),
        # and close() sets _closing, then waits on _idle until the list is
        # empty (refusing where its own thread is in it).
        self._calls = []
        self._closing = False
        self._idle = threading.Condition(self._lock)
        opts = _lib.ClientOpts(segment_bytes=int(segment_bytes), max_inflight=int(max_inflight),
                               timeout_ms=int(timeout_ms))
        out = ctypes.c_void_p()
        p = None if path is None else (path.encode() if isinstance(path, str) else bytes(path))
        where = path or os.environ.get("BATCHBROKER_SOCKET") or default_socket()
        check(lib.bb_connect_lanes(p, ctypes.byref(opts), int(lanes), ctypes.byref(out)),
              f"connect {where}")
        self._c = out.value
        _live_clients.add(self)
        self._models = {}
        # Live Request objects by handle, closed before the segment goes;
        # weak, so that a request nobody holds is collected (and its slot
        # freed). Read and changed under _lock only.
        self._requests = {}
        if spin_ns is not None:
            self.set_spin(spin_ns)

    def _forget_other_threads(self):
        """In a fork child: the parent's other threads are gone, and so are
        their calls; a lock one of them held would never be released."""
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._calls = []
        self._closing = False

    def _call(self, fn, *args):
        """fn(*args): a call into the library that uses this client (its
        handle, a model's or a request's), counted so that close() waits
        for it. Raises BB_EINVAL once the client is closed or closing."""
        me = threading.get_ident()
        self._calls.append(me)  # before the check: close() then waits for it
        try:
            if self._closing or self._c is None:
                raise error_for(CODES["BB_EINVAL"], "the client is closed")
            return fn(*args)
        finally:
            self._leave(me)

    def _leave(self, me):
        self._calls.remove(me)  # this thread's entry (close() looks for its own)
        if self._closing:
            with self._lock:  # close() holds it until it waits: no lost wake-up
                self._idle.notify_all()

    def set_spin(self, ns):
        """How long a wait spins before it sleeps, in nanoseconds (0 = sleep at once)."""
        self._call(lib.bb_client_set_spin_ns, self._c, int(ns))

    def model(self, name, *, output_dtype=None, output_shape=None):
        """Open a model by name (BB_ENOMODEL if the broker serves none of that name).

        output_dtype / output_shape describe what the model returns, so that
        ``infer`` can hand back an array of that shape (and size the output
        buffer) without being told each time.
        """
        key = (name, output_dtype, tuple(output_shape) if output_shape is not None else None)
        m = self._models.get(key)
        if m is None:
            out = ctypes.c_void_p()
            check(self._call(lib.bb_model_open, self._c, name.encode(), ctypes.byref(out)),
                  f"model {name!r}")
            m = self._model_class(self, name, out.value, output_dtype, output_shape)
            self._models[key] = m
        return m

    _model_class = None  # set below: Model

    def fileno(self):
        """bb_client_fd: readable when a request completes or the broker goes away."""
        return check(self._call(lib.bb_client_fd, self._c), "client fd")

    def poll(self, max_events=256):
        """bb_client_poll: the requests (of this client's live Request objects)
        that completed since the last call. Raises BB_EDISCONNECTED once the
        broker is gone and nothing is left."""
        arr = (ctypes.c_void_p * max_events)()
        n = check(self._call(lib.bb_client_poll, self._c, arr, max_events), "poll")
        with self._lock:
            refs = [self._requests.get(arr[i]) for i in range(n)]
        found = [ref() for ref in refs if ref is not None]
        return [r for r in found if r is not None]

    def close(self):
        """Free every request, disconnect and unmap the segment. Idempotent.
        Waits first for the calls other threads are making with this client
        to return (a wait within its 100 ms slice, a control call within
        timeout_ms); their next call raises BB_EINVAL."""
        if self._c is None:
            return
        with self._lock:
            if self._closing:  # another thread closes it: wait for that
                while self._c is not None:
                    self._idle.wait()
                return
            me = threading.get_ident()
            if me in self._calls:
                # A signal handler (or the like) on a thread that is inside a
                # call with this client: waiting would wait for ourselves.
                raise error_for(CODES["BB_ESTATE"], "close() from inside a call of this "
                                "thread with the client (a signal handler?)")
            self._closing = True
            try:
                while self._calls:
                    self._idle.wait()
            except BaseException:  # interrupted (Ctrl-C): the client stays open
                self._closing = False
                self._idle.notify_all()
                raise
            # Under the lock: a Request closing in another thread waits,
            # then finds its handle gone.
            for ref in list(self._requests.values()):
                r = ref()
                if r is not None and r._r is not None:
                    lib.bb_request_free(r._r)
                    r._r = None
            self._requests.clear()
            lib.bb_disconnect(self._c)
            self._c = None
            self._models.clear()
            self._idle.notify_all()

    @property
    def closed(self):
        return self._c is None

    def __repr__(self):
        return f"<batchbroker.Client {'closed' if self._c is None else hex(self._c)}>"


# Every open Client, for the fork handler below.
_live_clients = weakref.WeakSet()


def _after_fork_in_child():
    for c in list(_live_clients):
        c._forget_other_threads()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Model:
    """A model served by the broker; made by Client.model(name)."""

    def __init__(self, client, name, handle, output_dtype=None, output_shape=None):
        self.client = client
        self.name = name
        self._m = handle
        self.output_dtype = output_dtype
        self.output_shape = tuple(output_shape) if output_shape is not None else None

    def request(self, input_bytes, output_bytes=None):
        """A reusable request with input_bytes of input and output_bytes
        (default: input_bytes) of output room, both in shared memory."""
        if output_bytes is None:
            output_bytes = input_bytes
        return Request(self, int(input_bytes), int(output_bytes))

    def _output_bytes(self, data_nbytes, out, output_bytes):
        if out is not None:
            return memoryview(out).nbytes
        if output_bytes is not None:
            return int(output_bytes)
        if self.output_dtype is not None and self.output_shape is not None:
            np = _np()
            return int(np.dtype(self.output_dtype).itemsize * int(np.prod(self.output_shape)))
        return data_nbytes

    def _result(self, data, view, out):
        """What infer returns: out filled, else an array or bytes (a copy)."""
        if out is not None:
            dst = _nbytes(out)
            if len(view) > len(dst):
                raise error_for(CODES["BB_ETOOBIG"], f"the output ({len(view)} bytes) does not fit out")
            dst[:len(view)] = view
            return out
        if self.output_dtype is not None:
            np = _np()
            arr = np.frombuffer(view, dtype=self.output_dtype).copy()
            return arr.reshape(self.output_shape) if self.output_shape is not None else arr
        if type(data).__module__ == "numpy" and hasattr(data, "dtype"):
            np = _np()
            if len(view) % data.dtype.itemsize == 0:
                arr = np.frombuffer(view, dtype=data.dtype).copy()
                return arr.reshape(data.shape) if arr.size == data.size else arr
        return bytes(view)

    def submit(self, data, *, output_bytes=None, priority=None, timeout=None, dedup=False,
               tag=0):
        """Copy data into a new request and submit it; returns the Request,
        a future: ``.result(timeout)`` waits and gives the output view,
        ``.done()``, ``.cancel()``. Close it (or let it be collected) after."""
        src = _nbytes(data)
        r = self.request(len(src), self._output_bytes(len(src), None, output_bytes))
        try:
            r.input[:len(src)] = src
            r.submit(priority=priority, timeout=timeout, dedup=dedup, tag=tag)
        except BaseException:
            r.close()
            raise
        return r

    def infer(self, data, *, out=None, output_bytes=None, priority=None, timeout=None,
              dedup=False, wait_timeout=None):
        """Run one input through the model and return its output.

        data: bytes-like or a numpy array (copied into shared memory).
        Returns ``out`` filled in if given (a writable buffer or array);
        else an array of the model's output_dtype/output_shape if it has
        them; else an array of data's dtype if data is an array; else bytes.
        The output buffer is out's size, else output_bytes, else what the
        output dtype and shape need, else the input's size.
        timeout (seconds) is the broker's deadline for the request;
        wait_timeout (seconds, None = forever) bounds the wait here, after
        which the request is canceled and BB_ETIMEDOUT raised.
        """
        src = _nbytes(data)
        r = self.request(len(src), self._output_bytes(len(src), out, output_bytes))
        try:
            r.input[:len(src)] = src
            r.submit(priority=priority, timeout=timeout, dedup=dedup)
            return self._result(data, r.result(wait_timeout), out)
        finally:
            r.close()

    def stats(self):
        """The broker's figures for this model (a ModelStats)."""
        s = _lib.ModelStatsC()
        check(self.client._call(lib.bb_model_stats, self._m, ctypes.byref(s)),
              f"stats of {self.name}")
        if s.size != ctypes.sizeof(s):
            raise RuntimeError(f"libbatchbroker's struct bb_model_stats is {s.size} bytes, "
                               f"this package expects {ctypes.sizeof(s)}: mismatched versions")
        return _from_struct(ModelStats, s)

    def tuning(self):
        """The adaptive batch sizing state (a ModelTuning)."""
        t = _lib.ModelTuningC()
        check(self.client._call(lib.bb_model_tuning, self._m, ctypes.byref(t)),
              f"tuning of {self.name}")
        return _from_struct(ModelTuning, t)

    def pin(self, target):
        """Fix the batch target (1..max_batch_size) for every client; root or
        the broker's own user only (BB_EPERM). pin(0) or unpin() releases it."""
        check(self.client._call(lib.bb_model_pin, self._m, int(target)), f"pin {self.name}")

    def unpin(self):
        self.pin(0)

    def __repr__(self):
        return f"<batchbroker.Model {self.name!r}>"


Client._model_class = Model


class Request(_Closable):
    """A request slot with its input and output buffers in shared memory.

    Reusable: once complete, write a new input and submit again, with no
    allocation. Also a future for the submission in flight (result, done,
    cancel, wait). Close it when done, or let it be garbage-collected.
    """

    def __init__(self, model, input_bytes, output_bytes):
        self.model = model
        self.client = model.client
        self._r = None
        self.input_capacity = input_bytes
        self.output_capacity = output_bytes
        self.client._call(self._new, model._m, input_bytes, output_bytes)

    def _new(self, m, input_bytes, output_bytes):
        # One counted call, so that close() cannot come between the
        # allocation and the registration that lets it free the request.
        out = ctypes.c_void_p()
        check(lib.bb_request_new(m, input_bytes, output_bytes, ctypes.byref(out)),
              f"request of {input_bytes} + {output_bytes} bytes on {self.model.name}")
        self._input_addr = lib.bb_request_input(out.value)
        with self.client._lock:
            self._r = out.value
            self.client._requests[self._r] = weakref.ref(self)

    def _view(self, addr, n):
        """A memoryview of n bytes of the segment at addr that holds a
        reference to this request: the slot is not freed under an array made
        from it (until close() or Client.close()). Made per call, so that the
        request itself holds no view and no reference cycle."""
        buf = (ctypes.c_ubyte * n).from_address(addr)
        buf._bb_request = self
        return memoryview(buf).cast("B")

    def _handle(self):
        if self._r is None:
            raise error_for(CODES["BB_EINVAL"], "the request is closed")
        return self._r

    def _call(self, fn, *args):
        """fn(handle, *args), counted (Client._call)."""
        return self.client._call(fn, self._handle(), *args)

    @property
    def input(self):
        """Writable memoryview of the whole input buffer, in shared memory."""
        self._handle()
        return self._view(self._input_addr, self.input_capacity)

    def input_array(self, dtype="uint8", shape=None):
        """A writable numpy array over the input buffer (no copy)."""
        np = _np()
        a = np.frombuffer(self.input, dtype=dtype)
        return a.reshape(shape) if shape is not None else a

    def set_input_len(self, n):
        """Send only the first n bytes of the input buffer (default: all of it)."""
        check(self._call(lib.bb_request_set_input_len, int(n)), "set_input_len")

    def write(self, data):
        """Copy data into the input buffer and send exactly that many bytes."""
        src = _nbytes(data)
        if len(src) > self.input_capacity:
            raise error_for(CODES["BB_EINVAL"], f"{len(src)} bytes do not fit the {self.input_capacity}-byte input")
        self.input[:len(src)] = src
        self.set_input_len(len(src))

    def submit(self, *, priority=None, timeout=None, dedup=False, tag=0):
        """Submit (or resubmit, once complete). See submit_opts for the arguments.
        A full queue is not raised here: the request completes with BB_EBUSY."""
        opts = submit_opts(priority, timeout, dedup, tag)
        check(self._call(lib.bb_submit, ctypes.byref(opts)), "submit")
        return self

    @property
    def status(self):
        """0 once completed successfully, BB_EPENDING (-5) while pending, else the code."""
        return self._call(lib.bb_request_status)

    def done(self):
        return self.status != CODES["BB_EPENDING"]

    def wait(self, timeout=None):
        """Wait for completion (timeout in seconds, None = forever, <= 0 =
        poll) and raise
        the request's error if it failed. Returns self."""
        # One counted call a slice: Client.close() in another thread waits
        # for the slice under way, not for the whole wait.
        # A negative timeout polls, as a Future's does (bb_wait would take
        # it as "for ever", in one call that nothing interrupts).
        left = None if timeout is None else max(0, int(timeout * 1e9))
        while True:
            rc = self._call(lib.bb_wait, _WAIT_SLICE_NS if left is None
                            else min(left, _WAIT_SLICE_NS))
            if rc != CODES["BB_ETIMEDOUT"]:
                break
            # bb_wait says BB_EDISCONNECTED, not BB_ETIMEDOUT, once the
            # broker is gone, however short the slice: no slice loops for ever.
            if left is not None:
                left -= _WAIT_SLICE_NS
                if left <= 0:
                    break
        check(rc, "wait")
        check(self._call(lib.bb_request_status), f"request on {self.model.name}")
        return self

    @property
    def output(self):
        """Read-only memoryview of the output, in shared memory (no copy).
        Valid until the request is submitted again or closed."""
        n = ctypes.c_size_t()
        p = self._call(lib.bb_request_output, ctypes.byref(n))
        if not p:
            check(self.status, "output")
            return memoryview(b"")
        return self._view(p, n.value).toreadonly()

    def output_array(self, dtype="uint8", shape=None):
        """A read-only numpy array over the output (no copy)."""
        np = _np()
        a = np.frombuffer(self.output, dtype=dtype)
        return a.reshape(shape) if shape is not None else a

    def result(self, timeout=None):
        """wait(timeout), then the output view."""
        return self.wait(timeout).output

    def cancel(self):
        """Ask the broker to drop the request if it has not run yet (it then
        completes with BB_ECANCELED). False if it was not pending."""
        rc = self._call(lib.bb_cancel)
        if rc == CODES["BB_ESTATE"]:  # not pending
            return False
        check(rc, "cancel")
        return True

    @property
    def tag(self):
        return self._call(lib.bb_request_tag)

    def close(self):
        """Free the slot (a pending request is canceled first). Idempotent."""
        if self._r is None:
            return
        client = self.client
        with client._lock:
            r, self._r = self._r, None
            if r is None or client._c is None:
                return  # bb_disconnect freed it
            # Forget the handle first: once freed, it may be another request's.
            client._requests.pop(r, None)
            me = threading.get_ident()
            client._calls.append(me)  # even while closing: close() waits for it
        try:
            lib.bb_request_free(r)
        finally:
            client._leave(me)

    def __repr__(self):
        return (f"<batchbroker.Request {self.model.name} {self.input_capacity}+"
                f"{self.output_capacity} bytes{' closed' if self._r is None else ''}>")
