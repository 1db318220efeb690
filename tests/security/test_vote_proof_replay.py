"""A vote's (or a cancel's) proof from an earlier run under the same run id does not approve this one.

A proof bound the run id, the purpose and what was asked (step, vote, reason), not the execution:
a run id runs again (an alert episode with `on_rerun: start`; admission lets a fresh start proof
through), and its steps have the same ids. The earlier run's history, readable by anyone who can
reach Temporal, holds bob's genuine `approve` proof for `risky`; sent as a raw update to the new
run, it verified, and bob (verified, in sre) approved a high-impact step he never saw. A time bound
(a proof older than the wait, less START_SKEW) left the earlier run's last minutes open; a vote,
answer or cancel proof now names the execution it was signed for.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from bot.audit.events import StoredEvent
from bot.engine.runs import SHOWN_SKEW, RunError, cancel_run, execution_of, start_run, vote
from bot.engine.state import CancelRequest, TriggerContext, VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.identity.proofs import START_SKEW, cancel_content, start_content, vote_content
from tests.security.test_raw_temporal import (
    DATA,
    PLAYBOOKS,
    approve_as_bob,
    assert_nothing_approved,
    gated_run,
    refused_vote,
)
from tests.security.trust_stack import (
    FRONT_DOOR,
    TrustStack,
    cli_actor,
    raw_input,
    result,
    slack_actor,
    state_of,
    stack_fixture,
    until,
)
from tests.slack.support import ALICE, BOB, DAVE, principal


stack = stack_fixture("replay", PLAYBOOKS, DATA)


async def test_a_vote_proof_issued_before_the_run_started_is_refused(stack: TrustStack) -> None:
    """The time bound, kept as defence in depth beside the execution a proof is bound to: a proof
    for this very execution, issued before the step could be asked, is refused too."""
    handle = await gated_run(stack)
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    lifted = FRONT_DOOR.sign("vote", handle.id, slack_actor(BOB, "sre"), vote_content("risky", "approve", ""),
                             now=yesterday, execution=await execution_of(stack.client, handle.id))
    said = await refused_vote(handle, VoteRequest(step_id="risky", user=principal(BOB), proof=lifted))
    assert "issued before" in said, said
    await assert_nothing_approved(stack, handle, refusals=1)
    await approve_as_bob(stack, handle)  # positive control: bob's own click now


async def test_a_cancel_proof_issued_before_the_run_started_is_refused(stack: TrustStack) -> None:
    """The same for a cancel: bob's (an owner) cancel issued before this run started does not
    cancel it; his own cancel now does."""
    handle = await gated_run(stack)
    actor, keyring = cli_actor("bob")
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    lifted = keyring.sign("cancel", handle.id, actor, cancel_content("stop"), now=yesterday,
                          execution=await execution_of(stack.client, handle.id))
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(PlaybookRun.cancel, CancelRequest(user="cli:bob", reason="stop", proof=lifted))
    assert "issued before" in str(refused.value.cause), refused.value.cause
    status = await state_of(handle)
    assert status.cancelled_by is None and status.step("risky").state == "waiting_approval", status
    await cancel_run(stack.client, handle.id, actor, keyring, reason="positive control")
    assert (await result(handle)).cancelled_by == "cli:bob"


# ---- the same run id run again: proofs lifted from the first execution's history ----------------


async def gated_execution(stack: TrustStack, run_id: str) -> WorkflowHandle[Any, Any]:
    """A `gated` run alice started through the front door under `run_id`, waiting on `risky`."""
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    handle = await start_run(stack.client, stack.task_queue, stack.loaded("gated"), {}, trigger,
                             actor=slack_actor(ALICE, "sre"), keyring=FRONT_DOOR, run_id=run_id)
    await until(handle, lambda s: s.step("risky").state == "waiting_approval", "risky waiting for approval")
    return handle


async def rerun(stack: TrustStack, run_id: str) -> WorkflowHandle[Any, Any]:
    """The front door runs `run_id` again (an alert episode's `on_rerun: start`) at the earliest the
    worker admits it: a start proof issued START_SKEW after the first execution's last record, its
    clock that far ahead of the worker's (the skew admission tolerates). The new execution asks for
    approval of `risky` seconds after the first execution's proofs were issued."""
    earlier = stack.audit.run_last_recorded(run_id)
    assert earlier is not None
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    loaded, alice = stack.loaded("gated"), slack_actor(ALICE, "sre")
    content = start_content(loaded.playbook.name, loaded.hash, {}, trigger.model_dump(mode="json"))
    proof = FRONT_DOOR.sign("start", run_id, alice, content, now=earlier + START_SKEW + timedelta(milliseconds=1))
    handle = await stack.start_raw(raw_input(loaded, {}, principal(ALICE), kind="slack", proof=proof), run_id=run_id)
    status = await until(handle, lambda s: s.finished or s.step("risky").state == "waiting_approval",
                         "the second execution waiting on risky")
    assert status.step("risky").state == "waiting_approval", status.error
    return handle


async def lifted(stack: TrustStack, handle: WorkflowHandle[Any, Any], update: str, kind: type[Any]) -> Any:
    """The first `update` request the execution accepted, as anyone who can read its history sees it."""
    history = await handle.fetch_history()
    for e in history.events:
        if e.HasField("workflow_execution_update_accepted_event_attributes"):
            request = e.workflow_execution_update_accepted_event_attributes.accepted_request
            if request.input.name == update:
                (taken,) = await stack.client.data_converter.decode(request.input.args.payloads, [kind])
                return taken
    raise AssertionError(f"no {update} update in the history of {handle.id}")


def events_of(stack: TrustStack, handle: WorkflowHandle[Any, Any], execution: str, kind: str) -> list[StoredEvent]:
    """One execution's events of a kind (event ids are `<run id>/<first execution run id>:...`)."""
    scope = f"{handle.id}/{execution.replace('-', '')}:"
    return [e for e in stack.events(handle.id, kind) if e.event_id.startswith(scope)]


async def test_a_vote_proof_from_the_run_ids_earlier_execution_is_refused(stack: TrustStack) -> None:
    """Bob approved `risky` of the first execution; the front door runs the id again and its
    `risky` waits within START_SKEW of bob's vote. His genuine proof, lifted from the first
    execution's history and sent as a raw update, is from another execution: refused, audited,
    `risky` does not run. Before execution binding the time bound let it through (bob approved a
    step he never saw) and the high-impact call was made again."""
    run_id = f"rerun-vote-{uuid.uuid4().hex[:8]}"
    first = await gated_execution(stack, run_id)
    await vote(stack.client, run_id, VoteRequest(step_id="risky", user=""), slack_actor(BOB, "sre"), FRONT_DOOR)
    assert (await result(first)).state == "completed"
    taken: VoteRequest = await lifted(stack, first, "vote", VoteRequest)
    assert taken.proof is not None and taken.user == principal(BOB)

    second = await rerun(stack, run_id)
    said = await refused_vote(second, taken)
    assert "another execution" in said and "earlier run under this run id" in said, said
    status = await state_of(second)
    assert status.step("risky").state == "waiting_approval" and status.step("risky").approvals == [], status
    assert stack.sink.of(run_id) == [f"/{run_id}/prep", f"/{run_id}/risky", f"/{run_id}/prep"], "risky ran again"
    execution = (await second.describe()).raw_description.workflow_execution_info.first_run_id
    refused = events_of(stack, second, execution, "approval_vote")
    assert [(e.actor, e.details["accepted"]) for e in refused] == [(principal(BOB), False)], refused
    assert "another execution" in refused[0].details["message"], refused[0].details

    # The first execution's Approve button, clicked now: signed for that execution, which Temporal
    # itself no longer takes (the update goes to the execution the proof names).
    with pytest.raises(RunError) as old_button:
        await vote(stack.client, run_id, VoteRequest(step_id="risky", user=""), slack_actor(DAVE, "sre"), FRONT_DOOR,
                   execution=taken.proof.execution)
    assert (old_button.value.code, old_button.value.rule) == ("conflict", "run_state"), old_button.value
    assert "has run again" in str(old_button.value), old_button.value
    assert (await state_of(second)).step("risky").approvals == []

    await vote(stack.client, run_id, VoteRequest(step_id="risky", user=""), slack_actor(DAVE, "sre"), FRONT_DOOR)
    assert (await result(second)).state == "completed"  # positive control: a vote made now, for this execution


async def test_a_button_from_before_buttons_named_their_execution_does_not_vote_on_a_later_run(
        stack: TrustStack) -> None:
    """Attack (review, stop 24): a button posted before buttons carried the execution names only
    the run and step. Clicked after the run id ran again, the front door learnt the execution with
    a describe, signed the vote for the new run, and the click approved a step its voter was never
    shown. The button's message time (Slack's `message_ts`) now has to be after the run started."""
    run_id = f"rerun-button-{uuid.uuid4().hex[:8]}"
    first = await gated_execution(stack, run_id)
    posted = datetime.now(timezone.utc)  # the first execution's approval message, as Slack timed it
    await vote(stack.client, run_id, VoteRequest(step_id="risky", user=""), slack_actor(BOB, "sre"), FRONT_DOOR,
               shown_at=posted)  # a button without an execution, clicked on the run it was shown for
    assert (await result(first)).state == "completed"

    second = await rerun(stack, run_id)
    with pytest.raises(RunError) as old_button:
        await vote(stack.client, run_id, VoteRequest(step_id="risky", user=""), slack_actor(DAVE, "sre"), FRONT_DOOR,
                   shown_at=posted - SHOWN_SKEW)
    assert (old_button.value.code, old_button.value.rule) == ("conflict", "run_state"), old_button.value
    assert "earlier run under that id" in str(old_button.value), old_button.value
    assert (await state_of(second)).step("risky").approvals == []

    now = datetime.now(timezone.utc)  # the second execution's own button, also without an execution
    await vote(stack.client, run_id, VoteRequest(step_id="risky", user=""), slack_actor(DAVE, "sre"), FRONT_DOOR,
               shown_at=now)
    assert (await result(second)).state == "completed"


async def test_a_cancel_proof_from_the_run_ids_earlier_execution_is_refused(stack: TrustStack) -> None:
    """The same for a cancel: bob (an owner) cancelled the first execution; his proof, lifted from
    its history, does not cancel the second, started within START_SKEW of it."""
    run_id = f"rerun-cancel-{uuid.uuid4().hex[:8]}"
    first = await gated_execution(stack, run_id)
    actor, keyring = cli_actor("bob")
    await cancel_run(stack.client, run_id, actor, keyring, reason="stop")
    assert (await result(first)).cancelled_by == "cli:bob"
    taken: CancelRequest = await lifted(stack, first, "cancel", CancelRequest)
    assert taken.proof is not None

    second = await rerun(stack, run_id)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await second.execute_update(PlaybookRun.cancel, taken)
    assert "another execution" in str(refused.value.cause), refused.value.cause
    status = await state_of(second)
    assert status.cancelled_by is None and status.step("risky").state == "waiting_approval", status
    execution = (await second.describe()).raw_description.workflow_execution_info.first_run_id
    decided = events_of(stack, second, execution, "cancel_requested")
    assert [(e.details["by"], e.details["accepted"]) for e in decided] == [("cli:bob", False)], decided

    await cancel_run(stack.client, run_id, actor, keyring, reason="positive control")
    assert (await result(second)).cancelled_by == "cli:bob"
