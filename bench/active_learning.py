"""Active learning: labels needed with LoopML's review sampling against random sampling, on both demo data sets.

The annotation loop, simulated with the ground truth as the annotator. A fixed stratified 20 % holdout (seed 0)
is the test set; the other 80 % is the unlabelled pool. Each run starts from 2 labelled items per class drawn
from the pool (per seed, the same start for both methods) and then, round after round, retrains with
``run_automl`` on the labelled items (the pool's other items passed as unlabelled, as the product passes a
function's unlabelled tasks: they shape the feature basis), measures holdout accuracy and labels 20 more pool
items chosen by

* LoopML: ``loopml.review.select_for_review`` on the unlabelled pool scored by the current model
  (``pool_candidates``: its answer, confidence and top-1 minus top-2 margin), with the review strategies that
  need no live traffic: unfamiliar items (far from every labelled item; the most central of each k-means
  cluster, shared evenly between the model's answers) while some label has fewer than 10 examples (the cold
  start: the whole round), then near past mistakes (pool items close to labelled items whose out-of-fold
  prediction was wrong or unsure), low confidence (smallest margins), rare predicted classes, and a small
  random slice;
* random: 20 pool items drawn uniformly.

A run stops once holdout accuracy reaches 95 % of the full-data accuracy (``run_automl`` on the whole pool), or
at the label cap (reported as ``>cap``). The loop retrains on every saved annotation, so labels are counted per
item: in the round that reaches the target, the model is retrained after each of its items (in the order they
were queued) and the first count that reaches the target is the labels needed. Reported: labels needed per
seed, their mean, and LoopML / random. Embeddings are cached under ``$LOOPML_HOME/bench`` (shared with
``bench/automl_speed.py``).

    .venv/bin/python bench/active_learning.py [--quick] [--seeds N] [--max-labels 3000] [--data NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automl_speed import DATASETS, load_with_embeddings  # noqa: E402

from loopml.dataset import content_hash  # noqa: E402
from loopml.encoders import DEFAULT_TEXT_ENCODER  # noqa: E402
from loopml.review import (  # noqa: E402
    ReviewContext,
    ReviewPolicy,
    parse_caps,
    past_mistakes,
    pool_candidates,
    select_for_review,
)

if TYPE_CHECKING:
    from loopml.automl import AutoMLResult

ROUND = 20  # items labelled per round
START_PER_CLASS = 2
TARGET_SHARE = 0.95  # of full-data accuracy
# the review strategies on an unlabelled pool: during the cold start, unfamiliar items (coverage); after it,
# margin-based uncertainty dominates, near mistakes and rare predicted classes add a few items, and 10 % of
# each round stays random
# (as a deployment would set it: LOOPML_REVIEW_BUDGET=20 LOOPML_REVIEW_CAPS=<POOL_CAPS>; `--caps ""` measures the
# shipped default caps instead)
POOL_CAPS = "unfamiliar=0,near_mistake=4,low_confidence=12,rare_class=2"


def policy_with(caps: str) -> ReviewPolicy:
    """The review policy of a ``ROUND``-item budget with ``caps`` (``LOOPML_REVIEW_CAPS`` syntax) over the defaults."""
    return ReviewPolicy(budget=ROUND, caps={**ReviewPolicy().caps, **parse_caps(caps)}, random_share=0.1)


POLICY = policy_with(POOL_CAPS)
METHODS = ("LoopML", "random")


@dataclass
class Data:
    """One data set split into the unlabelled pool and the holdout."""

    name: str
    texts: list[str]
    emb: np.ndarray
    y: np.ndarray  # label strings
    hashes: np.ndarray
    label_set: list[str]
    pool: np.ndarray
    test: np.ndarray
    encoder_id: str

    def fit(self, rows: np.ndarray) -> AutoMLResult:
        """``run_automl`` on ``rows``; the rest of the pool are the function's unlabelled items."""
        from loopml.automl import run_automl

        rest = np.setdiff1d(self.pool, rows)
        return run_automl(
            [self.texts[i] for i in rows],
            self.emb[rows],
            list(self.y[rows]),
            self.label_set,
            encoder_id=self.encoder_id,
            unlabelled_embeddings=self.emb[rest] if len(rest) else None,
        )

    def accuracy(self, result: AutoMLResult) -> float:
        predicted = result.model.predict([self.texts[i] for i in self.test], self.emb[self.test])
        return float(np.mean(np.array(predicted) == self.y[self.test]))


@dataclass
class Run:
    """Labels and holdout accuracy after each round of one method on one seed."""

    labels: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    reached: int | None = None  # labels at which the target was first met


def load(name: str, encoder_id: str) -> Data:
    from sklearn.model_selection import train_test_split

    texts, labels, emb = load_with_embeddings(name, encoder_id)
    y = np.array(labels, dtype=object)
    pool, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    hashes = np.array([content_hash(t) for t in texts], dtype=object)
    return Data(name, texts, emb, y, hashes, sorted(set(labels)), np.sort(pool), np.sort(test), encoder_id)


def start_set(data: Data, seed: int) -> np.ndarray:
    """``START_PER_CLASS`` random pool items of each label."""
    rng = np.random.default_rng(1000 + seed)
    pool_y = data.y[data.pool]
    return np.concatenate(
        [rng.choice(data.pool[pool_y == label], START_PER_CLASS, replace=False) for label in data.label_set]
    )


def loopml_batch(
    data: Data, labelled: np.ndarray, unlabelled: np.ndarray, result: AutoMLResult, seed: int
) -> np.ndarray:
    """The next round chosen by LoopML's review sampling on the pool scored by the current model."""
    proba = result.model.predict_proba([data.texts[i] for i in unlabelled], data.emb[unlabelled])
    y_index = np.searchsorted(data.label_set, data.y[labelled].astype(str))
    wrong = past_mistakes(y_index, result.oof_proba, POLICY.low_margin)
    context = ReviewContext(
        training_label_counts=dict(Counter(data.y[labelled].tolist())),
        mistake_embeddings=data.emb[labelled][wrong],
        existing_hashes=frozenset(data.hashes[labelled].tolist()),
        training_embeddings=data.emb[labelled],
    )
    candidates = pool_candidates(
        [data.texts[i] for i in unlabelled], proba, data.label_set, ids=[str(i) for i in unlabelled]
    )
    chosen = select_for_review(candidates, data.emb[unlabelled], context, POLICY, seed=seed)
    return chosen["invocation_id"].cast(int).to_numpy()


def random_batch(data: Data, unlabelled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(unlabelled, min(ROUND, len(unlabelled)), replace=False)


def simulate(data: Data, method: str, seed: int, target: float, max_labels: int) -> Run:
    """Label round after round until holdout accuracy reaches ``target`` or ``max_labels`` are labelled."""
    labelled = start_set(data, seed)
    in_pool = np.zeros(len(data.y), dtype=bool)
    in_pool[data.pool] = True
    rng = np.random.default_rng(seed)
    run = Run()
    batch = labelled[:0]
    for round_no in range(10**6):
        result = data.fit(labelled)
        run.labels.append(len(labelled))
        run.accuracy.append(data.accuracy(result))
        if run.accuracy[-1] >= target:
            run.reached = len(labelled) - len(batch) + first_reaching_prefix(data, labelled, batch, target)
            break
        unlabelled_mask = in_pool.copy()
        unlabelled_mask[labelled] = False
        unlabelled = np.flatnonzero(unlabelled_mask)
        if len(labelled) >= max_labels or not len(unlabelled):
            break
        if method == "LoopML":
            batch = loopml_batch(data, labelled, unlabelled, result, seed=seed * 10_000 + round_no)
        else:
            batch = random_batch(data, unlabelled, rng)
        batch = batch[: max_labels - len(labelled)]
        labelled = np.concatenate([labelled, batch])
    return run


def first_reaching_prefix(data: Data, labelled: np.ndarray, batch: np.ndarray, target: float) -> int:
    """How many items of the round ``batch`` (the last ``len(batch)`` of ``labelled``, in the order they were
    queued) the annotator had labelled when the retrained model first reached ``target``; the whole round
    does. The loop retrains on every saved annotation, so the labels needed are counted per item, not per
    round."""
    before = len(labelled) - len(batch)
    for k in range(1, len(batch)):
        if data.accuracy(data.fit(labelled[: before + k])) >= target:
            return k
    return len(batch)


def full_accuracy(data: Data) -> float:
    return data.accuracy(data.fit(data.pool))


def cell(run: Run, max_labels: int) -> str:
    return str(run.reached) if run.reached is not None else f">{max_labels}"


def mean_labels(runs: list[Run], max_labels: int) -> tuple[float, bool]:
    """Mean labels needed (runs that missed count as the cap) and whether every run reached the target."""
    values = [run.reached if run.reached is not None else max_labels for run in runs]
    return statistics.mean(values), all(run.reached is not None for run in runs)


def evaluate(
    name: str, seeds: int, max_labels: int, encoder_id: str
) -> tuple[Data, float, dict[str, list[Run]], float]:
    started = time.perf_counter()
    data = load(name, encoder_id)
    full = full_accuracy(data)
    target = TARGET_SHARE * full
    print(f"  {name}: full-data accuracy {full:.4f}, target {target:.4f}", file=sys.stderr, flush=True)
    runs: dict[str, list[Run]] = {method: [] for method in METHODS}
    for seed in range(seeds):
        for method in METHODS:
            run = simulate(data, method, seed, target, max_labels)
            runs[method].append(run)
            print(
                f"  {name} seed {seed} {method}: {cell(run, max_labels)} labels "
                f"(last accuracy {run.accuracy[-1]:.4f}, {len(run.labels)} rounds)",
                file=sys.stderr,
                flush=True,
            )
    return data, full, runs, time.perf_counter() - started


def ratio_text(loopml: tuple[float, bool], random: tuple[float, bool]) -> str:
    """LoopML / random mean labels; a bound where runs stopped at the cap (their true count is higher)."""
    value = loopml[0] / random[0]
    if not loopml[1]:
        return f">={value:.2f}" if random[1] else "n/a"
    return f"{value:.2f}" if random[1] else f"<={value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed instead of 2")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per data set (default 2, quick 1)")
    parser.add_argument("--max-labels", type=int, default=None, help="label cap per run (default 3000)")
    parser.add_argument("--data", choices=list(DATASETS), action="append", help="only these data sets")
    parser.add_argument("--encoder", default=DEFAULT_TEXT_ENCODER, help="text encoder of the embeddings")
    parser.add_argument("--caps", default=POOL_CAPS, help="LoopML's caps per reason (LOOPML_REVIEW_CAPS syntax)")
    args = parser.parse_args()
    global POLICY
    POLICY = policy_with(args.caps)
    seeds = args.seeds or (1 if args.quick else 2)
    max_labels = args.max_labels or 3000
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results = {name: evaluate(name, seeds, max_labels, args.encoder) for name in args.data or DATASETS}

    print(
        f"# Active learning: labels to reach {TARGET_SHARE:.0%} of full-data holdout accuracy "
        f"({ROUND} labels per round from {START_PER_CLASS} per class; {seeds} seed(s); cap {max_labels}; "
        f"encoder {args.encoder})\n"
    )
    print(
        "| data set | pool | full-data accuracy | target | LoopML labels (per seed) | random labels (per seed) "
        "| LoopML / random | target (<= 0.5) met | s |"
    )
    print("|---|---:|---:|---:|---|---|---:|---|---:|")
    for name, (data, full, runs, seconds) in results.items():
        loopml, random = mean_labels(runs["LoopML"], max_labels), mean_labels(runs["random"], max_labels)
        per_seed = {m: ", ".join(cell(run, max_labels) for run in runs[m]) for m in METHODS}
        ratio = ratio_text(loopml, random)
        met = loopml[1] and loopml[0] / random[0] <= 0.5
        mean = {m: f"{v[0]:.0f}" if v[1] else f">={v[0]:.0f}" for m, v in (("LoopML", loopml), ("random", random))}
        print(
            f"| {name} | {len(data.pool)} | {full:.4f} | {TARGET_SHARE * full:.4f} | {mean['LoopML']} "
            f"({per_seed['LoopML']}) | {mean['random']} ({per_seed['random']}) | {ratio} | "
            f"{'yes' if met else 'NO'} | {seconds:.0f} |"
        )
    print(
        f"\nLoopML's policy per round: {POLICY.caps} plus a random slice of {POLICY.random_reserve} "
        f"(low_margin {POLICY.low_margin}, near_mistake_distance {POLICY.near_mistake_distance})."
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
