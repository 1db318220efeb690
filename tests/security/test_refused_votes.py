"""Refused votes on one run (1,000 in `make chaos`, 120 in `make test`) leave it running,
audited, and its history bounded (issue 14).

Attack: whoever may click a button (or reach Temporal) votes again and again on a step the
`approver` rule will not let them approve. Each vote used to reach the workflow: an update in
history, a policy activity carrying the whole alert, an audit flush; enough of them push the
run past Temporal's history limits, which terminate it with no rollback.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY
from temporalio.client import WorkflowUpdateFailedError

from bot.audit import refusals as refusals_module
from bot.audit.events import EventKind
from bot.audit.recorder import RefusalBudget
from bot.engine.approvals import UNVERIFIED_REFUSED_MAX
from bot.engine.state import VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, vote_content
from tests.slack.support import BOB, MALLORY, finished, principal, slack_stack, waiting_gated_run
from tests.waiting import eventually

BATCH = 20
HISTORY_BOUND = 200  # events a flood of refused votes may add (a few principals' first refusals)
DIRECT_VOTERS = [principal(MALLORY), "cli:eve", "slack:U0CAROL", "api:svc-bot", "cli:mallory"]


async def _in_batches(calls: list[Any], size: int = 25) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(calls), size):
        out += await asyncio.gather(*calls[i:i + size], return_exceptions=True)
    return out


async def _history_events(stack: Any, run_id: str) -> int:
    return len((await stack.temporal.get_workflow_handle(run_id).fetch_history()).events)


def _refusals(stack: Any, run_id: str) -> list[Any]:
    return [e for e in stack.audit.events(run_id)
            if e.kind == EventKind.access_refused and e.details.get("operation") == "vote"]


# 120 in `make test`: 240 refused votes, past HISTORY_BOUND even at one event each if they were not
# bounded (each click now reaches the run, so 200 cost a minute); 1,000: `make chaos`.
@pytest.mark.parametrize("votes", [120, pytest.param(1000, marks=pytest.mark.chaos)])
async def test_refused_votes_leave_the_run_running_audited_and_bounded(dev_env, fake_slack, tmp_path, votes, monkeypatch):
    """Refused votes by the hundred through Slack, then as many straight to Temporal: every
    front-door refusal audited, the run's history bounded, and a valid vote still completes it.
    (Each refusal one by one: the budget past which a user's refusals are a minute's count is
    tests/security/test_slack_refusal_flood.py's.)"""
    monkeypatch.setattr(refusals_module, "RefusalBudget", lambda: RefusalBudget(per_minute=10 * votes))
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as stack:
        run_id, request_ts = await waiting_gated_run(stack)
        before = await _history_events(stack, run_id)

        # Through the front door: mallory is not in sre. Each click is refused and audited. The front
        # door asks no policy itself (issue 17.3): the run's approver check refuses her first vote,
        # and its validator every repeat, before it enters history.
        # (A click is answered before its handler runs: each batch is let through before the next.)
        for sent in range(BATCH, votes + 1, BATCH):
            answers = await asyncio.gather(*(stack.click(MALLORY, run_id, "risky", request_ts) for _ in range(BATCH)))
            assert all(a.status_code == 200 for a in answers), "each click is acknowledged"
            refused = await eventually(lambda: _ready(len(_refusals(stack, run_id)) >= sent, _refusals(stack, run_id)),
                                       timeout=60, what=f"{sent} front-door refusals audited")
        reasons = [e.details["reason"] for e in refused]
        ruled = [r for r in reasons if r.startswith(f"{principal(MALLORY)} may not approve step 'risky'")]
        assert len(ruled) == 1, "the approver rule was asked once"
        other = [r for r in reasons if "may not approve step 'risky'" not in r and "that vote is being checked" not in r]
        assert other == [], other[:3]
        assert len(_refusals(stack, run_id)) == votes, "each refusal once"
        assert await _history_events(stack, run_id) - before <= 15, "only her first vote reached history"

        # Straight to Temporal, as anyone who can reach it: a few principals, over and over.
        handle = stack.temporal.get_workflow_handle(run_id)
        early_before = REGISTRY.get_sample_value("playbook_bot_votes_refused_early_total", {"rule": "approver"}) or 0.0
        direct = await _in_batches([
            handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user=DIRECT_VOTERS[i % len(DIRECT_VOTERS)]))
            for i in range(votes)
        ])
        assert all(isinstance(r, WorkflowUpdateFailedError) for r in direct), [r for r in direct if not isinstance(
            r, WorkflowUpdateFailedError)][:3]

        grown = await _history_events(stack, run_id) - before
        assert grown <= HISTORY_BOUND, f"{2 * votes} refused votes added {grown} history events"
        status = await handle.query(PlaybookRun.status)
        assert status.state == "waiting_approval" and status.step("risky").state == "waiting_approval"
        # Mallory's first click (verified), and each direct voter's first vote (unverified: it does not
        # stand for the verified principal of the same name) reached the run.
        assert status.step("risky").refused_votes == 1 + len(DIRECT_VOTERS)
        early = REGISTRY.get_sample_value("playbook_bot_votes_refused_early_total", {"rule": "approver"}) or 0.0
        # (Temporal may hand an update to a validator more than once: the metric counts refusals made.)
        assert early - early_before >= votes - len(DIRECT_VOTERS), "every repeat refused by the validator, counted"
        refused_in_run = [e for e in stack.audit.events(run_id)
                          if e.kind == EventKind.approval_vote and not e.details.get("accepted")]
        assert 1 <= len(refused_in_run) <= 1 + len(DIRECT_VOTERS), "each voter's first refusal is on the record, once"

        # The run is none the worse: a valid vote decides it and it completes.
        assert (await stack.click(BOB, run_id, "risky", request_ts)).status_code == 200
        final = await eventually(lambda: finished(stack, run_id), timeout=120, what="run finished")
    assert final.state == "completed", final.error
    assert [v.user for v in final.step("risky").approvals] == [principal(BOB)]
    assert json.dumps(final.model_dump(mode="json"))  # the result is readable


async def _ready(done: bool, value: Any) -> Any:
    return value if done else None


async def test_forged_proofs_and_a_crowd_of_unverified_voters_stop_adding_history(dev_env, fake_slack, tmp_path):
    """Straight to Temporal, votes nobody vouched for: bob's name with forged proofs (each audited
    by the run, as before) and proof-less voters under a new name each time. Past a bound per
    step the validator hears only verified votes, so history stops growing, and bob's own
    (verified) vote still counts: nobody voting in his name shut him out."""
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as stack:
        run_id, request_ts = await waiting_gated_run(stack)
        handle = stack.temporal.get_workflow_handle(run_id)
        before = await _history_events(stack, run_id)
        forged = Keyring(b"not-the-envelope-key-0123456789abcdef").sign(
            "vote", run_id, Actor(principal(BOB), "bob", ("sre",), "slack"), vote_content("risky", "approve", "")
        )
        votes = [VoteRequest(step_id="risky", user=principal(BOB), groups=["sre"], proof=forged) for _ in range(50)]
        votes += [VoteRequest(step_id="risky", user=f"cli:stranger-{i}") for i in range(200)]
        answers = await _in_batches([handle.execute_update(PlaybookRun.vote, v) for v in votes], size=10)
        assert all(isinstance(a, WorkflowUpdateFailedError) for a in answers), "every one refused"
        rules = Counter((a.cause.details[0] or {}).get("rule") for a in answers)
        # The run asked policy about at most the bound (plus the batch in flight when it was reached);
        # the rest were turned away before history: as unverified, or as bob's vote already under way.
        assert rules["approver"] <= UNVERIFIED_REFUSED_MAX + 10 and rules["unverified"] >= 150, rules
        assert await _history_events(stack, run_id) - before <= (UNVERIFIED_REFUSED_MAX + 10) * 15, "bounded"
        audited = [e for e in stack.audit.events(run_id) if e.kind == EventKind.approval_vote]
        assert any(e.actor == principal(BOB) and "proof does not verify" in e.details["message"] for e in audited)

        assert (await stack.click(BOB, run_id, "risky", request_ts)).status_code == 200, "bob's own vote"
        final = await eventually(lambda: finished(stack, run_id), timeout=120, what="run finished")
    assert final.state == "completed", final.error
    assert [v.user for v in final.step("risky").approvals] == [principal(BOB)]


async def _history_bytes(stack: Any, run_id: str) -> int:
    return sum(e.ByteSize() for e in (await stack.temporal.get_workflow_handle(run_id).fetch_history()).events)


async def test_votes_padded_past_the_screens_bounds_do_not_enter_history(dev_env, fake_slack, tmp_path):
    """The screen bounds a vote's reason, name and number of groups, but not the size of each
    group, of the principal, or of the proof: straight to Temporal, each of UNVERIFIED_REFUSED_MAX
    proof-less votes (per step) could carry ~2 MB (Temporal's payload limit) into history, past
    its 50 MB limit within a few steps, which terminates the run with no rollback."""
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as stack:
        run_id, request_ts = await waiting_gated_run(stack)
        handle = stack.temporal.get_workflow_handle(run_id)
        before = await _history_bytes(stack, run_id)
        mb = "x" * 1_000_000
        forged = Keyring(b"not-the-envelope-key-0123456789abcdef").sign(
            "vote", run_id, Actor(principal(BOB), mb, ("sre",), "slack"), vote_content("risky", "approve", "")
        )
        padded = [
            VoteRequest(step_id="risky", user="cli:eve", groups=[mb]),
            VoteRequest(step_id="risky", user=f"cli:{mb}"),
            VoteRequest(step_id="risky", user=principal(BOB), proof=forged),
        ]
        for request in padded:
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update(PlaybookRun.vote, request)
            assert (refused.value.cause.details[0] or {}).get("rule") == "size", refused.value.cause
        grown = await _history_bytes(stack, run_id) - before
        assert grown < 100_000, f"{len(padded)} padded votes added {grown} bytes of history"

        assert (await stack.click(BOB, run_id, "risky", request_ts)).status_code == 200, "bob's own vote"
        final = await eventually(lambda: finished(stack, run_id), timeout=120, what="run finished")
    assert final.state == "completed", final.error
