"""Approval votes on a waiting step: the four-eyes and one-vote-per-person rules live here.

Workflow-side code (deterministic): the validator refuses what it can before a vote enters
history (a principal that requested the run or already voted); the handler asks the `approver`
rule about the voter as the worker verified it, then compares people, not logins: policy maps
principals to people (`slack:U0ALICE` and `cli:alice` are both alice), so alice can neither
approve her own run from another login nor meet a quorum of two alone.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Union

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from bot.engine.state import ConfirmRequest, RunStatus, StepStatus, Vote, VoteRequest, VoteResult
    from bot.policy.models import ActorVerdict

VOTE_REFUSED = "VoteRefused"
CONFIRM_ACTION = "core.confirm"  # its answers are confirm updates; a vote on it can only reject


class VoteRefused(ApplicationError):
    """`code` says what kind of refusal (refused: a rule said no; conflict: the step is not in a
    state to vote on; not_found; invalid) and `rule` which check; both travel as the error's
    details, so a front door can answer 403/404/409 without reading the message."""

    def __init__(self, message: str, code: str = "refused", rule: str = "approver") -> None:
        super().__init__(message, {"code": code, "rule": rule}, type=VOTE_REFUSED, non_retryable=True)


Ask = Union[VoteRequest, ConfirmRequest]
ApproverCheck = Callable[[Any], Awaitable[ActorVerdict]]


class ApprovalBook:
    """Counts votes for the steps of one run; `needed` is set when a step starts waiting."""

    def __init__(self, status: RunStatus, requester: str) -> None:
        self._status = status
        self._requester = requester
        self.requester_person = requester  # the worker's admission says who that is
        self._needed: dict[str, int] = {}
        self._in_flight: set[tuple[str, str]] = set()

    def open(self, step_id: str, needed: int) -> None:
        self._needed[step_id] = max(1, needed)

    def needed(self, step_id: str) -> int:
        return self._needed.get(step_id, 1)

    def approvals(self, st: StepStatus) -> int:
        return sum(1 for v in st.approvals if v.vote == "approve")

    def decided(self, step_id: str) -> bool:
        st = self._status.step(step_id)
        return any(v.vote == "reject" for v in st.approvals) or self.approvals(st) >= self.needed(step_id)

    def rejected_by(self, step_id: str) -> Vote | None:
        return next((v for v in self._status.step(step_id).approvals if v.vote == "reject"), None)

    def validate(self, request: Ask) -> None:
        """Refuse what can be refused without asking policy; nothing is recorded on refusal."""
        try:
            st = self._status.step(request.step_id)
        except KeyError:
            raise VoteRefused(
                f"run {self._status.run_id} has no step {request.step_id!r}", "not_found", "unknown_step"
            ) from None
        answering = isinstance(request, ConfirmRequest)
        if answering and st.action != CONFIRM_ACTION:
            raise VoteRefused(
                f"step {request.step_id!r} is a {st.action} step, not core.confirm: approve or reject it instead",
                "conflict", "step_kind",
            )
        if not answering and st.action == CONFIRM_ACTION and request.vote == "approve":
            raise VoteRefused(
                f"step {request.step_id!r} asks for an answer, not an approval: answer it with "
                f"`playbook-bot confirm RUN {request.step_id} CHOICE` (or reject it)",
                "invalid", "step_kind",
            )
        if st.state != "waiting_approval":
            waiting = "an answer" if st.action == CONFIRM_ACTION else "approval"
            raise VoteRefused(
                f"step {request.step_id!r} is not waiting for {waiting} (it is {st.state})", "conflict", "step_state"
            )
        if self.decided(request.step_id):  # decided by a vote in this same moment: later ones are refused
            raise VoteRefused(f"step {request.step_id!r} has already been decided", "conflict", "step_state")
        if not request.user:
            raise VoteRefused("a vote needs a user id", "invalid", "principal")
        if request.user == self._requester:
            raise VoteRefused(f"{request.user} requested this run and cannot vote on it (four-eyes)", rule="four_eyes")
        if any(v.user == request.user for v in st.approvals) or (request.step_id, request.user) in self._in_flight:
            raise VoteRefused(
                f"{request.user} has already voted on step {request.step_id!r}", rule="one_vote_per_person"
            )

    async def cast(self, request: VoteRequest, check: ApproverCheck) -> tuple[VoteResult, Vote]:
        vote = await self._admit(request, request.vote, check)
        st = self._status.step(request.step_id)
        count, needed = self.approvals(st), self.needed(request.step_id)
        verb = "rejected" if request.vote == "reject" else f"approved ({count}/{needed})"
        result = VoteResult(
            step_id=st.id, step_state=st.state, approvals=count, needed=needed, message=f"{request.user} {verb}"
        )
        return result, vote

    async def answer(self, request: ConfirmRequest, answer: str | int | float, check: ApproverCheck) -> Vote:
        """A core.confirm answer (already checked against the step's choices or input): the same
        four-eyes, one-per-person and `approver` rule as a vote; it decides the step."""
        return await self._admit(request, "approve", check, answer)

    async def _admit(
        self, request: Ask, verdict_vote: str, check: ApproverCheck, answer: str | int | float | None = None
    ) -> Vote:
        self.validate(request)
        key = (request.step_id, request.user)
        self._in_flight.add(key)
        try:
            verdict = await check(request)
        finally:
            self._in_flight.discard(key)
        if not verdict.allow:
            reasons = "; ".join(verdict.reasons) or "the approver policy refused"
            verb = "answer" if isinstance(request, ConfirmRequest) else "approve"
            raise VoteRefused(f"{request.user} may not {verb} step {request.step_id!r}: {reasons}")
        person = verdict.person or request.user
        self.validate(request)  # the step may have been decided while policy was asked
        if person == self.requester_person:
            raise VoteRefused(
                f"{request.user} is {person}, who requested this run ({self._requester}), "
                "and cannot vote on it (four-eyes)",
                rule="four_eyes",
            )
        st = self._status.step(request.step_id)
        earlier = next((v for v in st.approvals if (v.person or v.user) == person), None)
        if earlier is not None:
            raise VoteRefused(
                f"{person} has already voted on step {request.step_id!r} (as {earlier.user}): one vote per person",
                rule="one_vote_per_person",
            )
        user = verdict.user or {}
        vote = Vote(
            user=request.user,
            name=request.name or str(user.get("name") or ""),
            vote=verdict_vote,  # type: ignore[arg-type]
            at=workflow.now(),
            reason=request.reason,
            groups=list(user.get("groups") or []),
            person=person,
            verified=bool(user.get("verified")),
            answer=answer,
        )
        st.approvals.append(vote)
        return vote
