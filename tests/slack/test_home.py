"""The App Home tab: a signed `app_home_opened` event makes the front door publish the user's
recent runs and the runs waiting for their vote (the `approver` rule decides whose), through
views.publish on the strict fake Slack Web API."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from bot.slack.commands import slack_run_id
from tests.slack.fake_slack import FakeSlack
from tests.slack.slack_limits import view_errors
from tests.slack.support import (
    ALICE, BOB, CAROL, Stack, eventually, returns, run_status, slack_stack, waiting_gated_run,
)


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[Stack]:
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as s:
        yield s


def opened(user: Any, tab: str = "home") -> dict[str, Any]:
    return {
        "token": "deprecated-verification-token", "team_id": "T0FAKE", "api_app_id": "A0PLAYBOOK",
        "type": "event_callback", "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}", "event_time": int(time.time()),
        "event": {"type": "app_home_opened", "user": user, "channel": "D0HOME", "tab": tab,
                  "event_ts": str(time.time())},
    }  # fmt: skip


async def home_of(stack: Stack, user: str) -> str:
    """Open the user's Home tab; the text it shows once published."""
    before = len(stack.fake.calls_to("views.publish"))
    response = await stack.post_json(opened(user))
    assert response.status_code == 200
    await eventually(lambda: returns(len(stack.fake.calls_to("views.publish")) > before), what=f"home of {user}")
    [call] = stack.fake.calls_to("views.publish")[before:]
    assert call.ok, call.error
    view = stack.fake.homes[user]
    assert view_errors({k: v for k, v in view.items() if k in ("type", "blocks")}) == []
    return json.dumps(view["blocks"])


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
