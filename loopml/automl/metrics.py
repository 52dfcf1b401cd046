"""Probability helpers, temperature scaling and classification metrics (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "ECE_BINS",
    "accuracy",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "log_loss",
    "macro_f1",
    "per_label_report",
    "softmax",
]

_EPS = 1e-12


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


ECE_BINS = 15


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error: the rows binned by their top probability into ``bins`` equal-width
    bins, the mean |accuracy - confidence| of the bins weighted by their share of rows (torchmetrics'
    ``multiclass_calibration_error``, L1; imported here so that serving, which needs only the numpy helpers,
    does not load torch)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probabilities = torch.as_tensor(np.asarray(proba, dtype=np.float32))
    targets = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return float(
        multiclass_calibration_error(probabilities, targets, num_classes=probabilities.shape[1], n_bins=bins, norm="l1")
    )


def log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes ``y`` under ``proba``."""
    picked = proba[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(picked, _EPS, 1.0))))


def _nll_at(logits: np.ndarray, y: np.ndarray, temperature: float, smoothing: float = 0.0) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - _target_logit(z, y, smoothing)))


def _target_logit(z: np.ndarray, y: np.ndarray, smoothing: float) -> np.ndarray:
    """Per row, the logits weighted by the smoothed target ``(1 - smoothing) * one_hot(y) + smoothing / C``."""
    return (1.0 - smoothing) * z[np.arange(len(y)), y] + smoothing * z.mean(axis=1)


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0, smoothing: float = 0.0
) -> float:
    """The temperature ``T`` in ``[lo, hi]`` minimising the NLL of ``softmax(logits / T)``.

    With ``smoothing`` the targets are ``(1 - smoothing) * one_hot(y) + smoothing / C`` rather than ``y``
    itself: out-of-fold logits that rank every row right would otherwise push ``T`` to ``lo`` however few the
    rows are (a model trained on four examples would then answer with certainty).

    The NLL is convex in ``b = 1 / T`` (its second derivative is the variance of the logits under the
    predicted distribution), so a safeguarded Newton iteration on ``b`` converges in a few steps. ``T = 1``
    is kept when scaling does not lower the NLL (e.g. constant logits).
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    true = _target_logit(z, y, smoothing)
    b_lo, b_hi = 1.0 / hi, 1.0 / lo
    b = 1.0
    for _ in range(30):
        p = np.exp(b * z)
        p /= p.sum(axis=1, keepdims=True)
        mean = (p * z).sum(axis=1)
        grad = float(np.mean(mean - true))
        curv = float(np.mean((p * z * z).sum(axis=1) - mean * mean))
        if curv <= 1e-12:
            step_b = b_hi if grad < 0 else b_lo
        else:
            step_b = min(max(b - grad / curv, b_lo), b_hi)
        if abs(step_b - b) < 1e-7 * max(1.0, b):
            b = step_b
            break
        b = step_b
    best = 1.0 / b
    return best if _nll_at(logits, y, best, smoothing) < _nll_at(logits, y, 1.0, smoothing) else 1.0


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(proba.argmax(axis=1) == y))


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``matrix[true, predicted]`` counts."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return matrix


def _prf(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(proba: np.ndarray, y: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in ``y`` or predicted."""
    n_classes = proba.shape[1]
    matrix = confusion_matrix(y, proba.argmax(axis=1), n_classes)
    _, _, f1 = _prf(matrix)
    seen = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    return float(f1[seen].mean()) if seen.any() else 0.0


def per_label_report(matrix: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each label from a confusion matrix."""
    precision, recall, f1 = _prf(matrix)
    support = matrix.sum(axis=1)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": float(support[i]),
        }
        for i, label in enumerate(labels)
    }
