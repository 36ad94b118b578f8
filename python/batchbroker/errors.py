"""Every BB_E* code of the C library as an exception class of the same name.

The classes are made when the package is imported, from the loaded
library's own list (bb_errname / bb_strerror over the codes -1, -2, ...),
so a code added to the C library's one list (BB_ERRNO_MAP in client.h)
appears here without a change. tests/test_errors.py checks the result
against the header.

All derive from BatchBrokerError; some also from the built-in exception a
Python caller would catch for the same condition (TimeoutError for
BB_ETIMEDOUT, ConnectionError for a broker that is gone, ...).
"""

from ._lib import lib


class BatchBrokerError(Exception):
    """A negative BB_E* code from libbatchbroker.

    Attributes: ``code`` (the negative int), ``name`` ("BB_EBUSY"),
    ``description`` (the library's text for it).
    """

    code = 0
    name = "BB_EUNKNOWN"

    def __init__(self, message=None, code=None):
        if code is not None:
            self.code = code
            self.name = lib.bb_errname(code).decode()
        self.description = lib.bb_strerror(self.code).decode()
        super().__init__(message or f"{self.description} ({self.name})")


# The built-in exception each one also is, where there is an obvious one.
_ALSO = {
    "BB_EINVAL": ValueError,
    "BB_ETIMEDOUT": TimeoutError,
    "BB_EDISCONNECTED": ConnectionError,
    "BB_ENOBROKER": ConnectionRefusedError,
    "BB_ESHUTDOWN": ConnectionError,
    "BB_EPERM": PermissionError,
    "BB_EUNTRUSTED": PermissionError,
    "BB_EMAXCLIENTS": ConnectionRefusedError,
    "BB_ENOMODEL": LookupError,
    "BB_ESYS": OSError,
}

#: code -> exception class, for every code the library knows.
BY_CODE = {}
#: "BB_EBUSY" -> -3, for every code the library knows.
CODES = {}


def _make_classes():
    code = -1
    while True:
        name = lib.bb_errname(code).decode()
        if name == "BB_EUNKNOWN":
            break
        bases = (BatchBrokerError,) + ((_ALSO[name],) if name in _ALSO else ())
        cls = type(name, bases, {"code": code, "name": name,
                                 "__doc__": lib.bb_strerror(code).decode(),
                                 "__module__": __name__})
        BY_CODE[code] = cls
        CODES[name] = code
        globals()[name] = cls
        code -= 1


_make_classes()
__all__ = ["BatchBrokerError", "BY_CODE", "CODES", "error_for", "check"] + [c.name for c in BY_CODE.values()]


def error_for(code, context=None):
    """The exception instance for a negative code, its message
    "context: description (BB_NAME)". An unknown code gives BatchBrokerError."""
    cls = BY_CODE.get(code)
    if cls is None:
        err = BatchBrokerError(code=code)
        return BatchBrokerError(f"{context}: {err}" if context else None, code=code)
    text = f"{cls.__doc__} ({cls.name})"
    return cls(f"{context}: {text}" if context else text)


def check(rc, context=None):
    """rc if it is >= 0, else raise the code's exception (see error_for)."""
    if rc < 0:
        raise error_for(rc, context)
    return rc
