"""Approval buttons under double clicks, races, replays and forged values, through POST
/slack/events of the running front door, on the real Temporal dev server with a worker.

The high-impact step is an `http.request` to a local HTTP sink that counts what arrives (with
the step's Idempotency-Key), so "the step ran once" is counted at the receiving end. A refused
click must be told to the clicker alone and change nothing: no vote, no audit event, no redraw.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import pytest_asyncio

from bot.audit.events import EventKind
from bot.engine.runs import get_status
from bot.slack.app import MAX_SKEW
from bot.slack.blocks import APPROVE_ACTION, REJECT_ACTION
from bot.slack.commands import slack_run_id
from tests.reliability.sink import Sink
from tests.slack.support import (
    ALICE, BOB, CAROL, CHANNEL, DAVE, MALLORY, POLICY, Stack, eventually, finished, principal, returns, sign,
    step_state,
)

QUORUM_POLICY = POLICY.replace(
    '"min_approvals": 1, "approver_groups": ["sre"], "approval_timeout": "10m", '
    '"reasons": ["high impact needs one approval from sre"]',
    '"min_approvals": 2, "approver_groups": ["sre"], "approval_timeout": "10m", '
    '"reasons": ["high impact needs two approvals from sre"]',
)
assert QUORUM_POLICY != POLICY, "the quorum policy is tests/slack's with min_approvals 2"

PUSH = """
name: push
summary: One high-impact call to the sink, behind the sre approval
owner: sre
steps:
  - id: prep
    action: core.log
    with: {{message: prepare}}
  - id: push
    action: http.request
    impact: high
    with: {{method: POST, url: "{sink}/push"}}
"""

# How a click that comes too late is refused, depending on where it meets the run: the run's own
# checks, the front door's look at a finished run, or Temporal aborting an update the closing run
# never took in.
REFUSED = ("already voted", "already been decided", "not waiting", "already ended",
           "ended while your request was on its way")


# ---- the sink and the stacks ------------------------------------------------------------------


@pytest_asyncio.fixture
async def quorum(make_slack_stack: Callable[..., AbstractAsyncContextManager[Stack]], sink: Sink
                 ) -> AsyncIterator[Stack]:
    """`push` needs two approvals from sre (BOB and DAVE; ALICE, the requester, is in sre too)."""
    async with make_slack_stack(policy=QUORUM_POLICY, playbooks={"push": PUSH.format(sink=sink.url)}) as stack:
        yield stack


@pytest_asyncio.fixture
async def single(make_slack_stack: Callable[..., AbstractAsyncContextManager[Stack]], sink: Sink
                 ) -> AsyncIterator[Stack]:
    """`push` needs one approval from sre."""
    async with make_slack_stack(playbooks={"push": PUSH.format(sink=sink.url)}) as stack:
        yield stack


async def waiting(stack: Stack, playbook: str, step: str, requester: str = ALICE) -> tuple[str, str]:
    """Start `playbook` by `requester`; its run id and the ts of its approval request (with buttons)."""
    trigger = f"{int(time.time())}.3.{uuid.uuid4().hex[:20]}"
    body, key = stack.command(f"run {playbook}", user=requester, trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    run_id = slack_run_id(playbook, trigger)
    await eventually(lambda: step_state(stack, run_id, step, "waiting_approval"), what=f"{run_id} waiting")
    request = await eventually(lambda: returns(approval_requests(stack, run_id)), what="approval request posted")
    await stack.answers(key)
    return run_id, request[0].ts


def approval_requests(stack: Stack, run_id: str) -> list[Any]:
    return [m for m in stack.fake.messages
            if m.thread_ts and run_id in json.dumps(m.blocks or []) and "approval" in json.dumps(m.blocks or [])]


def buttons(blocks: Any) -> bool:
    text = json.dumps(blocks or [])
    return APPROVE_ACTION in text or REJECT_ACTION in text


def ephemerals(stack: Stack, user: str | None = None) -> list[Any]:
    return [c for c in stack.fake.calls_to("chat.postEphemeral") if user is None or c.params.get("user") == user]


def votes(stack: Stack, run_id: str) -> list[tuple[str, str]]:
    """The run's counted votes in the audit trail, as (principal, vote). A vote the run refused after
    asking policy is audited too (accepted false), and counts for nothing."""
    return [(e.actor, e.details["vote"]) for e in stack.audit.events(run_id)
            if e.kind == EventKind.approval_vote and e.details["accepted"] is True]


async def one_vote(stack: Stack, run_id: str) -> bool:
    """Whether the run holds exactly one vote on `push`."""
    return len((await get_status(stack.temporal, run_id)).step("push").approvals) == 1


def kinds(stack: Stack, run_id: str, kind: EventKind, step: str | None = None) -> int:
    return sum(1 for e in stack.audit.events(run_id) if e.kind == kind and (step is None or e.step_id == step))


async def quiet(stack: Stack, seconds: float = 0.5) -> None:
    """Until the fake Slack saw no new call for `seconds`."""
    seen = -1
    while seen != len(stack.fake.calls):
        seen = len(stack.fake.calls)
        await asyncio.sleep(seconds)


# ---- double clicks, races, replays ------------------------------------------------------------


async def double_clicks(stack: Stack, sink: Sink, runs: int, clicks_each: int, bystanders: bool) -> None:
    """BOB and DAVE click Approve `clicks_each` times each, all at once (with refused bystanders):
    exactly two votes, the step runs once, the run completes, the request shows both, no buttons."""
    waiting_runs = await asyncio.gather(*(waiting(stack, "push", "push") for _ in range(runs)))
    clicks = []
    for run_id, ts in waiting_runs:
        clickers = [BOB, DAVE] * clicks_each + ([ALICE, CAROL, MALLORY] if bystanders else [])
        clicks += [stack.click(user, run_id, "push", ts) for user in clickers]
    responses = await asyncio.gather(*clicks)
    assert [r.status_code for r in responses] == [200] * len(clicks)

    for run_id, ts in waiting_runs:
        final = await eventually(lambda run_id=run_id: finished(stack, run_id), what=f"{run_id} finished")
        assert final.state == "completed", final.error
        approvals = final.step("push").approvals
        assert sorted((v.user, v.vote) for v in approvals) == [(principal(BOB), "approve"), (principal(DAVE), "approve")]
        assert final.step("push").attempts == 1
        assert sorted(votes(stack, run_id)) == [(principal(BOB), "approve"), (principal(DAVE), "approve")], \
            "two votes recorded, once each"
        assert kinds(stack, run_id, EventKind.step_started, "push") == 1
        assert kinds(stack, run_id, EventKind.step_succeeded, "push") == 1
        assert kinds(stack, run_id, EventKind.run_finished) == 1
    pushed = [hit.key for hit in sink.hits if hit.path == "/push"]
    assert len(pushed) == runs and len(set(pushed)) == runs, f"each run's step reached the sink once: {sink.hits}"
    assert all(key and any(run_id in key for run_id, _ in waiting_runs) for key in pushed), pushed

    refusals = runs * (2 * (clicks_each - 1) + (3 if bystanders else 0))
    await eventually(lambda: returns(len(ephemerals(stack)) >= refusals), what=f"{refusals} refusals")
    await quiet(stack)
    told = Counter(c.params["user"] for c in ephemerals(stack))
    expected = Counter({BOB: runs * (clicks_each - 1), DAVE: runs * (clicks_each - 1)})
    if bystanders:
        expected.update({ALICE: runs, CAROL: runs, MALLORY: runs})
    assert told == expected, f"each refused click is told to its clicker alone: {told}"
    assert all(c.params["channel"] == CHANNEL for c in ephemerals(stack))
    for c in ephemerals(stack, BOB) + ephemerals(stack, DAVE):
        assert any(reason in c.params["text"] for reason in REFUSED), c.params["text"]
    assert not [k for k in stack.responses if k.startswith("click-")], "a click's response_url would replace the request"
    for run_id, ts in waiting_runs:
        message = stack.fake.message(CHANNEL, ts)
        shown = json.dumps(message.blocks)
        assert f"<@{BOB}>" in shown and f"<@{DAVE}>" in shown and "2/2 approvals" in shown, shown
        assert not buttons(message.blocks), "a decided request has no buttons left"


async def test_double_clicks_by_two_approvers_count_two_votes_and_run_the_step_once(quorum: Stack, sink: Sink
                                                                                     ) -> None:
    await double_clicks(quorum, sink, runs=1, clicks_each=2, bystanders=False)


@pytest.mark.chaos
async def test_click_storms_on_many_runs_count_two_votes_each(quorum: Stack, sink: Sink) -> None:
    await double_clicks(quorum, sink, runs=8, clicks_each=6, bystanders=True)


async def races(stack: Stack, sink: Sink, runs: int) -> Counter[str]:
    """BOB approves while DAVE rejects, at once, on `runs` runs needing one approval: each run gets
    one decision, recorded once, and ends as that decision says. Returns how the races went."""
    waiting_runs = await asyncio.gather(*(waiting(stack, "push", "push") for _ in range(runs)))
    clicks = []
    for i, (run_id, ts) in enumerate(waiting_runs):  # who is sent first alternates; both are in flight at once
        pair = [stack.click(BOB, run_id, "push", ts), stack.click(DAVE, run_id, "push", ts, REJECT_ACTION)]
        clicks += pair if i % 2 else pair[::-1]
    responses = await asyncio.gather(*clicks)
    assert all(r.status_code == 200 for r in responses)
    outcomes: Counter[str] = Counter()
    losers: Counter[str] = Counter()
    for run_id, ts in waiting_runs:
        final = await eventually(lambda run_id=run_id: finished(stack, run_id), what=f"{run_id} finished")
        step = final.step("push")
        assert len(step.approvals) == 1, f"one decision: {step.approvals}"
        decision = (step.approvals[0].user, step.approvals[0].vote)
        assert votes(stack, run_id) == [decision], "recorded once, as decided"
        pushed = [hit.key for hit in sink.hits if hit.path == "/push" and hit.key and run_id in hit.key]
        if decision == (principal(BOB), "approve"):
            assert (final.state, step.state, len(pushed)) == ("completed", "succeeded", 1)
            loser, line = DAVE, f"Approved by <@{BOB}>"
        else:
            assert decision == (principal(DAVE), "reject")
            assert (final.state, step.state, len(pushed)) == ("compensated", "rejected", 0), final
            assert kinds(stack, run_id, EventKind.step_started, "push") == 0
            loser, line = BOB, f"Rejected by <@{DAVE}>"
        refused = [e.actor for e in stack.audit.events(run_id)
                   if e.kind == EventKind.approval_vote and e.details["accepted"] is False]
        assert refused in ([], [principal(loser)]), "the loser's vote, if the run refused it, is audited as refused"
        outcomes[decision[1]] += 1
        losers[loser] += 1
        await eventually(lambda n=losers[loser], loser=loser: returns(len(ephemerals(stack, loser)) >= n),
                         what="the loser told")
        await quiet(stack)
        message = stack.fake.message(CHANNEL, ts)
        assert line in json.dumps(message.blocks) and not buttons(message.blocks), message.blocks
    told = ephemerals(stack)
    assert Counter(c.params["user"] for c in told) == losers, "each race's loser told once, the winner never"
    assert all(any(reason in c.params["text"] for reason in REFUSED) for c in told), [c.params["text"] for c in told]
    return outcomes


async def test_approve_and_reject_race_gives_one_decision(single: Stack, sink: Sink) -> None:
    outcomes = await races(single, sink, 3)
    print(f"approve/reject races: {dict(outcomes)}")


@pytest.mark.chaos
async def test_many_approve_and_reject_races(single: Stack, sink: Sink) -> None:
    outcomes = await races(single, sink, 20)
    print(f"approve/reject races: {dict(outcomes)}")


async def test_replayed_clicks_count_once(quorum: Stack, sink: Sink) -> None:
    """The identical signed bytes of a click again (Slack never does; a replay does): no second vote."""
    stack = quorum
    run_id, ts = await waiting(stack, "push", "push")
    bob = stack.click_body(BOB, run_id, "push", ts)
    bob_headers = sign(bob)
    assert (await stack.post(bob, headers=bob_headers)).status_code == 200
    # (a vote's audit event is written with the run's next activity; the run's state has it at once)
    await eventually(lambda: one_vote(stack, run_id), what="BOB's vote")
    assert (await stack.post(bob, headers=bob_headers)).status_code == 200  # while the step still waits
    told = await eventually(lambda: returns(ephemerals(stack, BOB)), what="replay refused")
    assert "already voted" in told[0].params["text"]
    status = await get_status(stack.temporal, run_id)
    assert status.step("push").state == "waiting_approval" and len(status.step("push").approvals) == 1

    dave = stack.click_body(DAVE, run_id, "push", ts)
    dave_headers = sign(dave)
    assert (await stack.post(dave, headers=dave_headers)).status_code == 200
    final = await eventually(lambda: finished(stack, run_id), what="approved run finished")
    assert final.state == "completed"
    assert (await stack.post(dave, headers=dave_headers)).status_code == 200  # after the run has ended
    told = await eventually(lambda: returns(ephemerals(stack, DAVE)), what="late replay refused")
    assert "already ended" in told[0].params["text"]
    # a click captured more than five minutes ago: not even verified
    assert (await stack.post(bob, headers=sign(bob, ts=int(time.time()) - MAX_SKEW - 1))).status_code == 401
    await quiet(stack)
    assert sorted(votes(stack, run_id)) == [(principal(BOB), "approve"), (principal(DAVE), "approve")]
    assert sink.keys().total() == 1, sink.hits
    assert (len(ephemerals(stack, BOB)), len(ephemerals(stack, DAVE))) == (1, 1)


# ---- forged values and outsiders ---------------------------------------------------------------


async def test_forged_button_values_and_outsiders_are_refused_to_the_clicker_alone(
    single: Stack, sink: Sink, footprint: Any
) -> None:
    """The value names the run and step; the signed payload's user is who votes. Whatever the value
    says, or whoever clicks without the right, nothing is counted and only the clicker hears why.
    A vote the `approver` rule refuses is refused by the run, which asks it once per clicker (its
    record says so, the front door's access_refused too); the clicker's repeats change nothing."""
    stack = single
    run_a, ts = await waiting(stack, "push", "push")  # ALICE's
    run_b, _ = await waiting(stack, "push", "push", requester=BOB)  # BOB's own run

    def value(**fields: Any) -> str:
        return json.dumps(fields)

    cases: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
        # (clicker, button value, what it tries, extra fields in the payload's user, expected refusal)
        (BOB, value(run_id=run_b, step_id="push"), "BOB approving his own run from ALICE's message", None,
         "requested this run"),
        (BOB, value(run_id=run_a, step_id="prep"), "a step that is not waiting", None, "not waiting for approval"),
        (BOB, value(run_id=run_a, step_id="nope"), "a step the run does not have", None, "has no step"),
        (BOB, value(run_id="slack-push-no-such-run", step_id="push"), "a run that does not exist", None, "unknown run"),
        (BOB, value(run_id='x" OR WorkflowId != "', step_id="push"), "a query in the run id", None, "unknown run"),
        (CAROL, value(run_id=run_a, step_id="push", user=BOB, groups=["sre"]), "CAROL's click claiming BOB and sre",
         None, f"{principal(CAROL)} may not approve"),
        (MALLORY, value(run_id=run_a, step_id="push", user={"id": DAVE}, requested_by=MALLORY, approvals=2),
         "extra fields claiming DAVE and a quorum", None, f"{principal(MALLORY)} may not approve"),
        (CAROL, value(run_id=run_a, step_id="push"), "CAROL's payload user claiming sre", {"groups": ["sre"]},
         f"{principal(CAROL)} may not approve"),
        (ALICE, value(run_id=run_a, step_id="push"), "the requester (in sre)", None, "four-eyes"),
        (CAROL, value(run_id=run_a, step_id="push"), "a signed click from outside sre", None,
         "only members of sre may approve"),
        (MALLORY, value(run_id=run_a, step_id="push"), "a signed click from no group at all", None,
         "only members of sre may approve"),
        (BOB, value(run_id=run_a, step_id="x" * 50_000), "an absurdly long step id", None, "has no step"),
        (BOB, value(run_id="r" * 100_000, step_id="push"), "an absurdly long run id", None, "run"),
        (BOB, "not json", "a value that is not JSON", None, "malformed"),
        (BOB, "", "an empty value", None, "malformed"),
        (BOB, "[1, 2]", "a JSON list", None, "malformed"),
        (BOB, "null", "JSON null", None, "malformed"),
        (BOB, value(run_id=1, step_id=2), "numbers for ids", None, "malformed"),
        (BOB, value(run_id=run_a), "no step id", None, "malformed"),
        (BOB, value(run_id="", step_id=""), "empty ids", None, "malformed"),
    ]
    await quiet(stack)
    before = await footprint(stack)
    audited = set(before.audit)
    ruled: set[str] = set()  # clickers the run's approver rule has refused
    for clicker, forged, what, user_fields, refusal in cases:
        told_before = len(ephemerals(stack))
        body = stack.click_body(clicker, run_a, "push", ts, value=forged, user_fields=user_fields)
        response = await stack.post(body)
        assert response.status_code == 200, (what, response.status_code)
        told = await eventually(lambda told_before=told_before: returns(len(ephemerals(stack)) > told_before),
                                what=f"refusal of {what}")
        assert told
        await quiet(stack, 0.2)
        new = ephemerals(stack)[told_before:]
        assert [(c.params["user"], c.params["channel"]) for c in new] == [(clicker, CHANNEL)], (what, new)
        assert refusal in new[0].params["text"], (what, new[0].params["text"])
        now = await footprint(stack)
        assert (now.runs, now.answers) == (before.runs, before.answers), (what, before.diff(now))
        new = await eventually(
            lambda: returns([e for e in stack.audit.events() if e.event_id not in audited] or None),
            what=f"the refusal of {what} audited",
        )
        await quiet(stack, 0.2)
        new = [e for e in stack.audit.events() if e.event_id not in audited]
        # the front door records every refusal it told the clicker (access_refused) ...
        front = [e for e in new if e.kind == EventKind.access_refused]
        assert [(e.actor, e.details["operation"]) for e in front] == [(principal(clicker), "vote")], (what, new)
        # ... and the run records the first refusal of each clicker its `approver` rule refuses (the
        # front door asks no policy, issue 17.3): once, accepted false; the validator refuses their
        # repeats, and the rest, before anything is recorded.
        in_run = [(e.kind, e.actor, e.details.get("accepted")) for e in new if e.kind != EventKind.access_refused]
        first = "may not approve" in refusal and principal(clicker) not in ruled
        assert in_run == ([(EventKind.approval_vote, principal(clicker), False)] if first else []), (what, new)
        if "may not approve" in refusal:
            ruled.add(principal(clicker))
        audited.update(e.event_id for e in new)
        assert [c for c in now.slack_calls[len(before.slack_calls):] if not c.startswith("chat.postEphemeral")] == [], \
            (what, "only the refusal was sent")
    for run_id in (run_a, run_b):
        status = await get_status(stack.temporal, run_id)
        assert status.state == "waiting_approval" and status.step("push").approvals == [], run_id
        assert votes(stack, run_id) == []
    assert stack.fake.message(CHANNEL, ts).updates == 0, "the request was never redrawn"
    assert sink.hits == []

    # the real button, clicked by an allowed approver, still works, and counts only that vote
    assert (await stack.click(BOB, run_a, "push", ts)).status_code == 200
    final = await eventually(lambda: finished(stack, run_a), what="approved")
    assert final.state == "completed"
    assert [(v.user, v.vote, v.groups) for v in final.step("push").approvals] == [(principal(BOB), "approve", ["sre"])]
    assert votes(stack, run_a) == [(principal(BOB), "approve")]
    assert len(sink.hits) == 1
