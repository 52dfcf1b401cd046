"""Dagster's SQLite storage without costs it pays on every sensor tick and every run.

On the embedded default (SQLite), pieces of Dagster's storage repeat work whose answer cannot change while a
process runs, or pay for durability a development default does not need. Each costs tens of milliseconds on a
small CPU, on the path from a saved annotation to a new version:

- **The migration head.** Every time an instance is opened (each sensor tick opens one from its instance
  reference, each run opens one) each storage compares its database's Alembic revision with the newest
  migration Dagster ships, and finds that newest one by loading every migration script from disk. The scripts
  are part of the installed Dagster, so the head is read once per process here; the database's own revision is
  still read every time.
- **A new run's event-log shard.** Dagster's SQLite event log keeps one database file per run. Creating it runs
  the schema's DDL and stamps the Alembic revision: about 50 ms, paid by the daemon when the sensor creates a
  run. Here the first shard of the process is made that way into a template; later shards are copies of it
  (a fraction of a millisecond), put in place with ``os.link`` so that a shard another process created first
  is never overwritten (then Dagster's own path runs, as before).
- **Closing the last connection.** See :class:`OpenDatabases`: one idle connection per database spares each
  of Dagster's many short connections a WAL checkpoint, and commits skip the fsync (``synchronous=NORMAL``).

:func:`install` applies them; the daemon, the code server and the run worker (and each forked run) call it at
start. Anything unexpected falls back to Dagster's own code.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster._core.storage.event_log.sqlite.sqlite_event_log as sqlite_event_log
import dagster._core.storage.runs.sqlite.sqlite_run_storage as sqlite_run_storage
import dagster._core.storage.schedules.sqlite.sqlite_schedule_storage as sqlite_schedule_storage
import dagster._core.storage.sql as dagster_sql
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

# Modules that imported ``check_alembic_revision`` by name: each gets the memoized one.
_REVISION_USERS = (dagster_sql, sqlite_event_log, sqlite_run_storage, sqlite_schedule_storage)
_INSTALLED = "loopml_speedup"


def memoized_check_alembic_revision(original: Callable[..., Any]) -> Callable[..., Any]:
    """``check_alembic_revision`` that reads the database's revision every time and the scripts' head once per
    script location."""
    heads: dict[str, str | None] = {}
    lock = threading.Lock()

    def check_alembic_revision(alembic_config: Any, conn: Any) -> tuple[str | None, str | None]:
        location = alembic_config.get_main_option("script_location")
        if location is None:
            return original(alembic_config, conn)
        with lock:
            if location not in heads:
                heads[location] = ScriptDirectory.from_config(alembic_config).as_revision_number("head")
            head = heads[location]
        return MigrationContext.configure(conn).get_current_revision(), head

    setattr(check_alembic_revision, _INSTALLED, True)
    return check_alembic_revision


def memoize_alembic_heads() -> None:
    """Install :func:`memoized_check_alembic_revision` in Dagster's SQLite storages (idempotent)."""
    original = dagster_sql.check_alembic_revision
    if getattr(original, _INSTALLED, False):
        return
    patched = memoized_check_alembic_revision(original)
    for module in _REVISION_USERS:
        if getattr(module, "check_alembic_revision", None) is original:
            module.check_alembic_revision = patched  # type: ignore[attr-defined]


class ShardTemplate:
    """An empty, stamped run shard made once by Dagster's own ``_initdb``, copied for every new run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: Path | None = None

    def path(self, make: Callable[[str], None]) -> Path:
        """The template file, made on first use by ``make(database_path)``."""
        with self._lock:
            if self._path is None or not self._path.exists():
                path = Path(tempfile.mkdtemp(prefix="loopml-shard-")) / "template.sqlite"
                make(str(path))
                with sqlite3.connect(path) as conn:  # fold the WAL into the file: the copy is the whole database
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._path = path
            return self._path

    def copy_to(self, target: str, make: Callable[[str], None]) -> bool:
        """Put a copy of the template at ``target``; ``False`` when ``target`` appeared meanwhile."""
        staging = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
        shutil.copyfile(self.path(make), staging)
        try:
            os.link(staging, target)  # never replaces a shard another process made first
        except FileExistsError:
            return False
        finally:
            os.unlink(staging)
        return True


def template_run_shards() -> None:
    """New run shards of :class:`SqliteEventLogStorage` are copied from a :class:`ShardTemplate` (idempotent)."""
    original = SqliteEventLogStorage._initdb
    if getattr(original, _INSTALLED, False):
        return
    template = ShardTemplate()

    def make(path: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
        try:
            original(None, engine)  # type: ignore[arg-type] - _initdb does not use its storage
        finally:
            engine.dispose()

    def _initdb(self: SqliteEventLogStorage, engine: Any, for_index_shard: bool = False) -> None:
        target = engine.url.database
        if not for_index_shard and target and not os.path.exists(target):
            try:
                if template.copy_to(target, make):
                    return
            except (OSError, sqlite3.Error):
                pass  # Dagster's own path below
        original(self, engine, for_index_shard)

    setattr(_initdb, _INSTALLED, True)
    SqliteEventLogStorage._initdb = _initdb  # type: ignore[method-assign]


class OpenDatabases:
    """Dagster's SQLite databases without a checkpoint on every close and an fsync on every commit.

    Dagster opens a new SQLite connection for nearly every read and write and closes it at once. A database in
    WAL mode whose last connection closes is checkpointed and its WAL deleted, with fsyncs: about 1.5 ms of a
    1.8 ms write on this kind of machine, paid tens of times per sensor tick and over a hundred times per run.
    Here each database file under ``root`` (the Dagster home) that a connection of this process opens in WAL
    mode is kept open by one idle connection (the ``limit`` most recent files), so closes are not the last; and
    every connection to such a file commits with ``synchronous=NORMAL``, which in WAL mode is as safe from
    corruption as the default and may lose only the last commits on a power cut (not on a crash).
    """

    def __init__(self, root: Path, limit: int = 32) -> None:
        self.root = root.resolve()
        self.limit = limit
        self._lock = threading.Lock()
        self._open: dict[str, sqlite3.Connection] = {}

    def on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        """SQLAlchemy's pool ``connect`` event."""
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        try:
            rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
            path = next((row[2] for row in rows if row[1] == "main"), "")
            if not path or not Path(path).resolve().is_relative_to(self.root):
                return
            if str(dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                return  # a database being created: later connections find it in WAL mode
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            self._keep(path)
        except sqlite3.Error:
            return  # Dagster's defaults then

    def _keep(self, path: str) -> None:
        with self._lock:
            if path in self._open:
                self._open[path] = self._open.pop(path)  # most recent last
                return
            keeper = sqlite3.connect(path, check_same_thread=False, timeout=30)
            keeper.execute("PRAGMA schema_version").fetchone()  # a read maps the WAL index: now it counts as open
            self._open[path] = keeper
            while len(self._open) > self.limit:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()

    def kept(self) -> list[str]:
        with self._lock:
            return list(self._open)


_open_databases: OpenDatabases | None = None


def keep_databases_open(root: Path | None = None) -> OpenDatabases | None:
    """Install :class:`OpenDatabases` for Dagster's home (``root`` or ``$DAGSTER_HOME``) in this process
    (idempotent; nothing without a Dagster home). Never before a fork: a child must not inherit open SQLite
    connections, so the run worker calls it in each forked run."""
    global _open_databases
    if _open_databases is not None:
        return _open_databases
    home = root or (Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else None)
    if home is None:
        return None
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    _open_databases = OpenDatabases(home)
    event.listen(Pool, "connect", _open_databases.on_connect)
    return _open_databases


def install(*, open_databases: bool = True) -> None:
    """The speed-ups, in this process (``open_databases=False`` in a process that forks runs); with PostgreSQL
    storage, its connections kept open (``pipelines/postgres_pool.py``)."""
    from pipelines.postgres_pool import install as pool_postgres_connections

    memoize_alembic_heads()
    template_run_shards()
    pool_postgres_connections()
    if open_databases:
        keep_databases_open()
