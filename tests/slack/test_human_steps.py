"""Human steps in Slack (format v1.1): a core.confirm step shows one button per choice, a
core.approve step its message with Approve/Reject; clicks go through the signed front door to the
real worker, against the strict fake Slack Web API."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot.engine.runs import get_status
from bot.slack.blocks import APPROVE_ACTION, REJECT_ACTION
from bot.slack.commands import slack_run_id
from tests.slack.fake_slack import FakeSlack, Message
from tests.slack.support import (
    ALICE, BOB, CAROL, CHANNEL, Stack, click_on_home, eventually, finished, home_buttons, home_of, principal, returns,
    slack_stack, step_state,
)

PLAYBOOKS = {
    "pick": """
name: pick
summary: Pick a mitigation
owner: sre
steps:
  - id: pick
    action: core.confirm
    with: {message: "checkout is slow: <!channel> restart or scale?", choices: [restart, scale]}
  - id: restart
    when: "{{ steps.pick.output.choice == 'restart' }}"
    action: core.log
    with: {message: restarting}
  - id: scale
    when: "{{ steps.pick.output.choice == 'scale' }}"
    action: core.log
    with: {message: scaling}
""",
    "ask": """
name: ask
summary: Ask before going on
owner: sre
steps:
  - id: ok
    action: core.approve
    with: {message: "Fail over the primary database?", approvers: [db-leads]}
  - id: go
    action: core.log
    with: {message: going}
""",
}


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[Stack]:
    async with slack_stack(dev_env.client, fake_slack, tmp_path, PLAYBOOKS) as s:
        yield s


async def waiting(stack: Stack, playbook: str, step: str, button: str) -> tuple[str, Message]:
    trigger = f"{int(time.time())}.9.{uuid.uuid4().hex[:20]}"
    body, _ = stack.command(f"run {playbook}", trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    run_id = slack_run_id(playbook, trigger)
    await eventually(lambda: step_state(stack, run_id, step, "waiting_approval"), what="waiting")
    posted = await eventually(
        lambda: returns([m for m in stack.fake.messages if m.thread_ts and button in m.buttons()]), what="request posted",
    )
    return run_id, posted[0]


def ephemeral_to(stack: Stack, user: str) -> list:
    return [c for c in stack.fake.calls_to("chat.postEphemeral") if c.params.get("user") == user]


def choice_value(run_id: str, step: str, choice: str) -> str:
    return json.dumps({"run_id": run_id, "step_id": step, "choice": choice}, separators=(",", ":"))


async def test_a_choice_button_answers_the_step_and_picks_the_branch(stack: Stack) -> None:
    run_id, request = await waiting(stack, "pick", "pick", "confirm.choice.1")
    assert request.buttons() == ["confirm.choice.0", "confirm.choice.1", REJECT_ACTION]
    shown = request.shown()
    assert "checkout is slow: &lt;!channel&gt; restart or scale?" in shown, "the question is data: escaped"
    assert "Your answer needed" in shown

    # not in sre: refused to the clicker alone, audited, nothing changes
    await stack.post(stack.click_body(CAROL, run_id, "pick", request.ts, "confirm.choice.1",
                                      value=choice_value(run_id, "pick", "scale")))
    refusal = await eventually(lambda: returns(ephemeral_to(stack, CAROL)), what="refusal to carol")
    assert "only members of sre may approve" in refusal[-1].params["text"]
    # a forged value naming an answer the step does not offer: refused by the workflow, naming the rule
    await stack.post(stack.click_body(BOB, run_id, "pick", request.ts, "confirm.choice.0",
                                      value=choice_value(run_id, "pick", "drop-database")))
    forged = await eventually(lambda: returns(ephemeral_to(stack, BOB)), what="refusal to bob")
    assert "'drop-database' is not one of the choices (restart, scale)" in forged[-1].params["text"]
    status = await get_status(stack.temporal, run_id)
    assert status.step("pick").approvals == [] and status.step("pick").state == "waiting_approval"
    refusals = await eventually(
        lambda: returns([e for e in stack.audit.events(run_id=run_id) if e.kind.value == "access_refused"]
                        if len([e for e in stack.audit.events(run_id=run_id) if e.kind.value == "access_refused"]) >= 2
                        else None),
        what="refusals audited",
    )
    assert {e.details["operation"] for e in refusals} == {"confirm"}

    await stack.post(stack.click_body(BOB, run_id, "pick", request.ts, "confirm.choice.1",
                                      value=choice_value(run_id, "pick", "scale")))
    final = await eventually(lambda: finished(stack, run_id), what="answered run completes")
    assert final.state == "completed"
    assert final.step("pick").output == {"choice": "scale", "by": principal(BOB)}
    assert (final.step("restart").state, final.step("scale").state) == ("skipped", "succeeded")
    await eventually(lambda: returns(stack.fake.message(CHANNEL, request.ts).buttons() == [] or None),
                     what="buttons gone")
    assert f"Answered *scale* by <@{BOB}>" in stack.fake.message(CHANNEL, request.ts).shown()


async def test_a_choice_answered_on_the_home_tab_picks_the_branch(stack: Stack) -> None:
    """The App Home tab shows a core.confirm step's choices (not Approve): a click there is the
    same answer, checked by the run, and the tab says which answer was recorded."""
    run_id, request = await waiting(stack, "pick", "pick", "confirm.choice.1")
    await home_of(stack, BOB)
    buttons = home_buttons(stack, BOB)
    assert [b["action_id"] for b in buttons] == ["confirm.choice.0", "confirm.choice.1", REJECT_ACTION]
    [scale] = [b for b in buttons if json.loads(b["value"]).get("choice") == "scale"]

    shown = await click_on_home(stack, BOB, scale)
    assert "Your answer *scale* to step *pick*" in shown and run_id in shown
    final = await eventually(lambda: finished(stack, run_id), what="answered run completes")
    assert final.step("pick").output == {"choice": "scale", "by": principal(BOB)}
    assert (final.step("restart").state, final.step("scale").state) == ("skipped", "succeeded")
    assert home_buttons(stack, BOB) == []
    await eventually(lambda: returns(stack.fake.message(CHANNEL, request.ts).buttons() == [] or None),
                     what="the thread's request decided too")


async def test_reject_declines_a_confirm_step(stack: Stack) -> None:
    run_id, request = await waiting(stack, "pick", "pick", REJECT_ACTION)
    await stack.click(BOB, run_id, "pick", request.ts, REJECT_ACTION)
    final = await eventually(lambda: finished(stack, run_id), what="declined run ends")
    assert final.step("pick").state == "rejected" and final.step("scale").state == "pending"


async def test_core_approve_shows_its_message_and_takes_votes(stack: Stack) -> None:
    run_id, request = await waiting(stack, "ask", "ok", APPROVE_ACTION)
    assert request.buttons() == [APPROVE_ACTION, REJECT_ACTION]
    assert "Fail over the primary database?" in request.shown() and "asked: db-leads" in request.shown()
    await stack.click(ALICE, run_id, "ok", request.ts)  # the requester: four-eyes
    refusal = await eventually(lambda: returns(ephemeral_to(stack, ALICE)), what="refusal to alice")
    assert "four-eyes" in refusal[-1].params["text"]
    await stack.click(BOB, run_id, "ok", request.ts)
    final = await eventually(lambda: finished(stack, run_id), what="approved run completes")
    assert final.state == "completed" and final.step("ok").output["approved_by"] == [principal(BOB)]
    await eventually(lambda: step_state(stack, run_id, "go", "succeeded"), what="went on")
