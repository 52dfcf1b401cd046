"""Active learning: labels needed with LoopML's review sampling against the field's query strategies and random.

The annotation loop, simulated with the ground truth as the annotator. A fixed stratified 20 % holdout (seed 0)
is the test set; the other 80 % is the unlabelled pool. Each run starts from 2 labelled items per class drawn
from the pool (per seed, the same start for every method) and then, round after round, retrains with
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
* the field's query strategies, from ``small-text`` (``make install-bench``), each queried through the library's own
  ``QueryStrategy.query`` on a ``TextDataset`` of the pool, with the same round's ``run_automl`` model behind
  small-text's classifier interface (``predict_proba`` on the pool) and the same cached embeddings (``query``'s
  ``embeddings`` argument): ``LeastConfidence``, ``BreakingTies`` (top-1 minus top-2 margin), ``EmbeddingKMeans``
  (the pool item nearest each of 20 k-means centres of the unlabelled embeddings) and ``RandomSampling`` (20 pool
  items drawn uniformly: the "random" of the first table). The two confidence strategies queue their picks most
  uncertain first; numpy's global generator, which small-text's random and k-means draws use, is seeded per
  round.

Every strategy starts from the same labelled items per seed, retrains the same ``run_automl`` model on the same
pool and is scored on the same holdout. small-text's ``GreedyCoreset`` is left out: on the 10,000-item
RottenTomatoes pool one 20-item query took 65 s with 200 labelled items and 135 s with 1,000 (2 busy cores), hours
per run.

A run stops once holdout accuracy reaches 95 % of the full-data accuracy (``run_automl`` on the whole pool), or
at the label cap (reported as ``>cap``). The loop retrains on every saved annotation, so labels are counted per
item: in the round that reaches the target, the model is retrained after each of its items (in the order they
were queued) and the first count that reaches the target is the labels needed. Reported: labels needed per
seed, their mean, and LoopML / random (the first table); then every strategy's mean with its standard error over
seeds, LoopML minus the best of the field's strategies (paired by seed: the same start set) and the verdict:
LoopML needs no more labels than the best of them on every data set and strictly fewer on at least one.
Embeddings are cached under ``$LOOPML_HOME/bench`` (shared with ``bench/automl_speed.py``).

    .venv/bin/python bench/active_learning.py [--quick] [--seeds N] [--max-labels 3000] [--data NAME]

Seeds: 3 on RottenTomatoes and 6 on BBC News (whose runs take seconds and vary most against their size);
``--quick`` 2 and 4; ``--seeds N`` sets both. On 2 cores shared with other benchmarks a full run took 27 minutes
and ``--quick`` 37 (busier cores): a RottenTomatoes seed 8 to 16 minutes, up to 9 of them ``EmbeddingKMeans``
(a k-means of the whole pool every round), a BBC News seed under a minute. Runs are deterministic per seed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
SEEDS = {"rotten_tomatoes": 3, "bbc_news": 6}  # per data set; --quick: QUICK_SEEDS
QUICK_SEEDS = {"rotten_tomatoes": 2, "bbc_news": 4}
LOOPML, RANDOM = "LoopML", "random"
FIELD = ("least confidence", "breaking ties", "embedding k-means", RANDOM)  # small-text's query strategies
METHODS = (LOOPML, *FIELD)


def field_strategies() -> dict[str, Any]:
    """small-text's query strategies by their names in the tables; a clear exit when the extra is missing."""
    try:
        from small_text.query_strategies import BreakingTies, EmbeddingKMeans, LeastConfidence, RandomSampling
    except ImportError as error:
        raise SystemExit(
            f"bench/active_learning.py compares LoopML with small-text's query strategies ({error}): "
            "run `make install-bench` first"
        ) from None
    strategies = (LeastConfidence(), BreakingTies(), EmbeddingKMeans(), RandomSampling())
    return dict(zip(FIELD, strategies, strict=True))


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
    row_of: dict[str, int] = field(default_factory=dict)  # text -> its first row (duplicates share the embedding)

    @property
    def y_index(self) -> np.ndarray:
        """Labels as indices into ``label_set``."""
        return np.searchsorted(self.label_set, self.y.astype(str))

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
    seconds: float = 0.0


def load(name: str, encoder_id: str) -> Data:
    from sklearn.model_selection import train_test_split

    texts, labels, emb = load_with_embeddings(name, encoder_id)
    y = np.array(labels, dtype=object)
    pool, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    hashes = np.array([content_hash(t) for t in texts], dtype=object)
    row_of = {text: i for i, text in reversed(list(enumerate(texts)))}
    return Data(name, texts, emb, y, hashes, sorted(set(labels)), np.sort(pool), np.sort(test), encoder_id, row_of)


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


@dataclass
class FieldModel:
    """The round's ``run_automl`` model behind the part of small-text's classifier interface that its confidence
    strategies call: ``predict_proba`` of a ``TextDataset`` of pool texts (rows found by text)."""

    data: Data
    result: AutoMLResult

    def predict_proba(self, dataset: Any) -> np.ndarray:
        """The model's calibrated probabilities (``LeastConfidence``, ``BreakingTies``)."""
        rows = np.array([self.data.row_of[text] for text in dataset.x], dtype=np.int64)
        return self.result.model.predict_proba(list(dataset.x), self.data.emb[rows])


def field_batch(
    data: Data, strategy: Any, labelled: np.ndarray, unlabelled: np.ndarray, result: AutoMLResult, seed: int
) -> np.ndarray:
    """The next round chosen by a small-text query strategy (``strategy.query``) on a ``TextDataset`` of the pool
    whose unlabelled items carry small-text's unlabelled marker; the confidence strategies' picks are queued most
    uncertain first (their ``scores_``). The embedding strategy gets the cached embeddings through ``query``'s
    ``embeddings`` argument (rows: the unlabelled, then the labelled items): small-text 1.4.1's ``TextDataset``
    views read ``np.lib.index_tricks``, which numpy 2 made private, so ``clf.embed`` on a view fails here."""
    from small_text.base import LABEL_UNLABELED
    from small_text.data import TextDataset
    from small_text.query_strategies import ConfidenceBasedQueryStrategy, EmbeddingBasedQueryStrategy

    labelled_at, unlabelled_at = np.searchsorted(data.pool, labelled), np.searchsorted(data.pool, unlabelled)
    y = np.full(len(data.pool), LABEL_UNLABELED, dtype=np.int64)
    y[labelled_at] = data.y_index[labelled]
    dataset = TextDataset([data.texts[i] for i in data.pool], y, target_labels=np.arange(len(data.label_set)))
    np.random.seed(seed)  # small-text's random and k-means draws use numpy's global generator
    model = FieldModel(data, result)
    n = min(ROUND, len(unlabelled))
    if isinstance(strategy, EmbeddingBasedQueryStrategy):
        embeddings = data.emb[np.concatenate([unlabelled, labelled])]
        chosen = strategy.query(model, dataset, unlabelled_at, labelled_at, y[labelled_at], n=n, embeddings=embeddings)
    else:
        chosen = strategy.query(model, dataset, unlabelled_at, labelled_at, y[labelled_at], n=n)
    chosen = np.asarray(chosen)
    if isinstance(strategy, ConfidenceBasedQueryStrategy):
        scores = np.asarray(strategy.scores_)[chosen]
        chosen = chosen[np.argsort(scores if strategy.lower_is_better else -scores, kind="stable")]
    return data.pool[chosen]


def simulate(data: Data, method: str, seed: int, target: float, max_labels: int) -> Run:
    """Label round after round until holdout accuracy reaches ``target`` or ``max_labels`` are labelled."""
    started = time.perf_counter()
    strategy = field_strategies().get(method)  # None: LoopML
    labelled = start_set(data, seed)
    in_pool = np.zeros(len(data.y), dtype=bool)
    in_pool[data.pool] = True
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
        round_seed = seed * 10_000 + round_no
        if strategy is None:
            batch = loopml_batch(data, labelled, unlabelled, result, seed=round_seed)
        else:
            batch = field_batch(data, strategy, labelled, unlabelled, result, seed=round_seed)
        batch = batch[: max_labels - len(labelled)]
        labelled = np.concatenate([labelled, batch])
    run.seconds = time.perf_counter() - started
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
                f"(last accuracy {run.accuracy[-1]:.4f}, {len(run.labels)} rounds, {run.seconds:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return data, full, runs, time.perf_counter() - started


def needed(runs: list[Run], max_labels: int) -> np.ndarray:
    """Labels needed per seed; a run that missed the target counts as the cap (a lower bound)."""
    return np.array([run.reached if run.reached is not None else max_labels for run in runs], dtype=float)


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean over seeds (nan for one seed)."""
    from scipy.stats import sem

    return float(np.mean(values)), float(sem(values)) if len(values) > 1 else math.nan


def se_text(mean: float, se: float, capped: bool = False) -> str:
    """``mean ±se`` in labels; ``>=`` when some run stopped at the cap."""
    bound = ">=" if capped else ""
    return f"{bound}{mean:.0f}" + ("" if math.isnan(se) else f" ±{se:.0f}")


def best_field(runs: dict[str, list[Run]], max_labels: int) -> str:
    """The field's strategy with the fewest labels needed on average."""
    return min(FIELD, key=lambda method: float(np.mean(needed(runs[method], max_labels))))


def print_field_comparison(
    results: dict[str, tuple[Data, float, dict[str, list[Run]], float]], max_labels: int
) -> None:
    """Every strategy's labels needed (mean ± standard error over seeds), LoopML against the best of the field's
    (paired by seed), time per run and the verdict."""
    print(
        "\n## Beside small-text's query strategies: labels to reach the target (mean ± standard error over seeds; "
        "per seed in brackets; >= where a run stopped at the cap, counted as the cap)\n"
    )
    print(f"| data set | seeds | {' | '.join(METHODS)} | best of small-text | LoopML - best (paired) |")
    print("|---|---:|" + "---:|" * len(METHODS) + "---|---:|")
    verdicts: list[tuple[bool, bool]] = []
    for name, (_data, _full, runs, _seconds) in results.items():
        cells = []
        for method in METHODS:
            values = needed(runs[method], max_labels)
            capped = any(run.reached is None for run in runs[method])
            per_seed = ", ".join(cell(run, max_labels) for run in runs[method])
            cells.append(f"{se_text(*mean_se(values), capped)} ({per_seed})")
        best = best_field(runs, max_labels)
        difference = needed(runs[LOOPML], max_labels) - needed(runs[best], max_labels)
        diff_mean, diff_se = mean_se(difference)
        diff_cell = f"{diff_mean:+.0f}" + ("" if math.isnan(diff_se) else f" ±{diff_se:.0f}")
        print(f"| {name} | {len(runs[LOOPML])} | {' | '.join(cells)} | {best} | {diff_cell} |")
        loopml_mean, best_mean = (
            float(np.mean(needed(runs[LOOPML], max_labels))),
            float(np.mean(needed(runs[best], max_labels))),
        )
        verdicts.append((loopml_mean <= best_mean, loopml_mean < best_mean))

    print("\n| minutes per run (mean) | " + " | ".join(METHODS) + " |")
    print("|---|" + "---:|" * len(METHODS))
    for name, (_data, _full, runs, _seconds) in results.items():
        minutes = [statistics.mean(run.seconds for run in runs[m]) / 60 for m in METHODS]
        print(f"| {name} | " + " | ".join(f"{value:.1f}" for value in minutes) + " |")

    no_more, strictly = all(v[0] for v in verdicts), any(v[1] for v in verdicts)
    print(
        f"\nVerdict: LoopML's review sampling needs no more labels than the best small-text strategy on every data "
        f"set ({'yes' if no_more else 'NO'}) and strictly fewer on at least one ({'yes' if strictly else 'NO'}), "
        f"on the means: {'MET' if no_more and strictly else 'NOT MET'}. A difference within about two paired "
        "standard errors is within the seeds' noise."
    )


def ratio_text(loopml: tuple[float, bool], random: tuple[float, bool]) -> str:
    """LoopML / random mean labels; a bound where runs stopped at the cap (their true count is higher)."""
    value = loopml[0] / random[0]
    if not loopml[1]:
        return f">={value:.2f}" if random[1] else "n/a"
    return f"{value:.2f}" if random[1] else f"<={value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"seeds {QUICK_SEEDS} instead of {SEEDS}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds on every data set")
    parser.add_argument("--max-labels", type=int, default=None, help="label cap per run (default 3000)")
    parser.add_argument("--data", choices=list(DATASETS), action="append", help="only these data sets")
    parser.add_argument("--encoder", default=DEFAULT_TEXT_ENCODER, help="text encoder of the embeddings")
    parser.add_argument("--caps", default=POOL_CAPS, help="LoopML's caps per reason (LOOPML_REVIEW_CAPS syntax)")
    args = parser.parse_args()
    global POLICY
    POLICY = policy_with(args.caps)
    seeds = {name: args.seeds or (QUICK_SEEDS if args.quick else SEEDS)[name] for name in args.data or DATASETS}
    max_labels = args.max_labels or 3000
    warnings.filterwarnings("ignore")
    field_strategies()  # fails now, not after the first data set, without the bench extra
    started = time.perf_counter()
    results = {name: evaluate(name, count, max_labels, args.encoder) for name, count in seeds.items()}

    print(
        f"# Active learning: labels to reach {TARGET_SHARE:.0%} of full-data holdout accuracy "
        f"({ROUND} labels per round from {START_PER_CLASS} per class; seeds {seeds}; cap {max_labels}; "
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
        f"(low_margin {POLICY.low_margin}, near_mistake_distance {POLICY.near_mistake_distance}); "
        "random is small-text's RandomSampling."
    )
    print_field_comparison(results, max_labels)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
