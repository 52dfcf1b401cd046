"""The supervisor restarts a dead service at once, backs off when it keeps dying, and leaves a stopped one alone.
(On the real platform: tests/test_platform.py kills the serving process and times its return.)"""

from __future__ import annotations

import os
import signal

import psutil

from loopml import services
from loopml.config import Settings
from loopml.supervisor import Supervisor, restarts


def _start(settings: Settings) -> None:
    if not services.pid_alive(services.read_pid(settings, "toy")):
        services.spawn(settings, "toy", ["sleep", "600"])


def _kill(settings: Settings) -> int:
    pid = services.read_pid(settings, "toy")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)
    return pid


def test_a_dead_service_is_restarted_then_backed_off_then_left_alone_when_stopped(settings: Settings) -> None:
    supervisor = Supervisor(settings, start={"toy": _start})
    assert supervisor.check(now=1000.0) == []  # never started: nothing to do
    _start(settings)
    assert supervisor.check(now=1000.0) == []  # alive
    first = _kill(settings)
    assert supervisor.check(now=1001.0) == ["toy"]  # the first death: at once
    assert services.pid_alive(services.read_pid(settings, "toy"))
    second = _kill(settings)  # dies again 9 s after its restart: waits 2 s, then 4 s after the next
    assert supervisor.check(now=1010.0) == []
    assert supervisor.check(now=1011.0) == []
    assert supervisor.check(now=1012.0) == ["toy"]
    _kill(settings)
    assert supervisor.check(now=1020.0) == [] and supervisor.check(now=1023.9) == []
    assert supervisor.check(now=1024.0) == ["toy"]
    assert supervisor.check(now=1024.0 + 61) == []  # lived past STABLE_AFTER_S: the backoff is forgotten
    _kill(settings)
    assert supervisor.check(now=1024.0 + 62) == ["toy"]
    journal = restarts(settings)
    assert [entry["service"] for entry in journal] == ["toy"] * 4
    assert journal[0]["old_pid"] == first and journal[1]["old_pid"] == second
    assert [entry["waited_s"] for entry in journal] == [0.0, 2.0, 4.0, 0.0]
    services.stop(settings, "toy")  # what `loopml down` does: the PID file goes first
    assert supervisor.check(now=2000.0) == [] and services.read_pid(settings, "toy") is None
