"""`loopml migrate-db` on a populated SQLite installation: after it, `loopml up` on PostgreSQL serves the same
version, Label Studio has every task and annotation, Dagster every run, the platform database every logged call
and key; and the loop goes on there (a new annotation trains and deploys the next version)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from loopml.config import get_settings
from tests.conftest import free_ports
from tests.postgres import count, drop_databases, fresh_database_url, postgres_server
from tests.real_server import wait_served
from tests.test_pipeline import NEGATIVE, POSITIVE
from tests.test_platform import loopml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FUNCTION = "moved-sentiment"


def test_a_sqlite_installation_moves_to_postgres(tmp_path: Path) -> None:
    from loopml.functions import FunctionRegistry
    from loopml.labelstudio import LabelStudioClient, choice_result

    label_studio, dagster, serving = free_ports(3)
    env = {
        **os.environ,
        "LOOPML_HOME": str(tmp_path / "home"),
        "LOOPML_LABELSTUDIO_PORT": str(label_studio),
        "LOOPML_DAGSTER_PORT": str(dagster),
        "LOOPML_SERVING_PORT": str(serving),
        "LOOPML_ANNOTATION_POLL_SECONDS": "1",
    }
    env.pop("LOOPML_DATABASE_URL", None)
    with postgres_server() as server:
        url = fresh_database_url(server)
        try:
            up = loopml(env, "up")
            assert up.returncode == 0, up.stdout + up.stderr
            created = loopml(env, "functions", "create", FUNCTION, "--labels", "positive,negative")
            assert created.returncode == 0, created.stdout + created.stderr
            settings = get_settings({k: v for k, v in env.items() if k.startswith("LOOPML_")})
            project = FunctionRegistry(settings).get(FUNCTION).labelstudio_project_id
            client = LabelStudioClient.from_settings(settings)
            labelled = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
            client.import_tasks(
                project, [{"data": {"text": t}, "annotations": [{"result": choice_result(lab)}]} for t, lab in labelled]
            )
            secret = loopml(env, "keys", "create", "before-the-move").stdout.strip().splitlines()[-1]
            wait_served(settings, secret, FUNCTION, f"{FUNCTION}:v1")
            with create_engine(settings.database_url).connect() as connection:
                calls = connection.execute(text("SELECT count(*) FROM invocations")).scalar()
                keys = connection.execute(text("SELECT count(*) FROM api_keys")).scalar()
            down = loopml(env, "down", timeout=120)
            assert down.returncode == 0

            moved = loopml(env, "migrate-db", url, timeout=900)
            assert moved.returncode == 0, moved.stdout + moved.stderr
            print("\n" + moved.stdout)
            assert count(url, "SELECT count(*) FROM invocations") == calls >= 1
            assert count(url, "SELECT count(*) FROM api_keys") == keys
            stores = get_settings(
                {**{k: v for k, v in env.items() if k.startswith("LOOPML_")}, "LOOPML_DATABASE_URL": url}
            ).stores
            assert stores.dagster_url is not None and stores.labelstudio_url is not None
            assert count(stores.dagster_url, "SELECT count(*) FROM runs WHERE status = 'SUCCESS'") >= 1
            assert count(stores.labelstudio_url, "SELECT count(*) FROM task") == len(labelled)
            assert count(stores.labelstudio_url, "SELECT count(*) FROM task_completion") == len(labelled)

            env["LOOPML_DATABASE_URL"] = url
            up = loopml(env, "up")
            assert up.returncode == 0, up.stdout + up.stderr
            settings = get_settings({k: v for k, v in env.items() if k.startswith("LOOPML_")})
            wait_served(settings, secret, FUNCTION, f"{FUNCTION}:v1")  # the same key, the same version
            # the loop goes on on PostgreSQL: new annotations in the moved project train the next version
            client = LabelStudioClient.from_settings(settings)
            more = [(f"an utterly delightful film number {i}", "positive") for i in range(3)]
            more += [(f"a thoroughly miserable film number {i}", "negative") for i in range(3)]
            client.import_tasks(
                project, [{"data": {"text": t}, "annotations": [{"result": choice_result(lab)}]} for t, lab in more]
            )
            deadline = time.time() + 600
            while True:
                body = requests.get(
                    f"{settings.serving_url}/v1/functions/{FUNCTION}",
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=30,
                ).json()
                served = {v["version"] for v in (body.get("primary"), body.get("canary")) if v}
                if served - {f"{FUNCTION}:v1"}:  # a newer version (a retrain with nothing new is held)
                    break
                assert time.time() < deadline, (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]
                time.sleep(1)
        finally:
            loopml(env, "down", timeout=120)
            drop_databases(server, url.rsplit("/", 1)[1])
