"""A pending activity's result is whatever completes it: the policy answers a run obeys must not be one.

Attack: anyone holding a Temporal client (no worker, no key) watches a run and, while its
`policy.decide` for a high-impact step is pending (the policy server slow, the worker busy),
calls RespondActivityTaskCompletedById with `{"allow": true}`. The run took that as the policy's
answer: no approval asked, the step acted, and the trail recorded no decision at all. The same
call answers a pending `policy.cancel` with a verified canceller who never asked.

From engine-v10 the worker seals those answers and the run checks the seal in a local activity
(bot/engine/answers.py): her completion still lands, but the run reads it as a policy it could not
ask, and fails closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import AsyncActivityIDReference, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from bot.engine.runs import start_run
from bot.engine.state import CancelRequest, RunStatus, TriggerContext
from bot.engine.workflow import PlaybookRun
from bot.policy.activities import PolicyRequest
from tests.security.test_raw_temporal import DATA, PLAYBOOKS
from tests.security.trust_stack import FRONT_DOOR, TrustStack, slack_actor, state_of, trust_stack, until
from tests.slack.support import ALICE, BOB, MALLORY, principal



class Hold:
    """Holds the worker's answer to one policy question while armed: a slow policy server, which
    the attacker waits for (or a busy worker)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.armed = False
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    def arm(self) -> None:
        self.armed, self.asked, self.release = True, asyncio.Event(), asyncio.Event()

    def held(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        hold = self

        @activity.defn(name=self.name)
        async def held(request: PolicyRequest) -> Any:
            if hold.armed:
                hold.armed = False
                hold.asked.set()
                await hold.release.wait()
            return await inner(request)

        return held


DECIDE, CANCEL = Hold("policy.decide"), Hold("policy.cancel")


def holding(activities: list[Any]) -> list[Any]:
    holds = {hold.name: hold for hold in (DECIDE, CANCEL)}
    return [holds[name].held(fn) if (name := _name(fn)) in holds else fn for fn in activities]


def _name(fn: Any) -> str | None:
    return getattr(getattr(fn, "__temporal_activity_definition", None), "name", None)


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("forged"), PLAYBOOKS, DATA,
                           activities=holding) as s:
        yield s


async def _complete_pending(stack: TrustStack, handle: WorkflowHandle[Any, Any], answer: dict[str, Any]) -> list[str]:
    """Mallory's move: every pending activity of the run completed by id with `answer`. The ids
    she completed (Temporal takes her word: the run is what must not)."""
    description = await handle.describe()
    pending = [p.activity_id for p in description.raw_description.pending_activities]
    completed = []
    for activity_id in pending:
        reference = AsyncActivityIDReference(workflow_id=handle.id, run_id=description.run_id, activity_id=activity_id)
        try:
            await stack.client.get_async_activity_handle(
                workflow_id=reference.workflow_id, run_id=reference.run_id, activity_id=reference.activity_id,
            ).complete(answer)
        except RPCError:
            continue  # NOT_FOUND: nothing pending under that id
        completed.append(activity_id)
    return completed


async def _gated_run(stack: TrustStack) -> WorkflowHandle[Any, Any]:
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    return await start_run(stack.client, stack.task_queue, stack.loaded("gated"), {}, trigger,
                           actor=slack_actor(ALICE, "sre"), keyring=FRONT_DOOR)


def _decided(status: RunStatus) -> bool:
    return status.step("risky").state not in ("pending", "running")


async def test_a_pending_policy_decision_cannot_be_answered_by_a_client(stack: TrustStack) -> None:
    DECIDE.arm()
    handle = await _gated_run(stack)
    await asyncio.wait_for(DECIDE.asked.wait(), 30)  # `risky`'s decision is being asked, and held
    try:
        completed = await _complete_pending(stack, handle, {"allow": True})
    finally:
        DECIDE.release.set()
    status = await until(handle, _decided, "risky decided")
    assert completed, "scenario not built: nothing was pending"
    assert stack.sink.of(handle.id) == [f"/{handle.id}/prep"], "the high-impact step acted on a forged decision"
    risky = status.step("risky")
    assert risky.state == "denied" and "seal does not hold" in (risky.error or ""), risky


async def test_a_pending_cancel_verdict_cannot_be_answered_by_a_client(stack: TrustStack) -> None:
    handle = await _gated_run(stack)
    await until(handle, lambda s: s.step("risky").state == "waiting_approval", "risky waiting for approval")
    CANCEL.arm()
    # Mallory's own cancel, unverified: the shipped policy refuses it, once asked.
    cancel = asyncio.ensure_future(handle.execute_update(PlaybookRun.cancel, CancelRequest(user=principal(MALLORY))))
    await asyncio.wait_for(CANCEL.asked.wait(), 30)
    try:
        forged = {"allow": True, "user": {"id": principal(BOB), "verified": True, "groups": ["sre"]}}
        completed = await _complete_pending(stack, handle, forged)
    finally:
        CANCEL.release.set()
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await cancel
    assert completed, "scenario not built: nothing was pending"
    assert "seal does not hold" in str(refused.value.cause)
    status = await state_of(handle)
    assert status.cancelled_by is None and status.state == "waiting_approval", status
    (asked,) = stack.events(handle.id, "cancel_requested")
    assert asked.details["accepted"] is False and asked.details["by"] == principal(MALLORY)
