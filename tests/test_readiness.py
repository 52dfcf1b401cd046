"""Waiting on readiness: a slow start that shows progress is waited for; a dead or hung one fails with the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loopml.readiness import NotReady, Progress, wait_ready


def _spawn(code: str, log: Path) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT)


def test_a_start_that_keeps_logging_is_waited_for_past_the_stall_window(tmp_path: Path) -> None:
    """Migrations on a loaded machine: the log grows for longer than the stall window, then the service is up."""
    log, ready = tmp_path / "service.log", tmp_path / "ready"
    code = (
        "import time, pathlib\n"
        "for i in range(30):\n"
        "    print(f'applying migration {i}', flush=True); time.sleep(0.1)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    proc = _spawn(code, log)
    try:
        waited = wait_ready(ready.exists, "the service", Progress(log, proc.pid), stall_s=1.0, poll_s=0.05)
        assert waited > 1.0 and "applying migration 29" in log.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_a_hung_start_fails_after_the_stall_window(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    proc = _spawn("import time; print('starting', flush=True); time.sleep(60)", log)
    try:
        with pytest.raises(NotReady, match="made no progress"):
            wait_ready(lambda: False, "the service", Progress(log, proc.pid), stall_s=1.0, poll_s=0.05)
    finally:
        proc.kill()
        proc.wait()


def test_a_start_that_dies_fails_at_once_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    proc = _spawn("raise SystemExit('port 8080 is taken')", log)
    with pytest.raises(NotReady, match="exited before it was ready") as raised:
        wait_ready(lambda: False, "the service", Progress(log, proc.pid), tail=log.read_text, poll_s=0.05)
    assert "port 8080 is taken" in str(raised.value)
    proc.wait()
