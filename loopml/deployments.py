"""Deployment state per function (primary, canary, weight) and its history of decisions.

Every change bumps a global ``revision`` so the serving process can hot-reload by polling one number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from loopml.config import Settings
from loopml.db import DeploymentEventRow, DeploymentRow, as_utc, session_factory, utcnow

CANARY_STEPS = (0.10, 0.25, 0.50, 1.00)
# A canary rolling out for less than this is not replaced by a newer version: the newer one waits and is gated
# when the rollout ends (otherwise, with annotations arriving every few seconds, every rollout is cut short and
# the first primary serves for ever). A rollout older than this (too little traffic to decide) is replaced.
ROLLOUT_PATIENCE_SECONDS = 300.0
HOLD_ACTION = "hold"  # the history action of a candidate that passed the gate with nothing new (loopml.gate)
WAIT_ACTION = "wait"  # the history action of a candidate that passed the gate and waits for a rollout to end


class DeploymentError(ValueError):
    """An impossible deployment action; the message says what the state is and what to do."""


@dataclass(frozen=True)
class DeploymentState:
    function: str
    primary_tag: str | None
    canary_tag: str | None
    canary_weight: float
    canary_started_at: datetime | None
    revision: int
    updated_at: datetime


@dataclass(frozen=True)
class DeploymentEvent:
    function: str
    at: datetime
    action: str
    primary_tag: str | None
    canary_tag: str | None
    canary_weight: float
    reason: str
    actor: str
    details: dict[str, Any]
    id: int = 0


@dataclass(frozen=True)
class Handover:
    """A rollout ended (by the canary controller or by hand) while newer versions waited for it."""

    ended_by: int  # id of the promote/rollback event that ended the rollout
    action: str  # promote | rollback
    waiting: list[str]  # candidates that passed the gate and waited, oldest first


END_ACTIONS = ("promote", "rollback")


def _state(row: DeploymentRow) -> DeploymentState:
    return DeploymentState(
        row.function,
        row.primary_tag,
        row.canary_tag,
        row.canary_weight,
        row.canary_started_at,
        row.revision,
        row.updated_at,
    )


def rollout_age_seconds(state: DeploymentState) -> float | None:
    """Seconds since the function's canary started rolling out; ``None`` without a canary."""
    if not state.canary_tag or state.canary_started_at is None:
        return None
    return (utcnow() - as_utc(state.canary_started_at)).total_seconds()


class DeploymentStore:
    """Reads and changes deployments in the platform database; each change is one transaction."""

    def __init__(self, settings: Settings) -> None:
        self._sessions = session_factory(settings.database_url)

    def get(self, function: str) -> DeploymentState | None:
        with self._sessions() as session:
            row = session.get(DeploymentRow, function)
            return _state(row) if row else None

    def all(self) -> list[DeploymentState]:
        with self._sessions() as session:
            return [_state(r) for r in session.scalars(select(DeploymentRow).order_by(DeploymentRow.function))]

    def revision(self) -> int:
        """The newest revision over all functions: the serving process reloads when it moves."""
        with self._sessions() as session:
            return int(session.scalar(select(func.max(DeploymentRow.revision))) or 0)

    def history(self, function: str, limit: int = 100) -> list[DeploymentEvent]:
        with self._sessions() as session:
            rows = session.scalars(
                select(DeploymentEventRow)
                .where(DeploymentEventRow.function == function)
                .order_by(DeploymentEventRow.id.desc())
                .limit(limit)
            )
            return [
                DeploymentEvent(
                    r.function,
                    r.at,
                    r.action,
                    r.primary_tag,
                    r.canary_tag,
                    r.canary_weight,
                    r.reason,
                    r.actor,
                    dict(r.details or {}),
                    r.id,
                )
                for r in rows
            ][::-1]

    def _change(
        self,
        function: str,
        action: str,
        reason: str,
        actor: str,
        details: dict[str, Any] | None,
        mutate: Any,
    ) -> DeploymentState:
        with self._sessions.begin() as session:
            row = session.get(DeploymentRow, function, with_for_update=True)
            if row is None:
                row = DeploymentRow(function=function, canary_weight=0.0, revision=0)
                session.add(row)
            mutate(row)
            latest = session.scalar(select(func.max(DeploymentRow.revision))) or 0
            row.revision = int(latest) + 1
            row.updated_at = utcnow()
            session.add(
                DeploymentEventRow(
                    function=function,
                    action=action,
                    primary_tag=row.primary_tag,
                    canary_tag=row.canary_tag,
                    canary_weight=row.canary_weight,
                    reason=reason,
                    actor=actor,
                    details=details or {},
                )
            )
            session.flush()
            return _state(row)

    def set_primary(
        self, function: str, tag: str, reason: str, actor: str = "loopml", details: dict[str, Any] | None = None
    ) -> DeploymentState:
        """Serve ``tag`` as the primary, with no canary (the first version of a function)."""

        def mutate(row: DeploymentRow) -> None:
            row.primary_tag, row.canary_tag, row.canary_weight, row.canary_started_at = tag, None, 0.0, None

        return self._change(function, "primary", reason, actor, details, mutate)

    def start_canary(
        self,
        function: str,
        tag: str,
        weight: float,
        reason: str,
        actor: str = "loopml",
        details: dict[str, Any] | None = None,
    ) -> DeploymentState:
        if not 0.0 < weight <= 1.0:
            raise DeploymentError(f"canary weight must be in (0, 1], got {weight}")

        def mutate(row: DeploymentRow) -> None:
            if row.primary_tag is None:
                raise DeploymentError(f"{function} has no primary yet; deploy a primary first")
            row.canary_tag, row.canary_weight, row.canary_started_at = tag, weight, utcnow()

        return self._change(function, "canary", reason, actor, details, mutate)

    def set_weight(
        self, function: str, weight: float, reason: str, actor: str = "loopml", details: dict[str, Any] | None = None
    ) -> DeploymentState:
        if not 0.0 < weight <= 1.0:
            raise DeploymentError(f"canary weight must be in (0, 1], got {weight}")

        def mutate(row: DeploymentRow) -> None:
            if row.canary_tag is None:
                raise DeploymentError(f"{function} has no canary to ramp")
            row.canary_weight = weight

        return self._change(function, "ramp", reason, actor, details, mutate)

    def promote(
        self, function: str, reason: str, actor: str = "loopml", details: dict[str, Any] | None = None
    ) -> DeploymentState:
        """The canary becomes the primary."""

        def mutate(row: DeploymentRow) -> None:
            if row.canary_tag is None:
                raise DeploymentError(f"{function} has no canary to promote (primary is {row.primary_tag})")
            row.primary_tag, row.canary_tag, row.canary_weight, row.canary_started_at = row.canary_tag, None, 0.0, None

        return self._change(function, "promote", reason, actor, details, mutate)

    def rollback(
        self, function: str, reason: str, actor: str = "loopml", details: dict[str, Any] | None = None
    ) -> DeploymentState:
        """Drop the canary; the primary keeps serving everything."""

        def mutate(row: DeploymentRow) -> None:
            if row.canary_tag is None:
                raise DeploymentError(f"{function} has no canary to roll back (primary is {row.primary_tag})")
            row.canary_tag, row.canary_weight, row.canary_started_at = None, 0.0, None

        return self._change(function, "rollback", reason, actor, details, mutate)

    def pending_handover(self, function: str) -> Handover | None:
        """The versions that waited for the function's last rollout, once it has ended and no canary has started
        since: the next ``deploy_function`` run gates the newest against the primary of that moment. The same
        whether the controller or a person (``loopml promote``/``rollback``) ended the rollout."""
        state = self.get(function)
        if state is None or state.canary_tag or not state.primary_tag:
            return None
        ended: DeploymentEvent | None = None
        waiting: list[str] = []
        for event in reversed(self.history(function, limit=200)):  # newest first
            if ended is None:
                if event.action in END_ACTIONS:
                    ended = event
                elif event.action in ("canary", "primary"):
                    return None  # a canary or primary set after the last rollout ended
                continue
            if event.action in ("canary", "primary") or event.action in END_ACTIONS:
                break  # the start of the rollout that ``ended`` ended (or an earlier end)
            if event.action == WAIT_ACTION and event.details.get("candidate"):
                waiting.append(str(event.details["candidate"]))
        if ended is None or not waiting:
            return None
        return Handover(ended.id, ended.action, waiting[::-1])

    def record(
        self, function: str, action: str, reason: str, actor: str = "loopml", details: dict[str, Any] | None = None
    ) -> None:
        """Record a decision that changes nothing (a rejected candidate, a held canary)."""
        state = self.get(function)
        with self._sessions.begin() as session:
            session.add(
                DeploymentEventRow(
                    function=function,
                    action=action,
                    primary_tag=state.primary_tag if state else None,
                    canary_tag=state.canary_tag if state else None,
                    canary_weight=state.canary_weight if state else 0.0,
                    reason=reason,
                    actor=actor,
                    details=details or {},
                )
            )
