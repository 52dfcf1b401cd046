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
    path.write_text(f"{os.getpid()} {os.nice(0)}")
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
            child, niceness = marker.read_text().split()
            assert child == str(pid)  # the op ran in the forked child
            assert int(niceness) == os.nice(0)  # at the worker's priority (the worker inherits ours)

            # a background run (pre-annotation, inspection, monitoring) yields the CPU to the loop's own runs
            run = instance.create_run_for_job(job_def=marker_job, job_code_origin=recon.get_python_origin())
            pid = run_worker.submit_run(sock, run.run_id, serialize_value(instance.get_ref()), background=True)
            assert _wait_for(lambda: instance.get_run_by_id(run.run_id).is_finished, 60)
            child, niceness = marker.read_text().split()
            assert child == str(pid) and int(niceness) == min(19, os.nice(0) + run_worker.BACKGROUND_NICENESS)
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
    assert sensor_loop_seconds() == 2.0


def test_the_sensor_loop_wakes_when_a_webhook_signal_changes(tmp_path: Path) -> None:
    """The daemon's sleep between sensor passes ends at once when a signal file is written, not at its timeout;
    without a signal it sleeps its full time, and a shutdown still ends it."""
    import threading

    from loopml.loop_signals import SIGNALS_DIR, mark_annotations_changed
    from pipelines.daemon import WakingEvent

    shutdown = threading.Event()
    waking = WakingEvent(shutdown, tmp_path / SIGNALS_DIR)  # no folder yet: the first signal creates it
    started = time.monotonic()
    assert waking.wait(0.3) is False
    assert time.monotonic() - started >= 0.3  # nothing changed: the whole sleep

    timer = threading.Timer(0.2, mark_annotations_changed, args=(tmp_path, "sentiment"))
    timer.start()
    started = time.monotonic()
    assert waking.wait(600) is False  # woken by the signal, not by the 10-minute timeout
    assert time.monotonic() - started < 300
    timer.join()

    timer = threading.Timer(0.2, mark_annotations_changed, args=(tmp_path, "sentiment"))  # the same file again
    timer.start()
    assert waking.wait(600) is False
    timer.join()

    threading.Timer(0.2, shutdown.set).start()
    assert waking.wait(600) is True  # a shutdown ends the wait and is reported as one
    assert waking.is_set()  # the rest is the real event's


def test_the_sensor_loop_passes_again_while_a_signal_is_unread(tmp_path: Path) -> None:
    """A signal that arrived while the annotation sensor's tick was in flight (the woken pass skipped it) makes
    the loop pass again shortly, until a tick has started after the signal; a read signal lets it sleep."""
    import threading
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from loopml.loop_signals import SIGNALS_DIR, mark_annotations_changed
    from pipelines.daemon import PENDING_RETRY_SECONDS, SIGNALLED_SENSOR, TickStarts, WakingEvent

    ticks = TickStarts()
    marked: list[str] = []
    mark = ticks.wrap(lambda instance, sensor, state, now: marked.append(sensor.name))
    mark(None, SimpleNamespace(name=SIGNALLED_SENSOR), None, datetime.now(UTC))  # a tick starts ...
    assert marked == [SIGNALLED_SENSOR] and ticks.started(SIGNALLED_SENSOR) > 0 and ticks.started("other") == 0
    time.sleep(0.02)
    mark_annotations_changed(tmp_path, "sentiment")  # ... and the signal comes while it is in flight
    waking = WakingEvent(threading.Event(), tmp_path / SIGNALS_DIR, served=lambda: ticks.started(SIGNALLED_SENSOR))
    started = time.monotonic()
    assert waking.wait(600) is False  # unread: the loop passes again soon
    assert PENDING_RETRY_SECONDS <= time.monotonic() - started < 300
    assert waking.wait(600) is False  # and again, while no tick started after it
    time.sleep(0.02)
    mark(None, SimpleNamespace(name=SIGNALLED_SENSOR), None, datetime.now(UTC))  # a tick that reads it
    started = time.monotonic()
    assert waking.wait(0.3) is False
    assert time.monotonic() - started >= 0.3  # read: the whole sleep


def test_the_daemon_loop_sleeps_on_the_waking_event(tmp_path: Path) -> None:
    """The wrapped sensor loop gets a WakingEvent over the signal folder in place of the shutdown event."""
    import threading

    from pipelines.daemon import WakingEvent, waking_sensor_loop

    seen: list[object] = []

    def original(context, logger, shutdown_event, *args, **kwargs):
        seen.append((shutdown_event, args, kwargs))
        yield "pass"

    loop = waking_sensor_loop(original, tmp_path)
    assert list(loop("ctx", "log", threading.Event(), threadpool_executor=None)) == ["pass"]
    event, args, kwargs = seen[0]
    assert isinstance(event, WakingEvent) and kwargs == {"threadpool_executor": None}


def test_a_webhook_signal_makes_the_annotation_sensor_due_inside_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside its minimum interval the annotation sensor is due once per signal newer than its last tick start;
    other sensors keep Dagster's rule."""
    from types import SimpleNamespace

    import dagster._daemon.sensor as sensor_daemon

    from pipelines.daemon import SIGNALLED_SENSOR, signal_aware_min_interval
    from pipelines.definitions import defs

    assert defs.resolve_sensor_def(SIGNALLED_SENSOR).minimum_interval_seconds == 5
    elapsed = {"value": 0.5}  # the last tick started half a second ago: Dagster says "not due"
    monkeypatch.setattr(sensor_daemon, "get_elapsed", lambda state: elapsed["value"])
    due = signal_aware_min_interval(lambda *args: True, tmp_path, frozenset({SIGNALLED_SENSOR}))
    annotation, other = SimpleNamespace(name=SIGNALLED_SENSOR), SimpleNamespace(name="canary_controller")

    assert due(None, annotation) is True  # no signal yet: under the interval
    time.sleep(0.01)
    (tmp_path / "annotations-x").write_text("1")  # what the webhook route writes
    assert due(None, annotation) is False  # a signal newer than the last tick: due now
    assert due(None, other) is True  # only the named sensor
    elapsed["value"] = 0.0  # the tick that read the signal has started: not due again for the same signal
    time.sleep(0.01)
    assert due(None, annotation) is True
    elapsed["value"] = 1.5  # still within seconds of the signal: looked at again each second (Label Studio may lag)
    assert due(None, annotation) is False
    os.utime(tmp_path / "annotations-x", (time.time() - 6, time.time() - 6))  # an old signal: the regular interval
    assert due(None, annotation) is True
    assert signal_aware_min_interval(lambda *args: False, tmp_path, frozenset())(None, other) is False


def test_a_run_asks_storage_once_per_existing_dynamic_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a forked run, a dynamic partition found once is answered from memory; an absent one is asked again."""
    calls: list[str] = []

    def from_storage(self, partitions_def_name: str, partition_key: str) -> bool:
        calls.append(partition_key)
        return partition_key == "sentiment"

    monkeypatch.setattr(DagsterInstance, "has_dynamic_partition", from_storage)
    run_worker.remember_dynamic_partitions()
    run_worker.remember_dynamic_partitions()  # twice: still one layer
    instance = DagsterInstance.ephemeral()
    assert [instance.has_dynamic_partition("functions", "sentiment") for _ in range(3)] == [True, True, True]
    assert [instance.has_dynamic_partition("functions", "absent") for _ in range(2)] == [False, False]
    assert calls == ["sentiment", "absent", "absent"]


def test_background_jobs_are_the_ones_off_the_loop() -> None:
    """Pre-annotation, inspection and monitoring runs are niced; training and deployment runs are not."""
    from pipelines.definitions import defs

    for name in run_worker.BACKGROUND_JOBS:
        assert defs.resolve_job_def(name).name == name
    assert not {"train_function", "deploy_function"} & run_worker.BACKGROUND_JOBS
