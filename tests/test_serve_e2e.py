"""A real ``bentoml serve serving.service:LoopML`` process: auth, invoke, hot reload, kill -9 durability."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import requests

from loopml.deployments import DeploymentStore
from loopml.invocation_log import InvocationLog
from tests.real_server import Server, running_server, server_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FUNCTION = "review-sentiment"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("serve-e2e"), FUNCTION) as server:
        yield server


def test_auth_and_invoke(server: Server) -> None:
    with requests.Session() as session:
        unauthenticated = session.post(f"{server.url}/v1/functions/{FUNCTION}/invoke", json={"text": "hi"}, timeout=10)
        assert unauthenticated.status_code == 401 and "API key" in unauthenticated.json()["detail"]
        assert session.get(f"{server.url}/metrics", timeout=10).status_code == 401
        assert session.get(f"{server.url}/metrics", headers=server.headers, timeout=10).status_code == 200
        assert session.get(f"{server.url}/healthz", timeout=10).status_code == 200
        response = server.invoke(session, {"text": "A wonderful, warm film."})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "positive" and body["version"] == server.tags[0]
        assert InvocationLog(server.settings).get(body["invocation_id"]) is not None
        docs = session.get(f"{server.url}/docs", timeout=10)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_default_limits(server: Server) -> None:
    """1 MiB texts and 256-text batches by default; beyond them 413, and the worker keeps serving."""
    limit = 1 << 20
    with requests.Session() as session:
        at_limit = server.invoke(session, {"text": "good film " * (limit // 10) + "x" * (limit % 10)})
        assert at_limit.status_code == 200, at_limit.text
        over = server.invoke(session, {"text": "x" * (limit + 1)})
        assert over.status_code == 413 and "LOOPML_MAX_TEXT_BYTES" in over.json()["detail"]
        too_many = server.invoke(session, {"texts": ["fine"] * 257})
        assert too_many.status_code == 413 and "LOOPML_MAX_BATCH" in too_many.json()["detail"]
        huge = server.invoke(session, {"texts": ["y" * (limit - 10)] * 20})  # 20 MiB: over the body limit
        assert huge.status_code == 413 and "LOOPML_MAX_REQUEST_BYTES" in huge.json()["detail"]
        assert server.invoke(session, {"text": "still serving"}).status_code == 200


def test_hot_reload_without_restart(server: Server) -> None:
    pid = server.proc.pid
    DeploymentStore(server.settings).set_primary(FUNCTION, server.tags[1], "e2e hot reload")
    started = time.monotonic()
    with requests.Session() as session:
        while server.invoke(session, {"text": "hello"}).json()["version"] != server.tags[1]:
            assert time.monotonic() - started < 1.5, "the new version was not served within 1.5 s"
            time.sleep(0.05)
    assert server.proc.poll() is None and server.proc.pid == pid


def test_acknowledged_invocations_survive_kill_9(server: Server) -> None:
    """Clients hammer the server; we SIGKILL all its processes mid-stream; every answered id is in the DB."""
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with requests.Session() as session:
            i = 0
            while not stop.is_set():
                body = (
                    {"text": f"w{worker} call {i}"} if i % 2 else {"texts": [f"w{worker} b{i} {j}" for j in range(4)]}
                )
                try:
                    response = server.invoke(session, body)
                except requests.RequestException:
                    return  # the server is gone
                if response.status_code == 200:
                    payload = response.json()
                    ids = (
                        [r["invocation_id"] for r in payload["results"]]
                        if "results" in payload
                        else [payload["invocation_id"]]
                    )
                    with lock:
                        acknowledged.extend(ids)
                i += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = server_tree(server.proc)
    assert len(tree) >= 2, "expected the arbiter and at least one worker"
    for process in tree:  # kill -9 the arbiter and every worker: no shutdown hook, no flush
        os.kill(process.pid, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)
    server.proc.wait(10)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert len(acknowledged) >= 400, f"only {len(acknowledged)} answers before the kill"
    stored = InvocationLog(server.settings).existing_ids(acknowledged)
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged invocations were lost"
