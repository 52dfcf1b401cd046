"""The Dagster daemon, with a sensor loop that ticks in well under a second.

Dagster's sensor daemon evaluates sensors on a fixed 5-second loop, whatever a sensor's
``minimum_interval_seconds``; an annotation therefore waited 2.5 s on average before its sensor even looked.
This entry point runs the stock ``dagster-daemon`` with that loop shortened (``LOOPML_SENSOR_LOOP_SECONDS``,
default 0.5 s); each sensor still runs no more often than its own minimum interval.

    python -m pipelines.daemon run -w workspace.yaml
"""

from __future__ import annotations

import os

import dagster._daemon.sensor as sensor_daemon
from dagster._daemon.cli import main as dagster_daemon_main

SENSOR_LOOP_ENV = "LOOPML_SENSOR_LOOP_SECONDS"
DEFAULT_SENSOR_LOOP_SECONDS = 0.5


def sensor_loop_seconds() -> float:
    """The sensor loop period from the environment (0.1 s at least)."""
    return max(0.1, float(os.environ.get(SENSOR_LOOP_ENV, DEFAULT_SENSOR_LOOP_SECONDS)))


def main() -> None:
    if not hasattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME"):
        raise RuntimeError("this Dagster version has no MIN_INTERVAL_LOOP_TIME; pin dagster as pyproject.toml says")
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = sensor_loop_seconds()
    dagster_daemon_main()


if __name__ == "__main__":
    main()
