"""The Dagster SQLite storage speed-ups: the same databases and answers as Dagster's own code, made faster."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest


def _schema(path: Path) -> tuple[list, list, list]:
    with sqlite3.connect(path) as conn:
        return (
            sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()),
            conn.execute("SELECT version_num FROM alembic_version").fetchall(),
            conn.execute("PRAGMA journal_mode").fetchall(),
        )


@pytest.fixture
def restore_dagster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the patches after the test (monkeypatch restores what it saw)."""
    import dagster._core.storage.event_log.sqlite.sqlite_event_log as event_log
    import dagster._core.storage.runs.sqlite.sqlite_run_storage as run_storage
    import dagster._core.storage.schedules.sqlite.sqlite_schedule_storage as schedule_storage
    import dagster._core.storage.sql as sql

    for module in (sql, event_log, run_storage, schedule_storage):
        monkeypatch.setattr(module, "check_alembic_revision", module.check_alembic_revision)
    monkeypatch.setattr(event_log.SqliteEventLogStorage, "_initdb", event_log.SqliteEventLogStorage._initdb)


def test_new_run_shards_are_the_databases_dagster_makes(tmp_path: Path, restore_dagster: None) -> None:
    """A run shard copied from the template has Dagster's schema, migration stamp and WAL mode, stores and reads
    events, and a shard that already exists is left as it is."""
    from dagster import DagsterEvent, DagsterEventType, EventLogEntry
    from dagster._core.events import EngineEventData
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from pipelines.storage_speedups import install

    stock = SqliteEventLogStorage(str(tmp_path / "stock"))
    with stock.run_connection("a"):
        pass
    install()
    install()  # idempotent
    fast = SqliteEventLogStorage(str(tmp_path / "fast"))
    run_ids = [str(uuid.uuid4()) for _ in range(3)]
    for run_id in run_ids:
        with fast.run_connection(run_id):
            pass
        assert _schema(tmp_path / "fast" / f"{run_id}.db") == _schema(tmp_path / "stock" / "a.db")
    assert not list((tmp_path / "fast").glob("*.tmp"))

    event = EventLogEntry(
        error_info=None,
        level="debug",
        user_message="",
        run_id=run_ids[0],
        timestamp=1.0,
        dagster_event=DagsterEvent(
            DagsterEventType.ENGINE_EVENT.value, "job", event_specific_data=EngineEventData(), message="hello"
        ),
    )
    fast.store_event(event)
    assert [e.dagster_event.message for e in fast.get_logs_for_run(run_ids[0])] == ["hello"]

    existing = tmp_path / "fast" / "existing.db"
    with SqliteEventLogStorage(str(tmp_path / "fast")).run_connection("existing"):
        pass
    before = existing.stat().st_mtime_ns, existing.stat().st_size
    with SqliteEventLogStorage(str(tmp_path / "fast")).run_connection("existing"):
        pass
    assert (existing.stat().st_mtime_ns, existing.stat().st_size) == before


def test_the_memoized_revision_check_answers_as_dagster_does(tmp_path: Path, restore_dagster: None) -> None:
    """The database's revision is read every time (a fresh database says None), the scripts' head once."""
    import dagster._core.storage.runs.sqlite.sqlite_run_storage as run_storage_module
    import sqlalchemy as sa
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
    from dagster._core.storage.sql import check_alembic_revision, get_alembic_config

    from pipelines.storage_speedups import memoized_check_alembic_revision

    storage = SqliteRunStorage.from_local(str(tmp_path / "runs"))
    config = get_alembic_config(run_storage_module.__file__)
    fast = memoized_check_alembic_revision(check_alembic_revision)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'runs' / 'runs.db'}")
    blank = sa.create_engine(f"sqlite:///{tmp_path / 'blank.db'}")
    with engine.connect() as conn, blank.connect() as empty:
        expected = check_alembic_revision(config, conn)
        assert expected[0] is not None and expected[0] == expected[1]
        assert fast(config, conn) == expected
        assert fast(config, conn) == expected  # from memory now
        assert fast(config, empty) == (None, expected[1])
    assert storage.get_runs() == []


def test_dagster_databases_stay_open_and_commit_without_fsync(tmp_path: Path) -> None:
    """Connections to WAL databases under the Dagster home run with synchronous=NORMAL and one idle connection
    keeps each file open (the most recent ``limit`` files); other databases keep SQLite's defaults."""
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.pool import NullPool

    from pipelines.storage_speedups import OpenDatabases

    home, elsewhere = tmp_path / "dagster", tmp_path / "other"
    home.mkdir()
    elsewhere.mkdir()
    databases = OpenDatabases(home, limit=2)

    def engine(path: Path) -> sa.Engine:
        made = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)
        event.listen(made, "connect", databases.on_connect)
        with made.begin() as conn:  # what Dagster's _initdb does: a table, then WAL mode
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            conn.execute(sa.text("PRAGMA journal_mode=WAL"))
        return made

    def synchronous(made: sa.Engine) -> int:
        with made.connect() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            conn.commit()
            return int(conn.execute(sa.text("PRAGMA synchronous")).scalar())

    first = engine(home / "runs.db")
    assert synchronous(first) == 1  # NORMAL
    assert databases.kept() == [str((home / "runs.db").resolve())]
    assert (home / "runs.db-wal").exists()  # the close was not the last: no checkpoint, the WAL stays
    outside = engine(elsewhere / "platform.db")
    assert synchronous(outside) == 2  # FULL, SQLite's default
    assert str((elsewhere / "platform.db").resolve()) not in databases.kept()
    for name in ("a.db", "b.db"):
        synchronous(engine(home / name))
    assert [Path(p).name for p in databases.kept()] == ["a.db", "b.db"]  # runs.db, the oldest, was let go
    with first.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1
