"""pytest fixtures for the command-line checks of batchbroker, bbctl and
bb-bench (the newcomer's rough edges of issue 10): brokers from the build
tree (tests/brokerproc.py), the Python client to hold connections."""

import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: brokerproc

from brokerproc import SOURCE_DIR, broker, brokers  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="session")
def project_version():
    with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
        return re.search(r"project\(batchbroker VERSION (\d+\.\d+\.\d+)", f.read()).group(1)
