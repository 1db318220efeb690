"""The policy questions as Temporal activities: `policy.decide`, `policy.approver`, `policy.cancel`.

The engine never raises, so an activity returns its answer, deny included. One exception: when
the engine was merely unavailable (OPA unreachable or slow, the embedded engine restarting) and
the workflow's retry policy has attempts left, the activity fails with a retryable error so a
passing blip does not deny a production step. The last attempt returns the deny as it is.

`approver` and `cancel` are questions about an actor: the activity first checks the actor's
proof (bot/identity/proofs.py) and asks policy about the user it verified, never about the
groups or identity a client merely claimed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bot.audit.events import AuditEvent, EventKind
from bot.audit.recorder import AuditMode, AuditWriter, event
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, Proof, ProofError
from bot.policy.engine import PolicyEngine
from bot.policy.models import ActorVerdict, Decision, Failure, Verdict

AnswerT = TypeVar("AnswerT", bound=Verdict)
TRANSIENT = frozenset({Failure.UNREACHABLE, Failure.TIMEOUT, Failure.ENGINE_CRASHED})


class Claim(BaseModel):
    """What the actor asked, so the proof can be checked against it."""

    purpose: Literal["vote", "cancel", "confirm"]
    run_id: str
    principal: str
    name: str = ""
    content: dict[str, Any] = Field(default_factory=dict)
    execution: str | None = Field(
        None, description="The run's first execution run id, which the proof must be bound to (a proof for "
        "another execution, or for none, may come from an earlier run under this run id). None: a claim from "
        "a workflow task before this field."
    )
    not_before: datetime | None = Field(
        None, description="A proof issued before this (the run started, or the step began waiting, less the "
        "clock skew) was made for an earlier run under the same run id. Kept beside `execution` as defence in "
        "depth, and as the only bound of a claim made before that field."
    )


class PolicyRequest(BaseModel):
    """One policy input document (DESIGN.md, "Policy contract"), plus audit events queued before it;
    for a question about an actor, its claim and proof."""

    input: dict[str, Any]
    audit: list[AuditEvent] = Field(default_factory=list)
    claim: Claim | None = None
    proof: Proof | None = None
    execution: str | None = None  # this execution's part of its event ids (bot/engine/spool.py `_execution`)
    audit_mode: AuditMode = "write"  # as an action's (bot/audit/recorder.py)


class Unrecorded(BaseModel):
    """What a policy activity could not write (audit_mode try/defer with the store down): the
    workflow keeps it and appends it later. None: written. Not the policy's answer, so it rides
    on subclasses of the answers, never on what `policy eval` prints."""

    unrecorded: list[AuditEvent] | None = None


class Sealed(BaseModel):
    """The worker's seal on an answer a run obeys (bot/engine/answers.py): set on the way out of
    the worker, checked by the run; not the policy's answer either."""

    seal: str | None = None


class DecisionAnswer(Decision, Unrecorded, Sealed):
    pass


class ActorAnswer(ActorVerdict, Unrecorded, Sealed):
    pass


class PolicyActivities:
    def __init__(self, engine: PolicyEngine, audit: AuditWriter | None = None, keyring: Keyring | None = None) -> None:
        self.engine = engine
        self.audit = audit or AuditWriter(None)
        self.keyring = keyring or Keyring()

    @activity.defn(name="policy.decide")
    async def decide(self, request: PolicyRequest) -> DecisionAnswer:
        """The decision is returned once it is recorded, or (audit_mode try/defer) handed back
        unrecorded: the workflow then runs no high-impact step until its flusher has written it."""
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
            execution=request.execution,
        )
        unrecorded = await self.audit.write_as(request.audit_mode, [*request.audit, record])
        return DecisionAnswer(**decision.model_dump(), unrecorded=None if unrecorded is None else [record])

    @activity.defn(name="policy.approver")
    async def approver(self, request: PolicyRequest) -> ActorAnswer:
        unrecorded = await self.audit.write_as(request.audit_mode, request.audit)
        return _unrecorded(await self._about_actor(request, self.engine.approver), unrecorded)

    @activity.defn(name="policy.cancel")
    async def cancel(self, request: PolicyRequest) -> ActorAnswer:
        unrecorded = await self.audit.write_as(request.audit_mode, request.audit)
        return _unrecorded(await self._about_actor(request, self.engine.cancel), unrecorded)

    @activity.defn(name="policy.start")
    async def start(self, request: PolicyRequest) -> Verdict:
        return _retry_if_transient(await self.engine.start(request.input))

    def all(self) -> list[Callable[..., Any]]:
        return [self.decide, self.approver, self.cancel, self.start]

    async def _about_actor(self, request: PolicyRequest, ask: Callable[[dict[str, Any]], Any]) -> ActorVerdict:
        claim = request.claim
        if claim is None:  # a workflow from before proofs: the user as the input says, unverified
            actor = Actor(str((request.input.get("user") or {}).get("id") or ""))
        else:
            try:
                actor = verified_actor(self.keyring, claim, request.proof)
            except ProofError as exc:
                noun = "vote" if claim.purpose == "vote" else claim.purpose
                reason = f"the {noun}'s proof does not verify: {exc}"
                return ActorVerdict(allow=False, reasons=[reason], user=Actor(claim.principal).policy_user())
        user = actor.policy_user()
        verdict = _retry_if_transient(await ask({**request.input, "user": user}))
        return ActorVerdict(**verdict.model_dump(), user=user)


def verified_actor(keyring: Keyring, claim: Claim, proof: Proof | None) -> Actor:
    """The actor the proof vouches for (it must name the claimed principal), or the claimed
    principal unverified and without groups when there is no proof. ProofError for a bad one."""
    if proof is None:
        return Actor(claim.principal, claim.name)
    actor = keyring.check(proof, claim.purpose, claim.run_id, claim.content, execution=claim.execution)
    if actor.principal != claim.principal:
        raise ProofError(f"it names {actor.principal}, not {claim.principal}")
    if claim.not_before is not None and proof.issued_at < claim.not_before:
        raise ProofError(
            f"it was issued before this run could be asked ({proof.issued_at.isoformat()} < "
            f"{claim.not_before.isoformat()}): a proof from an earlier run under this run id"
        )
    return actor


def _unrecorded(verdict: ActorVerdict, unrecorded: list[AuditEvent] | None) -> ActorAnswer:
    """Say whether what was handed to write was written (it has no events of its own)."""
    return ActorAnswer(**verdict.model_dump(), unrecorded=None if unrecorded is None else [])


def _retry_if_transient(answer: AnswerT) -> AnswerT:
    if answer.failure not in TRANSIENT:
        return answer
    info = activity.info()
    max_attempts = info.retry_policy.maximum_attempts if info.retry_policy else 1
    if max_attempts == 0 or info.attempt < max_attempts:  # 0: unlimited
        raise ApplicationError("; ".join(answer.reasons), type="PolicyUnavailable")
    return answer
