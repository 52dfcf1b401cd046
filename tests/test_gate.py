"""The deployment gate on prepared scores."""

import numpy as np

from loopml.gate import FreshItems, evaluate_gate

LABELS = ["pos", "neg"]


def probs(predicted: list[str], labels: list[str] = LABELS) -> np.ndarray:
    return np.array([[0.9 if label == p else 0.1 / (len(labels) - 1) for label in labels] for p in predicted])


def gate(candidate: list[str], primary: list[str] | None, truth: list[str], must=(), must_pred=(), **kw):
    return evaluate_gate(
        truth=truth,
        candidate_probs=probs(candidate),
        candidate_labels=kw.get("candidate_labels", LABELS),
        primary_probs=probs(primary, kw.get("primary_labels", LABELS)) if primary is not None else None,
        primary_labels=kw.get("primary_labels", LABELS) if primary is not None else None,
        must_pass_truth=list(must),
        must_pass_texts=[f"t{i}" for i in range(len(must))],
        must_pass_probs=probs(list(must_pred)) if must_pred else np.zeros((0, 2)),
        tolerance=kw.get("tolerance", 0.01),
        fresh=kw.get("fresh"),
        new_examples=kw.get("new_examples", True),
        primary_must_pass_probs=probs(kw["primary_must_pass"]) if "primary_must_pass" in kw else None,
    )


def test_better_or_equal_candidate_passes() -> None:
    truth = ["pos", "neg", "pos", "neg"]
    result = gate(["pos", "neg", "pos", "neg"], ["pos", "neg", "neg", "neg"], truth)
    assert result.passed and result.candidate_accuracy == 1.0 and result.primary_accuracy == 0.75


def test_worse_candidate_is_rejected_with_both_accuracies() -> None:
    truth = ["pos", "neg", "pos", "neg"] * 10
    candidate = ["neg", "neg", "pos", "neg"] * 10
    result = gate(candidate, truth, truth)
    assert not result.passed
    assert (
        "0.750" in result.reason and "1.000" in result.reason and "primary 10, only by the candidate 0" in result.reason
    )
    assert result.per_label_recall["pos"] == {"candidate": 0.5, "primary": 1.0}


def test_a_drop_within_noise_is_not_evidence() -> None:
    truth = ["pos", "neg"] * 30
    primary = list(truth)
    primary[0] = "neg"  # the primary gets one item wrong ...
    candidate = list(truth)
    candidate[1] = candidate[3] = "pos"  # ... the candidate two others: 1.7 points worse, but noise
    result = gate(candidate, primary, truth)
    assert result.passed and result.candidate_accuracy < result.primary_accuracy - 0.01


def test_tolerance_allows_small_drops() -> None:
    truth = ["pos"] * 100
    result = gate(["pos"] * 99 + ["neg"], ["pos"] * 100, truth, tolerance=0.02)
    assert result.passed


def test_a_failing_must_pass_example_blocks_an_otherwise_better_candidate() -> None:
    truth = ["pos", "neg"]
    result = gate(["pos", "neg"], ["neg", "neg"], truth, must=["pos", "neg"], must_pred=["pos", "pos"])
    assert not result.passed
    assert result.must_pass_failures == [{"text": "t1", "expected": "neg", "got": "pos"}]
    assert "1 of 2 must-pass" in result.reason


def test_new_label_is_compared_on_shared_labels_only() -> None:
    labels3 = ["pos", "neg", "meh"]
    truth = ["pos", "neg", "meh"]
    result = evaluate_gate(
        truth=truth,
        candidate_probs=probs(["pos", "neg", "meh"], labels3),
        candidate_labels=labels3,
        primary_probs=probs(["pos", "neg", "pos"]),
        primary_labels=LABELS,
        must_pass_truth=[],
        must_pass_texts=[],
        must_pass_probs=np.zeros((0, 3)),
    )
    assert result.passed and result.compared_items == 2 and result.shared_labels == ["pos", "neg"]


def test_first_version_without_primary_passes() -> None:
    result = gate(["pos"], None, ["pos"])
    assert result.passed and result.primary_accuracy is None


def fresh(truth: list[str], candidate: list[str], primary: list[str]) -> FreshItems:
    return FreshItems(truth, probs(candidate), probs(primary))


def test_fresh_items_expose_a_worse_candidate_the_small_holdout_cannot() -> None:
    """Four holdout items say nothing; the items labelled since the primary was trained (scored by the
    candidate's out-of-fold answers) show it 10 points worse."""
    truth = ["pos", "neg", "pos", "neg"]
    new_truth = ["pos", "neg"] * 25
    worse = [("neg" if i % 5 == 0 else t) for i, t in enumerate(new_truth)]
    only_holdout = gate(truth, truth, truth)
    assert only_holdout.passed
    result = gate(truth, truth, truth, fresh=fresh(new_truth, worse, new_truth))
    assert not result.passed and result.fresh_items == 50 and result.evidence_items == 54
    assert result.reason.startswith(
        "holdout + fresh items accuracy 0.907 vs the primary's 1.000 on 54 items "
        "(right only by the primary 5, only by the candidate 0; log loss +0.203"
    )


def test_a_retrain_on_the_primarys_examples_is_held_unless_clearly_better() -> None:
    truth = ["pos", "neg"] * 10
    equal = gate(truth, truth, truth, new_examples=False)
    assert equal.passed and equal.held and equal.reason.startswith("trained on the primary's examples")
    new = gate(truth, truth, truth, new_examples=True)
    assert new.passed and not new.held
    primary = ["pos"] * 20  # right on half the items: the candidate is clearly better on 10 of 20
    better = gate(truth, primary, truth, new_examples=False)
    assert better.passed and not better.held


def test_fixing_a_must_pass_example_the_primary_gets_wrong_is_something_new() -> None:
    truth = ["pos", "neg"] * 10
    result = gate(truth, truth, truth, must=["pos"], must_pred=["pos"], new_examples=False, primary_must_pass=["neg"])
    assert result.passed and not result.held and "fixes 1 must-pass example" in result.reason
    same = gate(truth, truth, truth, must=["pos"], must_pred=["pos"], new_examples=False, primary_must_pass=["pos"])
    assert same.held


def test_fresh_items_of_a_label_the_primary_lacks_are_left_out() -> None:
    labels3 = ["pos", "neg", "meh"]
    result = evaluate_gate(
        truth=["pos"],
        candidate_probs=probs(["pos"], labels3),
        candidate_labels=labels3,
        primary_probs=probs(["pos"]),
        primary_labels=LABELS,
        must_pass_truth=[],
        must_pass_texts=[],
        must_pass_probs=np.zeros((0, 3)),
        fresh=FreshItems(["meh", "neg"], probs(["meh", "neg"], labels3), probs(["pos", "pos"])),
    )
    assert result.fresh_items == 1 and result.evidence_items == 2 and result.passed


def test_a_deployable_model_far_below_its_own_cross_validation_is_rejected() -> None:
    """A candidate whose out-of-fold answers were right 90 % of the time but whose deployable model gets 40 %
    of its own 200 training items right is broken, even beside a primary as poor on the holdout."""
    truth = ["pos", "neg"] * 40
    half = ["pos"] * 80

    def judge(train: tuple[float, int]):
        return evaluate_gate(
            truth=truth,
            candidate_probs=probs(half),
            candidate_labels=LABELS,
            primary_probs=probs(half),
            primary_labels=LABELS,
            must_pass_truth=[],
            must_pass_texts=[],
            must_pass_probs=np.zeros((0, 2)),
            candidate_cv_accuracy=0.9,
            candidate_train=train,
        )

    broken = judge((0.4, 200))
    assert not broken.passed and "its own 200 training items with accuracy 0.400" in broken.reason
    assert judge((0.95, 200)).passed  # a sound refit answers what it trained on at least as well


def test_a_candidate_a_little_less_often_right_and_far_less_sure_is_worse_by_log_loss() -> None:
    """200 items: the candidate is wrong on 4 more (1 to 5 among the discordant items: the sign test cannot
    tell) and gives the true label 0.6 where the primary gives 0.9: the paired log-loss test rejects it. As
    often right and as unsure, it passes: a matter of calibration, not a regression."""
    truth = ["pos", "neg"] * 100

    def answers(p: float, wrong: set[int]) -> np.ndarray:
        rows = []
        for i, t in enumerate(truth):
            right = p if i not in wrong else 1 - p
            rows.append([right, 1 - right] if t == "pos" else [1 - right, right])
        return np.array(rows)

    def judge(candidate: np.ndarray):
        return evaluate_gate(
            truth=truth,
            candidate_probs=candidate,
            candidate_labels=LABELS,
            primary_probs=answers(0.9, {0}),
            primary_labels=LABELS,
            must_pass_truth=[],
            must_pass_texts=[],
            must_pass_probs=np.zeros((0, 2)),
        )

    worse = judge(answers(0.6, {1, 2, 3, 4, 5}))
    assert not worse.passed and "right only by the primary 5, only by the candidate 1; log loss +0." in worse.reason
    assert judge(answers(0.6, {0})).passed
    assert judge(answers(0.9, {1, 2, 3})).passed  # 2 more wrong, as sure: within the noise of 200 items


def test_log_loss_is_compared_over_the_shared_labels() -> None:
    """A candidate with a new label spreads probability over it; renormalised over the labels both versions
    know, its answers to the old labels are as sure as the primary's."""
    labels3 = ["pos", "neg", "meh"]
    truth = ["pos", "neg"] * 50
    candidate = np.array([[0.6, 0.1, 0.3] if t == "pos" else [0.1, 0.6, 0.3] for t in truth])
    primary = np.array([[6 / 7, 1 / 7] if t == "pos" else [1 / 7, 6 / 7] for t in truth])
    result = evaluate_gate(
        truth=truth,
        candidate_probs=candidate,
        candidate_labels=labels3,
        primary_probs=primary,
        primary_labels=LABELS,
        must_pass_truth=[],
        must_pass_texts=[],
        must_pass_probs=np.zeros((0, 3)),
    )
    assert result.passed and "0.000 ±0.000 against the primary's" in result.reason
