"""One person, several doors (issue 11, items 5 and 6): four-eyes, one vote per person and who may
cancel are decided on people, whichever login they use.

The shipped policy with data.playbook.people mapping alice to `slack:U0ALICE` and `cli:alice`
(bob, dave likewise); Slack requests signed as Slack sends them through the real front door; the
CLI as it acts on the embedded dev stack (`cli:NAME`, verified by the dev key). Side effects are
counted at the HTTP sink, outcomes read from the run's status, the audit trail and Slack.

Against `main` (principals were bare ids: `U0ALICE` from Slack, `alice` from the CLI; no cancel
check at all) each attack here succeeded: said per test as "On main: ...".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from bot.engine.runs import RunError, get_status, vote
from bot.engine.state import VoteRequest
from tests.security.trust_stack import (
    REMEDIATE,
    TrustStack,
    approval_message,
    cli_actor,
    ended,
    ephemerals_to,
    slack_run,
    trust_stack,
    waiting,
)
from tests.slack.support import (
    ALICE,
    BOB,
    CAROL,
    eventually,
    principal,
    returns,
    step_state,
)

PLAYBOOKS = {
    "gated": """
name: gated
summary: Prepare, then a high-impact call behind an approval
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: prep
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/prep"}
  - id: risky
    action: http.request
    impact: high
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/risky"}
""",
    "twice": """
name: twice
summary: A shell.run in production, which the shipped policy gives two approvers
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: kill
    action: shell.run
    impact: high
    with: {argv: ["true"]}
  - id: after
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/after"}
""",
    "remediate": REMEDIATE,
}


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TrustStack]:
    root = tmp_path_factory.mktemp("doors")
    async with trust_stack(dev_env.client, _slack_server, root, PLAYBOOKS, shell_allow=["true"]) as s:
        yield s


# ---- 2a: four-eyes by person -------------------------------------------------------------------


async def test_the_requester_cannot_approve_her_slack_run_from_the_cli(stack: TrustStack) -> None:
    """Alice starts `gated` from Slack, then approves it as `cli:alice` (verified: the dev stack's
    CLI) and from Slack itself: both refused, nothing runs. Positive control: bob's Slack click
    approves and the high-impact call is made. On main: `approve --by alice` on her Slack run
    (`U0ALICE`) was a different user, approved it, and the call was made."""
    run_id = await slack_run(stack, "gated", ALICE)
    await waiting(stack, run_id, "risky")
    actor, keyring = cli_actor("alice")
    with pytest.raises(RunError) as refused:
        await vote(stack.client, run_id, VoteRequest(step_id="risky", user=""), actor, keyring)
    assert "cli:alice is alice, who requested this run (as slack:U0ALICE), and cannot approve it" in str(refused.value)
    ts = await approval_message(stack, run_id, "risky")
    assert (await stack.click(ALICE, run_id, "risky", ts)).status_code == 200
    told = await eventually(lambda: returns(ephemerals_to(stack, ALICE)), what="alice told")
    assert "slack:U0ALICE requested this run and cannot vote on it (four-eyes)" in told[-1], told

    status = await get_status(stack.client, run_id)
    assert status.step("risky").state == "waiting_approval" and status.step("risky").approvals == []
    assert stack.sink.of(run_id) == [f"/{run_id}/prep"], "the high-impact step ran"
    votes = [(e.actor, e.details["accepted"]) for e in stack.events(run_id, "approval_vote")]
    assert votes == [("cli:alice", False)], votes

    assert (await stack.click(BOB, run_id, "risky", ts)).status_code == 200
    status = await ended(stack, run_id)
    assert status.state == "completed", status
    assert [(v.user, v.person, v.verified) for v in status.step("risky").approvals] == [(principal(BOB), "bob", True)]
    assert stack.sink.of(run_id) == [f"/{run_id}/prep", f"/{run_id}/risky"]


# ---- 2b: one vote per person ---------------------------------------------------------------------


async def test_one_person_cannot_meet_a_quorum_of_two_with_two_logins(stack: TrustStack) -> None:
    """Carol starts `twice` (shell.run in production: two approvals). Bob approves in Slack, then
    again as `cli:bob`: the second vote is refused, one vote per person. Positive control: dave
    (`cli:dave`) is a second person and completes the quorum. On main: `U0BOB` and `bob` counted
    as two approvers and the step ran on one person's say."""
    run_id = await slack_run(stack, "twice", CAROL)
    await waiting(stack, run_id, "kill")
    ts = await approval_message(stack, run_id, "kill")
    assert (await stack.click(BOB, run_id, "kill", ts)).status_code == 200
    await eventually(lambda: _approvals(stack, run_id, "kill", 1), what="bob's Slack vote counted")

    actor, keyring = cli_actor("bob")
    with pytest.raises(RunError) as refused:
        await vote(stack.client, run_id, VoteRequest(step_id="kill", user=""), actor, keyring)
    assert "bob has already voted on step 'kill' (as slack:U0BOB): one vote per person" in str(refused.value)

    status = await get_status(stack.client, run_id)
    assert status.step("kill").state == "waiting_approval", status.step("kill")
    assert [v.user for v in status.step("kill").approvals] == [principal(BOB)]
    assert stack.sink.of(run_id) == []
    votes = [(e.actor, e.details["accepted"]) for e in stack.events(run_id, "approval_vote")]
    assert votes == [(principal(BOB), True), ("cli:bob", False)], votes

    actor, keyring = cli_actor("dave")
    outcome = await vote(stack.client, run_id, VoteRequest(step_id="kill", user=""), actor, keyring)
    assert (outcome.approvals, outcome.needed) == (2, 2)
    status = await ended(stack, run_id)
    assert status.state == "completed", status
    assert [v.person for v in status.step("kill").approvals] == ["bob", "dave"]
    assert stack.sink.of(run_id) == [f"/{run_id}/after"]


async def _approvals(stack: TrustStack, run_id: str, step: str, n: int) -> bool:
    status = await get_status(stack.client, run_id)
    return len(status.step(step).approvals) >= n


# ---- 2c: who may cancel ------------------------------------------------------------------------


async def test_a_slack_outsider_cannot_cancel_someone_elses_run(stack: TrustStack) -> None:
    """Carol (not in sre, not the requester) sends `/playbook cancel` for alice's run: refused, told
    only to her, audited, the run goes on undisturbed. Positive control: alice cancels her own run,
    which is rolled back, and `cancelled_by` shows in status, `run_finished` and the Slack thread.
    On main: anyone's `/playbook cancel` rolled back anyone's run."""
    run_id = await slack_run(stack, "remediate", ALICE)
    await eventually(lambda: step_state(stack, run_id, "hold", "running"), what="hold running")

    body, key = stack.command(f"cancel {run_id}", user=CAROL)
    assert (await stack.post(body)).status_code == 200
    (answer,) = await stack.answers(key)
    assert answer["response_type"] == "ephemeral"
    assert "slack:U0CAROL may not cancel" in answer["text"] and "only its requester or members of sre" in answer["text"]
    refused = stack.events(run_id, "cancel_requested")
    assert [(e.actor, e.details["accepted"]) for e in refused] == [(principal(CAROL), False)], refused
    commands = [(e.actor, e.details["outcome"]) for e in stack.audit.events() if e.kind.value == "slack_command"
                and e.run_id == run_id and e.details.get("outcome", "").startswith("cancel")]
    assert commands == [(principal(CAROL), "cancel_refused")], commands

    status = await get_status(stack.client, run_id)
    assert (status.state, status.step("hold").state, status.cancelled_by) == ("running", "running", None)
    assert stack.sink.of(run_id) == [f"/{run_id}/poke"], "something was undone"

    body, key = stack.command(f"cancel {run_id}", user=ALICE)
    assert (await stack.post(body)).status_code == 200
    (answer,) = await stack.answers(key)
    assert answer["text"].startswith(":octagonal_sign: Cancelling run"), answer
    status = await ended(stack, run_id)
    assert (status.state, status.cancelled_by) == ("compensated", principal(ALICE)), status
    assert stack.sink.of(run_id) == [f"/{run_id}/poke", f"/{run_id}/undo-poke"]
    (finished,) = stack.events(run_id, "run_finished")
    assert finished.details["cancelled_by"] == principal(ALICE)
    await eventually(lambda: returns([t for t in stack.thread_of(run_id) if f"Cancelled by <@{ALICE}>" in t]),
                     what="the run's Slack thread names the canceller")
