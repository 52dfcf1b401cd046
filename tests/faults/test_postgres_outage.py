"""PostgreSQL stopped under load and started again: the serving process keeps answering from the versions it has
loaded (keys it checked before keep working), the calls it could not log are spooled to local disk and written
once the database is back, and none is lost or logged twice. The server is a throwaway cluster of this test's own
(tests/postgres.py), so that it can be stopped."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from loopml.apikeys import RIGHTS, create_key
from loopml.db import InvocationRow, get_engine, session_factory
from loopml.deployments import DeploymentStore
from tests.conftest import free_port
from tests.postgres import fresh_database_url, throwaway_cluster, use_database
from tests.real_server import serve_command, spawn_server, stop_server, wait_ready
from tests.serving_support import save_versions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FUNCTION = "review-sentiment"
OUTAGE_SECONDS = 12.0


def test_postgres_restarted_under_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with throwaway_cluster() as cluster:
        url = fresh_database_url(cluster.url)
        settings = use_database(monkeypatch, tmp_path / "home", url)
        tags = save_versions(settings, FUNCTION, 1)
        DeploymentStore(settings).set_primary(FUNCTION, tags[0], "outage test")
        _, key = create_key(settings, "outage", rights=RIGHTS)
        port = free_port()
        env = {
            **os.environ,
            "LOOPML_HOME": str(settings.home),
            "LOOPML_DATABASE_URL": url,
            "BENTOML_HOME": str(settings.bentoml_home),
            "BENTOML_DO_NOT_TRACK": "true",
            "LOOPML_SERVING_PORT": str(port),
            "LOOPML_SERVING_GPU": "0",
        }
        log_path = tmp_path / "serving.log"
        proc = spawn_server(serve_command(port), env, log_path)
        serving = f"http://127.0.0.1:{port}"
        answers: list[tuple[float, str]] = []
        failures: list[tuple[float, int]] = []
        lock = threading.Lock()
        stopping = threading.Event()

        def client(worker: int) -> None:
            session = requests.Session()
            i = 0
            while not stopping.is_set():
                try:
                    response = session.post(
                        f"{serving}/v1/functions/{FUNCTION}/invoke",
                        json={"text": f"client {worker} call {i}: a fine film"},
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=60,
                    )
                except requests.RequestException:
                    with lock:
                        failures.append((time.time(), 0))
                    continue
                with lock:
                    if response.status_code == 200:
                        answers.append((time.time(), response.json()["invocation_id"]))
                    else:
                        failures.append((time.time(), response.status_code))
                i += 1

        def answered_after(moment: float) -> int:
            with lock:
                return sum(1 for at, _ in answers if at > moment)

        def wait_for(count: int, after: float) -> None:
            deadline = time.monotonic() + 120
            while answered_after(after) < count:
                assert time.monotonic() < deadline, (
                    f"only {answered_after(after)} answers; {log_path.read_text()[-2000:]}"
                )
                time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
        try:
            wait_ready(proc, serving, log_path)
            for thread in threads:
                thread.start()
            wait_for(100, 0)
            cluster.stop()
            stopped_at = time.time()
            wait_for(200, stopped_at)  # answered while PostgreSQL is down ...
            while time.time() - stopped_at < OUTAGE_SECONDS:  # ... for several seconds (keys checked again at 5 s)
                time.sleep(0.1)
            during = answered_after(stopped_at)
            cluster.start()
            started_at = time.time()
            wait_for(100, started_at)
            stopping.set()
            for thread in threads:
                thread.join(60)
            acknowledged = [invocation for _, invocation in answers]
            assert len(set(acknowledged)) == len(acknowledged)
            get_engine(url).dispose()  # this process's pool held connections the restart cut
            deadline = time.monotonic() + 120
            while True:  # the spool is written back
                with session_factory(url)() as session:
                    stored = dict(
                        session.execute(
                            select(InvocationRow.id, func.count())
                            .where(InvocationRow.id.in_(acknowledged))
                            .group_by(InvocationRow.id)
                        ).all()
                    )
                if len(stored) == len(acknowledged) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            missing = set(acknowledged) - set(stored)
            assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged calls are not in the database"
            assert all(count == 1 for count in stored.values())
            spool = settings.home / "spool"
            assert not list(spool.glob("invocations-*")), "spool files left after the database came back"
            print(
                f"\nPostgreSQL down {started_at - stopped_at:.1f} s under load: {during} calls answered meanwhile "
                f"(spooled), {len(failures)} failed requests, all {len(acknowledged)} acknowledged calls in the "
                "database once it was back"
            )
            assert during >= 200
        finally:
            stopping.set()
            stop_server(proc)
            get_engine(url).dispose()
