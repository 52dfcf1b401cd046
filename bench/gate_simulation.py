"""Gate simulation: how often candidates that are truly better, equal and planted worse reach 100 % of traffic.

Three configurations of gate and canary controller, each run on the same versions and simulated traffic:

* ``before``: the gate as it was: candidate and primary on the holdout split (a few dozen items) and the
  must-pass examples; every candidate that is not significantly and materially worse rolls out; then the
  canary controller as it was (bare limits on disagreement, label shift and feedback accuracy at every step,
  ``CanaryPolicy(noise_z=0)``);
* ``holdout-only gate``: the same gate, today's canary controller (limits raised by their sampling error, a
  paired test of the feedback);
* ``now``: ``loopml.gate`` today: the deployable model checked against its own out-of-fold accuracy, then
  the holdout plus the items labelled since the primary was trained (scored by the candidate's out-of-fold
  answers), a candidate trained on exactly the primary's examples held unless clearly better; today's canary
  controller.

Per data set (RottenTomatoes, BBC News) and seed: a fixed 20 % test set (``bench/learning_curve.holdout_split``)
gives every version's true accuracy. The rest is the stream of items a user labels, in a random order; 20 % of
labelled items fall in the holdout split (by content hash in the product, at random here). The primary is
``run_automl`` on the training items among the first ``--primary`` labelled items; the candidates:

* ``better``: trained on the training items among the first ``--better`` labelled items (the primary's and
  later ones; its true accuracy is higher on average, the table says by how much);
* ``equal``: the primary's training items again (a scheduled retrain with nothing new), another CV seed;
* ``worse`` (planted): the ``better`` candidate's items seen through a broken input pipeline (all but
  ``WORSE_DIMENSIONS`` embedding dimensions zeroed and texts cut to their first ``WORSE_WORDS`` words, in
  training and serving alike: both the embedding heads and the TF-IDF model lose);
* ``fewer`` (planted): a third of the ``better`` candidate's training items (a filter that lost the rest):
  fewer items than the primary's, slightly worse;
* ``broken`` (planted): the ``better`` candidate with its first two labels' columns swapped in the deployable
  model (a serving bug; its out-of-fold answers are untouched, so only the holdout can show it).

The canary: ``loopml.canary.decide`` at each of ``CANARY_STEPS`` on ``min_requests_per_step`` calls drawn from the
test set, both versions scoring every call (shadow scoring), a true label fed back on ``--feedback`` of the calls.

Printed per data set and kind: the share of seeds where the candidate reached 100 % (became the primary), was
rejected by the gate, was held, or was rolled back by the canary (with the standard error of a share), and the
mean true accuracy of candidate minus primary on the test set.

    .venv/bin/python bench/gate_simulation.py [--seeds 20] [--primary 120] [--better 300] [--feedback 0.2]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automl_speed import DATASETS, load_with_embeddings  # noqa: E402
from learning_curve import holdout_split  # noqa: E402

from loopml.canary import CanaryPolicy, CanaryStats, decide  # noqa: E402
from loopml.deployments import CANARY_STEPS  # noqa: E402
from loopml.gate import FreshItems, GateResult, evaluate_gate  # noqa: E402

KINDS = ("better", "equal", "fewer", "worse", "broken")
# gate, canary policy: as before; the holdout-only gate with today's canary; today's gate and canary
GATES = ("before", "holdout-only gate", "now")
WORSE_DIMENSIONS = 6  # of the encoder's 384 kept by the planted broken input pipeline
WORSE_WORDS = 3  # words of each text it keeps
HOLDOUT_SHARE = 0.2
ROLLBACK_REASONS: Counter = Counter()  # first word of the canary's reason, over all rollbacks


@dataclass
class Version:
    """A trained version: its label set, test-set and holdout probabilities, out-of-fold probabilities of its
    training rows (row ids into the data set)."""

    labels: list[str]
    test: np.ndarray
    holdout: np.ndarray
    train_rows: np.ndarray
    oof: np.ndarray
    model: object
    emb: np.ndarray
    own: np.ndarray  # the deployable model's probabilities for its own training rows


def train(
    rows: np.ndarray,
    emb: np.ndarray,
    seed: int,
    texts: list[str],
    labels: np.ndarray,
    test: np.ndarray,
    hold: np.ndarray,
) -> Version:
    """``run_automl`` on ``rows`` (CV seed ``seed``), scored on the test set and the holdout."""
    from loopml.automl import run_automl

    label_set = sorted(set(labels.tolist()))
    result = run_automl([texts[i] for i in rows], emb[rows], labels[rows].tolist(), label_set, seed=seed)
    predict = result.model.predict_proba
    return Version(
        label_set,
        predict([texts[i] for i in test], emb[test]),
        predict([texts[i] for i in hold], emb[hold]),
        rows,
        result.oof_proba,
        result.model,
        emb,
        predict([texts[i] for i in rows], emb[rows]),
    )


def swapped(version: Version) -> Version:
    """The version with its first two labels' columns swapped in the deployable model only."""
    order = list(range(len(version.labels)))
    order[0], order[1] = 1, 0
    return Version(
        version.labels,
        version.test[:, order],
        version.holdout[:, order],
        version.train_rows,
        version.oof,
        version.model,
        version.emb,
        version.own[:, order],
    )


def gate(
    kind_gate: str,
    candidate: Version,
    primary: Version,
    labels: np.ndarray,
    hold: np.ndarray,
    texts: list[str],
    new_examples: bool,
) -> GateResult:
    truth = labels[hold].tolist()
    common = dict(
        truth=truth,
        candidate_probs=candidate.holdout,
        candidate_labels=candidate.labels,
        primary_probs=primary.holdout,
        primary_labels=primary.labels,
        must_pass_truth=[],
        must_pass_texts=[],
        must_pass_probs=np.zeros((0, len(candidate.labels))),
    )
    if kind_gate != "now":
        return evaluate_gate(**common)
    seen = set(primary.train_rows.tolist())
    fresh_pos = np.array([i for i, row in enumerate(candidate.train_rows) if row not in seen], dtype=np.int64)
    fresh_rows = candidate.train_rows[fresh_pos]
    fresh = FreshItems(
        labels[fresh_rows].tolist(),
        candidate.oof[fresh_pos] if len(fresh_pos) else np.zeros((0, len(candidate.labels))),
        primary.model.predict_proba([texts[i] for i in fresh_rows], primary.emb[fresh_rows])
        if len(fresh_rows)
        else np.zeros((0, len(primary.labels))),
    )
    train_y = np.array([candidate.labels.index(label) for label in labels[candidate.train_rows]])
    cv_accuracy = float(np.mean(candidate.oof.argmax(axis=1) == train_y))
    own = (float(np.mean(candidate.own.argmax(axis=1) == train_y)), len(train_y))
    return evaluate_gate(
        **common, fresh=fresh, new_examples=new_examples, candidate_cv_accuracy=cv_accuracy, candidate_train=own
    )


def canary(
    candidate: Version,
    primary: Version,
    test_y: np.ndarray,
    expected: float | None,
    feedback: float,
    seed: int,
    policy: CanaryPolicy,
) -> str:
    """``promote`` or ``rollback`` from the canary controller on simulated traffic."""
    rng = np.random.default_rng(10_000 + seed)
    weight = CANARY_STEPS[0]
    for _ in CANARY_STEPS:
        calls = rng.choice(len(test_y), policy.min_requests_per_step, replace=False)
        p, c = primary.test[calls], candidate.test[calls]
        p_pred, c_pred, y = p.argmax(axis=1), c.argmax(axis=1), test_y[calls]
        told = rng.random(len(calls)) < feedback
        n_classes = p.shape[1]
        shift = 0.5 * float(
            np.abs(np.bincount(p_pred, minlength=n_classes) - np.bincount(c_pred, minlength=n_classes)).sum()
        )
        stats = CanaryStats(
            requests=len(calls),
            shadow_scored=len(calls),
            disagreement_rate=float(np.mean(p_pred != c_pred)),
            label_shift=shift / len(calls),
            confidence_shift=float(c.max(axis=1).mean() - p.max(axis=1).mean()),
            error_rate=0.0,
            latency_ratio=1.0,
            feedback=int(told.sum()),
            primary_feedback_accuracy=float(np.mean(p_pred[told] == y[told])) if told.any() else None,
            canary_feedback_accuracy=float(np.mean(c_pred[told] == y[told])) if told.any() else None,
            compared=len(calls),
            other_label_share=0.0,
            feedback_only_primary=int(np.sum(told & (p_pred == y) & (c_pred != y))),
            feedback_only_canary=int(np.sum(told & (c_pred == y) & (p_pred != y))),
        )
        decision = decide(stats, weight, policy, expected_disagreement=expected)
        if decision.action in ("promote", "rollback"):
            if decision.action == "rollback":
                ROLLBACK_REASONS[decision.reason.split(" ")[0]] += 1
            return decision.action
        weight = decision.weight or weight
    return "promote"


def simulate(name: str, seeds: int, n_primary: int, n_better: int, feedback: float) -> dict:
    texts, label_list, emb = load_with_embeddings(name)
    labels = np.array(label_list)
    pool, test = holdout_split(label_list)
    label_set = sorted(set(label_list))
    test_y = np.array([label_set.index(label) for label in labels[test]])
    worse_emb = emb.copy()
    worse_emb[:, WORSE_DIMENSIONS:] = 0.0
    worse_texts = [" ".join(text.split()[:WORSE_WORDS]) for text in texts]
    outcomes: dict[tuple[str, str], Counter] = {(g, k): Counter() for g in GATES for k in KINDS}
    gains: dict[str, list[float]] = {k: [] for k in KINDS}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        stream = rng.permutation(pool)[:n_better]
        in_holdout = rng.random(len(stream)) < HOLDOUT_SHARE
        first = stream[:n_primary][~in_holdout[:n_primary]]
        more = stream[~in_holdout]
        hold_all = stream[in_holdout]

        scored = (texts, labels, test, hold_all)
        primary = train(first, emb, seed, *scored)
        better = train(more, emb, seed, *scored)
        candidates = {
            "better": (better, True),
            "equal": (train(first, emb, seed + 1000, *scored), False),
            "fewer": (train(more[::3], emb, seed, *scored), True),
            "worse": (train(more, worse_emb, seed, worse_texts, labels, test, hold_all), True),
            "broken": (swapped(better), True),
        }
        primary_acc = float(np.mean(primary.test.argmax(axis=1) == test_y))
        for kind, (candidate, new_examples) in candidates.items():
            gains[kind].append(float(np.mean(candidate.test.argmax(axis=1) == test_y)) - primary_acc)
            for kind_gate in GATES:
                result = gate(kind_gate, candidate, primary, labels, hold_all, texts, new_examples)
                if not result.passed:
                    outcome = "rejected"
                elif result.held:
                    outcome = "held"
                else:
                    policy = CanaryPolicy(noise_z=0.0) if kind_gate == "before" else CanaryPolicy()
                    expected = result.holdout_disagreement
                    outcome = canary(candidate, primary, test_y, expected, feedback, seed, policy)
                outcomes[(kind_gate, kind)][outcome] += 1
                if kind in ("fewer", "worse", "broken") and outcome == "promote":
                    print(f"  {name} seed {seed}: {kind} reached 100 % ({kind_gate}): {result.reason}", file=sys.stderr)
        done = ", ".join(f"{k} {np.mean(v):+.3f}" for k, v in gains.items())
        print(f"  {name} seed {seed + 1}/{seeds}: true gain so far {done}", file=sys.stderr, flush=True)
    return {"outcomes": outcomes, "gains": gains, "holdout": len(hold_all)}


def share(count: int, total: int) -> str:
    p = count / total
    return f"{p:.0%} ± {np.sqrt(p * (1 - p) / total):.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--primary", type=int, default=120, help="labelled items behind the primary")
    parser.add_argument("--better", type=int, default=300, help="labelled items behind the better candidate")
    parser.add_argument("--feedback", type=float, default=0.2, help="share of canary calls with a true label")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args()
    print(
        f"Gate simulation: {args.seeds} seeds, primary on {args.primary} labelled items (20 % holdout), better "
        f"candidate on {args.better}, canary steps {CANARY_STEPS} x {CanaryPolicy().min_requests_per_step} calls, "
        f"feedback on {args.feedback:.0%} of calls\n"
    )
    for name in args.datasets.split(","):
        found = simulate(name, args.seeds, args.primary, args.better, args.feedback)
        print(f"### {name} (holdout at the gate: about {found['holdout']} items)\n")
        print("| gate | candidate | true gain (test) | reaches 100 % | rejected at gate | held | rolled back |")
        print("|---|---|---|---|---|---|---|")
        for kind_gate in GATES:
            for kind in KINDS:
                counts = found["outcomes"][(kind_gate, kind)]
                gain = found["gains"][kind]
                se = np.std(gain, ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else 0.0
                cells = [share(counts[o], args.seeds) for o in ("promote", "rejected", "held", "rollback")]
                print(f"| {kind_gate} | {kind} | {np.mean(gain):+.3f} ± {se:.3f} | " + " | ".join(cells) + " |")
        print()
    print(f"Canary rollbacks by reason: {dict(ROLLBACK_REASONS)}")


if __name__ == "__main__":
    main()
