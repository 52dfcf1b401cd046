"""`loopml items add`: text files become Label Studio tasks (labelled ones with their annotation); every file is
checked first, and a bad one names its file and line and imports nothing. Label Studio is the in-memory HTTP fake
behind the real client."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from loopml.config import get_settings
from loopml.functions import FunctionRegistry, FunctionSpec
from loopml.items import ItemsError, add_items, read_items
from tests.fake_labelstudio_api import FakeLabelStudioAPI

MAX = 1 << 20


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_each_format(tmp_path: Path) -> None:
    txt = write(tmp_path, "a.txt", "first line\n\n  \nsecond line\n")
    assert [(i.text, i.label, i.where) for i in read_items(txt, MAX)] == [
        ("first line", None, f"{txt}:1"),
        ("second line", None, f"{txt}:4"),
    ]
    csv_file = write(tmp_path, "b.csv", 'Text,Label\n"a, quoted text",positive\nplain,\n')
    assert [(i.text, i.label) for i in read_items(csv_file, MAX)] == [("a, quoted text", "positive"), ("plain", None)]
    jsonl = write(tmp_path, "c.jsonl", json.dumps({"text": "x", "label": "negative"}) + "\n\n" + '{"text": "y"}\n')
    assert [(i.text, i.label, i.where) for i in read_items(jsonl, MAX)] == [
        ("x", "negative", f"{jsonl}:1"),
        ("y", None, f"{jsonl}:3"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("a.pdf", "x", "takes .txt, .csv, .jsonl files"),
        ("a.csv", "body,label\nx,y\n", "no `text` column (found: body, label)"),
        ("a.csv", "text\n\n", "no items"),
        ("a.csv", "text,label\n ,positive\n", "a.csv:2: the text is missing or blank"),
        ("a.jsonl", '{"text": "ok"}\n{"text": oops}\n', "a.jsonl:2: not JSON"),
        ("a.jsonl", '["text"]\n', "a.jsonl:1: each line is an object"),
        ("a.jsonl", '{"text": "ok", "label": 3}\n', "the label must be text, not int"),
        ("a.txt", "", "no items"),
    ],
)
def test_files_that_cannot_be_read_say_where(tmp_path: Path, name: str, content: str, says: str) -> None:
    with pytest.raises(ItemsError, match=says.replace("(", r"\(").replace(")", r"\)")):
        read_items(write(tmp_path, name, content), MAX)


def test_not_utf8_missing_and_oversized(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(ItemsError, match="not UTF-8"):
        read_items(latin, MAX)
    with pytest.raises(ItemsError, match="no such file"):
        read_items(tmp_path / "missing.txt", MAX)
    with pytest.raises(ItemsError, match=r"a.txt:2: the text has more than 10 bytes"):
        read_items(write(tmp_path, "a.txt", "short\n" + "x" * 11 + "\n"), 10)


def registered_function(tmp_path: Path, name: str, input_type: str, labels: list[str], encoder_id: str) -> tuple:
    """A function registered in a fresh home, its project in the fake Label Studio: (settings, api, client,
    project)."""
    from loopml.functions import render_label_config

    api = FakeLabelStudioAPI()
    client = api.client()
    settings = replace(get_settings(), home=tmp_path, database_url_override=None)
    settings.ensure_dirs()
    project = client.create_project(name, render_label_config(input_type, labels))
    FunctionRegistry(settings).add(FunctionSpec(name, input_type, labels, encoder_id, project))
    return settings, api, client, project


@pytest.fixture
def function(tmp_path: Path) -> tuple:
    return registered_function(tmp_path, "sentiment", "text", ["positive", "negative"], "minilm-l6-int8")


def test_items_become_tasks_and_labels_become_annotations(function, tmp_path: Path) -> None:
    settings, api, client, project = function
    txt = write(tmp_path, "open.txt", "to label later\nrepeated\n")
    jsonl = write(tmp_path, "gold.jsonl", '{"text": "great film", "label": "positive"}\n{"text": "repeated"}\n')
    seen: list[tuple[int, int]] = []
    added = add_items(settings, client, "sentiment", [txt, jsonl], progress=lambda d, t: seen.append((d, t)))
    assert (added.imported, added.labelled, added.repeated, added.project_id) == (3, 1, 1, project)
    assert seen and seen[-1] == (3, 3)
    tasks = {t.data["text"]: t for t in api.tasks.values() if t.project == project}
    assert sorted(tasks) == ["great film", "repeated", "to label later"]
    assert [a["result"][0]["value"]["choices"] for a in tasks["great film"].annotations] == [["positive"]]
    assert tasks["repeated"].annotations == [] and tasks["to label later"].annotations == []
    assert client.annotated_task_count(project) == 1


def test_a_label_outside_the_set_imports_nothing(function, tmp_path: Path) -> None:
    settings, api, client, project = function
    good = write(tmp_path, "good.txt", "fine\n")
    bad = write(tmp_path, "bad.csv", "text,label\nx,positive\ny,neutral\n")
    with pytest.raises(ItemsError, match=r"1 labels are not in .*bad.csv:3: 'neutral'.*add-label"):
        add_items(settings, client, "sentiment", [good, bad])
    assert not [t for t in api.tasks.values() if t.project == project]


def test_an_unknown_function_is_refused(function, tmp_path: Path) -> None:
    from loopml.functions import FunctionError

    settings, _, client, _ = function
    with pytest.raises(FunctionError, match="unknown function 'nope'"):
        add_items(settings, client, "nope", [write(tmp_path, "a.txt", "x\n")])


def test_the_command_reports_what_it_added(function, tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    import loopml.labelstudio
    from loopml.cli import run

    settings, api, client, project = function
    monkeypatch.setenv("LOOPML_HOME", str(settings.home))
    monkeypatch.setattr(loopml.labelstudio.LabelStudioClient, "from_settings", classmethod(lambda cls, s: client))
    monkeypatch.setattr(sys, "argv", ["loopml", "items", "add", "sentiment", str(write(tmp_path, "a.txt", "x\ny\n"))])
    run()
    assert "added 2 items to sentiment (0 labelled)" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["loopml", "items", "add", "sentiment", str(tmp_path / "nothing.txt")])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 1 and "no such file" in capsys.readouterr().err


@pytest.fixture
def image_function(tmp_path: Path) -> tuple:
    return registered_function(tmp_path, "tone", "image", ["light", "dark"], "efficientnet-lite0-224")


def test_image_files_and_folders_become_image_tasks(image_function, tmp_path: Path) -> None:
    """Folders are searched recursively; with folder labels an image in a folder named after a label carries it;
    a repeated file is imported once; the task holds the image as a data URI under `image`."""
    from loopml.images import image_bytes
    from tests.serving_support import png

    settings, api, client, project = image_function
    root = tmp_path / "photos"
    for folder, level in (("light", 230), ("dark", 20), ("unsorted", 128)):
        (root / folder).mkdir(parents=True)
        for i in range(2):
            (root / folder / f"{i}.png").write_bytes(png(level, seed=i))
    (root / "dark" / "copy.png").write_bytes(png(20, seed=0))  # the same bytes as dark/0.png
    (root / "notes.txt").write_text("not an image: skipped in a folder")
    single = tmp_path / "one.jpg"
    single.write_bytes(png(200, fmt="JPEG"))
    added = add_items(settings, client, "tone", [root, single], folder_labels=True)
    assert (added.imported, added.labelled, added.repeated) == (7, 4, 1)
    tasks = [t for t in api.tasks.values() if t.project == project]
    assert all(t.data["image"].startswith("data:image/") for t in tasks)
    labelled = {image_bytes(t.data["image"]): t.annotations[0]["result"][0] for t in tasks if t.annotations}
    assert labelled[png(230, seed=1)]["value"]["choices"] == ["light"]
    assert {r["to_name"] for r in labelled.values()} == {"image"}
    unlabelled = add_items(settings, client, "tone", [root / "light"])  # without folder labels
    assert unlabelled.labelled == 0


def test_bad_image_files_name_the_file_and_import_nothing(image_function, tmp_path: Path) -> None:
    from tests.serving_support import png

    settings, api, client, project = image_function
    good = tmp_path / "good.png"
    good.write_bytes(png(40))
    broken = tmp_path / "broken.png"
    broken.write_bytes(png(40, size=(64, 64))[:-50])
    for paths, says in (
        ([good, broken], "broken.png: the image is truncated"),
        ([good, tmp_path / "a.txt"], "an image function takes image files"),
        ([tmp_path / "empty"], "no such file or folder"),
    ):
        (tmp_path / "a.txt").write_text("x")
        with pytest.raises(ItemsError, match=says):
            add_items(settings, client, "tone", paths)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ItemsError, match="no image files"):
        add_items(settings, client, "tone", [tmp_path / "empty"])
    assert not [t for t in api.tasks.values() if t.project == project]


def test_imports_are_batched_by_count_and_size() -> None:
    from loopml.items import BATCH, BATCH_BYTES, batches

    tasks = [{"i": i} for i in range(BATCH + 3)]
    assert [len(b) for b in batches(tasks, [1] * len(tasks))] == [BATCH, 3]
    big = BATCH_BYTES // 2 + 1
    assert [len(b) for b in batches(tasks[:5], [big] * 5)] == [1, 1, 1, 1, 1]
    assert [len(b) for b in batches(tasks[:3], [BATCH_BYTES * 2, 1, 1])] == [1, 2]  # an oversized one goes alone
