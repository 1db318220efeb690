"""Slack forms end to end: signed slash commands, `block_actions` and `view_submission` payloads
through the real front door, a real worker on the Temporal dev server, and the strict fake Slack
Web API (views.open / views.update: trigger_ids exchanged once within 3 s, Slack's view limits)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from bot.slack.commands import slack_run_id
from bot.slack.forms import FORM_CALLBACK, PICK_ACTION
from tests.slack.fake_slack import FakeSlack
from tests.slack.slack_limits import view_errors
from tests.slack.support import (
    ALICE, BOB, MALLORY, Stack, eventually, new_trigger, principal, returns, run_status, slack_stack, text_of,
)

FORMY = """
name: formy
summary: A form of every kind
params:
  service: {type: string, pattern: "^[a-z0-9-]+$", description: the service}
  environment: {type: string, enum: [staging, production], default: production}
  replicas: {type: integer, default: 2}
  ratio: {type: number, required: false}
  dry: {type: boolean, default: false, description: only pretend}
steps:
  - id: note
    action: core.log
    with: {message: "{{ params.service }} in {{ params.environment }}"}
  - id: wait
    action: core.sleep
    with: {duration: 10m}
"""


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[Stack]:
    async with slack_stack(dev_env.client, fake_slack, tmp_path, {"formy": FORMY}) as s:
        yield s


def values(service: str | None = "api", environment: str | None = "staging", replicas: str | None = "3",
           dry: bool = True, ratio: str | None = None) -> dict[str, Any]:
    """The view state Slack sends for the formy form."""
    chosen = {"text": {"type": "plain_text", "text": environment}, "value": environment} if environment else None
    option = {"text": {"type": "plain_text", "text": "only pretend"}, "value": "true"}
    return {
        "param:service": {"value": {"type": "plain_text_input", "value": service}},
        "param:environment": {"value": {"type": "static_select", "selected_option": chosen}},
        "param:replicas": {"value": {"type": "number_input", "value": replicas}},
        "param:ratio": {"value": {"type": "number_input", "value": ratio}},
        "param:dry": {"value": {"type": "checkboxes", "selected_options": [option] if dry else []}},
    }


async def open_form(stack: Stack, text: str = "run formy", user: str = ALICE) -> tuple[str, str, dict[str, Any]]:
    """A command that lacks params; its trigger, response key and the modal it opened."""
    trigger = new_trigger()
    body, key = stack.command(text, user=user, trigger_id=trigger)
    started = time.monotonic()
    response = await stack.post(body)
    assert response.status_code == 200 and response.text == "" and time.monotonic() - started < 3.0
    [view] = await eventually(lambda: returns(stack.fake.opened()), what="modal opened")
    [call] = [c for c in stack.fake.calls_to("views.open") if c.ok]
    assert call.params["trigger_id"] == trigger, "opened with the command's own trigger_id"
    return trigger, key, view


async def submit(stack: Stack, view: dict[str, Any], user: str = ALICE, state: dict[str, Any] | None = None,
                 **forged: Any) -> Any:
    response = await stack.post(stack.submission_body(view, user, values() if state is None else state, **forged))
    assert response.status_code == 200, response.text
    return response.json() if response.text else None


# ---- opening ----------------------------------------------------------------------------------


async def test_a_command_lacking_params_opens_the_form_with_an_input_per_param(stack: Stack) -> None:
    _, key, view = await open_form(stack, "run formy replicas=5")
    assert view_errors(view) == [] and view["callback_id"] == FORM_CALLBACK
    inputs = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
    assert {k: e["type"] for k, e in inputs.items()} == {
        "param:service": "plain_text_input", "param:environment": "static_select", "param:replicas": "number_input",
        "param:ratio": "number_input", "param:dry": "checkboxes",
    }
    assert inputs["param:replicas"]["initial_value"] == "5", "what was typed is kept"
    assert inputs["param:environment"]["initial_option"]["value"] == "production", "the default is chosen"
    assert inputs["param:ratio"]["is_decimal_allowed"] is True and inputs["param:replicas"]["is_decimal_allowed"] is False
    await asyncio.sleep(0.3)
    assert key not in stack.responses, "the form is the answer"
    assert not await stack.settled_runs(), "nothing starts until the form is submitted"


async def test_a_form_that_cannot_open_falls_back_to_naming_the_missing_params(stack: Stack) -> None:
    trigger = new_trigger()
    body, key = stack.command("run formy", trigger_id=trigger)
    stack.fake.issue_trigger(trigger, ALICE, age=4.0)  # Slack took too long to deliver it: expired
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "missing required param 'service'" in answer and "expired_trigger_id" in answer, answer
    assert not stack.fake.views and not await stack.settled_runs()


# ---- submitting -------------------------------------------------------------------------------


async def test_bad_values_are_answered_in_the_form_and_start_nothing(stack: Stack) -> None:
    _, key, view = await open_form(stack)
    answer = await submit(stack, view, state=values(service="API!", replicas="2.5"))
    assert answer["response_action"] == "errors"
    assert set(answer["errors"]) == {"param:service", "param:replicas"}
    assert "does not match" in answer["errors"]["param:service"]
    assert "integer" in answer["errors"]["param:replicas"]
    blocks = {b.get("block_id") for b in view["blocks"]}
    assert set(answer["errors"]) <= blocks, "errors name blocks the form has, or Slack shows nothing"
    await asyncio.sleep(0.3)
    assert not await stack.settled_runs() and key not in stack.responses


async def test_a_valid_submission_starts_one_run_as_the_typed_command_would(stack: Stack) -> None:
    trigger, key, view = await open_form(stack)
    body = stack.submission_body(view, ALICE, values())
    started = time.monotonic()
    response = await stack.post(body)
    assert response.status_code == 200 and time.monotonic() - started < 3.0
    assert not response.text or "response_action" not in response.json(), "an empty ack closes the form"
    run_id = slack_run_id("formy", trigger)
    status = await eventually(lambda: run_status(stack, run_id), what="run started")
    assert status.params == {"service": "api", "environment": "staging", "replicas": 3, "ratio": None, "dry": True}
    assert (status.trigger, status.requested_by) == ("slack", principal(ALICE))
    assert status.requester is not None and (status.requester.verified, status.requester.verified_by) == (True, "slack")
    answer = text_of(await stack.answers(key))
    assert "Started *formy*" in answer and run_id in answer, "answered in the channel, as the command is"
    audit = await eventually(lambda: returns([e for e in stack.audit.events(run_id=run_id)
                                              if e.kind.value == "slack_command"]), what="slack_command recorded")
    assert audit[0].actor == principal(ALICE) and audit[0].details["outcome"] == "started"

    assert (await stack.post(body)).status_code == 200  # a replay of the signed submission
    await stack.answers(key, n=2)
    assert len(await stack.runs(f'WorkflowType = "PlaybookRun" AND TaskQueue = "{stack.task_queue}"')) == 1


async def test_start_is_asked_of_policy_for_a_form_too(stack: Stack) -> None:
    _, key, view = await open_form(stack, user=MALLORY)
    assert await submit(stack, view, user=MALLORY) is None
    assert "may not start formy" in text_of(await stack.answers(key))
    await asyncio.sleep(0.3)
    assert not await stack.settled_runs()


async def test_forged_submissions_are_refused_and_start_nothing(stack: Stack) -> None:
    _, key, view = await open_form(stack)
    meta = json.loads(view["private_metadata"])
    renamed = json.dumps({**meta, "d": {**meta["d"], "pb": "hold"}})  # another playbook under the same seal
    cases = {
        "forged playbook name": (ALICE, values(), {"metadata": renamed}),
        "metadata we never wrote": (ALICE, values(), {"metadata": json.dumps({"playbook": "hold", "channel": "C0X"})}),
        "no metadata (a view we never opened)": (ALICE, values(), {"metadata": ""}),
        "someone else's form": (BOB, values(), {}),
        "a param the playbook does not have": (ALICE, {**values(), "param:shell": {"value": {
            "type": "plain_text_input", "value": "rm -rf /"}}}, {}),
        "a field of another type": (ALICE, {**values(), "param:replicas": {"value": {
            "type": "plain_text_input", "value": "3"}}}, {}),
    }
    for case, (user, state, forged) in cases.items():
        answer = await submit(stack, view, user=user, state=state, **forged)
        if case == "a field of another type":
            assert answer["response_action"] == "errors", (case, answer)
            continue
        assert answer["response_action"] == "update", (case, answer)
        assert view_errors(answer["view"]) == [], case
        assert "Nothing was started" in json.dumps(answer["view"]), case
    over_long = await submit(stack, view, state=values(service="a" * 5000))
    assert over_long["response_action"] == "errors" and "3000" in over_long["errors"]["param:service"]
    await asyncio.sleep(0.3)
    assert not await stack.settled_runs(), "nothing started"
    refusals = await eventually(lambda: returns([e for e in stack.audit.events() if e.kind.value == "access_refused"]),
                                what="refusals recorded")
    assert {e.actor for e in refusals} >= {principal(ALICE), principal(BOB)}


async def test_an_unregistered_callback_id_starts_nothing(stack: Stack) -> None:
    _, _, view = await open_form(stack)
    response = await stack.post(stack.submission_body(view, ALICE, values(), callback_id="something.else"))
    assert response.status_code < 500
    await asyncio.sleep(0.3)
    assert not await stack.settled_runs()


# ---- /playbook alone: the picker -------------------------------------------------------------


async def test_playbook_alone_offers_the_list_which_leads_to_the_form(stack: Stack) -> None:
    trigger, key, picker = await open_form(stack, "")
    assert view_errors(picker) == []
    [select] = [e for b in picker["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert select["action_id"] == PICK_ACTION and [o["value"] for o in select["options"]] == ["formy", "gated", "hold"]

    pick = {"type": "static_select", "action_id": PICK_ACTION, "block_id": "pick",
            "selected_option": {"text": {"type": "plain_text", "text": "formy"}, "value": "formy"}}
    assert (await stack.post(stack.view_action_body(picker, ALICE, pick))).status_code == 200
    form = await eventually(lambda: returns(stack.fake.views[picker["id"]]
                                            if stack.fake.views[picker["id"]]["callback_id"] == FORM_CALLBACK else None),
                            what="picker turned into the form")
    [update] = stack.fake.calls_to("views.update")
    assert update.ok and update.params["hash"] == picker["hash"]

    await submit(stack, form)
    status = await eventually(lambda: run_status(stack, slack_run_id("formy", trigger)), what="run started")
    assert status.requested_by == principal(ALICE) and status.params["service"] == "api"
    assert "Started *formy*" in text_of(await stack.answers(key))


async def test_a_forged_pick_changes_nothing(stack: Stack) -> None:
    _, _, picker = await open_form(stack, "")
    pick = {"type": "static_select", "action_id": PICK_ACTION, "block_id": "pick",
            "selected_option": {"text": {"type": "plain_text", "text": "x"}, "value": "no-such-playbook"}}
    for user, action in [(ALICE, pick), (BOB, {**pick, "selected_option": {"value": "formy"}})]:
        assert (await stack.post(stack.view_action_body(picker, user, action))).status_code == 200
    await asyncio.sleep(0.5)
    assert not stack.fake.calls_to("views.update")
    assert stack.fake.views[picker["id"]]["callback_id"] != FORM_CALLBACK


async def test_the_picker_falls_back_to_help_when_it_cannot_open(stack: Stack) -> None:
    trigger = f"{int(time.time())}.1.{uuid.uuid4().hex[:12]}"
    body, key = stack.command("", trigger_id=trigger)
    stack.fake.fail_next("views.open", "exchanged_trigger_id")
    assert (await stack.post(body)).status_code == 200
    assert "/playbook list" in text_of(await stack.answers(key))


def test_a_form_drawn_from_another_version_of_the_playbook_is_refused() -> None:
    """A reload between opening and submitting: the form's fields may no longer be the params."""
    from types import SimpleNamespace

    from bot.playbook.loader import Catalog, load_text
    from bot.slack.forms import FormMeta, FormRefused, Sealer
    from bot.slack.modals import RunForms

    old = load_text(FORMY)
    new = load_text(FORMY.replace("default: 2", "default: 4"))
    catalog = Catalog([new])
    sealer = Sealer("secret")
    forms = RunForms(SimpleNamespace(catalog=lambda: catalog), None, sealer)  # type: ignore[arg-type]
    meta = lambda loaded: sealer.seal(FormMeta("formy", ALICE, "C0X", "1.2.3", "", loaded.hash, int(time.time())))  # noqa: E731
    view = {"private_metadata": meta(old), "state": {"values": values()}}
    try:
        forms._checked(view, ALICE)
    except FormRefused as exc:
        assert "changed since this form was opened" in str(exc)
    else:
        raise AssertionError("a stale form was accepted")
    assert forms._checked({**view, "private_metadata": meta(new)}, ALICE)[2]["service"] == "api"


async def test_a_hanging_views_open_delays_no_ack(stack: Stack) -> None:
    """The form opens after the ack, on its own request's task: Slack hanging on views.open costs
    neither that command's ack nor another's, and the user is told the form did not open."""
    stack.fake.hang("views.open", 4.0)
    body, key = stack.command("run formy")
    other, other_key = stack.command("list")
    started = time.monotonic()
    first = asyncio.create_task(stack.post(body))
    await asyncio.sleep(0.1)
    second = await stack.post(other)
    assert second.status_code == 200 and time.monotonic() - started < 3.0, "the other command's ack"
    assert (await first).status_code == 200 and time.monotonic() - started < 3.0, "the form command's own ack"
    assert "*formy*" in text_of(await stack.answers(other_key))
    answer = text_of(await stack.answers(key))
    assert "missing required param 'service'" in answer and "did not answer in time" in answer, answer
