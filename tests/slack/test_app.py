"""Signed Slack payloads through POST /slack/events of the running front door (real HTTP),
against the real Temporal dev server, a worker, and the fake Slack Web API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import pytest_asyncio

from bot.engine.locks import busy_holder
from bot.engine.runs import get_status
from bot.slack.blocks import APPROVE_ACTION
from bot.slack.commands import slack_run_id
from tests.alerts.temporal_calls import TemporalCalls
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import (
    ALICE, BOB, CAROL, CHANNEL, MALLORY, Stack, eventually, finished, principal, returns, run_status, sign, slack_stack,
    step_state, text_of, waiting_gated_run,
)


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[Stack]:
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as s:
        yield s


# ---- bad requests -----------------------------------------------------------------------------


def _bad_cases(body: str) -> dict[str, tuple[str, dict[str, str]]]:
    good = sign(body)
    now = int(time.time())
    return {
        "bad signature": (body, {**good, "X-Slack-Signature": "v0=" + "0" * 64}),
        "wrong secret": (body, sign(body, secret="not-the-secret")),
        "stale timestamp": (body, sign(body, ts=now - 6 * 60)),
        "future timestamp": (body, sign(body, ts=now + 6 * 60)),
        "absurd timestamp": (body, {**good, "X-Slack-Request-Timestamp": "yesterday"}),
        "huge timestamp": (body, {**good, "X-Slack-Request-Timestamp": "9" * 40}),
        "missing headers": (body, {}),
        "missing signature": (body, {"X-Slack-Request-Timestamp": good["X-Slack-Request-Timestamp"]}),
        "body changed after signing": (body.replace("hold", "gated"), good),
        "garbage payload unsigned": ("payload=%7Bnot-json", {}),
    }


async def test_unverified_requests_are_401_and_start_nothing(stack: Stack) -> None:
    body, key = stack.command("run hold service=api")
    for case, (sent, headers) in _bad_cases(body).items():
        response = await stack.post(sent, headers=headers)
        assert response.status_code == 401, (case, response.status_code, response.text)
    await asyncio.sleep(0.5)
    assert key not in stack.responses, "nothing answered"
    assert not await stack.settled_runs(), "nothing started"


# ---- /playbook run ----------------------------------------------------------------------------


async def test_run_acks_fast_starts_the_trigger_derived_run_and_a_replay_attaches(stack: Stack) -> None:
    trigger = f"{int(time.time())}.42.{uuid.uuid4().hex[:20]}"
    body, key = stack.command("run hold service=api replicas=3", trigger_id=trigger)
    headers = sign(body)
    started = time.monotonic()
    response = await stack.post(body, headers=headers)
    assert response.status_code == 200 and time.monotonic() - started < 3.0
    run_id = slack_run_id("hold", trigger)
    assert "Started" in text_of(await stack.answers(key)) and run_id in text_of(stack.responses[key])

    status = await eventually(lambda: run_status(stack, run_id), what="run started")
    assert (status.trigger, status.requested_by, status.params) == ("slack", principal(ALICE), {"service": "api", "replicas": 3})
    assert status.requester is not None and (status.requester.verified, status.requester.verified_by) == (True, "slack")

    replay = await stack.post(body, headers=headers)  # the same signed bytes, within five minutes
    assert replay.status_code == 200
    retry = await stack.post(body, headers={**sign(body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200
    await stack.answers(key, n=3)
    runs = await stack.runs(f'WorkflowId = "{run_id}"')
    assert len(runs) == 1, "a replay or a retry attaches to the same run"
    assert len({r.run_id for r in runs}) == 1




@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("frobnicate", ["Unknown subcommand", "/playbook run NAME"]),
        ("help", ["dry-run NAME"]),
        ("run nope service=api", ["Unknown playbook `nope`", "`gated`", "`hold`"]),
        ("run hold service=API!", ["'service'", "does not match"]),
        ("run hold replicsa=3", ["missing required param 'service'", "unknown param 'replicsa'"]),  # no form: a typo
        ("run hold service=api replicsa=3", ["unknown param 'replicsa'", "did you mean 'replicas'"]),
        ("run hold service=api replicas=many", ["'replicas'", "integer"]),
        ("run hold justaword", ["key=value", "justaword"]),
        ("status", ["usage"]),
        ("status no-such-run", ["unknown run 'no-such-run'"]),
        ("cancel no-such-run", ["unknown run 'no-such-run'"]),
        ("list", ["*hold*", "Log, then wait", "service", "replicas=2", "*gated*"]),
    ],
)
async def test_answers_and_refusals_are_ephemeral(stack: Stack, text: str, expected: list[str]) -> None:
    body, key = stack.command(text)
    response = await stack.post(body)
    assert response.status_code == 200 and response.text == ""
    answers = await stack.answers(key)
    assert all(a["response_type"] == "ephemeral" for a in answers)
    for part in expected:
        assert part in text_of(answers), (part, answers)
    assert not await stack.settled_runs(), "nothing started"


async def test_start_refused_by_policy_starts_nothing(stack: Stack) -> None:
    body, key = stack.command("run hold service=api", user=MALLORY)
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "may not start hold" in answer and "denylist" in answer
    await asyncio.sleep(0.3)
    assert not await stack.settled_runs()


async def test_dry_run_renders_args_and_asks_policy_without_running(stack: Stack) -> None:
    body, key = stack.command("dry-run hold service=api")
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "holding api" in answer and "You may start it" in answer
    body, key = stack.command("dry-run gated")
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "*risky*" in answer and "needs 1 approval(s) from @sre" in answer and "the risky thing" in answer
    assert not await stack.settled_runs()


async def test_status_and_cancel(stack: Stack) -> None:
    trigger = f"{int(time.time())}.7.{uuid.uuid4().hex[:20]}"
    body, key = stack.command("run hold service=web", trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    run_id = slack_run_id("hold", trigger)
    await eventually(lambda: step_state(stack, run_id, "wait", "running"), what="holding")
    body, key = stack.command(f"status {run_id}")
    assert (await stack.post(body)).status_code == 200
    answer = (await stack.answers(key))[0]
    assert "hold run" in answer["text"] and answer["blocks"][0]["type"] == "header"
    # whoever may not start the playbook may not read its runs either
    body, key = stack.command(f"status {run_id}", user=MALLORY)
    assert (await stack.post(body)).status_code == 200
    assert "slack:U0MALLORY may not see runs of hold" in text_of(await stack.answers(key))
    # someone who is neither the requester nor in sre may not cancel it: refused, the run goes on
    body, key = stack.command(f"cancel {run_id}", user=CAROL)
    assert (await stack.post(body)).status_code == 200
    assert "slack:U0CAROL may not cancel" in text_of(await stack.answers(key))
    assert (await get_status(stack.temporal, run_id)).step("wait").state == "running"
    body, key = stack.command(f"cancel {run_id}")
    assert (await stack.post(body)).status_code == 200
    assert "Cancelling run" in text_of(await stack.answers(key))
    final = await eventually(lambda: finished(stack, run_id), what="cancelled run ends")
    assert final.state == "compensated" and final.cancelled_by == principal(ALICE)
    # whether it ended is told, as its status is, only to whoever may read it (red-team, stop 38)
    body, key = stack.command(f"cancel {run_id}", user=MALLORY)
    assert (await stack.post(body)).status_code == 200
    told = text_of(await stack.answers(key))
    assert "slack:U0MALLORY may not see runs of hold" in told and "ended" not in told, told
    body, key = stack.command(f"cancel {run_id}")
    assert (await stack.post(body)).status_code == 200
    assert "has already ended" in text_of(await stack.answers(key))
    # the run's story is in the invoking channel, as Slack now shows it: one status message,
    # current, and the undo and the summary in its thread
    [status_message] = stack.fake.top_level(CHANNEL)
    shown = status_message.shown()
    assert run_id in shown and "hold: compensated" in shown and "running" not in shown, shown
    thread = [m.shown() for m in stack.fake.thread(status_message)]
    assert any("undo of *note* succeeded" in t for t in thread), thread
    assert any(f"Cancelled by <@{ALICE}>" in t for t in thread), thread


ANNOUNCED = """
name: announced
summary: A high-impact step, told in a channel named in the playbook
channel: "#incidents"
steps:
  - id: risky
    action: core.log
    impact: high
    with: {message: the risky thing}
"""


async def test_a_run_told_in_a_channel_named_by_the_playbook_shows_its_end(
    dev_env, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """The playbook names its channel (`#incidents`): Slack updates messages by channel ID only,
    so the status message and the request must still end up showing how the run went."""
    async with slack_stack(dev_env.client, fake_slack, tmp_path, {"announced": ANNOUNCED}) as stack:
        trigger = f"{int(time.time())}.3.{uuid.uuid4().hex[:20]}"
        body, _ = stack.command("run announced", trigger_id=trigger)
        assert (await stack.post(body)).status_code == 200
        run_id = slack_run_id("announced", trigger)
        await eventually(lambda: step_state(stack, run_id, "risky", "waiting_approval"), what="waiting")
        [request] = await eventually(
            lambda: returns([m for m in fake_slack.messages if m.thread_ts and m.buttons()]), what="request posted"
        )
        [status_message] = fake_slack.top_level(CHANNEL)
        assert "announced: waiting approval" in status_message.shown()

        assert (await stack.click(BOB, run_id, "risky", request.ts)).status_code == 200
        final = await eventually(lambda: finished(stack, run_id), what="approved run completes")

    assert final.state == "completed"
    assert fake_slack.top_level(CHANNEL) == [status_message]
    assert "announced: completed" in status_message.shown(), status_message.shown()
    assert request.buttons() == [] and f"Approved by <@{BOB}>" in request.shown(), request.shown()


# ---- approval buttons -------------------------------------------------------------------------


async def test_approval_buttons(stack: Stack) -> None:
    # the run itself posts the approval request, with its buttons, in its thread
    run_id, ts = await waiting_gated_run(stack)

    # the requester (though in sre) and a non-member are refused, to them alone; nothing changes
    for user, reason in [(ALICE, "four-eyes"), (CAROL, "only members of sre may approve")]:
        response = await stack.click(user, run_id, "risky", ts)
        assert response.status_code == 200
        ephemeral = await eventually(
            lambda user=user: returns([c for c in stack.fake.calls_to("chat.postEphemeral") if c.params.get("user") == user]),
            what=f"ephemeral refusal to {user}",
        )
        assert reason in ephemeral[-1].params["text"] and ephemeral[-1].params["channel"] == CHANNEL
    status = await get_status(stack.temporal, run_id)
    assert status.step("risky").state == "waiting_approval" and status.step("risky").approvals == []
    assert stack.fake.message(CHANNEL, ts).updates == 0, "a refused click changes nothing"
    # ... except the record: every refusal is audited, by whom and why (the workflow's own refusal
    # of CAROL as approver, and the front door's of ALICE's vote, which never reached the policy)
    refusals = await eventually(
        lambda: returns([e for e in stack.audit.events(run_id=run_id) if e.kind.value == "access_refused"]),
        what="refusals audited",
    )
    assert {e.actor for e in refusals} == {principal(ALICE), principal(CAROL)}
    assert all(e.details["operation"] == "vote" and e.details["reason"] for e in refusals)

    # an allowed approver double-clicks: one vote counts, the run goes on, the message shows who
    first, second = await asyncio.gather(stack.click(BOB, run_id, "risky", ts), stack.click(BOB, run_id, "risky", ts))
    assert first.status_code == second.status_code == 200
    final = await eventually(lambda: finished(stack, run_id), what="approved run completes")
    assert final.state == "completed"
    assert [(v.user, v.vote, v.groups, v.verified) for v in final.step("risky").approvals] == [
        (principal(BOB), "approve", ["sre"], True)
    ]
    refused = await eventually(
        lambda: returns([c for c in stack.fake.calls_to("chat.postEphemeral") if c.params.get("user") == BOB]),
        what="the second click refused",
    )
    # (the first vote's task starts the step at once: the second may find the run over)
    assert any(why in refused[0].params["text"] for why in ("already voted", "not waiting", "already been decided",
                                                           "already ended")), refused[0].params["text"]
    updated = await eventually(lambda: returns(stack.fake.message(CHANNEL, ts).updates >= 1), what="message redrawn")
    assert updated
    request = stack.fake.message(CHANNEL, ts)
    assert request.buttons() == [], "once approved the buttons go away"
    assert f"Approved by <@{BOB}>" in request.shown(), request.shown()



async def test_an_approve_click_is_one_temporal_call_and_the_run_alone_redraws_the_request(dev_env, fake_slack, tmp_path):
    """The handler sends the vote and nothing else (it used to read the run back and redraw the
    request itself: a query on the busy worker per click, and a second chat.update of the same
    message that could land after the notifier's newer one)."""
    calls = TemporalCalls()
    async with slack_stack(dev_env.client, fake_slack, tmp_path, front_door_client=calls.client(dev_env.client)) as stack:
        run_id, ts = await waiting_gated_run(stack)
        calls.clear()
        response = await stack.click(BOB, run_id, "risky", ts)
        assert response.status_code == 200
        final = await eventually(lambda: finished(stack, run_id), what="approved run completes")
        assert final.state == "completed"
        request = await eventually(lambda: returns(f"Approved by <@{BOB}>" in stack.fake.message(CHANNEL, ts).shown()
                                                   and stack.fake.message(CHANNEL, ts)), what="request redrawn")
        assert request.buttons() == []
    assert calls.made() == [("start_workflow_update", run_id)]


async def test_a_button_carries_the_execution_and_one_posted_before_still_votes(dev_env, fake_slack, tmp_path):
    """The request's buttons name the run's execution (its first execution run id), so a click is
    signed for the run it was drawn for; a button posted before they did (run and step only) still
    votes: the front door learns the execution with one describe, never signs without one."""
    calls = TemporalCalls()
    async with slack_stack(dev_env.client, fake_slack, tmp_path, front_door_client=calls.client(dev_env.client)) as stack:
        run_id, ts = await waiting_gated_run(stack)
        execution = (await stack.temporal.get_workflow_handle(run_id).describe()).raw_description \
            .workflow_execution_info.first_run_id
        shown = stack.shown_value(ts, APPROVE_ACTION, run_id, "risky")
        assert shown is not None and json.loads(shown) == {"run_id": run_id, "step_id": "risky", "execution": execution}
        calls.clear()
        older = json.dumps({"run_id": run_id, "step_id": "risky"}, separators=(",", ":"))
        # Such a button on a message posted before the run started was shown for an earlier run
        # under this id: refused, and nothing voted (the clicker is told why).
        stale = "1700000000.000100"
        assert (await stack.post(stack.click_body(CAROL, run_id, "risky", stale, value=older))).status_code == 200
        told = await eventually(lambda: returns([c for c in stack.fake.calls_to("chat.postEphemeral")
                                                 if c.params.get("user") == CAROL]), what="the stale click refused")
        assert "earlier run under that id" in told[0].params["text"], told[0].params
        refused = await eventually(lambda: returns([e for e in stack.audit.events(run_id=run_id)
                                                    if e.kind.value == "access_refused"]), what="the refusal audited")
        assert "earlier run under that id" in refused[0].details["reason"], refused[0].details
        assert (await get_status(stack.temporal, run_id)).step("risky").approvals == []
        assert (await stack.post(stack.click_body(BOB, run_id, "risky", ts, value=older))).status_code == 200
        final = await eventually(lambda: finished(stack, run_id), what="approved run completes")
        assert final.state == "completed" and [v.user for v in final.step("risky").approvals] == [principal(BOB)]
    assert calls.made() == [("describe_workflow", run_id), ("describe_workflow", run_id), ("start_workflow_update", run_id)]


async def click_a_loose_button(stack: Stack, user: str, value: str) -> Any:
    """A signed Approve click by `user` on a button carrying `value`, on no message the bot posted."""
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": "bob"},
        "team": {"id": "T0FAKE"},
        "channel": {"id": CHANNEL},
        "container": {"type": "message", "message_ts": "1.1", "channel_id": CHANNEL},
        "actions": [{"type": "button", "action_id": APPROVE_ACTION, "block_id": "x", "value": value}],
    }
    return await stack.post(urlencode({"payload": json.dumps(payload)}))


@pytest.mark.parametrize("value", ["not json", "[" * 5000 + "]" * 5000], ids=["not json", "nested past the parser"])
async def test_a_malformed_button_is_refused_to_the_clicker_and_on_record(stack: Stack, value: str) -> None:
    """Red-team finding: a value nested past the JSON parser's depth raised RecursionError, which was
    told to the clicker as an unexpected failure and never audited."""
    assert (await click_a_loose_button(stack, BOB, value)).status_code == 200
    calls = await eventually(lambda: returns(stack.fake.calls_to("chat.postEphemeral")), what="refusal")
    assert "malformed" in calls[0].params["text"]
    refused = await eventually(lambda: returns([e for e in stack.audit.events() if e.kind.value == "access_refused"]),
                               what="the refusal audited")
    assert "malformed" in refused[0].details["reason"]


@pytest.mark.parametrize("user", ["U0BOB\nslack:U0ALICE", "U" * 5000, "U0BOB\n"],
                         ids=["two lines", "5000 characters", "a trailing newline"])
@pytest.mark.parametrize("value", ["not json", json.dumps({"run_id": "r-1", "step_id": "risky"})],
                         ids=["malformed button", "well-formed button"])
async def test_a_refusal_of_a_malformed_slack_user_is_recorded_under_slack(stack: Stack, user: str, value: str) -> None:
    """A click's or form's refusal names its actor as a command's record does: a principal only
    for a well-formed user id. Before, the refusal was recorded under `slack:` plus whatever the
    payload's user id said (a second line, five thousand characters), and on a well-formed button
    the user id failed as an unexpected error, told to the clicker and never recorded."""
    assert (await click_a_loose_button(stack, user, value)).status_code == 200
    refused = await eventually(lambda: returns([e for e in stack.audit.events() if e.kind.value == "access_refused"]),
                               what="the refusal audited")
    assert [e.actor for e in refused] == ["slack"]


def _reshaped(body: str, change: Any) -> str:
    payload = json.loads(parse_qs(body)["payload"][0])
    change(payload)
    return urlencode({"payload": json.dumps(payload)})


@pytest.mark.parametrize("change", [
    lambda p: p.__setitem__("user", BOB),  # `user` a bare string, not the object Slack sends
    lambda p: p["user"].update(username={"x": 1}, name={"x": 1}),  # a display name that is not text
], ids=["user a string", "username an object"])
async def test_a_click_of_a_malformed_user_object_is_refused_on_record(stack: Stack, change: Any) -> None:
    """Red-team finding: either failed as an unexpected error (AttributeError; a ValidationError
    of the proof's name), told to the clicker as "could not do that" and never audited."""
    run_id, ts = await waiting_gated_run(stack)
    body = _reshaped(stack.click_body(BOB, run_id, "risky", ts), change)
    assert (await stack.post(body)).status_code == 200
    told = [c.params.get("text") or "" for c in stack.fake.calls_to("chat.postEphemeral")]
    if isinstance(json.loads(parse_qs(body)["payload"][0])["user"], dict):  # bob, with a name that is no text
        final = await eventually(lambda: finished(stack, run_id), what="bob's approval counted")
        assert final.state == "completed" and [v.user for v in final.step("risky").approvals] == [principal(BOB)]
    else:
        refused = await eventually(lambda: returns([e for e in stack.audit.events(run_id=run_id)
                                                    if e.kind.value == "access_refused"]), what="the refusal audited")
        assert [e.actor for e in refused] == ["slack"], refused
    assert not any("could not do that" in t for t in told), told


async def test_a_channel_id_cannot_put_live_mrkdwn_into_the_answer(stack: Stack) -> None:
    """Red-team finding: the answer said "its status is posted in <#{channel_id}>" as sent."""
    body, key = stack.command("run hold service=api", user=BOB)
    fields = {k: v[0] for k, v in parse_qs(body).items()}
    fields["channel_id"] = "C0INCIDENTS>, and <!channel"
    assert (await stack.post(urlencode(fields))).status_code == 200
    told = text_of(await stack.answers(key))
    assert "<!channel>" not in told and "C0INCIDENTS" in told, told


async def test_a_signed_payload_nested_past_the_parser_is_a_400(stack: Stack) -> None:
    """Red-team finding: a Slack-signed body whose payload nests past the JSON parser's depth was a 500."""
    response = await stack.post(urlencode({"payload": "[" * 5000 + "]" * 5000}))
    assert response.status_code == 400, response.text


async def test_a_burst_of_commands_after_a_start_asks_auth_test_once(stack: Stack) -> None:
    """Bolt asks auth.test for every request of a cold burst (its single-workspace authorization
    has no lock); the front door asks it once when it starts, so a burst's acks wait for none."""
    await asyncio.sleep(0.5)  # the front door has started (and asked, once)
    bodies = [stack.command("help", trigger_id=f"burst-{i}")[0] for i in range(20)]
    responses = await asyncio.gather(*(stack.post(body) for body in bodies))
    assert [r.status_code for r in responses] == [200] * 20
    assert len(stack.fake.calls_to("auth.test")) == 1, f"{len(stack.fake.calls_to('auth.test'))} auth.test calls"


LOCKED = """
name: locked
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
concurrency: {key: "locked-{{ params.service }}", on_busy: ON_BUSY}
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
"""


def _commands(stack: Stack) -> list[Any]:
    return [e for e in stack.audit.events() if e.kind.value == "slack_command"]


async def _holds(stack: Stack, run_id: str) -> bool:
    """The run holds its key as a front door reads it (busy_holder, through visibility)."""
    return await busy_holder(stack.temporal, "locked-api", 1) == run_id


@pytest.mark.parametrize("on_busy", ["refuse", "attach"])
async def test_a_command_that_meets_a_held_concurrency_key_is_told_and_recorded_as_what_it_did(
        dev_env, fake_slack, tmp_path, on_busy: str) -> None:
    """Red-team finding: a start refused as busy left no slack_command record, and one attached to
    the key's holder was told "Started" and recorded as having started the holder's run."""
    async with slack_stack(dev_env.client, fake_slack, tmp_path,
                           playbooks={"locked": LOCKED.replace("ON_BUSY", on_busy)}) as stack:
        first, k1 = stack.command("run locked service=api", user=ALICE)
        assert (await stack.post(first)).status_code == 200
        assert "Started" in text_of(await stack.answers(k1))
        [holder] = await eventually(lambda: returns([e.run_id for e in _commands(stack) if e.actor == principal(ALICE)]),
                                    what="Alice's start recorded")
        await eventually(lambda: _holds(stack, holder), what="the first run holds the key")
        second, k2 = stack.command("run locked service=api", user=BOB)
        assert (await stack.post(second)).status_code == 200
        told = text_of(await stack.answers(k2))
        bobs = await eventually(lambda: returns([e for e in _commands(stack) if e.actor == principal(BOB)]),
                                what="Bob's command on record")
        if on_busy == "refuse":
            assert "busy" in told and holder in told
            assert [(e.details["outcome"], e.run_id) for e in bobs] == [("refused", None)]
            assert "busy" in bobs[0].details["reason"]
        else:
            assert "attached" in told and holder in told and "Started" not in told
            assert [(e.details["outcome"], e.run_id) for e in bobs] == [("attached", holder)]
        assert [w.id for w in await stack.settled_runs() if w.workflow_type == "PlaybookRun"] == [holder], "nothing new started"


@pytest.mark.parametrize("user", ["U0BOB\nslack:U0ALICE", "U0BOB\n"], ids=["two lines", "a trailing newline"])
@pytest.mark.parametrize("text", ["run gated", "cancel r-1", "status r-1"])
async def test_a_command_of_a_malformed_slack_user_is_refused_on_record(stack: Stack, text: str, user: str) -> None:
    """A signed command whose user id is not a Slack id (a second line) is refused and on record
    under `slack`, started nothing. Before, the user id failed as an unexpected error (and one
    ending in a newline passed as a principal, and started a run as `slack:U0BOB\\n`)."""
    body, key = stack.command(text, user=user)
    assert (await stack.post(body)).status_code == 200
    told = text_of(await stack.answers(key))
    assert "malformed" in told, told
    [record] = await eventually(lambda: returns(_commands(stack)), what="the refusal on record")
    assert (record.actor, record.details["outcome"]) == ("slack", "refused"), record
    trigger = parse_qs(body)["trigger_id"][0]
    assert not await stack.runs(f"WorkflowId='{slack_run_id('gated', trigger)}'"), "nothing started"


@pytest.mark.parametrize(("trigger", "text"), [
    ("t" * 3000, "run no-such-playbook"), ("1.2.a\x00b", "run no-such-playbook"), ("t" * 3000, "cancel r-1"),
    (None, "cancel " + "r" * 3000),
], ids=["3000-character trigger", "a NUL in the trigger", "3000-character trigger, cancel", "3000-character run id"])
async def test_a_refused_command_with_an_unstorable_id_is_still_on_record(stack: Stack, trigger: str | None,
                                                                           text: str) -> None:
    """Red-team finding: the `slack_command` record's event id holds the signed command's
    trigger_id as sent, and a cancel's record the run id typed; one no store can hold (over 2048
    bytes, a NUL) failed the append three times and the refusal was never on record."""
    body, key = stack.command(text, user=BOB, trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    assert ":x:" in text_of(await stack.answers(key))
    records = await eventually(lambda: returns(_commands(stack)), timeout=10, what="the refusal on record")
    assert [r.actor for r in records] == [principal(BOB)], records


@pytest.mark.parametrize(("text", "why"), [
    ("run no-such-playbook", "unknown playbook 'no-such-playbook' (known: gated, hold, locked)"),
    ("run locked service=NOT_OK", "param 'service'"),
])
async def test_a_command_refused_before_any_policy_question_is_on_record(
        dev_env, fake_slack, tmp_path, text: str, why: str) -> None:
    async with slack_stack(dev_env.client, fake_slack, tmp_path,
                           playbooks={"locked": LOCKED.replace("ON_BUSY", "refuse")}) as stack:
        body, key = stack.command(text, user=BOB)
        assert (await stack.post(body)).status_code == 200
        told = text_of(await stack.answers(key))
        [record] = await eventually(lambda: returns(_commands(stack)), what="the refusal on record")
        assert record.details["outcome"] == "refused" and why in record.details["reason"], record.details
        assert record.details["reason"].split()[0] in told.lower()
