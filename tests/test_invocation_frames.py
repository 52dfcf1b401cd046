"""The fast invocation-log loader: columns, order, margins, primary/canary labels, feedback, limit and since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from sqlalchemy import insert

from loopml.config import Settings
from loopml.db import InvocationRow, get_engine
from loopml.invocation_frames import FRAME_SCHEMA, InvocationFrame, _Builder, load_invocations
from loopml.invocation_log import InvocationLog, InvocationRecord, embedding_to_bytes

FUNCTION = "topic"
PRIMARY, CANARY, OLD = f"{FUNCTION}:v2", f"{FUNCTION}:v3", f"{FUNCTION}:v1"
LABELS = ["business", "sport", "tech"]
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DIM = 16


def vector(i: int) -> np.ndarray:
    v = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def record(i: int, scores: dict[str, list[float]], answered_by: str, **overrides: object) -> InvocationRecord:
    answer = scores[answered_by]
    fields: dict[str, object] = dict(
        function=FUNCTION,
        input_text=f"text number {i}",
        embedding=embedding_to_bytes(vector(i)),
        scores=scores,
        labels={tag: LABELS for tag in scores},
        answered_by=answered_by,
        label=LABELS[int(np.argmax(answer))],
        confidence=max(answer),
        latency_ms=float(i),
        created_at=START + timedelta(minutes=i),
        id=f"00000000-0000-4000-8000-{i:012d}",
    )
    fields.update(overrides)
    return InvocationRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture()
def logged(settings: Settings) -> dict[str, InvocationRecord]:
    """Eight calls of ``topic`` (minute i) and one of another function, with feedback on three of them."""
    both = lambda p, c: {PRIMARY: p, CANARY: c}  # noqa: E731
    records = [
        record(0, {OLD: [0.6, 0.3, 0.1]}, OLD),  # before the canary: only the old primary scored it
        record(1, both([0.7, 0.2, 0.1], [0.2, 0.7, 0.1]), PRIMARY),  # primary and canary disagree
        record(2, both([0.1, 0.8, 0.1], [0.1, 0.6, 0.3]), CANARY),
        record(3, {PRIMARY: [0.2, 0.3, 0.5]}, PRIMARY),  # the canary failed to score it
        record(4, both([0.4, 0.35, 0.25], [0.5, 0.1, 0.4]), PRIMARY, embedding=None),  # no embedding
        record(5, both([0.05, 0.05, 0.9], [0.1, 0.1, 0.8]), CANARY),
        record(6, both([0.34, 0.33, 0.33], [0.3, 0.4, 0.3]), PRIMARY),
        record(7, both([0.9, 0.05, 0.05], [0.8, 0.1, 0.1]), PRIMARY),
        record(8, both([0.9, 0.05, 0.05], [0.8, 0.1, 0.1]), PRIMARY, function="other"),
    ]
    log = InvocationLog(settings)
    log.log_many(records)
    log.record_feedback(records[1].id, flagged=True)
    log.record_feedback(records[1].id, true_label="tech")
    log.record_feedback(records[1].id, true_label="sport")  # the latest true label wins
    log.record_feedback(records[2].id, true_label="sport")  # agrees with the answer, not flagged
    log.record_feedback(records[5].id, flagged=True, true_label="business")
    log.close()
    return {r.id: r for r in records}


def test_frame_has_the_documented_columns_newest_first_with_feedback(
    settings: Settings, logged: dict[str, InvocationRecord]
) -> None:
    loaded = load_invocations(settings.database_url, FUNCTION, primary=PRIMARY, canary=CANARY)
    frame = loaded.frame
    assert frame.schema == pl.Schema(FRAME_SCHEMA) and loaded.primary == PRIMARY
    assert frame.height == len(loaded) == 8  # the other function's call is not there
    assert frame["id"].to_list() == [f"00000000-0000-4000-8000-{i:012d}" for i in range(7, -1, -1)]
    assert frame["created_at"].to_list() == [START + timedelta(minutes=i) for i in range(7, -1, -1)]
    assert frame["input_text"][0] == "text number 7"
    assert frame["latency_ms"].to_list() == [float(i) for i in range(7, -1, -1)]
    rows = {row["id"][-2:]: row for row in frame.iter_rows(named=True)}

    assert rows["01"]["answered_by"] == PRIMARY and rows["01"]["label"] == "business"
    assert rows["01"]["primary_label"] == "business" and rows["01"]["canary_label"] == "sport"
    assert rows["01"]["margin"] == pytest.approx(0.5)
    assert rows["02"]["margin"] == pytest.approx(0.3)  # the canary answered: its scores count
    assert rows["03"]["canary_label"] is None and rows["03"]["primary_label"] == "tech"
    assert rows["00"]["primary_label"] is None and rows["00"]["canary_label"] is None
    assert rows["00"]["margin"] == pytest.approx(0.3)  # the old version answered
    assert rows["06"]["margin"] == pytest.approx(0.01)

    assert (rows["01"]["flagged"], rows["01"]["true_label"]) == (True, "sport")
    assert (rows["02"]["flagged"], rows["02"]["true_label"]) == (False, "sport")
    assert (rows["05"]["flagged"], rows["05"]["true_label"]) == (True, "business")
    assert (rows["07"]["flagged"], rows["07"]["true_label"]) == (False, None)


def test_embeddings_are_float32_rows_aligned_and_missing_ones_are_zero_and_flagged(
    settings: Settings, logged: dict[str, InvocationRecord]
) -> None:
    loaded = load_invocations(settings.database_url, FUNCTION, chunk_rows=3)  # several chunks
    assert loaded.embeddings.dtype == np.float32
    assert loaded.embeddings.shape == (8, DIM)
    for row, invocation_id in enumerate(loaded.frame["id"]):
        i = int(invocation_id[-2:])
        if i == 4:
            assert not loaded.has_embedding[row]
            assert not loaded.embeddings[row].any()
        else:
            assert loaded.has_embedding[row]
            np.testing.assert_array_equal(loaded.embeddings[row], vector(i).astype(np.float16).astype(np.float32))
    assert loaded.missing_embeddings == 1
    # without primary and canary, their label columns are null
    assert loaded.frame["primary_label"].null_count() == loaded.frame["canary_label"].null_count() == 8


def test_limit_keeps_the_newest_and_since_filters(settings: Settings, logged: dict[str, InvocationRecord]) -> None:
    url = settings.database_url
    newest = load_invocations(url, FUNCTION, limit=3, primary=PRIMARY)
    assert newest.frame["id"].str.slice(-2).to_list() == ["07", "06", "05"]
    assert newest.embeddings.shape == (3, DIM)
    assert newest.frame["primary_label"].to_list() == ["business", "business", "tech"]

    since = load_invocations(url, FUNCTION, since=START + timedelta(minutes=5))
    assert since.frame["id"].str.slice(-2).to_list() == ["07", "06", "05"]
    plus_two = datetime(2025, 3, 1, 14, 5, tzinfo=timezone(timedelta(hours=2)))  # 12:05 UTC
    assert load_invocations(url, FUNCTION, since=plus_two).frame.height == 3
    assert load_invocations(url, FUNCTION, since=datetime(2025, 3, 1, 12, 5)).frame.height == 3  # naive = UTC

    both = load_invocations(url, FUNCTION, since=START + timedelta(minutes=2), limit=2)
    assert both.frame["id"].str.slice(-2).to_list() == ["07", "06"]


def test_unknown_function_gives_an_empty_frame_with_the_schema(settings: Settings) -> None:
    loaded = load_invocations(settings.database_url, "nobody")
    assert loaded.frame.schema == pl.Schema(FRAME_SCHEMA)
    assert loaded.frame.height == 0
    assert loaded.embeddings.shape == (0, 0)
    assert len(loaded.has_embedding) == 0


def test_rows_written_by_core_inserts_and_without_any_embedding_load(settings: Settings) -> None:
    """Rows inserted in bulk through SQLAlchemy Core (as bench/ and imports do) load the same way; a log
    without embeddings gives a [n, 0] matrix."""
    engine = get_engine(settings.database_url)
    rows = [
        record(i, {PRIMARY: [0.9, 0.1, 0.0]}, PRIMARY, embedding=None, created_at=START + timedelta(seconds=i)).row()
        for i in range(5)
    ]
    with engine.begin() as connection:
        connection.execute(insert(InvocationRow), rows)
    loaded = load_invocations(settings.database_url, FUNCTION, primary=PRIMARY)
    assert loaded.frame.height == 5
    assert loaded.embeddings.shape == (5, 0)
    assert not loaded.has_embedding.any()
    assert loaded.frame["margin"].to_list() == pytest.approx([0.8] * 5)
    assert loaded.frame["primary_label"].to_list() == ["business"] * 5


def test_builder_grows_when_more_rows_arrive_than_were_counted() -> None:
    """Calls logged between the count and the read are kept (the matrix grows)."""
    names = {PRIMARY: LABELS}
    builder = _Builder(2, PRIMARY, None, names)

    def raw(i: int, blob: bytes | None) -> tuple:
        scores = f'{{"{PRIMARY}": [0.1, 0.2, 0.7]}}'
        return (f"id-{i}", f"2025-03-01 12:00:0{i}.000000", "t", blob, scores, PRIMARY, "tech", 0.7, 1.0)

    builder.add([raw(0, None), raw(1, embedding_to_bytes(vector(1)))])
    builder.add([raw(2, embedding_to_bytes(vector(2))), raw(3, b"\x00\x00"), raw(4, embedding_to_bytes(vector(4)))])
    no_feedback = pl.DataFrame(schema={"id": pl.String, "flagged": pl.Boolean, "true_label": pl.String})
    result: InvocationFrame = builder.finish(no_feedback)
    assert result.frame.height == 5 and result.embeddings.shape == (5, DIM)
    assert result.has_embedding.tolist() == [False, True, True, False, True]  # None and a wrong size are missing
    assert not result.embeddings[0].any() and not result.embeddings[3].any()
    np.testing.assert_allclose(result.embeddings[4], vector(4), atol=1e-3)
    assert result.frame["created_at"][2] == datetime(2025, 3, 1, 12, 0, 2, tzinfo=UTC)
    assert result.frame["margin"].to_list() == pytest.approx([0.5] * 5)


def test_each_version_uses_its_own_label_order(settings: Settings) -> None:
    """Label names are looked up per version (here in different orders, and a tag with LIKE wildcards)."""
    old, new = "news_feed:v1", "news_feed:v2"
    records = [
        InvocationRecord(
            "news_feed", "early", None, {old: [0.8, 0.2]}, {old: ["a", "b"]}, old, "a", 0.8, 1.0, created_at=START
        ),
        InvocationRecord(
            "news_feed",
            "late",
            None,
            {old: [0.3, 0.7], new: [0.9, 0.1]},
            {old: ["a", "b"], new: ["b", "a"]},
            new,
            "b",
            0.9,
            1.0,
            created_at=START + timedelta(hours=1),
        ),
    ]
    log = InvocationLog(settings)
    log.log_many(records)
    log.close()
    frame = load_invocations(settings.database_url, "news_feed", primary=old, canary=new).frame
    assert frame["input_text"].to_list() == ["late", "early"]
    assert frame["primary_label"].to_list() == ["b", "a"]
    assert frame["canary_label"].to_list() == ["b", None]
    assert frame["margin"].to_list() == pytest.approx([0.8, 0.6])
    missing = load_invocations(settings.database_url, "news_feed", primary="news_feed:v9").frame
    assert missing["primary_label"].null_count() == 2
