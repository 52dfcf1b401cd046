"""Functions: a name, an input type and a label set, validated before anything is created."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from loopml.config import PROJECT_ROOT, Settings
from loopml.db import FunctionRow, session_factory

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:/+-]*$")
MAX_NAME_LENGTH = 48
MAX_LABEL_LENGTH = 64
MAX_LABELS = 200
INPUT_TYPES = ("text",)
LABEL_CONFIG_TEMPLATES = {"text": "text_classification.xml"}


class FunctionError(ValueError):
    """Invalid function definition or unknown function; the message says what to do."""


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    input_type: str
    labels: list[str]
    encoder_id: str
    labelstudio_project_id: int | None = None
    created_at: datetime | None = None


def validate_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
        raise FunctionError(
            f"invalid function name {name!r}: use 1-{MAX_NAME_LENGTH} lower-case letters, digits and single "
            "hyphens, starting with a letter (for example review-sentiment)"
        )
    return name


def parse_labels(labels: str | list[str]) -> list[str]:
    """Split, strip and check a label set: at least two distinct labels, no odd characters."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    cleaned = [item.strip() for item in items]
    if any(not item for item in cleaned):
        raise FunctionError("empty label in the label set: give labels as a,b,c without empty entries")
    for item in cleaned:
        if len(item) > MAX_LABEL_LENGTH or not LABEL_PATTERN.match(item):
            raise FunctionError(
                f"invalid label {item!r}: labels start with a letter or digit and use letters, digits, "
                f"spaces and _ . : / + - (at most {MAX_LABEL_LENGTH} characters)"
            )
    duplicates = sorted({item for item in cleaned if cleaned.count(item) > 1})
    if duplicates:
        raise FunctionError(f"duplicate labels {duplicates}: each label must appear once")
    if len(cleaned) < 2:
        raise FunctionError("a function needs at least two labels (for example --labels positive,negative)")
    if len(cleaned) > MAX_LABELS:
        raise FunctionError(f"too many labels ({len(cleaned)}); at most {MAX_LABELS}")
    return cleaned


def validate_input_type(input_type: str) -> str:
    if input_type not in INPUT_TYPES:
        raise FunctionError(f"unknown input type {input_type!r}; supported: {', '.join(INPUT_TYPES)}")
    return input_type


def render_label_config(input_type: str, labels: list[str]) -> str:
    """The Label Studio label config for a function, from the template in label_config/."""
    from xml.sax.saxutils import quoteattr

    template = (PROJECT_ROOT / "label_config" / LABEL_CONFIG_TEMPLATES[input_type]).read_text()
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return template.replace("{choices}", choices)


def labels_from_label_config(label_config: str) -> list[str]:
    """The choices of the `label` control in a Label Studio label config, in order."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(label_config)
    for choices in root.iter("Choices"):
        if choices.get("name") == "label":
            return [choice.get("value", "") for choice in choices.iter("Choice")]
    raise FunctionError("the label config has no <Choices name=\"label\"> control")


def _to_spec(row: FunctionRow) -> FunctionSpec:
    return FunctionSpec(
        name=row.name,
        input_type=row.input_type,
        labels=list(row.labels),
        encoder_id=row.encoder_id,
        labelstudio_project_id=row.labelstudio_project_id,
        created_at=row.created_at,
    )


class FunctionRegistry:
    """Functions as stored in the platform database."""

    def __init__(self, settings: Settings) -> None:
        self._sessions = session_factory(settings.database_url)

    def add(self, spec: FunctionSpec) -> FunctionSpec:
        with self._sessions.begin() as session:
            if session.get(FunctionRow, spec.name) is not None:
                raise FunctionError(f"function {spec.name!r} already exists; pick another name")
            session.add(
                FunctionRow(
                    name=spec.name,
                    input_type=spec.input_type,
                    labels=spec.labels,
                    encoder_id=spec.encoder_id,
                    labelstudio_project_id=spec.labelstudio_project_id,
                )
            )
        return self.get(spec.name)

    def get(self, name: str) -> FunctionSpec:
        with self._sessions() as session:
            row = session.get(FunctionRow, name)
            if row is None:
                known = ", ".join(self.names()) or "none yet"
                raise FunctionError(
                    f"unknown function {name!r} (known: {known}); create it with `loopml functions create`"
                )
            return _to_spec(row)

    def list(self) -> list[FunctionSpec]:
        with self._sessions() as session:
            return [_to_spec(row) for row in session.scalars(select(FunctionRow).order_by(FunctionRow.name))]

    def names(self) -> list[str]:
        return [spec.name for spec in self.list()]

    def set_labels(self, name: str, labels: list[str]) -> None:
        with self._sessions.begin() as session:
            row = session.get(FunctionRow, name)
            if row is None:
                raise FunctionError(f"unknown function {name!r}")
            row.labels = list(labels)


def create_function(
    settings: Settings, name: str, input_type: str, labels: str | list[str], encoder_id: str | None = None
) -> int:
    """Validate, create the Label Studio project, register the function and its Dagster partition.

    ``encoder_id`` is one of :func:`loopml.encoders.list_encoders` (default: the default text encoder).
    """
    from loopml.dagster_api import add_function_partition
    from loopml.encoders import DEFAULT_TEXT_ENCODER, list_encoders
    from loopml.labelstudio import LabelStudioClient

    validate_name(name)
    validate_input_type(input_type)
    label_set = parse_labels(labels)
    encoder_id = encoder_id or DEFAULT_TEXT_ENCODER
    if encoder_id not in list_encoders():
        raise FunctionError(f"unknown encoder {encoder_id!r}; known encoders: {', '.join(list_encoders())}")
    registry = FunctionRegistry(settings)
    if name in registry.names():
        raise FunctionError(f"function {name!r} already exists; pick another name")
    client = LabelStudioClient.from_settings(settings)
    client.ensure_reachable()
    project_id = client.create_project(
        title=name,
        label_config=render_label_config(input_type, label_set),
        description=f"LoopML function {name}: {input_type} -> {', '.join(label_set)}",
    )
    registry.add(FunctionSpec(name, input_type, label_set, encoder_id, project_id))
    add_function_partition(settings.dagster_url, name)
    return project_id
