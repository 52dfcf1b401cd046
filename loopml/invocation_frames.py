"""Load a function's invocation log as one polars frame and one embedding matrix, fast.

Monitoring (review sampling, drift reports) reads every recent invocation of a function at once: up to
millions of rows. :func:`load_invocations` does that with one SQLAlchemy Core query fetched in chunks as
raw driver values (no ORM objects, no per-row JSON, datetime or bytes conversion), and turns each chunk
into columns right away:

- embeddings (float16 bytes) are joined and decoded with one ``np.frombuffer`` per chunk into a
  preallocated float32 matrix;
- scores (JSON ``{version tag: [score per label]}``) are decoded by polars, only for the versions needed
  (the answering versions, ``primary`` and ``canary``); margins come from numpy on the decoded scores;
- label names (JSON ``{version tag: [label names]}``) are fixed per version (a version is one trained
  head), so they are not fetched per row: one indexed look-up per version needed reads them;
- SQLite's datetime text is parsed by polars in one go (PostgreSQL hands back datetimes already).

The query is portable SQL (SQLite now, PostgreSQL later): ``CAST(... AS TEXT)`` for the JSON columns, the
``(function, created_at)`` index for the filter and the order, a server-side cursor where the driver has
one. A helper thread fetches the next chunk while the caller converts the last one.

On SQLite, 1,000,000 invocations with 384-d embeddings take about 9 s of CPU on two cores (see
``bench/monitoring.py``). Memory is the float32 embedding matrix (1.5 GB for 1M x 384) plus the frame
(about 0.25 GB) plus one chunk in flight.
"""

from __future__ import annotations

import json
import mmap
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import Connection, Text, cast, func, select, type_coerce
from sqlalchemy.types import NullType

from loopml.config import Settings
from loopml.db import FeedbackRow, InvocationRow, as_utc, get_engine

__all__ = ["FRAME_SCHEMA", "InvocationFrame", "load_invocations", "load_serving_invocations"]

FRAME_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
    "input_text": pl.String,
    "label": pl.String,
    "confidence": pl.Float64,
    "margin": pl.Float64,
    "primary_label": pl.String,
    "canary_label": pl.String,
    "flagged": pl.Boolean,
    "true_label": pl.String,
    "answered_by": pl.String,
    "latency_ms": pl.Float64,
}

_LABEL_LOOKUP_ROWS = 20  # SQLite's LIKE ignores ASCII case: look past rows of a tag differing in case only
CHUNK_ROWS = 10_000  # small enough for the allocator to reuse chunk buffers (fewer page faults)
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%6f"  # how SQLAlchemy stores DateTime on SQLite
_ANY_DATETIME = "%Y-%m-%d %H:%M:%S%.f"


@dataclass
class InvocationFrame:
    """A function's invocations, newest first.

    ``frame`` has the columns of :data:`FRAME_SCHEMA`:

    - ``label``, ``confidence``, ``answered_by``: the answer returned and the version that gave it;
    - ``margin``: top-1 minus top-2 score of the answering version (its top-1 score when it has one label);
    - ``primary_label`` / ``canary_label``: the argmax label of the ``primary`` / ``canary`` version's
      scores where that version scored the invocation, else null;
    - ``flagged``: some feedback flagged the answer as wrong; ``true_label``: the most recent true label
      given in feedback (null when none).

    ``embeddings`` is float32 ``[n, d]``, row-aligned with ``frame``. Invocations logged without an
    embedding (or with one of another dimension than the newest one) are kept: their row in
    ``embeddings`` is zeros and ``has_embedding`` is False there. ``d`` is 0 when no row has an embedding.
    """

    frame: pl.DataFrame
    embeddings: np.ndarray
    has_embedding: np.ndarray
    primary: str | None = None  # the version whose labels fill ``primary_label``

    def __len__(self) -> int:
        return self.frame.height

    @property
    def missing_embeddings(self) -> int:
        return int(len(self.has_embedding) - np.count_nonzero(self.has_embedding))


def load_invocations(
    database_url: str,
    function: str,
    *,
    since: datetime | None = None,
    limit: int | None = None,
    primary: str | None = None,
    canary: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> InvocationFrame:
    """The invocations of ``function`` created at or after ``since`` (all when None), newest first, at most
    the newest ``limit``, with their feedback. ``primary`` / ``canary`` name the versions whose argmax
    labels fill ``primary_label`` / ``canary_label``. See :class:`InvocationFrame`."""
    where = [InvocationRow.function == function]
    if since is not None:
        where.append(InvocationRow.created_at >= as_utc(since))
    columns = [
        InvocationRow.id,
        InvocationRow.created_at,
        InvocationRow.input_text,
        InvocationRow.embedding,
        cast(InvocationRow.scores, Text),
        InvocationRow.answered_by,
        InvocationRow.label,
        InvocationRow.confidence,
        InvocationRow.latency_ms,
    ]
    # NullType: raw driver values, no per-row conversion by SQLAlchemy. Ordering by created_at alone lets
    # the (function, created_at) index give the order without a sort step.
    query = (
        select(*(type_coerce(column, NullType()).label(f"c{i}") for i, column in enumerate(columns)))
        .where(*where)
        .order_by(InvocationRow.created_at.desc())
    )
    if limit is not None:
        query = query.limit(limit)

    with get_engine(database_url).connect() as connection:
        expected = int(connection.scalar(select(func.count()).select_from(InvocationRow).where(*where)) or 0)
        if limit is not None:
            expected = min(expected, max(limit, 0))
        if not expected:
            return _empty(primary)
        names = {tag: _version_labels(connection, function, tag) for tag in (primary, canary) if tag}
        builder = _Builder(expected, primary, canary, names)
        for part in _prefetched(_chunks(connection, query, chunk_rows)):
            builder.add(part)
        feedback = _feedback(connection, function)
    return builder.finish(feedback)


def load_serving_invocations(
    settings: Settings, function: str, *, since: datetime | None = None, limit: int | None = None
) -> InvocationFrame:
    """:func:`load_invocations` with the function's serving primary and canary as the versions whose labels
    fill ``primary_label`` / ``canary_label``."""
    from loopml.deployments import DeploymentStore

    state = DeploymentStore(settings).get(function)
    return load_invocations(
        settings.database_url,
        function,
        since=since,
        limit=limit,
        primary=state.primary_tag if state else None,
        canary=state.canary_tag if state else None,
    )


def _empty(primary: str | None = None) -> InvocationFrame:
    return InvocationFrame(
        pl.DataFrame(schema=FRAME_SCHEMA), np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool), primary
    )


def _chunks(connection: Connection, query: Any, chunk_rows: int) -> Iterator[Sequence[Any]]:
    """The query's rows in chunks of raw driver values."""
    if connection.dialect.name == "sqlite":
        # Plain tuples straight from the DB-API cursor, no Row objects in between (SQLite's driver steps
        # through the result as it is fetched anyway).
        result = connection.execute(query)
        try:
            while part := result.cursor.fetchmany(chunk_rows):
                yield part
        finally:
            result.close()
        return
    # Elsewhere a server-side cursor, so the driver does not buffer the whole result first.
    result = connection.execution_options(yield_per=chunk_rows).execute(query)
    try:
        yield from result.partitions(chunk_rows)
    finally:
        result.close()


def _prefetched(chunks: Iterator[Sequence[Any]], depth: int = 4) -> Iterator[Sequence[Any]]:
    """``chunks``, fetched by a helper thread while the caller converts the previous ones.

    The driver holds the GIL while it builds row tuples, but polars and numpy release it while converting:
    on two or more cores the two overlap. The helper thread is the only user of the connection until the
    iterator is exhausted (or closed, which stops the helper at its next chunk).
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fetch() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        handoff.put(("chunk", chunk), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            handoff.put(("end", None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            handoff.put(("error", error))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    helper = threading.Thread(target=fetch, name="invocation-fetch", daemon=True)
    helper.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while helper.is_alive():  # unblock a helper waiting to hand over a chunk, then wait for it
            try:
                handoff.get_nowait()
            except queue.Empty:
                helper.join(0.05)


def _version_labels(connection: Connection, function: str, tag: str) -> list[str] | None:
    """The label names of version ``tag`` as logged by its newest invocation (None when it scored none).

    A version is one trained head, so its label names never change: an indexed look-up from the newest
    call down to the first one that names the version (a text match, then checked on the parsed JSON).
    """
    escaped = json.dumps(tag).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    labels_text = cast(InvocationRow.labels, Text)
    query = (
        select(type_coerce(labels_text, NullType()))
        .where(InvocationRow.function == function, labels_text.like(f"%{escaped}%", escape="\\"))
        .order_by(InvocationRow.created_at.desc())
        .limit(_LABEL_LOOKUP_ROWS)
    )
    for text in connection.execute(query).scalars():
        try:
            names = json.loads(text).get(tag) if text else None
        except (ValueError, AttributeError):
            continue
        if isinstance(names, list):
            return [str(x) for x in names]
    return None


# --- building the frame chunk by chunk ---------------------------------------------------------------
class _Builder:
    def __init__(
        self, expected: int, primary: str | None, canary: str | None, names: dict[str, list[str] | None]
    ) -> None:
        self.capacity = expected
        self.primary = primary
        self.canary = canary
        self.names = names
        self.rows = 0
        self.dim: int | None = None
        self.embeddings: np.ndarray | None = None
        self.has_embedding = np.zeros(expected, dtype=bool)
        self.frames: list[pl.DataFrame] = []

    def add(self, rows: Sequence[Any]) -> None:
        if not rows:
            return
        ids, created, texts, blobs, scores, answered_by, label, confidence, latency = zip(*rows, strict=True)
        self._embeddings(blobs)
        frame = pl.DataFrame(
            {
                "id": pl.Series(ids, dtype=pl.String),
                "created_at": _datetimes(created),
                "input_text": pl.Series(texts, dtype=pl.String),
                "label": pl.Series(label, dtype=pl.String),
                "confidence": pl.Series(confidence, dtype=pl.Float64),
                "answered_by": pl.Series(answered_by, dtype=pl.String),
                "latency_ms": pl.Series(latency, dtype=pl.Float64),
                "_scores": pl.Series(scores, dtype=pl.String),
            }
        )
        self.frames.append(self._scores(frame))
        self.rows += len(rows)

    def _embeddings(self, blobs: tuple[Any, ...]) -> None:
        n, start = len(blobs), self.rows
        if self.dim is None:  # the newest embedding's dimension (rows come newest first)
            first = next((b for b in blobs if b is not None and len(b)), None)
            if first is not None:
                self.dim = len(first) // 2
        self._reserve(start + n)
        if self.dim is None or self.embeddings is None:
            return
        width = 2 * self.dim
        try:
            regular = set(map(len, blobs)) == {width}
        except TypeError:  # a missing embedding (None)
            regular = False
        target = self.embeddings[start : start + n]
        if regular:
            target[:] = np.frombuffer(b"".join(blobs), dtype="<f2").reshape(n, self.dim)
            self.has_embedding[start : start + n] = True
            return
        keep = np.fromiter((b is not None and len(b) == width for b in blobs), dtype=bool, count=n)
        target[~keep] = 0.0
        if keep.any():
            joined = b"".join(b for b, k in zip(blobs, keep, strict=True) if k)
            target[keep] = np.frombuffer(joined, dtype="<f2").reshape(-1, self.dim)
        self.has_embedding[start : start + n] = keep

    def _reserve(self, needed: int) -> None:
        """Room for ``needed`` rows (rows logged after the count was taken arrive as extra rows)."""
        if needed > self.capacity:
            self.capacity = max(needed, int(self.capacity * 1.25) + 1)
        if self.dim is not None:
            if self.embeddings is None:
                self.embeddings = _zeros(self.capacity, self.dim)
            elif len(self.embeddings) < self.capacity:
                grown = _zeros(self.capacity, self.dim)
                grown[: self.rows] = self.embeddings[: self.rows]
                self.embeddings = grown
        if len(self.has_embedding) < self.capacity:
            mask = np.zeros(self.capacity, dtype=bool)
            mask[: self.rows] = self.has_embedding[: self.rows]
            self.has_embedding = mask

    def _scores(self, frame: pl.DataFrame) -> pl.DataFrame:
        """margin, primary_label and canary_label from the scores JSON, decoding only the versions needed."""
        answering = [t for t in frame["answered_by"].unique().to_list() if t is not None]
        tags = sorted({*answering, *(t for t in (self.primary, self.canary) if t)})
        fields = {t: f"_s{i}" for i, t in enumerate(tags)}
        if tags:
            decoded = frame["_scores"].str.json_decode(pl.Struct({t: pl.List(pl.Float64) for t in tags}))
            frame = frame.with_columns(decoded.struct.unnest().rename(fields))
        return frame.with_columns(
            _margins(frame, {t: fields[t] for t in answering}),
            self._argmax_label(self.primary, fields).alias("primary_label"),
            self._argmax_label(self.canary, fields).alias("canary_label"),
        ).select([c for c in FRAME_SCHEMA if c not in ("flagged", "true_label")])

    def _argmax_label(self, tag: str | None, fields: dict[str, str]) -> pl.Expr:
        names = self.names.get(tag) if tag else None
        if not tag or not names:
            return pl.lit(None, dtype=pl.String)
        index = pl.col(fields[tag]).list.arg_max()
        return index.replace_strict(list(range(len(names))), names, default=None, return_dtype=pl.String)

    def finish(self, feedback: pl.DataFrame) -> InvocationFrame:
        if not self.frames:
            return _empty(self.primary)
        frame = pl.concat(self.frames, rechunk=True)
        self.frames = []
        frame = frame.join(feedback, on="id", how="left", maintain_order="left")
        frame = frame.with_columns(pl.col("flagged").fill_null(False)).select(FRAME_SCHEMA.keys())
        if self.embeddings is None:
            embeddings = np.zeros((self.rows, 0), dtype=np.float32)
        else:
            embeddings = self.embeddings if len(self.embeddings) == self.rows else self.embeddings[: self.rows]
        return InvocationFrame(
            frame.cast(FRAME_SCHEMA), embeddings, self.has_embedding[: self.rows].copy(), self.primary
        )


def _zeros(rows: int, dim: int) -> np.ndarray:
    """A zeroed float32 ``[rows, dim]`` matrix. Large ones are mapped with their pages populated up front
    (Linux): faulting in 1.5 GB page by page costs more than filling it with embeddings."""
    size = rows * dim * 4
    if size >= 64 << 20 and hasattr(mmap, "MAP_POPULATE"):
        try:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
            return np.frombuffer(mmap.mmap(-1, size, flags=flags), dtype=np.float32).reshape(rows, dim)
        except OSError:
            pass
    return np.zeros((rows, dim), dtype=np.float32)


def _margins(frame: pl.DataFrame, answering: dict[str, str]) -> pl.Series:
    """Top-1 minus top-2 score of each row's answering version (its top-1 score when it has one label)."""
    margin = np.full(frame.height, np.nan)
    answered_by = frame["answered_by"]
    for tag, field in answering.items():
        mask = (answered_by == tag) & frame[field].is_not_null()
        scores = frame[field].filter(mask)
        if not len(scores):
            continue
        rows = mask.to_numpy()
        lengths = scores.list.len()
        width = int(lengths.min() or 0)  # type: ignore[arg-type]
        if width and width == lengths.max():  # the usual case: numpy on a [rows, labels] matrix
            values = scores.cast(pl.Array(pl.Float64, width)).to_numpy()
            if width == 1:
                margin[rows] = values[:, 0]
            else:
                top = np.partition(values, width - 2, axis=1)
                margin[rows] = top[:, width - 1] - top[:, width - 2]
        else:  # ragged lists: sort each one
            ordered = scores.list.sort(descending=True)
            top1 = ordered.list.get(0, null_on_oob=True)
            top2 = ordered.list.get(1, null_on_oob=True).fill_null(0.0)
            margin[rows] = (top1 - top2).fill_null(np.nan).to_numpy()
    return pl.Series("margin", margin, dtype=pl.Float64).fill_nan(None)


def _feedback(connection: Connection, function: str) -> pl.DataFrame:
    """Per invocation id: ``flagged`` by any feedback, and the most recent ``true_label`` given."""
    query = select(
        *(
            type_coerce(column, NullType())
            for column in (
                FeedbackRow.invocation_id,
                FeedbackRow.flagged,
                FeedbackRow.true_label,
                FeedbackRow.created_at,
                FeedbackRow.id,
            )
        )
    ).where(FeedbackRow.function == function)
    rows = connection.execute(query).all()
    if not rows:
        return pl.DataFrame(schema={"id": pl.String, "flagged": pl.Boolean, "true_label": pl.String})
    ids, flagged, true_label, created, row_id = zip(*rows, strict=True)
    feedback = pl.DataFrame(
        {
            "id": pl.Series(ids, dtype=pl.String),
            "flagged": pl.Series([bool(x) for x in flagged], dtype=pl.Boolean),
            "true_label": pl.Series(true_label, dtype=pl.String),
            "at": _datetimes(created),
            "row": pl.Series(row_id, dtype=pl.Int64),
        }
    )
    return (
        feedback.sort("at", "row").group_by("id").agg(pl.col("flagged").any(), pl.col("true_label").drop_nulls().last())
    )


def _datetimes(values: Sequence[Any]) -> pl.Series:
    """Datetimes as the driver hands them back (SQLite: text in UTC; PostgreSQL: datetimes), in UTC."""
    sample = next((v for v in values if v is not None), None)
    if not isinstance(sample, str):
        return pl.Series([None if v is None else as_utc(v) for v in values], dtype=pl.Datetime("us", "UTC"))
    text = pl.Series(values, dtype=pl.String)
    parsed = text.str.to_datetime(_SQLITE_DATETIME, time_unit="us", time_zone="UTC", strict=False)
    if parsed.null_count() > text.null_count():  # no fraction of a second, or another layout
        parsed = text.str.to_datetime(_ANY_DATETIME, time_unit="us", time_zone="UTC", strict=False)
    if parsed.null_count() > text.null_count():  # yet another layout: row by row
        parsed = pl.Series(
            [None if v is None else as_utc(datetime.fromisoformat(v)) for v in values],
            dtype=pl.Datetime("us", "UTC"),
        )
    return parsed
