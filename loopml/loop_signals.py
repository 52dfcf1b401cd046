"""What the annotation sensor reads from Label Studio: a cheap signature of a project's annotation state."""

from __future__ import annotations

from typing import Protocol


class AnnotationSource(Protocol):
    def latest_task_update(self, project_id: int) -> str | None: ...

    def has_annotations(self, project_id: int) -> bool: ...


def annotation_signature(source: AnnotationSource, project_id: int) -> str | None:
    """The newest task ``updated_at``: Label Studio bumps it on every annotation, edit, skip and deletion.

    ``None`` while the project has no annotated task (nothing to train on yet).
    """
    if not source.has_annotations(project_id):
        return None
    return source.latest_task_update(project_id)
