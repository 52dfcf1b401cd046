"""The deployment gate: a candidate version may roll out only if it is not worse than the serving primary.

Both versions are scored on the same holdout items (never trained on) restricted to the labels they share,
and the candidate must answer every must-pass example (ticked in Label Studio) right.

"Worse" must be both material and real: the accuracy drop exceeds the tolerance *and* a one-sided paired
(McNemar-style) comparison of the items only one of the two versions gets right says the drop is not noise.
On a small holdout a one-item difference is not evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_TOLERANCE = 0.01
Z_ONE_SIDED_95 = 1.645


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    candidate_accuracy: float | None
    primary_accuracy: float | None
    compared_items: int
    shared_labels: list[str]
    per_label_recall: dict[str, dict[str, float | None]] = field(default_factory=dict)
    must_pass_total: int = 0
    must_pass_failures: list[dict[str, Any]] = field(default_factory=list)
    holdout_disagreement: float | None = None  # share of holdout items the two versions answer differently


def _predictions(probs: np.ndarray, label_set: list[str]) -> list[str]:
    return [label_set[i] for i in np.asarray(probs).argmax(axis=1)] if len(probs) else []


def _recall(predicted: list[str], truth: list[str], label: str) -> float | None:
    idx = [i for i, t in enumerate(truth) if t == label]
    return None if not idx else sum(predicted[i] == label for i in idx) / len(idx)


def evaluate_gate(
    *,
    truth: list[str],
    candidate_probs: np.ndarray,
    candidate_labels: list[str],
    primary_probs: np.ndarray | None,
    primary_labels: list[str] | None,
    must_pass_truth: list[str],
    must_pass_texts: list[str],
    must_pass_probs: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateResult:
    """Compare candidate and primary on holdout items whose true label both versions know."""
    shared = [label for label in candidate_labels if primary_labels is None or label in primary_labels]
    keep = [i for i, t in enumerate(truth) if t in shared]
    truth_kept = [truth[i] for i in keep]
    cand_pred = [_predictions(candidate_probs, candidate_labels)[i] for i in keep] if keep else []
    cand_acc = float(np.mean([p == t for p, t in zip(cand_pred, truth_kept, strict=True)])) if keep else None
    prim_acc: float | None = None
    prim_pred: list[str] = []
    if primary_probs is not None and primary_labels is not None and keep:
        prim_all = _predictions(primary_probs, primary_labels)
        prim_pred = [prim_all[i] for i in keep]
        prim_acc = float(np.mean([p == t for p, t in zip(prim_pred, truth_kept, strict=True)]))
    per_label = {
        label: {
            "candidate": _recall(cand_pred, truth_kept, label),
            "primary": _recall(prim_pred, truth_kept, label) if prim_pred else None,
        }
        for label in shared
    }
    mp_pred = _predictions(must_pass_probs, candidate_labels)
    failures = [
        {"text": text[:200], "expected": expected, "got": got}
        for text, expected, got in zip(must_pass_texts, must_pass_truth, mp_pred, strict=True)
        if expected in candidate_labels and got != expected
    ]
    disagreement = (
        sum(p != c for p, c in zip(prim_pred, cand_pred, strict=True)) / len(prim_pred) if prim_pred else None
    )
    common = dict(
        holdout_disagreement=disagreement,
        candidate_accuracy=cand_acc,
        primary_accuracy=prim_acc,
        compared_items=len(keep),
        shared_labels=shared,
        per_label_recall=per_label,
        must_pass_total=len(must_pass_truth),
        must_pass_failures=failures,
    )
    if failures:
        return GateResult(
            False, f"{len(failures)} of {len(must_pass_truth)} must-pass examples answered wrong", **common
        )
    only_primary = sum(p == t and c != t for p, c, t in zip(prim_pred, cand_pred, truth_kept, strict=False))
    only_candidate = sum(c == t and p != t for p, c, t in zip(prim_pred, cand_pred, truth_kept, strict=False))
    significant = only_primary - only_candidate > Z_ONE_SIDED_95 * (only_primary + only_candidate) ** 0.5
    if prim_acc is not None and cand_acc is not None and cand_acc < prim_acc - tolerance and significant:
        return GateResult(
            False,
            f"holdout accuracy {cand_acc:.3f} is worse than the primary's {prim_acc:.3f} "
            f"(tolerance {tolerance:.3f}, {len(keep)} items; right only by the primary {only_primary}, "
            f"only by the candidate {only_candidate})",
            **common,
        )
    if prim_acc is None or cand_acc is None:
        reason = "no holdout items to compare on; must-pass examples pass" if not keep else "no primary to compare"
    else:
        reason = f"holdout accuracy {cand_acc:.3f} vs primary {prim_acc:.3f} on {len(keep)} items"
    return GateResult(True, reason, **common)
