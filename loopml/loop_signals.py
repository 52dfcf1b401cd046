"""What the annotation sensor reads from Label Studio: a cheap signature of a project's annotation state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol


class AnnotationSource(Protocol):
    def task_fingerprint(self, project_id: int) -> tuple[str | None, int]: ...

    def has_annotations(self, project_id: int) -> bool: ...


def annotation_signature(source: AnnotationSource, project_id: int, previous: str | None = None) -> str | None:
    """Newest task ``updated_at`` and task count: Label Studio bumps ``updated_at`` on every annotation,
    edit, skip and deletion, and the count changes when tasks are added or deleted.

    ``None`` while the project has no annotated task (nothing to train on yet). ``previous`` is the signature last
    acted on (it had annotations then): while the fingerprint still equals it, nothing changed and one call to
    Label Studio answers; only a changed project is asked whether it has annotations at all.
    """
    latest, count = source.task_fingerprint(project_id)
    signature = f"{latest}|{count}"
    if previous is not None and signature == previous:
        return signature
    if not source.has_annotations(project_id):
        return None
    return signature


LABELS_MARK = "|labels="


def training_signature(annotations: str | None, labels: list[str]) -> str | None:
    """What a training run depends on: the annotation signature and the function's label set (added or
    removed with ``loopml functions add-label``/``remove-label`` or in Label Studio). ``None`` while there is
    nothing to train on."""
    return None if annotations is None else f"{annotations}{LABELS_MARK}{','.join(labels)}"


def annotation_part(signature: str | None) -> str | None:
    """The annotation signature inside a :func:`training_signature` (``None`` for ``None``)."""
    return None if signature is None else signature.partition(LABELS_MARK)[0]


def labels_changed(previous: str | None, current: str) -> bool:
    """Whether ``current`` differs from ``previous`` (both from :func:`training_signature`) in the label set."""
    if previous is None:
        return False
    return previous.partition(LABELS_MARK)[2] != current.partition(LABELS_MARK)[2]


# --- webhook signals ---------------------------------------------------------------------------------------------
# Label Studio calls the serving API's webhook route on every annotation change; the route touches one small file
# per function, and the annotation sensor, ticking every second, reads only these files' times until one moves
# (then it asks Label Studio at once) or the poll interval passes (the fallback when no webhook reaches it).

SIGNALS_DIR = "signals"


def signal_path(run_dir: Path, function: str) -> Path:
    return run_dir / SIGNALS_DIR / f"annotations-{function}"


def mark_annotations_changed(run_dir: Path, function: str) -> None:
    """Record that Label Studio reported an annotation change of ``function`` (called by the webhook route)."""
    path = signal_path(run_dir, function)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.6f}")


def annotation_signals(run_dir: Path) -> dict[str, float]:
    """``{function: time of its latest webhook signal}`` (no file: never signalled)."""
    folder = run_dir / SIGNALS_DIR
    if not folder.is_dir():
        return {}
    signals: dict[str, float] = {}
    for path in folder.glob("annotations-*"):
        try:
            signals[path.name.removeprefix("annotations-")] = float(path.read_text() or 0)
        except (OSError, ValueError):
            continue  # being written: the next tick reads it
    return signals
