"""The policy questions as Temporal activities: `policy.decide`, `policy.approver`, `policy.start`.

The engine never raises, so an activity returns its answer, deny included. One exception: when
the engine was merely unavailable (OPA unreachable or slow, the embedded engine restarting) and
the workflow's retry policy has attempts left, the activity fails with a retryable error so a
passing blip does not deny a production step. The last attempt returns the deny as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bot.audit.events import AuditEvent, EventKind
from bot.audit.recorder import AuditWriter, event
from bot.policy.engine import PolicyEngine
from bot.policy.models import Decision, Failure, Verdict

AnswerT = TypeVar("AnswerT", bound=Verdict)
TRANSIENT = frozenset({Failure.UNREACHABLE, Failure.TIMEOUT, Failure.ENGINE_CRASHED})


class PolicyRequest(BaseModel):
    """One policy input document (DESIGN.md, "Policy contract"), plus audit events queued before it."""

    input: dict[str, Any]
    audit: list[AuditEvent] = Field(default_factory=list)


class PolicyActivities:
    def __init__(self, engine: PolicyEngine, audit: AuditWriter | None = None) -> None:
        self.engine = engine
        self.audit = audit or AuditWriter(None)

    @activity.defn(name="policy.decide")
    async def decide(self, request: PolicyRequest) -> Decision:
        """The decision is returned only once it is recorded: no high-impact step without its record."""
        decision = _retry_if_transient(await self.engine.decide(request.input))
        run, step = request.input.get("run") or {}, request.input.get("step") or {}
        record = event(
            str(run.get("id")),
            step.get("id"),
            EventKind.policy_decision,
            {
                **decision.model_dump(mode="json", exclude_none=True),
                "action": step.get("action"),
                "args": step.get("with"),
            },
            actor="policy",
        )
        await self.audit.write([*request.audit, record])
        return decision

    @activity.defn(name="policy.approver")
    async def approver(self, request: PolicyRequest) -> Verdict:
        await self.audit.write(request.audit)
        return _retry_if_transient(await self.engine.approver(request.input))

    @activity.defn(name="policy.start")
    async def start(self, request: PolicyRequest) -> Verdict:
        return _retry_if_transient(await self.engine.start(request.input))

    def all(self) -> list[Callable[..., Any]]:
        return [self.decide, self.approver, self.start]


def _retry_if_transient(answer: AnswerT) -> AnswerT:
    if answer.failure not in TRANSIENT:
        return answer
    info = activity.info()
    max_attempts = info.retry_policy.maximum_attempts if info.retry_policy else 1
    if max_attempts == 0 or info.attempt < max_attempts:  # 0: unlimited
        raise ApplicationError("; ".join(answer.reasons), type="PolicyUnavailable")
    return answer
