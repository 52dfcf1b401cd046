"""Real Celery brokers for the tests: Redis and RabbitMQ.

Each test that needs one gets a throwaway server started from the Debian packages' binaries (``make test``
installs them) on a free port, removed afterwards: its queues are its own. Where a binary is missing, the server
on the standard loopback port (6379, 5672) is used when it answers. ``LOOPML_TEST_REDIS_URL`` and
``LOOPML_TEST_AMQP_URL`` name other servers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_ports

START_TIMEOUT_S = 180.0  # a bound for a broken start (RabbitMQ takes 10-40 s on a busy small machine)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _wait_port(port: int, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the throwaway {what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def redis_broker() -> Iterator[str]:
    """The URL of a Redis server only this test uses."""
    if os.environ.get("LOOPML_TEST_REDIS_URL"):
        yield os.environ["LOOPML_TEST_REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        assert _answers("127.0.0.1", 6379), "no redis-server binary and no Redis on 6379: run `make install-brokers`"
        yield "redis://127.0.0.1:6379/0"
        return
    (port,) = free_ports(1)
    folder = Path(tempfile.mkdtemp(prefix="loopml-redis-"))
    log = folder / "redis.log"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", str(folder)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log, "Redis")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def rabbitmq_broker() -> Iterator[str]:
    """The URL of a RabbitMQ node only this test uses (guest/guest, allowed on loopback)."""
    if os.environ.get("LOOPML_TEST_AMQP_URL"):
        yield os.environ["LOOPML_TEST_AMQP_URL"]
        return
    binary = shutil.which("rabbitmq-server") or (
        "/usr/sbin/rabbitmq-server" if Path("/usr/sbin/rabbitmq-server").exists() else None
    )
    if binary is None:
        assert _answers("127.0.0.1", 5672), "no rabbitmq-server binary and no RabbitMQ on 5672: `make install-brokers`"
        yield "amqp://guest:guest@127.0.0.1:5672//"
        return
    port, dist_port = free_ports(2)
    folder = Path(tempfile.mkdtemp(prefix="loopml-rabbitmq-"))
    folder.chmod(0o777)  # the package's script runs the node as the rabbitmq user when started by root
    node = f"loopml{port}@localhost"
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_MNESIA_DIR": str(folder / "mnesia" / "db"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(folder / "feature_flags"),
        "RABBITMQ_QUORUM_DIR": str(folder / "quorum"),
        "RABBITMQ_STREAM_DIR": str(folder / "stream"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
        "RABBITMQ_PID_FILE": str(folder / "pid"),
    }
    log = folder / "out.log"
    proc = subprocess.Popen([binary], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, log, "RabbitMQ")
        yield f"amqp://guest:guest@127.0.0.1:{port}//"
    finally:
        pid_file = folder / "pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), 9)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
