"""Drift reports: a shifted stream is flagged, an unshifted one is not, small windows say so, imports stay lazy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from loopml.config import PROJECT_ROOT
from loopml.drift import (
    NOT_ENOUGH_DATA,
    OK,
    DriftInput,
    DriftSummary,
    build_drift_report,
    image_quality,
    text_quality,
)
from loopml.invocation_frames import InvocationFrame

LABELS = ["business", "sport", "tech"]
DIM = 48
WORDS = {
    "business": "shares market profit bank deal growth",
    "sport": "match goal team season coach win",
    "tech": "phone software chip online data app",
}
CENTRES = np.random.default_rng(42).normal(size=(len(LABELS), DIM)) * 1.2


def stream(n: int, seed: int, priors: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3), shift: float = 0.0) -> DriftInput:
    """``n`` calls of a nearest-centroid model on three gaussian topic clusters.

    ``priors``: how often each topic comes in; ``shift``: how far every input moves along one fixed
    direction (the world changing, e.g. a new kind of text).
    """
    rng = np.random.default_rng(seed)
    topic = rng.choice(len(LABELS), size=n, p=np.asarray(priors) / sum(priors))
    x = CENTRES[topic] + rng.normal(size=(n, DIM))
    x[:, :8] += shift
    logits = -0.5 * ((x[:, None, :] - CENTRES[None, :, :]) ** 2).sum(axis=2) / 8.0
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    words = [WORDS[LABELS[t]].split() for t in topic]
    texts = [" ".join(rng.choice(w, size=int(rng.integers(3, 12)))) for w in words]
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return DriftInput(
        embeddings=(x / norm).astype(np.float32),
        labels=[LABELS[i] for i in proba.argmax(axis=1)],
        confidences=proba.max(axis=1),
        texts=texts,
    )


@pytest.fixture(scope="module")
def reference() -> DriftInput:
    return stream(3000, seed=1)


def test_a_shifted_stream_drifts_and_an_unshifted_one_does_not(reference: DriftInput, tmp_path: Path) -> None:
    same = build_drift_report(reference, stream(2500, seed=2), tmp_path / "same.html", label_set=LABELS, max_rows=2000)
    assert same.status == OK
    assert not same.drifted, same.message
    assert not same.input_drifted and not same.label_drifted and not same.confidence_drifted
    assert same.input_drift_share is not None and same.input_drift_share < 0.3
    assert same.label_drift_method == "jensenshannon"  # 2,000 rows a side: distances, not p-values
    assert (same.sampled_reference, same.sampled_current) == (1500, 2000)  # the other half fits the PCA
    assert (same.n_reference, same.n_current) == (3000, 2500)

    moved = build_drift_report(
        reference,
        stream(2500, seed=3, priors=(0.7, 0.15, 0.15), shift=0.6),
        tmp_path / "moved.html",
        label_set=LABELS,
        max_rows=2000,
    )
    assert moved.drifted, moved.message
    assert moved.input_drifted and moved.label_drifted
    assert moved.input_drift_share is not None and moved.input_drift_share >= 0.3
    assert moved.label_shares["business"] > 0.6
    assert moved.message.startswith("drift detected")

    html = (tmp_path / "moved.html").read_text(encoding="utf-8")
    assert moved.html_path == str(tmp_path / "moved.html")
    assert "Drifted Columns" in html and "is_duplicate" in html  # the components and the quality figures


def test_small_windows_use_p_value_tests(reference: DriftInput, tmp_path: Path) -> None:
    same = build_drift_report(reference, stream(120, seed=4), tmp_path / "a.html", label_set=LABELS)
    assert same.status == OK and not same.drifted, same.message
    assert same.label_drift_method == "chisquare" and same.confidence_drift_method == "ks"
    moved = build_drift_report(reference, stream(120, seed=5, shift=0.8), tmp_path / "b.html", label_set=LABELS)
    assert moved.input_drifted, moved.message


def test_too_few_rows_say_so_without_running_tests(reference: DriftInput, tmp_path: Path) -> None:
    summary = build_drift_report(reference, stream(12, seed=6), tmp_path / "few.html", label_set=LABELS, min_rows=30)
    assert summary.status == NOT_ENOUGH_DATA
    assert not summary.drifted and summary.input_drift_share is None
    assert "not enough data" in summary.message and "12 current" in summary.message
    assert "not enough data" in (tmp_path / "few.html").read_text(encoding="utf-8")
    assert summary.quality["current_text_length_mean"] > 0  # the cheap figures are still there
    metadata = summary.as_metadata()
    assert metadata["status"] == NOT_ENOUGH_DATA and "input_drift_share" not in metadata


def test_metadata_is_flat_and_typed(reference: DriftInput, tmp_path: Path) -> None:
    summary = DriftSummary(
        status=OK,
        message="no drift",
        drifted=False,
        n_reference=10,
        n_current=5,
        html_path=str(tmp_path / "r.html"),
        input_drift_share=0.1,
        quality={"current_empty_share": 0.0},
        label_shares={"sport": 1.0},
    )
    metadata = summary.as_metadata()
    assert metadata["input_drift_share"] == 0.1 and metadata["label_share:sport"] == 1.0
    assert metadata["current_empty_share"] == 0.0 and "label_drift_score" not in metadata
    assert all(isinstance(v, float | int | bool | str) for v in metadata.values())


def test_text_quality_figures() -> None:
    quality = text_quality(["", "   ", "héllo", "hello world", "hello world"])
    assert quality["empty_share"] == pytest.approx(0.4)
    assert quality["duplicate_share"] == pytest.approx(0.2)
    assert quality["non_ascii_share"] == pytest.approx(0.2)
    assert quality["word_count_mean"] == pytest.approx(1.0)
    assert quality["text_length_mean"] == pytest.approx((0 + 3 + 5 + 11 + 11) / 5)
    assert text_quality([])["empty_share"] == 0.0


def test_drift_input_from_invocations_keeps_rows_with_embeddings() -> None:
    frame = pl.DataFrame(
        {"label": ["a", "b", "a"], "confidence": [0.9, 0.6, 0.8], "input_text": ["x", "y", "z"]},
    )
    embeddings = np.eye(3, dtype=np.float32)
    invocations = InvocationFrame(frame, embeddings, np.array([True, False, True]))
    current = DriftInput.from_invocations(invocations)
    assert len(current) == 2
    assert list(current.labels) == ["a", "a"] and list(current.texts) == ["x", "z"]
    np.testing.assert_array_equal(current.embeddings, embeddings[[0, 2]])
    with pytest.raises(ValueError, match="labels has 1 rows"):
        DriftInput(embeddings, ["a"], [0.5, 0.5, 0.5], ["x", "y", "z"])


def test_importing_the_module_does_not_import_evidently_or_sklearn() -> None:
    code = "import sys, loopml.drift; print(sorted(m for m in ('evidently', 'sklearn') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_embeddings_of_another_encoder_are_refused(reference: DriftInput, tmp_path: Path) -> None:
    other = stream(100, seed=7)
    other = DriftInput(other.embeddings[:, :10], other.labels, other.confidences, other.texts)
    with pytest.raises(ValueError, match="differ in dimension"):
        build_drift_report(reference, other, tmp_path / "x.html", label_set=LABELS)


def image_stream(n: int, seed: int, brightness: float = 120.0, size: int = 64, mode: str = "RGB") -> DriftInput:
    """``n`` image calls (PNG data URIs of noisy flat pictures) on the embeddings of :func:`stream`."""
    import base64
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        level = float(np.clip(rng.normal(brightness, 15), 0, 255))
        side = int(size + rng.integers(-4, 5))
        pixels = np.clip(rng.normal(level, 10, size=(side, side, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
        images.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    calls = stream(n, seed)
    return DriftInput(calls.embeddings, calls.labels, calls.confidences, images, input_type="image")


def test_image_properties_drift_when_pictures_change_and_not_otherwise(tmp_path: Path) -> None:
    """An image function's report follows width, height, brightness and channels: darker, bigger pictures sent
    as grey drift on brightness, width and height; the same kind of pictures do not."""
    reference = image_stream(300, seed=1)
    same = build_drift_report(reference, image_stream(200, seed=2), tmp_path / "same.html", label_set=LABELS)
    assert same.status == OK and same.input_type == "image"
    assert same.properties_drifted == [], same.message
    assert set(same.property_drift) == {"width", "height", "brightness"}
    assert same.quality["current_channels_mean"] == 3.0 and same.quality["current_unreadable_share"] == 0.0

    darker = image_stream(200, seed=3, brightness=60.0, size=96, mode="L")
    moved = build_drift_report(reference, darker, tmp_path / "moved.html", label_set=LABELS)
    assert set(moved.properties_drifted) == {"width", "height", "brightness"}, moved.message
    assert moved.quality["current_channels_mean"] == 1.0
    assert moved.quality["current_brightness_mean"] < 70 < moved.quality["reference_brightness_mean"]
    assert "image properties drifted: width, height, brightness" in moved.message
    metadata = moved.as_metadata()
    assert metadata["properties_drifted"] == "width, height, brightness"
    assert metadata["property_drift:brightness"] < 0.01  # a p-value at this size
    assert "brightness" in (tmp_path / "moved.html").read_text(encoding="utf-8")


def test_image_quality_counts_unreadable_and_duplicated_images() -> None:
    images = list(image_stream(3, seed=4).texts)
    quality = image_quality([*images, images[0], "data:image/png;base64,AAAA", ""])
    assert quality["duplicate_share"] == pytest.approx(1 / 6)
    assert quality["unreadable_share"] == pytest.approx(2 / 6)
    assert 55 <= quality["width_mean"] <= 73 and quality["channels_mean"] == 3.0
