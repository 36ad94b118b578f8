"""pytest fixtures for the Python client's tests: brokers started from the
build tree (tests/brokerproc.py), and the client package from this source
tree loading the library the build made ($BATCHBROKER_LIB)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))                              # python/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))  # brokerproc

from brokerproc import Brokers  # noqa: E402


@pytest.fixture
def brokers():
    b = Brokers()
    yield b
    b.stop_all()


@pytest.fixture
def broker(brokers):
    """A broker with the default configuration (model echo)."""
    return brokers.start()
