"""The batchbroker binary as a newcomer meets it: --help, --version, errors
that name what to fix, logs with dates and key names, and sockets it must
not take over."""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess

import pytest

import batchbroker as bb
from brokerproc import BROKER_BIN, PLUGIN_DIR, SOURCE_DIR, run


def test_help_heading_once_and_existing_backends_only():
    r = run([BROKER_BIN, "--help"])
    assert r.returncode == 0
    assert r.stdout.count("Configuration keys") == 1, r.stdout
    m = re.search(r"^Backends in (\S+): (.*)$", r.stdout, re.M)
    assert m, r.stdout
    names = m.group(2).split(", ")
    assert "echo" in names and "synthetic" in names
    for name in names:
        assert os.path.exists(os.path.join(m.group(1), f"bb_backend_{name}.so")), name
    # --help offers no backend that is not built here; the docs none that
    # the tree cannot build (they list the optional ones with what they need).
    for name in ("mlp", "cuda", "blas", "torch"):
        if not os.path.exists(os.path.join(PLUGIN_DIR, f"bb_backend_{name}.so")):
            assert not re.search(rf"\b{name}\b", r.stdout), f"{name} is not built"
    with open(os.path.join(SOURCE_DIR, "docs", "configuration.md")) as f:
        assert not re.search(r"\bmlp\b", f.read()), "mlp does not exist"


def test_unknown_option_is_short():
    r = run([BROKER_BIN, "--bogus"])
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) <= 2 and "batchbroker --help" in r.stderr, r.stderr
    assert r.stdout == ""


def test_version(project_version):
    r = run([BROKER_BIN, "--version"])
    assert r.returncode == 0 and r.stdout.startswith(f"batchbroker {project_version} "), r.stdout


def test_log_lines_carry_the_date(broker):
    first = broker.log().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z batchbroker\[\d+\] info ", first), first


def test_reload_logs_the_keys_it_changed(brokers):
    b = brokers.start("[model.echo]\nbackend = echo\nmax_wait_us = 1000\nmax_batch_size = 32\n")
    with open(b.cfg, "w") as f:
        f.write("[broker]\nspin_us = 20\n[model.echo]\nbackend = echo\nmax_wait_us = 250\n"
                "max_batch_size = 16\n")
    b.signal(signal.SIGHUP)
    log = b.wait_log("configuration reloaded")
    line = [l for l in log.splitlines() if "configuration reloaded" in l][0]
    assert "broker.spin_us 50 -> 20" in line and "model.echo.max_wait_us 1000 -> 250" in line, line
    assert "model.echo.max_batch_size" in b.wait_log("need a restart")


def test_missing_backend_names_the_model_and_the_line(tmp_path):
    cfg = tmp_path / "bb.ini"
    cfg.write_text("[broker]\nspin_us = 1\n\n[model.ranker]\nmax_batch_size = 4\nbackend = mlp\n")
    r = run([BROKER_BIN, "--config", str(cfg), "-o", f"broker.plugin_dir={PLUGIN_DIR}", "--check"])
    assert r.returncode == 2
    assert "model ranker" in r.stderr and "backend = mlp" in r.stderr, r.stderr
    assert f"{cfg}:6" in r.stderr, r.stderr
    assert "echo, synthetic" in r.stderr, r.stderr   # what is there instead
    r = run([BROKER_BIN, "-o", "model.x.backend=nosuch", "-o", f"broker.plugin_dir={PLUGIN_DIR}",
             "--check"])
    assert r.returncode == 2 and "-o model.x.backend=nosuch" in r.stderr, r.stderr


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_a_live_socket_is_not_taken_over(tmp_path, kind):
    path = str(tmp_path / "live.sock")
    srv = socket.socket(socket.AF_UNIX, kind)
    srv.bind(path)
    if kind != socket.SOCK_DGRAM:
        srv.listen(64)
    try:
        r = run([BROKER_BIN, "-s", path, "-o", f"broker.plugin_dir={PLUGIN_DIR}"], timeout=10)
        assert r.returncode == 1, r.stderr
        assert "not taking it over" in r.stderr or "already listening" in r.stderr, r.stderr
        # The owner still has its socket.
        c = socket.socket(socket.AF_UNIX, kind)
        c.settimeout(5)
        c.connect(path)
        c.close()
        if kind != socket.SOCK_DGRAM:
            # The broker's probe was one connection, not a flood of them.
            srv.settimeout(1)
            probes = 0
            try:
                while True:
                    srv.accept()[0].close()
                    probes += 1
            except socket.timeout:
                pass
            assert probes <= (21 if kind == socket.SOCK_SEQPACKET else 2), probes
    finally:
        srv.close()


def test_a_stale_socket_is_replaced(brokers):
    b = brokers.start()
    b.kill()  # leaves its socket file behind
    assert os.path.exists(b.sock)
    # At once: the killed broker's socket may still answer for a moment.
    b2 = brokers.start(sock=b.sock, ready=False)
    log = b2.wait_log("listening on")
    assert "replaced the stale socket" in log, log
    with bb.Client(b2.sock) as c:
        assert c.model("echo").infer(b"again") == b"again"


def test_refused_credentials_are_explained(brokers):
    b = brokers.start(overrides=["broker.allowed_uids=12345"])
    with pytest.raises(bb.BB_EPERM) as e:
        bb.Client(b.sock)
    assert "allowed_uids" in str(e.value)
    log = b.wait_log("refused client")
    assert f"uid {os.getuid()}" in log and "add uid" in log and "allowed_uids" in log, log


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run the broker as another user")
def test_a_distrusted_broker_is_told_and_logs_it(brokers, monkeypatch):
    nobody = pwd.getpwnam("nobody")
    os.chmod(brokers.tmpdir, 0o777)  # the broker, as nobody, makes its socket here
    b = brokers.start(overrides=["broker.allowed_uids=0"],
                      prefix=["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                              "--clear-groups"])
    monkeypatch.delenv("BATCHBROKER_TRUSTED_UIDS", raising=False)
    with pytest.raises(bb.BB_EUNTRUSTED) as e:
        bb.Client(b.sock)
    assert "BATCHBROKER_TRUSTED_UIDS" in str(e.value)
    log = b.wait_log("refused this broker")
    assert f"runs as uid {nobody.pw_uid}" in log and "BATCHBROKER_TRUSTED_UIDS" in log, log
    monkeypatch.setenv("BATCHBROKER_TRUSTED_UIDS", str(nobody.pw_uid))
    with bb.Client(b.sock) as c:
        assert c.model("echo").infer(b"trusted") == b"trusted"
