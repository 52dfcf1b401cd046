"""``run_automl``: candidates x hyper-parameters, stratified k-fold CV, calibration, winner refit.

Candidates (see :data:`LINEAR_CS`, :data:`MLP_CS`, :data:`CNB_ALPHAS`, :data:`ENSEMBLE_WEIGHTS`):

* ``linear``: multinomial logistic regression on the embeddings, one per ``C``;
* ``mlp``: one-hidden-layer ReLU network on the embeddings;
* ``tfidf_cnb``: Complement Naive Bayes on word 1-2 gram TF-IDF of the raw text, one per ``alpha``;
* ``ensemble``: the weighted mean of the calibrated probabilities of the best embedding head and the best
  TF-IDF model (each chosen by CV log loss), then one more temperature on the mixture.

Which candidates may win depends on the evidence (every candidate stays on the leaderboard):

* the MLP head only when every label has :data:`MIN_MLP_PER_LABEL` examples (also as the ensemble's half);
* the TF-IDF model and the ensemble only when the TF-IDF model's out-of-fold log loss beats the label prior's
  by :data:`TFIDF_EVIDENCE_SE` standard errors (it has learnt something from the words);
* the TF-IDF model may lead (win alone, or outweigh the embedding head in the ensemble) only when every label
  has :data:`MIN_TEXT_ONLY_PER_LABEL` examples.

The embedding heads learn the label frequencies of the training rows smoothed by :data:`PRIOR_PSEUDO_COUNT`
pseudo-examples of every label (:func:`label_prior`): the frequencies of a few dozen annotations reflect how the
items were picked more than the traffic, and a regularised head's answers on small data follow them.

All embedding heads of all folds (plus the refit heads on all rows) train at once in one Lightning fit
(:mod:`loopml.automl.heads`); the TF-IDF models of all folds come from one pass (closed form).

Every candidate gets a temperature fitted on its out-of-fold logits. **The winner is the candidate with the
lowest calibrated out-of-fold log loss** (ties: higher accuracy) among the default linear head (``C = 1``) and
the candidates that beat it clearly: by one standard error of their paired per-example log-loss difference
(the TF-IDF model, the ensemble) or by three (another ``C``, the MLP: a variant of the default head makes
nearly the same predictions, so the standard error of the difference is small and noise passes one easily; on
RottenTomatoes with 32 examples per label a ``C = 4`` or ``C = 16`` head that beat the default by one standard
error lost on new data, and three standard errors cost nothing on BBC News). Log loss is smooth where accuracy
on a few dozen examples moves in coarse steps, and it rewards the confidence scores that review sampling and
the deployment gate rely on; the rule keeps noise from choosing (with 8 examples per class the CV cannot rank
candidates, and the embedding head is the safe choice there). Each candidate's temperature is chosen on its
own out-of-fold predictions, which makes the CV scores slightly optimistic (alike for every candidate).

The TF-IDF vocabulary and IDF weights and the embedding centre and scale are computed once from all rows (no
labels involved) rather than per fold, but a fold's Complement NB gives no weight to words none of its training
rows contain, as a vocabulary learnt from those rows would (unseen words would otherwise vote for the class the
fold's training rows have least of, which leaks the held-out labels: on RottenTomatoes with 8 examples per class
the leak gave the TF-IDF model a CV accuracy of 0.56 against 0.53 on new data, while every other candidate's CV
was pessimistic, and the ensemble 0.63 against 0.55).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from loopml.encoders import DEFAULT_TEXT_ENCODER

from .basis import Basis, fit_basis
from .classifier import EmbeddingHead, TextClassifier, TfidfHead, sharpen
from .heads import HeadSpec, TrainedHeads, torch_threads, train_heads
from .metrics import (
    accuracy,
    confusion_matrix,
    fit_temperature,
    log_loss,
    macro_f1,
    per_label_report,
    softmax,
)
from .naive_bayes import class_sums, cnb_weights
from .text_features import TfidfWords

__all__ = [
    "CNB_ALPHAS",
    "DEFAULT_LINEAR_C",
    "ENSEMBLE_WEIGHTS",
    "LINEAR_CS",
    "MLP_CS",
    "MLP_HIDDEN",
    "AutoMLResult",
    "CandidateScore",
    "run_automl",
]

LINEAR_CS: tuple[float, ...] = (1.0, 4.0, 16.0)
DEFAULT_LINEAR_C = 1.0  # the fallback winner when no candidate is clearly better (see _select)
SELECTION_STANDARD_ERRORS = 1.0  # how clearly (in standard errors) a candidate must beat the default
HEAD_VARIANT_STANDARD_ERRORS = 3.0  # ... and another embedding head (see the module docstring)
PRIOR_PSEUDO_COUNT = 10.0  # pseudo-examples of every label in the label frequencies heads learn (label_prior)
CALIBRATION_PSEUDO_ROWS = 1.0  # uniform mass in the winner's temperature targets, in rows (_temper)
MIN_ROWS_TO_SOFTEN = 200  # below this many rows the winner's temperature is at most 1 and shrunk (_temper)
CALIBRATION_BOOTSTRAPS = 64  # resamples that measure how uncertain a small set's temperature is (_temper)
CALIBRATION_PRIOR_LOG_SD = 0.6  # prior standard deviation of log T around 0 (_temper)
MLP_HIDDEN = 64
MLP_CS: tuple[float, ...] = (4.0,)
MLP_EPOCHS = 5
LBFGS_ITERATIONS = 50  # for up to 2,000 rows; more for more rows (weaker regularisation converges slower)
MLP_BATCH = 256
CNB_ALPHAS: tuple[float, ...] = (0.03, 0.1, 0.3)
ENSEMBLE_WEIGHTS: tuple[float, ...] = (0.3, 0.5, 0.7)
# The TF-IDF model may lead (win alone, or weigh more than the embedding head in the ensemble) only when every
# label has this many examples: a bag of words learnt from a handful of texts knows few of the words it will
# meet, and the CV cannot tell (on RottenTomatoes with 8 examples per label, TF-IDF alone won the CV in 2 of
# 20 draws and lost 7 points of holdout accuracy both times; measured before the fix of the CV leak described
# in the module docstring). Below it, it still helps as the minor half of the ensemble.
MIN_TEXT_ONLY_PER_LABEL = 20
# Below this many examples of some label the MLP head may neither win nor join the ensemble: a hidden layer
# needs data (on RottenTomatoes with 8 and 32 examples per label it beat the default head by one standard error
# in 8 of 80 draws and lost 0.7 points of holdout accuracy on average there). The C grid of the linear head
# stays open (given HEAD_VARIANT_STANDARD_ERRORS of evidence): in the active-learning simulation on BBC News (10
# to 70 labels, unbalanced) keeping only C = 1 below this size needed 40 % more labels.
MIN_MLP_PER_LABEL = 50
# The TF-IDF model may win or join the ensemble only when its out-of-fold log loss beats the label prior's (the
# label frequencies as the prediction for every row) by this many standard errors, i.e. when it has learnt
# something: on RottenTomatoes with 8 or 32 examples per label the bag of words is at chance, yet the ensemble
# chosen from the same out-of-fold rows looked better than the embedding head in a quarter of the draws and lost
# 1 to 4 points on new data.
TFIDF_EVIDENCE_SE = 2.0


@dataclass
class CandidateScore:
    """Cross-validated scores of one candidate configuration (calibrated out-of-fold predictions).

    ``fit_seconds`` is the candidate's share of the wall time of the batch it was trained in.
    """

    name: str
    params: dict[str, Any]
    cv_accuracy: float
    cv_macro_f1: float
    cv_log_loss: float
    fit_seconds: float


@dataclass
class AutoMLResult:
    """What :func:`run_automl` found: the winner, the leaderboard and the refit deployable model."""

    winner: CandidateScore
    leaderboard: list[CandidateScore]  # the winner first, then by CV log loss
    model: TextClassifier
    oof_proba: np.ndarray  # [n, C] calibrated out-of-fold probabilities of the winner
    temperature: float  # the winner's (for the ensemble: the one applied to the mixture)
    label_set: list[str]
    cv_accuracy: float
    cv_macro_f1: float
    per_label: dict[str, dict[str, float]]
    confusion: list[list[int]]  # [true][predicted]
    train_seconds: float
    basis_size: int | None = None  # principal components the embedding heads saw (None: all dimensions)


@dataclass
class _Candidate:
    """A scored candidate and what is needed to build its deployable model."""

    name: str
    params: dict[str, Any]
    oof_proba: np.ndarray
    temperature: float
    fit_seconds: float
    score: CandidateScore = field(init=False)
    emb_index: int | None = None  # config index in the head bank
    cnb_alpha: float | None = None
    members: tuple[_Candidate, _Candidate] | None = None
    embedding_weight: float = 1.0

    def __post_init__(self) -> None:
        self.score = CandidateScore(self.name, self.params, 0.0, 0.0, 0.0, self.fit_seconds)

    def rank_key(self) -> tuple[float, float]:
        return (round(self.score.cv_log_loss, 6), -self.score.cv_accuracy)


# --- input checks and folds ---------------------------------------------------------------------


def _encode_labels(labels: Sequence[str], label_set: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(label_set)}
    if len(index) != len(label_set):
        raise ValueError("label_set has duplicates")
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise ValueError(f"labels not in label_set: {unknown}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def _check_inputs(
    texts: Sequence[str], embeddings: np.ndarray, labels: Sequence[str], label_set: Sequence[str], folds: int
) -> tuple[np.ndarray, int]:
    """Validate the inputs; return the encoded labels and the number of folds to use."""
    if len(label_set) < 2:
        raise ValueError(f"need at least 2 labels in label_set, got {list(label_set)}")
    if not (len(texts) == len(labels) == len(embeddings)):
        raise ValueError(f"{len(texts)} texts, {len(embeddings)} embeddings and {len(labels)} labels differ")
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {embeddings.shape}")
    if folds < 2:
        raise ValueError("folds must be at least 2")
    y = _encode_labels(labels, label_set)
    counts = np.bincount(y, minlength=len(label_set))
    if (counts > 0).sum() < 2:
        raise ValueError(f"all examples have a single label ({label_set[int(counts.argmax())]!r}); need 2+")
    scarce = {label_set[i]: int(c) for i, c in enumerate(counts) if c < 2}
    if scarce:
        raise ValueError(f"every label needs at least 2 examples; too few for {scarce}")
    return y, int(min(folds, counts.min()))


def _fold_ids(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold number of each row."""
    from sklearn.model_selection import StratifiedKFold

    fold_of = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold_of[held_out] = k
    return fold_of


# --- embedding heads ----------------------------------------------------------------------------


def _embedding_configs() -> list[tuple[str, dict[str, Any]]]:
    configs: list[tuple[str, dict[str, Any]]] = [("linear", {"C": c}) for c in LINEAR_CS]
    configs += [("mlp", {"C": c, "hidden": MLP_HIDDEN}) for c in MLP_CS]
    return configs


def label_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    """The label frequencies the embedding heads learn: the counts of ``y`` smoothed by
    :data:`PRIOR_PSEUDO_COUNT` pseudo-examples of every label.

    A regularised head's answers on few examples follow its bias, i.e. the label frequencies it was trained on,
    and those of a few dozen annotations say more about which items were picked (by a person, or by review
    sampling) than about the traffic: on BBC News with 11 labelled items, one more "business" item than of
    each other label made logistic regression (C = 1) answer "business" for most texts. The pseudo-counts keep
    a small set's bias near uniform, and leave a large set's label frequencies as they are.
    """
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return (counts + PRIOR_PSEUDO_COUNT) / (counts.sum() + PRIOR_PSEUDO_COUNT * n_classes)


def _fold_weights(y: np.ndarray, rows: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Row weights that give the training rows ``rows`` the label frequencies ``prior`` (see
    :func:`label_prior`).

    Holding a fold out also shifts the class balance of the rest (most with few examples: leaving one of
    eight examples out makes its class the minority), and a head that learns the shifted prior predicts
    against the held-out class, which makes small-data CV pessimistic for every model with a bias.
    """
    inside = np.bincount(y[rows], minlength=len(prior)) / max(int(rows.sum()), 1)
    ratio = np.divide(prior, inside, out=np.zeros_like(prior), where=inside > 0)
    weights = np.where(rows, ratio[y], 0.0)
    return weights / weights[rows].mean()


def _head_specs(
    configs: list[tuple[str, dict[str, Any]]], y: np.ndarray, fold_of: np.ndarray, n_folds: int
) -> list[HeadSpec]:
    """Heads ordered linear first, then MLP; within a kind by config, then fold (last: all rows)."""
    prior = label_prior(y, int(y.max()) + 1)
    weights = [_fold_weights(y, fold_of != k, prior) for k in range(n_folds + 1)]  # the last: all rows
    specs: list[HeadSpec] = []
    for kind in ("linear", "mlp"):
        for name, params in configs:
            if name == kind:
                hidden = int(params.get("hidden", 0))
                specs += [HeadSpec(kind, float(params["C"]), w, hidden) for w in weights]
    return specs


def _mlp_steps(n: int) -> int:
    """About :data:`MLP_EPOCHS` passes over the data in mini-batches of :data:`MLP_BATCH`, 40 to 300 steps."""
    return int(min(300, max(40, np.ceil(MLP_EPOCHS * n / MLP_BATCH))))


def _lbfgs_iterations(n: int) -> int:
    """:data:`LBFGS_ITERATIONS` at 2,000 rows; more with the square root of the rows above (at most 3x) and
    with the square root of their inverse below (at most 4x: small sets cost little, and the default head
    should be the converged optimum there, which is what the CV falls back to)."""
    ratio = max(n, 1) / 2000
    factor = min(3.0, np.sqrt(ratio)) if ratio >= 1 else min(4.0, 1 / np.sqrt(ratio))
    return int(LBFGS_ITERATIONS * factor)


def _temper(winner: _Candidate, y: np.ndarray) -> None:
    """Refit the winner's final temperature (for the ensemble: the mixture's) to targets smoothed by
    :data:`CALIBRATION_PSEUDO_ROWS` rows' worth of uniform mass (see :func:`fit_temperature`), and its
    out-of-fold probabilities and scores with it.

    Selection compares candidates calibrated on the labels themselves; the deployed model should not be certain
    because a few rows were all ranked right in the CV (with two labels, the target of a row is
    ``1 - 1 / (2 (n + 1))`` for ``n`` rows; with thousands of rows the change is nil).

    Below :data:`MIN_ROWS_TO_SOFTEN` rows the temperature may sharpen the winner but not soften it below its
    own scale (``T <= 1``): the regularised heads answer less confidently than their accuracy on small data by
    construction, and a few dozen out-of-fold rows near chance would otherwise push ``T`` to its bound and every
    answer to a coin flip (on RottenTomatoes with 8 labels per class, 2 of 8 draws fitted ``T = 20`` on their
    16 rows and answered about 0.5 where they were right 66 % of the time). There, too, ``log T`` is shrunk
    toward 0 (the winner's own scale) as far as the rows leave it uncertain: by the weight
    ``s**2 / (s**2 + v)``, with ``v`` the variance of ``log T`` over :data:`CALIBRATION_BOOTSTRAPS` bootstrap
    resamples of the rows and ``s`` = :data:`CALIBRATION_PRIOR_LOG_SD` (an empirical-Bayes normal prior). Sixteen
    rows near chance say little and keep ``T`` near 1; forty BBC News rows ranked right with small logits
    say ``T = 0.27`` clearly and keep it (a fixed pull toward 1 doubled the ECE there).
    """
    logits = winner.temperature * np.log(np.clip(winner.oof_proba, 1e-300, None))  # before the temperature
    smoothing = CALIBRATION_PSEUDO_ROWS / (len(y) + CALIBRATION_PSEUDO_ROWS)
    softest = 1.0 if len(y) < MIN_ROWS_TO_SOFTEN else 20.0
    temperature = fit_temperature(logits, y, smoothing=smoothing, hi=softest)
    if len(y) < MIN_ROWS_TO_SOFTEN:
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(y), len(y)) for _ in range(CALIBRATION_BOOTSTRAPS)]
        spread = np.var([np.log(fit_temperature(logits[r], y[r], smoothing=smoothing, hi=softest)) for r in draws])
        prior = CALIBRATION_PRIOR_LOG_SD**2
        temperature = float(np.exp(np.log(temperature) * prior / (prior + spread)))
    winner.temperature = temperature
    winner.oof_proba = softmax(logits, winner.temperature)
    _score(winner, y)


def _oof_logits(logits: np.ndarray, config: int, fold_of: np.ndarray, n_folds: int) -> np.ndarray:
    heads = config * (n_folds + 1) + fold_of
    return logits[np.arange(len(fold_of)), heads]


def _embedding_candidates(
    emb: np.ndarray, y: np.ndarray, n_classes: int, fold_of: np.ndarray, n_folds: int, seed: int
) -> tuple[list[_Candidate], TrainedHeads]:
    configs = _embedding_configs()
    start = time.perf_counter()
    specs = _head_specs(configs, y, fold_of, n_folds)
    trained = train_heads(
        emb,
        y,
        n_classes,
        specs,
        seed=seed,
        mlp_steps=_mlp_steps(len(y)),
        mlp_batch=MLP_BATCH,
        lbfgs_iterations=_lbfgs_iterations(len(y)),
    )
    share = (time.perf_counter() - start) / len(configs)
    candidates = []
    for i, (name, params) in enumerate(configs):
        logits = _oof_logits(trained.logits, i, fold_of, n_folds)
        temperature = fit_temperature(logits, y)
        candidate = _Candidate(name, dict(params), softmax(logits, temperature), temperature, share)
        candidate.emb_index = i
        candidates.append(candidate)
    return candidates, trained


def _embedding_head(
    trained: TrainedHeads,
    index: int,
    n_folds: int,
    standardise: tuple[np.ndarray, float],
    temperature: float,
    basis: Basis | None,
) -> EmbeddingHead:
    """The refit (all rows) head of config ``index``, on raw embeddings (a basis is folded into its first
    layer)."""
    n_linear = len(LINEAR_CS)
    head = index * (n_folds + 1) + n_folds
    center, scale = standardise
    if index < n_linear:
        kind, first = "linear", "weight"
        tensors = {"weight": trained.linear["weight"][head].clone(), "bias": trained.linear["bias"][head].clone()}
    else:
        head -= n_linear * (n_folds + 1)
        kind, first = "mlp", "w1"
        tensors = {k: trained.mlp[k][head].clone() for k in ("w1", "b1", "w2", "b2")}
    if basis is not None:
        center, weight = basis.fold(center, tensors[first].detach().cpu().double().numpy())
        tensors[first] = torch.from_numpy(weight.astype(np.float32))
    tensors["center"] = torch.from_numpy(np.asarray(center, dtype=np.float32))
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32) for k, v in tensors.items()}
    return EmbeddingHead(kind, arrays, scale, temperature)


# --- TF-IDF models ------------------------------------------------------------------------------


def _tfidf_candidates(
    x: sp.csr_matrix, y: np.ndarray, n_classes: int, fold_of: np.ndarray, n_folds: int, seconds: float
) -> tuple[list[_Candidate], np.ndarray]:
    start = time.perf_counter()
    full = class_sums(x, y, n_classes)
    held = [np.flatnonzero(fold_of == k) for k in range(n_folds)]
    fold_sums = [full - class_sums(x[rows], y[rows], n_classes) for rows in held]
    oof = {alpha: np.zeros((len(y), n_classes)) for alpha in CNB_ALPHAS}
    # a word no training row of the fold has would not be in a vocabulary learnt from those rows: it gets no
    # weight (Complement NB gives unseen words a vote for the class least represented in the training rows,
    # which with stratified folds is the class most represented in the held-out rows, a label leak)
    seen = [(sums.sum(axis=0) > 0).astype(np.float32)[:, None] for sums in fold_sums]
    for alpha in CNB_ALPHAS:
        for rows, sums, mask in zip(held, fold_sums, seen, strict=True):
            oof[alpha][rows] = x[rows] @ (cnb_weights(sums, alpha) * mask)
    share = (seconds + time.perf_counter() - start) / len(CNB_ALPHAS)
    candidates = []
    for alpha, logits in oof.items():
        temperature = fit_temperature(logits, y)
        params = {"alpha": alpha, "ngrams": [1, 2]}
        candidate = _Candidate("tfidf_cnb", params, softmax(logits, temperature), temperature, share)
        candidate.cnb_alpha = alpha
        candidates.append(candidate)
    return candidates, full


def _tfidf_branch(
    texts: list[str], y: np.ndarray, n_classes: int, fold_of: np.ndarray, n_folds: int
) -> tuple[list[_Candidate], np.ndarray, TfidfWords]:
    start = time.perf_counter()
    vectorizer = TfidfWords()
    x = vectorizer.fit_transform(texts)
    candidates, class_totals = _tfidf_candidates(x, y, n_classes, fold_of, n_folds, time.perf_counter() - start)
    return candidates, class_totals, vectorizer


# --- ensemble, scoring, selection ---------------------------------------------------------------


def _score(candidate: _Candidate, y: np.ndarray) -> None:
    p = candidate.oof_proba
    candidate.score = CandidateScore(
        candidate.name,
        candidate.params,
        accuracy(p, y),
        macro_f1(p, y),
        log_loss(p, y),
        candidate.fit_seconds,
    )


def _best(candidates: list[_Candidate]) -> _Candidate:
    return min(candidates, key=lambda c: c.rank_key())


def _mix(emb: np.ndarray, tfidf: np.ndarray, y: np.ndarray, weights: Sequence[float]) -> tuple[float, float]:
    """The weight in ``weights`` and the temperature whose mixture of the two members' probabilities has the
    lowest log loss on ``y``."""
    best: tuple[float, float, float] | None = None
    for weight in weights:
        mixed = weight * emb + (1.0 - weight) * tfidf
        temperature = fit_temperature(np.log(np.clip(mixed, 1e-300, None)), y)
        loss = log_loss(sharpen(mixed, temperature), y)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, weight, temperature)
    assert best is not None
    return best[1], best[2]


def _ensemble(emb: _Candidate, tfidf: _Candidate, y: np.ndarray, weights: Sequence[float]) -> _Candidate:
    """The best weighted mixture (weight of the embedding head in ``weights``) of the two members'
    calibrated probabilities, then one more temperature on the mixture."""
    weight, temperature = _mix(emb.oof_proba, tfidf.oof_proba, y, weights)
    proba = sharpen(weight * emb.oof_proba + (1.0 - weight) * tfidf.oof_proba, temperature)
    params = {
        "embedding": {"name": emb.name, **emb.params},
        "tfidf": {"name": tfidf.name, **tfidf.params},
        "embedding_weight": weight,
    }
    candidate = _Candidate("ensemble", params, proba, temperature, emb.fit_seconds + tfidf.fit_seconds)
    candidate.members = (emb, tfidf)
    candidate.embedding_weight = weight
    return candidate


def _row_losses(candidate: _Candidate, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(candidate.oof_proba[np.arange(len(y)), y], 1e-12, 1.0))


def _clearly_positive(diff: np.ndarray, standard_errors: float) -> bool:
    """Whether the mean of the paired per-example differences ``diff`` exceeds ``standard_errors`` standard
    errors of that mean (never with fewer than two examples)."""
    if len(diff) < 2:
        return False
    return float(diff.mean()) > standard_errors * float(diff.std(ddof=1) / np.sqrt(len(diff)))


def _beats_prior(candidate: _Candidate, y: np.ndarray) -> bool:
    """Whether ``candidate``'s out-of-fold log loss beats the label prior's by :data:`TFIDF_EVIDENCE_SE`
    standard errors of their paired per-example difference."""
    prior = np.bincount(y) / len(y)
    return _clearly_positive(-np.log(prior[y]) - _row_losses(candidate, y), TFIDF_EVIDENCE_SE)


def _select(ranked: list[_Candidate], y: np.ndarray) -> _Candidate:
    """The lowest-log-loss candidate among the default linear head and those that beat it clearly: by
    :data:`SELECTION_STANDARD_ERRORS` standard errors of their paired per-example log-loss difference (the
    TF-IDF model, the ensemble) or :data:`HEAD_VARIANT_STANDARD_ERRORS` (other embedding heads). When the CV
    cannot tell them apart, as with a few dozen examples, the default is the simpler choice."""
    default = next(c for c in ranked if c.name == "linear" and c.params.get("C") == DEFAULT_LINEAR_C)

    def clearly_better(candidate: _Candidate) -> bool:
        variant = candidate.emb_index is not None
        k = HEAD_VARIANT_STANDARD_ERRORS if variant else SELECTION_STANDARD_ERRORS
        return _clearly_positive(_row_losses(default, y) - _row_losses(candidate, y), k)

    return next((c for c in ranked if c is default or clearly_better(c)), default)


def _build_model(
    winner: _Candidate,
    trained: TrainedHeads,
    n_folds: int,
    standardise: tuple[np.ndarray, float],
    basis: Basis | None,
    vectorizer: TfidfWords | None,
    class_totals: np.ndarray | None,
    label_set: list[str],
    encoder_id: str | None,
) -> TextClassifier:
    emb, tfidf = winner.members if winner.members else (winner, winner)
    embedding_head = tfidf_head = None
    if emb.emb_index is not None:
        embedding_head = _embedding_head(trained, emb.emb_index, n_folds, standardise, emb.temperature, basis)
    if tfidf.cnb_alpha is not None and vectorizer is not None and class_totals is not None:
        tfidf_head = TfidfHead(vectorizer, cnb_weights(class_totals, tfidf.cnb_alpha), tfidf.temperature)
    return TextClassifier(
        label_set=list(label_set),
        encoder_id=encoder_id if embedding_head is not None else None,
        candidate=winner.name,
        params=winner.params,
        embedding_head=embedding_head,
        tfidf_head=tfidf_head,
        embedding_weight=winner.embedding_weight if winner.members else (1.0 if embedding_head else 0.0),
        temperature=winner.temperature if winner.members else 1.0,
    )


def _standardisation(emb: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean row and root-mean-square row norm (1 for unit vectors) of the embeddings.

    Centring changes no optimum (the bias is not penalised) but conditions L-BFGS much better: sentence
    embeddings share a large common direction that couples the bias with every weight. Dividing by the
    RMS norm of the raw rows makes the ``C`` grid mean the same for any encoder, and for unit vectors the
    linear head equals scikit-learn's ``LogisticRegression(C)`` on the raw embeddings.
    """
    center = emb.mean(axis=0, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.einsum("ij,ij->i", emb, emb, dtype=np.float64))))
    return center, rms if rms > 0 else 1.0


def run_automl(
    texts: list[str],
    embeddings: np.ndarray,
    labels: list[str],
    label_set: list[str],
    *,
    folds: int = 5,
    seed: int = 0,
    encoder_id: str | None = DEFAULT_TEXT_ENCODER,
    unlabelled_embeddings: np.ndarray | None = None,
    text_candidates: bool = True,
) -> AutoMLResult:
    """Cross-validate all candidates, pick the winner by calibrated log loss and refit it on all data.

    The winner is the lowest calibrated out-of-fold log loss among the default linear head (``C = 1``) and
    the candidates that beat it clearly (see the module docstring); it is refit on all rows.

    ``embeddings[i]`` is the vector of ``texts[i]`` from encoder ``encoder_id``; ``labels[i]`` is one of
    ``label_set`` (whose order fixes the probability columns). ``unlabelled_embeddings`` (the function's other
    items, same encoder) only shape the feature basis the embedding heads train in (:mod:`.basis`). Folds are
    stratified; their number drops to the size of the smallest class when that is below ``folds``. Raises
    :class:`ValueError` for fewer than two distinct labels, a label with fewer than two examples, or mismatched
    lengths (also of the unlabelled embeddings' width). ``text_candidates=False`` (inputs that are not text:
    images) leaves the TF-IDF candidates and the ensemble out: only the embedding heads compete.
    """
    started = time.perf_counter()
    emb = np.asarray(embeddings, dtype=np.float32)
    y, n_folds = _check_inputs(texts, emb, labels, label_set, folds)
    n_classes = len(label_set)
    fold_of = _fold_ids(y, n_folds, seed)
    unlabelled = None if unlabelled_embeddings is None else np.asarray(unlabelled_embeddings, dtype=np.float32)
    if unlabelled is not None and (unlabelled.ndim != 2 or unlabelled.shape[1] != emb.shape[1]):
        raise ValueError(f"unlabelled embeddings of shape {unlabelled.shape}, expected (n, {emb.shape[1]})")
    basis = fit_basis(emb, unlabelled)
    head_input = basis.project(emb) if basis is not None else emb
    center, scale = _standardisation(head_input)
    standardised = ((head_input - center) / scale).astype(np.float32)
    if text_candidates:  # the TF-IDF branch (polars, scipy, numpy: mostly outside the GIL) beside the torch heads
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopml-tfidf") as pool:
            tfidf_future = pool.submit(_tfidf_branch, list(texts), y, n_classes, fold_of, n_folds)
            with torch_threads():
                emb_candidates, trained = _embedding_candidates(standardised, y, n_classes, fold_of, n_folds, seed)
            tfidf_candidates, class_totals, vectorizer = tfidf_future.result()
    else:
        with torch_threads():
            emb_candidates, trained = _embedding_candidates(standardised, y, n_classes, fold_of, n_folds, seed)
        tfidf_candidates, class_totals, vectorizer = [], None, None
    for candidate in emb_candidates + tfidf_candidates:
        _score(candidate, y)
    counts = np.bincount(y, minlength=n_classes)
    smallest = int(counts[counts > 0].min())
    heads = [c for c in emb_candidates if c.name != "mlp" or smallest >= MIN_MLP_PER_LABEL]
    eligible, text_models = heads, []
    if tfidf_candidates:
        text_led = smallest >= MIN_TEXT_ONLY_PER_LABEL  # may the TF-IDF model lead?
        weights = ENSEMBLE_WEIGHTS if text_led else tuple(w for w in ENSEMBLE_WEIGHTS if w >= 0.5)
        best_tfidf = _best(tfidf_candidates)
        ensemble = _ensemble(_best(heads), best_tfidf, y, weights)
        _score(ensemble, y)
        text_models = tfidf_candidates + [ensemble]
        if _beats_prior(best_tfidf, y):
            eligible = eligible + [ensemble] + (tfidf_candidates if text_led else [])
    ranked = sorted(emb_candidates + text_models, key=lambda c: c.rank_key())
    winner = _select([c for c in ranked if any(c is e for e in eligible)], y)
    _temper(winner, y)
    ranked = [winner] + [c for c in ranked if c is not winner]
    model = _build_model(
        winner, trained, n_folds, (center, scale), basis, vectorizer, class_totals, label_set, encoder_id
    )
    matrix = confusion_matrix(y, winner.oof_proba.argmax(axis=1), n_classes)
    return AutoMLResult(
        winner=winner.score,
        leaderboard=[c.score for c in ranked],
        model=model,
        oof_proba=winner.oof_proba,
        temperature=winner.temperature,
        label_set=list(label_set),
        cv_accuracy=winner.score.cv_accuracy,
        cv_macro_f1=winner.score.cv_macro_f1,
        per_label=per_label_report(matrix, list(label_set)),
        confusion=matrix.tolist(),
        train_seconds=time.perf_counter() - started,
        basis_size=basis.size if basis is not None else None,
    )
