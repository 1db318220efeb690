"""The policy answers a run obeys carry the worker's seal; a run believes only a sealed one.

An activity task's result is whatever completes it first, and completing one needs no worker:
RespondActivityTaskCompletedById takes a workflow id, a run id and an activity id, all readable in
the run's history. While a high-impact step's `policy.decide` was pending (a slow policy server, a
retry, a busy worker), a plain client answering `{"allow": true}` made the step act with no
approval asked; a pending `policy.cancel` answered "allowed, bob, verified" cancelled the run in
bob's name (red-team, stop 50; tests/security/test_forged_activity_results.py).

So the worker seals what its policy activities return (`SealAnswers`, an interceptor: whatever
implements the question, its answer is sealed on the way out), bound to the workflow and to the
activity id the run chose for that question (`<question>:<first execution>:<uuid>`), with the
worker's envelope keys (the lock's seal, as bot/engine/locks.py). The run then asks
`policy.answer_holds`, a local activity, whose answer only this worker can give: a forged answer,
or a genuine one moved from another question, does not hold, and the run treats it as a policy
that could not be asked (fail closed). The check is a
local activity, not workflow code, so a replay reads its recorded result whatever keys the
replaying worker holds. The policy question stays an activity task: a cancel sent while it is
pending still reaches the run before the step (a local activity would hold the workflow task).
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from bot.identity.proofs import Keyring
from bot.policy.activities import ActorAnswer, DecisionAnswer
from bot.policy.models import canonical_json

log = structlog.get_logger(__name__)

LABEL = "policy answer"
HOLDS = "policy.answer_holds"
# The questions whose answers are sealed, and the model the run reads each as: both sides put an
# answer through it before sealing or checking, so they seal and check the same document.
SEALED: dict[str, type[BaseModel]] = {"policy.decide": DecisionAnswer, "policy.cancel": ActorAnswer}


class AnswerCheck(BaseModel):
    """What the run received for a sealed question: its answer's digest (`answer_digest`, taken in
    workflow code: the answer itself need not travel again) and seal, and the question's id."""

    activity_id: str
    digest: str
    seal: str | None = None


def answer_digest(activity_type: str, answer: Any) -> str:
    """The SHA-256 of what a seal covers: `answer` read as its question's model (SEALED), without its
    seal, as canonical JSON. Pure: the run takes it in workflow code."""
    model = SEALED[activity_type]
    content = model.model_validate(to_jsonable_python(answer)).model_dump(mode="json", exclude={"seal"})
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def _sealed(workflow_id: str, activity_id: str, digest: str) -> dict[str, Any]:
    """What a seal binds: the question (its id is the run's, unique to it and kept by an operator's
    reset: a new execution re-reading the answer its history holds still finds it sealed, while the
    questions it asks after the reset point get ids of their own) and the answer."""
    return {"workflow_id": workflow_id, "activity_id": activity_id, "answer": digest}


class SealAnswers(Interceptor):
    """Seals the SEALED questions' answers as they leave this worker; checks them (`holds`, the
    `policy.answer_holds` local activity) when a run asks."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Sealing(next, self)

    def seal(self, info: activity.Info, answer: Any) -> dict[str, Any]:
        content = to_jsonable_python(answer)
        where = _sealed(info.workflow_id or "", info.activity_id, answer_digest(info.activity_type, content))
        return {**content, "seal": self.keyring.seal(LABEL, where)}

    @activity.defn(name=HOLDS)
    async def holds(self, check: AnswerCheck) -> bool:
        """Whether the answer the run received is one this worker's keys sealed for that question
        of this execution."""
        info = activity.info()
        if check.seal is None or check.activity_id.split(":", 1)[0] not in SEALED:
            return False
        where = _sealed(info.workflow_id or "", check.activity_id, check.digest)
        if self.keyring.seal_holds(LABEL, where, check.seal):
            return True
        log.error("a policy answer that no worker sealed: refused", activity_id=check.activity_id,
                  workflow_id=info.workflow_id, workflow_run_id=info.workflow_run_id)
        return False


class _Sealing(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, seals: SealAnswers) -> None:
        super().__init__(next)
        self.seals = seals

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        answer = await self.next.execute_activity(input)
        info = activity.info()
        if info.is_local or info.activity_type not in SEALED:
            return answer
        return self.seals.seal(info, answer)
