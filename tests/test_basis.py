"""The feature basis: principal directions of labelled and unlabelled items, folded into the deployed head."""

from __future__ import annotations

import numpy as np
import pytest

from loopml.automl import run_automl
from loopml.automl.basis import Basis, basis_size, fit_basis

FILLER = ["the", "a", "today", "news", "report", "people", "new", "said", "item", "note"]


def test_basis_size_grows_with_the_labels_then_is_the_whole_space() -> None:
    assert basis_size(10, 384) == 16
    assert basis_size(64, 384) == 16
    assert basis_size(128, 384) == 32
    assert basis_size(255, 384) == 32
    assert basis_size(256, 384) is None  # from 256 labels on: the whole space
    assert basis_size(16, 24) is None  # a small space is used whole


def test_folding_the_basis_into_a_layer_computes_the_same() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(40, 8)))
    basis = Basis(mean=rng.normal(size=40), components=q.T)
    x = rng.normal(size=(7, 40))
    center, weight, scale = rng.normal(size=8), rng.normal(size=(8, 3)), 0.7
    center_raw, weight_raw = basis.fold(center, weight)
    projected = ((basis.project(x) - center) / scale) @ weight
    assert np.allclose(((x - center_raw) / scale) @ weight_raw, projected, atol=1e-5)


def test_no_basis_from_the_labelled_rows_alone() -> None:
    rng = np.random.default_rng(1)
    labelled = rng.normal(size=(64, 128))
    assert fit_basis(labelled) is None  # 64 rows cannot estimate 16 directions well
    basis = fit_basis(labelled, rng.normal(size=(300, 128)))
    assert basis is not None and basis.components.shape == (16, 128)
    assert np.allclose(basis.components @ basis.components.T, np.eye(16), atol=1e-6)


def _latent_data(n: int, seed: int, dim: int = 128) -> tuple[list[str], np.ndarray, list[str]]:
    """Two labels told apart by the strongest of four high-variance latent directions, buried in isotropic
    noise over all ``dim`` dimensions; the texts carry no signal."""
    directions, _ = np.linalg.qr(np.random.default_rng(99).normal(size=(dim, 4)))
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 4)) * np.array([4.0, 3.0, 3.0, 3.0])
    emb = (latent @ directions.T + rng.normal(size=(n, dim))).astype(np.float32)
    labels = ["up" if z > 0 else "down" for z in latent[:, 0]]
    texts = [" ".join(rng.choice(FILLER, 6)) for _ in range(n)]
    return texts, emb, labels


def test_unlabelled_items_shape_the_basis_and_help_with_few_labels() -> None:
    texts, emb, labels = _latent_data(16, seed=2)
    _, pool, _ = _latent_data(1000, seed=3)
    test_texts, test_emb, test_labels = _latent_data(2000, seed=4)

    def accuracy(model) -> float:  # noqa: ANN001
        return float(np.mean(np.array(model.predict(test_texts, test_emb)) == np.array(test_labels)))

    plain = run_automl(texts, emb, labels, ["down", "up"])
    shaped = run_automl(texts, emb, labels, ["down", "up"], unlabelled_embeddings=pool)
    assert plain.basis_size is None and shaped.basis_size == 16
    assert shaped.model.embedding_head is not None
    assert shaped.model.embedding_head.dim == 128  # the deployed head takes raw embeddings
    assert accuracy(shaped.model) > accuracy(plain.model) + 0.05


def test_unlabelled_embeddings_of_another_width_are_refused() -> None:
    texts, emb, labels = _latent_data(16, seed=2)
    with pytest.raises(ValueError, match="unlabelled embeddings"):
        run_automl(texts, emb, labels, ["down", "up"], unlabelled_embeddings=np.zeros((5, 64), dtype=np.float32))
