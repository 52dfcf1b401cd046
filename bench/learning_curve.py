"""Accuracy and calibration learning curve: LoopML's AutoML against two standard baselines, on both demo data sets.

A fixed stratified 20 % holdout (seed 0) is the test set. From the remaining 80 %, training sets of 8, 32
and 128 labelled examples per class are drawn (several seeds; the mean is reported) and the whole pool is
used once ("all"). Methods:

* LoopML: ``run_automl`` on texts + cached MiniLM embeddings, with the embeddings of the rest of the training
  pool as the function's unlabelled items (in the product: the unlabelled Label Studio tasks; they shape the
  feature basis, ``loopml.automl.basis``; no label of theirs is used); the refit winner predicts the holdout;
* TF-IDF(1-2)+LR: scikit-learn ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`` and
  ``LogisticRegression(C=10)``;
* MiniLM+LR: ``LogisticRegression()`` (C=1) on the same cached embeddings.

With ``--also-encoder ID`` (e.g. ``e5-small-q4``, the opt-in encoder of ``loopml functions create --encoder``) one
more column, ``LoopML/ID``, runs ``run_automl`` on that encoder's embeddings; the target compares the default
(``LoopML``) with the baselines only.

Every method's test probabilities also give its expected calibration error (top label, 15 equal-width bins,
``loopml.automl.metrics.expected_calibration_error``), printed per data set and size beside the accuracy table.

Embeddings are cached under ``$LOOPML_HOME/bench`` (shared with ``bench/automl_speed.py``).

    .venv/bin/python bench/learning_curve.py [--quick] [--seeds N] [--sizes 8,32,128,all] [--also-encoder e5-small-q4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automl_speed import DATASETS, cached_embeddings, load_with_embeddings  # noqa: E402

SIZES: list[int | None] = [8, 32, 128, None]  # labels per class; None: the whole training pool


@dataclass
class Split:
    """Training rows (texts, embeddings, labels) and test rows (texts, embeddings)."""

    train_texts: list[str]
    train_emb: np.ndarray
    train_labels: list[str]
    test_texts: list[str]
    test_emb: np.ndarray
    unlabelled_emb: np.ndarray | None = None  # the rest of the training pool, for LoopML
    other_emb: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(
        default_factory=dict
    )  # encoder -> (train, test, unlabelled)


def _automl(
    split: Split,
    train_emb: np.ndarray,
    test_emb: np.ndarray,
    unlabelled_emb: np.ndarray | None,
    encoder_id: str | None = None,
) -> np.ndarray:
    """``run_automl`` on the training rows with ``train_emb`` (and the pool's other rows unlabelled); the refit
    winner's probabilities for the test rows (columns: the sorted label set)."""
    from loopml.automl import run_automl
    from loopml.encoders import DEFAULT_TEXT_ENCODER

    labels = split.train_labels
    encoder = encoder_id or DEFAULT_TEXT_ENCODER
    result = run_automl(
        split.train_texts,
        train_emb,
        labels,
        sorted(set(labels)),
        encoder_id=encoder,
        unlabelled_embeddings=unlabelled_emb,
    )
    return result.model.predict_proba(split.test_texts, test_emb)


def loopml(split: Split) -> np.ndarray:
    return _automl(split, split.train_emb, split.test_emb, split.unlabelled_emb)


def loopml_on(encoder_id: str) -> Callable[[Split], np.ndarray]:
    """LoopML's AutoML on the embeddings of ``encoder_id`` instead of the default encoder's."""
    return lambda split: _automl(split, *split.other_emb[encoder_id], encoder_id=encoder_id)


def tfidf_lr(split: Split) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(C=10.0, max_iter=2000)
    model.fit(vectorizer.fit_transform(split.train_texts), split.train_labels)
    return model.predict_proba(vectorizer.transform(split.test_texts))


def minilm_lr(split: Split) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000).fit(split.train_emb, split.train_labels)
    return model.predict_proba(split.test_emb)


# Each method returns the test rows' probabilities, columns in sorted label order (every label is in every draw).
METHODS: dict[str, Callable[[Split], np.ndarray]] = {
    "LoopML": loopml,
    "TF-IDF(1-2)+LR": tfidf_lr,
    "MiniLM+LR": minilm_lr,
}


def holdout_split(labels: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=seed)


def draw(pool: np.ndarray, labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """``per_class`` random rows of each label from ``pool`` (all of ``pool`` for None)."""
    if per_class is None:
        return pool
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(pool[labels[pool] == label], per_class, replace=False) for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def evaluate(
    name: str, seeds: int, also: list[str], sizes: list[int | None] = SIZES
) -> list[tuple[str, dict[str, list[float]], dict[str, float], dict[str, list[float]]]]:
    """Per training size: accuracy per seed, seconds (all seeds) and ECE per seed, of every method."""
    from loopml.automl.metrics import expected_calibration_error

    texts, labels, emb = load_with_embeddings(name)
    other = {encoder_id: cached_embeddings(name, texts, encoder_id) for encoder_id in also}
    label_array = np.array(labels)
    pool, test = holdout_split(labels)
    test_texts, test_labels = [texts[i] for i in test], label_array[test]
    label_set = sorted(set(labels))
    test_y = np.array([label_set.index(label) for label in test_labels])
    rows = []
    for per_class in sizes:
        scores: dict[str, list[float]] = {m: [] for m in METHODS}
        seconds: dict[str, float] = dict.fromkeys(METHODS, 0.0)
        eces: dict[str, list[float]] = {m: [] for m in METHODS}
        for seed in range(seeds if per_class is not None else 1):
            rows_idx = draw(pool, label_array, per_class, seed)
            train_texts, train_labels = [texts[i] for i in rows_idx], list(label_array[rows_idx])
            rest = np.setdiff1d(pool, rows_idx)
            unlabelled = emb[rest] if len(rest) else None
            split = Split(train_texts, emb[rows_idx], train_labels, test_texts, emb[test], unlabelled)
            split.other_emb = {
                e: (vectors[rows_idx], vectors[test], vectors[rest] if len(rest) else None)
                for e, vectors in other.items()
            }
            for method, fit_predict in METHODS.items():
                started = time.perf_counter()
                proba = np.asarray(fit_predict(split), dtype=np.float64)
                seconds[method] += time.perf_counter() - started
                scores[method].append(float(np.mean(proba.argmax(axis=1) == test_y)))
                eces[method].append(expected_calibration_error(proba, test_y))
        size = f"{per_class}/class" if per_class is not None else f"all ({len(pool)})"
        rows.append((size, scores, seconds, eces))
        progress = ", ".join(f"{m} {statistics.mean(s):.4f}" for m, s in scores.items())
        print(f"  {name} {size}: {progress}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds per small size instead of 5")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--also-encoder", action="append", default=[], help="also run LoopML on this encoder")
    parser.add_argument("--sizes", default="8,32,128,all", help="labels per class, comma-separated ('all': the pool)")
    args = parser.parse_args()
    sizes = [None if s.strip() == "all" else int(s) for s in args.sizes.split(",") if s.strip()]
    for encoder_id in args.also_encoder:
        METHODS[f"LoopML/{encoder_id}"] = loopml_on(encoder_id)
    seeds = args.seeds or (2 if args.quick else 5)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results = {name: evaluate(name, seeds, args.also_encoder, sizes) for name in DATASETS}

    print(
        f"# Learning curve: holdout accuracy (fixed stratified 20 % holdout; mean over {seeds} seeds for "
        "the per-class sizes, 1 run for all)\n"
    )
    print("| data set | train size | " + " | ".join(METHODS) + " | LoopML - best baseline | paired SE | target met |")
    print("|---|---|" + "---:|" * len(METHODS) + "---:|---:|---|")
    misses = 0
    for name, rows in results.items():
        for size, scores, _, _ in rows:
            means = {m: statistics.mean(s) for m, s in scores.items()}
            spread = {m: (max(s) - min(s)) / 2 for m, s in scores.items()}
            best_name = max((m for m in means if not m.startswith("LoopML")), key=lambda m: means[m])
            delta = means["LoopML"] - means[best_name]
            paired = np.subtract(scores["LoopML"], scores[best_name])
            se = f"{paired.std(ddof=1) / np.sqrt(len(paired)):.4f}" if len(paired) > 1 else "-"
            met = delta >= 0
            misses += not met
            cells = " | ".join(
                f"{means[m]:.4f}" + (f" ±{spread[m]:.3f}" if len(scores[m]) > 1 else "") for m in METHODS
            )
            print(f"| {name} | {size} | {cells} | {delta:+.4f} | {se} | {'yes' if met else 'NO'} |")
    print(
        "\n(± is half the range over seeds; paired SE is the standard error of the mean per-seed difference "
        "between LoopML and the better baseline.)"
    )
    print(
        "\nExpected calibration error of the same predictions (top label, 15 bins; mean over seeds, ± half the "
        "range, and the standard error of the mean over seeds; lower is better; goal for LoopML <= 0.05)\n"
    )
    print("| data set | train size | " + " | ".join(f"{m} ECE" for m in METHODS) + " |")
    print("|---|---|" + "---:|" * len(METHODS))
    for name, rows in results.items():
        for size, _, _, eces in rows:
            cells = " | ".join(
                f"{statistics.mean(eces[m]):.3f}"
                + (
                    f" ±{(max(eces[m]) - min(eces[m])) / 2:.3f}"
                    f" (SE {statistics.stdev(eces[m]) / len(eces[m]) ** 0.5:.3f})"
                    if len(eces[m]) > 1
                    else ""
                )
                for m in METHODS
            )
            print(f"| {name} | {size} | {cells} |")
    print("\n| data set | train size | " + " | ".join(f"{m} s (all seeds)" for m in METHODS) + " |")
    print("|---|---|" + "---:|" * len(METHODS))
    for name, rows in results.items():
        for size, _, seconds, _ in rows:
            print(f"| {name} | {size} | " + " | ".join(f"{seconds[m]:.1f}" for m in METHODS) + " |")
    total = time.perf_counter() - started
    print(f"\ntarget (LoopML >= better baseline) missed at {misses} point(s); total {total:.0f} s")


if __name__ == "__main__":
    main()
