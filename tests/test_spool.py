"""The spool of calls answered while the database was down, and keys checked while it is down."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from loopml.apikeys import ApiKeyVerifier, KeyStoreUnavailable, create_key
from loopml.config import Settings
from loopml.spool import Spool, decode_row, encode_row


def _row(n: int) -> dict[str, Any]:
    return {
        "id": f"id-{n}",
        "function": "tone",
        "created_at": datetime(2026, 12, 6, 3, 0, n, tzinfo=UTC),
        "input_text": f"text {n} \u00e9\U0001f600",
        "embedding": bytes([n, 0, 255]),
        "scores": {"tone:v1": [0.25, 0.75]},
        "labels": {"tone:v1": ["a", "b"]},
        "answered_by": "tone:v1",
        "label": "b",
        "confidence": 0.75,
        "latency_ms": 2.5,
        "key_id": None,
        "sticky_key": None,
    }


def test_a_row_survives_the_spool_format() -> None:
    assert decode_row(encode_row(_row(3))) == _row(3)


def test_drain_writes_own_and_orphaned_rows_and_leaves_a_live_writers_file(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    spool = Spool(folder)
    spool.append([_row(1), _row(2)])
    assert spool.pending
    # a file of a process that is gone (a serving process killed during an outage), with a torn last line
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = folder / f"invocations-{dead.pid}-dead.jsonl"
    orphan.write_text(encode_row(_row(3)) + "\n" + encode_row(_row(4))[:20])
    # a file another live process is still appending to
    live = folder / f"invocations-{os.getppid()}-live.jsonl"
    live.write_text(encode_row(_row(5)) + "\n")
    written: list[dict[str, Any]] = []
    assert spool.drain(written.extend) == 3
    assert sorted(r["id"] for r in written) == ["id-1", "id-2", "id-3"]  # the torn, unacknowledged line is not
    assert sorted(p.name for p in folder.iterdir()) == [live.name]


def test_a_failed_drain_keeps_the_rows_for_the_next(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([_row(1)])

    def down(_: list[dict[str, Any]]) -> None:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError):
        spool.drain(down)
    assert spool.pending and len(list((tmp_path / "spool").iterdir())) == 1
    written: list[dict[str, Any]] = []
    assert spool.drain(written.extend) == 1 and [r["id"] for r in written] == ["id-1"]
    assert not spool.pending and list((tmp_path / "spool").iterdir()) == []


def test_a_confirmed_key_keeps_working_while_the_database_is_down(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = ApiKeyVerifier(settings, ttl_s=0.0)
    _, known = create_key(settings, "known")
    _, unseen = create_key(settings, "unseen")
    grant = verifier.verify(known)
    assert grant is not None

    def unreachable(*_: object) -> None:
        raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(verifier, "_lookup", unreachable)
    assert verifier.verify(known) == grant
    with pytest.raises(KeyStoreUnavailable):
        verifier.verify(unseen)
