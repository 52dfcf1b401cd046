"""Dagster runs on Celery workers (``dagster-celery``), for installations that outgrow one machine.

One setting, ``LOOPML_BROKER_URL`` (``redis://host:6379/0`` or ``amqp://user:password@host:5672//``), switches
Dagster's run launcher from the warm run worker to ``dagster-celery``'s :class:`CeleryRunLauncher`: each run
becomes a Celery task, and whichever worker takes it executes the whole run in one process, exactly as
``dagster api execute_run`` would. ``loopml worker`` starts a worker on any machine that reaches the broker,
the database (``LOOPML_DATABASE_URL``, PostgreSQL) and ``LOOPML_HOME`` (shared storage: the assets' files and
the model store live there).

The worker is the warm run worker's Celery twin: its main process imports the stack once (``worker_init``),
then the pool forks one child per run (``--max-tasks-per-child 1``), so each run starts with everything loaded
and leaves nothing behind for the next. Tasks are acknowledged when they end (``task_acks_late``), so a busy
worker does not hold a second run that an idle worker could start.

A worker killed mid-run is found by :meth:`LoopMLCeleryRunLauncher.check_run_worker_health` (Dagster's run
monitoring calls it every few seconds): the run's task is still ``STARTED`` but its worker no longer answers a
ping. The run is then marked failed, and Dagster's run retries start it again on a worker that is alive.

    celery -A pipelines.celery_runs worker ...   (what ``loopml worker`` runs)
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from dagster_celery.launcher import CeleryRunLauncher
from sqlalchemy.engine import make_url

QUEUE = "dagster"  # dagster-celery's queue (its app routes execute_job there)
WORKER_TAG = "loopml/celery_worker"  # the worker that executes a run (set when the run's task starts)
WORKER_PID_TAG = "loopml/celery_worker_pid"
WORKER_LOST_SECONDS = 10.0  # a run's worker silent this long (no ping answer) counts as dead
PING_TIMEOUT_SECONDS = 1.0
QUEUE_TIMEOUT_SECONDS = 6 * 3600  # a run no worker took in this long fails (stock: start_timeout_seconds)
# Runs side by side per worker: most wait on Label Studio and the database. Spare children matter too: a child
# that ran a run exits, and its replacement is ready only 1-3 s later (measured: the pool forks it once the old one
# is gone), so one turn of the loop (training, then inspection, pre-annotation, deployment runs) must not use
# every child: a training run that finds none waits for a replacement.
DEFAULT_CONCURRENCY = 8

# Settings of the Celery app, the same on the launcher's side and the workers'.
CELERY_SETTINGS: dict[str, Any] = {
    "task_acks_late": True,  # the message of a running run counts against the prefetch limit
    "worker_prefetch_multiplier": 1,
    "task_track_started": True,  # STARTED in the result backend: the health check tells queued from running
    "result_expires": 7 * 24 * 3600,
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
    "worker_send_task_events": False,
}


class BrokerError(ValueError):
    """A broker URL LoopML cannot use."""


def broker_kind(broker_url: str) -> str:
    """``redis`` or ``amqp`` (RabbitMQ), from the URL's scheme."""
    scheme = broker_url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    raise BrokerError(
        f"LOOPML_BROKER_URL must be a Redis (redis://host:6379/0) or RabbitMQ (amqp://user:password@host:5672//) "
        f"URL, not {scheme}://"
    )


def result_backend(broker_url: str, database_url: str) -> str:
    """Where task states are kept: Redis itself with a Redis broker; with RabbitMQ, the platform database
    (Celery's SQLAlchemy backend), so that every process sees every run's state (``rpc://`` would show a task's
    state only to the process that sent it)."""
    if broker_kind(broker_url) == "redis":
        return broker_url
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return "db+" + url.render_as_string(hide_password=False)


def app_args(broker_url: str, database_url: str) -> dict[str, Any]:
    """The arguments of dagster-celery's ``make_app`` (and its run launcher's config)."""
    return {
        "broker": broker_url,
        "backend": result_backend(broker_url, database_url),
        "include": [],
        "config_source": dict(CELERY_SETTINGS),
        "task_default_queue": QUEUE,
    }


def launcher_yaml(broker_url: str, database_url: str) -> str:
    """The ``run_launcher`` section of ``dagster.yaml`` for Celery runs."""
    import yaml

    args = app_args(broker_url, database_url)
    config = {
        "broker": args["broker"],
        "backend": args["backend"],
        "default_queue": QUEUE,
        "config_source": args["config_source"],
    }
    section = {"run_launcher": {"module": __name__, "class": "LoopMLCeleryRunLauncher", "config": config}}
    return "# Runs execute on Celery workers (LOOPML_BROKER_URL; `loopml worker` starts one).\n" + yaml.safe_dump(
        section, sort_keys=False
    )


# ------------------------------------------------------------------------------------------ the launcher


class LoopMLCeleryRunLauncher(CeleryRunLauncher):
    """dagster-celery's run launcher, which also notices a worker that died mid-run, and cancels with SIGINT."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._silent_since: dict[str, float] = {}  # worker -> when it first missed a ping

    def launch_run(self, context: Any) -> None:
        run = context.dagster_run
        if run.tags.get(WORKER_TAG):  # a retry inherits its parent's tags: not yet taken by any worker
            self._instance.add_run_tags(run.run_id, {WORKER_TAG: "", WORKER_PID_TAG: ""})
        super().launch_run(context)

    def ping(self, worker: str) -> bool | None:
        """Whether the Celery worker named ``worker`` answers a ping; None when the broker does not answer."""
        try:
            replies = self.celery.control.ping(destination=[worker], timeout=PING_TIMEOUT_SECONDS)
        except Exception:  # noqa: BLE001 - the broker is away: nothing is known about the worker
            return None
        return any(worker in reply for reply in replies)

    def worker_answers(self, worker: str) -> bool:
        """Whether ``worker`` may be alive: it answers a ping, or the broker is away (then nothing is known)."""
        return self.ping(worker) is not False

    def check_run_worker_health(self, run: Any) -> Any:
        from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

        health = super().check_run_worker_health(run)
        worker = run.tags.get(WORKER_TAG)
        if health.status not in (WorkerStatus.RUNNING, WorkerStatus.UNKNOWN) or not worker:
            return health
        if self.worker_answers(worker):
            self._silent_since.pop(worker, None)
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=worker)
        silent_since = self._silent_since.setdefault(worker, time.monotonic())
        silent = time.monotonic() - silent_since
        if silent < WORKER_LOST_SECONDS:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker {worker} silent for {silent:.0f} s", worker)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"Celery worker {worker} stopped answering mid-run ({silent:.0f} s)", worker
        )

    def terminate(self, run_id: str) -> bool:
        from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished or DAGSTER_CELERY_TASK_ID_TAG not in run.tags:
            return False
        self._instance.report_run_canceling(run)
        # SIGINT: the run sees KeyboardInterrupt and cancels itself (SIGTERM would end it unreported)
        self.celery.AsyncResult(run.tags[DAGSTER_CELERY_TASK_ID_TAG]).revoke(terminate=True, signal="SIGINT")
        return True


def watch_starting_runs() -> None:
    """Dagster's run monitoring, aware of runs that are still ``STARTING`` on Celery (the daemon calls this).

    Stock monitoring fails a ``STARTING`` run once it has not started within ``start_timeout_seconds`` and asks
    nothing else. With Celery, ``STARTING`` covers two things: a run waiting in the queue for a free worker (which
    may take longer than that on a busy cluster, and is no failure: it is failed only after
    :data:`QUEUE_TIMEOUT_SECONDS`), and a run a worker has taken and is opening (tagged with the worker): that one
    is failed as soon as its worker is found dead, as a ``STARTED`` run is, and retried.
    """
    import dagster._daemon.monitoring.run_monitoring as run_monitoring
    from dagster._core.launcher import WorkerStatus
    from dagster._core.storage.dagster_run import DagsterRunStatus

    stock = run_monitoring.monitor_starting_run
    if getattr(stock, "celery_aware", False):
        return

    def monitor_starting_run(instance: Any, run_record: Any, logger: Any) -> None:
        run = run_record.dagster_run
        launcher = instance.run_launcher
        if not isinstance(launcher, LoopMLCeleryRunLauncher) or run.status != DagsterRunStatus.STARTING:
            stock(instance, run_record, logger)
            return
        if run.tags.get(WORKER_TAG):  # a worker has it
            health = launcher.check_run_worker_health(run)
            if health.status == WorkerStatus.FAILED:
                message = f"Detected run worker status {health}. Marking run {run.run_id} as failed."
                logger.info(message)
                instance.report_run_failed(run, message)  # as stock monitoring does for a STARTED run
            return
        launched = instance.get_run_stats(run.run_id).launch_time or run_record.create_timestamp.timestamp()
        if time.time() - launched >= max(QUEUE_TIMEOUT_SECONDS, instance.run_monitoring_start_timeout_seconds):
            stock(instance, run_record, logger)  # fails it: no worker took it in that long

    monitor_starting_run.celery_aware = True  # type: ignore[attr-defined]
    run_monitoring.monitor_starting_run = monitor_starting_run


# -------------------------------------------------------------------------------------------- the worker


def worker_name(name: str | None = None) -> str:
    """A Celery node name, unique per worker: ``loopml-<name or random>@<host>``."""
    return f"loopml-{name or uuid.uuid4().hex[:6]}@{socket.gethostname()}"


def worker_concurrency() -> int:
    """Runs side by side per worker: ``LOOPML_WORKER_CONCURRENCY`` (default 8)."""
    from loopml.config import env_int

    return max(1, env_int("LOOPML_WORKER_CONCURRENCY", DEFAULT_CONCURRENCY))


def worker_argv(name: str, concurrency: int = DEFAULT_CONCURRENCY, loglevel: str = "INFO") -> list[str]:
    """The command line of one worker (run with the platform's Python)."""
    import sys

    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        __name__,
        "worker",
        "--queues",
        QUEUE,
        "--hostname",
        name,
        "--concurrency",
        str(concurrency),
        "--max-tasks-per-child",
        "1",  # a fresh fork of the warm parent per run
        "--prefetch-multiplier",
        "1",
        "--optimization",
        "fair",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        loglevel,
    ]


def make_worker_app() -> Any:
    """The workers' Celery app: dagster-celery's app and tasks, configured from the LoopML settings."""
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

    from loopml.config import get_settings

    settings = get_settings()
    if not settings.broker_url:
        raise BrokerError("LOOPML_BROKER_URL is not set: a Celery worker needs a broker")
    celery_app = make_app(app_args(settings.broker_url, settings.database_url))
    create_execute_job_task(celery_app)
    create_resume_job_task(celery_app)
    _connect_signals()
    return celery_app


def _connect_signals() -> None:
    from celery import signals

    signals.worker_init.connect(_warm_parent, weak=False)
    signals.worker_ready.connect(_mark_ready, weak=False)
    signals.worker_shutdown.connect(_unmark_ready, weak=False)
    signals.worker_process_init.connect(_fresh_child, weak=False)
    signals.task_prerun.connect(_tag_run, weak=False)


def _warm_parent(**_kwargs: Any) -> None:
    """In the worker's main process, before the pool forks: import the stack and exercise it (as the warm run
    worker does), and check that a forked child can use it."""
    from pipelines.run_worker import fork_self_test, warm_calls, warm_up
    from pipelines.storage_speedups import install

    started = time.perf_counter()
    install(open_databases=False)
    warm_up()
    warm_calls()
    fork_self_test()
    print(f"celery worker: warm in {time.perf_counter() - started:.1f} s", flush=True)


def _ready_path() -> Any:
    from loopml.config import get_settings
    from loopml.services import CELERY_READY_FILE

    return get_settings().run_dir / CELERY_READY_FILE


def _mark_ready(sender: Any = None, **_kwargs: Any) -> None:
    """The worker of ``loopml up`` tells it that it consumes (``run/celery-worker.ready``: its name)."""
    if os.environ.get("LOOPML_WORKER_READY_FILE") == "1":
        _ready_path().write_text(str(getattr(sender, "hostname", "")))


def _unmark_ready(**_kwargs: Any) -> None:
    if os.environ.get("LOOPML_WORKER_READY_FILE") == "1":
        _ready_path().unlink(missing_ok=True)


def _fresh_child(**_kwargs: Any) -> None:
    """In each forked pool child: fresh randomness, the run's own databases, remembered partitions."""
    from pipelines.run_worker import remember_dynamic_partitions
    from pipelines.storage_speedups import keep_databases_open

    random.seed()
    remember_dynamic_partitions()
    keep_databases_open()


def _tag_run(sender: Any = None, kwargs: Mapping[str, Any] | None = None, **_rest: Any) -> None:
    """When a run's task starts: tag the run with this worker's name and PID (the health check pings it), and
    lower the CPU priority of background runs."""
    from dagster import DagsterInstance
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
    from dagster._serdes import unpack_value

    from pipelines.run_worker import BACKGROUND_JOBS, BACKGROUND_NICENESS

    packed = (kwargs or {}).get("execute_job_args_packed")
    if packed is None:
        return
    args = unpack_value(packed, as_type=(ExecuteRunArgs, ResumeRunArgs))  # type: ignore[arg-type]
    hostname = str(getattr(getattr(sender, "request", None), "hostname", "") or "")
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(args.run_id)
        if run is None:
            return
        instance.add_run_tags(run.run_id, {WORKER_TAG: hostname, WORKER_PID_TAG: str(os.getpid())})
    if run.job_name in BACKGROUND_JOBS:
        os.nice(BACKGROUND_NICENESS)


def __getattr__(name: str) -> Any:
    # `celery -A pipelines.celery_runs` looks up `app` (then `celery`); build it only then, so that the launcher
    # (which imports this module in the daemon and the webserver) needs no broker setting to import it
    if name in ("app", "celery"):
        global app
        app = make_worker_app()
        return app
    raise AttributeError(name)
