"""Signed Slack payloads through POST /slack/events of the running front door (real HTTP),
against the real Temporal dev server, a worker, and the fake Slack Web API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, Request
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.devstack import free_port
from bot.engine.runs import get_status
from bot.engine.worker import make_worker, worker_deps
from bot.playbook.loader import load_directory
from bot.server import Readiness, create_app
from bot.services import _Http
from bot.settings import Settings
from bot.slack.app import SlackDeps, create_slack_app, slack_router
from bot.slack.blocks import APPROVE_ACTION
from bot.slack.commands import slack_run_id
from tests.slack.fake_slack import FakeSlack

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0INCIDENTS"
ALICE, BOB, CAROL, MALLORY = "U0ALICE", "U0BOB", "U0CAROL", "U0MALLORY"

POLICY = """package playbook.authz

import rego.v1

decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": ["low impact"]} if {
	input.step.impact != "high"
} else := {"allow": true, "require_approval": true, "min_approvals": 1, "approver_groups": ["sre"], "approval_timeout": "10m", "reasons": ["high impact needs one approval from sre"]}

default approver := {"allow": false, "reasons": ["only members of sre may approve"]}

approver := {"allow": true, "reasons": []} if "sre" in input.user.groups

default start := {"allow": true, "reasons": []}

start := {"allow": false, "reasons": ["mallory is on the start denylist"]} if input.user.id == "U0MALLORY"
"""

PLAYBOOKS = {
    "hold": """
name: hold
summary: Log, then wait
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
  replicas: {type: integer, default: 2}
steps:
  - id: note
    action: core.log
    with: {message: "holding {{ params.service }}"}
    compensate: {action: core.log, with: {message: "released {{ params.service }}"}}
  - id: wait
    action: core.sleep
    with: {duration: 10m}
""",
    "gated": """
name: gated
summary: A high-impact step behind an approval
owner: sre
steps:
  - id: prep
    action: core.log
    with: {message: prepare}
  - id: risky
    action: core.log
    impact: high
    with: {message: "the risky thing"}
""",
}


# ---- signing ----------------------------------------------------------------------------------


def sign(body: str, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    headers = {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}
    assert SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body) == headers["X-Slack-Signature"]
    return headers


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# ---- the stack --------------------------------------------------------------------------------


class Stack:
    def __init__(self, url: str, http: httpx.AsyncClient, temporal: Any, fake: FakeSlack, responses: dict[str, list],
                 task_queue: str) -> None:
        self.url, self.http, self.temporal, self.fake = url, http, temporal, fake
        self.responses, self.task_queue = responses, task_queue

    def command(self, text: str, user: str = ALICE, trigger_id: str | None = None) -> tuple[str, str]:
        """A form-encoded slash command and the key its response_url answers are filed under."""
        key = uuid.uuid4().hex
        body = urlencode({
            "token": "deprecated-verification-token",
            "team_id": "T0FAKE",
            "team_domain": "fake",
            "channel_id": CHANNEL,
            "channel_name": "incidents",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/playbook",
            "text": text,
            "api_app_id": "A0PLAYBOOK",
            "response_url": f"{self.url}/test/responses/{key}",
            "trigger_id": trigger_id or f"{int(time.time())}.1234.{uuid.uuid4().hex[:20]}",
        })
        return body, key

    async def post(self, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post(f"{self.url}/slack/events", content=body,
                                    headers={**FORM, **(sign(body) if headers is None else headers)})

    async def answers(self, key: str, n: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.responses.get(key, [])) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"no response_url answer for {key} in {timeout}s: {self.responses.get(key)}")
            await asyncio.sleep(0.05)
        return self.responses[key]

    async def click(self, user: str, run_id: str, step_id: str, message_ts: str, action_id: str = APPROVE_ACTION
                    ) -> httpx.Response:
        value = json.dumps({"run_id": run_id, "step_id": step_id}, separators=(",", ":"))
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0FAKE"},
            "api_app_id": "A0PLAYBOOK",
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": CHANNEL, "is_ephemeral": False},
            "trigger_id": f"{int(time.time())}.5678.{uuid.uuid4().hex[:20]}",
            "team": {"id": "T0FAKE", "domain": "fake"},
            "channel": {"id": CHANNEL, "name": "incidents"},
            "message": {"type": "message", "ts": message_ts, "text": "approval", "user": "U0BOT"},
            "response_url": f"{self.url}/test/responses/click-{uuid.uuid4().hex}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": f"approval:{step_id}", "value": value,
                         "action_ts": str(time.time())}],
        }
        return await self.post(urlencode({"payload": json.dumps(payload)}))

    async def runs(self, query: str) -> list[Any]:
        return [w async for w in self.temporal.list_workflows(query)]


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[Stack]:
    for user, name in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"), (MALLORY, "mallory")]:
        fake_slack.add_user(user, name)
    fake_slack.add_usergroup("S0SRE", "sre", [ALICE, BOB])
    fake_slack.add_usergroup("S0WEB", "web", [CAROL])
    (tmp_path / "playbooks").mkdir()
    for name, text in PLAYBOOKS.items():
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(text)
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    settings = Settings(
        data_dir=tmp_path / "data",
        playbooks_dir=tmp_path / "playbooks",
        policies_dir=tmp_path / "policies",
        task_queue=f"slack-{uuid.uuid4()}",
        http_port=free_port(),
        slack_signing_secret=SECRET,
        slack_bot_token=fake_slack.token,  # the worker's notifier posts to the fake Slack too
        slack_api_url=fake_slack.api_url,
    )
    catalog = load_directory(settings.playbooks_dir)
    responses: dict[str, list[dict[str, Any]]] = {}
    recorder = APIRouter()

    @recorder.post("/test/responses/{key}")
    async def record(key: str, request: Request) -> dict[str, bool]:  # Slack's response_url, faked
        responses.setdefault(key, []).append(await request.json())
        return {"ok": True}

    web = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url)
    async with worker_deps(settings) as deps:
        slack = create_slack_app(
            settings, SlackDeps(dev_env.client, settings.task_queue, lambda: catalog, deps.policy, web, deps.audit)
        )
        app = create_app(Readiness(), [slack_router(slack, settings), recorder])
        http = _Http(settings, app)
        async with make_worker(dev_env.client, settings.task_queue, deps.activities):
            await http.start()
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    yield Stack(f"http://127.0.0.1:{settings.http_port}", client, dev_env.client, fake_slack,
                                responses, settings.task_queue)
            finally:
                await http.stop()
                for w in [w async for w in dev_env.client.list_workflows(f'TaskQueue = "{settings.task_queue}"')]:
                    if w.status and w.status.name == "RUNNING":
                        await dev_env.client.get_workflow_handle(w.id).terminate("test over")


async def eventually(check: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        await asyncio.sleep(0.1)


def text_of(answers: list[dict[str, Any]]) -> str:
    return "\n".join(a.get("text") or "" for a in answers)


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
    assert not await stack.runs(f'TaskQueue = "{stack.task_queue}"'), "nothing started"


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

    status = await eventually(lambda: _status(stack, run_id), what="run started")
    assert (status.trigger, status.requested_by, status.params) == ("slack", ALICE, {"service": "api", "replicas": 3})

    replay = await stack.post(body, headers=headers)  # the same signed bytes, within five minutes
    assert replay.status_code == 200
    retry = await stack.post(body, headers={**sign(body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200
    await stack.answers(key, n=3)
    runs = await stack.runs(f'WorkflowId = "{run_id}"')
    assert len(runs) == 1, "a replay or a retry attaches to the same run"
    assert len({r.run_id for r in runs}) == 1


async def _status(stack: Stack, run_id: str) -> Any:
    try:
        status = await get_status(stack.temporal, run_id)
    except Exception:  # noqa: BLE001  not started yet
        return None
    return status if status.state != "pending" else None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("frobnicate", ["Unknown subcommand", "/playbook run NAME"]),
        ("", ["/playbook list"]),
        ("help", ["dry-run NAME"]),
        ("run nope service=api", ["Unknown playbook `nope`", "`gated`", "`hold`"]),
        ("run hold service=API!", ["'service'", "does not match"]),
        ("run hold", ["missing required param 'service'"]),
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
    assert not await stack.runs(f'TaskQueue = "{stack.task_queue}"'), "nothing started"


async def test_start_refused_by_policy_starts_nothing(stack: Stack) -> None:
    body, key = stack.command("run hold service=api", user=MALLORY)
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "may not start hold" in answer and "denylist" in answer
    await asyncio.sleep(0.3)
    assert not await stack.runs(f'TaskQueue = "{stack.task_queue}"')


async def test_dry_run_renders_args_and_asks_policy_without_running(stack: Stack) -> None:
    body, key = stack.command("dry-run hold service=api")
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "holding api" in answer and "You may start it" in answer
    body, key = stack.command("dry-run gated")
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "*risky*" in answer and "needs 1 approval(s) from @sre" in answer and "the risky thing" in answer
    assert not await stack.runs(f'TaskQueue = "{stack.task_queue}"')


async def test_status_and_cancel(stack: Stack) -> None:
    trigger = f"{int(time.time())}.7.{uuid.uuid4().hex[:20]}"
    body, key = stack.command("run hold service=web", trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    run_id = slack_run_id("hold", trigger)
    await eventually(lambda: _step_state(stack, run_id, "wait", "running"), what="holding")
    body, key = stack.command(f"status {run_id}")
    assert (await stack.post(body)).status_code == 200
    answer = (await stack.answers(key))[0]
    assert "hold run" in answer["text"] and answer["blocks"][0]["type"] == "header"
    body, key = stack.command(f"cancel {run_id}")
    assert (await stack.post(body)).status_code == 200
    assert "Cancelling run" in text_of(await stack.answers(key))
    final = await eventually(lambda: _finished(stack, run_id), what="cancelled run ends")
    assert final.state == "compensated"
    # the run's story is in the invoking channel: one status message, the undo and the summary in its thread
    await asyncio.sleep(0.5)
    posts = [c for c in stack.fake.calls_to("chat.postMessage") if c.params.get("channel") == CHANNEL]
    status_posts = [c for c in posts if "thread_ts" not in c.params]
    assert len(status_posts) == 1 and run_id in str(status_posts[0].params.get("blocks"))
    thread = [c.params["text"] for c in posts if c.params.get("thread_ts")]
    assert any("undo of *note* succeeded" in t for t in thread), thread
    assert stack.fake.calls_to("chat.update"), "the status message is updated as steps move"


async def _step_state(stack: Stack, run_id: str, step: str, state: str) -> Any:
    status = await _status(stack, run_id)
    return status if status and status.step(step).state == state else None


async def _finished(stack: Stack, run_id: str) -> Any:
    status = await _status(stack, run_id)
    return status if status and status.finished else None


# ---- approval buttons -------------------------------------------------------------------------


async def test_approval_buttons(stack: Stack) -> None:
    trigger = f"{int(time.time())}.9.{uuid.uuid4().hex[:20]}"
    body, _ = stack.command("run gated", trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    run_id = slack_run_id("gated", trigger)
    await eventually(lambda: _step_state(stack, run_id, "risky", "waiting_approval"), what="waiting")
    # the run itself posts the approval request, with its buttons, in its thread
    request = await eventually(
        lambda: _async([m for m in stack.fake.messages if m.thread_ts and APPROVE_ACTION in json.dumps(m.blocks or [])]),
        what="approval request in the thread",
    )
    ts = request[0].ts

    # the requester (though in sre) and a non-member are refused, to them alone; nothing changes
    for user, reason in [(ALICE, "four-eyes"), (CAROL, "only members of sre may approve")]:
        response = await stack.click(user, run_id, "risky", ts)
        assert response.status_code == 200
        ephemeral = await eventually(
            lambda user=user: _async([c for c in stack.fake.calls_to("chat.postEphemeral") if c.params.get("user") == user]),
            what=f"ephemeral refusal to {user}",
        )
        assert reason in ephemeral[-1].params["text"] and ephemeral[-1].params["channel"] == CHANNEL
    status = await get_status(stack.temporal, run_id)
    assert status.step("risky").state == "waiting_approval" and status.step("risky").approvals == []
    assert stack.fake.message(CHANNEL, ts).updates == 0, "a refused click changes nothing"

    # an allowed approver double-clicks: one vote counts, the run goes on, the message shows who
    first, second = await asyncio.gather(stack.click(BOB, run_id, "risky", ts), stack.click(BOB, run_id, "risky", ts))
    assert first.status_code == second.status_code == 200
    final = await eventually(lambda: _finished(stack, run_id), what="approved run completes")
    assert final.state == "completed"
    assert [(v.user, v.vote, v.groups) for v in final.step("risky").approvals] == [(BOB, "approve", ["sre"])]
    refused = await eventually(
        lambda: _async([c for c in stack.fake.calls_to("chat.postEphemeral") if c.params.get("user") == BOB]),
        what="the second click refused",
    )
    assert "already voted" in refused[0].params["text"] or "not waiting" in refused[0].params["text"]
    updated = await eventually(lambda: _async(stack.fake.message(CHANNEL, ts).updates >= 1), what="message redrawn")
    assert updated
    shown = json.dumps(stack.fake.message(CHANNEL, ts).blocks)
    assert f"<@{BOB}>" in shown


async def test_a_malformed_button_is_refused_to_the_clicker(stack: Stack) -> None:
    payload = {
        "type": "block_actions",
        "user": {"id": BOB, "username": "bob"},
        "team": {"id": "T0FAKE"},
        "channel": {"id": CHANNEL},
        "container": {"type": "message", "message_ts": "1.1", "channel_id": CHANNEL},
        "actions": [{"type": "button", "action_id": APPROVE_ACTION, "block_id": "x", "value": "not json"}],
    }
    response = await stack.post(urlencode({"payload": json.dumps(payload)}))
    assert response.status_code == 200
    calls = await eventually(lambda: _async(stack.fake.calls_to("chat.postEphemeral")), what="refusal")
    assert "malformed" in calls[0].params["text"]


async def _async(value: Any) -> Any:
    return value
