"""Invocation rows kept on local disk while the platform database cannot take them.

When the invocation log's database (PostgreSQL) is unreachable, the serving process still answers from the versions
it has loaded; each answered call is appended to a spool file under ``LOOPML_HOME/spool`` (flushed and fsynced
before the caller gets its answer, as a database commit would be) and written to the database once it answers
again, duplicates ignored. Each process appends to a file of its own; a file is drained by the process that wrote
it, or by any process once its writer is gone (a serving process killed during an outage leaves its calls for the
next one).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from loopml.services import pid_alive

PREFIX = "invocations-"
DRAINING = ".draining"


def encode_row(row: dict[str, Any]) -> str:
    """One JSON line for an invocation row (bytes as base64, datetimes as ISO 8601)."""
    out = dict(row)
    if isinstance(out.get("embedding"), bytes | bytearray):
        out["embedding"] = {"b64": base64.b64encode(out["embedding"]).decode("ascii")}
    if isinstance(out.get("created_at"), datetime):
        out["created_at"] = {"iso": out["created_at"].isoformat()}
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def decode_row(line: str) -> dict[str, Any]:
    row = json.loads(line)
    if isinstance(row.get("embedding"), dict):
        row["embedding"] = base64.b64decode(row["embedding"]["b64"])
    if isinstance(row.get("created_at"), dict):
        row["created_at"] = datetime.fromisoformat(row["created_at"]["iso"])
    return row


class Spool:
    """This process's spool file in ``folder`` and the draining of every spool file there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._file: Any = None
        self._path: Path | None = None
        self._pending = self._others_left()

    @property
    def pending(self) -> bool:
        """Whether spooled rows may be waiting (this process's, or another's found at start or after a drain)."""
        return self._pending

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` durably (written, flushed and fsynced before this returns)."""
        with self._lock:
            if self._file is None:
                self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._path = self.folder / f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}.jsonl"
                fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._file = os.fdopen(fd, "a", encoding="utf-8")
            self._file.write("".join(encode_row(row) + "\n" for row in rows))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._pending = True

    def _close_own(self) -> Path | None:
        with self._lock:
            if self._file is None:
                return None
            self._file.close()
            path, self._file, self._path = self._path, None, None
            return path

    def _claimable(self) -> Iterator[Path]:
        """Spool files no live process writes to: this process's closed one, and those of processes gone."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob(f"{PREFIX}*")):
            if path == self._path:
                continue
            name = path.name
            if DRAINING in name:  # claimed by a drainer: free again once that drainer is gone
                owner = int(name.rsplit(DRAINING, 1)[1].lstrip("-") or 0)
                if owner == os.getpid() or not pid_alive(owner):
                    yield path
                continue
            writer = int(name.removeprefix(PREFIX).split("-", 1)[0])
            if writer == os.getpid() or not pid_alive(writer):
                yield path

    def _others_left(self) -> bool:
        return any(True for _ in self._claimable())

    def drain(self, write: Callable[[list[dict[str, Any]]], None], batch_rows: int = 1000) -> int:
        """Write every claimable spooled row with ``write`` (which must ignore rows already stored) and remove the
        files it emptied; returns the rows written. A failing ``write`` leaves the rest claimed by this process,
        for its next drain."""
        self._close_own()
        written = 0
        for path in list(self._claimable()):
            claimed = path
            if DRAINING not in path.name:
                claimed = path.with_name(f"{path.name}{DRAINING}-{os.getpid()}")
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:  # another process claimed it first
                    continue
            with claimed.open(encoding="utf-8") as spooled:
                rows = [decode_row(line) for line in spooled if line.endswith("\n")]  # a torn last line: not acked
            for start in range(0, len(rows), batch_rows):
                write(rows[start : start + batch_rows])
            written += len(rows)
            claimed.unlink()
        with self._lock:
            self._pending = self._file is not None or self._others_left()
        return written
