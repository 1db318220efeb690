"""A forged action result or failure leaves no gap in the trail, puts nothing false in it, and
cannot stop the run for good.

Red team of engine-v11's first form (stop 51), which re-wrote what a forged result said it wrote
but still took its word on the rest, and the second review of its fix (section 5). Each test is a
plain Temporal client completing or failing a pending action by id, as in
test_forged_activity_results.py, with the worker's own attempt dropped (`ACT.arm(drop=True)`); each
failed on the code before its fix. A genuine run of every kind of step closes it: each event once,
run_finished last."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError

from tests.security.test_forged_activity_results import (
    ACT,
    CLOSING,
    DECIDE,
    _fail_held,
    _gated_run,
    _pending,
    holding,
)
from tests.security.test_raw_temporal import DATA, PLAYBOOKS
from tests.security.trust_stack import TrustStack, result, trust_stack, until

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


# One high-impact step the shipped policy allows without approval (outside production: the
# playbook's own `environment` default is trusted). Its action is handed `write` mode.
STAGING = """
name: staging
summary: One high-impact call outside production
owner: sre
vars: {sink: "{sink}"}
params:
  environment: {type: string, default: staging}
steps:
  - id: only
    action: http.request
    impact: high
    retry: {max_attempts: 1}
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/only"}
"""


# A local first step whose undo is a remote call, then the run fails on purpose: the undo is the
# only http.request, held for Mallory.
UNDO = """
name: undo
summary: Log, then fail; the log's undo calls out
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: first
    action: core.log
    with: {message: hello}
    compensate: {action: http.request, retry: {max_attempts: 1}, with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/undo"}}
  - id: stop
    action: core.fail
    with: {reason: on purpose}
"""


# No attacker: an undoable step, a local step, a sleep, a parallel group, a step that fails twice
# (retried) and whose fallback fails too, the undo, and an on_failure step.
GENUINE = """
name: genuine
summary: Everything a run does, no attacker
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: a
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/a"}
    compensate: {action: http.request, with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/undo-a"}}
  - id: log
    action: core.log
    with: {message: hello}
  - id: nap
    action: core.sleep
    with: {duration: 1s}
  - id: par
    parallel:
      - id: p1
        action: http.request
        with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/p1"}
      - id: p2
        action: http.request
        with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/p2"}
  - id: fb
    action: http.request
    retry: {max_attempts: 2, initial_interval: 200ms}
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/fb", expected_status: 201}
    fallback: {action: http.request, retry: {max_attempts: 1}, with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/fb2", expected_status: 201}}
on_failure:
  - id: tell
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/tell"}
"""


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("forged11"),
                           {**PLAYBOOKS, "closing": CLOSING, "two": TWO, "falling": FALLING, "staging": STAGING, "undo": UNDO,
                            "genuine": GENUINE}, DATA,
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


# ---- 5. the second review: failures forged otherwise, results that do not decode, and a genuine run


async def test_a_forged_cancellation_leaves_no_gap(stack: TrustStack) -> None:
    """Failing the pending step by id *as cancelled*: the run (engine-v10) reads it as a failure,
    not a cancel (nobody cancelled), and records step_failed state `failed`; but `_keep_started`
    kept the started event only for an ApplicationError or a timeout, so the step failed with no
    start on the record, as the fixed forged ApplicationError did."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, fail=TemporalCancelledError("nobody asked"))
    status = await result(handle)
    assert status.cancelled_by is None and status.step("only").state == "failed", "scenario not built"
    assert not stack.sink.of(handle.id), "scenario not built"
    kinds = _kinds(stack, handle.id)
    assert kinds.count("step_failed") == 1 and kinds[-1] == "run_finished", kinds
    assert kinds.count("step_started") == 1, f"the step failed with no start on the record: {kinds}"


async def test_a_forged_failure_of_a_high_impact_step_is_on_the_record_with_its_decision(stack: TrustStack) -> None:
    """The same forged failure on a high-impact step (audit mode `write`): its action acts only
    once its record is written, so a failure without that record acted on nothing, and the trail
    says just that: the decision, then the failure, and no start (docs/security.md)."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "staging")
    await _forge(stack, handle, fail=ApplicationError("forged", non_retryable=True))
    status = await result(handle)
    assert status.step("only").state == "failed" and not stack.sink.of(handle.id), "scenario not built"
    kinds = _kinds(stack, handle.id)
    assert kinds == ["run_started", "policy_decision", "step_failed", "run_finished"], kinds


async def _task_failures(handle: Any) -> list[str]:
    history = await handle.fetch_history()
    return [e.workflow_task_failed_event_attributes.failure.message for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]


async def test_a_forged_failure_with_a_malformed_unrecorded_list_leaves_no_gap(stack: TrustStack) -> None:
    """`unrecorded: [{}]` in a forged failure's details: `_failed_unrecorded` validates it in
    workflow code, the pydantic error (a ValueError) leaves `_execute` before `_keep_own`, and
    `_run_step` reads it as the step's failure: no started event is kept."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, fail=ApplicationError("forged", {"unrecorded": [{}]}, non_retryable=True))
    status = await result(handle)
    assert status.step("only").state == "failed" and not stack.sink.of(handle.id), "scenario not built"
    kinds = _kinds(stack, handle.id)
    assert kinds.count("step_failed") == 1 and kinds[-1] == "run_finished", kinds
    assert kinds.count("step_started") == 1, f"the step failed with no start on the record: {kinds}"


# An event whose time has no UTC value in datetime's range: the validator's astimezone raised
# OverflowError, which pydantic passes through (third review, stop 51).
EDGE = {"event_id": "x", "ts": "0001-01-01T00:00:00+01:00", "kind": "step_started", "actor": "a"}


@pytest.mark.parametrize("unrecorded", [[{}], [EDGE]], ids=["empty-event", "time-out-of-range"])
async def test_a_forged_undo_failure_with_a_malformed_unrecorded_list_does_not_wedge_the_rollback(
        stack: TrustStack, unrecorded: list[Any]) -> None:
    """The same details on a pending undo: `_undo` catches ActivityError only, so the error reading
    them left the workflow code and failed its workflow task, on every replay: the rollback stopped
    there and the run never ended (no compensation_failed, no run_finished)."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "undo")
    await _forge(stack, handle, fail=ApplicationError("forged", {"unrecorded": unrecorded}, non_retryable=True))
    try:
        status = await result(handle, timeout=20)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"the run never ended: {type(exc).__name__}; workflow task failures: "
                             f"{(await _task_failures(handle))[:1]}") from None
    assert status.state == "failed", status.state
    kinds = _kinds(stack, handle.id)
    assert "compensation_failed" in kinds and kinds[-1] == "run_finished", kinds


async def test_an_action_that_never_ran_records_no_start(stack: TrustStack) -> None:
    """A worker that has no such activity fails it before its wrapper runs (the SDK's NotFoundError;
    so does one that refuses the caller, bot/engine/callers.py), so before its record: the step
    failed, and the trail does not say it started (third review, stop 51)."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, fail=ApplicationError("Activity function http.request is not registered",
                                                      type="NotFoundError", non_retryable=True))
    status = await result(handle)
    assert status.step("only").state == "failed" and not stack.sink.of(handle.id), "scenario not built"
    assert _kinds(stack, handle.id) == ["run_started", "step_failed", "run_finished"]


@pytest.mark.parametrize("forged", [{"output": {}, "attempt": 1, "unrecorded": [{}]}, None, ["a", "list"]],
                         ids=["not-an-action-result", "null", "a-list"])
async def test_a_forged_result_that_does_not_decode_does_not_wedge_the_run(stack: TrustStack, forged: Any) -> None:
    """A completion the run cannot read as an ActionResult: the SDK failed the workflow task
    decoding it, on every replay, and the run never went on, rolled back or ended. The run reads
    it now (bot/engine/results.py): a failure of the step's, as any other."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, complete=forged)
    try:
        status = await result(handle, timeout=20)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"the run never ended: {type(exc).__name__}; workflow task failures: "
                             f"{[m[:120] for m in (await _task_failures(handle))[:1]]}") from None
    assert status.finished and status.step("only").state == "failed", status.state
    assert "no worker of the bot returns" in (status.step("only").error or "")
    kinds = _kinds(stack, handle.id)
    assert kinds.count("step_started") == 1 and kinds[-1] == "run_finished", kinds


async def test_a_forged_policy_answer_that_does_not_decode_is_a_deny(stack: TrustStack) -> None:
    """The same on a pending `decide` (answered before its seal is checked): the run reads it as a
    policy it could not ask, and denies the step."""
    DECIDE.arm(drop=True)
    handle = await _gated_run(stack)
    await asyncio.wait_for(DECIDE.asked.wait(), 30)
    try:
        run_id, activity_id = await _pending(handle, DECIDE.name)
        await stack.client.get_async_activity_handle(workflow_id=handle.id, run_id=run_id, activity_id=activity_id
                                                     ).complete({"allow": {"not": "a bool"}})
    finally:
        DECIDE.release.set()
    status = await until(handle, lambda s: s.step("risky").state not in ("pending", "running"), "risky decided")
    assert status.step("risky").state == "denied", status.step("risky")
    assert f"/{handle.id}/risky" not in stack.sink.of(handle.id)


async def test_a_genuine_run_records_each_event_once_and_ends_last(stack: TrustStack) -> None:
    handle = await _gated_run(stack, "genuine")
    status = await result(handle, timeout=60)
    assert status.state == "compensated", (status.state, status.error)
    events = stack.events(handle.id)
    pairs = [(e.kind.value, e.step_id) for e in events]
    assert pairs[-1] == ("run_finished", None) and pairs.count(("run_finished", None)) == 1, pairs
    for step in ("a", "log", "p1", "p2", "fb", "tell"):  # (core.sleep, a timer, records no start)
        assert pairs.count(("step_started", step)) == 1, (step, pairs)
    assert pairs.count(("step_failed", "fb")) == 2, pairs  # falling back, then the fallback's own failure
    assert pairs.count(("compensation_started", "a")) == 1 and pairs.count(("compensation_succeeded", "a")) == 1, pairs
    for step in ("a", "log", "nap", "p1", "p2", "tell"):
        assert pairs.count(("step_succeeded", step)) == 1, (step, pairs)
    assert stack.audit.verify().ok


# ---- 6. failure details the run reads: an attempt that is not one (fourth review, stop 51) --------

BAD_ATTEMPTS = [None, [1], float("inf"), "x", 10**9]
BAD_IDS = ["null", "list", "infinity", "not-a-number", "huge"]


async def _ended(handle: WorkflowHandle[Any, Any]) -> Any:
    try:
        return await result(handle, timeout=20)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"the run never ended: {type(exc).__name__}; workflow task failures: "
                             f"{[m[:160] for m in (await _task_failures(handle))[:1]]}") from None


@pytest.mark.parametrize("attempt", BAD_ATTEMPTS, ids=BAD_IDS)
async def test_a_forged_failure_with_an_unreadable_attempt_does_not_wedge_the_run(
        stack: TrustStack, attempt: Any) -> None:
    """`describe_failure` took `int()` of a forged failure's `attempt` in workflow code: null, a list
    or Infinity raised there (and "x" too, on an undo or a policy question), and the workflow task
    failed on every replay. An attempt that is not one of the step's is not taken now."""
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "closing")
    await _forge(stack, handle, fail=ApplicationError("forged", {"attempt": attempt}, non_retryable=True))
    status = await _ended(handle)
    assert status.step("only").state == "failed" and status.step("only").attempts == 3, status.step("only")


@pytest.mark.parametrize("attempt", BAD_ATTEMPTS[:4], ids=BAD_IDS[:4])
async def test_a_forged_undo_failure_with_an_unreadable_attempt_does_not_wedge_the_rollback(
        stack: TrustStack, attempt: Any) -> None:
    ACT.arm(drop=True)
    handle = await _gated_run(stack, "undo")
    await _forge(stack, handle, fail=ApplicationError("forged", {"attempt": attempt}, non_retryable=True))
    status = await _ended(handle)
    assert status.state == "failed" and "compensation_failed" in _kinds(stack, handle.id), status.state


@pytest.mark.parametrize("attempt", BAD_ATTEMPTS[:4], ids=BAD_IDS[:4])
async def test_a_forged_policy_failure_with_an_unreadable_attempt_is_a_deny(stack: TrustStack, attempt: Any) -> None:
    DECIDE.arm()
    handle = await _gated_run(stack)
    await _fail_held(stack, DECIDE, handle, ApplicationError("forged", {"attempt": attempt}, non_retryable=True))
    status = await _ended(handle)
    assert status.step("risky").state == "denied", status.step("risky")
