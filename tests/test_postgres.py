"""PostgreSQL everywhere with one setting: the platform database, Dagster's instance storage and Label Studio's
database, on a real PostgreSQL server (tests/postgres.py finds or starts one)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from loopml.config import Settings, get_settings
from loopml.stores import StoreError, ensure_database, stores_for
from tests.postgres import count, drop_databases, fresh_database_url, postgres_server


def test_one_url_names_the_three_stores() -> None:
    stores = stores_for("postgresql://loopml:s3cret@db.internal:5433/loopml")
    assert stores.postgres
    assert stores.dagster_url == "postgresql://loopml:s3cret@db.internal:5433/loopml_dagster"
    assert stores.labelstudio_url == "postgresql://loopml:s3cret@db.internal:5433/loopml_labelstudio"
    assert stores.labelstudio_env() == {
        "DJANGO_DB": "default",
        "POSTGRE_NAME": "loopml_labelstudio",
        "POSTGRE_USER": "loopml",
        "POSTGRE_PASSWORD": "s3cret",
        "POSTGRE_HOST": "db.internal",
        "POSTGRE_PORT": "5433",
    }
    yaml = stores.dagster_storage_yaml()
    assert "postgres_url: 'postgresql+psycopg2://loopml:s3cret@db.internal:5433/loopml_dagster'" in yaml
    psycopg = stores_for("postgresql+psycopg://u@h/loopml")
    assert psycopg.dagster_storage_yaml().count("postgresql+psycopg2://u@h/loopml_dagster") == 1
    sqlite = stores_for("sqlite:////tmp/x/loopml.db")
    assert not sqlite.postgres and sqlite.dagster_storage_yaml() == "" and sqlite.labelstudio_env() == {}


def test_a_url_without_a_database_or_a_server_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="names no database"):
        stores_for("postgresql://u@127.0.0.1:5432/")
    with pytest.raises(StoreError, match="not reachable"):
        ensure_database("postgresql://nobody@127.0.0.1:9/loopml")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_settings(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose LOOPML_DATABASE_URL is a new database on the test server (its siblings dropped after)."""
    url = fresh_database_url(server)
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOOPML_DATABASE_URL", url)
    settings = get_settings()
    settings.ensure_dirs()
    created = settings.stores.ensure()
    assert len(created) == 3 and settings.stores.ensure() == []  # made once, then found
    try:
        yield settings
    finally:
        from loopml.db import get_engine

        get_engine(url).dispose()
        drop_databases(server, url.rsplit("/", 1)[1])


def test_the_platform_database_on_postgres(pg_settings: Settings) -> None:
    """Registry, deployments, keys, the invocation log and feedback, and the canary's statistics over them."""
    from loopml.apikeys import create_key, verify
    from loopml.canary import canary_stats
    from loopml.deployments import DeploymentStore
    from loopml.functions import FunctionRegistry, FunctionSpec
    from loopml.invocation_log import InvocationLog, InvocationRecord

    settings = pg_settings
    assert settings.database_url.startswith("postgresql")
    FunctionRegistry(settings).add(FunctionSpec("tone", "text", ["positive", "negative"], "minilm-l6-int8", 7))
    assert FunctionRegistry(settings).get("tone").labelstudio_project_id == 7
    store = DeploymentStore(settings)
    store.set_primary("tone", "tone:v1", "test")
    store.start_canary("tone", "tone:v2", 0.5, "test")
    state = store.get("tone")
    assert state is not None and (state.primary_tag, state.canary_tag, state.canary_weight) == (
        "tone:v1",
        "tone:v2",
        0.5,
    )
    key_id, secret = create_key(settings, "pg", rights=["invoke", "feedback"], functions=["tone"])
    grant = verify(settings, secret)
    assert grant is not None and grant.key_id == key_id and grant.allows("invoke", "tone")

    log = InvocationLog(settings)
    try:
        records = [
            InvocationRecord(
                function="tone",
                input_text=f"call {i}",
                embedding=np.full(4, i, dtype=np.float16).tobytes(),
                scores={"tone:v1": [0.8, 0.2], "tone:v2": [0.6, 0.4]},
                labels={"tone:v1": ["positive", "negative"], "tone:v2": ["positive", "negative"]},
                answered_by="tone:v1" if i % 2 else "tone:v2",
                label="positive",
                confidence=0.8,
                latency_ms=3.0,
                key_id=key_id,
                sticky_key=f"user-{i}",
            )
            for i in range(200)
        ]
        ids = [log.submit(record).result(30) for record in records]
        assert log.existing_ids(ids) == set(ids)
    finally:
        log.close()
    stats = canary_stats(settings, "tone", "tone:v1", "tone:v2", datetime.now(UTC) - timedelta(minutes=5))
    assert stats.requests == 200 and stats.shadow_scored == 200 and stats.error_rate == 0.0


def test_dagster_keeps_its_runs_in_postgres(pg_settings: Settings) -> None:
    """The instance `loopml up` configures (dagster.yaml) stores runs and events in `<database>_dagster`."""
    from dagster import DagsterInstance, job, op

    from loopml import services

    settings = pg_settings
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    services.write_dagster_yaml(settings)

    @op
    def hello() -> int:
        return 1

    @job
    def tiny() -> None:
        hello()

    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = tiny.execute_in_process(instance=instance)
        assert result.success
    dagster_url = settings.stores.dagster_url
    assert dagster_url is not None
    engine = create_engine(dagster_url, poolclass=NullPool)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT run_id FROM runs")).scalars().all()
    engine.dispose()
    assert result.run_id in stored


def test_dagster_storage_on_postgres_keeps_its_connections_open(pg_settings: Settings) -> None:
    """pipelines/postgres_pool.py: storage calls reuse a connection (dagster-postgres alone connects anew for each
    one), and a forked process (a run forked from a warm worker) opens its own instead of sharing the parent's."""
    import os
    import time

    from dagster import DagsterInstance

    from loopml import services
    from pipelines import postgres_pool

    settings = pg_settings
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    services.write_dagster_yaml(settings)
    postgres_pool.install()
    dagster_url = settings.stores.dagster_url
    assert dagster_url is not None
    database = dagster_url.rsplit("/", 1)[1]
    sessions = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"

    def backends() -> set[int]:
        engine = create_engine(dagster_url, poolclass=NullPool)
        with engine.connect() as connection:
            found = set(
                connection.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                    {"d": database},
                ).scalars()
            )
        engine.dispose()
        return found

    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        instance.get_runs(limit=1)
        first = backends()
        for _ in range(20):
            instance.get_runs(limit=1)
            instance.all_instigator_state()  # the schedule storage (sensor cursors, ticks)
        assert backends() == first and len(first) >= 1  # the same connection, kept
        pid = os.fork()
        if pid == 0:  # the child: its own connection answers; the parent's is left alone
            code = 1
            try:
                instance.get_runs(limit=1)
                code = 0 if backends() - first else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        instance.get_runs(limit=1)  # the parent's connection still works after the child's exit
    deadline = time.monotonic() + 30  # the child's backend ends when the server sees its socket close
    while count(dagster_url, sessions):  # closed with the instance
        assert time.monotonic() < deadline, f"{count(dagster_url, sessions)} connections left open"
        time.sleep(0.1)


@pytest.mark.e2e
@pytest.mark.slow
def test_the_loop_runs_on_postgres_stores_and_two_celery_workers(server: str, tmp_path: Path) -> None:
    """`loopml up` with a PostgreSQL LOOPML_DATABASE_URL and a broker (LOOPML_BROKER_URL, Redis): Label Studio,
    Dagster and the platform keep their data in its three databases (no SQLite file of theirs under LOOPML_HOME),
    runs execute on Celery workers (the local one `loopml up` starts and a second from `loopml worker`), and
    annotations of two functions become served versions. Then the worker executing a training run is killed
    mid-run: the run is retried on a live worker and the version appears."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from dagster import DagsterInstance, RunsFilter

    from loopml import services
    from loopml.functions import FunctionRegistry
    from loopml.labelstudio import LabelStudioClient, choice_result
    from pipelines.celery_runs import WORKER_TAG, worker_name
    from serving.model_store import list_versions
    from tests.brokers import redis_broker
    from tests.conftest import free_ports
    from tests.real_server import wait_served
    from tests.test_pipeline import NEGATIVE, POSITIVE
    from tests.test_platform import loopml

    url = fresh_database_url(server)
    label_studio, dagster, serving = free_ports(3)
    functions = ("pg-sentiment", "pg-mood")
    labelled = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    with redis_broker() as broker:
        env = {
            **os.environ,
            "LOOPML_HOME": str(tmp_path / "home"),
            "LOOPML_DATABASE_URL": url,
            "LOOPML_BROKER_URL": broker,
            "LOOPML_WORKER_CONCURRENCY": "1",  # one run per worker: two runs at once need both workers
            "LOOPML_LABELSTUDIO_PORT": str(label_studio),
            "LOOPML_DAGSTER_PORT": str(dagster),
            "LOOPML_SERVING_PORT": str(serving),
            "LOOPML_ANNOTATION_POLL_SECONDS": "1",
        }
        settings = get_settings({k: v for k, v in env.items() if k.startswith("LOOPML_")})
        second: subprocess.Popen | None = None
        try:
            up = loopml(env, "up")
            assert up.returncode == 0, up.stdout + up.stderr
            assert "PostgreSQL" in up.stdout
            second = subprocess.Popen(
                [sys.executable, "-m", "loopml.cli", "worker", "--name", "second"],
                env=env,
                stdout=(settings.run_dir / "second-worker.log").open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            workers = {worker_name(n) for n in ("local", "second")}
            for name in functions:
                created = loopml(env, "functions", "create", name, "--labels", "positive,negative")
                assert created.returncode == 0, created.stdout + created.stderr
            client = LabelStudioClient.from_settings(settings)
            registry = FunctionRegistry(settings)
            for name in functions:
                client.import_tasks(
                    registry.get(name).labelstudio_project_id,
                    [{"data": {"text": t}, "annotations": [{"result": choice_result(lab)}]} for t, lab in labelled],
                )
            secret = loopml(env, "keys", "create", "pg-test").stdout.strip().splitlines()[-1]
            for name in functions:
                answer = wait_served(settings, secret, name, f"{name}:v1", timeout_s=900)
                assert answer["label"] == "positive"

            stores = settings.stores
            assert stores.dagster_url is not None and stores.labelstudio_url is not None
            assert count(url, "SELECT count(*) FROM invocations WHERE function = 'pg-sentiment'") >= 1
            assert count(url, "SELECT count(*) FROM deployments WHERE primary_tag = 'pg-sentiment:v1'") == 1
            assert count(stores.dagster_url, "SELECT count(*) FROM runs WHERE status = 'SUCCESS'") >= 2
            assert count(stores.labelstudio_url, "SELECT count(*) FROM task") == 2 * len(labelled)
            with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
                trained = instance.get_runs(RunsFilter(job_name="train_function", statuses=[]))
                ran_on = {run.tags.get(WORKER_TAG) for run in trained if run.status.value == "SUCCESS"}
            assert ran_on and ran_on <= workers, f"training runs executed on {ran_on}, not on the Celery workers"
            home = Path(env["LOOPML_HOME"])
            sqlite_files = [
                p.relative_to(home).as_posix()
                for pattern in ("loopml.db", "labelstudio/*.sqlite3", "dagster/**/*.db")
                for p in home.glob(pattern)
            ]
            assert sqlite_files == [], f"stores left on SQLite: {sqlite_files}"

            # kill -9 the worker that executes the next training run, mid-run
            before = {run.run_id for run in trained}
            more = [(f"{t} (again)", lab) for t, lab in labelled[:6]]
            client.import_tasks(
                registry.get("pg-sentiment").labelstudio_project_id,
                [{"data": {"text": t}, "annotations": [{"result": choice_result(lab)}]} for t, lab in more],
            )
            deadline = time.time() + 600
            with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
                while True:
                    assert time.time() < deadline, "no training run started on a worker"
                    runs = [
                        r
                        for r in instance.get_runs(RunsFilter(job_name="train_function"))
                        if r.run_id not in before and r.tags.get(WORKER_TAG)
                    ]
                    if runs:
                        break
                    time.sleep(0.05)
            victim = runs[0]
            if victim.tags[WORKER_TAG].startswith("loopml-second@"):
                os.killpg(second.pid, signal.SIGKILL)
            else:
                pid = services.read_pid(settings, "run-worker")
                assert pid is not None
                os.killpg(pid, signal.SIGKILL)  # the supervisor starts it again, as after any crash
            killed_at = time.time()
            deadline = time.time() + 900
            while len(list_versions(settings, "pg-sentiment")) < 2:
                assert time.time() < deadline, (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]
                time.sleep(1)
            while True:  # the version is registered mid-run: the retry still gates and deploys it
                with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
                    killed = instance.get_run_by_id(victim.run_id)
                    retries = instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": victim.run_id}))
                if retries and all(r.is_finished for r in retries):
                    break
                assert time.time() < deadline, (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]
                time.sleep(1)
            assert killed is not None and killed.status.value == "FAILURE"
            print(f"worker killed mid-run -> the retried run's version in {time.time() - killed_at:.1f} s")
            assert [r.status.value for r in retries] == ["SUCCESS"]
            assert list_versions(settings, "pg-sentiment")[-1].metadata["train_rows"] + list_versions(
                settings, "pg-sentiment"
            )[-1].metadata.get("holdout_rows", 0) == len(labelled) + len(more)
        finally:
            if second is not None and second.poll() is None:
                os.killpg(second.pid, signal.SIGTERM)
                second.wait(timeout=60)
            loopml(env, "down", timeout=120)
            drop_databases(server, url.rsplit("/", 1)[1])


def test_replicas_starting_at_once_on_a_new_database_create_its_tables_once(server: str) -> None:
    """Several processes opening a database with no tables yet (serving replicas started together): the schema
    lock makes one create the tables and the others find them; none fails."""
    import subprocess
    import sys
    import time

    from loopml.config import PROJECT_ROOT

    url = fresh_database_url(server)
    ensure_database(url)
    code = (
        "import sys, time\n"
        "from loopml.db import get_engine\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all at the same moment, imports done\n"
        "get_engine(sys.argv[1])\n"
        "print('ok')\n"
    )
    at = str(time.time() + 8)
    try:
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url, at], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * 6 and outputs == ["ok"] * 6
    finally:
        drop_databases(server, url.rsplit("/", 1)[1])
