"""Loading libbatchbroker with ctypes, and the C declarations this package uses.

Nothing is compiled: the structures below mirror include/batchbroker/client.h
(tests/test_layout.py compares them with a C compiler's view), and every
function is declared with its argument and result types so that ctypes
neither truncates a pointer nor guesses an int.

Where the library comes from, first found wins:

1. ``$BATCHBROKER_LIB``: a path to the shared library;
2. the library installed with this package (``_install.py``, written by
   ``cmake --install``);
3. the system's library search (``ctypes.util.find_library``, i.e. ldconfig);
4. a build tree beside this source tree (``build*/client/``), for running
   from a checkout.
"""

import ctypes
import ctypes.util
import glob
import os

c_void_p = ctypes.c_void_p
c_int = ctypes.c_int
c_size_t = ctypes.c_size_t
c_uint32 = ctypes.c_uint32
c_int64 = ctypes.c_int64
c_uint64 = ctypes.c_uint64
c_char_p = ctypes.c_char_p


class ClientOpts(ctypes.Structure):
    _fields_ = [("segment_bytes", c_size_t), ("max_inflight", c_uint32), ("timeout_ms", c_uint32)]


class SubmitOpts(ctypes.Structure):
    _fields_ = [("priority", c_int), ("timeout_us", c_uint32), ("flags", c_uint32),
                ("tag", c_uint64)]


# struct bb_model_stats (include/batchbroker/client.h), version 2.
STATS_BATCH_BUCKETS = 17
STATS_PHASES = 4


class ModelStatsC(ctypes.Structure):
    _fields_ = [("size", c_uint32), ("version", c_uint32),
                ("submitted", c_uint64), ("completed", c_uint64), ("failed", c_uint64),
                ("timed_out", c_uint64), ("rejected", c_uint64), ("deduplicated", c_uint64),
                ("batches", c_uint64), ("completed_by_priority", c_uint64 * 5),
                ("avg_batch_size", ctypes.c_double), ("avg_queue_wait_us", ctypes.c_double),
                ("throughput_rps", ctypes.c_double), ("latency_p50_us", ctypes.c_double),
                ("latency_p95_us", ctypes.c_double), ("latency_p99_us", ctypes.c_double),
                ("queued", c_uint32), ("batch_target", c_uint32),
                ("cancelled", c_uint64), ("profile_stride", c_uint32), ("running", c_uint32),
                ("window_s", ctypes.c_double),
                ("batch_size_hist", c_uint64 * STATS_BATCH_BUCKETS),
                ("latency_sum_ns", c_uint64), ("phase_count", c_uint64),
                ("timed_latency_sum_ns", c_uint64),
                ("phase_sum_ns", c_uint64 * STATS_PHASES),
                ("phase_p50_us", ctypes.c_double * STATS_PHASES),
                ("phase_p99_us", ctypes.c_double * STATS_PHASES),
                ("latency_p50_by_priority_us", ctypes.c_double * 5),
                ("latency_p99_by_priority_us", ctypes.c_double * 5),
                ("reserved", c_uint64 * 31)]


class ModelTuningC(ctypes.Structure):
    _fields_ = [("adaptive", c_int), ("pinned", c_uint32), ("batch_target", c_uint32),
                ("wait_us", c_uint32), ("max_batch_size", c_uint32),
                ("fit_a_us", ctypes.c_double), ("fit_b_us", ctypes.c_double),
                ("fit_r2", ctypes.c_double), ("best_size", ctypes.c_double),
                ("arrival_rps", ctypes.c_double), ("throughput_rps", ctypes.c_double),
                ("latency_p99_us", ctypes.c_double), ("score", ctypes.c_double),
                ("slo_violations", c_uint64), ("changes", c_uint32)]


# name: (result type, argument types)
_PROTOTYPES = {
    "bb_connect": (c_int, [c_char_p, ctypes.POINTER(ClientOpts), ctypes.POINTER(c_void_p)]),
    "bb_connect_lanes": (c_int, [c_char_p, ctypes.POINTER(ClientOpts), ctypes.c_uint,
                                 ctypes.POINTER(c_void_p)]),
    "bb_default_socket": (c_int, [ctypes.c_char_p, c_size_t]),
    "bb_disconnect": (None, [c_void_p]),
    "bb_model_open": (c_int, [c_void_p, c_char_p, ctypes.POINTER(c_void_p)]),
    "bb_request_new": (c_int, [c_void_p, c_size_t, c_size_t, ctypes.POINTER(c_void_p)]),
    "bb_request_input": (c_void_p, [c_void_p]),
    "bb_request_input_capacity": (c_size_t, [c_void_p]),
    "bb_request_set_input_len": (c_int, [c_void_p, c_size_t]),
    "bb_submit": (c_int, [c_void_p, ctypes.POINTER(SubmitOpts)]),
    "bb_wait": (c_int, [c_void_p, c_int64]),
    "bb_cancel": (c_int, [c_void_p]),
    "bb_request_status": (c_int, [c_void_p]),
    "bb_request_output": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bb_request_tag": (c_uint64, [c_void_p]),
    "bb_request_free": (None, [c_void_p]),
    "bb_infer": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p, c_size_t,
                         ctypes.POINTER(c_size_t), ctypes.POINTER(SubmitOpts), c_int64]),
    "bb_client_fd": (c_int, [c_void_p]),
    "bb_client_poll": (c_int, [c_void_p, ctypes.POINTER(c_void_p), c_int]),
    "bb_model_stats": (c_int, [c_void_p, ctypes.POINTER(ModelStatsC)]),
    "bb_model_tuning": (c_int, [c_void_p, ctypes.POINTER(ModelTuningC)]),
    "bb_model_pin": (c_int, [c_void_p, c_uint32]),
    "bb_client_set_spin_ns": (None, [c_void_p, c_int64]),
    "bb_strerror": (c_char_p, [c_int]),
    "bb_errname": (c_char_p, [c_int]),
    "bb_version": (c_char_p, [ctypes.POINTER(c_int), ctypes.POINTER(c_int),
                              ctypes.POINTER(c_int)]),
}


def _candidates():
    env = os.environ.get("BATCHBROKER_LIB")
    if env:
        # Asked for explicitly: no silent fallback to another copy.
        yield env
        return
    try:
        from . import _install  # written by cmake --install
        yield os.path.join(_install.LIBDIR, _install.LIBNAME)
    except ImportError:
        pass
    found = ctypes.util.find_library("batchbroker")
    if found:
        yield found
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    for lib in sorted(glob.glob(os.path.join(root, "build*", "client", "libbatchbroker.so.*"))):
        if lib.count(".so.") == 1 and lib.rsplit(".so.", 1)[1].isdigit():
            yield lib  # the SONAME file, libbatchbroker.so.MAJOR


def _load():
    tried = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path}: {e}")
            continue
        for name, (res, args) in _PROTOTYPES.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        return lib, path
    raise ImportError("batchbroker: cannot load libbatchbroker (set BATCHBROKER_LIB to its path, "
                      "or install it): " + ("; ".join(tried) or "not found"))


lib, library_path = _load()


def version():
    """The loaded library's version, as a string "MAJOR.MINOR.PATCH"."""
    return lib.bb_version(None, None, None).decode()
