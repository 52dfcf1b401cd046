"""Annotations merge, the disagreement rule, the dataset and its stable split."""

import polars as pl

from loopml.annotations import PulledTask, empty_annotations, merge_annotations, resolve_labels, tasks_to_rows
from loopml.dataset import build_dataset, content_hash, split_of, training_rows


def ann(aid: int, label: str | None, at: str, cancelled: bool = False, by: int = 1) -> dict:
    return {
        "annotation_id": aid,
        "label": label,
        "updated_at": at,
        "created_at": at,
        "was_cancelled": cancelled,
        "completed_by": by,
    }


def test_majority_wins_and_ties_go_to_latest() -> None:
    rows = tasks_to_rows(
        [
            PulledTask(1, "a", "t", [ann(1, "x", "2026-01-01"), ann(2, "y", "2026-01-02"), ann(3, "x", "2026-01-03")]),
            PulledTask(2, "b", "t", [ann(4, "x", "2026-01-05"), ann(5, "y", "2026-01-04")]),
            PulledTask(3, "c", "t", [ann(6, None, "2026-01-01", cancelled=True)]),
            PulledTask(4, "d", "t", [ann(7, "y", "2026-01-01"), ann(8, None, "2026-01-09", cancelled=True)]),
        ]
    )
    resolved = {r["task_id"]: r for r in resolve_labels(rows).to_dicts()}
    assert resolved[1]["label"] == "x" and resolved[1]["n_annotations"] == 3
    assert abs(resolved[1]["agreement"] - 2 / 3) < 1e-9
    assert resolved[2]["label"] == "x"  # tie: the later annotation wins
    assert 3 not in resolved  # only skipped
    assert resolved[4]["label"] == "y"  # a skip does not vote


def test_merge_replaces_changed_tasks_and_drops_deleted() -> None:
    first = merge_annotations(
        empty_annotations(),
        [PulledTask(1, "a", "t1", [ann(1, "x", "t1")]), PulledTask(2, "b", "t1", [ann(2, "y", "t1")])],
    )
    edited = merge_annotations(first, [PulledTask(1, "a", "t2", [ann(1, "y", "t2")])], annotated_task_ids={1, 2})
    assert edited.filter(pl.col("task_id") == 1)["label"].to_list() == ["y"]
    assert edited.height == 2
    deleted = merge_annotations(edited, [], annotated_task_ids={1})
    assert deleted["task_id"].to_list() == [1]
    emptied = merge_annotations(deleted, [PulledTask(1, "a", "t3", [])])
    assert emptied.is_empty()


def test_split_is_stable_when_items_are_added() -> None:
    texts = [f"text number {i}" for i in range(500)]
    before = {t: split_of(content_hash(t)) for t in texts[:300]}
    after = {t: split_of(content_hash(t)) for t in texts}
    assert all(after[t] == s for t, s in before.items())
    holdout = sum(s == "holdout" for s in after.values()) / len(after)
    assert 0.12 < holdout < 0.28


def test_dataset_dedups_identical_items_and_keeps_conflicts_for_validation() -> None:
    rows = tasks_to_rows(
        [
            PulledTask(1, "same text", "t", [ann(1, "x", "t")]),
            PulledTask(2, " same text ", "t", [ann(2, "x", "t")]),
            PulledTask(3, "clash", "t", [ann(3, "x", "t")]),
            PulledTask(4, "clash", "t", [ann(4, "y", "t")]),
            PulledTask(5, "   ", "t", [ann(5, "y", "t")]),
            PulledTask(6, "other", "t", [ann(6, "zzz", "t")]),
        ]
    )
    data = build_dataset(rows)
    assert data.filter(pl.col("content_hash") == content_hash("same text")).height == 1
    assert data.filter(pl.col("content_hash") == content_hash("clash")).height == 2
    assert set(data.columns) >= {"content_hash", "text", "label", "split", "source", "task_id"}
    trainable = training_rows(data, ["x", "y"])
    assert trainable["task_id"].to_list() == [1]


def test_an_image_item_is_identified_by_its_bytes() -> None:
    """The same picture as base64 and as a data URI is one item; another picture is another; a value that is not
    an image is kept (hashed as text) for validation to report."""
    import base64
    import io

    from PIL import Image

    from loopml.dataset import input_hash
    from loopml.images import image_hash

    def png(colour: tuple[int, int, int]) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    red, blue = png((255, 0, 0)), png((0, 0, 255))
    rows = tasks_to_rows(
        [
            PulledTask(1, red, "t", [ann(1, "x", "t")]),
            PulledTask(2, f"data:image/png;base64,{red}", "t", [ann(2, "x", "t")]),
            PulledTask(3, blue, "t", [ann(3, "y", "t")]),
            PulledTask(4, "not a picture", "t", [ann(4, "y", "t")]),
        ]
    )
    data = build_dataset(rows, input_type="image")
    assert data["task_id"].to_list() == [1, 3, 4]
    assert data["content_hash"].to_list()[:2] == [image_hash(red), image_hash(blue)]
    assert data["content_hash"][2] == content_hash("not a picture") == input_hash("not a picture", "image")
    assert input_hash(red) == content_hash(red)  # a text function hashes the text


def test_an_image_that_does_not_decode_has_size_zero_and_fails_validation() -> None:
    """Readable images have their byte size; a truncated one and a non-image have 0, so the inputs check
    (text_length >= 1) names their tasks; images already embedded (``known``) are not decoded again."""
    import base64

    from loopml.validation import validate_dataset
    from tests.serving_support import png

    good = base64.b64encode(png(200, seed=1)).decode()
    other = base64.b64encode(png(30, seed=2)).decode()
    truncated = base64.b64encode(png(100, size=(64, 64))[:-50]).decode()
    rows = tasks_to_rows(
        [
            PulledTask(1, good, "t", [ann(1, "x", "t")]),
            PulledTask(2, other, "t", [ann(2, "y", "t")]),
            PulledTask(3, truncated, "t", [ann(3, "y", "t")]),
            PulledTask(4, "not a picture", "t", [ann(4, "x", "t")]),
        ]
    )
    asked: list[list[str]] = []
    data = build_dataset(rows, input_type="image", known=lambda hashes: asked.append(hashes) or set())
    sizes = dict(zip(data["task_id"].to_list(), data["text_length"].to_list(), strict=True))
    assert sizes[1] == len(png(200, seed=1)) and sizes[2] > 0 and sizes[3] == 0 and sizes[4] == 0
    assert len(asked) == 1 and len(asked[0]) == 4
    check = next(r for r in validate_dataset(data, ["x", "y"], 1) if r.name == "inputs_not_empty")
    assert not check.passed and sorted(check.details["task_ids"]) == [3, 4]
    # a truncated image the cache already knows is taken as readable: the cache only holds decoded images
    from loopml.dataset import input_hash

    trusted = build_dataset(rows, input_type="image", known=lambda hashes: {input_hash(truncated, "image")})
    assert dict(zip(trusted["task_id"].to_list(), trusted["text_length"].to_list(), strict=True))[3] > 0
