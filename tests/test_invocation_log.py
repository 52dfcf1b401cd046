"""The invocation log: group commit, acknowledged only after commit, kill -9 durability, feedback, reads."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from loopml.config import PROJECT_ROOT, Settings
from loopml.db import utcnow
from loopml.functions import FunctionRegistry, FunctionSpec
from loopml.invocation_log import (
    FeedbackError,
    InvocationLog,
    InvocationLogError,
    InvocationNotFound,
    InvocationRecord,
    embedding_from_bytes,
    embedding_to_bytes,
)


def record(i: int, function: str = "review-sentiment", **overrides: object) -> InvocationRecord:
    vector = np.random.default_rng(i).normal(size=384).astype(np.float32)
    fields: dict[str, object] = dict(
        function=function,
        input_text=f"text {i}",
        embedding=embedding_to_bytes(vector / np.linalg.norm(vector)),
        scores={f"{function}:v1": [0.8, 0.2], f"{function}:v2": [0.6, 0.4]},
        labels={f"{function}:v1": ["positive", "negative"], f"{function}:v2": ["positive", "negative"]},
        answered_by=f"{function}:v1",
        label="positive",
        confidence=0.8,
        latency_ms=3.0,
        key_id="k1",
    )
    fields.update(overrides)
    return InvocationRecord(**fields)  # type: ignore[arg-type]


def test_concurrent_submitters_are_group_committed_and_every_acknowledged_id_is_stored(
    settings: Settings,
) -> None:
    log = InvocationLog(settings)
    acknowledged: list[str] = []
    lock = threading.Lock()

    def submitter(worker: int) -> None:
        mine = [log.log(record(worker * 1000 + i)) for i in range(150)]
        with lock:
            acknowledged.extend(mine)

    threads = [threading.Thread(target=submitter, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(acknowledged) == len(set(acknowledged)) == 16 * 150
    assert log.existing_ids(acknowledged) == set(acknowledged)
    assert log.count("review-sentiment") == 16 * 150
    assert log.stats.batches < log.stats.rows  # several rows per commit: group commit happened
    assert log.stats.max_batch_rows > 1
    log.close()


def test_an_id_is_acknowledged_only_after_its_batch_is_committed(settings: Settings) -> None:
    log = InvocationLog(settings)
    log.log(record(0))  # creates the tables and starts the writer
    blocker = sqlite3.connect(settings.home / "loopml.db", timeout=30)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: the writer cannot commit
    try:
        future = log.submit(record(1))
        time.sleep(0.5)
        assert not future.done(), "an id was acknowledged before its row was committed"
    finally:
        blocker.rollback()
        blocker.close()
    invocation_id = future.result(timeout=30)
    assert log.get(invocation_id) is not None
    log.close()


def test_acknowledged_ids_survive_kill_9(settings: Settings, tmp_path: Path) -> None:
    """A child process logs from 8 threads and prints each id once acknowledged; we SIGKILL it mid-stream."""
    script = textwrap.dedent(
        """
        import sys, threading
        from loopml.config import get_settings
        from loopml.invocation_log import InvocationLog, InvocationRecord
        log = InvocationLog(get_settings())
        out_lock = threading.Lock()
        def work(w):
            i = 0
            while True:
                rec = InvocationRecord("f", f"t{w}-{i}", b"\\x00\\x3c" * 384, {"f:v1": [1.0, 0.0]},
                                       {"f:v1": ["a", "b"]}, "f:v1", "a", 1.0, 1.0)
                ident = log.log(rec)
                with out_lock:
                    sys.stdout.write(ident + "\\n"); sys.stdout.flush()
                i += 1
        for w in range(8):
            threading.Thread(target=work, args=(w,), daemon=True).start()
        threading.Event().wait()
        """
    )
    env = {**os.environ, "LOOPML_HOME": str(settings.home), "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    assert child.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 3000 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acknowledged.append(line.strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    acknowledged.extend(line.strip() for line in child.stdout.read().splitlines() if line.strip())
    assert len(acknowledged) >= 3000, "the child stopped early; see its stderr"
    log = InvocationLog(settings)
    missing = set(acknowledged) - log.existing_ids(acknowledged)
    assert not missing, f"{len(missing)} acknowledged invocations were lost"


def test_many_callers_at_once_are_all_logged(settings: Settings) -> None:
    """6,000 submissions at once, as under load: every one is acknowledged with its id and stored (the rate is
    measured by bench/serving.py, not here)."""
    log = InvocationLog(settings)
    log.log(record(0))
    records = [record(i) for i in range(6000)]
    futures = [log.submit(r) for r in records]
    ids = [f.result(timeout=600) for f in futures]
    assert ids == [r.id for r in records]
    assert log.existing_ids(ids) == set(ids)
    log.close()


def test_batch_submissions_keep_order_and_a_bad_job_fails_alone(settings: Settings) -> None:
    log = InvocationLog(settings)
    batch = [record(i) for i in range(5)]
    ids = log.log_many(batch)
    assert ids == [r.id for r in batch]
    duplicate = record(99, id=ids[0])  # violates the primary key
    good = record(100)
    bad_future = log.submit_many([duplicate])
    good_future = log.submit_many([good])
    assert good_future.result(timeout=30) == [good.id]
    with pytest.raises(InvocationLogError, match="retry"):
        bad_future.result(timeout=30)
    assert log.log(record(101))  # the writer survived
    log.close()
    with pytest.raises(InvocationLogError, match="closed"):
        log.submit(record(102))


def test_backlog_limit_refuses_instead_of_growing_without_bound(settings: Settings) -> None:
    log = InvocationLog(settings, max_backlog_rows=10)
    blocker = sqlite3.connect(settings.home / "loopml.db", timeout=30)
    log.log(record(0))
    blocker.execute("BEGIN IMMEDIATE")
    try:
        futures = [log.submit(record(i)) for i in range(1, 11)]
        with pytest.raises(InvocationLogError, match="behind"):
            for i in range(11, 30):
                futures.append(log.submit(record(i)))
    finally:
        blocker.rollback()
        blocker.close()
    assert all(f.result(timeout=30) for f in futures)
    log.close()


def test_embeddings_round_trip_as_float16() -> None:
    vector = np.random.default_rng(0).normal(size=384).astype(np.float32)
    data = embedding_to_bytes(vector)
    assert len(data) == 384 * 2
    back = embedding_from_bytes(data)
    assert back is not None and back.dtype == np.float32
    np.testing.assert_allclose(back, vector, rtol=1e-3, atol=1e-3)
    assert embedding_from_bytes(None) is None


def test_feedback_is_validated_against_the_answering_versions_and_the_functions_labels(settings: Settings) -> None:
    log = InvocationLog(settings)
    invocation_id = log.log(
        record(
            1,
            labels={"review-sentiment:v1": ["positive", "negative"], "review-sentiment:v2": ["a", "b", "c"]},
        )
    )
    result = log.record_feedback(invocation_id, flagged=True, true_label="negative", key_id="k1")
    assert result.function == "review-sentiment" and result.answered_by == "review-sentiment:v1"
    assert log.record_feedback(invocation_id, flagged=True).true_label is None
    with pytest.raises(FeedbackError, match="allowed: positive, negative"):
        log.record_feedback(invocation_id, true_label="c")  # a label of the canary, not of v1
    with pytest.raises(FeedbackError, match="flagged"):
        log.record_feedback(invocation_id)
    with pytest.raises(InvocationNotFound, match="invocation_id"):
        log.record_feedback("no-such-id", flagged=True)
    # a label added to the function after v1 was trained is a valid true label
    with pytest.raises(FeedbackError, match="allowed: positive, negative"):
        log.record_feedback(invocation_id, true_label="neutral")
    labels = ["positive", "negative", "neutral"]
    FunctionRegistry(settings).add(FunctionSpec("review-sentiment", "text", labels, "minilm"))
    assert log.record_feedback(invocation_id, true_label="neutral").true_label == "neutral"
    with pytest.raises(FeedbackError, match="allowed: positive, negative, neutral"):
        log.record_feedback(invocation_id, true_label="c")
    frame = log.feedback("review-sentiment")
    assert frame.height == 3 and frame["true_label"].to_list() == ["negative", None, "neutral"]
    assert frame["flagged"].to_list() == [True, True, False]
    log.close()


def test_recent_returns_a_polars_frame_filtered_by_function_and_time(settings: Settings) -> None:
    log = InvocationLog(settings)
    old = log.log(record(1, created_at=utcnow() - timedelta(hours=2)))
    new = log.log_many([record(2), record(3)])
    log.log(record(4, function="news-topic"))
    frame = log.recent("review-sentiment", since=utcnow() - timedelta(hours=1))
    assert isinstance(frame, pl.DataFrame)
    assert frame["id"].to_list() == new
    assert old in log.recent("review-sentiment")["id"].to_list()
    row = frame.row(0, named=True)
    assert row["answered_by"] == "review-sentiment:v1" and row["label"] == "positive"
    assert row["versions"] == ["review-sentiment:v1", "review-sentiment:v2"]
    assert row["answer_labels"] == ["positive", "negative"] and row["answer_scores"] == [0.8, 0.2]
    assert len(row["embedding"]) == 384
    assert frame.schema["created_at"] == pl.Datetime("us", "UTC")
    empty = log.recent("nothing-here")
    assert empty.height == 0 and "embedding" in empty.columns
    got = log.get(new[0])
    assert got is not None and got["embedding"].shape == (384,) and got["scores"]["review-sentiment:v2"] == [0.6, 0.4]
    log.close()
