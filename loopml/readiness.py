"""Waiting for a service to become ready on a loaded machine: on its progress, not on a fixed budget.

A first start (Label Studio's migrations, the run worker's imports) can take a minute on an idle machine and
several on a loaded one. A waiter keeps waiting while the process is alive and shows progress (its log grows or
it uses CPU), and gives up only when the process died, when it made no progress for ``stall_s`` (hung), or after
``limit_s`` in all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STALL_SECONDS = 120.0  # no log output and no CPU used for this long: the start is hung
LIMIT_SECONDS = 1800.0  # whatever the progress, a start never takes longer than this


class NotReady(RuntimeError):
    """The service died, hung, or ran past the limit; the message says which, with the log's last lines."""


@dataclass
class Progress:
    """What a waiting service shows of its progress: the size of its log and the CPU time of its process tree."""

    log: Path | None = None
    pid: int | None = None

    def sample(self) -> tuple[int, float]:
        size = self.log.stat().st_size if self.log is not None and self.log.exists() else 0
        return size, _cpu_seconds(self.pid)

    def alive(self) -> bool:
        if self.pid is None:
            return True
        import psutil

        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def _cpu_seconds(pid: int | None) -> float:
    """CPU seconds used by ``pid`` and its children (0 without a pid or once it is gone)."""
    if pid is None:
        return 0.0
    import psutil

    try:
        process = psutil.Process(pid)
        total = 0.0
        for proc in [process, *process.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return 0.0


def wait_ready(
    check: Callable[[], bool],
    what: str,
    progress: Progress,
    *,
    stall_s: float = STALL_SECONDS,
    limit_s: float = LIMIT_SECONDS,
    poll_s: float = 0.25,
    on_wait: Callable[[float], None] | None = None,
    tail: Callable[[], str] = lambda: "",
) -> float:
    """Wait until ``check()`` holds; returns the seconds waited. Raises :class:`NotReady` when the process dies,
    makes no progress for ``stall_s``, or ``limit_s`` passes. ``on_wait(elapsed)`` is called on every poll (for
    a progress line); ``tail()`` gives the log lines that go into the error."""
    started = last_progress = time.monotonic()
    last = progress.sample()
    while not check():
        now = time.monotonic()
        if not progress.alive():
            raise NotReady(f"{what} exited before it was ready\n{tail()}")
        current = progress.sample()
        if current != last:
            last, last_progress = current, now
        if now - last_progress > stall_s:
            raise NotReady(f"{what} made no progress (no log output, no CPU) for {stall_s:.0f} s\n{tail()}")
        if now - started > limit_s:
            raise NotReady(f"{what} was not ready after {limit_s:.0f} s\n{tail()}")
        if on_wait is not None:
            on_wait(now - started)
        time.sleep(poll_s)
    return time.monotonic() - started
