"""The feature basis: the leading principal directions of all the function's items, labelled or not.

A sentence encoder's 384 dimensions carry far more than one task needs. With a few dozen labels, a head that
sees all of them fits noise in the minor directions; the major directions of the function's own items (the
unlabelled Label Studio tasks included: they cost no annotation) are where its classes differ. The embedding
heads therefore train on the projection onto the top ``k`` principal components, with ``k`` growing with the
number of labelled items (:func:`basis_size`); from 256 labelled items on they see the whole space.

Measured with ``bench/learning_curve.py`` (40 draws; the rest of the training pool as the unlabelled items),
holdout accuracy before and after: RottenTomatoes 8/32 per class 0.5854 -> 0.5954, 0.6545 -> 0.6694; BBC News
8/32 per class 0.9366 -> 0.9490, 0.9705 -> 0.9713 (128 per class and up: the whole space, as before).
Removing the *top* components instead (whitening, "all-but-the-top") cost 6-12 points on RottenTomatoes:
sentiment lives in the leading directions. A basis fitted on the labelled rows alone is noise (see
:data:`ROWS_PER_COMPONENT`).

The projection is linear, so it folds into the first layer of a head (:meth:`Basis.fold`): the deployed model
takes raw embeddings as before and its file format does not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

MIN_BASIS = 16  # components, at the fewest labels
LABELS_PER_COMPONENT = 4  # the basis size is the power of two at or below labelled items / this
# The largest basis; with more labels (256 and up) the heads see the whole space. At 256 labels a 64-component
# basis still gained a little on RottenTomatoes (+0.0025), but it did not help the active-learning simulation,
# where models in a 64-128 component basis choose the items for the later full-space model (RottenTomatoes,
# labels needed, mean of 4 seeds: 1411, against 1278 with this cap and 1239 without a basis; the seed-to-seed
# spread is about 300, so this is a hint rather than proof).
MAX_BASIS = 32
# rows (labelled and unlabelled) per component needed to fit a basis: one fitted on the labelled rows alone
# is noise (RottenTomatoes, 32 per class, 16 components from the 64 labelled rows: -0.011)
ROWS_PER_COMPONENT = 16


def basis_size(n_labelled: int, dim: int) -> int | None:
    """Components for ``n_labelled`` training rows in a ``dim``-dimensional space; ``None``: the whole space.

    ``2 ** floor(log2(n / 4))``, at least :data:`MIN_BASIS`; above :data:`MAX_BASIS`, or once it reaches
    half of ``dim`` (a basis would drop little), the whole space is used.
    """
    k = MIN_BASIS
    while k * 2 * LABELS_PER_COMPONENT <= n_labelled:
        k *= 2
    return k if k <= MAX_BASIS and 2 * k < dim else None


@dataclass(frozen=True)
class Basis:
    """``x -> (x - mean) @ components.T``: the top ``k`` principal directions (orthonormal rows)."""

    mean: np.ndarray  # [D] float64
    components: np.ndarray  # [k, D] float64

    @property
    def size(self) -> int:
        return int(self.components.shape[0])

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T).astype(np.float32)

    def fold(self, center: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raw-space ``(center, weight)`` of a first layer that works on projected rows.

        A layer computing ``((project(x) - center) / s) @ weight`` computes the same as
        ``((x - center_raw) / s) @ weight_raw`` with ``center_raw = mean + center @ components`` and
        ``weight_raw = components.T @ weight`` (the rows of ``components`` are orthonormal).
        """
        center_raw = self.mean + np.asarray(center, dtype=np.float64) @ self.components
        weight_raw = self.components.T @ np.asarray(weight, dtype=np.float64)
        return center_raw, weight_raw


def fit_basis(labelled: np.ndarray, unlabelled: np.ndarray | None = None) -> Basis | None:
    """The basis for training on ``labelled`` rows, fitted on them and the ``unlabelled`` ones.

    ``None`` (train on the full space) when :func:`basis_size` says so or when there are too few rows to
    estimate ``k`` directions well (fewer than :data:`ROWS_PER_COMPONENT` per component; the labelled rows
    alone never are enough).
    """
    k = basis_size(*labelled.shape)
    n_rows = len(labelled) + (0 if unlabelled is None else len(unlabelled))
    if k is None or n_rows < ROWS_PER_COMPONENT * k:
        return None
    rows = labelled if unlabelled is None or not len(unlabelled) else np.vstack([labelled, unlabelled])
    pca = PCA(n_components=k, svd_solver="randomized", random_state=0).fit(np.asarray(rows, dtype=np.float64))
    return Basis(pca.mean_.astype(np.float64), pca.components_.astype(np.float64))
