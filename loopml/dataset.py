"""The training dataset: one row per labelled item, content-hashed, with a stable train/holdout split."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl

from loopml.annotations import resolve_labels

if TYPE_CHECKING:
    from loopml.images import ImageLimits

DEFAULT_HOLDOUT_PERCENT = 20


def normalize_text(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def content_hash(text: str) -> str:
    """Identity of an input: sha256 of its NFC-normalised, stripped text."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def input_hash(value: str, input_type: str = "text") -> str:
    """Identity of a function's input: :func:`content_hash` of a text; for an image, the sha256 of its encoded
    bytes (:func:`loopml.images.image_hash`, the same file whether it came as base64 or a data URI). A value that
    is not a readable image is hashed as text, so that validation can name it instead of the hash failing."""
    if input_type == "image":
        from loopml.images import ImageError, image_hash

        try:
            return image_hash(value)
        except ImageError:
            return content_hash(value)
    return content_hash(value)


def input_size(value: str, input_type: str = "text", *, known: bool = False, limits: ImageLimits | None = None) -> int:
    """How big an input is, 0 when it cannot be trained on: characters of a (stripped) text; bytes of an image
    that decodes within the limits (:func:`loopml.images.decode_image`: format, pixel count, truncation).
    ``known``: an image embedded before, hence decodable, is not decoded again (decoding a thousand photos takes
    seconds, and the dataset is rebuilt on every turn of the loop)."""
    if input_type != "image":
        return len(normalize_text(value))
    from loopml.images import ImageError, ImageLimits, decode_image, image_bytes

    limits = limits or ImageLimits.from_env()
    try:
        if not known:
            decode_image(value, limits)
        return len(image_bytes(value, limits))
    except ImageError:
        return 0


def split_of(hash_hex: str, holdout_percent: int = DEFAULT_HOLDOUT_PERCENT) -> str:
    """``train`` or ``holdout`` from the content hash alone: adding items never reshuffles old ones."""
    bucket = int(hash_hex[-8:], 16) % 100
    return "holdout" if bucket < holdout_percent else "train"


def build_dataset(
    annotations: pl.DataFrame,
    holdout_percent: int = DEFAULT_HOLDOUT_PERCENT,
    input_type: str = "text",
    known: Callable[[list[str]], set[str]] | None = None,
) -> pl.DataFrame:
    """Resolve each task's label, hash its content (:func:`input_hash`) and assign its split.

    Items with identical content and the same label are kept once (the earliest task); identical content
    with conflicting labels is kept in full so that validation can report it. ``text_length`` is
    :func:`input_size` (0: blank or not a readable image); ``known(hashes)`` names the images already embedded
    (decodable), which are not decoded again.
    """
    resolved = resolve_labels(annotations)
    texts = resolved["text"].fill_null("").to_list()
    hashes = [input_hash(text, input_type) for text in texts]
    seen = known(hashes) if known is not None and input_type == "image" else set()
    limits = None
    if input_type == "image":
        from loopml.images import ImageLimits

        limits = ImageLimits.from_env()  # read once, not per item
    sizes = [
        input_size(text, input_type, known=h in seen, limits=limits) for text, h in zip(texts, hashes, strict=True)
    ]
    data = resolved.with_columns(
        pl.Series("content_hash", hashes, dtype=pl.String),
        pl.Series("text_length", sizes, dtype=pl.Int64),
        pl.Series("split", [split_of(h, holdout_percent) for h in hashes], dtype=pl.String),
    )
    data = data.unique(subset=["content_hash", "label"], keep="first", maintain_order=True)
    return data.select(
        [
            "content_hash",
            "text",
            "label",
            "split",
            "source",
            "task_id",
            "n_annotations",
            "agreement",
            "labelled_at",
            "text_length",
            "must_pass",
        ]
    )


def training_rows(dataset: pl.DataFrame, label_set: list[str]) -> pl.DataFrame:
    """Rows that can be trained on: non-empty text, a label in the current label set, no conflicts."""
    conflicting = dataset.group_by("content_hash").agg(pl.col("label").n_unique().alias("n")).filter(pl.col("n") > 1)
    return dataset.filter(
        (pl.col("text_length") > 0)
        & pl.col("label").is_in(label_set)
        & ~pl.col("content_hash").is_in(conflicting["content_hash"].to_list())
    )
