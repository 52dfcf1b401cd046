"""A real ``bentoml serve serving.service:LoopML`` process for the end-to-end and fault tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests

from loopml.apikeys import RIGHTS, create_key
from loopml.config import PROJECT_ROOT, Settings, get_settings
from loopml.deployments import DeploymentStore
from tests.conftest import free_port
from tests.serving_support import save_versions

READY_TIMEOUT_S = 90.0


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    settings: Settings
    tags: list[str]
    key: str
    log_path: Path
    function: str = "review-sentiment"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def invoke(self, session: requests.Session, body: dict, timeout: float = 10) -> requests.Response:
        return session.post(
            f"{self.url}/v1/functions/{self.function}/invoke", json=body, headers=self.headers, timeout=timeout
        )


def server_tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """The arbiter and its workers. Circus starts each worker in a session of its own (``setsid``), so a
    signal to the arbiter's process group does not reach them: they are found as descendants."""
    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the arbiter (it stops its workers), then SIGKILL anything of the tree still there."""
    tree = server_tree(proc)
    if proc.poll() is None:
        proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=20)
    for process in alive:
        process.kill()
    proc.wait(10)


def serve_command(port: int) -> list[str]:
    """The start command of the platform (``bentoml serve serving.service:LoopML`` with a quick respawn of a dead
    worker, serving/serve.py), run from the repository root."""
    return [sys.executable, "-m", "serving.serve", "--host", "127.0.0.1", "--port", str(port)]


def spawn_server(command: list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT) -> subprocess.Popen:
    """Start a serving command in a session of its own, its output in ``log_path`` (stop it with stop_server)."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = READY_TIMEOUT_S) -> None:
    """Until ``/readyz`` answers 200 (the process must stay up meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"bentoml serve exited: {log_path.read_text()[-3000:]}"
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or the worker is still starting
            pass
        assert time.monotonic() < deadline, f"not ready in {timeout} s: {log_path.read_text()[-3000:]}"
        time.sleep(0.2)


@contextlib.contextmanager
def running_server(home: Path, function: str, versions: int = 2, **extra_env: str) -> Iterator[Server]:
    """A serving process on a free port with ``versions`` versions of the tiny text model of ``function`` (the
    first one primary) and one API key, in ``home``; stopped (its whole tree) on exit."""
    port = free_port()
    env = {
        **os.environ,
        "LOOPML_HOME": str(home),
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "LOOPML_SERVING_PORT": str(port),
        "LOOPML_SERVING_GPU": "0",
        **extra_env,
    }
    env.pop("LOOPML_DATABASE_URL", None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPML_HOME", str(home))
        mp.delenv("LOOPML_DATABASE_URL", raising=False)
        settings = get_settings()
        settings.ensure_dirs()
        tags = save_versions(settings, function, versions)
        DeploymentStore(settings).set_primary(function, tags[0], "e2e")
        _, key = create_key(settings, "e2e", rights=RIGHTS)
        log_path = home / "serving.log"
        proc = spawn_server(serve_command(port), env, log_path)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, url, log_path)
            yield Server(proc, url, settings, tags, key, log_path, function, env)
        finally:
            stop_server(proc)


@dataclass
class Probe:
    """A second client that checks ``/v1/health`` and invokes one short text in a loop (``pause`` seconds between
    rounds) while another request runs; each list holds (seconds, status) per call."""

    server: Server
    pause: float = 0.02
    health: list[tuple[float, int]] = field(default_factory=list)
    single: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                started = time.perf_counter()
                status = session.get(f"{self.server.url}/v1/health", timeout=120).status_code
                self.health.append((time.perf_counter() - started, status))
                started = time.perf_counter()
                status = self.server.invoke(session, {"text": "a fine film"}, timeout=120).status_code
                self.single.append((time.perf_counter() - started, status))
                time.sleep(self.pause)


def beside_a_probe(server: Server, body: bytes, pause: float = 0.02) -> tuple[requests.Response, float, Probe]:
    """Send ``body`` to invoke while a :class:`Probe` runs; the answer, its seconds and the probe."""
    probe = Probe(server, pause)
    thread = threading.Thread(target=probe.run)
    thread.start()
    while not probe.single:  # the probe runs before the request is sent
        time.sleep(0.01)
    started = time.perf_counter()
    try:
        response = requests.post(
            f"{server.url}/v1/functions/{server.function}/invoke",
            data=body,
            headers={**server.headers, "Content-Type": "application/json"},
            timeout=600,
        )
        seconds = time.perf_counter() - started
        while len(probe.single) < 3:  # at least a few probes ran while it was served, or just after
            time.sleep(0.01)
    finally:
        probe.stop.set()
        thread.join(120)
    return response, seconds, probe


def wait_served(settings: Settings, key: str, function: str, version: str, timeout_s: float = 600.0) -> dict:
    """Invoke ``function`` through the platform's serving API until ``version`` answers; its answer. The bound is
    for a broken loop, not a speed target (the daemon's log tail is the failure message)."""
    answer: dict = {}
    deadline = time.time() + timeout_s
    while answer.get("version") != version:
        assert time.time() < deadline, (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]
        try:
            response = requests.post(
                f"{settings.serving_url}/v1/functions/{function}/invoke",
                json={"text": "a wonderful, moving film"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            answer = response.json() if response.ok else {}
        except requests.RequestException:
            pass
        time.sleep(1)
    return answer
