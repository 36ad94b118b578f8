"""Several Python processes and C clients share one broker at the same time,
and every answer each of them gets is its own."""

import os
import subprocess
import sys

from brokerproc import build_path
from test_client import stats_when

import batchbroker as bb

HERE = os.path.dirname(os.path.abspath(__file__))


def test_python_and_c_clients_share_one_broker(brokers):
    b = brokers.start(overrides=["model.echo.max_wait_us=200"])
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    n_py, per_proc = 4, 400
    pys = [subprocess.Popen([sys.executable, os.path.join(HERE, "mp_worker.py"), b.sock, str(p),
                             str(per_proc)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env) for p in range(n_py)]
    # C clients in the same run: bb-demo checks every answer against its request.
    demo = subprocess.Popen([build_path("examples", "bb-demo"), "-s", b.sock, "-p", "2", "-t", "2",
                             "-k", "4", "-d", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    outs = [p.communicate(timeout=120)[0] for p in pys]
    demo_out = demo.communicate(timeout=120)[0]
    for p, out in zip(pys, outs):
        assert p.returncode == 0, out
        assert out.strip().endswith(f"ok {per_proc}"), out
    assert demo.returncode == 0, demo_out
    with bb.Client(b.sock) as c:
        s = stats_when(c.model("echo"), lambda s: s.completed + s.deduplicated >= n_py * per_proc)
    assert s.failed == 0 and s.rejected == 0
    assert s.completed >= n_py * per_proc  # plus bb-demo's requests
