"""Functions: a name, an input type and a label set, validated before anything is created."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from loopml.config import PROJECT_ROOT, Settings
from loopml.db import FunctionRow, session_factory

if TYPE_CHECKING:
    from loopml.labelstudio import LabelStudioClient, ProjectInfo

_log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:/+-]*$")
MAX_NAME_LENGTH = 48
MAX_LABEL_LENGTH = 64
MAX_LABELS = 200
INPUT_TYPES = ("text", "image")
LABEL_CONFIG_TEMPLATES = {"text": "text_classification.xml", "image": "image_classification.xml"}


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


def input_key(input_type: str) -> str:
    """The key of a function's input in its Label Studio tasks' data (``$text`` / ``$image`` in the label config)."""
    return "image" if input_type == "image" else "text"


def validate_input_type(input_type: str) -> str:
    if input_type not in INPUT_TYPES:
        raise FunctionError(f"unknown input type {input_type!r}; supported: {', '.join(INPUT_TYPES)}")
    return input_type


def render_label_config(input_type: str, labels: list[str]) -> str:
    """The Label Studio label config for a function, from the template in label_config/."""
    from xml.sax.saxutils import quoteattr

    template = (PROJECT_ROOT / "label_config" / LABEL_CONFIG_TEMPLATES[input_type]).read_text()
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    # the placeholder's own line only: the template's comment names it too, and labels copied into a comment
    # would go stale after an edit in Label Studio (and one with "--" would end the comment: invalid XML)
    return template.replace("\n{choices}\n", f"\n{choices}\n")


def labels_from_label_config(label_config: str) -> list[str]:
    """The choices of the `label` control in a Label Studio label config, in order."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(label_config)
    for choices in root.iter("Choices"):
        if choices.get("name") == "label":
            return [choice.get("value", "") for choice in choices.iter("Choice")]
    raise FunctionError('the label config has no <Choices name="label"> control')


def project_marker(name: str) -> str:
    """How the description of a function's Label Studio project starts (with its title, the name, it marks
    the project as LoopML's)."""
    return f"LoopML function {name}:"


def project_description(name: str, input_type: str, labels: list[str]) -> str:
    return f"{project_marker(name)} {input_type} -> {', '.join(labels)}"


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

    def find(self, name: str) -> FunctionSpec | None:
        """The function called ``name``, or ``None``."""
        with self._sessions() as session:
            row = session.get(FunctionRow, name)
            return None if row is None else _to_spec(row)

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

    def set_project(self, name: str, project_id: int) -> None:
        with self._sessions.begin() as session:
            row = session.get(FunctionRow, name)
            if row is None:
                raise FunctionError(f"unknown function {name!r}")
            row.labelstudio_project_id = project_id


def _check_same(existing: FunctionSpec, input_type: str, labels: list[str], encoder_id: str | None) -> None:
    """A FunctionError unless ``existing`` has this input type, label set (in any order) and encoder (if given)."""
    if existing.input_type != input_type or set(existing.labels) != set(labels):
        raise FunctionError(
            f"function {existing.name!r} already exists as {existing.input_type} -> {', '.join(existing.labels)}; "
            "pick another name, or change its labels with `loopml functions add-label` / `remove-label`"
        )
    if encoder_id is not None and encoder_id != existing.encoder_id:
        raise FunctionError(
            f"function {existing.name!r} already exists with encoder {existing.encoder_id}; pick another name"
        )


def _adopt(client: LabelStudioClient, found: ProjectInfo, labels: list[str]) -> int:
    """The id of a project an earlier, interrupted create made, if its labels are ``labels``."""
    there = labels_from_label_config(client.get_label_config(found.project_id))
    if set(there) != set(labels):
        raise FunctionError(
            f"Label Studio project {found.project_id} ({found.title!r}, made by an earlier `loopml functions create`) "
            f"has the labels {', '.join(there)}: create the function with those labels, or delete that project "
            "in Label Studio first"
        )
    return found.project_id


def _ensure_project(
    client: LabelStudioClient,
    name: str,
    input_type: str,
    labels: list[str],
    registered: int | None,
    say: Callable[[str], None],
) -> int:
    """The function's one Label Studio project: the registered one if it exists, else the oldest LoopML project
    of that name (an interrupted create's), else a new one; empty duplicates are deleted."""
    marker = project_marker(name)

    def ours(project: ProjectInfo) -> bool:
        return project.description.startswith(marker)

    keep = registered if registered is not None and client.project_exists(registered) else None
    if registered is not None and keep is None:
        say(f"Label Studio project {registered} of function {name} no longer exists; it gets a new, empty one")
    if keep is None:
        found = [p for p in client.projects_titled(name) if ours(p)]
        if found:
            keep = _adopt(client, found[0], labels)
            say(f"function {name}: adopting Label Studio project {keep}, made by an earlier attempt")
        else:
            created = client.create_project(
                title=name,
                label_config=render_label_config(input_type, labels),
                description=project_description(name, input_type, labels),
            )
            # the oldest, whatever a concurrent create made: every creator of this name keeps the same one
            keep = min([created] + [p.project_id for p in client.projects_titled(name) if ours(p)])
    left = client.remove_duplicate_projects(keep, name, ours)
    if left:
        message = (
            f"function {name} uses Label Studio project {keep}; duplicates "
            f"{', '.join(f'{p.project_id} ({p.task_count} tasks)' for p in left)} have tasks and were kept: "
            "move what you need and delete them in Label Studio"
        )
        _log.warning(message)
        say(message)
    return keep


def create_function(
    settings: Settings,
    name: str,
    input_type: str,
    labels: str | list[str],
    encoder_id: str | None = None,
    *,
    client: LabelStudioClient | None = None,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Validate, create the Label Studio project, register the function and its Dagster partition; returns the
    project id.

    Idempotent: run again with the same name, input type and labels (any order; the encoder defaults to the
    registered one), it finishes what an earlier run left undone and returns the same project id. A function's
    project is recognised by its title (the name) and a description starting "LoopML function <name>:"; an
    unregistered one (a create interrupted after Label Studio made it) is adopted if its labels match. If several
    exist, the registered one, else the oldest, is kept and the others are deleted when they have no tasks (ones
    with tasks are reported through ``echo`` and the log). A registered function whose project was deleted in
    Label Studio gets a new, empty project (the registry then points at it). A different input type, label set
    or encoder is a :class:`FunctionError`. The project's webhook to the serving API is registered (or repaired).

    ``encoder_id`` is one of :func:`loopml.encoders.list_encoders` (default: the default text encoder);
    ``client`` defaults to :meth:`LabelStudioClient.from_settings`; ``echo`` gets a line for each repair.
    """
    from loopml.dagster_api import add_function_partition
    from loopml.encoders import default_encoder, list_encoders
    from loopml.labelstudio import LabelStudioClient

    validate_name(name)
    validate_input_type(input_type)
    label_set = parse_labels(labels)
    if encoder_id is not None and encoder_id not in list_encoders(input_type):
        raise FunctionError(
            f"unknown {input_type} encoder {encoder_id!r}; known {input_type} encoders: "
            f"{', '.join(list_encoders(input_type))}"
        )
    say = echo or _log.info
    registry = FunctionRegistry(settings)
    existing = registry.find(name)
    if existing is not None:
        _check_same(existing, input_type, label_set, encoder_id)
    client = client or LabelStudioClient.from_settings(settings)
    client.ensure_reachable()
    registered = existing.labelstudio_project_id if existing is not None else None
    project_id = _ensure_project(client, name, input_type, label_set, registered, say)
    if existing is None:
        spec = FunctionSpec(name, input_type, label_set, encoder_id or default_encoder(input_type), project_id)
        try:
            registry.add(spec)
        except FunctionError:  # registered meanwhile by a concurrent create
            _check_same(registry.get(name), input_type, label_set, encoder_id)
    elif registered != project_id:
        registry.set_project(name, project_id)
    _register_hook(settings, client, name, project_id, say)
    add_function_partition(settings.dagster_url, name)
    return project_id


def _register_hook(
    settings: Settings, client: LabelStudioClient, name: str, project_id: int, say: Callable[[str], None]
) -> None:
    """Label Studio's webhook on the project (:mod:`loopml.annotation_hooks`): annotation changes reach the
    annotation sensor in about a second. Without it polling finds them, so a failure is only reported."""
    from loopml.annotation_hooks import ensure_hook
    from loopml.labelstudio import LabelStudioError, LabelStudioUnavailable

    try:
        ensure_hook(settings, client, name, project_id)
    except (LabelStudioError, LabelStudioUnavailable) as error:
        say(f"function {name}: Label Studio webhook not registered ({error}); annotations are found by polling")
