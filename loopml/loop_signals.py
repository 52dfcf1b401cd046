"""What the annotation sensor reads from Label Studio: a cheap signature of a project's annotation state."""

from __future__ import annotations

from typing import Protocol


class AnnotationSource(Protocol):
    def task_fingerprint(self, project_id: int) -> tuple[str | None, int]: ...

    def has_annotations(self, project_id: int) -> bool: ...


def annotation_signature(source: AnnotationSource, project_id: int) -> str | None:
    """Newest task ``updated_at`` and task count: Label Studio bumps ``updated_at`` on every annotation,
    edit, skip and deletion, and the count changes when tasks are added or deleted.

    ``None`` while the project has no annotated task (nothing to train on yet).
    """
    if not source.has_annotations(project_id):
        return None
    latest, count = source.task_fingerprint(project_id)
    return f"{latest}|{count}"


LABELS_MARK = "|labels="


def training_signature(annotations: str | None, labels: list[str]) -> str | None:
    """What a training run depends on: the annotation signature and the function's label set (added or
    removed with ``loopml functions add-label``/``remove-label`` or in Label Studio). ``None`` while there is
    nothing to train on."""
    return None if annotations is None else f"{annotations}{LABELS_MARK}{','.join(labels)}"


def labels_changed(previous: str | None, current: str) -> bool:
    """Whether ``current`` differs from ``previous`` (both from :func:`training_signature`) in the label set."""
    if previous is None:
        return False
    return previous.partition(LABELS_MARK)[2] != current.partition(LABELS_MARK)[2]
