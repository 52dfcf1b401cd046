"""Review sampling (``review_set``): each strategy, the budget allocation, de-duplication and the pool helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from loopml.dataset import content_hash
from loopml.invocation_frames import FRAME_SCHEMA
from loopml.review import (
    REASONS,
    REVIEW_SCHEMA,
    ReviewContext,
    ReviewPolicy,
    central,
    kth_nearest_distance,
    label_shares,
    pool_candidates,
    pool_scores,
    select_for_review,
    unfamiliar_signal,
)

DIM = 16
T0 = datetime(2026, 3, 1, tzinfo=UTC)
NOTHING = {reason: 0 for reason in REASONS}  # caps that switch every reason off; tests switch on what they need


def call(i: int, **overrides: Any) -> dict[str, Any]:
    """A confident, unflagged call on ``text i`` answered ``a`` by the primary alone."""
    row = {
        "id": f"inv-{i}",
        "created_at": T0 + timedelta(minutes=i),
        "input_text": f"text {i}",
        "label": "a",
        "confidence": 0.95,
        "margin": 0.9,
        "primary_label": "a",
        "canary_label": None,
        "flagged": False,
        "true_label": None,
        "answered_by": "fn:v1",
    }
    row.update(overrides)
    return row


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Candidates as the invocation loader produces them (its schema, without latency)."""
    return pl.DataFrame(rows, schema={k: v for k, v in FRAME_SCHEMA.items() if k != "latency_ms"})


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors in ``DIM`` dimensions (nearly orthogonal to one another)."""
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def context(
    mistakes: np.ndarray | None = None,
    counts: dict[str, int] | None = None,
    existing: frozenset[str] = frozenset(),
    training: np.ndarray | None = None,
) -> ReviewContext:
    return ReviewContext(
        training_label_counts=counts if counts is not None else {"a": 50, "b": 50},
        mistake_embeddings=mistakes if mistakes is not None else np.zeros((0, DIM), dtype=np.float32),
        existing_hashes=frozenset(existing),
        training_embeddings=training,
    )


def policy(budget: int = 10, random_share: float = 0.0, **caps: int) -> ReviewPolicy:
    return ReviewPolicy(budget=budget, caps={**NOTHING, **caps}, random_share=random_share)


def chosen(result: pl.DataFrame) -> dict[str, str]:
    return dict(zip(result["invocation_id"], result["reason"], strict=True))


# --- strategies ----------------------------------------------------------------------------------------


def test_flagged_and_corrected_calls_are_chosen_first_with_both_first() -> None:
    rows = [call(0), call(1, flagged=True), call(2, true_label="b"), call(3, flagged=True, true_label="b")]
    rows += [call(4, true_label="a")]  # feedback that agrees with the answer is not a reason
    result = select_for_review(frame(rows), unit_vectors(5), context(), policy(flagged=10))
    assert result["invocation_id"].to_list() == ["inv-3", "inv-2", "inv-1"]  # priority 1, then newest first
    assert result["priority"].to_list() == [1.0, 0.5, 0.5]
    assert set(result["reason"]) == {"flagged"}


def test_disagreement_needs_a_canary_answer_that_differs() -> None:
    rows = [
        call(0, canary_label="a"),
        call(1, canary_label="b", margin=0.6),
        call(2, canary_label=None),
        call(3, canary_label="b", margin=0.1),
    ]
    result = select_for_review(frame(rows), unit_vectors(4), context(), policy(disagreement=10))
    assert result["invocation_id"].to_list() == ["inv-3", "inv-1"]  # the less certain answer first
    assert set(result["reason"]) == {"disagreement"}


def test_near_mistake_uses_cosine_distance_to_past_mistakes() -> None:
    emb = unit_vectors(6)
    close = emb[2] + 0.05 * unit_vectors(1, seed=9)[0]
    mistakes = np.stack([close / np.linalg.norm(close), unit_vectors(1, seed=7)[0]])
    result = select_for_review(frame([call(i) for i in range(6)]), emb, context(mistakes), policy(near_mistake=10))
    assert chosen(result) == {"inv-2": "near_mistake"}
    assert 0.9 < result["priority"][0] <= 1.0

    # k = 2: a call must be close to two mistakes
    two = ReviewPolicy(budget=10, caps={**NOTHING, "near_mistake": 10}, random_share=0.0, near_mistake_k=2)
    assert select_for_review(frame([call(i) for i in range(6)]), emb, context(mistakes), two).is_empty()
    both_close = np.stack([mistakes[0], mistakes[0]])
    assert chosen(select_for_review(frame([call(i) for i in range(6)]), emb, context(both_close), two)) == {
        "inv-2": "near_mistake"
    }


def test_low_confidence_takes_the_smallest_margins_below_the_threshold() -> None:
    rows = [call(0, margin=0.5), call(1, margin=0.15), call(2, margin=0.01), call(3, margin=0.25), call(4, margin=None)]
    result = select_for_review(frame(rows), unit_vectors(5), context(), policy(low_confidence=10))
    assert result["invocation_id"].to_list() == ["inv-2", "inv-1"]
    assert result["priority"].to_list() == pytest.approx([0.95, 0.25])


def test_rare_class_in_outputs_or_in_training_data() -> None:
    rows = [call(i, label="a") for i in range(18)] + [call(18, label="c"), call(19, label="b")]
    # outputs: c is 5 % of answers; training data: b is 4 %
    result = select_for_review(frame(rows), unit_vectors(20), context(counts={"a": 48, "b": 2}), policy(rare_class=10))
    assert chosen(result) == {"inv-18": "rare_class", "inv-19": "rare_class"}
    assert result["invocation_id"][0] == "inv-18"  # c is unseen in training: share 0, the rarest
    shares = label_shares(pl.Series(["a", "a", "b", None]), {})
    assert shares == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}


# --- allocation ----------------------------------------------------------------------------------------


def test_reason_priority_order_caps_and_one_pick_per_item_with_all_reasons() -> None:
    rows = [call(0, flagged=True, margin=0.05, canary_label="b")]  # three reasons
    rows += [call(i, margin=0.05 + i / 100) for i in range(1, 9)]  # low confidence
    rows += [call(i, canary_label="b") for i in range(9, 12)]  # disagreement
    result = select_for_review(
        frame(rows), unit_vectors(12), context(), policy(budget=20, flagged=5, disagreement=2, low_confidence=3)
    )
    assert result["reason"].to_list() == ["flagged"] + ["disagreement"] * 2 + ["low_confidence"] * 3
    first = result.row(0, named=True)
    assert first["invocation_id"] == "inv-0" and first["reasons"] == ["flagged", "disagreement", "low_confidence"]
    assert result["invocation_id"].n_unique() == result.height
    assert result.filter(pl.col("reason") == "low_confidence")["invocation_id"].to_list() == ["inv-1", "inv-2", "inv-3"]


def test_budget_bounds_everything_and_random_fills_what_reasons_leave() -> None:
    rows = [call(i, margin=0.01) for i in range(30)]
    result = select_for_review(frame(rows), unit_vectors(30), context(), policy(budget=8, low_confidence=30))
    assert result.height == 8 and set(result["reason"]) == {"low_confidence"}

    few = select_for_review(
        frame(rows[:2] + [call(i) for i in range(2, 30)]),
        unit_vectors(30),
        context(),
        ReviewPolicy(budget=8, caps={**NOTHING, "low_confidence": 30, "random": 8}, random_share=0.0),
    )
    assert few["reason"].to_list() == ["low_confidence"] * 2 + ["random"] * 6
    assert few.filter(pl.col("reason") == "random")["reasons"].to_list() == [["random"]] * 6


def test_random_share_is_reserved_and_unbiased() -> None:
    rows = [call(i, margin=0.01) for i in range(200)]
    policy_ = ReviewPolicy(budget=10, caps={"low_confidence": 10}, random_share=0.3)
    result = select_for_review(frame(rows), unit_vectors(200), context(), policy_, seed=1)
    assert result["reason"].to_list() == ["low_confidence"] * 7 + ["random"] * 3
    randoms = result.filter(pl.col("reason") == "random")
    assert randoms["reasons"].to_list() == [["low_confidence", "random"]] * 3  # every reason that applied
    again = select_for_review(frame(rows), unit_vectors(200), context(), policy_, seed=1)
    other = select_for_review(frame(rows), unit_vectors(200), context(), policy_, seed=2)
    assert again.equals(result)
    assert set(other.filter(pl.col("reason") == "random")["invocation_id"]) != set(randoms["invocation_id"])
    assert ReviewPolicy(budget=5, random_share=0.1).random_reserve == 1  # half rounds up


def test_same_text_once_keeping_the_newest_call_and_its_reasons() -> None:
    rows = [
        call(0, input_text="great film", flagged=True),  # oldest call of the text is the flagged one
        call(5, input_text="great film  "),  # the same text (stripped), newest
        call(1, input_text="cafe\u0301 scene", margin=0.01),  # NFD ...
        call(2, input_text="caf\u00e9 scene", margin=0.02),  # ... and NFC: one content hash
        call(3, margin=0.03),
    ]
    result = select_for_review(frame(rows), unit_vectors(5), context(), policy(flagged=5, low_confidence=5))
    assert chosen(result) == {"inv-5": "flagged", "inv-1": "low_confidence", "inv-3": "low_confidence"}
    assert result["content_hash"].n_unique() == 3
    assert result["content_hash"][0] == content_hash("great film")


def test_texts_already_in_label_studio_are_skipped() -> None:
    rows = [call(i, margin=0.01 * i) for i in range(5)]
    existing = frozenset({content_hash("text 0"), content_hash("text 1")})
    result = select_for_review(
        frame(rows), unit_vectors(5), context(existing=existing), policy(budget=2, low_confidence=5)
    )
    assert result["invocation_id"].to_list() == ["inv-2", "inv-3"]


def test_empty_input_and_zero_budget_give_an_empty_frame_with_the_schema() -> None:
    empty = frame([])
    result = select_for_review(empty, np.zeros((0, DIM), dtype=np.float32), context())
    assert result.is_empty() and result.schema == pl.Schema(REVIEW_SCHEMA)
    zero = select_for_review(frame([call(0, flagged=True)]), unit_vectors(1), context(), ReviewPolicy(budget=0))
    assert zero.is_empty() and zero.schema == pl.Schema(REVIEW_SCHEMA)


def test_output_schema_and_naive_timestamps_mean_utc() -> None:
    naive = frame([call(0, flagged=True)]).with_columns(pl.col("created_at").dt.replace_time_zone(None))
    result = select_for_review(naive, unit_vectors(1), context(), ReviewPolicy())
    assert result.schema == pl.Schema(REVIEW_SCHEMA)
    assert result["created_at"][0] == T0 and result["label"][0] == "a" and result["confidence"][0] == 0.95


def test_bad_input_is_refused_with_what_to_fix() -> None:
    with pytest.raises(ValueError, match="margin"):
        select_for_review(frame([call(0)]).drop("margin"), unit_vectors(1), context())
    with pytest.raises(ValueError, match="one row per candidate"):
        select_for_review(frame([call(0)]), unit_vectors(2), context())
    with pytest.raises(ValueError, match="unknown reasons"):
        ReviewPolicy(caps={"loud": 3})
    with pytest.raises(ValueError, match="dimension"):
        select_for_review(frame([call(0)]), unit_vectors(1), context(np.ones((2, 3), dtype=np.float32)))


# --- nearest neighbours and the pool ---------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_kth_nearest_distance_is_exact_cosine_in_chunks(k: int) -> None:
    queries, mistakes = unit_vectors(500, seed=1), unit_vectors(40, seed=2)
    cosine = 1.0 - queries.astype(np.float64) @ mistakes.astype(np.float64).T
    expected = np.sort(cosine, axis=1)[:, k - 1]
    got = kth_nearest_distance(queries, mistakes, k, chunk_rows=64)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    rows = np.array([7, 3, 400])
    np.testing.assert_allclose(kth_nearest_distance(queries, mistakes, k, rows=rows), got[rows], atol=1e-6)


def test_pool_helpers_apply_the_same_strategies() -> None:
    texts = [f"item {i}" for i in range(6)]
    proba = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.48, 0.52], [0.97, 0.03], [0.7, 0.3]])
    frame_ = pool_candidates(texts, proba, ["a", "b"])
    assert frame_["label"].to_list() == ["a", "a", "b", "b", "a", "a"]
    assert frame_["margin"].to_list() == pytest.approx([0.8, 0.1, 0.6, 0.04, 0.94, 0.4])
    emb = unit_vectors(6)
    ctx = context(mistakes=emb[[5]], counts={"a": 10, "b": 10})
    result = select_for_review(frame_, emb, ctx, policy(budget=3, near_mistake=1, low_confidence=2))
    assert chosen(result) == {"5": "near_mistake", "3": "low_confidence", "1": "low_confidence"}

    scores = pool_scores(texts, proba, ["a", "b"], emb, ctx)
    assert scores.columns == [
        "row",
        "label",
        "margin",
        "near_mistake",
        "low_confidence",
        "rare_class",
        "unfamiliar",
        "random",
    ]
    assert scores["unfamiliar"].null_count() == 6  # no training embeddings: never applies
    assert scores["near_mistake"].is_not_null().to_list() == [False] * 5 + [True]
    assert scores["low_confidence"].is_not_null().to_list() == [False, True, False, True, False, False]
    assert scores["rare_class"].null_count() == 6


def test_diversity_keeps_one_text_per_cluster_of_the_best_candidates() -> None:
    base = unit_vectors(3, seed=4)
    twins = np.repeat(base, [4, 1, 1], axis=0)  # four copies of one direction, then two other directions
    rows = [call(i, margin=0.01 * (i + 1)) for i in range(6)]
    plain = select_for_review(frame(rows), twins, context(), policy(budget=3, low_confidence=3))
    assert plain["invocation_id"].to_list() == ["inv-0", "inv-1", "inv-2"]  # three near-identical texts
    diverse = ReviewPolicy(budget=3, caps={**NOTHING, "low_confidence": 3}, random_share=0.0, diversity=2)
    result = select_for_review(frame(rows), twins, context(), diverse)
    assert result["invocation_id"].to_list() == ["inv-0", "inv-4", "inv-5"]  # the best of each cluster
    flagged = [call(i, flagged=True) for i in range(6)]  # feedback is evidence: never thinned out
    diverse_flags = ReviewPolicy(budget=3, caps={**NOTHING, "flagged": 3}, random_share=0.0, diversity=2)
    assert select_for_review(frame(flagged), twins, context(), diverse_flags).height == 3


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _familiar_and_two_far_clusters() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Training data around direction 0; 10 calls near it, then two far clusters of 5 calls (around directions 5
    and 10), each made of its centre and four symmetric neighbours. Returns (training, calls, centre rows)."""
    eye = np.eye(DIM, dtype=np.float32)
    training = _unit(eye[0] + 0.05 * unit_vectors(20, seed=1))
    near = _unit(eye[0] + 0.05 * unit_vectors(10, seed=2))
    clusters, centres = [], []
    for axis, nudge in ((5, (6, 7)), (10, (11, 12))):
        centres.append(10 + len(clusters) * 5)
        a, b = eye[nudge[0]], eye[nudge[1]]
        centre = eye[axis]
        clusters.append(_unit([centre, centre + 0.2 * a, centre - 0.2 * a, centre + 0.2 * b, centre - 0.2 * b]))
    return training, np.vstack([near, *clusters]), centres


def test_unfamiliar_takes_the_central_call_of_each_far_cluster() -> None:
    training, vectors, centres = _familiar_and_two_far_clusters()
    rows = [call(i) for i in range(len(vectors))]
    ctx = context(training=training)
    result = select_for_review(frame(rows), vectors, ctx, policy(budget=10, unfamiliar=2))
    assert chosen(result) == {f"inv-{centres[0]}": "unfamiliar", f"inv-{centres[1]}": "unfamiliar"}
    assert result["reasons"].to_list() == [["unfamiliar"]] * 2
    assert 0.9 < result["priority"].min() <= 1.0  # the cosine distance to the nearest training example
    # the calls near the training data are never unfamiliar; without training data nothing is
    assert select_for_review(frame(rows[:10]), vectors[:10], ctx, policy(budget=10, unfamiliar=10)).height <= 5
    assert select_for_review(frame(rows), vectors, context(), policy(budget=10, unfamiliar=2)).height == 0


def test_central_puts_the_largest_cluster_first() -> None:
    """An annotator who labels only the first picks covers the most: the centre of the biggest cluster comes
    first, then the next biggest, each the row nearest its cluster's centre."""
    eye = np.eye(DIM, dtype=np.float32)
    sizes = {3: 4, 7: 12, 11: 7}  # axis -> cluster size
    vectors, centre_rows = [], {}
    for axis, size in sizes.items():
        centre_rows[axis] = len(vectors)
        vectors.append(eye[axis])
        nudges = 0.15 * unit_vectors(size - 1, seed=axis)
        vectors += list(_unit(eye[axis] + nudges - nudges.mean(axis=0)))
    rows = np.arange(100, 100 + len(vectors))
    picked = central(rows, np.asarray(vectors, np.float32), 3, seed=0)
    assert picked.tolist() == [100 + centre_rows[axis] for axis in (7, 11, 3)]


def test_cold_start_lets_unfamiliar_calls_fill_the_round() -> None:
    training, vectors, _ = _familiar_and_two_far_clusters()
    rows = [call(i, margin=0.01) for i in range(len(vectors))]  # every call is low-confidence too
    caps = {**NOTHING, "unfamiliar": 1, "low_confidence": 2, "random": 6}
    mixed = ReviewPolicy(budget=6, caps=caps, random_share=0.5)
    young = select_for_review(frame(rows), vectors, context(training=training, counts={"a": 3, "b": 40}), mixed)
    assert young["reason"].to_list() == ["unfamiliar"] * 6  # fewer than 10 examples of "a": coverage first
    assert mixed.cold_start({"a": 3, "b": 40}) and not mixed.cold_start({"a": 10, "b": 40})
    grown = select_for_review(frame(rows), vectors, context(training=training, counts={"a": 10, "b": 40}), mixed)
    assert grown["reason"].to_list() == ["low_confidence"] * 2 + ["unfamiliar"] + ["random"] * 3


def test_cold_start_coverage_alternates_between_the_answers() -> None:
    """In a cold start the unfamiliar picks are shared evenly between the model's answers and alternate between
    them, the most frequent answer first: answer ``a`` has four distinct far clusters and ``b`` one, so k-means
    over all calls (as after the cold start) gives ``a`` most of the picks."""
    from loopml.review import _share

    eye = np.eye(DIM, dtype=np.float32)
    training = _unit(eye[0] + 0.05 * unit_vectors(20, seed=1))
    varied = [_unit(eye[axis] + 0.1 * unit_vectors(5, seed=axis)) for axis in (3, 5, 7, 9)]
    alike = _unit(eye[12] + 0.1 * unit_vectors(10, seed=12))
    vectors = np.vstack([*varied, alike])
    rows = [call(i, label="a" if i < 20 else "b") for i in range(len(vectors))]
    coverage = ReviewPolicy(budget=6, caps={**NOTHING, "unfamiliar": 6}, random_share=0.0, unfamiliar_share=1.0)
    young = select_for_review(frame(rows), vectors, context(training=training, counts={"a": 3, "b": 3}), coverage)
    assert young["reason"].to_list() == ["unfamiliar"] * 6
    assert young["label"].to_list() == ["a", "b"] * 3
    assert len({int(i.split("-")[1]) // 5 for i in young.filter(pl.col("label") == "a")["invocation_id"]}) == 3
    grown = select_for_review(frame(rows), vectors, context(training=training, counts={"a": 30, "b": 30}), coverage)
    assert grown["label"].to_list().count("a") >= 4
    assert _share(7, [10, 1, 10]) == [3, 1, 3] and _share(5, [2, 2]) == [2, 2] and _share(2, [4, 4, 4]) == [1, 1, 0]


def test_unfamiliar_is_measured_on_a_uniform_sample_of_a_large_stream() -> None:
    calls, training = unit_vectors(5000, seed=5), unit_vectors(300, seed=6)
    full = unfamiliar_signal(calls, training, share=0.5)
    assert full.applies.sum() == 2500  # the farther half of every call
    distance = kth_nearest_distance(calls, training)
    assert distance[full.applies].min() >= distance[~full.applies].max()
    sampled = unfamiliar_signal(calls, training, share=0.5, sample=400, seed=1)
    assert sampled.applies.sum() == 200  # the farther half of a 400-call sample, nothing outside it
    np.testing.assert_allclose(sampled.priority[sampled.applies], np.minimum(distance[sampled.applies], 1.0), atol=1e-5)
    again = unfamiliar_signal(calls, training, share=0.5, sample=400, seed=1)
    assert np.array_equal(again.applies, sampled.applies)


def test_past_mistakes_are_the_wrong_and_the_unsure_out_of_fold_items() -> None:
    from loopml.review import past_mistakes

    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.7, 0.3]])
    given = np.array([0, 0, 0, 1])  # right and sure, wrong, right but unsure (margin 0.1), wrong
    assert past_mistakes(given, proba, low_margin=0.2).tolist() == [False, True, True, True]
    assert past_mistakes(given, proba, low_margin=0.05).tolist() == [False, True, False, True]
    assert past_mistakes(np.zeros(0, dtype=int), np.zeros((0, 2))).tolist() == []


def test_caps_from_the_environment_syntax() -> None:
    from loopml.review import parse_caps

    assert parse_caps(" near_mistake=4, low_confidence=12 ,") == {"near_mistake": 4, "low_confidence": 12}
    assert parse_caps("") == {}
    with pytest.raises(ValueError, match="reasons: flagged"):
        parse_caps("nearby=3")
    with pytest.raises(ValueError, match="not reason=count"):
        parse_caps("low_confidence=many")
