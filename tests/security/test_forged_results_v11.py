"""A forged action result or failure leaves no gap in the trail and puts nothing false in it.

Red team of engine-v11's first form (stop 51), which re-wrote what a forged result said it wrote
but still took its word on the rest. Each test is a plain Temporal client completing or failing a
pending action by id, as in test_forged_activity_results.py; each failed on that first form."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError

from tests.security.test_forged_activity_results import ACT, CLOSING, _gated_run, _pending, holding
from tests.security.test_raw_temporal import DATA, PLAYBOOKS
from tests.security.trust_stack import TrustStack, result, trust_stack

# Two low-impact steps: the second closes the run's record (its activity writes run_finished).
TWO = """
name: two
summary: Two calls
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: first
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/first"}
  - id: second
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/second"}
"""

# One step whose own action fails once (the hold drops it), then its fallback runs.
FALLING = """
name: falling
summary: One call, with a fallback
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: only
    action: http.request
    retry: {max_attempts: 1}
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/only"}
    fallback: {action: http.request, retry: {max_attempts: 1}, with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/fb"}}
"""


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("forged11"),
                           {**PLAYBOOKS, "closing": CLOSING, "two": TWO, "falling": FALLING}, DATA,
                           activities=holding) as s:
        yield s


async def _forge(stack: TrustStack, handle: WorkflowHandle[Any, Any], *, complete: Any = None,
                 fail: BaseException | None = None) -> None:
    """Mallory completes (or fails) the held http.request by id, then the worker's task is let go."""
    await asyncio.wait_for(ACT.asked.wait(), 30)
    try:
        run_id, activity_id = await _pending(handle, "http.request")
        target = stack.client.get_async_activity_handle(workflow_id=handle.id, run_id=run_id, activity_id=activity_id)
        await (target.fail(fail) if fail is not None else target.complete(complete))
    finally:
        ACT.release.set()


def _kinds(stack: TrustStack, run_id: str) -> list[str]:
    return [e.kind.value for e in stack.events(run_id)]


# ---- 1. a result with an `unrecorded` list that does not hand back the step's own record -------


async def test_a_forged_empty_unrecorded_list_leaves_no_gap(stack: TrustStack) -> None:
    """`unrecorded: []` says "I wrote my own record, here is nothing of mine": the step's start was
    never written, though the run read it as written. Same with any forged list whose first event
    is not the action's started event (the v10 test's list)."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, complete={"output": {"status": 200}, "attempt": 1, "unrecorded": []})
    status = await result(handle)
    assert status.state == "completed" and not stack.sink.of(handle.id), "scenario not built"
    kinds = _kinds(stack, handle.id)
    assert kinds.count("step_succeeded") == 1 and kinds[-1] == "run_finished", kinds
    assert kinds.count("step_started") == 1, f"the step succeeded with no start on the record: {kinds}"


# ---- 2. a forged failure ----------------------------------------------------------------------


async def test_a_forged_failure_leaves_no_gap(stack: TrustStack) -> None:
    """Failing the pending step by id (non-retryable, no `unrecorded` details): the step's start,
    which the run read as written by the action, was never written; the trail had its failure only."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, fail=ApplicationError("forged", non_retryable=True))
    status = await result(handle)
    assert status.state in ("failed", "compensated") and not stack.sink.of(handle.id), "scenario not built"
    kinds = _kinds(stack, handle.id)
    assert kinds.count("step_failed") == 1 and kinds[-1] == "run_finished", kinds
    assert kinds.count("step_started") == 1, f"the step failed with no start on the record: {kinds}"


async def test_a_forged_failure_with_an_empty_unrecorded_list_leaves_no_gap(stack: TrustStack) -> None:
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, fail=ApplicationError("forged", {"unrecorded": []}, non_retryable=True))
    status = await result(handle)
    assert status.state in ("failed", "compensated") and not stack.sink.of(handle.id), "scenario not built"
    kinds = _kinds(stack, handle.id)
    assert kinds.count("step_started") == 1, f"the step failed with no start on the record: {kinds}"


# ---- 3. `audited: true` on a success the run does not accept (or records itself) ----------------


async def test_a_forged_audited_result_the_run_refuses_records_no_success(stack: TrustStack) -> None:
    """`audited: true` with an output the run refuses (`stored.refused`): the run fails the step and
    ends failed, but the step's success and `run_finished: completed` (the closing step's
    `audit_after`) were taken on her word: the trail said the step succeeded and the run completed,
    then that it failed. The run records a remote step's success, and its own end, itself now."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    stored = {"event_id": "x", "sha256": "0" * 64, "size": 1, "refused": "forged: too large"}
    await _forge(stack, handle, complete={"output": {}, "attempt": 1, "audited": True, "stored": stored})
    status = await result(handle)
    assert status.state in ("failed", "compensated") and status.step("only").state == "failed", "scenario not built"
    events = stack.events(handle.id)
    kinds = [e.kind.value for e in events]
    finished = [e.details["state"] for e in events if e.kind.value == "run_finished"]
    assert "step_succeeded" not in kinds, f"the trail says the refused step succeeded: {kinds}"
    assert finished == [status.state], f"the trail says the run ended {finished}: {kinds}"


async def test_a_forged_audited_fallback_keeps_the_runs_own_record(stack: TrustStack) -> None:
    """The fallback's success is always recorded by the run ({"fallback": true}); her `audited: true`
    had the same id written first from her word (no fallback flag), and the run's own dropped as a
    repeat."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "falling")
    await asyncio.wait_for(ACT.asked.wait(), 30)
    ACT.release.set()
    ACT.arm(drop=True)  # the step's own attempt is dropped (fails); its fallback is held next
    await _forge(stack, handle, complete={"output": {}, "attempt": 7, "audited": True})
    status = await result(handle)
    assert status.state == "completed" and status.step("only").fallback is not None, "scenario not built"
    (success,) = stack.events(handle.id, "step_succeeded")
    assert success.details == {"action": "http.request", "attempts": 7, "fallback": True}, success.details


# ---- 4. order: what is confirmed late lands after what the run recorded later --------------------


async def test_a_forged_first_step_loses_nothing_and_the_run_ends_last(stack: TrustStack) -> None:
    """Completing the first step by id (nothing claimed written, as a genuine result says): the
    run_started and first step_started the forged step never wrote are written by the end's flush,
    late (after the second step's own record, each with its own time: conceded in docs/security.md),
    but written, and run_finished, which the run records itself, is still the last word."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "two")
    await _forge(stack, handle, complete={"output": {"status": 200}, "attempt": 1})
    status = await result(handle)
    assert status.state == "completed" and stack.sink.of(handle.id) == [f"/{handle.id}/second"], "scenario not built"
    kinds = _kinds(stack, handle.id)
    assert kinds.count("run_started") == 1 and kinds.count("step_started") == 2, kinds  # nothing is missing
    assert kinds.count("step_succeeded") == 2 and kinds[-1] == "run_finished", kinds
    assert stack.audit.verify().ok
