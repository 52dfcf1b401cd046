"""The deployment gate: a candidate version may roll out only if it is not worse than the serving primary and
brings something the primary lacks.

The evidence is every labelled item that neither version learnt from, restricted to the labels both know:

* the holdout split (never trained on), scored by both versions;
* the *fresh* items: training items of the candidate that the primary never saw (labelled since it was
  trained), scored by the primary and by the candidate's out-of-fold answers (the fold model that did not train
  on them). The holdout alone is a few dozen items that also helped choose the primary (it passed this gate on
  them); the fresh items are new to both and grow with every annotation.

Rules, in order:

1. **Must-pass**: the candidate must answer every must-pass example (ticked in Label Studio) right.
2. **Answers as trained**: the candidate's deployable model must not answer its own training items far
   (one-sided 99 %) below its out-of-fold accuracy on them: a broken refit or export (answers permuted, say)
   shows there on hundreds of items, even when the primary happens to do poorly on the few dozen of the
   holdout (the out-of-fold answers, which the fresh items use, come from the sound fold models).
3. **Not worse**: "worse" must be both material and real: the accuracy drop exceeds the tolerance *and* a
   one-sided paired (McNemar-style) comparison of the items only one of the two versions gets right says the
   drop is not noise. It is tested on the holdout (where the candidate's deployable model itself answers: a
   broken refit shows there) and on all the evidence (holdout + fresh items).
4. **Something new**: a candidate trained on exactly the primary's examples (same items, same labels, same
   label set: a scheduled retrain with nothing new) that is not clearly *better* on the evidence (the same
   test, the other way round) and fixes no must-pass example the primary gets wrong is *held*: it would only
   churn versions (a rollout whose outcome is noise).

``bench/gate_simulation.py`` measures how often candidates that are truly better, equal and planted worse
reach the primary, for this gate and for the holdout-only gate it replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_TOLERANCE = 0.01
Z_ONE_SIDED_95 = 1.645
Z_ONE_SIDED_99 = 2.326
# nats of mean log loss a candidate may lose before the paired loss test counts; the test counts only when the
# candidate is also right on fewer items (two versions that answer alike differ by a near-constant amount per
# item when only their temperatures differ, which a paired test finds "significant" however small)
LOSS_TOLERANCE = 0.02
MIN_LOSS_ITEMS = 30  # items the paired loss test needs (a standard error from a handful of items means little)


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
    # passed, but nothing is new (rule 4): the primary keeps serving and no rollout starts
    held: bool = False
    fresh_items: int = 0  # training items of the candidate that the primary never saw, labels shared
    evidence_items: int = 0  # holdout + fresh items compared
    evidence_candidate_accuracy: float | None = None
    evidence_primary_accuracy: float | None = None


@dataclass(frozen=True)
class FreshItems:
    """Training items of the candidate that the primary never trained on, with their labels, the candidate's
    out-of-fold probabilities (columns: the candidate's label set) and the primary's probabilities (columns:
    the primary's label set)."""

    truth: list[str]
    candidate_probs: np.ndarray
    primary_probs: np.ndarray


@dataclass(frozen=True)
class Paired:
    """A paired comparison of two versions' answers on the same items."""

    items: int
    only_candidate: int  # items only the candidate answers right
    only_primary: int
    candidate_accuracy: float
    primary_accuracy: float
    # mean and standard error of the per-item log-loss difference (candidate minus primary), both versions'
    # probabilities renormalised over the shared labels; None without probabilities
    loss_difference: float | None = None
    loss_standard_error: float | None = None

    def worse(self, tolerance: float) -> bool:
        """The candidate is materially and significantly (one-sided 95 %) worse: its accuracy by more than
        ``tolerance`` (sign test of the items only one version gets right), or, when it is right on fewer
        items, its log loss by more than :data:`LOSS_TOLERANCE` (paired test of the per-item losses, on
        :data:`MIN_LOSS_ITEMS` items or more: it weighs how sure each answer was, so it tells a few points apart
        on a couple of hundred items where right/wrong alone cannot)."""
        drop = self.primary_accuracy - self.candidate_accuracy
        if drop > tolerance and significant(self.only_primary, self.only_candidate):
            return True
        if self.loss_difference is None or self.loss_standard_error is None or self.items < MIN_LOSS_ITEMS:
            return False
        if self.only_primary <= self.only_candidate:
            return False  # right as often or more, only less sure: a matter of calibration, not a regression
        return self.loss_difference > max(LOSS_TOLERANCE, Z_ONE_SIDED_95 * self.loss_standard_error)

    def better(self) -> bool:
        """The candidate is significantly (one-sided 95 %) better."""
        return significant(self.only_candidate, self.only_primary)

    def describe(self) -> str:
        loss = (
            f"; log loss {self.loss_difference:+.3f} ±{self.loss_standard_error:.3f} against the primary's"
            if self.loss_difference is not None and self.loss_standard_error is not None
            else ""
        )
        return (
            f"{self.candidate_accuracy:.3f} vs the primary's {self.primary_accuracy:.3f} on {self.items} items "
            f"(right only by the primary {self.only_primary}, only by the candidate {self.only_candidate}{loss})"
        )


def significant(wins: int, losses: int, z: float = Z_ONE_SIDED_95) -> bool:
    """One-sided sign (McNemar) test of ``wins`` against ``losses`` among the discordant items (``z``: the
    normal quantile; 1.645 for 95 %)."""
    return wins - losses > z * (wins + losses) ** 0.5


def paired(
    truth: list[str],
    candidate: list[str],
    primary: list[str],
    candidate_p_true: list[float] | None = None,
    primary_p_true: list[float] | None = None,
) -> Paired | None:
    """Compare answers on the same items (None without items); with each version's probability of the true
    label, their log losses too."""
    if not truth:
        return None
    cand_right = [c == t for c, t in zip(candidate, truth, strict=True)]
    prim_right = [p == t for p, t in zip(primary, truth, strict=True)]
    loss, loss_se = None, None
    if candidate_p_true is not None and primary_p_true is not None and len(truth) >= 2:
        diff = np.log(np.clip(primary_p_true, 1e-6, 1.0)) - np.log(np.clip(candidate_p_true, 1e-6, 1.0))
        loss, loss_se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return Paired(
        items=len(truth),
        only_candidate=sum(c and not p for c, p in zip(cand_right, prim_right, strict=True)),
        only_primary=sum(p and not c for c, p in zip(cand_right, prim_right, strict=True)),
        candidate_accuracy=float(np.mean(cand_right)),
        primary_accuracy=float(np.mean(prim_right)),
        loss_difference=loss,
        loss_standard_error=loss_se,
    )


def _p_true(probs: np.ndarray, labels: list[str], truth: list[str], shared: list[str]) -> list[float]:
    """Each row's probability of its true label, renormalised over the ``shared`` labels (a version with a
    label the other lacks spreads mass over it by design)."""
    if not truth:
        return []
    columns = [labels.index(label) for label in shared]
    kept = np.asarray(probs, dtype=np.float64)[:, columns]
    kept = kept / np.clip(kept.sum(axis=1, keepdims=True), 1e-12, None)
    return [float(kept[i, shared.index(t)]) for i, t in enumerate(truth)]


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
    fresh: FreshItems | None = None,
    new_examples: bool = True,
    primary_must_pass_probs: np.ndarray | None = None,
    candidate_cv_accuracy: float | None = None,
    candidate_train: tuple[float, int] | None = None,
) -> GateResult:
    """Judge the candidate against the primary (see the module docstring for the rules).

    ``truth``/``*_probs`` are the holdout items; ``fresh`` the items the primary never trained on (None: not
    known, e.g. a primary registered before versions kept their training items); ``new_examples`` whether the
    candidate learnt from examples (item and label) or a label set the primary did not; and
    ``primary_must_pass_probs`` the primary's answers to the must-pass examples (a candidate that fixes one the
    primary gets wrong has something new); ``candidate_cv_accuracy`` its out-of-fold accuracy and
    ``candidate_train`` its deployable model's accuracy on its own training items and their number (rule 2).
    """
    shared = [label for label in candidate_labels if primary_labels is None or label in primary_labels]
    keep = [i for i, t in enumerate(truth) if t in shared]
    truth_kept = [truth[i] for i in keep]
    cand_all = _predictions(candidate_probs, candidate_labels)
    cand_pred = [cand_all[i] for i in keep]
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
    holdout, evidence = None, None
    fresh_truth: list[str] = []
    if primary_probs is not None and primary_labels is not None:
        cand_p = _p_true(np.asarray(candidate_probs)[keep], candidate_labels, truth_kept, shared)
        prim_p = _p_true(np.asarray(primary_probs)[keep], primary_labels, truth_kept, shared)
        holdout = paired(truth_kept, cand_pred, prim_pred, cand_p, prim_p) if prim_pred else None
        fresh_truth, fresh_cand, fresh_prim, fresh_cand_p, fresh_prim_p = _fresh_answers(
            fresh, shared, candidate_labels, primary_labels
        )
        if prim_pred or fresh_truth:
            evidence = paired(
                truth_kept + fresh_truth,
                cand_pred + fresh_cand,
                prim_pred + fresh_prim,
                cand_p + fresh_cand_p,
                prim_p + fresh_prim_p,
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
        fresh_items=len(fresh_truth),
        evidence_items=evidence.items if evidence else 0,
        evidence_candidate_accuracy=evidence.candidate_accuracy if evidence else None,
        evidence_primary_accuracy=evidence.primary_accuracy if evidence else None,
    )
    if failures:
        return GateResult(
            False, f"{len(failures)} of {len(must_pass_truth)} must-pass examples answered wrong", **common
        )
    train_accuracy, train_items = candidate_train or (None, 0)
    broken = _below_own_cv(train_accuracy, train_items, candidate_cv_accuracy, tolerance)
    if broken:
        return GateResult(False, broken, **common)
    for name, comparison in (("holdout", holdout), ("holdout + fresh items", evidence)):
        if comparison is not None and comparison.worse(tolerance):
            return GateResult(
                False,
                f"{name} accuracy {comparison.describe()}: worse than the primary beyond the tolerance "
                f"(accuracy {tolerance:.3f}, log loss {LOSS_TOLERANCE:.3f})",
                **common,
            )
    if primary_labels is None:
        reason = "no primary to compare"
        return GateResult(True, reason if keep else "no holdout items to compare on; must-pass examples pass", **common)
    summary = (
        f"accuracy {evidence.describe()} ({len(keep)} holdout, {len(fresh_truth)} fresh)"
        if evidence
        else "no holdout or fresh items to compare on"
    )
    fixes = _fixed_must_pass(must_pass_truth, mp_pred, primary_must_pass_probs, primary_labels)
    if not new_examples and not fixes and not (evidence is not None and evidence.better()):
        return GateResult(
            True,
            f"trained on the primary's examples and not clearly better; {summary}",
            held=True,
            **common,
        )
    why = f"; fixes {fixes} must-pass example{'s' if fixes != 1 else ''} the primary gets wrong" if fixes else ""
    return GateResult(True, f"not worse: {summary}{why}", **common)


def _below_own_cv(accuracy: float | None, items: int, cv_accuracy: float | None, tolerance: float) -> str | None:
    """Why the candidate's deployable model answers its own training items clearly (one-sided 99 %) and
    materially worse than its cross-validation did without having seen them (a broken refit or export), or
    None. A sound refit, trained on those very items, answers them at least as well."""
    if accuracy is None or cv_accuracy is None or not 0.0 < cv_accuracy < 1.0 or not items:
        return None
    z = (cv_accuracy - accuracy) * items**0.5 / (cv_accuracy * (1.0 - cv_accuracy)) ** 0.5
    if cv_accuracy - accuracy > tolerance and z > Z_ONE_SIDED_99:
        return (
            f"the deployable model answers its own {items} training items with accuracy {accuracy:.3f}, far below "
            f"its cross-validated {cv_accuracy:.3f} (z = {z:.1f}): it does not answer as its training measured"
        )
    return None


def _fresh_answers(
    fresh: FreshItems | None, shared: list[str], candidate_labels: list[str], primary_labels: list[str]
) -> tuple[list[str], list[str], list[str], list[float], list[float]]:
    """The fresh items whose label both versions know: truth, candidate's and primary's answers, and their
    probabilities of the true label (see :func:`_p_true`)."""
    if fresh is None or not fresh.truth:
        return [], [], [], [], []
    keep = [i for i, t in enumerate(fresh.truth) if t in shared]
    truth = [fresh.truth[i] for i in keep]
    cand_probs, prim_probs = np.asarray(fresh.candidate_probs)[keep], np.asarray(fresh.primary_probs)[keep]
    return (
        truth,
        _predictions(cand_probs, candidate_labels),
        _predictions(prim_probs, primary_labels),
        _p_true(cand_probs, candidate_labels, truth, shared),
        _p_true(prim_probs, primary_labels, truth, shared),
    )


def _fixed_must_pass(
    truth: list[str], candidate: list[str], primary_probs: np.ndarray | None, primary_labels: list[str] | None
) -> int:
    """Must-pass examples the candidate answers right and the primary wrong (0 when unknown)."""
    if primary_probs is None or primary_labels is None or not truth:
        return 0
    primary = _predictions(primary_probs, primary_labels)
    return sum(c == t and p != t for t, c, p in zip(truth, candidate, primary, strict=True))
