"""The App Home tab: a signed `app_home_opened` event makes the front door publish the user's
recent runs and the runs waiting for their vote (the `approver` rule decides whose), through
views.publish on the strict fake Slack Web API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from bot.engine.runs import get_status
from bot.slack.blocks import APPROVE_ACTION, REJECT_ACTION
from bot.slack.commands import slack_run_id
from tests.slack.fake_slack import FakeSlack
from tests.slack.slack_limits import view_errors
from tests.slack.support import (
    ALICE, BOB, CAROL, CHANNEL, Stack, click_on_home, eventually, home_buttons, home_of, opened, principal, returns,
    run_status, slack_stack, step_state, waiting_gated_run,
)


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[Stack]:
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as s:
        yield s


async def test_home_shows_the_users_runs_and_the_runs_waiting_for_their_vote(stack: Stack) -> None:
    run_id, _ = await waiting_gated_run(stack)  # ALICE's run, waiting for an sre approver (BOB, DAVE)
    trigger = f"{int(time.time())}.5.{uuid.uuid4().hex[:20]}"
    body, _ = stack.command("run hold service=api", user=BOB, trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    bobs = slack_run_id("hold", trigger)
    await eventually(lambda: run_status(stack, bobs), what="bob's run started")

    alice = await home_of(stack, ALICE)
    mine, waiting = alice.split("Your recent runs")[1], alice.split("Your recent runs")[0]
    assert run_id in mine and bobs not in mine, "her own runs, not others'"
    assert run_id not in waiting and "Nothing is waiting for you" in waiting, "never her own run to approve"

    bob = await home_of(stack, BOB)
    waiting, mine = bob.split("Your recent runs")
    assert run_id in waiting and "*risky*" in waiting and f"<@{ALICE}>" in waiting
    assert bobs in mine and run_id not in mine

    carol = await home_of(stack, CAROL)  # not in sre: the approver rule says no
    assert run_id not in carol and "Nothing is waiting for you" in carol and "No runs started by you" in carol


async def test_other_tabs_and_bad_users_publish_nothing(stack: Stack) -> None:
    for payload in (opened(ALICE, tab="messages"), opened("<!channel>"), opened(None), opened({"id": ALICE})):
        assert (await stack.post_json(payload)).status_code == 200
    await home_of(stack, BOB)  # a good one after them is published: they were read, and ignored
    assert [c.params.get("user_id") for c in stack.fake.calls_to("views.publish")] == [BOB]


async def test_a_vote_from_the_home_tab_is_the_runs_and_the_tab_says_so(stack: Stack) -> None:
    run_id, ts = await waiting_gated_run(stack)  # ALICE's; BOB is in sre
    await home_of(stack, BOB)
    [approve] = [b for b in home_buttons(stack, BOB) if b["action_id"] == APPROVE_ACTION]
    assert json.loads(approve["value"])["run_id"] == run_id and json.loads(approve["value"])["execution"]

    shown = await click_on_home(stack, BOB, approve)
    assert "Your approval (1/1) of step *risky*" in shown and run_id in shown
    assert home_buttons(stack, BOB) == [], "read again after the vote: nothing is left for him"
    status = await eventually(lambda: step_state(stack, run_id, "risky", "succeeded"), what="the step ran")
    assert [(v.user, v.vote) for v in status.step("risky").approvals] == [(principal(BOB), "approve")]
    assert stack.fake.calls_to("chat.postEphemeral") == [], "a click on the tab is answered on the tab"
    assert await eventually(lambda: returns(stack.fake.message(CHANNEL, ts).buttons() == []) or None,
                            what="the thread's request decided")


async def test_a_refused_click_on_the_home_tab_is_told_there_audited_and_changes_nothing(stack: Stack) -> None:
    run_id, _ = await waiting_gated_run(stack)
    await home_of(stack, BOB)
    [approve] = [b for b in home_buttons(stack, BOB) if b["action_id"] == APPROVE_ACTION]
    for user, reason in [(CAROL, "only members of sre may approve"), (ALICE, "four-eyes")]:
        await home_of(stack, user)  # the button is not on their tab: a replayed or forged click
        shown = await click_on_home(stack, user, approve)
        assert reason in shown and ":x:" in shown, shown
    status = await get_status(stack.temporal, run_id)
    assert status.step("risky").state == "waiting_approval" and status.step("risky").approvals == []
    refusals = await eventually(
        lambda: returns([e for e in stack.audit.events(run_id=run_id) if e.kind.value == "access_refused"]),
        what="refusals audited")
    assert {e.actor for e in refusals} == {principal(CAROL), principal(ALICE)}
    assert stack.fake.calls_to("chat.postEphemeral") == []


async def test_clicks_faster_than_the_tab_redraws_cost_one_redraw_at_a_time(stack: Stack, monkeypatch) -> None:
    from bot.slack.home import HomeTab

    await waiting_gated_run(stack)
    await home_of(stack, BOB)
    reads = 0
    read = HomeTab.blocks

    async def counted(self: HomeTab, user: str, principal: str) -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return await read(self, user, principal)

    monkeypatch.setattr(HomeTab, "blocks", counted)
    monkeypatch.setattr("bot.slack.home.CLICK_REREAD", 60.0)  # a slow machine still clicks "right after" the read
    [reject] = [b for b in home_buttons(stack, BOB) if b["action_id"] == REJECT_ACTION]
    forged = {**reject, "value": json.dumps({"run_id": "no-such-run", "step_id": "risky"})}
    before = len(stack.fake.calls_to("views.publish"))
    action = {"type": "button", **{k: forged[k] for k in ("action_id", "block_id", "value")}}
    responses = await asyncio.gather(*(stack.post(stack.view_action_body(stack.fake.homes[BOB], BOB, action))
                                       for _ in range(10)))
    assert all(r.status_code == 200 for r in responses)
    await eventually(lambda: returns(len(stack.fake.calls_to("views.publish")) > before), what="redrawn")
    await asyncio.sleep(2.5)  # any redraw still to come has come (one a second at most)
    redraws = len(stack.fake.calls_to("views.publish")) - before
    assert 1 <= redraws <= 3, f"{redraws} redraws for 10 clicks"
    assert reads == 0, "refused clicks right after the tab was read show it as read: no Temporal reads"
    assert "no-such-run" in json.dumps(stack.fake.homes[BOB]["blocks"])


async def test_a_run_without_a_recorded_execution_is_listed_without_buttons(monkeypatch) -> None:
    """Nothing would bind such a button to its run (a Home click has no message time to check): the
    step is listed, and voted on in its thread."""
    from bot.slack.home import HomeTab, Waiting

    bound = run_status_of("run-new", execution="0193a1b2-0000-7000-8000-00000000000a")
    unbound = run_status_of("run-old", execution=None)
    tab = HomeTab.__new__(HomeTab)

    async def waiting(user: str, principal: str) -> list[Waiting]:
        return [Waiting(s, s.step("risky")) for s in (bound, unbound)]

    async def recent(principal: str) -> list[Any]:
        return []

    monkeypatch.setattr(tab, "waiting", waiting, raising=False)
    monkeypatch.setattr(tab, "recent", recent, raising=False)
    blocks = await tab.blocks(BOB, f"slack:{BOB}")
    assert view_errors({"type": "home", "blocks": blocks}) == []
    values = [json.loads(e["value"]) for b in blocks if b.get("type") == "actions" for e in b["elements"]]
    assert {v["run_id"] for v in values} == {"run-new"} and all(v["execution"] for v in values)
    assert "run-old" in json.dumps(blocks) and "Vote in the run's thread" in json.dumps(blocks)


def run_status_of(run_id: str, execution: str | None) -> Any:
    from bot.engine.state import RunStatus, StepStatus

    return RunStatus(run_id=run_id, playbook="gated", playbook_hash="abc", state="waiting_approval",
                     requested_by=f"slack:{ALICE}", trigger="slack", execution=execution,
                     steps=[StepStatus(id="risky", action="core.log", impact="high", state="waiting_approval")])
