"""What the annotation sensor reads from Label Studio: a cheap signature of a project's annotation state."""

from __future__ import annotations

from typing import Protocol


class AnnotationSource(Protocol):
    def latest_task_update(self, project_id: int) -> str | None: ...

    def annotated_task_ids(self, project_id: int) -> set[int]: ...


def annotation_signature(source: AnnotationSource, project_id: int) -> str | None:
    """Changes when any task is annotated, edited, skipped or has its annotations deleted.

    ``None`` when the project has no annotated task yet (nothing to train on).
    """
    annotated = source.annotated_task_ids(project_id)
    if not annotated:
        return None
    return f"{source.latest_task_update(project_id)}|{len(annotated)}|{max(annotated)}"
