"""Adding data to a function from files: ``loopml items add NAME PATH...``.

A text function takes:

- ``.txt``: one item per non-blank line;
- ``.csv``: a header row with a ``text`` column and, optionally, a ``label`` column;
- ``.jsonl``: one JSON object per line with ``"text"`` and, optionally, ``"label"``.

An image function takes image files (PNG, JPEG, WebP, GIF) and folders of them (searched recursively); with
``folder_labels`` an image in a folder named after one of the function's labels is imported with that label.
Images go into their tasks as ``data:`` URIs, so Label Studio shows them with no file storage to configure.

Each item becomes a Label Studio task of the function's project; an item with a label is imported with that
label as its annotation (it trains like any annotation). Everything is read and checked before anything is
imported: a file LoopML cannot read, a blank or oversized text, a label outside the function's label set is an
:class:`ItemsError` naming the file and line, and nothing reaches Label Studio. Texts repeated within the files
are imported once. The import runs in batches with a progress bar, each batch retried safely by the client.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopml.config import Settings
    from loopml.labelstudio import LabelStudioClient

TEXT_SUFFIXES = (".txt", ".csv", ".jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
BATCH = 500  # tasks per import request (each batch is one step of the progress bar) ...
BATCH_BYTES = 16 << 20  # ... or fewer, when their data passes this size (images)


class ItemsError(ValueError):
    """Files that cannot be added as they are; the message names the file and line."""


@dataclass(frozen=True)
class Item:
    text: str
    label: str | None
    where: str  # "file:line", for messages


@dataclass(frozen=True)
class Added:
    imported: int
    labelled: int
    repeated: int  # texts that appeared more than once in the files (imported once)
    project_id: int


def read_items(path: Path, max_bytes: int) -> list[Item]:
    """The items of one file (see the module's docstring for the formats)."""
    if not path.is_file():
        raise ItemsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise ItemsError(f"{path}: a text function takes {', '.join(TEXT_SUFFIXES)} files")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ItemsError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    rows = {".txt": _txt_rows, ".csv": _csv_rows, ".jsonl": _jsonl_rows}[suffix](path, content)
    items = [_item(text, label, f"{path}:{line}", max_bytes) for line, text, label in rows]
    if not items:
        raise ItemsError(f"{path}: no items")
    return items


def _txt_rows(path: Path, content: str) -> Iterable[tuple[int, object, object]]:
    return ((n, line, None) for n, line in enumerate(content.splitlines(), start=1) if line.strip())


def _csv_rows(path: Path, content: str) -> Iterable[tuple[int, object, object]]:
    reader = csv.DictReader(content.splitlines())
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "text" not in columns:
        raise ItemsError(f"{path}: the header has no `text` column (found: {', '.join(columns) or 'none'})")
    reader.fieldnames = columns
    return ((n, row.get("text"), row.get("label")) for n, row in enumerate(reader, start=2))


def _jsonl_rows(path: Path, content: str) -> Iterable[tuple[int, object, object]]:
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ItemsError(f"{path}:{n}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ItemsError(f"{path}:{n}: each line is an object with a `text` field")
        yield n, row.get("text"), row.get("label")


def image_files(path: Path) -> list[Path]:
    """``path`` itself (an image file) or the image files under folder ``path``, in name order."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ItemsError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return found
    if not path.is_file():
        raise ItemsError(f"{path}: no such file or folder")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ItemsError(f"{path}: an image function takes image files ({', '.join(IMAGE_SUFFIXES)}) and folders")
    return [path]


def read_images(path: Path, labels: list[str], folder_labels: bool = False) -> list[Item]:
    """The images of a file or folder as items (``data:`` URIs), each checked to decode within the limits; with
    ``folder_labels`` labelled by their folder's name when it is one of ``labels``."""
    from loopml.images import ImageError, ImageLimits, data_uri, decode_image

    limits = ImageLimits.from_env()
    items = []
    for file in image_files(path):
        data = file.read_bytes()
        try:
            decode_image(data, limits)
        except ImageError as error:
            raise ItemsError(f"{file}: {error}") from None
        label = file.parent.name if folder_labels and file.parent.name in labels else None
        items.append(Item(data_uri(data, limits), label, str(file)))
    return items


def _item(text: object, label: object, where: str, max_bytes: int) -> Item:
    if not isinstance(text, str) or not text.strip():
        raise ItemsError(f"{where}: the text is missing or blank")
    if len(text.encode("utf-8")) > max_bytes:
        raise ItemsError(f"{where}: the text has more than {max_bytes:,} bytes (LOOPML_MAX_TEXT_BYTES)")
    if label is not None and not isinstance(label, str):
        raise ItemsError(f"{where}: the label must be text, not {type(label).__name__}")
    label = label.strip() if label else None
    return Item(text, label or None, where)


def check_labels(items: list[Item], labels: list[str]) -> None:
    """Every given label belongs to ``labels``; the error lists the first offenders."""
    wrong = [item for item in items if item.label is not None and item.label not in labels]
    if wrong:
        shown = "; ".join(f"{item.where}: {item.label!r}" for item in wrong[:5])
        more = f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""
        raise ItemsError(
            f"{len(wrong)} labels are not in the function's label set {labels}: {shown}{more}; add a label first "
            "with `loopml functions add-label`"
        )


def unique(items: list[Item]) -> tuple[list[Item], int]:
    """The items with each text once (the first occurrence), and how many repeats were dropped."""
    seen: set[str] = set()
    kept = []
    for item in items:
        if item.text not in seen:
            seen.add(item.text)
            kept.append(item)
    return kept, len(items) - len(kept)


def to_task(item: Item, key: str = "text") -> dict:
    """A Label Studio task of a function whose input is ``data[key]`` (``text`` or ``image``); a labelled item
    carries its label as an annotation."""
    task: dict = {"data": {key: item.text}}
    if item.label is not None:
        result = {"from_name": "label", "to_name": key, "type": "choices", "value": {"choices": [item.label]}}
        task["annotations"] = [{"result": [result]}]
    return task


def add_items(
    settings: Settings,
    client: LabelStudioClient,
    name: str,
    paths: list[Path],
    progress: Callable[[int, int], None] | None = None,
    *,
    folder_labels: bool = False,
) -> Added:
    """Read and check every file, then import the items into function ``name``'s project in batches;
    ``progress(done, total)`` after each batch. ``folder_labels``: images take their folder's name as label."""
    from loopml.config import DEFAULT_MAX_TEXT_BYTES, env_int
    from loopml.functions import FunctionRegistry, input_key

    spec = FunctionRegistry(settings).get(name)
    if spec.labelstudio_project_id is None:
        raise ItemsError(f"{name} has no Label Studio project; create it again with `loopml functions create`")
    items: list[Item] = []
    for path in paths:
        if spec.input_type == "image":
            items += read_images(path, spec.labels, folder_labels)
        else:  # the serving API's text limit
            items += read_items(path, env_int("LOOPML_MAX_TEXT_BYTES", DEFAULT_MAX_TEXT_BYTES))
    check_labels(items, spec.labels)
    items, repeated = unique(items)
    tasks = [to_task(item, input_key(spec.input_type)) for item in items]
    done = 0
    for batch in batches(tasks, [len(item.text) for item in items]):
        done += client.import_tasks(spec.labelstudio_project_id, batch)
        if progress is not None:
            progress(done, len(tasks))
    labelled = sum(item.label is not None for item in items)
    return Added(done, labelled, repeated, spec.labelstudio_project_id)


def batches(tasks: list[dict], sizes: list[int]) -> Iterable[list[dict]]:
    """``tasks`` in runs of at most ``BATCH`` tasks and, past the first task of a run, ``BATCH_BYTES`` of data."""
    batch: list[dict] = []
    total = 0
    for task, size in zip(tasks, sizes, strict=True):
        if batch and (len(batch) >= BATCH or total + size > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(task)
        total += size
    if batch:
        yield batch
