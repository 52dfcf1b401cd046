"""The warm run worker: forks runs from a pre-imported process, detects fork-unsafe warm-ups, and the
launcher falls back to Dagster's default when no worker answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import DagsterInstance, in_process_executor, job, op, reconstructable
from dagster._serdes import serialize_value

from pipelines import run_worker
from pipelines.daemon import sensor_loop_seconds


@op
def write_marker() -> str:
    path = Path(os.environ["LOOPML_TEST_MARKER"])
    path.write_text(str(os.getpid()))
    return str(path)


@job(executor_def=in_process_executor)
def marker_job() -> None:
    write_marker()


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_worker_executes_a_run_in_a_forked_child(tmp_path: Path) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    marker = tmp_path / "marker"
    sock = tmp_path / "w.sock"
    env = dict(os.environ, DAGSTER_HOME=str(home), LOOPML_TEST_MARKER=str(marker), LOOPML_HOME=str(tmp_path))
    worker = subprocess.Popen([sys.executable, "-m", "pipelines.run_worker", str(sock)], env=env)
    try:
        assert _wait_for(sock.exists, 120), "the run worker did not start listening"
        with DagsterInstance.from_config(str(home)) as instance:
            recon = reconstructable(marker_job)
            run = instance.create_run_for_job(job_def=marker_job, job_code_origin=recon.get_python_origin())
            pid = run_worker.submit_run(sock, run.run_id, serialize_value(instance.get_ref()))
            assert pid is not None and pid != worker.pid
            assert _wait_for(lambda: instance.get_run_by_id(run.run_id).is_finished, 60)
            assert instance.get_run_by_id(run.run_id).is_success
        assert marker.read_text() == str(pid)  # the op ran in the forked child
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert not sock.exists()  # the worker removes its socket on SIGTERM


def test_submit_without_a_worker_returns_none(tmp_path: Path) -> None:
    assert run_worker.submit_run(tmp_path / "missing.sock", "run", "{}") is None
    stale = tmp_path / "stale.sock"
    stale.write_text("")  # a file nobody listens on
    assert run_worker.submit_run(stale, "run", "{}") is None


@pytest.mark.slow
def test_fork_self_test_passes_after_the_warm_up_and_catches_a_started_pool() -> None:
    script = (
        "import pipelines.run_worker as w\n"
        "w.warm_calls(); w.fork_self_test()\n"
        "import polars as pl\n"
        "pl.DataFrame({'a': list(range(100000))}).filter(pl.col('a') > 3)\n"  # starts polars' thread pool
        "try:\n    w.fork_self_test(timeout_s=5)\nexcept RuntimeError as exc:\n    print('CAUGHT', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CAUGHT" in out.stdout


def test_sensor_loop_period_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPML_SENSOR_LOOP_SECONDS", "0.25")
    assert sensor_loop_seconds() == 0.25
    monkeypatch.setenv("LOOPML_SENSOR_LOOP_SECONDS", "0")
    assert sensor_loop_seconds() == 0.1
    monkeypatch.delenv("LOOPML_SENSOR_LOOP_SECONDS")
    assert sensor_loop_seconds() == 0.5
