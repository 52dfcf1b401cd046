"""The GPU code paths, exercised on the CPU: the torch MiniLM (the text encoder's GPU path) gives the ONNX
model's vectors, the path choice follows LOOPML_TEXT_ENCODER_PATH, heads move between devices and answer the
same, and the serving runtime reports where its encoders run."""

from __future__ import annotations

import numpy as np
import pytest

from loopml.encoders import MiniLMOnnxEncoder, text_encoder_path
from loopml.minilm_torch import MiniLMTorchEncoder

TEXTS = ["a wonderful film, I enjoyed it", "shares fell five percent after the report", "", "word " * 400]


def test_the_torch_minilm_gives_the_onnx_models_vectors() -> None:
    torch_vectors = MiniLMTorchEncoder(device="cpu").encode(TEXTS)
    onnx_vectors = MiniLMOnnxEncoder().encode(TEXTS)
    assert torch_vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(torch_vectors, axis=1), 1, atol=1e-5)
    assert (torch_vectors * onnx_vectors).sum(axis=1).min() > 0.98  # the same model; int8 against float32


def test_the_text_path_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from loopml.encoders import _minilm

    monkeypatch.setenv("LOOPML_TEXT_ENCODER_PATH", "torch")
    assert text_encoder_path() == "torch"
    encoder = _minilm("minilm-l6-int8")
    assert isinstance(encoder, MiniLMTorchEncoder) and encoder.providers == ["CPUExecutionProvider"]
    monkeypatch.setenv("LOOPML_TEXT_ENCODER_PATH", "onnx")
    assert isinstance(_minilm("minilm-l6-int8"), MiniLMOnnxEncoder)
    monkeypatch.setenv("LOOPML_TEXT_ENCODER_PATH", "auto")
    monkeypatch.setenv("LOOPML_SERVING_GPU", "0")
    assert text_encoder_path() == "onnx"  # no GPU allowed: the CPU's int8 model


def test_heads_are_device_generic() -> None:
    from loopml.encoders import get_encoder
    from tests.serving_support import IMAGE_ENCODER, png, tiny_image_classifier

    classifier = tiny_image_classifier()
    embeddings = get_encoder(IMAGE_ENCODER).encode([png(240, seed=1), png(15, seed=2)])
    before = classifier.predict_proba(["a", "b"], embeddings)
    assert classifier.to("cpu") is classifier
    assert np.allclose(classifier.predict_proba(["a", "b"], embeddings), before)
    assert classifier.predict(["a", "b"], embeddings) == ["light", "dark"]
