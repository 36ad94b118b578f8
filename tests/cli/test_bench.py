"""bb-bench's command line: -h, --version, and a spawned broker that leaves
no log file behind."""

import glob
import os
import subprocess

from brokerproc import build_path, run

BENCH = build_path("bench", "bb-bench")


def test_h_and_version(project_version):
    for flag in ("-h", "--help"):
        r = run([BENCH, flag])
        assert r.returncode == 0 and r.stdout.startswith("usage: bb-bench"), (flag, r.stderr)
    r = run([BENCH, "--version"])
    assert r.returncode == 0 and r.stdout.startswith(f"bb-bench {project_version} "), r.stdout
    r = run([BENCH, "--bogus"])
    assert r.returncode == 2 and "bb-bench --help" in r.stderr and len(r.stderr) < 200


def test_spawned_broker_leaves_no_log_file(brokers):
    d = brokers.tmpdir
    sock = os.path.join(d, "bench.sock")
    cfg = os.path.join(d, "bench.ini")
    with open(cfg, "w") as f:
        f.write(f"[broker]\nsocket = {sock}\nplugin_dir = {os.environ['BB_PLUGIN_DIR']}\n"
                "[model.echo]\nbackend = echo\n")
    before = set(glob.glob("/tmp/bb-bench-broker-*"))
    p = subprocess.Popen([BENCH, "--spawn-broker", cfg, "--duration", "0.3", "--warmup", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "broker" in out
    # (Other programs may be writing /tmp, some in other pid namespaces, where
    # the same pid can be another process's: only files new since the run
    # started count, and this run's would carry its pid.)
    assert not [f for f in set(glob.glob("/tmp/bb-bench-broker-*")) - before if str(p.pid) in f]
    assert not os.path.exists(sock)


def test_a_broker_that_fails_to_start_is_shown(brokers):
    cfg = os.path.join(brokers.tmpdir, "bad.ini")
    with open(cfg, "w") as f:
        f.write(f"[broker]\nsocket = {brokers.tmpdir}/x.sock\nspin_us = lots\n")
    r = run([BENCH, "--spawn-broker", cfg, "--duration", "0.2", "--warmup", "0"], timeout=60)
    assert r.returncode != 0
    assert "spin_us" in r.stderr, r.stderr  # the broker's own message, from memory
