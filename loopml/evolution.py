"""Model evolution: a live function's label set changes (labels added, removed; a rename is both).

A change comes from ``loopml functions add-label/remove-label`` (which also updates the Label Studio label
config) or from someone editing the label config in Label Studio (picked up by the discovery sensor). Each
change is recorded. A new label enters training once it has ``LOOPML_MIN_EXAMPLES_PER_LABEL`` examples; the
annotations of a removed label are excluded from the dataset with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from loopml.config import Settings
from loopml.db import LabelChangeRow, session_factory
from loopml.functions import (
    FunctionError,
    FunctionRegistry,
    labels_from_label_config,
    parse_labels,
    render_label_config,
)
from loopml.labelstudio import LabelStudioClient
from loopml.loop_signals import mark_annotations_changed


@dataclass(frozen=True)
class LabelSetChange:
    function: str
    added: list[str]
    removed: list[str]
    labels: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)

    def describe(self) -> str:
        parts = [f"added {self.added}" if self.added else "", f"removed {self.removed}" if self.removed else ""]
        return f"{self.function}: " + ", ".join(p for p in parts if p) + f"; labels now {self.labels}"


def diff_labels(old: list[str], new: list[str]) -> tuple[list[str], list[str]]:
    """``(added, removed)`` going from ``old`` to ``new`` (order of appearance kept)."""
    return [x for x in new if x not in old], [x for x in old if x not in new]


def apply_label_set(settings: Settings, function: str, labels: list[str], source: str) -> LabelSetChange:
    """Make ``labels`` the function's label set and record what changed (nothing when equal); the annotation
    sensor is signalled, so the retraining run starts within about a second."""
    registry = FunctionRegistry(settings)
    spec = registry.get(function)
    added, removed = diff_labels(spec.labels, labels)
    change = LabelSetChange(function, added, removed, list(labels))
    if not change:
        return change
    if len(labels) < 2:
        raise FunctionError(f"{function} needs at least 2 labels; it would have {labels}")
    registry.set_labels(function, labels)
    with session_factory(settings.database_url).begin() as session:
        session.add_all(
            [LabelChangeRow(function=function, label=x, change="add", source=source) for x in added]
            + [LabelChangeRow(function=function, label=x, change="remove", source=source) for x in removed]
        )
    mark_annotations_changed(settings.run_dir, function)  # the annotation sensor retrains on its next tick
    return change


def removed_labels(settings: Settings, function: str) -> set[str]:
    """Labels the function once had and has no more (their annotations are excluded from training)."""
    current = set(FunctionRegistry(settings).get(function).labels)
    with session_factory(settings.database_url)() as session:
        rows = session.scalars(
            select(LabelChangeRow).where(LabelChangeRow.function == function).order_by(LabelChangeRow.id)
        ).all()
    latest = {row.label: row.change for row in rows}
    return {label for label, change in latest.items() if change == "remove" and label not in current}


def _push_label_config(settings: Settings, function: str, labels: list[str]) -> None:
    spec = FunctionRegistry(settings).get(function)
    if spec.labelstudio_project_id is None:
        raise FunctionError(f"function {function!r} has no Label Studio project")
    client = LabelStudioClient.from_settings(settings)
    client.ensure_reachable()
    client.update_label_config(spec.labelstudio_project_id, render_label_config(spec.input_type, labels))


def add_label(settings: Settings, function: str, label: str) -> LabelSetChange:
    """Add ``label`` to a live function: Label Studio's label config first, then the registry."""
    spec = FunctionRegistry(settings).get(function)
    new = label.strip()
    if new in spec.labels:
        raise FunctionError(f"{function} already has the label {new!r}")
    labels = parse_labels([*spec.labels, new])  # checks the new label's characters, length and the count
    _push_label_config(settings, function, labels)
    return apply_label_set(settings, function, labels, source="cli")


def remove_label(settings: Settings, function: str, label: str) -> LabelSetChange:
    """Remove ``label``: its annotations stay in Label Studio but are excluded from training."""
    spec = FunctionRegistry(settings).get(function)
    if label not in spec.labels:
        raise FunctionError(f"{function} has no label {label!r} (labels: {', '.join(spec.labels)})")
    labels = [x for x in spec.labels if x != label]
    if len(labels) < 2:
        raise FunctionError(f"{function} needs at least 2 labels; add another before removing {label!r}")
    _push_label_config(settings, function, labels)
    return apply_label_set(settings, function, labels, source="cli")


def sync_from_labelstudio(settings: Settings, client: LabelStudioClient, function: str) -> LabelSetChange:
    """Adopt the label set of the function's Label Studio label config if someone edited it there."""
    spec = FunctionRegistry(settings).get(function)
    if spec.labelstudio_project_id is None:
        return LabelSetChange(function, [], [], spec.labels)
    labels = labels_from_label_config(client.get_label_config(spec.labelstudio_project_id))
    if not labels or labels == spec.labels:
        return LabelSetChange(function, [], [], spec.labels)
    return apply_label_set(settings, function, parse_labels(labels), source="labelstudio")
