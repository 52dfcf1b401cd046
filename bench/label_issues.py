"""Does ``find_label_issues`` find planted annotation errors? Precision and recall at k on both demo data sets.

For each demo data set and seed: flip 5 % of the labels at random (each to another label, seeded), run
``run_automl`` on the texts, cached MiniLM embeddings and noisy labels for calibrated out-of-fold probabilities,
call ``find_label_issues`` and take its top k rows, k = the number of flips. precision@k = flips among those rows
/ rows taken (at most k), recall@k = flips among them / k (equal when at least k items are flagged). Target:
both >= 0.7, as the mean over seeds.

A second table compares other rankings of the same probabilities at the same k (cleanlab alone, ranked by
self-confidence or normalized margin; every item ranked by ``1 - p(given label)``, no filter), and a third
shows the noise floor: how many correctly labelled items the out-of-fold model itself contradicts.

Embeddings are cached under ``$LOOPML_HOME/bench`` (shared with ``bench/automl_speed.py``).

    .venv/bin/python bench/label_issues.py [--quick] [--seeds 3] [--noise 0.05] [--disagreement-confidence 0.9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automl_speed import DATASETS, load_with_embeddings, markdown_row, sample  # noqa: E402

from loopml.encoders import DEFAULT_TEXT_ENCODER  # noqa: E402
from loopml.label_issues import BOTH, CONFIDENT_DISAGREEMENT, CONFIDENT_LEARNING, find_label_issues  # noqa: E402

TARGET = 0.7
ALTERNATIVES = (
    "find_label_issues",
    "cleanlab, self_confidence",
    "cleanlab, normalized_margin",
    "all items by 1 - p(given)",
)


@dataclass
class Run:
    """One data set and seed: what was planted, what was found, how long it took."""

    n: int
    k: int
    flagged: int
    precision: float
    recall: float
    cv_accuracy: float
    automl_s: float
    find_s: float
    by_reason: dict[str, tuple[int, int]]  # reason -> (rows, planted flips among them)
    alternatives: dict[str, float] = field(default_factory=dict)  # ranking -> precision@k
    clean_contradicted: int = 0  # correctly labelled items whose out-of-fold argmax is another label
    flips_contradicted: int = 0  # flipped items whose out-of-fold argmax is another label than the given one


def flip_labels(y: np.ndarray, n_classes: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with ``round(share * n)`` random entries moved to another class, and the indices moved."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(y), int(round(share * len(y))), replace=False))
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    return noisy, flipped


def at_k(ranked: np.ndarray, is_flip: np.ndarray, k: int) -> tuple[float, float]:
    """Precision and recall at ``k`` of the ranked item indices (precision over the rows taken)."""
    top = ranked[:k]
    hits = int(is_flip[top].sum())
    return (hits / len(top) if len(top) else 0.0), hits / k


def alternatives(noisy: np.ndarray, proba: np.ndarray, is_flip: np.ndarray, k: int) -> dict[str, float]:
    """Precision@k of other rankings of the same out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    out = {}
    for rank_by in ("self_confidence", "normalized_margin"):
        ranked = cleanlab_find(noisy, proba, return_indices_ranked_by=rank_by, n_jobs=1)
        out[f"cleanlab, {rank_by}"] = at_k(np.asarray(ranked, dtype=np.int64), is_flip, k)[0]
    given_proba = proba[np.arange(len(noisy)), noisy]
    out["all items by 1 - p(given)"] = at_k(np.argsort(given_proba, kind="stable"), is_flip, k)[0]
    return out


def evaluate(name: str, seeds: int, share: float, size: int | None, confidence: float, encoder_id: str) -> list[Run]:
    from loopml.automl import run_automl

    texts, labels, emb = load_with_embeddings(name, encoder_id)
    if size is not None and size < len(texts):
        idx = sample(len(texts), size)
        texts, labels, emb = [texts[i] for i in idx], [labels[i] for i in idx], emb[idx]
    label_set = sorted(set(labels))
    y = np.array([label_set.index(label) for label in labels])
    ids = [str(i) for i in range(len(y))]
    runs = []
    for seed in range(seeds):
        noisy, flipped = flip_labels(y, len(label_set), share, seed)
        is_flip = np.zeros(len(y), dtype=bool)
        is_flip[flipped] = True
        noisy_labels = [label_set[i] for i in noisy]

        started = time.perf_counter()
        result = run_automl(texts, emb, noisy_labels, label_set, seed=seed, encoder_id=encoder_id)
        automl_s = time.perf_counter() - started
        started = time.perf_counter()
        issues = find_label_issues(ids, noisy_labels, label_set, result.oof_proba, disagreement_confidence=confidence)
        find_s = time.perf_counter() - started

        k = len(flipped)
        ranked = np.array(issues["item_id"].cast(int).to_list(), dtype=np.int64)
        precision, recall = at_k(ranked, is_flip, k)
        reasons = issues["reason"].to_list()
        by_reason = {
            reason: (
                sum(r == reason for r in reasons),
                int(sum(is_flip[i] for i, r in zip(ranked, reasons, strict=True) if r == reason)),
            )
            for reason in (CONFIDENT_LEARNING, CONFIDENT_DISAGREEMENT, BOTH)
        }
        contradicted = result.oof_proba.argmax(axis=1) != noisy
        run = Run(
            n=len(y),
            k=k,
            flagged=issues.height,
            precision=precision,
            recall=recall,
            cv_accuracy=result.cv_accuracy,
            automl_s=automl_s,
            find_s=find_s,
            by_reason=by_reason,
            alternatives={"find_label_issues": precision, **alternatives(noisy, result.oof_proba, is_flip, k)},
            clean_contradicted=int((contradicted & ~is_flip).sum()),
            flips_contradicted=int((contradicted & is_flip).sum()),
        )
        runs.append(run)
        print(
            f"  {name} seed {seed}: P@k {precision:.3f} R@k {recall:.3f} ({issues.height} flagged, k={k}), "
            f"run_automl {automl_s:.1f} s, find_label_issues {find_s:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    return runs


def mean(values: list[float], fmt: str = ".3f") -> str:
    return format(statistics.mean(values), fmt)


def print_results(results: dict[str, list[Run]], share: float) -> int:
    seeds = len(next(iter(results.values())))
    print(f"## Planted label errors ({share:.0%} flipped), top k = number of flips (mean over {seeds} seeds)\n")
    header = [
        "data set",
        "items",
        "k (flips)",
        "CV accuracy",
        "flagged",
        "CL only (flips)",
        "disagreement only (flips)",
        "both (flips)",
        "precision@k",
        "recall@k",
        "run_automl s",
        "find_label_issues s",
        "target met",
    ]
    print(markdown_row(header))
    print("|---|" + "---:|" * (len(header) - 2) + "---|")
    misses = 0
    for name, runs in results.items():
        reason_cells = []
        for reason in (CONFIDENT_LEARNING, CONFIDENT_DISAGREEMENT, BOTH):
            rows = [r.by_reason[reason][0] for r in runs]
            flips = [r.by_reason[reason][1] for r in runs]
            reason_cells.append(f"{mean(rows, '.1f')} ({mean(flips, '.1f')})")
        precision = statistics.mean(r.precision for r in runs)
        recall = statistics.mean(r.recall for r in runs)
        met = precision >= TARGET and recall >= TARGET
        misses += not met
        cells = [
            name,
            runs[0].n,
            runs[0].k,
            mean([r.cv_accuracy for r in runs], ".4f"),
            mean([r.flagged for r in runs], ".1f"),
            *reason_cells,
            f"{precision:.3f} ±{(max(r.precision for r in runs) - min(r.precision for r in runs)) / 2:.3f}",
            f"{recall:.3f} ±{(max(r.recall for r in runs) - min(r.recall for r in runs)) / 2:.3f}",
            mean([r.automl_s for r in runs], ".2f"),
            mean([r.find_s for r in runs], ".3f"),
            "yes" if met else "NO",
        ]
        print(markdown_row(cells))
    print('\n(± is half the range over seeds; "(flips)" is how many of those rows are planted flips.)')

    print("\n## Other rankings of the same out-of-fold probabilities: precision@k (mean over seeds)\n")
    print(markdown_row(["data set", *ALTERNATIVES]))
    print("|---|" + "---:|" * len(ALTERNATIVES))
    for name, runs in results.items():
        print(markdown_row([name, *(mean([r.alternatives[a] for r in runs]) for a in ALTERNATIVES)]))

    print("\n## Noise floor: items whose out-of-fold top label is not the given one (mean over seeds)\n")
    print("| data set | k (flips) | flips contradicted | correct labels contradicted | contradicted clean / k |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        clean = statistics.mean(r.clean_contradicted for r in runs)
        cells = [name, runs[0].k, mean([r.flips_contradicted for r in runs], ".1f"), f"{clean:.1f}"]
        print(markdown_row([*cells, f"{clean / runs[0].k:.2f}"]))
    return misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 items per data set and 2 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per data set (default 3, quick 2)")
    parser.add_argument("--noise", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--size", type=int, default=None, help="items per data set (default all, quick 2000)")
    parser.add_argument("--disagreement-confidence", type=float, default=0.9, help="find_label_issues' threshold")
    parser.add_argument("--encoder", default=DEFAULT_TEXT_ENCODER, help="text encoder of the embeddings")
    parser.add_argument("--data", choices=list(DATASETS), action="append", help="only these data sets")
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 3)
    size = args.size or (2000 if args.quick else None)
    warnings.filterwarnings("ignore")

    import cleanlab

    from loopml.automl import run_automl

    texts, labels, emb = load_with_embeddings("bbc_news")
    run_automl(texts[::10], emb[::10], labels[::10], sorted(set(labels[::10])))  # warm-up (lazy set-up)
    find_label_issues(["a", "b"], ["x", "y"], ["x", "y"], np.array([[0.9, 0.1], [0.2, 0.8]]))  # imports cleanlab

    started = time.perf_counter()
    confidence = args.disagreement_confidence
    results = {
        name: evaluate(name, seeds, args.noise, size, confidence, args.encoder) for name in args.data or DATASETS
    }
    print(
        f"# LoopML label-issue detection ({os.cpu_count()} CPUs, cleanlab {cleanlab.__version__}, "
        f"{'all items' if size is None else f'{size} items'} per data set, encoder {args.encoder}, "
        f"disagreement_confidence {confidence})\n"
    )
    misses = print_results(results, args.noise)
    print(f"\ntarget (precision@k and recall@k >= {TARGET}) missed on {misses} data set(s); ", end="")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
