"""The supervisor `loopml up` starts: it restarts a service that died, with backoff.

Every second it looks at the services `loopml up` started (Label Studio, the Dagster code server, run worker,
webserver and daemon, the serving API). A service whose PID file is there but whose process is gone (killed, out
of memory, crashed) is started again the way `loopml up` starts it. What an old process left behind is cleared
first: a server that still holds the service's port (BentoML's worker keeps the listening socket when its arbiter
is killed) is stopped if it belongs to this ``LOOPML_HOME``. A service that dies again within
``STABLE_AFTER_S`` of its restart waits ``2, 4, 8 ... 60`` seconds before the next one, so a service that cannot
start does not spin. A service stopped on purpose (``loopml down`` removes its PID file first) is left alone;
``loopml down`` stops the supervisor before anything else.

Each restart is a JSON line in ``LOOPML_HOME/run/restarts.jsonl`` (service, old PID, new PID, time, the wait
before it) and a line in the supervisor's log.

    python -m loopml.supervisor      # what `loopml up` runs (LOOPML_HOME and the ports from the environment)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loopml import services
from loopml.config import Settings, get_settings

logger = logging.getLogger("loopml.supervisor")

STABLE_AFTER_S = 60.0  # a restart that lived this long resets the backoff
MAX_BACKOFF_S = 60.0
INTERVAL_S = 1.0


def starters() -> dict[str, Callable[[Settings], None]]:
    """How each supervised service is started, in the order `loopml up` starts them."""
    return {
        "labelstudio": services.start_labelstudio_service,
        "run-worker": services.start_run_worker,
        "code-server": services.start_code_server,
        "dagster-webserver": services.start_dagster_webserver,
        "dagster-daemon": services.start_dagster_daemon,
        "serving": services.start_serving,
    }


def _ports(settings: Settings) -> dict[str, int]:
    return {
        "labelstudio": settings.labelstudio_port,
        "dagster-webserver": settings.dagster_port,
        "serving": settings.serving_port,
    }


@dataclass
class Watch:
    """The supervisor's memory of one service."""

    failures: int = 0  # restarts in a row that did not live STABLE_AFTER_S
    restarted_at: float | None = None
    not_before: float | None = None  # set when a death is seen: the restart waits until then
    wait: float = 0.0


@dataclass
class Supervisor:
    settings: Settings
    start: dict[str, Callable[[Settings], None]] = field(default_factory=starters)
    watches: dict[str, Watch] = field(default_factory=dict)

    @property
    def journal(self) -> Path:
        return self.settings.run_dir / "restarts.jsonl"

    def check(self, now: float | None = None) -> list[str]:
        """One look at every service; restarts the dead ones whose backoff has passed. Returns their names."""
        now = time.time() if now is None else now
        restarted = []
        for name, start in self.start.items():
            watch = self.watches.setdefault(name, Watch())
            pid = services.read_pid(self.settings, name)
            if pid is None:  # never started, or stopped on purpose
                continue
            if services.pid_alive(pid):
                if watch.restarted_at is not None and now - watch.restarted_at >= STABLE_AFTER_S:
                    watch.failures, watch.restarted_at = 0, None
                continue
            if watch.not_before is None:  # first look at this death: how long to wait before the restart
                if watch.restarted_at is not None and now - watch.restarted_at < STABLE_AFTER_S:
                    watch.failures += 1  # it died again soon after its last restart
                watch.wait = min(MAX_BACKOFF_S, 2.0**watch.failures) if watch.failures else 0.0
                watch.not_before = now + watch.wait
                if watch.wait:
                    logger.warning(
                        "%s (pid %s) died again soon after a restart; next try in %.0f s", name, pid, watch.wait
                    )
            if now < watch.not_before:
                continue
            self._restart(name, pid, start, watch.wait)
            watch.restarted_at, watch.not_before = now, None
            restarted.append(name)
        return restarted

    def _restart(self, name: str, old_pid: int, start: Callable[[Settings], None], waited: float) -> None:
        port = _ports(self.settings).get(name)
        if port is not None:
            _free_port(self.settings, port)
        logger.warning("%s (pid %s) is gone: starting it again", name, old_pid)
        try:
            start(self.settings)
        except Exception:  # noqa: BLE001 - keep supervising the others; the next look tries again
            logger.exception("restarting %s failed", name)
            return
        new_pid = services.read_pid(self.settings, name)
        entry = {"service": name, "old_pid": old_pid, "new_pid": new_pid, "at": time.time(), "waited_s": waited}
        with self.journal.open("a") as journal:
            journal.write(json.dumps(entry) + "\n")

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a supervisor that dies supervises nothing
                logger.exception("supervisor check failed")
            time.sleep(INTERVAL_S)


def _free_port(settings: Settings, port: int) -> None:
    """Stop what still listens on ``port`` when it is a process of this LOOPML_HOME (an orphan of the dead
    service), so that the new one can bind it."""
    import psutil

    for connection in psutil.net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN or not connection.laddr or connection.laddr.port != port:
            continue
        if connection.pid is None or connection.pid == os.getpid():
            continue
        try:
            process = psutil.Process(connection.pid)
            if process.environ().get("LOOPML_HOME") != str(settings.home):
                continue
            logger.warning("pid %s (%s) still holds port %d: stopping it", process.pid, process.name(), port)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.TimeoutExpired):
            continue


def restarts(settings: Settings) -> list[dict]:
    """The restarts recorded so far, oldest first."""
    path = settings.run_dir / "restarts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logger.info("supervising %s under %s", ", ".join(starters()), settings.home)
    Supervisor(settings).run(lambda: stopping)


if __name__ == "__main__":
    main()
