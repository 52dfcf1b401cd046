"""kill -9 of the serving worker, then of the whole serving process, under load and during a canary.

The serving process is started as `loopml up` starts it, and the supervisor's own check brings it back. Clients
invoke with sticky keys throughout. Afterwards: every acknowledged invocation is in the log; every logged call was
scored by both versions (no answer came from a runtime that had loaded only some of them); each sticky key stayed
on its side of the canary; the rollout (primary, canary, weight) is as it was and its statistics count every call.
The seconds until answers came back are printed (README: the fault table).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
import requests
from sqlalchemy import select

from loopml import services
from loopml.apikeys import RIGHTS, create_key
from loopml.canary import canary_stats
from loopml.config import Settings, get_settings
from loopml.db import InvocationRow, session_factory
from loopml.deployments import DeploymentStore
from loopml.invocation_log import InvocationLog
from loopml.supervisor import Supervisor, restarts
from tests.conftest import free_port
from tests.serving_support import save_versions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FUNCTION = "review-sentiment"
STICKY = [f"user-{n}" for n in range(24)]
WEIGHT = 0.5
BACK_TIMEOUT_S = 240.0  # a guard against hanging, not a target: the seconds are printed


class Load:
    """Clients invoking back to back, each call with a sticky key; every answer kept as
    (sent at, answered at, invocation id, version, sticky key)."""

    def __init__(self, url: str, key: str, clients: int = 6) -> None:
        self.url = f"{url}/v1/functions/{FUNCTION}/invoke"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.answers: list[tuple[float, float, str, str, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def _client(self, worker: int) -> None:
        session = requests.Session()
        i = 0
        while not self.stopping.is_set():
            sticky = STICKY[(worker * 7 + i) % len(STICKY)]
            sent = time.time()
            try:
                response = session.post(
                    self.url,
                    json={"text": f"worker {worker} call {i}: a fine film", "sticky_key": sticky},
                    headers=self.headers,
                    timeout=60,
                )
            except requests.RequestException:  # the server is down: try again shortly, on a new connection
                session.close()
                session = requests.Session()
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                body = response.json()
                with self.lock:
                    self.answers.append((sent, time.time(), body["invocation_id"], body["version"], sticky))
            else:
                time.sleep(0.05)
            i += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(90)

    def sent_after(self, moment: float) -> list[tuple[float, float, str, str, str]]:
        with self.lock:
            return [answer for answer in self.answers if answer[0] > moment]

    def wait_for(self, count: int, sent_after: float = 0.0) -> float:
        """Until ``count`` calls sent after ``sent_after`` are answered; returns when the first of them was."""
        deadline = time.monotonic() + BACK_TIMEOUT_S
        while len(answers := self.sent_after(sent_after)) < count:
            assert time.monotonic() < deadline, f"only {len(answers)} of {count} calls answered"
            time.sleep(0.05)
        return min(answered for _, answered, *_ in answers)


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, list[str], str]]:
    """A LOOPML_HOME with two versions (v1 primary, v2 canary at 50 %), a key, and the serving process started
    as `loopml up` starts it; stopped on exit."""
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOOPML_SERVING_PORT", str(free_port()))
    monkeypatch.setenv("LOOPML_SERVING_GPU", "0")
    monkeypatch.delenv("LOOPML_DATABASE_URL", raising=False)
    settings = get_settings()
    settings.ensure_dirs()
    tags = save_versions(settings, FUNCTION, 2)
    store = DeploymentStore(settings)
    store.set_primary(FUNCTION, tags[0], "fault test")
    store.start_canary(FUNCTION, tags[1], WEIGHT, "fault test")
    _, key = create_key(settings, "faults", rights=RIGHTS)
    services.start_serving(settings)
    try:
        deadline = time.monotonic() + BACK_TIMEOUT_S
        while not services.serving_healthy(settings):
            assert time.monotonic() < deadline, services.log_file(settings, "serving").read_text()[-3000:]
            time.sleep(0.2)
        yield settings, tags, key
    finally:
        services.stop(settings, "serving")


def _serving_tree(settings: Settings) -> list[psutil.Process]:
    pid = services.read_pid(settings, "serving")
    assert pid is not None and services.pid_alive(pid)
    arbiter = psutil.Process(pid)
    return [arbiter, *arbiter.children(recursive=True)]


def _kill(processes: list[psutil.Process]) -> float:
    for process in processes:
        os.kill(process.pid, signal.SIGKILL)
    killed_at = time.time()
    psutil.wait_procs(processes, timeout=10)
    return killed_at


def test_serving_killed_under_load_during_a_canary(platform: tuple[Settings, list[str], str]) -> None:
    settings, tags, key = platform
    before = DeploymentStore(settings).get(FUNCTION)
    assert before is not None
    rollout_start = before.canary_started_at or datetime.now(UTC)
    supervisor = Supervisor(settings, start={"serving": services.start_serving})
    watching = threading.Event()

    def watch() -> None:  # the supervisor's loop, on a short interval
        while not watching.is_set():
            supervisor.check()
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with Load(settings.serving_url, key) as load:
            load.wait_for(150)
            tree = _serving_tree(settings)
            workers = tree[1:]
            assert workers, "expected the arbiter and at least one worker"
            worker_killed = _kill(workers)  # the arbiter stays: it starts a new worker
            worker_back = load.wait_for(100, sent_after=worker_killed) - worker_killed
            process_killed = _kill(_serving_tree(settings))  # arbiter and worker: the supervisor restarts it
            process_back = load.wait_for(100, sent_after=process_killed) - process_killed
    finally:
        watching.set()
        watcher.join(10)
    print(
        f"\nworker killed: answering {worker_back:.1f} s later; whole serving process killed: answering "
        f"{process_back:.1f} s later ({len(load.answers)} answers in all)"
    )
    assert any(entry["service"] == "serving" for entry in restarts(settings)), "the supervisor did not restart it"

    acknowledged = [answer[2] for answer in load.answers]
    missing = set(acknowledged) - InvocationLog(settings).existing_ids(acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged invocations were lost"

    with session_factory(settings.database_url)() as session:
        rows = session.scalars(select(InvocationRow).where(InvocationRow.function == FUNCTION)).all()
    mine = [row for row in rows if row.id in set(acknowledged)]
    assert len(mine) == len(set(acknowledged))
    half_scored = [row.id for row in mine if set(row.scores) != set(tags)]
    assert not half_scored, f"{len(half_scored)} calls were not scored by both versions (a half-loaded runtime)"
    assert {row.answered_by for row in mine} == set(tags), "both sides of the canary answer"

    sides: dict[str, set[str]] = {}
    for _, _, _, version, sticky in load.answers:
        sides.setdefault(sticky, set()).add(version)
    moved = {sticky: versions for sticky, versions in sides.items() if len(versions) > 1}
    assert not moved, f"sticky keys changed sides across the restarts: {moved}"

    after = DeploymentStore(settings).get(FUNCTION)
    assert after is not None
    assert (after.primary_tag, after.canary_tag, after.canary_weight) == (tags[0], tags[1], WEIGHT)
    assert after.revision == before.revision, "the rollout was changed"
    stats = canary_stats(settings, FUNCTION, tags[0], tags[1], rollout_start)
    assert stats.requests >= len(set(acknowledged)), "the rollout's statistics lost calls"
    assert stats.shadow_scored == stats.requests and stats.error_rate == 0.0
