"""Active sampling of live calls for human review: the ``review_set``.

Every strategy scores every candidate call with a :class:`Signal` (the calls it applies to and a priority in
[0, 1], higher first):

* ``flagged``: a user flagged the answer, or feedback gave a true label other than the answer;
* ``disagreement``: the primary and the canary answered differently (only where the canary scored the call);
* ``unfamiliar``: the call's input is among the ``unfamiliar_share`` of calls farthest (cosine distance to the
  nearest training example) from the training data: the model answers from the edge of what it was taught.
  Chosen for coverage: the applicable calls are clustered
  into as many k-means clusters as items wanted and the most central call of each cluster is taken, so the
  picks are typical of the unfamiliar traffic rather than its oddest outliers. **Cold start:** while some label
  has fewer than ``cold_start_per_label`` training examples, the model's confidence says little and this reason
  may fill everything the user-driven reasons leave, the random slice's reserve included (what is left over
  still goes to the random slice); its picks are then shared evenly between the model's answers and alternate
  between them, so that the first annotations teach every label alike;
* ``near_mistake``: at least ``near_mistake_k`` items the model got wrong or was unsure of lie within cosine
  distance ``near_mistake_distance`` (scikit-learn's exact nearest-neighbour search: the small mistakes set is
  the index, candidates are queried in chunks);
* ``low_confidence``: the answering version's top-1 minus top-2 score is below ``low_margin``;
* ``rare_class``: the answer is a label whose share of the outputs, or of the training data, is below
  ``rare_share``;
* ``random``: every call, in a random order (an unbiased slice: what reviewers find there estimates the live
  accuracy without the other strategies' skew).

Allocation (:func:`select_for_review`): calls are de-duplicated by text (the newest call represents the text and the
text carries the reasons of all its calls); texts already in Label Studio (``existing_hashes``) are dropped.
``budget x random_share`` items (rounded half up) are kept for the random slice. The rest of the budget is filled
reason by reason in :data:`REASONS` order, each reason taking its highest-priority texts (newest first on ties) up
to its cap (``unfamiliar`` takes the most central text of each k-means cluster instead, and in a cold start comes
right after ``disagreement`` and takes all the room left); a text chosen by one reason is not chosen again. With
``diversity > 1`` the model-driven reasons (:data:`DIVERSE_REASONS`) keep one text per k-means cluster of their best
``diversity x cap`` texts, so a batch does not spend the budget on near-identical texts. The random slice then takes
its reserve plus whatever budget the other reasons left unused. Each selected item names the reason that chose it
(``reason``, with that reason's ``priority``) and every reason that applied to it (``reasons``, in :data:`REASONS`
order).

:func:`pool_candidates` and :func:`pool_scores` apply the same strategies to an unlabelled pool scored by a
model (the active-learning setting of ``bench/active_learning.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl

from loopml.dataset import input_hash

REASONS: tuple[str, ...] = (
    "flagged",
    "disagreement",
    "near_mistake",
    "low_confidence",
    "unfamiliar",
    "rare_class",
    "random",
)
FLAGGED, DISAGREEMENT, NEAR_MISTAKE, LOW_CONFIDENCE, UNFAMILIAR, RARE_CLASS, RANDOM = REASONS
# during a cold start the model's confidence says little: unfamiliar calls come right after the users' reasons
COLD_START_ORDER: tuple[str, ...] = (
    FLAGGED,
    DISAGREEMENT,
    UNFAMILIAR,
    NEAR_MISTAKE,
    LOW_CONFIDENCE,
    RARE_CLASS,
    RANDOM,
)
DIVERSE_REASONS: tuple[str, ...] = (NEAR_MISTAKE, LOW_CONFIDENCE, RARE_CLASS)  # model-driven: spread when asked

CANDIDATE_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "input_text",
    "label",
    "confidence",
    "margin",
    "primary_label",
    "canary_label",
    "flagged",
    "true_label",
    "answered_by",
)

REVIEW_SCHEMA: dict[str, pl.DataType] = {
    "invocation_id": pl.String(),
    "input_text": pl.String(),
    "content_hash": pl.String(),
    "reason": pl.String(),
    "reasons": pl.List(pl.String()),
    "priority": pl.Float64(),
    "label": pl.String(),
    "confidence": pl.Float64(),
    "created_at": pl.Datetime("us", "UTC"),
}

COVER_SAMPLE = 4_096  # unfamiliar calls clustered at most (a random sample of them when there are more)
UNFAMILIAR_SAMPLE = 16_384  # calls (and training examples) measured for unfamiliarity at most (a uniform sample)
QUERY_CHUNK_ROWS = 16_384  # candidates per nearest-neighbour query: [chunk, mistakes] distances at a time
_FIRST_BLOCK = 64  # rows ranked at once when filling a reason (grows when hashes reject many)


def _default_caps() -> dict[str, int]:
    return {FLAGGED: 20, DISAGREEMENT: 10, UNFAMILIAR: 5, NEAR_MISTAKE: 10, LOW_CONFIDENCE: 15, RARE_CLASS: 10}


def parse_caps(text: str) -> dict[str, int]:
    """``"near_mistake=4, low_confidence=12"`` -> caps per reason (``LOOPML_REVIEW_CAPS``); unknown reasons and
    malformed entries raise :class:`ValueError` naming the known reasons."""
    caps: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        reason, sep, value = entry.partition("=")
        reason = reason.strip()
        if not sep or reason not in REASONS or not value.strip().isdigit():
            raise ValueError(f"review cap {entry!r} is not reason=count; reasons: {', '.join(REASONS)}")
        caps[reason] = int(value)
    return caps


@dataclass(frozen=True)
class ReviewPolicy:
    """How many calls to send for review, and when each strategy applies.

    A reason missing from ``caps`` is limited by the budget alone (by default the random slice, which takes its
    reserve plus whatever budget the other reasons leave unused).
    """

    budget: int = 50  # items per function per sampling run
    caps: dict[str, int] = field(default_factory=_default_caps)  # max items per reason
    random_share: float = 0.1  # share of the budget kept for the unbiased random slice
    low_margin: float = 0.2  # top-1 minus top-2 score below this = low confidence
    rare_share: float = 0.1  # a label is rare when its share of outputs or of training data is below this
    near_mistake_k: int = 1
    near_mistake_distance: float = 0.35  # cosine distance to a past mistake (embeddings are L2-normalised)
    diversity: int = 1  # > 1: DIVERSE_REASONS keep one text per k-means cluster of their best diversity x cap texts
    unfamiliar_share: float = 0.5  # share of the calls, farthest from the training data first, that are unfamiliar
    cold_start_per_label: int = 10  # below this many training examples of some label, unfamiliar may take the room

    def __post_init__(self) -> None:
        unknown = sorted(set(self.caps) - set(REASONS))
        if unknown:
            raise ValueError(f"caps has unknown reasons {unknown}; known: {list(REASONS)}")
        if self.budget < 0 or any(cap < 0 for cap in self.caps.values()):
            raise ValueError("budget and caps must be >= 0")
        if not 0.0 <= self.random_share <= 1.0 or not 0.0 <= self.rare_share <= 1.0:
            raise ValueError("random_share and rare_share must be in [0, 1]")
        if self.low_margin < 0.0 or not 0.0 <= self.near_mistake_distance <= 2.0 or self.near_mistake_k < 1:
            raise ValueError("low_margin must be >= 0, near_mistake_distance in [0, 2] and near_mistake_k >= 1")
        if self.diversity < 1:
            raise ValueError(f"diversity must be >= 1, got {self.diversity}")
        if not 0.0 <= self.unfamiliar_share <= 1.0 or self.cold_start_per_label < 0:
            raise ValueError("unfamiliar_share must be in [0, 1] and cold_start_per_label >= 0")

    def cap(self, reason: str) -> int:
        """Most items ``reason`` may take in one run."""
        return min(self.caps.get(reason, self.budget), self.budget)

    def cold_start(self, training_label_counts: dict[str, int]) -> bool:
        """Whether some label of the training data has fewer than ``cold_start_per_label`` examples."""
        return not training_label_counts or min(training_label_counts.values()) < self.cold_start_per_label

    @property
    def random_reserve(self) -> int:
        """Items kept for the random slice: ``budget * random_share`` rounded half up (at most its cap)."""
        return min(self.cap(RANDOM), int(np.floor(self.budget * self.random_share + 0.5)))


@dataclass(frozen=True)
class ReviewContext:
    """What the sampling needs besides the calls: the training data's shape and past mistakes."""

    training_label_counts: dict[str, int]
    mistake_embeddings: np.ndarray  # [m, d] items the model got wrong or was unsure of (may be empty [0, d])
    existing_hashes: frozenset[str]  # input hashes (loopml.dataset.input_hash) of inputs already in Label Studio
    training_embeddings: np.ndarray | None = None  # [t, d] the training examples (None: unfamiliar never applies)
    input_type: str = "text"  # how inputs are hashed: a text's content, an image's bytes


@dataclass(frozen=True)
class Signal:
    """One strategy's verdict on ``n`` rows: where it applies and a priority in [0, 1] (higher first)."""

    applies: np.ndarray  # bool [n]
    priority: np.ndarray  # float64 [n]; 0 where the strategy does not apply


# --- strategies -------------------------------------------------------------------------------------------


def flagged_signal(candidates: pl.DataFrame) -> Signal:
    """Calls a user flagged, or whose feedback names a true label other than the answer.

    Priority 1 for both, 0.5 for either alone.
    """
    corrected = pl.col("true_label").is_not_null() & (pl.col("true_label") != pl.col("label").fill_null(""))
    marks = candidates.select(
        pl.col("flagged").fill_null(False).alias("flagged"), corrected.fill_null(False).alias("corrected")
    )
    flagged, corrected_ = marks["flagged"].to_numpy(), marks["corrected"].to_numpy()
    return Signal(flagged | corrected_, (flagged.astype(np.float64) + corrected_) / 2.0)


def disagreement_signal(candidates: pl.DataFrame) -> Signal:
    """Calls where primary and canary gave different labels; the less certain answer (smaller margin) first."""
    differs = (
        pl.col("primary_label").is_not_null()
        & pl.col("canary_label").is_not_null()
        & (pl.col("primary_label") != pl.col("canary_label"))
    )
    applies = candidates.select(differs.fill_null(False))[:, 0].to_numpy()
    priority = 1.0 - np.clip(_float_column(candidates, "margin", fill=0.0), 0.0, 1.0)
    return Signal(applies, np.where(applies, priority, 0.0))


def near_mistake_signal(
    embeddings: np.ndarray,
    mistakes: np.ndarray,
    k: int = 1,
    max_distance: float = 0.35,
    rows: np.ndarray | None = None,
    chunk_rows: int = QUERY_CHUNK_ROWS,
) -> Signal:
    """Rows (of ``embeddings``, or only ``rows`` of it) within cosine distance ``max_distance`` of ``k`` mistakes.

    The distance is the one to the ``k``-th nearest mistake (:func:`kth_nearest_distance`); priority
    ``1 - distance / max_distance``.
    """
    n = len(embeddings) if rows is None else len(rows)
    distance = np.full(n, np.inf)
    if n and len(mistakes) >= k and max_distance > 0:
        distance = kth_nearest_distance(embeddings, mistakes, k, rows, chunk_rows)
    applies = distance < max_distance
    priority = np.where(applies, 1.0 - distance / max(max_distance, 1e-12), 0.0)
    return Signal(applies, np.clip(priority, 0.0, 1.0))


def unfamiliar_signal(
    embeddings: np.ndarray,
    training: np.ndarray | None,
    share: float = 0.5,
    rows: np.ndarray | None = None,
    chunk_rows: int = QUERY_CHUNK_ROWS,
    sample: int = UNFAMILIAR_SAMPLE,
    seed: int = 0,
) -> Signal:
    """The ``share`` of rows (of ``embeddings``, or only ``rows``) farthest from their nearest training example
    (cosine distance); priority: that distance (at most 1). Never applies without training embeddings.

    Coverage needs a faithful picture of the traffic, not every call: beyond ``sample`` rows, a uniform random
    sample of ``sample`` rows is measured (against at most ``sample`` training examples, also sampled) and the
    signal applies within it only, which keeps a review run over a million calls within seconds.
    """
    n = len(embeddings) if rows is None else len(rows)
    applies, priority = np.zeros(n, dtype=bool), np.zeros(n)
    if training is None or len(training) == 0 or n == 0 or share <= 0:
        return Signal(applies, priority)
    rng = np.random.default_rng(seed)
    if len(training) > sample:
        training = training[np.sort(rng.choice(len(training), sample, replace=False))]
    measured = np.sort(rng.choice(n, sample, replace=False)) if n > sample else np.arange(n)
    source = measured if rows is None else rows[measured]
    distance = kth_nearest_distance(embeddings, training, 1, source, chunk_rows)
    far = distance >= np.quantile(distance, 1.0 - share)
    applies[measured] = far
    priority[measured] = np.where(far, np.minimum(distance, 1.0), 0.0)
    return Signal(applies, priority)


def kth_nearest_distance(
    embeddings: np.ndarray,
    mistakes: np.ndarray,
    k: int = 1,
    rows: np.ndarray | None = None,
    chunk_rows: int = QUERY_CHUNK_ROWS,
) -> np.ndarray:
    """Cosine distance from each row (of ``embeddings``, or only ``rows``) to its ``k``-th nearest mistake.

    scikit-learn's exact ``NearestNeighbors`` (brute force, Euclidean: for L2-normalised vectors the cosine
    distance is half the squared Euclidean one, and scikit-learn's Euclidean reduction is its fastest path) with
    the small mistakes set as the index; candidates are queried ``chunk_rows`` at a time so memory stays at
    ``chunk_rows x len(mistakes)`` distances whatever the number of candidates.
    """
    from sklearn.neighbors import NearestNeighbors

    index = np.asarray(mistakes, dtype=np.float32)
    if index.ndim != 2 or index.shape[1] != embeddings.shape[1] or len(index) < k:
        raise ValueError(
            f"need at least k={k} mistake embeddings of dimension {embeddings.shape[1]}, got {list(index.shape)}"
        )
    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(index)
    n = len(embeddings) if rows is None else len(rows)
    distance = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        queries = embeddings[start:stop] if rows is None else embeddings[rows[start:stop]]
        found, _ = search.kneighbors(np.asarray(queries, dtype=np.float32))
        distance[start:stop] = found[:, k - 1] ** 2 / 2.0
    return np.clip(distance, 0.0, 2.0)


def past_mistakes(given: np.ndarray, proba: np.ndarray, low_margin: float = 0.2) -> np.ndarray:
    """Which training items count as past mistakes for the near-mistake reason: the model got them wrong out of
    fold (``proba``'s top column is not ``given``, a column index per row) or was unsure of them (top-1 minus
    top-2 probability below ``low_margin``)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.size == 0:
        return np.zeros(len(proba), dtype=bool)
    top2 = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.hstack([np.zeros_like(proba), proba])
    return (proba.argmax(axis=1) != np.asarray(given)) | (top2[:, 1] - top2[:, 0] < low_margin)


def low_confidence_signal(margin: np.ndarray, low_margin: float = 0.2) -> Signal:
    """Rows whose top-1 minus top-2 score is below ``low_margin``; priority ``1 - margin / low_margin``."""
    margin = np.asarray(margin, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        applies = margin < low_margin  # NaN (unknown margin) never applies
    priority = np.where(applies, 1.0 - np.clip(margin, 0.0, None) / max(low_margin, 1e-12), 0.0)
    return Signal(applies, priority)


def rare_class_signal(labels: pl.Series, training_label_counts: dict[str, int], rare_share: float = 0.1) -> Signal:
    """Rows answered with a label whose share of ``labels`` or of the training data is below ``rare_share``.

    A label never seen in training has training share 0 (rare) unless no training counts are known. Priority
    ``1 - share / rare_share`` with the smaller of the two shares: the rarest labels first.
    """
    shares = label_shares(labels, training_label_counts)
    share = labels.replace_strict(shares, default=1.0, return_dtype=pl.Float64).to_numpy()
    applies = share < rare_share
    return Signal(applies, np.where(applies, 1.0 - share / max(rare_share, 1e-12), 0.0))


def label_shares(labels: pl.Series, training_label_counts: dict[str, int]) -> dict[str, float]:
    """Per output label, the smaller of its share of ``labels`` and of the training data."""
    counts = labels.drop_nulls().value_counts()
    total = max(int(counts["count"].sum()) if counts.height else 0, 1)
    trained = sum(max(c, 0) for c in training_label_counts.values())
    shares: dict[str, float] = {}
    for label, count in counts.iter_rows():
        share = count / total
        if trained:
            share = min(share, max(training_label_counts.get(label, 0), 0) / trained)
        shares[label] = share
    return shares


def random_signal(n: int, seed: int = 0) -> Signal:
    """Every row, in a random order fixed by ``seed``."""
    return Signal(np.ones(n, dtype=bool), np.random.default_rng(seed).random(n))


# --- selection --------------------------------------------------------------------------------------------


def select_for_review(
    candidates: pl.DataFrame,
    embeddings: np.ndarray,
    context: ReviewContext,
    policy: ReviewPolicy = ReviewPolicy(),
    seed: int = 0,
) -> pl.DataFrame:
    """Choose up to ``policy.budget`` calls for human review; see the module docstring for the rules.

    ``candidates`` has the columns of :data:`CANDIDATE_COLUMNS` (``created_at`` naive means UTC);
    ``embeddings[i]`` is the L2-normalised vector of row ``i``. Returns a frame with the columns of
    :data:`REVIEW_SCHEMA` in selection order (reason by reason, highest priority first). Raises
    :class:`ValueError` for missing columns or misaligned embeddings.
    """
    _check_candidates(candidates, embeddings)
    if candidates.height == 0 or policy.budget == 0:
        return empty_review_set()
    candidates = candidates.with_columns(_utc(candidates["created_at"]))
    rep, signals = _text_signals(candidates, embeddings, context, policy, seed)
    reps = candidates[rep]
    picker = _Picker(
        texts=reps["input_text"].fill_null(""),
        recency=reps["created_at"].dt.epoch("us").fill_null(np.iinfo(np.int64).min).to_numpy(),
        existing=context.existing_hashes,
        chosen=np.zeros(len(rep), dtype=bool),
        vectors=lambda rows: embeddings[rep[rows]],
        answers=reps["label"].fill_null("").to_numpy(),
        seed=seed,
        input_type=context.input_type,
    )
    cold = policy.cold_start(context.training_label_counts)
    return _review_frame(reps, _allocate(signals, picker, policy, cold), signals)


def empty_review_set() -> pl.DataFrame:
    """A review set with no rows (the schema of :func:`select_for_review`)."""
    return pl.DataFrame(schema=REVIEW_SCHEMA)


def _check_candidates(candidates: pl.DataFrame, embeddings: np.ndarray) -> None:
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidates lack the columns {missing}; expected {list(CANDIDATE_COLUMNS)}")
    if embeddings.ndim != 2 or len(embeddings) != candidates.height:
        raise ValueError(
            f"embeddings must be [n, d] with one row per candidate ({candidates.height}), got {list(embeddings.shape)}"
        )


def _utc(created_at: pl.Series) -> pl.Series:
    dtype = created_at.dtype
    if not isinstance(dtype, pl.Datetime):
        created_at = created_at.cast(pl.Datetime("us"))
        dtype = created_at.dtype
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is None:
        created_at = created_at.dt.replace_time_zone("UTC")
    return created_at.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def _float_column(frame: pl.DataFrame, name: str, fill: float) -> np.ndarray:
    return frame[name].cast(pl.Float64).fill_null(fill).fill_nan(fill).to_numpy()


def _call_signals(candidates: pl.DataFrame, context: ReviewContext, policy: ReviewPolicy) -> dict[str, Signal]:
    """The strategies that depend on the call (answer, feedback, versions): one signal per row."""
    margin = candidates["margin"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return {
        FLAGGED: flagged_signal(candidates),
        DISAGREEMENT: disagreement_signal(candidates),
        LOW_CONFIDENCE: low_confidence_signal(margin, policy.low_margin),
        RARE_CLASS: rare_class_signal(candidates["label"], context.training_label_counts, policy.rare_share),
    }


def _text_signals(
    candidates: pl.DataFrame, embeddings: np.ndarray, context: ReviewContext, policy: ReviewPolicy, seed: int
) -> tuple[np.ndarray, dict[str, Signal]]:
    """One representative row per text (its newest call, ascending row order) and each strategy's signal per text.

    A text carries every reason any of its calls had, at the highest priority. Texts are keyed by their stripped
    form (exact, vectorised); variants that differ only in Unicode normalisation share a content hash and are
    merged when the hashes are checked during allocation.
    """
    per_call = _call_signals(candidates, context, policy)
    starts, order = _text_groups(candidates)
    last = np.append(starts[1:], len(order)) - 1
    rep = order[last]
    ascending = np.argsort(rep, kind="stable")
    signals: dict[str, Signal] = {}
    for reason, signal in per_call.items():
        best = np.maximum.reduceat(np.where(signal.applies, signal.priority, -1.0)[order], starts)[ascending]
        signals[reason] = Signal(best >= 0.0, np.maximum(best, 0.0))
    rep = rep[ascending]
    signals[NEAR_MISTAKE] = near_mistake_signal(
        embeddings,
        context.mistake_embeddings,
        policy.near_mistake_k,
        policy.near_mistake_distance,
        rows=None if len(rep) == len(embeddings) else rep,  # every row its own text: query slices, no copies
    )
    signals[UNFAMILIAR] = unfamiliar_signal(
        embeddings,
        context.training_embeddings,
        policy.unfamiliar_share,
        rows=None if len(rep) == len(embeddings) else rep,
        seed=seed,
    )
    signals[RANDOM] = random_signal(len(rep), seed)
    return rep, {r: signals[r] for r in REASONS}


def _text_groups(candidates: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by text (then oldest to newest call) and where each text's run starts in that order.

    Sorting on a 64-bit hash of the text first and comparing the texts themselves only on equal hashes is several
    times faster than grouping on the strings, and exact: a hash collision sorts the colliding texts apart.
    """
    ordered = (
        candidates.select(
            pl.col("input_text").fill_null("").str.strip_chars().alias("key"),
            pl.col("created_at").dt.epoch("us").alias("ts"),
            pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
        )
        .with_columns(pl.col("key").hash().alias("h"))
        .sort(["h", "key", "ts", "row"], nulls_last=False)
    )
    new_text = ordered.select(
        ((pl.col("h") != pl.col("h").shift()) | (pl.col("key") != pl.col("key").shift())).fill_null(True)
    )
    return np.flatnonzero(new_text.to_series().to_numpy()), ordered["row"].to_numpy()


@dataclass
class _Picker:
    """Allocation state: what is chosen, which hashes are taken, and hashes computed so far."""

    texts: pl.Series
    recency: np.ndarray
    existing: frozenset[str]
    chosen: np.ndarray
    vectors: Callable[[np.ndarray], np.ndarray]  # embeddings of rows
    answers: np.ndarray  # the model's answer (label) of each row; cold-start coverage balances them
    seed: int = 0
    input_type: str = "text"
    taken: set[str] = field(default_factory=set)
    hashes: dict[int, str] = field(default_factory=dict)

    def take(self, signal: Signal, want: int, diversity: int = 1) -> list[int]:
        """Up to ``want`` unchosen rows where ``signal`` applies, best first, skipping known or repeated texts.

        With ``diversity > 1`` the best ``diversity x want`` such rows are gathered and one per cluster is kept
        (:func:`spread`).
        """
        rows = self._acceptable(signal, want * diversity)
        if diversity > 1 and len(rows) > want:
            rows = spread(rows, self.vectors(rows), want, self.seed)
        return self._choose(rows[:want])

    def cover(self, signal: Signal, want: int, by_answer: bool = False) -> list[int]:
        """Up to ``want`` unchosen rows where ``signal`` applies that cover them: k-means into ``want`` clusters
        over (a random sample of at most :data:`COVER_SAMPLE` of) them, the most central row of each cluster.

        With ``by_answer`` the rows are covered per answer of the model, ``want`` shared evenly between the
        answers (the most frequent answer first when it does not divide), and the picks alternate between
        answers: the labels a cold start's annotations teach stay balanced even where one label's texts are
        far more varied than another's (k-means over all rows would give that label most of the clusters).
        """
        if want <= 0 or not signal.applies.any():
            return []
        shuffled = Signal(signal.applies, np.random.default_rng(self.seed).random(len(signal.applies)))
        rows = self._acceptable(shuffled, COVER_SAMPLE)
        groups = [rows]
        if by_answer:
            answers, counts = np.unique(self.answers[rows], return_counts=True)
            groups = [rows[self.answers[rows] == a] for a in answers[np.argsort(-counts, kind="stable")]]
        quotas = _share(want, [len(g) for g in groups])
        picks = [
            central(g, self.vectors(g), q, self.seed) if len(g) > q else g
            for g, q in zip(groups, quotas, strict=True)
            if q > 0
        ]
        interleaved = [int(p[i]) for i in range(max(map(len, picks), default=0)) for p in picks if i < len(p)]
        return self._choose(np.array(interleaved, dtype=np.int64))

    def _choose(self, rows: np.ndarray) -> list[int]:
        """Mark ``rows`` chosen (and their texts taken); returns them as a list."""
        for row in rows.tolist():
            self.taken.add(self.hashes[row])
            self.chosen[row] = True
        return rows.tolist()

    def _acceptable(self, signal: Signal, limit: int) -> np.ndarray:
        """Up to ``limit`` unchosen rows where ``signal`` applies, best first, whose text is new to the review."""
        found: list[int] = []
        seen: set[str] = set()
        remaining = np.flatnonzero(signal.applies & ~self.chosen)
        block = max(_FIRST_BLOCK, 4 * limit)
        while len(found) < limit and len(remaining):
            top, remaining = _best_rows(remaining, signal.priority, self.recency, block)
            for row, text in zip(top.tolist(), self.texts.gather(top).to_list(), strict=True):
                digest = self.hashes.setdefault(row, input_hash(text, self.input_type))
                if digest in self.existing or digest in self.taken or digest in seen:
                    continue
                seen.add(digest)
                found.append(row)
                if len(found) == limit:
                    break
            block *= 4
        return np.array(found, dtype=np.int64)


def spread(rows: np.ndarray, vectors: np.ndarray, want: int, seed: int = 0) -> np.ndarray:
    """``want`` of ``rows`` (best first) that cover ``vectors``: k-means into ``want`` clusters, the best of each.

    Keeps a batch from spending the review budget on near-identical texts; the result stays in ``rows`` order.
    """
    from sklearn.cluster import KMeans

    clusters = KMeans(n_clusters=want, n_init=1, random_state=seed).fit_predict(np.asarray(vectors, np.float32))
    _, first = np.unique(clusters, return_index=True)
    return rows[np.sort(first)]


def central(rows: np.ndarray, vectors: np.ndarray, want: int, seed: int = 0) -> np.ndarray:
    """``want`` of ``rows`` typical of ``vectors``: k-means into ``want`` clusters, the row nearest each centre,
    largest cluster first (an annotator who labels only the first few covers the most of ``rows``)."""
    from sklearn.cluster import KMeans

    vectors = np.asarray(vectors, np.float32)
    kmeans = KMeans(n_clusters=want, n_init=1, random_state=seed).fit(vectors)
    sizes = np.bincount(kmeans.labels_, minlength=want)
    nearest = kmeans.transform(vectors).argmin(axis=0)
    order = np.argsort(-sizes, kind="stable")
    _, first = np.unique(nearest[order], return_index=True)  # one row per cluster even if two centres share it
    return rows[nearest[order][np.sort(first)]]


def _share(total: int, sizes: list[int]) -> list[int]:
    """``total`` items shared as evenly as possible between groups of ``sizes``: none gets more than its size,
    what a small group cannot take goes evenly to the others, and a remainder to the earlier groups."""
    quotas = [0] * len(sizes)
    left = min(total, sum(sizes))
    while left > 0:
        open_groups = [i for i, size in enumerate(sizes) if quotas[i] < size]
        each = left // len(open_groups)
        for i in open_groups[:left] if each == 0 else open_groups:
            give = min(sizes[i] - quotas[i], max(each, 1))
            quotas[i] += give
            left -= give
    return quotas


def _best_rows(rows: np.ndarray, priority: np.ndarray, recency: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``rows`` (all rows tied with the ``k``-th too) in order, and the rest unordered.

    Order: priority descending, then newest, then row. A partial partition keeps this linear in ``len(rows)``.
    """
    if len(rows) > k:
        negated = -priority[rows]
        kth = np.partition(negated, k - 1)[k - 1]
        best = negated <= kth
        top, rest = rows[best], rows[~best]
    else:
        top, rest = rows, rows[:0]
    order = np.lexsort((top, -recency[top], -priority[top]))
    return top[order], rest


def _allocate(
    signals: dict[str, Signal], picker: _Picker, policy: ReviewPolicy, cold_start: bool = False
) -> list[tuple[int, str, str]]:
    """``(row, reason, content hash)`` of each chosen text, in selection order."""
    picks: list[tuple[int, str]] = []
    reserve = 0 if cold_start else policy.random_reserve  # while young, coverage stands in for the random slice
    for reason in (COLD_START_ORDER if cold_start else REASONS)[:-1]:
        room = policy.budget - reserve - len(picks)
        if room <= 0:
            break
        if reason == UNFAMILIAR:
            want = room if cold_start else min(policy.cap(reason), room)
            picks += [(row, reason) for row in picker.cover(signals[reason], want, by_answer=cold_start)]
            continue
        diversity = policy.diversity if reason in DIVERSE_REASONS else 1
        picks += [(row, reason) for row in picker.take(signals[reason], min(policy.cap(reason), room), diversity)]
    want = min(policy.cap(RANDOM), policy.budget - len(picks))
    picks += [(row, RANDOM) for row in picker.take(signals[RANDOM], want)]
    return [(row, reason, picker.hashes[row]) for row, reason in picks]


def _review_frame(reps: pl.DataFrame, picks: list[tuple[int, str, str]], signals: dict[str, Signal]) -> pl.DataFrame:
    if not picks:
        return empty_review_set()
    rows = np.array([row for row, _, _ in picks], dtype=np.int64)
    chosen = reps[rows]
    reasons = [
        [r for r in REASONS if r == primary or (r != RANDOM and signals[r].applies[row])] for row, primary, _ in picks
    ]
    return pl.DataFrame(
        {
            "invocation_id": chosen["id"].cast(pl.String),
            "input_text": chosen["input_text"].cast(pl.String),
            "content_hash": [digest for _, _, digest in picks],
            "reason": [reason for _, reason, _ in picks],
            "reasons": reasons,
            "priority": [float(signals[reason].priority[row]) for row, reason, _ in picks],
            "label": chosen["label"].cast(pl.String),
            "confidence": chosen["confidence"].cast(pl.Float64),
            "created_at": chosen["created_at"],
        },
        schema=REVIEW_SCHEMA,
    )


# --- an unlabelled pool (active learning) -----------------------------------------------------------------


def pool_candidates(
    texts: Sequence[str],
    proba: np.ndarray,
    label_set: Sequence[str],
    ids: Sequence[str] | None = None,
    created_at: datetime | None = None,
) -> pl.DataFrame:
    """A candidates frame for :func:`select_for_review` from a model's ``[n, C]`` probabilities on a pool.

    Each item is a call answered by that model alone: label = top class, confidence = its probability, margin =
    top-1 minus top-2; no canary, no feedback. ``ids`` default to the row numbers as strings.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(texts), len(label_set)):
        raise ValueError(f"proba must be [{len(texts)}, {len(label_set)}], got {list(proba.shape)}")
    top2 = -np.sort(-proba, axis=1)[:, :2] if len(label_set) > 1 else np.hstack([proba, np.zeros_like(proba)])
    labels = np.asarray(label_set, dtype=object)[proba.argmax(axis=1)] if len(texts) else np.array([], dtype=object)
    n = len(texts)
    return pl.DataFrame(
        {
            "id": [str(i) for i in (ids if ids is not None else range(n))],
            "created_at": pl.Series(
                [created_at or datetime(1970, 1, 1, tzinfo=UTC)] * n, dtype=pl.Datetime("us", "UTC")
            ),
            "input_text": list(texts),
            "label": pl.Series(labels.tolist(), dtype=pl.String),
            "confidence": top2[:, 0],
            "margin": top2[:, 0] - top2[:, 1],
            "primary_label": pl.Series(labels.tolist(), dtype=pl.String),
            "canary_label": pl.Series([None] * n, dtype=pl.String),
            "flagged": pl.Series([False] * n, dtype=pl.Boolean),
            "true_label": pl.Series([None] * n, dtype=pl.String),
            "answered_by": pl.Series(["pool"] * n, dtype=pl.String),
        }
    )


def pool_scores(
    texts: Sequence[str],
    proba: np.ndarray,
    label_set: Sequence[str],
    embeddings: np.ndarray,
    context: ReviewContext,
    policy: ReviewPolicy = ReviewPolicy(),
    seed: int = 0,
) -> pl.DataFrame:
    """Per pool item, the priority of each strategy that applies to it (null where it does not).

    Columns: ``row``, ``label``, ``margin`` and one float column per reason but ``flagged`` and
    ``disagreement`` (they need live feedback and a canary). The same strategy functions as
    :func:`select_for_review`; useful to inspect or plot what the sampling sees.
    """
    frame = pool_candidates(texts, proba, label_set)
    margin = frame["margin"].to_numpy()
    signals = {
        NEAR_MISTAKE: near_mistake_signal(
            embeddings, context.mistake_embeddings, policy.near_mistake_k, policy.near_mistake_distance
        ),
        LOW_CONFIDENCE: low_confidence_signal(margin, policy.low_margin),
        RARE_CLASS: rare_class_signal(frame["label"], context.training_label_counts, policy.rare_share),
        UNFAMILIAR: unfamiliar_signal(embeddings, context.training_embeddings, policy.unfamiliar_share, seed=seed),
        RANDOM: random_signal(frame.height, seed),
    }
    columns = {r: pl.Series(r, np.where(s.applies, s.priority, np.nan)).fill_nan(None) for r, s in signals.items()}
    return pl.DataFrame(
        {"row": np.arange(frame.height, dtype=np.int64), "label": frame["label"], "margin": margin, **columns}
    )
