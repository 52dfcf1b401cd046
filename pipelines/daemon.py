"""The Dagster daemon, with a sensor loop that wakes the moment Label Studio reports an annotation.

Dagster's sensor daemon evaluates sensors on a fixed 5-second loop, whatever a sensor's
``minimum_interval_seconds``; an annotation therefore waited 2.5 s on average before its sensor even looked.
This entry point runs the stock ``dagster-daemon`` with these changes to that loop (and the storage speed-ups of
``pipelines/storage_speedups.py``):

- it runs every ``LOOPML_SENSOR_LOOP_SECONDS`` (default 2 s) instead of 5 s, each sensor still no more often
  than its own minimum interval;
- between two passes it watches the webhook signal files (``run/signals/``, written by the serving API when
  Label Studio calls its webhook) and starts the next pass as soon as one changes;
- the annotation sensor is due on such a pass even inside its one-second minimum interval when a signal is newer
  than its last tick, so it looks at a new annotation within a few tens of milliseconds, not up to a second
  later. (Dagster reads a minimum interval of 0 as its 30-second default, so the interval itself stays 1 s.)
- when that pass found the sensor's previous tick still in flight (Dagster allows one at a time and skips it),
  the loop passes again every 50 ms until a tick has started after the signal.

    python -m pipelines.daemon run -w workspace.yaml
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster._daemon.daemon as daemon_module
import dagster._daemon.sensor as sensor_daemon
from dagster._daemon.cli import main as dagster_daemon_main

SENSOR_LOOP_ENV = "LOOPML_SENSOR_LOOP_SECONDS"
DEFAULT_SENSOR_LOOP_SECONDS = 2.0
SIGNALLED_SENSOR = "annotation_sensor"  # pipelines/sensors.py (not imported: the daemon stays light)
WATCH_SECONDS = 0.05  # how often the signal files are looked at between passes (a stat of a few files)
PENDING_RETRY_SECONDS = 0.05  # a signal no tick has read yet: the next pass after this long
PENDING_SECONDS = 5.0  # ... for this long after the signal (a paused sensor never reads it)
RECHECK_SECONDS = 1.0  # after a signal, the signalled sensor is due again this often ...
RECHECK_WINDOW_SECONDS = 5.0  # ... for this long (pipelines/sensors.py: SIGNAL_GRACE_SECONDS)


def sensor_loop_seconds() -> float:
    """The sensor loop period from the environment (0.1 s at least)."""
    return max(0.1, float(os.environ.get(SENSOR_LOOP_ENV, DEFAULT_SENSOR_LOOP_SECONDS)))


def signals_state(folder: Path) -> tuple[tuple[str, int], ...]:
    """The signal files of ``folder`` and their modification times (empty when there is no folder yet)."""
    try:
        with os.scandir(folder) as entries:
            return tuple(sorted((e.name, e.stat().st_mtime_ns) for e in entries if e.is_file()))
    except OSError:
        return ()


class WakingEvent:
    """Dagster's shutdown event, whose ``wait`` also ends early when a signal file in ``folder`` changes.

    The sensor loop sleeps with ``shutdown_event.wait(seconds)``; this returns ``False`` (not shut down) as soon
    as a webhook signal moved, so the loop starts its next pass at once. Everything else is the real event's.
    """

    def __init__(
        self,
        event: threading.Event,
        folder: Path,
        watch_seconds: float = WATCH_SECONDS,
        served: Callable[[], float] | None = None,
    ) -> None:
        self._event = event
        self._folder = folder
        self._watch = watch_seconds
        self._seen = signals_state(folder)
        self._served = served
        self._woke = time.monotonic()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = self._watch if deadline is None else min(self._watch, max(0.0, deadline - time.monotonic()))
            if self._event.wait(step):
                return True
            state = signals_state(self._folder)
            if state != self._seen or self._unserved(state):
                self._seen = state
                self._woke = time.monotonic()
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _unserved(self, state: tuple[tuple[str, int], ...]) -> bool:
        """Whether a recent signal is newer than the start of the signalled sensor's latest tick (``served``).

        The pass that woke for it may have found that sensor's previous tick still in flight (Dagster then skips
        the sensor for that pass): wake again, at most every ``PENDING_RETRY_SECONDS``, for ``PENDING_SECONDS``
        after the signal, instead of leaving it to the next regular pass a second later.
        """
        if self._served is None or time.monotonic() - self._woke < PENDING_RETRY_SECONDS:
            return False
        newest = max((mtime for _, mtime in state), default=0) / 1e9
        return newest > self._served() and time.time() - newest < PENDING_SECONDS

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


def newest_signal(folder: Path) -> float:
    """The modification time (epoch seconds) of the newest signal file in ``folder``; 0 when there is none."""
    return max((mtime for _, mtime in signals_state(folder)), default=0) / 1e9


def signal_aware_min_interval(
    original: Callable[..., bool], folder: Path, sensor_names: frozenset[str]
) -> Callable[..., bool]:
    """Dagster's ``is_under_min_interval``, except that the sensors named ``sensor_names`` are due as soon as a
    signal file is newer than the start of their last tick (one tick per signal: that tick's start is then newer),
    and again every ``RECHECK_SECONDS`` for ``RECHECK_WINDOW_SECONDS`` after a signal (a change Label Studio did not
    show yet when the signal was read is looked for again soon, not at the sensor's next regular tick)."""

    def is_under_min_interval(state: Any, remote_sensor: Any, minimum_allowed_min_interval: int | None = None) -> bool:
        if not original(state, remote_sensor, minimum_allowed_min_interval):
            return False
        if remote_sensor.name not in sensor_names:
            return True
        elapsed = sensor_daemon.get_elapsed(state)
        if elapsed is None:
            return False
        newest, now = newest_signal(folder), time.time()
        if newest > now - elapsed:
            return False
        return not (now - newest < RECHECK_WINDOW_SECONDS and elapsed >= RECHECK_SECONDS)

    return is_under_min_interval


class TickStarts:
    """When each sensor's latest tick started in this daemon: Dagster's ``mark_sensor_state_for_tick``, which
    runs as a tick begins, wrapped to note the time."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def wrap(self, original: Callable[..., None]) -> Callable[..., None]:
        def mark_sensor_state_for_tick(instance: Any, remote_sensor: Any, sensor_state: Any, now: Any) -> None:
            self._started[remote_sensor.name] = now.timestamp()
            original(instance, remote_sensor, sensor_state, now)

        return mark_sensor_state_for_tick

    def started(self, name: str) -> float:
        """Epoch seconds of the latest tick start of sensor ``name`` (0 when none started yet)."""
        return self._started.get(name, 0.0)


def waking_sensor_loop(
    original: Callable[..., Iterator[Any]], folder: Path, served: Callable[[], float] | None = None
) -> Callable[..., Iterator[Any]]:
    """Dagster's sensor iteration loop, sleeping on a :class:`WakingEvent` over ``folder``."""

    def loop(workspace_process_context: Any, logger: Any, shutdown_event: threading.Event, *args: Any, **kwargs: Any):
        waking = WakingEvent(shutdown_event, folder, served=served)
        yield from original(workspace_process_context, logger, waking, *args, **kwargs)

    return loop


def main() -> None:
    if not hasattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME"):
        raise RuntimeError("this Dagster version has no MIN_INTERVAL_LOOP_TIME; pin dagster as pyproject.toml says")
    from loopml.config import get_settings
    from loopml.loop_signals import SIGNALS_DIR
    from pipelines.storage_speedups import install

    install()  # new runs' event-log shards are copied from a template; migration heads are read once
    if get_settings().broker_url:
        from pipelines.celery_runs import watch_starting_runs

        watch_starting_runs()  # runs on Celery workers: queued runs wait, a dead worker's starting run fails

    sensor_daemon.MIN_INTERVAL_LOOP_TIME = sensor_loop_seconds()
    folder = get_settings().run_dir / SIGNALS_DIR
    sensor_daemon.is_under_min_interval = signal_aware_min_interval(
        sensor_daemon.is_under_min_interval, folder, frozenset({SIGNALLED_SENSOR})
    )
    ticks = TickStarts()
    sensor_daemon.mark_sensor_state_for_tick = ticks.wrap(sensor_daemon.mark_sensor_state_for_tick)
    loop = daemon_module.execute_sensor_iteration_loop
    daemon_module.execute_sensor_iteration_loop = waking_sensor_loop(
        loop, folder, served=lambda: ticks.started(SIGNALLED_SENSOR)
    )
    dagster_daemon_main()


if __name__ == "__main__":
    main()
