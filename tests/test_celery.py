"""Dagster runs on Celery workers (pipelines/celery_runs.py): real brokers (Redis, RabbitMQ), real workers started
by `loopml worker`, a real Dagster daemon for run monitoring and retries. The jobs are tests/celery_jobs.py's.
The whole loop on Celery workers is in tests/test_postgres.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopml import services
from loopml.config import PROJECT_ROOT, Settings, get_settings
from pipelines.celery_runs import (
    WORKER_TAG,
    BrokerError,
    LoopMLCeleryRunLauncher,
    broker_kind,
    result_backend,
    worker_name,
)
from tests.brokers import rabbitmq_broker, redis_broker

READY_TIMEOUT_S = 600.0  # a bound for a broken start: a worker imports the whole stack first


def test_the_broker_url_picks_the_broker_and_where_task_states_live() -> None:
    assert broker_kind("redis://h:6379/0") == "redis"
    assert broker_kind("amqp://u:p@h:5672//") == "amqp"
    with pytest.raises(BrokerError, match="Redis .* or RabbitMQ"):
        broker_kind("kafka://h:9092")
    assert result_backend("redis://h:6379/2", "sqlite:///x.db") == "redis://h:6379/2"
    # RabbitMQ: states in the platform database, where every process (daemon, webserver) reads them
    assert (
        result_backend("amqp://h//", "postgresql://u:p@db:5432/loopml") == "db+postgresql+psycopg://u:p@db:5432/loopml"
    )
    assert result_backend("amqp://h//", "sqlite:////srv/loopml.db") == "db+sqlite:////srv/loopml.db"


def test_without_a_broker_runs_stay_on_the_warm_run_worker(tmp_path: Path) -> None:
    settings = get_settings({"LOOPML_HOME": str(tmp_path)})
    assert "class: WarmRunLauncher" in services.dagster_yaml(settings)
    assert "pipelines.celery_runs" not in services.dagster_yaml(settings)


def test_with_a_broker_dagster_launches_runs_as_celery_tasks(tmp_path: Path) -> None:
    """One setting: the instance `loopml up` writes has dagster-celery's launcher on that broker."""
    from dagster import DagsterInstance

    settings = get_settings({"LOOPML_HOME": str(tmp_path), "LOOPML_BROKER_URL": "redis://127.0.0.1:6399/3"})
    settings.ensure_dirs()
    services.write_dagster_yaml(settings)
    text = (settings.dagster_home / "dagster.yaml").read_text()
    assert "class: WarmRunLauncher" not in text and "class: LoopMLCeleryRunLauncher" in text
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, LoopMLCeleryRunLauncher)
        assert launcher.broker == "redis://127.0.0.1:6399/3" and launcher.backend == "redis://127.0.0.1:6399/3"
        assert launcher.celery.conf.task_acks_late is True


def test_loopml_worker_needs_a_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOOPML_BROKER_URL"} | {"LOOPML_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "loopml.cli", "worker"], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    assert done.returncode != 0 and "LOOPML_BROKER_URL" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "loopml.cli", "worker"],
        env=env | {"LOOPML_BROKER_URL": "kafka://h:9092"},
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode != 0 and "RabbitMQ" in done.stderr


# ---------------------------------------------------------------------------------- real workers, real broker


class Workers:
    """`loopml worker` processes of one LOOPML_HOME, and runs of tests/celery_jobs.py launched through them."""

    def __init__(self, home: Path, broker: str) -> None:
        self.settings: Settings = get_settings({"LOOPML_HOME": str(home), "LOOPML_BROKER_URL": broker})
        self.settings.ensure_dirs()
        self.env = services.service_env(self.settings) | {"LOOPML_BROKER_URL": broker}
        self.env.pop("LOOPML_DATABASE_URL", None)
        services.write_dagster_yaml(self.settings)
        from dagster import DagsterInstance

        # create Dagster's SQLite stores here, once: the workers, the daemon and this process open the instance at
        # about the same time, and two processes creating a store at once both stamp its schema version ("more
        # than one head present" on every later open; `loopml up` avoids it by starting the webserver first)
        with DagsterInstance.from_config(str(self.settings.dagster_home)):
            pass
        self.procs: dict[str, subprocess.Popen] = {}
        self.daemon: subprocess.Popen | None = None

    def start(self, name: str) -> None:
        log = (self.settings.run_dir / f"worker-{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "loopml.cli", "worker", "--name", name, "--concurrency", "1"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def node(self, name: str) -> str:
        return worker_name(name)

    def wait_ready(self, *names: str) -> None:
        """Until every named worker answers a ping (each imports the stack first)."""
        from dagster import DagsterInstance

        deadline = time.monotonic() + READY_TIMEOUT_S
        with DagsterInstance.from_config(str(self.settings.dagster_home)) as instance:
            launcher = instance.run_launcher
            for name in names:
                while launcher.ping(self.node(name)) is not True:
                    assert self.procs[name].poll() is None, self.log(name)
                    assert time.monotonic() < deadline, self.log(name)
                    time.sleep(1)

    def log(self, name: str) -> str:
        return (self.settings.run_dir / f"worker-{name}.log").read_text(errors="replace")[-3000:]

    def kill(self, name: str) -> None:
        """kill -9 of the worker's whole process group (its main process and its pool)."""
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def start_daemon(self) -> None:
        """LoopML's Dagster daemon (run monitoring, run retries) over tests/celery_jobs.py."""
        workspace = self.settings.home / "celery-jobs-workspace.yaml"
        workspace.write_text(
            f"load_from:\n  - python_module:\n      module_name: tests.celery_jobs\n"
            f"      working_directory: {PROJECT_ROOT}\n"
        )
        log = (self.settings.run_dir / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "pipelines.daemon", "run", "-w", str(workspace)],  # what `loopml up` runs
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def launch_naps(self, seconds: float, count: int = 1) -> list[str]:
        """Launch ``count`` runs of tests/celery_jobs.py's ``nap`` at once, the way a user does (`dagster job
        launch`); their run ids."""
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(self.settings.dagster_home)) as instance:
            before = {r.run_id for r in instance.get_runs()}
        config = self.settings.home / f"nap-{seconds}.yaml"
        config.write_text(f"ops:\n  sleep_then_tell:\n    config:\n      seconds: {seconds}\n")
        argv = [sys.executable, "-m", "dagster", "job", "launch", "-m", "tests.celery_jobs", "-j", "nap"]
        launches = [
            subprocess.Popen(
                [*argv, "-c", str(config)],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(count)
        ]
        for launch in launches:
            output, _ = launch.communicate(timeout=300)
            assert launch.returncode == 0, output[-3000:]
        with DagsterInstance.from_config(str(self.settings.dagster_home)) as instance:
            runs = [r for r in instance.get_runs() if r.run_id not in before]
        assert len(runs) == count
        return [r.run_id for r in runs]

    def stop(self) -> None:
        for proc in [*self.procs.values(), self.daemon]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.procs.values(), self.daemon]:
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture
def redis_workers(tmp_path: Path) -> Iterator[Workers]:
    with redis_broker() as broker:
        workers = Workers(tmp_path / "home", broker)
        try:
            yield workers
        finally:
            workers.stop()


def _wait_finished(  # noqa: ANN202 - a RunRecord
    workers: Workers, run_id: str, timeout_s: float = 600.0, daemon: subprocess.Popen | None = None
):
    from dagster import DagsterInstance

    deadline = time.monotonic() + timeout_s
    with DagsterInstance.from_config(str(workers.settings.dagster_home)) as instance:
        while True:
            record = instance.get_run_record_by_id(run_id)
            assert record is not None
            if record.dagster_run.is_finished:
                return record
            assert daemon is None or daemon.poll() is None, (workers.settings.run_dir / "daemon.log").read_text()
            assert time.monotonic() < deadline, f"run {run_id} still {record.dagster_run.status}"
            time.sleep(0.5)


@pytest.mark.e2e
def test_runs_execute_side_by_side_on_two_workers(redis_workers: Workers) -> None:
    """Two runs at once, two one-run workers: each worker executes one, at the same time."""
    workers = redis_workers
    workers.start("one")
    workers.start("two")
    workers.wait_ready("one", "two")
    records = [_wait_finished(workers, run_id) for run_id in workers.launch_naps(8, count=2)]
    assert all(r.dagster_run.status.value == "SUCCESS" for r in records), [r.dagster_run.status for r in records]
    ran_on = {r.dagster_run.tags[WORKER_TAG] for r in records}
    assert ran_on == {workers.node("one"), workers.node("two")}
    (a, b) = records
    assert a.start_time is not None and b.start_time is not None and a.end_time and b.end_time
    assert max(a.start_time, b.start_time) < min(a.end_time, b.end_time), "the two runs did not overlap"


@pytest.mark.e2e
def test_a_run_executes_through_rabbitmq(tmp_path: Path) -> None:
    """The other broker, one setting: a run goes through RabbitMQ, its state through the platform database."""
    from dagster import DagsterInstance

    with rabbitmq_broker() as broker:
        workers = Workers(tmp_path / "home", broker)
        try:
            workers.start("rabbit")
            workers.wait_ready("rabbit")
            (run_id,) = workers.launch_naps(0.5)
            record = _wait_finished(workers, run_id)
            assert record.dagster_run.status.value == "SUCCESS"
            assert record.dagster_run.tags[WORKER_TAG] == workers.node("rabbit")
            with DagsterInstance.from_config(str(workers.settings.dagster_home)) as instance:
                health = instance.run_launcher.check_run_worker_health(record.dagster_run)
            assert health.status.value == "SUCCESS"  # read back from the database backend
        finally:
            workers.stop()


@pytest.mark.e2e
def test_a_killed_workers_run_is_retried_on_another_worker(redis_workers: Workers) -> None:
    """kill -9 of the worker mid-run: run monitoring finds its worker silent, marks the run failed, and Dagster's
    run retries start it again; the live worker executes the retry."""
    from dagster import DagsterInstance, RunsFilter

    workers = redis_workers
    workers.start("doomed")
    workers.start("survivor")
    workers.start_daemon()
    workers.wait_ready("doomed", "survivor")
    (run_id,) = workers.launch_naps(20)
    with DagsterInstance.from_config(str(workers.settings.dagster_home)) as instance:
        deadline = time.monotonic() + 300
        while not (run := instance.get_run_by_id(run_id)).tags.get(WORKER_TAG):  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        victim = "doomed" if run.tags[WORKER_TAG] == workers.node("doomed") else "survivor"
        other = "survivor" if victim == "doomed" else "doomed"
        workers.kill(victim)
        killed_at = time.monotonic()
        failed = _wait_finished(workers, run_id, timeout_s=300, daemon=workers.daemon)
        assert failed.dagster_run.status.value == "FAILURE"
        detected_s = time.monotonic() - killed_at
        deadline = time.monotonic() + 300
        while not (retries := instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": run_id}))):
            assert time.monotonic() < deadline, (workers.settings.run_dir / "daemon.log").read_text()[-3000:]
            time.sleep(0.5)
    retry = _wait_finished(workers, retries[0].run_id)
    # the retry inherits its parent's tags, the dead worker's name among them: it must not be judged by it
    assert retry.dagster_run.status.value == "SUCCESS"
    assert retry.dagster_run.tags[WORKER_TAG] == workers.node(other)
    print(f"worker killed -> run marked failed in {detected_s:.1f} s")


@pytest.mark.e2e
def test_a_queued_run_waits_and_a_starting_run_on_a_dead_worker_fails(
    redis_workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run monitoring of STARTING runs on Celery (pipelines/celery_runs.py: watch_starting_runs). A run waiting in
    the queue (no worker free) is not failed by the start timeout; a run a worker took and then died with (tagged,
    its worker silent) is failed at once, as a STARTED one is, instead of after the start timeout."""
    import logging

    import dagster._daemon.monitoring.run_monitoring as run_monitoring
    from dagster import DagsterInstance

    import pipelines.celery_runs as celery_runs

    workers = redis_workers
    yaml_path = workers.settings.dagster_home / "dagster.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("start_timeout_seconds: 180", "start_timeout_seconds: 1"))
    monkeypatch.setattr(run_monitoring, "monitor_starting_run", run_monitoring.monitor_starting_run)
    (run_id,) = workers.launch_naps(1)  # no worker runs: it stays queued
    time.sleep(1.5)
    logger = logging.getLogger("test")
    with DagsterInstance.from_config(str(workers.settings.dagster_home)) as instance:
        celery_runs.watch_starting_runs()
        run_monitoring.monitor_starting_run(instance, instance.get_run_record_by_id(run_id), logger)
        assert instance.get_run_by_id(run_id).status.value == "STARTING"  # stock monitoring fails it here
        instance.add_run_tags(run_id, {WORKER_TAG: "loopml-gone@nowhere"})  # taken by a worker that then died
        monkeypatch.setattr(celery_runs, "WORKER_LOST_SECONDS", 0.0)
        run_monitoring.monitor_starting_run(instance, instance.get_run_record_by_id(run_id), logger)
        failed = instance.get_run_by_id(run_id)
    assert failed.status.value == "FAILURE"
