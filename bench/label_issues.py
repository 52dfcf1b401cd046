"""Does ``find_label_issues`` find planted annotation errors? Precision and recall at k, beside cleanlab's Datalab.

For each data set and seed: flip 5 % of the labels at random (each to another label, seeded), run ``run_automl``
on the items' features and noisy labels for calibrated out-of-fold probabilities, call ``find_label_issues`` and
take its top k rows, k = the number of flips. ``find_label_issues`` returns as many items as its detectors
(confident learning, confident disagreement) flag between them, and those are the items with the lowest
probability of their given label (reason ``low_given_label_proba`` where neither detector flagged one).
precision@k = flips among those rows / rows taken (at most k), recall@k = flips among them / k (equal when at
least k items are returned). Target: both >= 0.7, as the mean over seeds.

Data sets: the two text demo sets (RottenTomatoes, BBC News; the texts and cached MiniLM embeddings) and, as a set
whose labels are clean to begin with (RottenTomatoes' snippets carry label noise of their own), scikit-learn's
handwritten digits (``load_digits``: 1,797 8x8 images, 10 classes, shipped inside scikit-learn), whose 64 grey
levels scaled to [0, 1] are the features (``run_automl`` with ``text_candidates=False``, as for images).

A second table compares other rankings of the same probabilities at the same k (cleanlab alone, ranked by
self-confidence or normalized margin; every item ranked by ``1 - p(given label)``, no filter), and a third
shows the noise floor: how many correctly labelled items the out-of-fold model itself contradicts.

A fourth sets LoopML beside the field's tool, cleanlab's ``Datalab`` (``make install-bench``: its ``datalab``
extra) with its default settings (``Datalab(data, label_name=...)``, ``find_issues(pred_probs=...)``), every item
ranked by its label-issue score (lowest first) and the top k taken, on (a) the same ``run_automl`` out-of-fold
probabilities and (b) those of a plain scikit-learn ``LogisticRegression(max_iter=1000)`` on the same features
(``cross_val_predict(..., method="predict_proba")``, 5 shuffled stratified folds); ``find_label_issues`` on (b)
too. Mean ± standard error over seeds, and the verdict: LoopML's precision@k at least Datalab's (a) and (b) on
every data set, and at least 0.8 on BBC News.

Embeddings are cached under ``$LOOPML_HOME/bench`` (shared with ``bench/automl_speed.py``).

    .venv/bin/python bench/label_issues.py [--quick] [--seeds 3] [--noise 0.05] [--disagreement-confidence 0.9]
"""

from __future__ import annotations

import argparse
import contextlib
import math
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
from loopml.label_issues import (  # noqa: E402
    BOTH,
    CONFIDENT_DISAGREEMENT,
    CONFIDENT_LEARNING,
    LOW_GIVEN_PROBA,
    find_label_issues,
)

TARGET = 0.7
BBC_PRECISION_GOAL = 0.8  # LoopML's precision@k on BBC News, beside Datalab
CLEAN_DATASETS = ("digits",)  # labels clean to begin with; features, not texts
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
    flagged: int  # rows find_label_issues returned (as many as its detectors flagged)
    precision: float
    recall: float
    cv_accuracy: float
    automl_s: float
    find_s: float
    by_reason: dict[str, tuple[int, int]]  # reason -> (rows, planted flips among them)
    alternatives: dict[str, float] = field(default_factory=dict)  # ranking -> precision@k
    clean_contradicted: int = 0  # correctly labelled items whose out-of-fold argmax is another label
    flips_contradicted: int = 0  # flipped items whose out-of-fold argmax is another label than the given one
    rankings: dict[str, float] = field(default_factory=dict)  # ranking (RANKINGS) -> precision@k
    logistic_accuracy: float = 0.0  # out-of-fold accuracy of the logistic regression on the noisy labels
    datalab_s: float = 0.0  # both Datalab runs


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


LOOPML = "LoopML: find_label_issues, run_automl OOF"
DATALAB = "Datalab, run_automl OOF"
DATALAB_LR = "Datalab, LogisticRegression OOF"
LOOPML_LR = "find_label_issues, LogisticRegression OOF"
RANKINGS = (LOOPML, DATALAB, DATALAB_LR, LOOPML_LR)


def require_datalab() -> None:
    """Exit with what to run when cleanlab's Datalab (its ``datalab`` extra) is not installed."""
    try:
        import datasets  # noqa: F401  (what cleanlab's Datalab needs beyond cleanlab itself)
        from cleanlab import Datalab  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"bench/label_issues.py compares LoopML with cleanlab's Datalab ({error}): run `make install-bench` first"
        ) from None


def datalab_ranking(noisy: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Every item ranked by cleanlab Datalab's label-issue score, lowest (likeliest issue) first; Datalab with
    its default issue checks, from the probabilities alone (its progress lines go to stderr)."""
    from cleanlab import Datalab

    lab = Datalab({"label": noisy}, label_name="label", verbosity=0)
    with contextlib.redirect_stdout(sys.stderr):
        lab.find_issues(pred_probs=proba)
    scores = lab.get_issues("label")["label_score"].to_numpy()
    return np.argsort(scores, kind="stable")


def logistic_oof(features: np.ndarray, noisy: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a plain logistic regression (5 shuffled stratified folds). BLAS runs on one
    thread: on 2 shared cores its threads spin against each other and the fit takes ten times longer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return cross_val_predict(LogisticRegression(max_iter=1000), features, noisy, cv=folds, method="predict_proba")


def issue_ranking(
    ids: list[str], noisy_labels: list[str], label_set: list[str], proba: np.ndarray, confidence: float
) -> np.ndarray:
    """Item indices in ``find_label_issues``' order (the rows it returns: as many as its detectors flag)."""
    issues = find_label_issues(ids, noisy_labels, label_set, proba, disagreement_confidence=confidence)
    return np.array(issues["item_id"].cast(int).to_list(), dtype=np.int64)


def load(name: str, encoder_id: str) -> tuple[list[str], list[str], np.ndarray]:
    """Texts (placeholders where the items are not text), labels and features of a data set."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        features = (digits.data / 16.0).astype(np.float32)
        return [f"digit image {i}" for i in range(len(features))], [str(t) for t in digits.target], features
    return load_with_embeddings(name, encoder_id)


def evaluate(name: str, seeds: int, share: float, size: int | None, confidence: float, encoder_id: str) -> list[Run]:
    from loopml.automl import run_automl

    texts, labels, emb = load(name, encoder_id)
    is_text = name not in CLEAN_DATASETS
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
        result = run_automl(
            texts,
            emb,
            noisy_labels,
            label_set,
            seed=seed,
            encoder_id=encoder_id if is_text else None,
            text_candidates=is_text,
        )
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
            for reason in (CONFIDENT_LEARNING, CONFIDENT_DISAGREEMENT, BOTH, LOW_GIVEN_PROBA)
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
        logistic = logistic_oof(emb, noisy, seed)
        run.logistic_accuracy = float(np.mean(logistic.argmax(axis=1) == noisy))
        started = time.perf_counter()
        run.rankings = {
            LOOPML: precision,
            DATALAB: at_k(datalab_ranking(noisy, result.oof_proba), is_flip, k)[0],
            DATALAB_LR: at_k(datalab_ranking(noisy, logistic), is_flip, k)[0],
        }
        run.datalab_s = time.perf_counter() - started
        run.rankings[LOOPML_LR] = at_k(issue_ranking(ids, noisy_labels, label_set, logistic, confidence), is_flip, k)[0]
        runs.append(run)
        print(
            f"  {name} seed {seed}: P@k {precision:.3f} R@k {recall:.3f} ({issues.height} returned, k={k}), "
            f"run_automl {automl_s:.1f} s, find_label_issues {find_s:.3f} s; Datalab P@k "
            f"{run.rankings[DATALAB]:.3f} (run_automl OOF), {run.rankings[DATALAB_LR]:.3f} (LR OOF), "
            f"{run.datalab_s:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return runs


def mean(values: list[float], fmt: str = ".3f") -> str:
    return format(statistics.mean(values), fmt)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean over seeds (nan for one seed)."""
    from scipy.stats import sem

    return float(np.mean(values)), float(sem(values)) if len(values) > 1 else math.nan


def mean_se_text(values: list[float]) -> str:
    value, se = mean_se(values)
    return f"{value:.3f}" + ("" if math.isnan(se) else f" ±{se:.3f}")


def print_field(results: dict[str, list[Run]]) -> None:
    """LoopML beside cleanlab's Datalab: precision@k per ranking, mean ± standard error; the verdict."""
    seeds = len(next(iter(results.values())))
    print(
        f"\n## Beside cleanlab's Datalab (default settings): precision@k, mean ± standard error over {seeds} seed(s)\n"
    )
    header = ["data set", "k", *RANKINGS, "LoopML rows taken", "LR OOF accuracy", "LoopML - best Datalab (paired)"]
    print(markdown_row([*header, "LoopML >= both Datalab"]))
    print("|---|" + "---:|" * (len(RANKINGS) + 4) + "---|")
    verdict = True
    for name, runs in results.items():
        means = {ranking: statistics.mean(r.rankings[ranking] for r in runs) for ranking in RANKINGS}
        at_least = means[LOOPML] >= max(means[DATALAB], means[DATALAB_LR])
        verdict &= at_least and (name != "bbc_news" or means[LOOPML] >= BBC_PRECISION_GOAL)
        cells = [name, runs[0].k, *(mean_se_text([r.rankings[ranking] for r in runs]) for ranking in RANKINGS)]
        taken = mean([min(r.flagged, r.k) for r in runs], ".1f")
        best = max((DATALAB, DATALAB_LR), key=lambda ranking: means[ranking])
        difference, difference_se = mean_se([r.rankings[LOOPML] - r.rankings[best] for r in runs])
        paired = f"{difference:+.3f}" + ("" if math.isnan(difference_se) else f" ±{difference_se:.3f}")
        accuracy = mean([r.logistic_accuracy for r in runs], ".4f")
        print(markdown_row([*cells, taken, accuracy, paired, "yes" if at_least else "NO"]))
    datalab_s = statistics.mean(r.datalab_s for runs in results.values() for r in runs)
    print(
        f"\n(LoopML's precision is over the rows it returns, at most k: as many as its detectors flag, the lowest "
        f"p(given) of all items first; Datalab ranks every item. Datalab, both runs: {datalab_s:.1f} s per seed and "
        "data set.)"
    )
    print(
        f"\nVerdict: LoopML's precision@k at least Datalab's on both probabilities on every data set and >= "
        f"{BBC_PRECISION_GOAL} on BBC News (means): {'MET' if verdict else 'NOT MET'}"
    )


def print_results(results: dict[str, list[Run]], share: float) -> int:
    seeds = len(next(iter(results.values())))
    print(f"## Planted label errors ({share:.0%} flipped), top k = number of flips (mean over {seeds} seeds)\n")
    header = [
        "data set",
        "items",
        "k (flips)",
        "CV accuracy",
        "returned",
        "CL only (flips)",
        "disagreement only (flips)",
        "both (flips)",
        "rank only (flips)",
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
        for reason in (CONFIDENT_LEARNING, CONFIDENT_DISAGREEMENT, BOTH, LOW_GIVEN_PROBA):
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
    print(
        '\n(± is half the range over seeds; "returned": as many rows as the detectors flagged, the lowest p(given) '
        'first; "rank only": rows neither detector flagged; "(flips)" is how many of those rows are planted flips.)'
    )

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
    print_field(results)
    return misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 items per data set and 2 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per data set (default 3, quick 2)")
    parser.add_argument("--noise", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--size", type=int, default=None, help="items per data set (default all, quick 2000)")
    parser.add_argument("--disagreement-confidence", type=float, default=0.9, help="find_label_issues' threshold")
    parser.add_argument("--encoder", default=DEFAULT_TEXT_ENCODER, help="text encoder of the embeddings")
    parser.add_argument("--data", choices=[*DATASETS, *CLEAN_DATASETS], action="append", help="only these data sets")
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 3)
    size = args.size or (2000 if args.quick else None)
    warnings.filterwarnings("ignore")
    require_datalab()

    import cleanlab

    from loopml.automl import run_automl

    texts, labels, emb = load_with_embeddings("bbc_news")
    run_automl(texts[::10], emb[::10], labels[::10], sorted(set(labels[::10])))  # warm-up (lazy set-up)
    find_label_issues(["a", "b"], ["x", "y"], ["x", "y"], np.array([[0.9, 0.1], [0.2, 0.8]]))  # imports cleanlab

    started = time.perf_counter()
    confidence = args.disagreement_confidence
    results = {
        name: evaluate(name, seeds, args.noise, size, confidence, args.encoder)
        for name in args.data or [*DATASETS, *CLEAN_DATASETS]
    }
    print(
        f"# LoopML label-issue detection ({os.cpu_count()} CPUs, cleanlab {cleanlab.__version__}, "
        f"{'all items' if size is None else f'{size} items'} per data set, encoder {args.encoder} (digits: pixels), "
        f"disagreement_confidence {confidence})\n"
    )
    misses = print_results(results, args.noise)
    print(f"\ntarget (precision@k and recall@k >= {TARGET}) missed on {misses} data set(s); ", end="")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
