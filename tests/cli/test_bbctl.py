"""bbctl: health lists the models, tuning has the columns docs/adaptive.md
names, pins stay in range, usage errors exit 2 before any broker is asked,
and a refusal says why."""

import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from brokerproc import build_path, run

BBCTL = build_path("tools", "bbctl")


def bbctl(sock, *args, timeout=30):
    return run([BBCTL, "-s", sock, *args], timeout=timeout)


TWO_MODELS = "[model.echo]\nbackend = echo\n\n[model.syn]\nbackend = synthetic\nmax_batch_size = 8\n"


def test_health_prints_a_line_per_model(brokers):
    b = brokers.start(TWO_MODELS)
    r = bbctl(b.sock, "health")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [l.split()[0] for l in lines] == ["echo", "syn", "ok"], r.stdout


def test_tuning_has_throughput_p99_and_slo_columns(brokers):
    b = brokers.start(TWO_MODELS)
    r = bbctl(b.sock, "tuning")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    cols = header.split()
    for c in ("rps", "p99_us", "slo_viol"):
        assert c in cols, header
    assert len(rows) == 2 and all(len(row.split()) == len(cols) for row in rows), r.stdout


def test_pin_range(brokers):
    b = brokers.start(TWO_MODELS)
    r = bbctl(b.sock, "pin", "syn", "0")
    assert r.returncode == 2 and "1..max_batch_size" in r.stderr, r
    r = bbctl(b.sock, "pin", "syn", "9")
    assert r.returncode == 1 and "max_batch_size (8)" in r.stderr, r
    r = bbctl(b.sock, "pin", "nosuch", "2")
    assert r.returncode == 1 and "no model 'nosuch'" in r.stderr, r
    assert bbctl(b.sock, "pin", "syn", "8").returncode == 0
    row = [l for l in bbctl(b.sock, "tuning").stdout.splitlines() if l.startswith("syn")][0]
    assert row.split()[3] == "8", row  # the pinned column
    assert bbctl(b.sock, "unpin", "syn").returncode == 0
    row = [l for l in bbctl(b.sock, "tuning").stdout.splitlines() if l.startswith("syn")][0]
    assert row.split()[3] == "0", row


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["pin", "echo"], ["pin", "echo", "1", "2"], ["unpin"], ["stats", "x"],
    ["top", "0"], ["top", "abc"], ["top", "-1"], ["top", "1", "2"], ["pin", "echo", "-3"],
    ["pin", "echo", "4x"], ["--nope", "stats"],
])
def test_usage_errors_exit_2_without_a_broker(tmp_path, args):
    # No broker at this path: a usage error must be found first.
    r = bbctl(str(tmp_path / "none.sock"), *args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert "bbctl --help" in r.stderr


@pytest.mark.parametrize("args", [
    ["profile"], ["profile", "--html"], ["profile", "--bogus", "x", "--html", "REPORT"],
    ["profile", "--html", "REPORT", "--seconds", "0"],
    ["profile", "--html", "REPORT", "--seconds", "abc"],
])
def test_profile_usage_errors_exit_2_without_a_broker(tmp_path, args):
    # Like every other command's: found before the broker is asked anything,
    # and no report file is made.
    report = str(tmp_path / "r.html")
    r = bbctl(str(tmp_path / "none.sock"), *[report if a == "REPORT" else a for a in args])
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert "bbctl --help" in r.stderr and "no broker" not in r.stderr, r.stderr
    assert not os.path.exists(report)


def test_profile_of_no_such_model_leaves_the_report_alone(broker, tmp_path):
    report = tmp_path / "r.html"
    report.write_text("last week's report\n")
    r = bbctl(broker.sock, "profile", "--html", str(report), "--model", "nope")
    assert r.returncode == 1 and "no such model" in r.stderr, r
    assert report.read_text() == "last week's report\n"


def test_a_stopped_broker_times_out(broker):
    # SIGSTOP: the kernel still accepts the connection and queues the HELLO;
    # what ends is the 5 s wait for the reply, which bbctl(1) documents as
    # BB_ETIMEDOUT (the broker did not disconnect).
    broker.signal(signal.SIGSTOP)
    try:
        r = bbctl(broker.sock, "health")
    finally:
        broker.signal(signal.SIGCONT)
    assert r.returncode == 1
    assert "BB_ETIMEDOUT" in r.stderr, r.stderr


def fake_broker(path, stats_reply):
    """A broker of another build on path, for one bbctl session: it admits the
    operator, answers STATS of model 0 with stats_reply and of the others
    with BB_ENOMODEL."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(1)

    def serve():
        c, _ = srv.accept()
        with c:
            while True:
                m = c.recv(512)
                if len(m) < 8:
                    return
                kind, = struct.unpack_from("<I", m)
                if kind == 1:  # HELLO -> HELLO_REPLY
                    c.send(struct.pack("<IiIIQ", 2, 0, 0, 1, 0))
                elif kind == 5 and struct.unpack_from("<I", m, 8)[0] == 0:
                    c.send(stats_reply)
                else:  # STATS_REPLY, BB_ENOMODEL
                    c.send(struct.pack("<Ii", 6, -7))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


@pytest.mark.parametrize("reply", [
    # An older broker's statistics: the name and a prefix of the figures.
    struct.pack("<Ii", 6, 0) + b"ghost".ljust(64, b"\0") + b"\x01" * 16,
    # A reply of another type, as long as the real one.
    struct.pack("<Ii", 4, 0) + b"ghost".ljust(64, b"\0") + b"\x01" * 592,
])
def test_a_reply_bbctl_does_not_understand_is_eproto(tmp_path, reply):
    # protocol.md: a reply shorter than the client expects is BB_EPROTO;
    # bbctl must not print the figures it did not get.
    sock = str(tmp_path / "fake.sock")
    srv, t = fake_broker(sock, reply)
    try:
        r = bbctl(sock, "stats")
    finally:
        srv.close()
    t.join(5)
    assert r.returncode == 1, r
    assert "ghost" not in r.stdout, r.stdout
    assert "BB_EPROTO" in r.stderr, r.stderr


def test_no_broker_says_so(tmp_path):
    r = bbctl(str(tmp_path / "none.sock"), "stats")
    assert r.returncode == 1
    assert "no broker listening" in r.stderr and "BB_ENOBROKER" in r.stderr, r.stderr


def test_max_clients_says_so(brokers):
    import batchbroker as bb
    b = brokers.start(overrides=["broker.max_clients=1"])
    held = None
    for _ in range(200):  # the start-up probe may still be counted a moment
        try:
            held = bb.Client(b.sock)
            break
        except bb.BB_EMAXCLIENTS:
            time.sleep(0.01)
    assert held is not None
    with held:
        r = bbctl(b.sock, "stats")
        assert r.returncode == 1
        assert "max_clients" in r.stderr and "BB_EMAXCLIENTS" in r.stderr, r.stderr
        log = b.wait_log("max_clients reached")
        assert "refused client" in log


def test_top_repeats_at_a_fractional_interval(broker):
    p = subprocess.Popen([BBCTL, "-s", broker.sock, "top", "0.1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=10)
    assert out.count("submitted") >= 3, out


def test_help_and_version(project_version):
    r = run([BBCTL, "--help"])
    assert r.returncode == 0 and "usage: bbctl" in r.stdout
    r = run([BBCTL, "--version"])
    assert r.returncode == 0 and r.stdout.startswith(f"bbctl {project_version} "), r.stdout
