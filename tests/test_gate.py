"""The deployment gate on prepared scores."""

import numpy as np

from loopml.gate import evaluate_gate

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
