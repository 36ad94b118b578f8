"""bb-bench's command line: -h, --version, a spawned broker that leaves no
log file behind, a run where every request fails exits 1, the broker's batch
histogram in the JSON, its threads' CPU, the accuracy of several rounds
merged, the inproc-eager baseline, a client per thread and a client of
several lanes; nonsense numbers refused; bench/targets.py runs through."""

import glob
import json
import os
import subprocess
import sys

import pytest

from brokerproc import BROKER_BIN, build_path, run

BENCH = build_path("bench", "bb-bench")


def test_h_and_version(project_version):
    for flag in ("-h", "--help"):
        r = run([BENCH, flag])
        assert r.returncode == 0 and r.stdout.startswith("usage: bb-bench"), (flag, r.stderr)
    r = run([BENCH, "--version"])
    assert r.returncode == 0 and r.stdout.startswith(f"bb-bench {project_version} "), r.stdout
    r = run([BENCH, "--bogus"])
    assert r.returncode == 2 and "bb-bench --help" in r.stderr and len(r.stderr) < 200


@pytest.mark.parametrize("args", [
    ["--duration", "inf"],       # was taken: a run that measured nothing, exit 0
    ["--warmup", "1e400"],
    ["--rate", "inf"],           # was taken: an open loop that never ended
    ["--out-bytes", "-1"],       # was taken: SIZE_MAX, buffers of slots x capacity
    ["--out-bytes", str(1 << 63)],  # was taken: a client process died of SIGSEGV
    ["--broker-pid", "-5"],
    ["--seed", "abc"],           # was taken as seed 0
    ["--spin-ns", ""],
    ["--priority-mix", "1:1:1:1junk"],
])
def test_nonsense_numbers_are_refused(args):
    r = run([BENCH, "--no-broker", "--baseline", "inproc", "--warmup", "0", "--duration", "0.1"]
            + args, timeout=20)
    assert r.returncode == 2 and f"--{args[0][2:]} {args[1]}: invalid value" in r.stderr, \
        (args, r.returncode, r.stderr)


def test_requests_in_flight_that_overflow_are_refused():
    # 4 x 2^30 in flight for inproc-all wrapped to 0: a run of no request, exit 0.
    r = run([BENCH, "--no-broker", "--baseline", "inproc-all", "--threads", "4",
             "--concurrency", str(1 << 30), "--warmup", "0", "--duration", "0.1"], timeout=20)
    assert r.returncode == 2 and "requests in flight" in r.stderr, (r.returncode, r.stderr)


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


def test_a_run_where_every_request_fails_exits_non_zero(brokers):
    # Was a row of zeros, the failures in its errors column, and exit 0.
    plugin = os.path.join(os.environ["BB_BUILD_DIR"], "tests", "plugins",
                          "bb_backend_asyncecho.so")
    d = brokers.tmpdir
    cfg = os.path.join(d, "fails.ini")
    with open(cfg, "w") as f:
        f.write(f"[broker]\nsocket = {d}/fails.sock\n"
                f"[model.echo]\nbackend = {plugin}\nparam.fail_complete = 1\n")
    r = run([BENCH, "--spawn-broker", cfg, "--duration", "0.3", "--warmup", "0"], timeout=60)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "no request completed in the measured window" in r.stdout, r.stdout
    assert "BB_EBACKEND" in r.stdout, r.stdout


def spawned_run(brokers, name, echo_keys, *args):
    """bb-bench over a broker it spawns with an echo model of these keys, 2
    clients x 8 in flight for 0.5 s: (the run, its JSON)."""
    d = brokers.tmpdir
    cfg = os.path.join(d, f"{name}.ini")
    out = os.path.join(d, f"{name}.json")
    with open(cfg, "w") as f:
        f.write(f"[broker]\nsocket = {d}/{name}.sock\n"
                f"plugin_dir = {os.environ['BB_PLUGIN_DIR']}\n"
                f"[model.echo]\nbackend = echo\n{echo_keys}")
    r = run([BENCH, "--spawn-broker", cfg, "--clients", "2", "--concurrency", "8",
             "--duration", "0.5", "--warmup", "0.1", "--json", out, *args], timeout=60)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        return r, json.load(f)


def test_json_carries_the_brokers_batch_histogram(brokers):
    """The JSON's batch histogram is the broker's (log2 buckets of its
    batches over the run), consistent with its batch count and mean."""
    _, res = spawned_run(brokers, "hist", "max_batch_size = 8\nmax_wait_us = 200\n")
    batch = res["batch"]
    assert batch["hist_kind"] == "log2", batch
    hist = {int(k): v for k, v in batch["hist"].items()}
    assert hist and all(k & (k - 1) == 0 and 1 <= k <= 8 for k in hist), hist
    assert sum(hist.values()) == batch["batches"] > 0, batch
    # Bucket k holds the batches of k/2 + 1 to k requests (1: of one).
    total = batch["avg"] * batch["batches"]
    low = sum((k // 2 + 1) * n for k, n in hist.items())
    high = sum(k * n for k, n in hist.items())
    assert low * 0.999 <= total <= high * 1.001, (batch, low, high)


def test_server_threads_are_shown_by_name(brokers):
    """A spawned broker's threads, summed by name over the measured window:
    the dispatcher (the program's name) and each executor of a model with
    two instances; two rounds merge by name."""
    r, res = spawned_run(brokers, "thr", "instances = 2\ninline_max_us = 0\n", "--rounds", "2")
    line = [ln for ln in r.stdout.splitlines() if "server threads:" in ln]
    assert len(line) == 1, r.stdout
    cpu = res["cpu_s"]
    rows = {t["name"]: t for t in cpu["broker_threads"]}
    assert {"batchbroker", "bb-x0-echo", "bb-x1-echo"} <= set(rows), rows
    assert all(t["threads"] == 1 and t["cpu_s"] >= 0 for t in rows.values()), rows
    assert [t["cpu_s"] for t in cpu["broker_threads"]] == \
        sorted((t["cpu_s"] for t in cpu["broker_threads"]), reverse=True)
    assert len(rows) == len(cpu["broker_threads"]), cpu  # one row a name
    for name in rows:
        assert name in line[0], (name, line[0])


def test_rounds_merge_the_accuracy(brokers):
    """With --rounds, the merged accuracy counts every round's correct
    answers (it once counted the first round's only, over all rounds'
    completions: half the accuracy with two rounds)."""
    weights = build_path("models", "fmnist.bbdense")
    plugin = os.path.join(os.environ["BB_PLUGIN_DIR"], "bb_backend_blas.so")
    if not (os.path.exists(weights) and os.path.exists(plugin)):
        pytest.skip("needs the blas backend and the demo model (OpenBLAS, Fashion-MNIST)")
    out = os.path.join(brokers.tmpdir, "rounds.json")
    r = run([BENCH, "--no-broker", "--baseline", "inproc", "--model", "fmnist", "--dataset",
             "fmnist", "--backend", "blas", "--param", f"weights={weights}", "--concurrency",
             "4", "--max-batch", "4", "--max-wait-us", "0", "--duration", "0.3", "--warmup", "0",
             "--rounds", "2", "--json", out], timeout=120)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        res = json.load(f)
    inproc = res["baselines"]["inproc"]
    assert inproc["accuracy"] >= 0.85, inproc


def test_inproc_eager_does_not_wait_for_company(brokers):
    """inproc keeps the model's max_wait_us even where its thread can add
    nothing to the batch; inproc-eager is the same client that runs what it
    has at once. With a 100 ms wait and 4 in flight (max_batch 8), every
    inproc request waits its batch's 100 ms; an inproc-eager one waits for
    no one. Bounds on the wait itself, generous either way."""
    out = os.path.join(brokers.tmpdir, "eager.json")
    plugin = os.path.join(os.environ["BB_PLUGIN_DIR"], "bb_backend_echo.so")
    r = run([BENCH, "--no-broker", "--baseline", "inproc,inproc-eager", "--backend", plugin,
             "--concurrency", "4", "--max-batch", "8", "--max-wait-us", "100000",
             "--duration", "0.5", "--warmup", "0", "--json", out], timeout=60)
    assert r.returncode == 0, r.stderr
    assert "inproc-eager" in r.stdout, r.stdout
    with open(out) as f:
        base = json.load(f)["baselines"]
    assert base["inproc"]["latency_us"]["p50"] >= 90000, base["inproc"]["latency_us"]
    assert base["inproc-eager"]["latency_us"]["p50"] < 50000, base["inproc-eager"]["latency_us"]


def test_client_per_thread_connects_each_thread(brokers):
    """--client-per-thread gives each thread a session of its own: a broker
    that admits one session a process serves two threads that share one,
    and refuses the second thread's own."""
    keys = "max_batch_size = 8\n"
    d = brokers.tmpdir
    cfg = os.path.join(d, "cpt.ini")
    with open(cfg, "w") as f:
        f.write(f"[broker]\nsocket = {d}/cpt.sock\nmax_clients_per_pid = 1\n"
                f"plugin_dir = {os.environ['BB_PLUGIN_DIR']}\n[model.echo]\nbackend = echo\n{keys}")
    args = [BENCH, "--spawn-broker", cfg, "--clients", "1", "--threads", "2", "--concurrency", "4",
            "--duration", "0.3", "--warmup", "0.1"]
    r = run(args, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "(a bb_client per thread)" not in r.stdout
    r = run(args + ["--client-per-thread"], timeout=60)
    assert r.returncode != 0, r.stdout
    assert "refused the connection" in r.stdout + r.stderr, (r.stdout, r.stderr)
    _, res = spawned_run(brokers, "cpt2", keys, "--threads", "2", "--client-per-thread")
    assert res["config"]["client_per_thread"] is True, res["config"]
    assert res["completed"] > 0 and res["failed"] == 0, res


def test_lanes_are_passed_to_the_client(brokers):
    """--lanes N connects each process's client with N lanes: a broker that
    admits one session a process refuses it; the JSON says how many."""
    d = brokers.tmpdir
    cfg = os.path.join(d, "lanes.ini")
    with open(cfg, "w") as f:
        f.write(f"[broker]\nsocket = {d}/lanes.sock\nmax_clients_per_pid = 1\n"
                f"plugin_dir = {os.environ['BB_PLUGIN_DIR']}\n[model.echo]\nbackend = echo\n")
    args = [BENCH, "--spawn-broker", cfg, "--threads", "2", "--duration", "0.3", "--warmup", "0.1"]
    r = run(args + ["--lanes", "2"], timeout=60)
    assert r.returncode != 0 and "refused the connection" in r.stdout + r.stderr, (r.stdout, r.stderr)
    r = run([BENCH, "--lanes", "0"])
    assert r.returncode == 2, r.stderr
    for extra in (["--threads", "1"], ["--threads", "2", "--client-per-thread"]):
        r = run([BENCH, "--lanes", "2", *extra])
        assert r.returncode == 2 and "--lanes" in r.stderr, (extra, r.stderr)
    _, res = spawned_run(brokers, "lanes2", "", "--threads", "2", "--lanes", "2")
    assert res["config"]["lanes"] == 2, res["config"]
    assert res["completed"] > 0 and res["failed"] == 0, res


def test_the_targets_script_runs_through(brokers):
    # bench/targets.py, as a lent machine would run it from a bundle, in brief:
    # every row, and every candidate setting, with the programs named.
    out = os.path.join(brokers.tmpdir, "targets.json")
    script = os.path.join(os.environ["BB_SOURCE_DIR"], "bench", "targets.py")
    build = os.environ["BB_BUILD_DIR"]
    r = run([sys.executable, script, "--bench", BENCH, "--broker-bin", BROKER_BIN,
             "--plugin-dir", os.path.join(build, "backends"), "--candidates",
             "--duration", "0.2", "--warmup", "0", "--rounds", "1", "--json", out], timeout=600)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        rows = json.load(f)["rows"]
    assert all(row["value"] > 0 and isinstance(row["met"], bool) for row in rows), rows
    assert len([row for row in rows if row["setting"] is None]) == 6, rows
    settings = [row["setting"] for row in rows if row["setting"]]
    assert "broker.wake_offload_ms=1" in settings and "--lanes 4" in settings, settings
    assert len(settings) == 9, settings
    assert "machine:" in r.stdout and "synthetic backend" in r.stdout, r.stdout
    assert "with broker.workers=4,model.echo.formation=per_worker" in r.stdout, r.stdout
