"""The canary controller sensor on prepared traffic: hold, ramp, promote and rollback."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from assets.resources import LoopMLResource
from loopml.canary import CanaryPolicy, CanaryStats, decide
from loopml.config import get_settings
from loopml.db import FeedbackRow, InvocationRow, session_factory, utcnow
from loopml.deployments import DeploymentStore
from pipelines.canary import canary_controller

P, C = "fn:v1", "fn:v2"
LABELS = ["pos", "neg"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    monkeypatch.setenv("LOOPML_CANARY_MIN_REQUESTS", "50")
    settings = get_settings()
    settings.ensure_dirs()
    deployments = DeploymentStore(settings)
    deployments.set_primary("fn", P, "first version")
    deployments.start_canary("fn", C, 0.10, "gate passed")
    return deployments


def traffic(
    n: int, *, agree: bool = True, canary_scores: bool = True, feedback: str | None = None, after_s: float = 0.0
) -> None:
    """``n`` invocations scored by both versions; the canary agrees with the primary or flips its answer."""
    sessions = session_factory(get_settings().database_url)
    with sessions.begin() as session:
        for i in range(n):
            primary = [0.8, 0.2] if i % 2 else [0.3, 0.7]
            canary = primary if agree else primary[::-1]
            scores = {P: primary, C: canary} if canary_scores else {P: primary}
            inv = str(uuid.uuid4())
            session.add(
                InvocationRow(
                    id=inv,
                    function="fn",
                    created_at=utcnow() + timedelta(seconds=after_s, milliseconds=5),
                    input_text=f"x{i}",
                    scores=scores,
                    labels={P: LABELS, C: LABELS},
                    answered_by=P,
                    label="pos",
                    confidence=max(primary),
                    latency_ms=3.0,
                )
            )
            if feedback == "primary_right":
                session.add(
                    FeedbackRow(invocation_id=inv, function="fn", true_label=LABELS[primary.index(max(primary))])
                )


def tick():
    context = build_sensor_context(instance=DagsterInstance.ephemeral(), resources={"loopml": LoopMLResource()})
    return canary_controller(context)


def test_holds_until_enough_requests(store) -> None:
    traffic(10)
    result = tick()
    assert isinstance(result, SkipReason) and "hold" in result.skip_message and "10/50" in result.skip_message
    assert store.get("fn").canary_weight == 0.10


def test_ramps_step_by_step_then_promotes(store) -> None:
    weights = []
    for _ in range(3):
        traffic(60)
        result = tick()
        assert isinstance(result, SensorResult)
        assert result.asset_events[0].metadata["action"].value in ("ramp", "promote")
        state = store.get("fn")
        weights.append((state.primary_tag, state.canary_tag, state.canary_weight))
    assert weights == [(P, C, 0.25), (P, C, 0.50), (C, None, 0.0)]
    actions = [e.action for e in store.history("fn")]
    assert actions == ["primary", "canary", "ramp", "ramp", "promote"]
    assert all(e.actor == "canary_controller" for e in store.history("fn")[2:])
    assert isinstance(tick(), SkipReason)  # nothing in rollout any more


def test_rolls_back_when_the_canary_disagrees(store) -> None:
    traffic(60, agree=False)
    result = tick()
    assert isinstance(result, SensorResult)
    state = store.get("fn")
    assert state.primary_tag == P and state.canary_tag is None
    last = store.history("fn")[-1]
    assert last.action == "rollback" and "disagrees with the primary on 100.0%" in last.reason
    assert last.details["disagreement_rate"] == 1.0


def test_rolls_back_when_the_canary_fails_to_score(store) -> None:
    traffic(20, canary_scores=False, after_s=10)  # well after the service should have loaded it
    tick()
    assert store.get("fn").canary_tag is None
    assert "failed to score" in store.history("fn")[-1].reason


def test_rolls_back_on_worse_human_feedback(store) -> None:
    store.rollback("fn", "reset")
    store.start_canary("fn", C, 0.10, "again")
    # the canary flips answers on a few calls, and people said the primary was right on those
    traffic(60, agree=True)
    traffic(12, agree=False, feedback="primary_right")
    tick()
    last = store.history("fn")[-1]
    assert last.action == "rollback" and "feedback accuracy" in last.reason


def test_disagreement_the_gate_expected_is_not_a_breach(store) -> None:
    store.rollback("fn", "reset")
    store.start_canary("fn", C, 0.10, "gate passed", details={"holdout_disagreement": 0.95})
    traffic(60, agree=False)
    result = tick()
    assert isinstance(result, SensorResult)
    assert store.get("fn").canary_weight == 0.25  # ramped: the gate saw this much disagreement offline


def test_requests_before_the_service_loaded_the_canary_are_not_failures(store) -> None:
    traffic(20, canary_scores=False)  # the service had not hot-loaded the canary yet
    traffic(60)
    tick()
    state = store.get("fn")
    assert state.canary_tag == C and state.canary_weight == 0.25


def test_a_rollout_that_ends_with_a_version_waiting_requests_its_gate(store) -> None:
    store.record("fn", "wait", "gate passed; waits for the rollout", details={"candidate": "fn:v3"})
    store.record("fn", "wait", "gate passed; waits for the rollout", details={"candidate": "fn:v4"})
    assert store.pending_handover("fn") is None  # still rolling out
    for _ in range(2):  # 10 % -> 25 % -> 50 %: still rolling out, nothing requested
        traffic(60)
        assert not tick().run_requests
    traffic(60)
    result = tick()  # promoted
    assert store.get("fn").primary_tag == C
    (request,) = result.run_requests
    assert request.partition_key == "fn" and request.tags["loopml/waiting"] == "fn:v4"
    assert request.tags["loopml/trigger"] == "rollout-ended (promote)"
    assert store.pending_handover("fn").waiting == ["fn:v3", "fn:v4"]
    # the next tick asks again with the same run key: the daemon launches one run per ended rollout
    (again,) = tick().run_requests
    assert again.run_key == request.run_key == f"handover:fn:{store.history('fn')[-1].id}"


def test_a_rollback_with_a_version_waiting_requests_its_gate(store) -> None:
    store.record("fn", "wait", "gate passed; waits for the rollout", details={"candidate": "fn:v3"})
    traffic(60, agree=False)
    (request,) = tick().run_requests
    assert store.get("fn").canary_tag is None and request.tags["loopml/waiting"] == "fn:v3"


def test_a_rollout_without_a_version_waiting_requests_nothing(store) -> None:
    for _ in range(3):
        traffic(60)
        assert not tick().run_requests
    assert store.get("fn").primary_tag == C
    assert store.pending_handover("fn") is None


def test_a_canary_with_a_new_label_is_compared_on_the_shared_labels(store) -> None:
    """The canary knows a third label and answers it on a third of the calls (the primary cannot): that is the
    point of the new version, not a breach; on the other calls both agree."""
    sessions = session_factory(get_settings().database_url)
    with sessions.begin() as session:
        for i in range(90):
            primary = [0.8, 0.2] if i % 2 else [0.3, 0.7]
            canary = [0.1, 0.1, 0.8] if i % 3 == 0 else [*primary, 0.0]
            session.add(
                InvocationRow(
                    id=str(uuid.uuid4()),
                    function="fn",
                    created_at=utcnow() + timedelta(milliseconds=5),
                    input_text=f"x{i}",
                    scores={P: primary, C: canary},
                    labels={P: LABELS, C: [*LABELS, "new"]},
                    answered_by=P,
                    label="pos",
                    confidence=max(primary),
                    latency_ms=3.0,
                )
            )
    result = tick()
    assert isinstance(result, SensorResult)
    metadata = result.asset_events[0].metadata
    assert metadata["action"].value == "ramp" and store.get("fn").canary_weight == 0.25
    assert metadata["compared"].value == 60 and metadata["disagreement_rate"].value == 0.0
    assert abs(metadata["other_label_share"].value - 1 / 3) < 1e-3


@pytest.mark.parametrize("end", ["promote", "rollback"])
def test_a_rollout_ended_by_hand_hands_over_to_the_version_waiting(store, end) -> None:
    """`loopml promote`/`rollback` end the rollout outside the controller; its next tick gates the waiting one."""
    store.record("fn", "wait", "gate passed; waits for the rollout", details={"candidate": "fn:v3"})
    getattr(store, end)("fn", "by hand", actor="cli")
    (request,) = tick().run_requests
    assert request.tags == {"loopml/trigger": f"rollout-ended ({end})", "loopml/waiting": "fn:v3"}
    assert request.run_key == f"handover:fn:{store.history('fn')[-1].id}"
    store.start_canary("fn", "fn:v3", 0.10, "gate passed")  # what the deploy run does
    assert store.pending_handover("fn") is None


def test_a_rollout_too_thin_to_judge_is_promoted_on_the_gate_after_the_patience(store, monkeypatch) -> None:
    traffic(5)
    tick()
    assert store.get("fn").canary_tag == C  # within the patience: holds for traffic
    monkeypatch.setenv("LOOPML_ROLLOUT_PATIENCE_SECONDS", "0")
    store.record("fn", "wait", "gate passed; waits for the rollout", details={"candidate": "fn:v3"})
    result = tick()
    state, last = store.get("fn"), store.history("fn")[-1]
    assert (state.primary_tag, state.canary_tag) == (C, None)
    assert last.action == "promote" and "too little traffic to judge" in last.reason
    assert "promoted on the gate's evidence alone" in last.reason
    assert [r.tags["loopml/waiting"] for r in result.run_requests] == ["fn:v3"]


def test_a_thin_rollout_that_breached_is_still_rolled_back(store, monkeypatch) -> None:
    monkeypatch.setenv("LOOPML_ROLLOUT_PATIENCE_SECONDS", "0")
    traffic(5, canary_scores=False, after_s=10)
    tick()
    assert store.get("fn").primary_tag == P and store.history("fn")[-1].action == "rollback"


def _stats(**changes) -> CanaryStats:
    base = dict(
        requests=50,
        shadow_scored=50,
        disagreement_rate=0.0,
        label_shift=0.0,
        confidence_shift=0.0,
        error_rate=0.0,
        latency_ratio=1.0,
        feedback=0,
        primary_feedback_accuracy=None,
        canary_feedback_accuracy=None,
        compared=50,
        other_label_share=0.0,
    )
    return CanaryStats(**{**base, **changes})


def test_a_limit_is_breached_only_beyond_its_sampling_error() -> None:
    """On 50 calls the sampling error of a share near 25 % is 6 points: 30 % disagreement (limit 25 %) and a
    label shift of 0.28 (limit 0.20) are noise at 95 %, 50 % disagreement is not; with ``noise_z=0`` (the bare
    limits) 30 % breaches."""
    policy = CanaryPolicy()
    assert decide(_stats(disagreement_rate=0.30, label_shift=0.28), 0.1, policy).action == "ramp"
    assert decide(_stats(disagreement_rate=0.50), 0.1, policy).action == "rollback"
    assert decide(_stats(disagreement_rate=0.30), 0.1, CanaryPolicy(noise_z=0.0)).action == "rollback"


def test_worse_feedback_needs_a_significant_paired_difference() -> None:
    """Ten labelled calls, the canary right on 1 fewer (0.1 lower accuracy): noise; right only by the primary
    on 6 of them and never only by the canary: a breach."""
    policy = CanaryPolicy()
    noise = _stats(
        feedback=10,
        primary_feedback_accuracy=0.8,
        canary_feedback_accuracy=0.7,
        feedback_only_primary=2,
        feedback_only_canary=1,
    )
    assert decide(noise, 0.1, policy).action == "ramp"
    assert decide(noise, 0.1, CanaryPolicy(noise_z=0.0)).action == "rollback"
    worse = _stats(
        feedback=10,
        primary_feedback_accuracy=0.8,
        canary_feedback_accuracy=0.2,
        feedback_only_primary=6,
        feedback_only_canary=0,
    )
    decision = decide(worse, 0.1, policy)
    assert decision.action == "rollback" and "right only by the primary 6, only by the canary 0" in decision.reason
