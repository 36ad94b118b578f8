"""pytest fixtures for the Python client's tests: brokers started from the
build tree (tests/brokerproc.py), and the client package from this source
tree loading the library the build made ($BATCHBROKER_LIB)."""

import os
import sys


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))                              # python/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))  # brokerproc

from brokerproc import broker, brokers  # noqa: E402,F401  (fixtures)
