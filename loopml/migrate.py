"""Copy an installation's three SQLite stores into PostgreSQL: ``loopml migrate-db postgresql://...``.

Run it with the platform stopped (``loopml down``): it reads the SQLite stores of ``LOOPML_HOME`` and writes

- the platform database (functions, label changes, deployments and their history, API keys, the invocation log,
  feedback): every row, table by table, rows already there skipped (a second run completes a first that stopped);
- Dagster's storage: every run with its event log (asset materializations, checks and step events included), the
  dynamic partitions and the sensors' and schedules' state (their cursors), through Dagster's own storage API;
- Label Studio's database: Django's ``dumpdata`` of the SQLite file and ``loaddata`` into the PostgreSQL one after
  Label Studio's migrations created its tables (users, projects, tasks, annotations, predictions, webhooks).

Then set ``LOOPML_DATABASE_URL`` to the URL and ``loopml up``. The SQLite files are left as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from loopml.config import Settings
from loopml.stores import Stores, is_postgres, stores_for

CHUNK_ROWS = 2000
PARTITIONS = "functions"  # the dynamic partitions of assets/partitions.py (one per function)


@dataclass
class MigrationReport:
    platform_rows: dict[str, int] = field(default_factory=dict)  # table -> rows in PostgreSQL after the copy
    dagster_runs: int = 0
    dagster_events: int = 0
    labelstudio_objects: int = 0

    def lines(self) -> list[str]:
        tables = ", ".join(f"{name} {count}" for name, count in self.platform_rows.items())
        return [
            f"platform database: {tables}",
            f"Dagster: {self.dagster_runs} runs, {self.dagster_events} events",
            f"Label Studio: {self.labelstudio_objects} objects",
        ]


class MigrationError(RuntimeError):
    """The migration cannot start or did not complete (the message says what to do)."""


def migrate(settings: Settings, target_url: str, say: Callable[[str], None] = print) -> MigrationReport:
    """Copy the SQLite stores of ``settings`` into the PostgreSQL stores of ``target_url`` (created if missing)."""
    if not is_postgres(target_url):
        raise MigrationError("the target must be a PostgreSQL URL (postgresql://user:password@host:5432/loopml)")
    if is_postgres(settings.database_url):
        raise MigrationError("this installation is on PostgreSQL already (LOOPML_DATABASE_URL); unset it to migrate")
    from loopml import services

    running = [name for name in services.SERVICES_IN_STOP_ORDER if services.service_running(settings, name)]
    if running:
        raise MigrationError(f"stop the platform first (`loopml down`): {', '.join(running)} running")
    target = stores_for(target_url)
    target.ensure()
    report = MigrationReport()
    say("platform database ...")
    report.platform_rows = copy_platform_database(settings.database_url, target.platform_url)
    say("Dagster runs and events ...")
    report.dagster_runs, report.dagster_events = copy_dagster(settings, target)
    say("Label Studio ...")
    report.labelstudio_objects = copy_labelstudio(settings, target)
    return report


# --- the platform database ----------------------------------------------------------------------------------------
def copy_platform_database(source_url: str, target_url: str) -> dict[str, int]:
    """Every row of every platform table, in dependency order; rows whose key is already there are skipped.
    Integer id sequences are moved past the copied ids. Returns the rows per table in the target."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from loopml.db import Base, get_engine

    source = get_engine(source_url)
    target = get_engine(target_url)  # creates the tables
    counts: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        keys = [column.name for column in table.primary_key.columns]
        with source.connect() as read, target.begin() as write:
            result = read.execution_options(stream_results=True).execute(select(table))
            while chunk := result.fetchmany(CHUNK_ROWS):
                rows = [dict(row._mapping) for row in chunk]
                write.execute(pg_insert(table).on_conflict_do_nothing(index_elements=keys), rows)
            for column in table.primary_key.columns:
                if column.autoincrement is True or (column.autoincrement == "auto" and column.type.python_type is int):
                    write.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                            f"GREATEST((SELECT MAX({column.name}) FROM {table.name}), 1))"
                        )
                    )
            counts[table.name] = int(write.execute(select(func.count()).select_from(table)).scalar() or 0)
    return counts


# --- Dagster ------------------------------------------------------------------------------------------------------
def copy_dagster(settings: Settings, target: Stores) -> tuple[int, int]:
    """Runs (with their job and plan snapshots), their events, the `functions` dynamic partitions and the
    sensors' and schedules' state, from the SQLite instance in DAGSTER_HOME into a PostgreSQL one. A run already in
    the target is skipped with its events."""
    from dagster import DagsterInstance

    home = settings.dagster_home
    if not (home / "history").exists():
        return 0, 0
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "dagster.yaml").write_text(target.dagster_storage_yaml())
        with DagsterInstance.from_config(str(home)) as src, DagsterInstance.from_config(folder) as dst:
            runs = events = 0
            known = {run.run_id for run in dst.get_runs()}
            source_runs, target_runs = src.run_storage, dst.run_storage
            for run in reversed(src.get_runs()):  # oldest first
                if run.run_id in known:
                    continue
                job_snapshot = run.job_snapshot_id
                if job_snapshot and not target_runs.has_job_snapshot(job_snapshot):
                    target_runs.add_job_snapshot(source_runs.get_job_snapshot(job_snapshot))
                plan = run.execution_plan_snapshot_id
                if plan and not target_runs.has_execution_plan_snapshot(plan):
                    target_runs.add_execution_plan_snapshot(source_runs.get_execution_plan_snapshot(plan))
                target_runs.add_run(run)
                for entry in src.all_logs(run.run_id):
                    dst.event_log_storage.store_event(entry)
                    events += 1
                runs += 1
            keys = src.get_dynamic_partitions(PARTITIONS)
            new = [key for key in keys if key not in set(dst.get_dynamic_partitions(PARTITIONS))]
            if new:
                dst.add_dynamic_partitions(PARTITIONS, new)
            for state in src.all_instigator_state():
                if dst.get_instigator_state(state.instigator_origin_id, state.selector_id) is None:
                    dst.add_instigator_state(state)
            return runs, events


# --- Label Studio -------------------------------------------------------------------------------------------------
# Django's own bookkeeping, rebuilt by the target's migrations; API tokens are made by a signal as each user is
# loaded, so they are set to the copied keys afterwards (_copy_tokens)
LABELSTUDIO_EXCLUDED = ("contenttypes", "auth.permission", "admin.logentry", "sessions", "django_rq", "authtoken")


def _manage(settings: Settings, env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    from loopml.labelstudio_server import ensure_credentials, labelstudio_bin, labelstudio_env

    env = labelstudio_env(settings, ensure_credentials(settings))
    for key in ("DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT"):
        env.pop(key, None)
    # no account made from the environment: the copied one (with its token) is the account
    for key in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        env.pop(key, None)
    env.update(env_extra)
    python = labelstudio_bin().with_name("python")
    manage = subprocess.run(
        [str(python), "-c", "import label_studio, os; print(os.path.dirname(label_studio.__file__))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return subprocess.run(
        [str(python), os.path.join(manage, "manage.py"), *args],
        env={**env, "DJANGO_SETTINGS_MODULE": "core.settings.label_studio"},
        capture_output=True,
        text=True,
        cwd=manage,
    )


def copy_labelstudio(settings: Settings, target: Stores) -> int:
    """``dumpdata`` of Label Studio's SQLite database, ``migrate`` + ``loaddata`` into the PostgreSQL one."""
    if not any(settings.labelstudio_data_dir.glob("*.sqlite3")):
        return 0
    with tempfile.TemporaryDirectory() as folder:
        dump = Path(folder) / "labelstudio.json"
        dumped = _manage(
            settings,
            {},
            "dumpdata",
            "--natural-foreign",
            "--natural-primary",
            *[arg for app in LABELSTUDIO_EXCLUDED for arg in ("-e", app)],
            "-o",
            str(dump),
        )
        if dumped.returncode != 0:
            raise MigrationError(f"Label Studio's dumpdata failed: {dumped.stderr[-2000:]}")
        objects = len(json.loads(dump.read_text() or "[]"))
        pg = target.labelstudio_env()
        migrated = _manage(settings, pg, "migrate", "--no-input")
        if migrated.returncode != 0:
            raise MigrationError(f"Label Studio's migrations on PostgreSQL failed: {migrated.stderr[-2000:]}")
        loaded = _manage(settings, pg, "loaddata", str(dump))
        if loaded.returncode != 0:
            raise MigrationError(f"Label Studio's loaddata into PostgreSQL failed: {loaded.stderr[-2000:]}")
        _reset_sequences(target)
        _copy_tokens(next(settings.labelstudio_data_dir.glob("*.sqlite3")), target)
        return objects


def _copy_tokens(source: Path, target: Stores) -> None:
    """Each user's API token (the key LoopML and other clients use) as it was, matched by e-mail."""
    import sqlite3

    assert target.labelstudio_url is not None
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as read:
        tokens = read.execute(
            "SELECT t.key, u.email, t.created FROM authtoken_token t JOIN htx_user u ON u.id = t.user_id"
        ).fetchall()
    engine = create_engine(target.labelstudio_url, poolclass=NullPool)
    with engine.begin() as write:
        for key, email, created in tokens:
            user = write.execute(text("SELECT id FROM htx_user WHERE email = :e"), {"e": email}).scalar()
            if user is None:
                continue
            write.execute(text("DELETE FROM authtoken_token WHERE user_id = :u OR key = :k"), {"u": user, "k": key})
            write.execute(
                text("INSERT INTO authtoken_token (key, user_id, created) VALUES (:k, :u, :c)"),
                {"k": key, "u": user, "c": created},
            )
    engine.dispose()


def _reset_sequences(target: Stores) -> None:
    """Move every id sequence of Label Studio's database past the ids loaded (loaddata writes explicit ids)."""
    assert target.labelstudio_url is not None
    engine = create_engine(target.labelstudio_url, poolclass=NullPool)
    with engine.begin() as connection:
        owned = connection.execute(
            text(
                "SELECT s.relname, t.relname, a.attname FROM pg_class s "
                "JOIN pg_depend d ON d.objid = s.oid JOIN pg_class t ON d.refobjid = t.oid "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid WHERE s.relkind = 'S'"
            )
        ).all()
        for sequence, table, column in owned:
            connection.execute(
                text(f'SELECT setval(\'"{sequence}"\', GREATEST((SELECT MAX("{column}") FROM "{table}"), 1))')
            )
    engine.dispose()
