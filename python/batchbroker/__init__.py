"""batchbroker: Python client of the shared-memory dynamic batching broker.

ctypes over the installed libbatchbroker; nothing to compile. numpy is
needed only for the array helpers.

Synchronous::

    import batchbroker as bb
    with bb.Client() as client:                 # $BATCHBROKER_SOCKET or bb.default_socket()
        echo = client.model("echo")
        print(echo.infer(b"hello"))             # b'hello'
        with echo.request(784 * 4, 10 * 4) as r:    # zero copy
            r.input_array("float32")[:] = x      # written straight into shared memory
            r.submit(priority="high", timeout=0.05)
            scores = r.wait().output_array("float32")   # a view of the result, no copy

asyncio::

    async with bb.AsyncClient() as client:
        y = await client.infer("echo", b"hello")
        model = client.model("echo")
        ys = await asyncio.gather(*(model.submit(x, priority="low") for x in xs))

Errors are exceptions named after the C codes (bb.BB_EBUSY, bb.BB_ETIMEDOUT,
...), all subclasses of bb.BatchBrokerError.
"""

from ._lib import library_path, version
from .errors import BY_CODE, CODES, BatchBrokerError, check, error_for
from .client import (Client, Model, ModelStats, ModelTuning, Priority, Request,
                     SUBMIT_DEDUP, default_socket, submit_opts)
from .aio import AsyncClient, AsyncModel

__version__ = version()

# The BB_E* exception classes, at the package's top level too.
globals().update({cls.name: cls for cls in BY_CODE.values()})

__all__ = ["AsyncClient", "AsyncModel", "BatchBrokerError", "BY_CODE", "CODES", "Client", "Model",
           "ModelStats", "ModelTuning", "Priority", "Request", "SUBMIT_DEDUP", "check", "default_socket",
           "connect", "error_for", "library_path", "submit_opts", "version"] + \
          [cls.name for cls in BY_CODE.values()]


def connect(path=None, **kwargs):
    """Client(path, **kwargs)."""
    return Client(path, **kwargs)
