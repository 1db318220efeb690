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
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import (
    AsyncActivityIDReference,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.service import RPCError

from bot.actions.base import ActionInput
from bot.engine.children import PeekActivities, PeekRequest
from bot.engine.runs import start_run
from bot.engine.sandbox import shared_converter
from bot.engine.state import CancelRequest, RunStatus, TriggerContext
from bot.engine.workflow import PlaybookRun
from bot.policy.activities import PolicyRequest
from tests.security.test_raw_temporal import DATA, PLAYBOOKS
from tests.security.trust_stack import (
    FRONT_DOOR,
    REMEDIATE,
    TrustStack,
    result,
    slack_actor,
    state_of,
    trust_stack,
    until,
)
from tests.slack.support import ALICE, BOB, MALLORY, principal
from tests.waiting import eventually


class Hold:
    """Holds the worker's `name` activity while armed: a slow policy server or target, which the
    attacker waits for (or a busy worker). `takes`: the activity's argument type."""

    def __init__(self, name: str, takes: type[Any] = PolicyRequest) -> None:
        self.name, self.takes = name, takes
        self.armed = self.drop = False
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    def arm(self, drop: bool = False) -> None:
        """`drop`: the held task is never run (no worker got to it before she completed it)."""
        self.armed, self.drop, self.asked, self.release = True, drop, asyncio.Event(), asyncio.Event()

    def held(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        hold = self

        async def held(arg: Any) -> Any:
            if hold.armed:
                hold.armed = False
                hold.asked.set()
                await hold.release.wait()
                if hold.drop:
                    raise ApplicationError("dropped: the test's stand-in for a task no worker ran")
            return await inner(arg)

        held.__annotations__ = {"arg": self.takes, "return": Any}  # what the worker decodes the input as
        return activity.defn(name=self.name)(held)


DECIDE, CANCEL, ACT = Hold("policy.decide"), Hold("policy.cancel"), Hold("http.request", ActionInput)

# `remediate`'s undoable first step, then a high-impact call behind a decision.
UNDOABLE = REMEDIATE.split("  - id: hold")[0].replace("name: remediate", "name: undoable") + """  - id: risky
    action: http.request
    impact: high
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/risky"}
"""


# One step: its activity writes its success and run_finished itself (`audited`).
CLOSING = """
name: closing
summary: One call, which closes the run's record
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: only
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/only"}
"""


def holding(activities: list[Any]) -> list[Any]:
    holds = {hold.name: hold for hold in (DECIDE, CANCEL, ACT)}
    return [holds[name].held(fn) if (name := _name(fn)) in holds else fn for fn in activities]


def _name(fn: Any) -> str | None:
    return getattr(getattr(fn, "__temporal_activity_definition", None), "name", None)


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("forged"),
                           {**PLAYBOOKS, "undoable": UNDOABLE, "closing": CLOSING}, DATA, activities=holding) as s:
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


async def _gated_run(stack: TrustStack, name: str = "gated") -> WorkflowHandle[Any, Any]:
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    return await start_run(stack.client, stack.task_queue, stack.loaded(name), {}, trigger,
                           actor=slack_actor(ALICE, "sre"), keyring=FRONT_DOOR)


async def _pending(handle: WorkflowHandle[Any, Any], activity_type: str) -> tuple[str, str]:
    description = await handle.describe()
    (activity_id,) = [p.activity_id for p in description.raw_description.pending_activities
                      if p.activity_type.name == activity_type]
    return description.run_id, activity_id


async def _complete_action(stack: TrustStack, handle: WorkflowHandle[Any, Any], said: dict[str, Any]) -> None:
    """Mallory completes the run's held `http.request` by id: a 200, with what she `said` of the
    trail; then the worker's own attempt is let go (too late)."""
    try:
        run_id, activity_id = await _pending(handle, ACT.name)
        await stack.client.get_async_activity_handle(workflow_id=handle.id, run_id=run_id, activity_id=activity_id
                                                     ).complete({"output": {"status": 200}, "attempt": 1, **said})
    finally:
        ACT.release.set()


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


async def _fail_held(stack: TrustStack, hold: Hold, handle: WorkflowHandle[Any, Any], error: BaseException) -> None:
    """Mallory's other move: the run's held activity failed by id with `error`; then the worker's
    own answer is let go (too late)."""
    await asyncio.wait_for(hold.asked.wait(), 60)
    try:
        run_id, activity_id = await _pending(handle, hold.name)
        await stack.client.get_async_activity_handle(workflow_id=handle.id, run_id=run_id, activity_id=activity_id
                                                     ).fail(error)
    finally:
        hold.release.set()


async def test_a_pending_decision_failed_as_cancelled_is_no_cancel(stack: TrustStack) -> None:
    """Failing the pending question by id *as cancelled* read as a cancel: the run ended `cancelled`,
    `risky` too, with nobody's cancel asked or recorded. A cancel the run did not make is a policy
    that could not be asked: `risky` is denied, and the run fails as any denied step's does."""
    DECIDE.arm()
    handle = await _gated_run(stack, "undoable")
    await _fail_held(stack, DECIDE, handle, TemporalCancelledError("nobody asked"))
    status = await result(handle)
    assert status.cancelled_by is None and status.state != "cancelled", status
    assert status.step("risky").state == "denied", status.step("risky")
    assert f"/{handle.id}/risky" not in stack.sink.of(handle.id)
    assert not [e for e in stack.events(handle.id, "cancel_requested") if e.details.get("accepted")]


async def test_a_forged_action_result_writes_no_events_of_her_choosing(stack: TrustStack) -> None:
    """Completing a running step by id with `unrecorded` events (what an action lists when the trail
    is down) wrote them as the run's: another run's approval by bob, and this run's next decision
    ahead of the genuine one (which the trail then dropped as a repeat). Only the action's own
    events are kept now; the genuine decision is recorded."""
    ACT.arm()
    handle = await _gated_run(stack)
    await asyncio.wait_for(ACT.asked.wait(), 30)
    description = await handle.describe()
    execution = description.run_id.replace("-", "")  # the first execution: anyone who can describe reads it
    now = datetime.now(UTC).isoformat()
    forged = [
        {"event_id": f"{handle.id}/{execution}:risky:policy_decision", "ts": now, "run_id": handle.id,
         "step_id": "risky", "kind": "policy_decision", "actor": "policy",
         "details": {"allow": False, "reasons": ["forged"], "action": "http.request"}},
        {"event_id": "some-other-run:risky:approval_vote:bob", "ts": now, "run_id": "some-other-run",
         "step_id": "risky", "kind": "approval_vote", "actor": principal(BOB),
         "details": {"vote": "approve", "user": principal(BOB), "accepted": True}},
        # the id an undo of `prep` would write its large output under (review: such a record was kept)
        {"event_id": f"{handle.id}:prep:step_output:{execution}:undo:1", "ts": now, "run_id": handle.id,
         "step_id": "prep", "kind": "step_output", "actor": principal(BOB),
         "details": {"action": "http.request", "attempt": 1, "size": 2, "sha256": "x", "output": {"by": "bob"}}},
    ]
    await _complete_action(stack, handle, {"unrecorded": forged})
    await until(handle, lambda s: s.step("risky").state == "waiting_approval", "risky waiting for approval")
    assert not stack.events("some-other-run"), "a plain client wrote bob's approval of another run into the trail"
    assert not stack.events(handle.id, "step_output"), "a plain client planted an output record in the trail"
    async def recorded() -> list[Any] | None:
        return stack.events(handle.id, "policy_decision") or None

    await eventually(recorded, timeout=10, what="the decision")
    (decision,) = stack.events(handle.id, "policy_decision")
    assert "forged" not in decision.details.get("reasons", []) and decision.details["require_approval"] is True


async def test_a_forged_action_result_leaves_no_gap_in_the_trail(stack: TrustStack) -> None:
    """Completing the run's last step by id with `audited: true` (what an action says once it has
    written its success and the run's end) left the trail without the step's start, its success,
    the run's end and the events the step was handed: the run completed with half a record (review
    F2, stop 50). What a result says it wrote is now written again by the worker's own flush."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await asyncio.wait_for(ACT.asked.wait(), 30)
    await _complete_action(stack, handle, {"audited": True})
    status = await result(handle)
    assert status.state == "completed" and not stack.sink.of(handle.id), "scenario not built"
    kinds = [e.kind.value for e in stack.events(handle.id)]
    assert kinds[:1] == ["run_started"] and kinds.count("run_started") == 1, kinds
    for kind in ("step_started", "step_succeeded", "run_finished"):
        assert kinds.count(kind) == 1, (kind, kinds)
    assert kinds[-1] == "run_finished", kinds


async def test_a_genuine_last_step_is_recorded_once(stack: TrustStack) -> None:
    """The other side: a step that did write its record and the run's end is not recorded twice
    by the flush that confirms it (event ids), and the trail still verifies."""
    handle = await _gated_run(stack, "closing")
    status = await result(handle)
    assert status.state == "completed" and stack.sink.of(handle.id) == [f"/{handle.id}/only"]
    kinds = [e.kind.value for e in stack.events(handle.id)]
    assert [k for k in kinds if k in ("step_started", "step_succeeded", "run_finished")] == [
        "step_started", "step_succeeded", "run_finished"], kinds
    assert stack.audit.verify().ok


async def test_an_operators_reset_keeps_a_genuine_decision(stack: TrustStack) -> None:
    """`temporal workflow reset` to the workflow task that received `risky`'s genuine decision: the
    new execution re-reads that answer from its history, and its seal still holds (it binds the
    question, not the execution reading it)."""
    handle = await _gated_run(stack)
    await until(handle, lambda s: s.step("risky").state == "waiting_approval", "risky waiting for approval")
    description = await handle.describe()
    events = [e async for e in handle.fetch_history_events()]
    asked = {e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
             and e.activity_task_scheduled_event_attributes.activity_type.name == "policy.decide"}
    answered = next(e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                    and e.activity_task_completed_event_attributes.scheduled_event_id in asked)
    point = next(e.event_id for e in events if e.event_id > answered
                 and e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    reset = await stack.client.workflow_service.reset_workflow_execution(ResetWorkflowExecutionRequest(
        namespace=stack.client.namespace, workflow_execution=WorkflowExecution(workflow_id=handle.id,
                                                                               run_id=description.run_id),
        reason="an operator re-runs from the decision", workflow_task_finish_event_id=point,
        request_id=str(uuid.uuid4())))
    again = stack.client.get_workflow_handle(handle.id, run_id=reset.run_id)
    status = await until(again, lambda s: s.step("risky").state not in ("pending", "running"), "risky decided again")
    assert status.step("risky").state == "waiting_approval", status.step("risky")


# ---- a parent's `run.peek` of its child, failed by id --------------------------------------------

PEEK = Hold("run.peek", PeekRequest)
TREE = {
    "parent": REMEDIATE.split("  - id: hold")[0].replace("name: remediate", "name: parent")
    + "  - {id: call, action: playbook.run, with: {name: child}}\n",
    "child": """
name: child
summary: One call
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: c1
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/c1"}
""",
}


@pytest_asyncio.fixture(scope="module")
async def tree(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    peek = PEEK.held(PeekActivities(shared_converter(dev_env.client)).peek)
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("peek"), {**PLAYBOOKS, **TREE},
                           DATA, activities=lambda activities: [*holding(activities), peek]) as s:
        yield s


async def test_a_peek_failed_by_a_client_is_no_cancel(tree: TrustStack) -> None:
    """`run.peek` is retried without limit, so the parent read any failure of it as a cancel: failed
    by id, the parent ended cancelled, its child stopped and its own step undone, with nobody's
    cancel asked (review, stop 50). It asks again now, and the tree completes."""
    PEEK.arm()
    handle = await _gated_run(tree, "parent")
    await _fail_held(tree, PEEK, handle, ApplicationError("forged", non_retryable=True))
    status = await result(handle)
    assert status.state == "completed" and status.cancelled_by is None, (status.state, status.error)
    assert f"/{handle.id}/undo-poke" not in tree.sink.of(handle.id)
