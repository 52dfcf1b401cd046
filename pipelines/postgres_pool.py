"""Dagster's PostgreSQL storage, keeping its connections open.

``dagster-postgres`` opens its run, event-log and schedule storage with SQLAlchemy's ``NullPool``: every storage
call connects anew, and PostgreSQL starts a backend process for every connection (several milliseconds on a small
machine, more under load). A training run makes hundreds of storage calls (each event is one), a sensor tick
dozens: measured on the loop with PostgreSQL stores, more than a second per turn went to connecting.

:func:`install` makes those engines keep their connections (``QueuePool``: one kept, more opened while threads
need them; checked with a ping before use, so a restarted server costs a reconnect, not an error; recycled
hourly) and close them when the instance is disposed (the schedule storage included, which Dagster's instance
does not dispose: with ``NullPool`` there was nothing to close). A process forked after that (a run forked from a
warm worker) drops the parent's connections without touching them and opens its own. Dagster's webserver keeps
its own settings (``optimize_for_webserver``).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

POOL_SIZE = 1  # connections kept per storage engine (a process has three: runs, events, schedules)
MAX_OVERFLOW = 8  # more while several threads (the daemon's sensors) use one storage at once
RECYCLE_SECONDS = 3600

_engines: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False


def pooled(create_pg_engine: Callable[..., Any]) -> Callable[..., Any]:
    """``create_pg_engine`` with a connection pool wherever dagster-postgres asked for ``NullPool``."""
    from sqlalchemy.pool import NullPool

    def create_pooled_engine(postgres_url: str, token_provider: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("poolclass") is NullPool:
            del kwargs["poolclass"]
            kwargs.update(
                pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, pool_pre_ping=True, pool_recycle=RECYCLE_SECONDS
            )
        engine = create_pg_engine(postgres_url, token_provider, **kwargs)
        _engines.add(engine)
        return engine

    create_pooled_engine.pooled = True  # type: ignore[attr-defined]
    return create_pooled_engine


def closing_pool(dispose: Callable[[Any], None]) -> Callable[[Any], None]:
    """A storage's ``dispose`` that also closes its pooled connections (with ``NullPool`` there were none to
    close, so dagster-postgres does not): an instance closed is a connection given back to the server."""
    if getattr(dispose, "closes_pool", False):
        return dispose

    def dispose_and_close(self: Any) -> None:
        dispose(self)
        engine = getattr(self, "_engine", None)
        if engine is not None and engine in _engines:
            engine.dispose()

    dispose_and_close.closes_pool = True  # type: ignore[attr-defined]
    return dispose_and_close


def disposing_schedules(dispose: Callable[[Any], None]) -> Callable[[Any], None]:
    """An instance's ``dispose`` that also disposes its schedule storage (Dagster's disposes runs and events only)."""
    if getattr(dispose, "closes_pool", False):
        return dispose

    def dispose_all(self: Any) -> None:
        dispose(self)
        schedules = getattr(self, "_schedule_storage", None)
        if schedules is not None and getattr(type(schedules).dispose, "closes_pool", False):
            schedules.dispose()

    dispose_all.closes_pool = True  # type: ignore[attr-defined]
    return dispose_all


def _forget_parent_connections() -> None:
    """In a forked child: the parent's pooled connections stay the parent's (not closed, not used)."""
    for engine in list(_engines):
        engine.dispose(close=False)


def install() -> None:
    """Pool the connections of every dagster-postgres storage created in this process from now on."""
    global _installed
    if _installed:
        return
    try:
        import dagster_postgres.event_log.event_log as event_log
        import dagster_postgres.run_storage.run_storage as run_storage
        import dagster_postgres.schedule_storage.schedule_storage as schedule_storage
        from dagster._core.instance.methods.storage_methods import StorageMethods
    except ImportError:  # dagster-postgres is not installed: nothing to pool
        return
    for module in (run_storage, event_log, schedule_storage):
        current = module.create_pg_engine
        if not getattr(current, "pooled", False):
            module.create_pg_engine = pooled(current)  # type: ignore[attr-defined]
    for storage in (
        run_storage.PostgresRunStorage,
        event_log.PostgresEventLogStorage,
        schedule_storage.PostgresScheduleStorage,
    ):
        storage.dispose = closing_pool(storage.dispose)  # type: ignore[method-assign]
    StorageMethods.dispose = disposing_schedules(StorageMethods.dispose)  # type: ignore[method-assign]
    os.register_at_fork(after_in_child=_forget_parent_connections)
    _installed = True
