"""A front door's `approver` verdict counts only when it was asked of the worker's own policy.

Red team (stop 43): the run took any sealed verdict whose input was its own, whatever policy and
data the front door had asked. A front door whose data lags the workers' (a rollout that reached
the workers first, a revoked approver, a second account mapped to its person) then decided votes:
alice's second Slack account approved alice's own run, and a stale deny shut an approver the
workers admit out of the step (remembered as refused). The worker's validator now refuses a
verdict asked of another policy hash (rule `verdict`), the front door sends the vote again
without it, and the worker asks its own policy.
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.engine.front_approver import FrontApprover
from bot.engine.runs import RunError, vote
from bot.engine.state import VoteRequest
from tests.security.test_front_verdicts import approver_asks, votes_on_record
from tests.security.test_raw_temporal import DATA, PLAYBOOKS, gated_run
from tests.security.trust_stack import (
    FRONT_DOOR, GROUPS, PEOPLE, TrustStack, result, slack_actor, stale_fixture, state_of, stack_fixture,
)
from tests.slack.support import CAROL, MALLORY, principal

# The workers' data: mallory's Slack account is alice's second one, and carol is now in sre.
CURRENT = {**DATA, "people": {**PEOPLE, "alice": [*PEOPLE["alice"], principal(MALLORY)]},
           "groups": {**GROUPS, "sre": [*GROUPS["sre"], principal(CAROL)]}}


stack = stack_fixture("skew", PLAYBOOKS, CURRENT)
stale = stale_fixture(DATA)  # a front door on the data before it


async def test_a_lagging_front_doors_allow_does_not_let_the_requester_approve(stack: TrustStack, stale: Any) -> None:
    handle = await gated_run(stack)  # alice's run
    assert stale.policy_hash != stack.policy.policy_hash
    with pytest.raises(RunError) as refused:
        await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), slack_actor(MALLORY, "sre"),
                   FRONT_DOOR, approver=FrontApprover(stack.audit, stale, FRONT_DOOR))
    assert "is alice, who requested this run" in str(refused.value), refused.value
    assert approver_asks(await handle.fetch_history()) == 1  # the worker asked its own policy
    assert (await state_of(handle)).step("risky").approvals == []


async def test_a_lagging_front_doors_deny_does_not_shut_out_an_approver(stack: TrustStack, stale: Any) -> None:
    handle = await gated_run(stack)
    outcome = await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), slack_actor(CAROL, "web"),
                         FRONT_DOOR, approver=FrontApprover(stack.audit, stale, FRONT_DOOR))
    assert outcome.approvals == 1
    assert (await result(handle)).state == "completed"
    assert votes_on_record(stack, handle.id) == [(principal(CAROL), True, None)]


async def test_a_front_door_on_the_workers_policy_decides(stack: TrustStack) -> None:
    """Positive control: the same vote through a front door on the workers' policy takes its verdict."""
    handle = await gated_run(stack)
    outcome = await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), slack_actor(CAROL, "web"),
                         FRONT_DOOR, approver=FrontApprover(stack.audit, stack.policy, FRONT_DOOR))
    assert outcome.approvals == 1
    assert (await result(handle)).state == "completed"
    assert votes_on_record(stack, handle.id) == [(principal(CAROL), True, "front door")]
