"""The durable invocation log: every answered call, written with group commit, then acknowledged.

Callers hand records to :meth:`InvocationLog.submit` (or :meth:`submit_many` for one request's items) and
get a future that resolves to the invocation id(s) only after the transaction holding them has committed.
The server returns an answer only after that, so an answer a caller has seen survives ``kill -9`` of the
server.

One writer thread per process commits whatever is waiting as one transaction (up to ``max_batch_rows``
rows): while one batch commits, the next one gathers, so batches grow with the load and an idle log adds
no waiting (``max_wait_ms`` can add a short linger). On SQLite the writer's connection uses
``synchronous=FULL``: each commit is fsynced, so acknowledged rows survive a power loss too, and group
commit pays that fsync once per batch rather than once per row.

Read helpers for later stages: :meth:`InvocationLog.recent` and :meth:`InvocationLog.feedback` (polars
DataFrames), :meth:`InvocationLog.get`, and :meth:`InvocationLog.record_feedback`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import Connection, func, insert, select

from loopml.config import Settings
from loopml.db import FeedbackRow, FunctionRow, InvocationRow, as_utc, get_engine, session_factory, utcnow
from loopml.spool import Spool

__all__ = [
    "FeedbackError",
    "FeedbackResult",
    "InvocationLog",
    "InvocationLogError",
    "InvocationNotFound",
    "InvocationRecord",
    "embedding_from_bytes",
    "embedding_to_bytes",
    "new_invocation_id",
]

logger = logging.getLogger(__name__)


DATABASE_RETRY_SECONDS = 1.0  # while the database is unreachable, calls are spooled and it is tried this often


class DatabaseUnavailable(ConnectionError):
    """The database did not answer; the call goes to the spool."""


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached (as opposed to a row it refused)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(error, DatabaseUnavailable | OperationalError | InterfaceError | ConnectionError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def _insert_new(connection: Connection) -> Any:
    """An insert of invocation rows that skips ids already stored (a drain retried after a partial write)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(InvocationRow).on_conflict_do_nothing(index_elements=["id"])
    return (
        insert(InvocationRow).prefix_with("OR IGNORE") if connection.dialect.name == "sqlite" else insert(InvocationRow)
    )


class InvocationLogError(RuntimeError):
    """The log could not record an invocation (backlog full, database unavailable, log closed)."""


class InvocationNotFound(LookupError):
    """No invocation has this id."""


class FeedbackForbidden(PermissionError):
    """Feedback from a key that is not allowed on the invocation's function."""


class FeedbackError(ValueError):
    """Feedback that cannot be recorded as given; the message says what is allowed."""


def new_invocation_id() -> str:
    """A random UUID (36 characters)."""
    return str(uuid.uuid4())


def embedding_to_bytes(vector: np.ndarray) -> bytes:
    """A vector as float16 little-endian bytes (the stored form: 2 bytes per dimension)."""
    return np.asarray(vector, dtype="<f2").tobytes()


def embedding_from_bytes(data: bytes | None) -> np.ndarray | None:
    """The float32 vector stored by :func:`embedding_to_bytes`."""
    if data is None:
        return None
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


@dataclass
class InvocationRecord:
    """One answered input: what came in, what every scoring version said, who answered and how fast.

    ``scores`` and ``labels`` map each scoring version's tag to its score per label and its label names
    (same order); ``answered_by`` is the tag whose answer was returned.
    """

    function: str
    input_text: str
    embedding: bytes | None
    scores: dict[str, list[float]]
    labels: dict[str, list[str]]
    answered_by: str
    label: str
    confidence: float
    latency_ms: float
    key_id: str | None = None
    sticky_key: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    id: str = field(default_factory=new_invocation_id)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "function": self.function,
            "created_at": self.created_at,
            "input_text": self.input_text,
            "embedding": self.embedding,
            "scores": self.scores,
            "labels": self.labels,
            "answered_by": self.answered_by,
            "label": self.label,
            "confidence": float(self.confidence),
            "latency_ms": float(self.latency_ms),
            "key_id": self.key_id,
            "sticky_key": self.sticky_key,
        }


@dataclass(frozen=True)
class FeedbackResult:
    id: int
    invocation_id: str
    function: str
    flagged: bool
    true_label: str | None
    answered_by: str
    answered_label: str


@dataclass
class _Job:
    records: list[InvocationRecord]
    future: Future[list[str]]


@dataclass
class LogStats:
    """Counters of the writer: rows and batches committed, the largest batch, failed rows."""

    rows: int = 0
    batches: int = 0
    max_batch_rows: int = 0
    failed_rows: int = 0
    spooled_rows: int = 0  # kept on local disk while the database was unreachable (loopml/spool.py)
    drained_rows: int = 0  # of those, written to the database since


class InvocationLog:
    """Group-committed invocation log over the platform database (see the module docstring).

    The writer thread starts on the first submit; a log used only to read starts no thread.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_batch_rows: int = 1000,
        max_wait_ms: float = 0.0,
        max_backlog_rows: int = 100_000,
        durable: bool = True,
    ) -> None:
        self.settings = settings
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_backlog_rows = max_backlog_rows
        self.durable = durable
        self.stats = LogStats()
        self._engine = get_engine(settings.database_url)
        self._sessions = session_factory(settings.database_url)
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        # a database on the network (PostgreSQL) that stops answering: calls are spooled to local disk meanwhile;
        # SQLite is a local file already, so its errors are reported as before
        self._spool = Spool(settings.home / "spool") if self._engine.dialect.name != "sqlite" else None
        self._down_until = 0.0  # while the database is down, it is tried again after this (monotonic)
        if self._spool is not None and self._spool.pending:
            self._ensure_thread()  # calls another process spooled before it ended

    # --- writing --------------------------------------------------------------------------------
    def submit(self, record: InvocationRecord) -> Future[str]:
        """Queue one record; the future gives its id once committed (or raises InvocationLogError)."""
        outer: Future[str] = Future()
        inner = self.submit_many([record])

        def done(fut: Future[list[str]]) -> None:
            error = fut.exception()
            if error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(fut.result()[0])

        inner.add_done_callback(done)
        return outer

    def submit_many(self, records: Sequence[InvocationRecord]) -> Future[list[str]]:
        """Queue records that are committed together; the future gives their ids once committed."""
        future: Future[list[str]] = Future()
        records = list(records)
        if not records:
            future.set_result([])
            return future
        with self._cond:
            if self._closing:
                raise InvocationLogError("the invocation log is closed; restart the serving process")
            if self._queued_rows + len(records) > self.max_backlog_rows:
                raise InvocationLogError(
                    f"the invocation log is {self._queued_rows} rows behind (limit {self.max_backlog_rows}): "
                    "the database is too slow or unavailable; retry shortly"
                )
            self._ensure_thread()
            self._queue.append(_Job(records, future))
            self._queued_rows += len(records)
            self._cond.notify()
        return future

    def log(self, record: InvocationRecord, timeout: float | None = 60.0) -> str:
        """Submit one record and wait until it is committed; returns its id."""
        return self.submit(record).result(timeout)

    def log_many(self, records: Sequence[InvocationRecord], timeout: float | None = 60.0) -> list[str]:
        """Submit records and wait until they are committed; returns their ids in order."""
        return self.submit_many(records).result(timeout)

    async def alog_many(self, records: Sequence[InvocationRecord]) -> list[str]:
        """``log_many`` for asyncio callers (does not block the event loop)."""
        return await asyncio.wrap_future(self.submit_many(records))

    @property
    def backlog(self) -> int:
        """Rows submitted but not yet committed."""
        return self._queued_rows

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything submitted so far is committed (or failed)."""
        with self._cond:
            pending = [job.future for job in self._queue]
        deadline = time.monotonic() + timeout
        for fut in pending:
            try:
                fut.result(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - flush only waits; the submitter sees the error
                pass
        while self._queued_rows and time.monotonic() < deadline:  # the batch in flight
            time.sleep(0.001)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the writer. Later submits raise InvocationLogError."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="loopml-invocation-log", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Job] | None:
        """Wait for work and take up to ``max_batch_rows`` rows of it (whole jobs); None when closing."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                if self._drain_due():
                    return []
                self._cond.wait(0.5)
            if self.max_wait_s > 0 and self._queued_rows < self.max_batch_rows:
                deadline = time.monotonic() + self.max_wait_s
                while self._queued_rows < self.max_batch_rows and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            jobs: list[_Job] = []
            rows = 0
            while self._queue and (not jobs or rows + len(self._queue[0].records) <= self.max_batch_rows):
                job = self._queue.popleft()
                jobs.append(job)
                rows += len(job.records)
            return jobs

    def _run(self) -> None:
        connection: Connection | None = None
        while True:
            jobs = self._take()
            if jobs is None:
                break
            if not jobs:  # idle, with spooled calls and the database due another try
                connection = self._drain(connection)
                continue
            try:
                if self._spool is not None and time.monotonic() < self._down_until:
                    raise DatabaseUnavailable("the database did not answer a moment ago")
                if connection is None:
                    connection = self._connect()
                self._commit(connection, jobs)
                if self._spool is not None and self._spool.pending:
                    connection = self._drain(connection)
            except Exception as error:  # noqa: BLE001 - the writer must survive anything
                connection = self._reset(connection)
                if self._spool is not None and _unreachable(error):
                    self._spool_jobs(jobs, error)
                else:
                    logger.exception("invocation log batch failed; retrying its jobs one by one")
                    self._commit_one_by_one(jobs, error)
            finally:
                with self._cond:
                    self._queued_rows -= sum(len(job.records) for job in jobs)
        if connection is not None:
            connection.close()

    # --- the spool: calls answered while the database was down ---------------------------------------
    def _drain_due(self) -> bool:
        return self._spool is not None and self._spool.pending and time.monotonic() >= self._down_until

    def _spool_jobs(self, jobs: list[_Job], error: Exception) -> None:
        """Keep the jobs' rows on local disk and acknowledge them (the database is unreachable)."""
        assert self._spool is not None
        if time.monotonic() >= self._down_until:
            logger.warning(
                "the invocation log's database is unreachable (%s); spooling calls to %s", error, self._spool.folder
            )
        self._down_until = time.monotonic() + DATABASE_RETRY_SECONDS
        rows = [record.row() for job in jobs for record in job.records]
        try:
            self._spool.append(rows)
        except OSError as spool_error:
            self.stats.failed_rows += len(rows)
            for job in jobs:
                job.future.set_exception(
                    InvocationLogError(
                        f"could not record the invocation ({error}; spool: {spool_error}); retry shortly"
                    )
                )
            return
        self.stats.spooled_rows += len(rows)
        for job in jobs:
            job.future.set_result([record.id for record in job.records])

    def _drain(self, connection: Connection | None) -> Connection | None:
        """Write spooled rows to the database (duplicates ignored); on failure, try again later."""
        assert self._spool is not None
        try:
            if connection is None:
                connection = self._connect()
            live = connection

            def write(rows: list[dict[str, Any]]) -> None:
                live.execute(_insert_new(live), rows)
                live.commit()

            drained = self._spool.drain(write)
            if drained:
                self.stats.drained_rows += drained
                logger.warning("the database answers again: %d spooled calls written to it", drained)
            return connection
        except Exception as error:  # noqa: BLE001 - still down: the rows stay spooled
            self._down_until = time.monotonic() + DATABASE_RETRY_SECONDS
            logger.info("spooled calls not written yet (%s)", error)
            return self._reset(connection)

    def _connect(self) -> Connection:
        connection = self._engine.connect()
        if self.durable and self._engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA synchronous=FULL")
            connection.commit()
        return connection

    @staticmethod
    def _reset(connection: Connection | None) -> None:
        if connection is not None:
            try:
                connection.rollback()
                connection.close()
            except Exception:  # noqa: BLE001
                pass
        return None

    def _commit(self, connection: Connection, jobs: list[_Job]) -> None:
        rows = [record.row() for job in jobs for record in job.records]
        connection.execute(insert(InvocationRow), rows)
        connection.commit()
        self.stats.rows += len(rows)
        self.stats.batches += 1
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(rows))
        for job in jobs:
            job.future.set_result([record.id for record in job.records])

    def _commit_one_by_one(self, jobs: list[_Job], first_error: Exception) -> None:
        for job in jobs:
            connection = None
            try:
                connection = self._connect()
                self._commit(connection, [job])
            except Exception as error:  # noqa: BLE001
                self.stats.failed_rows += len(job.records)
                job.future.set_exception(
                    InvocationLogError(f"could not record the invocation ({error or first_error}); retry shortly")
                )
            finally:
                if connection is not None:
                    connection.close()

    # --- feedback -------------------------------------------------------------------------------
    def record_feedback(
        self,
        invocation_id: str,
        flagged: bool = False,
        true_label: str | None = None,
        comment: str = "",
        key_id: str | None = None,
        allowed_on: Callable[[str], bool] | None = None,
    ) -> FeedbackResult:
        """Record a caller's word on an invocation: flagged as wrong and/or its true label.

        Raises :class:`InvocationNotFound` for an unknown id and :class:`FeedbackError` when neither
        ``flagged`` nor ``true_label`` is given or the label is neither in the answering version's label set
        nor in the function's current one (a label added after that version was trained is a valid answer:
        it is exactly what the model could not say). With ``allowed_on`` (the caller's key scope), an invocation of a
        function it is not allowed on raises :class:`FeedbackForbidden`.
        """
        if not flagged and true_label is None:
            raise FeedbackError("give flagged=true and/or a true_label; empty feedback says nothing")
        with self._sessions.begin() as session:
            row = session.get(InvocationRow, invocation_id)
            if row is None:
                raise InvocationNotFound(
                    f"no invocation {invocation_id!r}: use the invocation_id returned by the invoke call"
                )
            if allowed_on is not None and not allowed_on(row.function):
                raise FeedbackForbidden(
                    f"this API key may not send feedback on invocation {invocation_id!r}: its function is not in "
                    "the key's scope (`loopml keys create --functions`)"
                )
            allowed = list((row.labels or {}).get(row.answered_by) or [])
            function = session.get(FunctionRow, row.function)
            allowed += [label for label in (function.labels if function is not None else []) if label not in allowed]
            if true_label is not None and true_label not in allowed:
                raise FeedbackError(
                    f"true_label {true_label!r} is not a label of {row.answered_by} or of the function "
                    f"{row.function!r} (allowed: {', '.join(allowed)})"
                )
            feedback = FeedbackRow(
                invocation_id=invocation_id,
                function=row.function,
                flagged=bool(flagged),
                true_label=true_label,
                comment=comment or "",
                key_id=key_id,
                created_at=utcnow(),
            )
            session.add(feedback)
            session.flush()
            return FeedbackResult(
                feedback.id,
                invocation_id,
                row.function,
                bool(flagged),
                true_label,
                row.answered_by,
                row.label,
            )

    # --- reading --------------------------------------------------------------------------------
    def get(self, invocation_id: str) -> dict[str, Any] | None:
        """One invocation as a dict (embedding decoded to float32), or None."""
        with self._sessions() as session:
            row = session.get(InvocationRow, invocation_id)
            if row is None:
                return None
            return _row_dict(row)

    def count(self, function: str | None = None) -> int:
        with self._sessions() as session:
            query = select(func.count()).select_from(InvocationRow)
            if function is not None:
                query = query.where(InvocationRow.function == function)
            return int(session.scalar(query) or 0)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are in the log (checked in chunks)."""
        found: set[str] = set()
        ids = list(ids)
        with self._sessions() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found.update(session.scalars(select(InvocationRow.id).where(InvocationRow.id.in_(chunk))))
        return found

    def recent(self, function: str, since: datetime | None = None, limit: int | None = None) -> pl.DataFrame:
        """Invocations of ``function`` created at or after ``since`` (all when None), oldest first.

        Columns: ``id, function, created_at, input_text, embedding`` (list of float32), ``answered_by,
        label, confidence, latency_ms, key_id, sticky_key``, ``scores`` and ``labels`` (JSON text:
        ``{version: [...]}``), ``versions`` (the scoring versions), ``answer_labels`` / ``answer_scores``
        (the answering version's label names and scores, same order).
        """
        query = select(InvocationRow).where(InvocationRow.function == function)
        if since is not None:
            query = query.where(InvocationRow.created_at >= as_utc(since))
        query = query.order_by(InvocationRow.created_at, InvocationRow.id)
        if limit is not None:
            query = query.limit(limit)
        with self._sessions() as session:
            rows = [_row_dict(row, raw_json=True) for row in session.scalars(query)]
        return (
            pl.DataFrame(rows, schema=_INVOCATION_SCHEMA, orient="row")
            if rows
            else pl.DataFrame(schema=_INVOCATION_SCHEMA)
        )

    def feedback(self, function: str, since: datetime | None = None) -> pl.DataFrame:
        """Feedback on ``function`` since ``since``: ``id, invocation_id, function, flagged, true_label,
        comment, created_at, key_id``, oldest first."""
        query = select(FeedbackRow).where(FeedbackRow.function == function)
        if since is not None:
            query = query.where(FeedbackRow.created_at >= as_utc(since))
        with self._sessions() as session:
            rows = [
                {
                    "id": r.id,
                    "invocation_id": r.invocation_id,
                    "function": r.function,
                    "flagged": r.flagged,
                    "true_label": r.true_label,
                    "comment": r.comment,
                    "created_at": as_utc(r.created_at),
                    "key_id": r.key_id,
                }
                for r in session.scalars(query.order_by(FeedbackRow.created_at, FeedbackRow.id))
            ]
        return pl.DataFrame(rows, schema=_FEEDBACK_SCHEMA) if rows else pl.DataFrame(schema=_FEEDBACK_SCHEMA)


_INVOCATION_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "function": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
    "input_text": pl.String,
    "embedding": pl.List(pl.Float32),
    "answered_by": pl.String,
    "label": pl.String,
    "confidence": pl.Float64,
    "latency_ms": pl.Float64,
    "key_id": pl.String,
    "sticky_key": pl.String,
    "scores": pl.String,
    "labels": pl.String,
    "versions": pl.List(pl.String),
    "answer_labels": pl.List(pl.String),
    "answer_scores": pl.List(pl.Float64),
}

_FEEDBACK_SCHEMA: dict[str, Any] = {
    "id": pl.Int64,
    "invocation_id": pl.String,
    "function": pl.String,
    "flagged": pl.Boolean,
    "true_label": pl.String,
    "comment": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
    "key_id": pl.String,
}


def _row_dict(row: InvocationRow, raw_json: bool = False) -> dict[str, Any]:
    scores = dict(row.scores or {})
    labels = dict(row.labels or {})
    embedding = embedding_from_bytes(row.embedding)
    out: dict[str, Any] = {
        "id": row.id,
        "function": row.function,
        "created_at": as_utc(row.created_at),
        "input_text": row.input_text,
        "embedding": embedding.tolist() if (raw_json and embedding is not None) else embedding,
        "answered_by": row.answered_by,
        "label": row.label,
        "confidence": row.confidence,
        "latency_ms": row.latency_ms,
        "key_id": row.key_id,
        "sticky_key": row.sticky_key,
        "scores": json.dumps(scores) if raw_json else scores,
        "labels": json.dumps(labels) if raw_json else labels,
    }
    if raw_json:
        out["versions"] = sorted(scores)
        out["answer_labels"] = list(labels.get(row.answered_by) or [])
        out["answer_scores"] = [float(x) for x in scores.get(row.answered_by) or []]
    return out
