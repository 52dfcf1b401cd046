"""Label-issue detection on prepared out-of-fold probabilities with planted annotation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from loopml.label_issues import (
    BOTH,
    CONFIDENT_DISAGREEMENT,
    CONFIDENT_LEARNING,
    SCHEMA,
    find_label_issues,
    read_oof,
    summarize,
)

LABELS = ["business", "sport", "tech"]


def planted(
    n: int = 300, n_flips: int = 12, seed: int = 0, labels: list[str] = LABELS
) -> tuple[list[str], list[str], np.ndarray, set[str]]:
    """Ids, given labels (``n_flips`` of them flipped), well-separated probabilities of the true labels, flipped ids.

    Each row puts 0.75-0.97 on the true label and splits the rest at random over the other labels; the
    flipped items' given label is another label, so the model confidently disagrees with them.
    """
    rng = np.random.default_rng(seed)
    n_classes = len(labels)
    truth = np.arange(n) % n_classes
    top = rng.uniform(0.75, 0.97, size=n)
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


def test_clean_data_yields_no_issues() -> None:
    ids, given, proba, _ = planted(n_flips=0)
    assert find_label_issues(ids, given, LABELS, proba).height == 0


def test_reasons() -> None:
    ids, given, proba, flipped = planted()
    issues = find_label_issues(ids, given, LABELS, proba)
    top_proba = issues["suggested_proba"]
    # every planted flip has its true label at >= 0.75 > any other label: confident learning finds all
    assert set(issues["reason"]) == {CONFIDENT_LEARNING, BOTH}
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
    assert summary[CONFIDENT_LEARNING] + summary[CONFIDENT_DISAGREEMENT] + summary[BOTH] == issues.height
    assert summary[CONFIDENT_LEARNING] == (issues["reason"] == CONFIDENT_LEARNING).sum()
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
