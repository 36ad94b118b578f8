"""Every BB_E* code of include/batchbroker/client.h is a Python exception of
the same name, value and text, and nothing else is."""

import os
import re

import pytest

import batchbroker as bb
from brokerproc import SOURCE_DIR


def header_codes():
    with open(os.path.join(SOURCE_DIR, "include", "batchbroker", "client.h")) as f:
        text = f.read()
    body = text[text.index("#define BB_ERRNO_MAP(X)"):text.index("enum bb_error")]
    # X(NAME, -N, "text" "more text") with C string concatenation.
    codes = {}
    for m in re.finditer(r'X\((\w+),\s*(-\d+),((?:\s*"(?:[^"\\]|\\.)*"\s*(?:\\\s*)?)+)\)', body):
        msg = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(3)))
        codes["BB_" + m.group(1)] = (int(m.group(2)), msg.encode().decode("unicode_escape"))
    return codes


def test_header_parsed():
    codes = header_codes()
    assert codes["BB_EINVAL"][0] == -1
    assert len(codes) >= 18, codes


def test_every_code_is_an_exception_class():
    codes = header_codes()
    assert set(bb.BY_CODE) == {v for v, _ in codes.values()}
    for name, (value, text) in codes.items():
        cls = getattr(bb, name)
        assert issubclass(cls, bb.BatchBrokerError)
        assert cls.__name__ == name and cls.name == name and cls.code == value
        assert cls.__doc__ == text
        e = bb.error_for(value, "context")
        assert type(e) is cls
        assert str(e) == f"context: {text} ({name})"


def test_builtin_bases():
    assert issubclass(bb.BB_ETIMEDOUT, TimeoutError)
    assert issubclass(bb.BB_EINVAL, ValueError)
    assert issubclass(bb.BB_ENOBROKER, ConnectionError)
    assert issubclass(bb.BB_EDISCONNECTED, ConnectionError)
    assert issubclass(bb.BB_EPERM, PermissionError)
    assert not issubclass(bb.BB_EBUSY, OSError)


def test_unknown_code():
    e = bb.error_for(-999)
    assert type(e) is bb.BatchBrokerError and e.code == -999 and e.name == "BB_EUNKNOWN"
    with pytest.raises(bb.BatchBrokerError):
        bb.check(-999)
    assert bb.check(3) == 3


def test_version_matches_the_build():
    import re as _re
    with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
        want = _re.search(r"project\(batchbroker VERSION (\d+\.\d+\.\d+)", f.read()).group(1)
    assert bb.version() == want == bb.__version__
