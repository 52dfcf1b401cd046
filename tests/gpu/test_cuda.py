"""On a CUDA device (bench/gpu.sh): the image backbone, the heads, the text encoder and the deep tier run on the
GPU and answer as they do on the CPU. Fails, rather than skips, where no GPU is visible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.serving_support import IMAGE_ENCODER, png, tiny_image_classifier

if not torch.cuda.is_available():
    pytest.fail("tests/gpu needs a CUDA device (bench/gpu.sh runs it on one)", pytrace=False)


def test_the_image_backbone_runs_in_half_precision_on_the_gpu_and_agrees_with_the_cpu() -> None:
    from loopml.encoders import EfficientNetLiteEncoder, get_encoder

    images = [png(30 * i, seed=i) for i in range(8)]
    gpu = get_encoder(IMAGE_ENCODER)
    assert gpu.device == "cuda" and gpu.half  # type: ignore[attr-defined]
    cpu = EfficientNetLiteEncoder(IMAGE_ENCODER, device="cpu")
    assert (gpu.encode(images) * cpu.encode(images)).sum(axis=1).min() > 0.99


def test_heads_move_to_the_gpu_and_answer_the_same() -> None:
    from loopml.encoders import get_encoder

    classifier = tiny_image_classifier()
    images = [png(240, seed=1), png(15, seed=2)]
    embeddings = get_encoder(IMAGE_ENCODER).encode(images)
    on_cpu = classifier.predict_proba(["a", "b"], embeddings)
    classifier.to("cuda")
    assert classifier.embedding_head is not None and classifier.embedding_head.tensors["center"].is_cuda
    assert np.allclose(classifier.predict_proba(["a", "b"], embeddings), on_cpu, atol=1e-4)


def test_the_text_encoder_takes_the_torch_path_on_the_gpu() -> None:
    from loopml.encoders import MiniLMOnnxEncoder, get_encoder, text_encoder_path
    from loopml.minilm_torch import MiniLMTorchEncoder

    assert text_encoder_path() == "torch"
    encoder = get_encoder("minilm-l6-int8")
    assert isinstance(encoder, MiniLMTorchEncoder) and encoder.device == "cuda"
    texts = ["a wonderful film", "shares fell after the report", ""]
    assert (encoder.encode(texts) * MiniLMOnnxEncoder().encode(texts)).sum(axis=1).min() > 0.98


def test_the_deep_tier_trains_on_the_gpu() -> None:
    from loopml.automl.deep import DeepConfig, fit_deep_candidate
    from loopml.encoders import get_encoder

    images = [png(235 - 3 * i, seed=i) for i in range(8)] + [png(20 + 3 * i, seed=100 + i) for i in range(8)]
    labels = ["light"] * 8 + ["dark"] * 8
    config = DeepConfig(epochs=4, views=2, folds=2, batch_size=16, time_budget_s=120)
    result = fit_deep_candidate(get_encoder(IMAGE_ENCODER), images, labels, ["light", "dark"], config)  # type: ignore[arg-type]
    assert result.cv_accuracy >= 0.9
    assert result.model.predict([png(240, seed=5), png(10, seed=6)]) == ["light", "dark"]


def test_the_text_deep_tier_trains_on_the_gpu_and_answers_there_as_on_the_cpu() -> None:
    from loopml.automl.text_deep import fit_text_deep, shared_backbone
    from tests.serving_support import LABELS, NEGATIVE, POSITIVE

    assert shared_backbone().device == "cuda"
    texts, labels = POSITIVE + NEGATIVE, ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    model = fit_text_deep(texts, labels, LABELS, max_pairs_per_example=4, train_layers=2).model
    fresh = ["a wonderful, moving film", "a dull and tedious mess"]
    on_cpu_tail = model.predict_proba(fresh)
    model.to("cuda")
    assert next(model.tail.parameters()).is_cuda
    assert np.allclose(model.predict_proba(fresh), on_cpu_tail, atol=1e-4)
