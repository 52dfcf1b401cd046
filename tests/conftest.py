"""Shared fixtures. ``labelstudio``: one real Label Studio server for the whole session (end-to-end tests).

The server runs from ``.venv-labelstudio`` in a temporary ``LOOPML_HOME`` on a free port; its first start
runs the migrations (about 30 s), a restart takes about 3 s. It is stopped (whole process group) at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopml.config import Settings, get_settings
from loopml.labelstudio import LabelStudioClient
from loopml.labelstudio_server import check_api_key, ensure_credentials, start_labelstudio, wait_healthy

_ENV_KEYS = ("LOOPML_HOME", "LOOPML_LABELSTUDIO_HOST", "LOOPML_LABELSTUDIO_PORT")

# tests/gpu needs a CUDA device: bench/gpu.sh runs it (LOOPML_GPU_TESTS=1); everywhere else the summary says so
GPU_TESTS = os.environ.get("LOOPML_GPU_TESTS") == "1"
collect_ignore = [] if GPU_TESTS else ["gpu"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not GPU_TESTS:
        terminalreporter.write_line(
            "tests/gpu (CUDA) not run here: it needs an NVIDIA GPU; `bash bench/gpu.sh` runs it on one. The device-"
            "generic paths it covers are tested on the CPU (tests/test_gpu_paths.py)."
        )


@pytest.fixture(autouse=True)
def _no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps that cannot reach Label Studio are retried at once in tests (10, 20, 40, 80 s waits in use)."""
    monkeypatch.setenv("LOOPML_LABELSTUDIO_RETRY_SECONDS", "0")


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of a fresh LOOPML_HOME (SQLite inside it), for tests that need no running service."""
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOOPML_DATABASE_URL", raising=False)
    settings = get_settings()
    settings.ensure_dirs()
    return settings


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now (all held while choosing, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL it if it is still there after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class LabelStudioServer:
    """A Label Studio server owned by the test session; ``stop()``/``start()`` simulate an outage."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.labelstudio_url
        self.log_path: Path = settings.run_dir / "labelstudio.log"
        self.proc: subprocess.Popen | None = None
        self.api_key = ensure_credentials(settings).api_key
        self.client = LabelStudioClient(self.url, self.api_key)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.proc = start_labelstudio(self.settings, self.log_path)
        try:
            wait_healthy(self.url, self.proc, self.log_path)
            check_api_key(self.url, self.api_key)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio with LoopML's credentials: ``.settings``, ``.client``, ``.url``, ``.proc``."""
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    os.environ["LOOPML_HOME"] = str(tmp_path_factory.mktemp("loopml-home"))
    os.environ["LOOPML_LABELSTUDIO_HOST"] = "127.0.0.1"
    os.environ["LOOPML_LABELSTUDIO_PORT"] = str(free_port())
    server: LabelStudioServer | None = None
    try:
        settings = get_settings()
        settings.ensure_dirs()
        server = LabelStudioServer(settings)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
