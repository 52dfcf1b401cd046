"""The canary controller's judgement: compare canary and primary on shadow-scored live traffic and feedback.

Every invocation during a rollout is scored by both heads (the encoder runs once), so the comparison uses all
traffic, not just the canary's share. ``decide`` turns the statistics into hold, ramp, promote or rollback.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from loopml.config import Settings
from loopml.db import FeedbackRow, InvocationRow, as_utc, session_factory
from loopml.deployments import CANARY_STEPS, ROLLOUT_PATIENCE_SECONDS
from loopml.gate import Z_ONE_SIDED_95, significant

LOAD_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[float, ...] = CANARY_STEPS
    min_requests_per_step: int = 50
    max_disagreement: float = 0.25
    # the gate measured how often the two versions disagree on the holdout; live traffic may exceed that by this
    disagreement_margin: float = 0.10
    max_label_shift: float = 0.20  # total-variation distance between predicted-label distributions
    max_confidence_drop: float = 0.15
    max_error_rate: float = 0.02
    max_latency_ratio: float = 3.0
    min_feedback: int = 10
    max_feedback_accuracy_drop: float = 0.05
    # how many standard errors of noise a breach must exceed (0: the bare limits, as before the gate simulation)
    noise_z: float = Z_ONE_SIDED_95
    # a rollout this old whose current step still lacks traffic is promoted on the gate's evidence alone
    patience_seconds: float = ROLLOUT_PATIENCE_SECONDS

    @classmethod
    def from_env(cls) -> CanaryPolicy:
        return cls(
            min_requests_per_step=int(os.environ.get("LOOPML_CANARY_MIN_REQUESTS", cls.min_requests_per_step)),
            patience_seconds=float(os.environ.get("LOOPML_ROLLOUT_PATIENCE_SECONDS", cls.patience_seconds)),
        )


@dataclass(frozen=True)
class CanaryStats:
    requests: int  # invocations since the current step began
    shadow_scored: int  # of those, scored by both versions
    disagreement_rate: float  # over the compared calls
    label_shift: float  # over the compared calls
    confidence_shift: float  # canary mean confidence minus primary's
    error_rate: float  # invocations where the canary failed to score
    latency_ratio: float  # canary-answered mean latency / primary-answered
    feedback: int
    primary_feedback_accuracy: float | None
    canary_feedback_accuracy: float | None
    # shadow-scored calls where each version's answer is a label the other version has; disagreement and label
    # shift are measured on these (a label added or removed changes answers by design: "per shared label")
    compared: int
    other_label_share: float  # share of shadow-scored calls answered with a label the other lacks
    # labelled calls only the primary / only the canary answered right (the paired test of the feedback)
    feedback_only_primary: int = 0
    feedback_only_canary: int = 0

    def as_metadata(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CanaryDecision:
    action: str  # hold | ramp | promote | rollback
    weight: float | None
    reason: str


def canary_stats(settings: Settings, function: str, primary_tag: str, canary_tag: str, since: datetime) -> CanaryStats:
    """Statistics over the function's invocations since ``since`` (the start of the current step)."""
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        rows = session.execute(
            select(
                InvocationRow.id,
                InvocationRow.scores,
                InvocationRow.labels,
                InvocationRow.answered_by,
                InvocationRow.latency_ms,
                InvocationRow.created_at,
            )
            .where(InvocationRow.function == function, InvocationRow.created_at >= as_utc(since))
            .order_by(InvocationRow.created_at)
        ).all()
        ids = [r.id for r in rows]
        feedback = (
            session.execute(
                select(FeedbackRow.invocation_id, FeedbackRow.true_label, FeedbackRow.flagged).where(
                    FeedbackRow.function == function
                )
            ).all()
            if ids
            else []
        )
    return stats_from_rows(rows, feedback, primary_tag, canary_tag, since)


def stats_from_rows(
    rows: list[Any], feedback: list[Any], primary_tag: str, canary_tag: str, since: datetime
) -> CanaryStats:
    """The comparison itself, on plain rows (id, scores, labels, answered_by, latency_ms, created_at) in time
    order.

    The serving process hot-loads a new canary within about a second: rows from the first
    ``LOAD_GRACE_SECONDS`` of the window that precede its first canary score are not counted as failures.
    """
    start = as_utc(since)
    first = next((i for i, row in enumerate(rows) if canary_tag in (row.scores or {})), len(rows))
    rows = [
        row
        for i, row in enumerate(rows)
        if i >= first or (as_utc(row.created_at) - start).total_seconds() > LOAD_GRACE_SECONDS
    ]
    prim_pred: dict[str, str] = {}
    can_pred: dict[str, str] = {}
    comparable: set[str] = set()  # each answer is a label the other version has
    prim_conf, can_conf, errors = [], [], 0
    latency = {primary_tag: [], canary_tag: []}
    for row in rows:
        scores, labels = row.scores or {}, row.labels or {}
        if row.answered_by in latency:
            latency[row.answered_by].append(row.latency_ms)
        if primary_tag not in scores:
            continue
        if canary_tag not in scores:
            errors += 1
            continue
        p, c = np.asarray(scores[primary_tag]), np.asarray(scores[canary_tag])
        prim_pred[row.id] = labels[primary_tag][int(p.argmax())]
        can_pred[row.id] = labels[canary_tag][int(c.argmax())]
        if prim_pred[row.id] in labels[canary_tag] and can_pred[row.id] in labels[primary_tag]:
            comparable.add(row.id)
        prim_conf.append(float(p.max()))
        can_conf.append(float(c.max()))
    n, m = len(prim_pred), len(comparable)
    disagreement = sum(prim_pred[i] != can_pred[i] for i in comparable) / m if m else 0.0
    count_p, count_c = Counter(prim_pred[i] for i in comparable), Counter(can_pred[i] for i in comparable)
    shift = 0.5 * sum(abs(count_p[x] - count_c[x]) for x in count_p | count_c) / m if m else 0.0
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    p_lat, c_lat = mean(latency[primary_tag]), mean(latency[canary_tag])
    truths = {f.invocation_id: f.true_label for f in feedback if f.true_label and f.invocation_id in prim_pred}
    only_primary = sum(prim_pred[i] == t != can_pred[i] for i, t in truths.items())
    only_canary = sum(can_pred[i] == t != prim_pred[i] for i, t in truths.items())
    return CanaryStats(
        requests=len(rows),
        shadow_scored=n,
        disagreement_rate=disagreement,
        label_shift=shift,
        confidence_shift=mean(can_conf) - mean(prim_conf),
        error_rate=errors / len(rows) if rows else 0.0,
        latency_ratio=c_lat / p_lat if p_lat and c_lat else 1.0,
        feedback=len(truths),
        primary_feedback_accuracy=(sum(prim_pred[i] == t for i, t in truths.items()) / len(truths)) if truths else None,
        canary_feedback_accuracy=(sum(can_pred[i] == t for i, t in truths.items()) / len(truths)) if truths else None,
        compared=m,
        other_label_share=(n - m) / n if n else 0.0,
        feedback_only_primary=only_primary,
        feedback_only_canary=only_canary,
    )


def _beyond_noise(limit: float, calls: int, z: float) -> float:
    """``limit`` on a share measured on ``calls`` calls, raised by the one-sided 95 % sampling error of a share
    at the limit: a version ``limit`` away from the primary would breach it on half of the steps otherwise (a
    step is 50 calls by default; checked at every step of the rollout)."""
    limit = min(limit, 1.0)
    return limit + z * (limit * (1.0 - limit) / calls) ** 0.5 if calls else limit


def decide(
    stats: CanaryStats,
    weight: float,
    policy: CanaryPolicy,
    expected_disagreement: float | None = None,
    rollout_seconds: float | None = None,
) -> CanaryDecision:
    """Roll back on any breach; hold until enough traffic; else ramp to the next step, promote after the last.

    Traffic too thin to judge: a rollout older than ``policy.patience_seconds`` (``rollout_seconds`` since the
    canary started) whose current step still lacks ``min_requests_per_step`` shadow-scored calls, and that
    breached nothing on the calls it saw, is promoted on the gate's evidence alone (the reason says so), so a
    function with little traffic does not hold a canary (and the versions waiting behind it) for ever.

    ``expected_disagreement`` is what the gate saw on the holdout: a better model is expected to disagree with
    the primary that often, so live disagreement (and label shift) breach only beyond it plus a margin. Both are
    measured on the calls where each version answered a label the other has (``stats.compared``): a version
    with a new label answers it where the primary could not, by design. Both limits are raised by the sampling
    error of a share on that many calls (:func:`_beyond_noise`), and worse feedback accuracy breaches only when
    a paired sign test of the labelled calls only one version got right says it is not noise (as in the gate):
    checked at every step, a noise-level limit rolled back a truly better candidate in most rollouts of
    ``bench/gate_simulation.py``.
    """
    expected = (expected_disagreement or 0.0) + policy.disagreement_margin
    max_disagreement = _beyond_noise(max(policy.max_disagreement, expected), stats.compared, policy.noise_z)
    max_label_shift = _beyond_noise(max(policy.max_label_shift, expected), stats.compared, policy.noise_z)
    breaches = []
    if stats.error_rate > policy.max_error_rate:
        breaches.append(f"canary failed to score {stats.error_rate:.1%} of requests")
    if stats.compared >= policy.min_requests_per_step:
        if stats.disagreement_rate > max_disagreement:
            breaches.append(
                f"disagrees with the primary on {stats.disagreement_rate:.1%} of comparable requests "
                f"(at most {max_disagreement:.1%} expected)"
            )
        if stats.label_shift > max_label_shift:
            breaches.append(f"label distribution moved by {stats.label_shift:.2f} (total variation)")
    if stats.shadow_scored >= policy.min_requests_per_step:
        if stats.confidence_shift < -policy.max_confidence_drop:
            breaches.append(f"mean confidence dropped by {-stats.confidence_shift:.2f}")
        if stats.latency_ratio > policy.max_latency_ratio:
            breaches.append(f"latency {stats.latency_ratio:.1f}x the primary's")
    if (
        stats.feedback >= policy.min_feedback
        and stats.primary_feedback_accuracy is not None
        and stats.canary_feedback_accuracy is not None
        and stats.canary_feedback_accuracy < stats.primary_feedback_accuracy - policy.max_feedback_accuracy_drop
        and significant(stats.feedback_only_primary, stats.feedback_only_canary, policy.noise_z)
    ):
        breaches.append(
            f"feedback accuracy {stats.canary_feedback_accuracy:.2f} vs primary "
            f"{stats.primary_feedback_accuracy:.2f} on {stats.feedback} labelled calls (right only by the primary "
            f"{stats.feedback_only_primary}, only by the canary {stats.feedback_only_canary})"
        )
    if breaches:
        return CanaryDecision("rollback", None, "; ".join(breaches))
    if stats.shadow_scored < policy.min_requests_per_step:
        if rollout_seconds is not None and rollout_seconds >= policy.patience_seconds:
            return CanaryDecision(
                "promote",
                1.0,
                f"too little traffic to judge: {stats.shadow_scored}/{policy.min_requests_per_step} shadow-scored "
                f"requests at {weight:.0%} after {rollout_seconds:.0f} s of rollout (patience "
                f"{policy.patience_seconds:.0f} s); promoted on the gate's evidence alone",
            )
        return CanaryDecision(
            "hold",
            weight,
            f"{stats.shadow_scored}/{policy.min_requests_per_step} shadow-scored requests at {weight:.0%}",
        )
    summary = (
        f"{stats.shadow_scored} requests: disagreement {stats.disagreement_rate:.1%}, "
        f"label shift {stats.label_shift:.2f}, confidence {stats.confidence_shift:+.2f}"
    )
    higher = [step for step in policy.steps if step > weight + 1e-9]
    if not higher or higher[0] >= 1.0:
        return CanaryDecision("promote", 1.0, f"healthy at {weight:.0%} ({summary})")
    return CanaryDecision("ramp", higher[0], f"healthy at {weight:.0%} ({summary})")
