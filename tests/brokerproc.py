"""Brokers as child processes for the pytest suites (the Python twin of
tests/harness.c): a unique socket per broker, its log captured in a file,
started and stopped with bounded waits.

The build passes its paths in the environment (tests/CMakeLists.txt,
python/CMakeLists.txt): BB_BROKER_BIN, BB_PLUGIN_DIR, BB_BUILD_DIR,
BB_SOURCE_DIR.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

BROKER_BIN = os.environ.get("BB_BROKER_BIN", "batchbroker")
PLUGIN_DIR = os.environ.get("BB_PLUGIN_DIR", "")
BUILD_DIR = os.environ.get("BB_BUILD_DIR", "")
SOURCE_DIR = os.environ.get("BB_SOURCE_DIR",
                            os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_path(*parts):
    return os.path.join(BUILD_DIR, *parts)


def answers(sock_path):
    """True if something accepts a SOCK_SEQPACKET connection at sock_path."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(sock_path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Broker:
    """One broker process. config: INI text or None; overrides: list of
    "section.key=value" strings; args: extra command-line arguments;
    prefix: a command to run it under (e.g. setpriv); binary: another
    broker binary (an installed one)."""

    def __init__(self, tmpdir, config=None, overrides=(), args=(), prefix=(), binary=None,
                 plugin_dir=True, env=None, log_level="info", sock=None):
        self.dir = tmpdir
        os.makedirs(self.dir, exist_ok=True)
        if sock:
            self.sock = sock
        else:
            fd, self.sock = tempfile.mkstemp(prefix="bb-", suffix=".sock", dir=self.dir)
            os.close(fd)
            os.unlink(self.sock)
        fd, self.log_path = tempfile.mkstemp(prefix="broker-", suffix=".log", dir=self.dir)
        os.close(fd)
        self.cfg = None
        cmd = list(prefix) + [binary or BROKER_BIN]
        if config is not None:
            fd, self.cfg = tempfile.mkstemp(prefix="bb-", suffix=".ini", dir=self.dir)
            os.close(fd)
            with open(self.cfg, "w") as f:
                f.write(config)
            cmd += ["--config", self.cfg]
        cmd += ["-s", self.sock, "-o", f"broker.log_level={log_level}"]
        if plugin_dir and PLUGIN_DIR:
            cmd += ["-o", f"broker.plugin_dir={PLUGIN_DIR}"]
        for o in overrides:
            cmd += ["-o", o]
        cmd += list(args)
        self.cmd = cmd
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.sock) and answers(self.sock):
                return self
            time.sleep(0.01)
        raise RuntimeError(f"broker not ready within {timeout} s:\n{self.log()}")

    def log(self):
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, text, timeout=10):
        """Wait until the log contains text; return the log."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the broker log within {timeout} s:\n{self.log()}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after timeout; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Brokers:
    """A pytest fixture's worth of brokers, all stopped at the end. Their
    sockets, configs and logs live in a short private directory under /tmp
    (a socket path must fit 107 bytes), removed by stop_all."""

    def __init__(self):
        self.tmpdir = tempfile.mkdtemp(prefix="bbt-py-", dir="/tmp")
        self.all = []

    def start(self, *args, ready=True, **kwargs):
        b = Broker(self.tmpdir, *args, **kwargs)
        self.all.append(b)
        return b.wait_ready() if ready else b

    def stop_all(self):
        for b in self.all:
            try:
                b.stop(timeout=5)
            except Exception:
                b.kill()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def run(cmd, timeout=30, **kwargs):
    """subprocess.run with text output captured and a timeout."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


try:
    import pytest
except ImportError:  # brokerproc without pytest: no fixtures
    pytest = None

if pytest is not None:
    @pytest.fixture
    def brokers():
        """Brokers started by the test, stopped (and their files removed) after it."""
        b = Brokers()
        yield b
        b.stop_all()

    @pytest.fixture
    def broker(brokers):
        """A broker with the default configuration (model echo)."""
        return brokers.start()
