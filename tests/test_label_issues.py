"""Label-issue detection on prepared out-of-fold probabilities with planted annotation errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from loopml.label_issues import (
    BOTH,
    CONFIDENT_DISAGREEMENT,
    CONFIDENT_LEARNING,
    LOW_GIVEN_PROBA,
    REASONS,
    SCHEMA,
    find_label_issues,
    read_oof,
    summarize,
)

LABELS = ["business", "sport", "tech"]


def planted(
    n: int = 300, n_flips: int = 12, seed: int = 0, labels: list[str] = LABELS, low: float = 0.75
) -> tuple[list[str], list[str], np.ndarray, set[str]]:
    """Ids, given labels (``n_flips`` of them flipped), probabilities of the true labels, flipped ids.

    Each row puts ``low``-0.97 on the true label and splits the rest at random over the other labels; the
    flipped items' given label is another label, so the model disagrees with them (confidently when ``low`` is
    high: the default 0.75 separates flips from correct items).
    """
    rng = np.random.default_rng(seed)
    n_classes = len(labels)
    truth = np.arange(n) % n_classes
    top = rng.uniform(low, 0.97, size=n)
    rest = rng.dirichlet(np.ones(n_classes - 1), size=n) * (1.0 - top)[:, None]
    proba = np.empty((n, n_classes))
    for i in range(n):
        proba[i, truth[i]] = top[i]
        proba[i, np.arange(n_classes) != truth[i]] = rest[i]
    given = truth.copy()
    flipped = rng.choice(n, n_flips, replace=False)
    for i in flipped:
        given[i] = (truth[i] + rng.integers(1, n_classes)) % n_classes
    ids = [f"item-{i:04d}" for i in range(n)]
    return ids, [labels[g] for g in given], proba, {ids[i] for i in flipped}


def test_planted_flips_are_found_and_ranked_first() -> None:
    ids, given, proba, flipped = planted()
    issues = find_label_issues(ids, given, LABELS, proba)

    assert issues.schema == pl.Schema(SCHEMA)
    assert set(issues["item_id"][: len(flipped)]) == flipped
    assert issues["rank"].to_list() == list(range(1, issues.height + 1))
    assert issues["score"].is_sorted(descending=True)
    top = issues.head(len(flipped))
    truth_of = dict(zip(ids, proba.argmax(axis=1), strict=True))
    assert top["suggested_label"].to_list() == [LABELS[truth_of[i]] for i in top["item_id"]]
    assert (top["suggested_label"] != top["given_label"]).all()
    np.testing.assert_allclose(top["score"].to_numpy(), 1.0 - top["given_label_proba"].to_numpy())


def detectors(
    given: list[str], proba: np.ndarray, label_set: list[str] = LABELS, confidence: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """What each detector flags, computed here from cleanlab and the probabilities: (confident learning,
    confident disagreement) as boolean masks over the items."""
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues

    labels = np.array([label_set.index(g) for g in given])
    by_cl = np.zeros(len(given), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_cl[cleanlab_find_label_issues(labels, proba, n_jobs=1)] = True
    return by_cl, (proba.max(axis=1) >= confidence) & (proba.argmax(axis=1) != labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detectors_set_how_many_and_the_ranking_picks_which(seed: int) -> None:
    """Overlapping probabilities (true label at 0.4-0.97): the detectors flag some correct items and miss some
    flips. As many items as they flag between them are returned, and those are the lowest p(given) of all."""
    ids, given, proba, flipped = planted(n=600, n_flips=60, seed=seed, low=0.4)
    by_cl, by_disagreement = detectors(given, proba)
    issues = find_label_issues(ids, given, LABELS, proba)

    assert issues.height == (by_cl | by_disagreement).sum() > 0
    given_proba = proba[np.arange(len(ids)), [LABELS.index(g) for g in given]]
    expected = [ids[i] for i in np.argsort(given_proba, kind="stable")[: issues.height]]
    assert issues["item_id"].to_list() == expected
    np.testing.assert_allclose(issues["score"].to_numpy(), 1.0 - issues["given_label_proba"].to_numpy())
    assert issues["score"].is_sorted(descending=True)

    index = {item: i for i, item in enumerate(ids)}
    for row in issues.iter_rows(named=True):
        i = index[row["item_id"]]
        want = {
            (True, True): BOTH,
            (True, False): CONFIDENT_LEARNING,
            (False, True): CONFIDENT_DISAGREEMENT,
            (False, False): LOW_GIVEN_PROBA,
        }[bool(by_cl[i]), bool(by_disagreement[i])]
        assert row["reason"] == want, row
    # the ranking beats the detectors' own picks: at least as many flips among the rows
    returned_flips = len(set(issues["item_id"]) & flipped)
    flagged_flips = len({ids[i] for i in np.flatnonzero(by_cl | by_disagreement)} & flipped)
    assert returned_flips >= flagged_flips


def test_a_flip_spread_over_other_labels_ranks_ahead_of_a_flagged_correct_item() -> None:
    """A planted flip whose given label gets 0.02 while the rest is spread over four other labels (none near
    0.9) is flagged by neither detector; two correctly labelled but ambiguous items (p(given) 0.2 and 0.25, 0.8
    and 0.75 on "b", whose items the model predicts at 0.7) are flagged by confident learning. Two issues are
    estimated; the flip, with the lowest p(given), is returned first, ahead of the item at 0.2."""
    labels = ["a", "b", "c", "d", "e"]
    proba, given = [], []
    for j, label in enumerate(labels):
        top = 0.7 if label == "b" else 0.95
        row = np.full(len(labels), (1.0 - top) / (len(labels) - 1))
        row[j] = top
        proba += [row] * 40
        given += [label] * 40
    proba = np.array(proba)
    proba[1] = [0.2, 0.8, 0.0, 0.0, 0.0]  # correct "a", ambiguous
    proba[2] = [0.25, 0.75, 0.0, 0.0, 0.0]  # correct "a", ambiguous
    proba[3] = [0.02, 0.32, 0.3, 0.2, 0.16]  # annotated "a": the planted flip
    ids = [f"item-{i:03d}" for i in range(len(given))]

    by_cl, by_disagreement = detectors(given, proba, labels)
    assert np.flatnonzero(by_cl).tolist() == [1, 2] and not by_disagreement.any()  # the flip is not flagged
    issues = find_label_issues(ids, given, labels, proba)
    assert issues.select("item_id", "given_label", "suggested_label", "reason").rows() == [
        ("item-003", "a", "b", LOW_GIVEN_PROBA),
        ("item-001", "a", "b", CONFIDENT_LEARNING),
    ]
    assert issues["given_label_proba"].to_list() == pytest.approx([0.02, 0.2])
    assert issues["score"].to_list() == pytest.approx([0.98, 0.8])
    assert summarize(issues, len(ids))[LOW_GIVEN_PROBA] == 1


def test_ties_keep_the_input_order() -> None:
    n = 100
    proba = np.tile([0.99, 0.01], (n, 1))
    proba[n // 2 :] = [0.01, 0.99]
    given = ["a"] * (n // 2) + ["b"] * (n // 2)
    for i in (7, 3, 60):  # three confident disagreements at the same probability
        proba[i] = [0.05, 0.95] if i < n // 2 else [0.95, 0.05]
    ids = [f"item-{i:03d}" for i in range(n)]
    issues = find_label_issues(ids, given, ["a", "b"], proba)
    assert issues["item_id"].to_list() == ["item-003", "item-007", "item-060"]
    assert set(issues["reason"]) <= {CONFIDENT_DISAGREEMENT, BOTH}


def test_clean_data_yields_no_issues() -> None:
    ids, given, proba, _ = planted(n_flips=0)
    assert find_label_issues(ids, given, LABELS, proba).height == 0


def test_reasons() -> None:
    ids, given, proba, flipped = planted()
    issues = find_label_issues(ids, given, LABELS, proba)
    top_proba = issues["suggested_proba"]
    # every planted flip has its true label at >= 0.75 > any other label: confident learning finds all
    assert set(issues["reason"]) == {CONFIDENT_LEARNING, BOTH}
    assert set(issues["item_id"]) == flipped  # as many issues as flips: no row is there for its rank alone
    assert (issues.filter(top_proba >= 0.9)["reason"] == BOTH).all()
    assert (issues.filter(top_proba < 0.9)["reason"] == CONFIDENT_LEARNING).all()
    # a lower disagreement threshold turns all of them into "both"
    lowered = find_label_issues(ids, given, LABELS, proba, disagreement_confidence=0.7)
    assert set(lowered.filter(pl.col("item_id").is_in(list(flipped)))["reason"]) == {BOTH}


def test_confident_disagreement_alone() -> None:
    """One item the model disagrees with at 0.92, where the other class is normally predicted at 0.99.

    Confident learning's per-class threshold (the mean self-confidence of "b", about 0.99) is above 0.92, so
    it leaves the item alone; the disagreement rule still flags it.
    """
    n = 100
    proba = np.tile([0.99, 0.01], (n, 1))
    proba[n // 2 :] = [0.01, 0.99]
    given = ["a"] * (n // 2) + ["b"] * (n // 2)
    proba[0] = [0.08, 0.92]
    ids = [str(i) for i in range(n)]

    issues = find_label_issues(ids, given, ["a", "b"], proba)
    assert issues.rows(named=True) == [
        {
            "rank": 1,
            "item_id": "0",
            "given_label": "a",
            "suggested_label": "b",
            "given_label_proba": pytest.approx(0.08),
            "suggested_proba": pytest.approx(0.92),
            "reason": CONFIDENT_DISAGREEMENT,
            "score": pytest.approx(0.92),
        }
    ]
    assert find_label_issues(ids, given, ["a", "b"], proba, disagreement_confidence=0.95).height == 0


def test_max_items_keeps_the_most_suspect() -> None:
    ids, given, proba, _ = planted()
    everything = find_label_issues(ids, given, LABELS, proba)
    assert find_label_issues(ids, given, LABELS, proba, max_items=5).equals(everything.head(5))
    assert find_label_issues(ids, given, LABELS, proba, max_items=0).height == 0


def test_label_without_examples_changes_nothing() -> None:
    ids, given, proba, _ = planted()
    expected = find_label_issues(ids, given, LABELS, proba)
    with_empty = np.hstack([proba, np.zeros((len(ids), 1))])  # "politics" is in the label set but never given
    assert find_label_issues(ids, given, [*LABELS, "politics"], with_empty).equals(expected)


@pytest.mark.parametrize(
    ("ids", "given", "label_set", "proba"),
    [
        ([], [], LABELS, np.zeros((0, 3))),
        (["x", "y"], ["a", "a"], ["a"], np.ones((2, 1))),
        (["x", "y", "z"], ["a", "a", "a"], ["a", "b"], np.array([[0.01, 0.99]] * 3)),
    ],
    ids=["no items", "single-label set", "single given label"],
)
def test_degenerate_inputs_give_an_empty_frame(ids, given, label_set, proba) -> None:
    issues = find_label_issues(ids, given, label_set, proba)
    assert issues.height == 0
    assert issues.schema == pl.Schema(SCHEMA)
    assert summarize(issues, len(ids))["n_flagged"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"item_ids": ["x"]}, "item ids"),
        ({"oof_proba": np.full((4, 2), 0.5)}, "shape"),
        ({"oof_proba": np.full(12, 1 / 3)}, "shape"),
        ({"given_labels": ["business", "sport", "tech", "sports"]}, "not in label_set"),
        ({"label_set": ["business", "sport", "sport"]}, "duplicate"),
        ({"oof_proba": np.full((4, 3), 0.5)}, "sum to 1"),
        ({"oof_proba": np.array([[1.5, -0.5, 0.0]] * 4)}, r"\[0, 1\]"),
        ({"oof_proba": np.array([[np.nan, 0.5, 0.5]] * 4)}, "finite"),
        ({"disagreement_confidence": 0.0}, "disagreement_confidence"),
        ({"max_items": -1}, "max_items"),
    ],
)
def test_invalid_inputs_raise(kwargs: dict, message: str) -> None:
    args = {
        "item_ids": ["a", "b", "c", "d"],
        "given_labels": ["business", "sport", "tech", "sport"],
        "label_set": LABELS,
        "oof_proba": np.full((4, 3), 1 / 3),
        **kwargs,
    }
    kw = {k: args.pop(k) for k in ("disagreement_confidence", "max_items") if k in args}
    with pytest.raises(ValueError, match=message):
        find_label_issues(*args.values(), **kw)


def test_summarize_counts_reasons() -> None:
    ids, given, proba, _ = planted()
    issues = find_label_issues(ids, given, LABELS, proba)
    summary = summarize(issues, len(ids))
    assert summary["n_items"] == 300
    assert summary["n_flagged"] == issues.height
    assert summary["share_flagged"] == round(issues.height / 300, 4)
    assert sum(summary[reason] for reason in REASONS) == issues.height
    for reason in REASONS:
        assert summary[reason] == (issues["reason"] == reason).sum()
    noisy_ids, noisy_given, noisy_proba, _ = planted(n=600, n_flips=60, low=0.4)
    noisy = summarize(find_label_issues(noisy_ids, noisy_given, LABELS, noisy_proba), 600)
    assert noisy[LOW_GIVEN_PROBA] > 0 and sum(noisy[reason] for reason in REASONS) == noisy["n_flagged"]
    with pytest.raises(ValueError, match="n_items"):
        summarize(issues, issues.height - 1)


def test_read_oof_round_trip(tmp_path: Path) -> None:
    ids, given, proba, flipped = planted()
    path = tmp_path / "oof_proba.parquet"
    # the layout the model asset writes next to each model version
    pl.DataFrame(
        {
            "content_hash": ids,
            "label": given,
            **{f"p_{label}": proba[:, i] for i, label in enumerate(LABELS)},
        }
    ).write_parquet(path)

    read_ids, read_labels, label_set, read_proba = read_oof(path)
    assert (read_ids, read_labels, label_set) == (ids, given, LABELS)
    np.testing.assert_array_equal(read_proba, proba)
    issues = find_label_issues(read_ids, read_labels, label_set, read_proba)
    assert set(issues["item_id"][: len(flipped)]) == flipped

    pl.DataFrame({"label": given}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="id column"):
        read_oof(tmp_path / "bad.parquet")
