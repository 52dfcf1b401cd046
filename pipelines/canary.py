"""The canary controller: ramps, promotes or rolls back each function's canary from live traffic."""

from datetime import datetime

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.resources import LoopMLResource
from loopml.canary import CanaryPolicy, canary_stats, decide
from loopml.deployments import DeploymentState, DeploymentStore, Handover, rollout_age_seconds
from pipelines.jobs import deploy_function

STEP_ACTIONS = ("canary", "ramp")
ACTOR = "canary_controller"


def step_started(store: DeploymentStore, state: DeploymentState) -> tuple[datetime, float | None]:
    """When the canary's current weight was set (its latest canary or ramp event), and the disagreement with
    the primary the gate measured on the holdout when the canary started."""
    started: datetime | None = None
    expected: float | None = None
    for event in reversed(store.history(state.function, limit=50)):
        if event.canary_tag != state.canary_tag:
            continue
        if event.action in STEP_ACTIONS and started is None:
            started = event.at
        if event.action == "canary":
            expected = event.details.get("holdout_disagreement")
            break
    return started or state.canary_started_at or state.updated_at, expected


def handover_request(function: str, handover: Handover) -> RunRequest:
    """A ``deploy_function`` run for the newest version that waited; keyed by the event that ended the rollout,
    so each ended rollout hands over once."""
    return RunRequest(
        partition_key=function,
        run_key=f"handover:{function}:{handover.ended_by}",
        tags={"loopml/trigger": f"rollout-ended ({handover.action})", "loopml/waiting": handover.waiting[-1]},
    )


@sensor(job=deploy_function, minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING)
def canary_controller(context: SensorEvaluationContext, loopml: LoopMLResource) -> SensorResult | SkipReason:
    """Compares canary and primary on shadow-scored traffic and feedback; each decision is recorded with its
    reason in the deployment history (`loopml deployments NAME`) and as an observation of `deployment`.

    A rollout whose traffic is too thin to judge is promoted on the gate's evidence alone after
    ``LOOPML_ROLLOUT_PATIENCE_SECONDS``. When a rollout ends (promotion or rollback, by this controller or by hand
    with ``loopml promote``/``rollback``) and newer versions passed the gate meanwhile and waited, a
    ``deploy_function`` run gates the newest one against the primary of that moment (once per ended rollout).
    """
    settings = loopml.settings()
    store = DeploymentStore(settings)
    policy = CanaryPolicy.from_env()
    summaries: list[str] = []
    observations: list[AssetObservation] = []
    run_requests: list[RunRequest] = []
    for state in store.all():
        if not state.canary_tag or not state.primary_tag:
            continue
        since, expected = step_started(store, state)
        stats = canary_stats(settings, state.function, state.primary_tag, state.canary_tag, since)
        decision = decide(stats, state.canary_weight, policy, expected, rollout_age_seconds(state))
        details = {"canary": state.canary_tag, "primary": state.primary_tag, **stats.as_metadata()}
        if decision.action == "ramp" and decision.weight is not None:
            store.set_weight(state.function, decision.weight, decision.reason, ACTOR, details)
        elif decision.action == "promote":
            store.promote(state.function, decision.reason, ACTOR, details)
        elif decision.action == "rollback":
            store.rollback(state.function, decision.reason, ACTOR, details)
        summaries.append(f"{state.function}: {decision.action} ({decision.reason})")
        if decision.action != "hold":
            observations.append(
                AssetObservation(
                    asset_key="deployment",
                    partition=state.function,
                    metadata={"action": decision.action, "reason": decision.reason, **details},
                )
            )
    for state in store.all():
        handover = store.pending_handover(state.function)
        if handover is not None:
            run_requests.append(handover_request(state.function, handover))
            summaries.append(f"{state.function}: gate {handover.waiting[-1]}, which waited for the ended rollout")
    if not summaries:
        return SkipReason("no canary in rollout")
    context.log.info("; ".join(summaries))
    if not observations and not run_requests:
        return SkipReason("; ".join(summaries))
    return SensorResult(asset_events=observations, run_requests=run_requests)
