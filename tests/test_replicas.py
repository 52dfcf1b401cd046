"""Two serving replicas on different ports sharing one PostgreSQL platform database and one model store, under
load, with a canary started and then promoted in the middle: every acknowledged call is logged exactly once, both
replicas serve the new primary within about a second of the promotion, and a sticky key gets the same side of the
canary from either replica."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from loopml.apikeys import RIGHTS, create_key
from loopml.config import Settings
from loopml.db import InvocationRow, session_factory
from loopml.deployments import DeploymentStore
from tests.conftest import free_ports
from tests.postgres import drop_databases, fresh_database_url, postgres_server, use_database
from tests.real_server import serve_command, spawn_server, stop_server, wait_ready
from tests.serving_support import save_versions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FUNCTION = "review-sentiment"
STICKY = [f"user-{n}" for n in range(16)]


@pytest.fixture
def replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, list[str], list[str], str]]:
    """Settings on a new PostgreSQL database, two versions (v1 primary), a key, and two serving processes."""
    with postgres_server() as server:
        url = fresh_database_url(server)
        settings = use_database(monkeypatch, tmp_path / "home", url)
        tags = save_versions(settings, FUNCTION, 2)
        DeploymentStore(settings).set_primary(FUNCTION, tags[0], "replica test")
        _, key = create_key(settings, "replicas", rights=RIGHTS)
        procs: list[subprocess.Popen] = []
        urls = []
        try:
            for n, port in enumerate(free_ports(2)):
                env = {
                    **os.environ,
                    "LOOPML_HOME": str(settings.home),
                    "LOOPML_DATABASE_URL": url,
                    "BENTOML_HOME": str(settings.bentoml_home),  # the shared model store
                    "BENTOML_DO_NOT_TRACK": "true",
                    "LOOPML_SERVING_PORT": str(port),
                    "LOOPML_SERVING_GPU": "0",
                    "LOOPML_SCORING_LANES": "1",  # two replicas on 2 cores
                }
                procs.append(spawn_server(serve_command(port), env, tmp_path / f"replica-{n}.log"))
                urls.append(f"http://127.0.0.1:{port}")
            for n, (proc, replica) in enumerate(zip(procs, urls, strict=True)):
                wait_ready(proc, replica, tmp_path / f"replica-{n}.log")
            yield settings, tags, urls, key
        finally:
            for proc in procs:
                stop_server(proc)
            from loopml.db import get_engine

            get_engine(url).dispose()
            drop_databases(server, url.rsplit("/", 1)[1])


def test_two_replicas_share_the_log_the_rollout_and_sticky_keys(
    replicas: tuple[Settings, list[str], list[str], str],
) -> None:
    settings, tags, urls, key = replicas
    headers = {"Authorization": f"Bearer {key}"}
    answers: list[tuple[int, float, str, str, str]] = []  # replica, answered at, id, version, sticky key
    lock = threading.Lock()
    stopping = threading.Event()

    def client(worker: int) -> None:
        replica = worker % 2
        session = requests.Session()
        i = 0
        while not stopping.is_set():
            sticky = STICKY[(worker * 5 + i) % len(STICKY)]
            response = session.post(
                f"{urls[replica]}/v1/functions/{FUNCTION}/invoke",
                json={"text": f"client {worker} call {i}: a fine film", "sticky_key": sticky},
                headers=headers,
                timeout=60,
            )
            assert response.status_code == 200, response.text
            body = response.json()
            with lock:
                answers.append((replica, time.time(), body["invocation_id"], body["version"], sticky))
            i += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    store = DeploymentStore(settings)

    def wait_until(count: int) -> None:
        deadline = time.monotonic() + 120
        while len(answers) < count:
            assert time.monotonic() < deadline and all(t.is_alive() for t in threads), "the clients stopped"
            time.sleep(0.05)

    wait_until(100)
    store.start_canary(FUNCTION, tags[1], 0.5, "replica test")
    canary_at = time.time()
    wait_until(len(answers) + 300)
    store.promote(FUNCTION, "replica test", actor="test")
    promoted_at = time.time()
    wait_until(len(answers) + 200)
    stopping.set()
    for thread in threads:
        thread.join(60)

    # both replicas serve the new primary soon after the promotion, and only it from then on
    for replica in (0, 1):
        mine = [a for a in answers if a[0] == replica and a[1] > promoted_at]
        first_v2_only = next(
            (t for n, (_, t, _, _, _) in enumerate(mine) if all(v == tags[1] for *_, v, _ in mine[n:])), None
        )
        assert first_v2_only is not None, f"replica {replica} never served only {tags[1]} after the promotion"
        lag = first_v2_only - promoted_at
        print(f"\nreplica {replica}: the promoted version answering alone {lag:.2f} s after the promotion")
        assert lag < 3.0, f"replica {replica} took {lag:.1f} s to pick up the promotion (it polls every 0.3 s)"

    # during the canary a sticky key got the same side from both replicas
    sides: dict[str, set[str]] = {}
    for _, answered, _, version, sticky in answers:
        if canary_at + 1.0 < answered < promoted_at:
            sides.setdefault(sticky, set()).add(version)
    assert sides and all(len(versions) == 1 for versions in sides.values()), sides
    assert {v for versions in sides.values() for v in versions} == set(tags), "both sides of the canary served"

    # every acknowledged call is in the one log, once
    ids = [answer[2] for answer in answers]
    assert len(set(ids)) == len(ids)
    with session_factory(settings.database_url)() as session:
        rows = session.execute(
            select(InvocationRow.id, func.count()).where(InvocationRow.id.in_(ids)).group_by(InvocationRow.id)
        ).all()
    assert len(rows) == len(ids) and all(count == 1 for _, count in rows)
