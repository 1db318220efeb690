"""The Slack front door on real HTTP, for tests: signing, a slash command and a button click as
Slack sends them, and a stack of worker + front door + fake Slack Web API on a real Temporal."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client, WorkflowExecutionStatus

from bot.devstack import free_port
from bot.engine.state import RunStatus
from bot.engine.worker import make_worker, worker_deps
from bot.identity.keys import front_door_keyring
from bot.playbook.loader import load_directory
from bot.server import Readiness, create_app
from bot.lifecycle import Http
from bot.settings import Settings
from bot.slack.app import SlackDeps, create_slack_app, drain, slack_router
from bot.slack.blocks import APPROVE_ACTION
from bot.slack.commands import slack_run_id
from tests.slack.fake_slack import FakeSlack
from tests.slack.slack_limits import view_errors
from tests.waiting import admitted, eventually, is_control, settled_runs, terminate_open  # noqa: F401  (eventually: for the Slack tests)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0INCIDENTS"
ALICE, BOB, CAROL, DAVE, MALLORY = "U0ALICE", "U0BOB", "U0CAROL", "U0DAVE", "U0MALLORY"
ENVELOPE_KEY = "test-envelope-key-0123456789abcdef0123456789"  # front door and worker share it, as in production


def principal(slack_user: str) -> str:
    """The principal a Slack user id acts as."""
    return f"slack:{slack_user}"

POLICY = """package playbook.authz

import rego.v1

decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": ["low impact"]} if {
	input.step.impact != "high"
} else := {"allow": true, "require_approval": true, "min_approvals": 1, "approver_groups": ["sre"], "approval_timeout": "10m", "reasons": ["high impact needs one approval from sre"]}

default approver := {"allow": false, "reasons": ["only members of sre may approve"]}

approver := {"allow": true, "reasons": []} if "sre" in input.user.groups

default start := {"allow": true, "reasons": []}

start := {"allow": false, "reasons": ["mallory is on the start denylist"]} if input.user.id == "slack:U0MALLORY"

default cancel := {"allow": false, "reasons": ["only the requester or sre may cancel"]}

cancel := {"allow": true, "reasons": ["the requester"]} if input.user.id == input.run.requested_by

cancel := {"allow": true, "reasons": ["in sre"]} if {
	input.user.id != input.run.requested_by
	"sre" in input.user.groups
}
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
vars: {what: risky}
steps:
  - id: prep
    action: core.log
    with: {message: prepare}
  - id: risky
    action: core.log
    impact: high
    with: {message: "the {{ vars.what }} thing"}
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


def new_trigger() -> str:
    """A trigger_id shaped like Slack's."""
    return f"{int(time.time())}.1234.{uuid.uuid4().hex[:20]}"


# ---- the stack --------------------------------------------------------------------------------


class Stack:
    def __init__(self, url: str, http: httpx.AsyncClient, temporal: Client, fake: FakeSlack, responses: dict[str, list],
                 task_queue: str, audit: Any) -> None:
        self.url, self.http, self.temporal, self.fake = url, http, temporal, fake
        self.responses, self.task_queue, self.audit = responses, task_queue, audit

    def command(self, text: str, user: str = ALICE, trigger_id: str | None = None) -> tuple[str, str]:
        """A form-encoded slash command and the key its response_url answers are filed under."""
        key = uuid.uuid4().hex
        trigger_id = self.fake.issue_trigger(trigger_id or new_trigger(), user)
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
            "trigger_id": trigger_id,
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

    def shown_value(self, message_ts: str, action_id: str, run_id: str, step_id: str) -> str | None:
        """The value of the `action_id` button for this run and step the message at `message_ts`
        shows now, if any."""
        for message in self.fake.messages:
            if message.ts != message_ts:
                continue
            for value in (e.get("value") for b in message.blocks or [] if b.get("type") == "actions"
                          for e in b.get("elements", []) if e.get("action_id") == action_id):
                named = json.loads(value or "{}")
                if (named.get("run_id"), named.get("step_id")) == (run_id, step_id):
                    return str(value)
        return None

    async def click(self, user: str, run_id: str, step_id: str, message_ts: str, action_id: str = APPROVE_ACTION
                    ) -> httpx.Response:
        return await self.post(self.click_body(user, run_id, step_id, message_ts, action_id))

    def click_body(self, user: str, run_id: str, step_id: str, message_ts: str, action_id: str = APPROVE_ACTION, *,
                   value: str | None = None, user_fields: Mapping[str, Any] | None = None) -> str:
        """The form body of a button click as Slack sends it: the clicked button's value as the
        message at `message_ts` shows it (else one naming the run and step, as buttons posted
        before they carried the execution). `value` replaces it (a forged or older one),
        `user_fields` adds to the signed payload's `user` object."""
        if value is None:
            value = self.shown_value(message_ts, action_id, run_id, step_id) or json.dumps(
                {"run_id": run_id, "step_id": step_id}, separators=(",", ":"))
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0FAKE",
                     **(user_fields or {})},
            "api_app_id": "A0PLAYBOOK",
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": CHANNEL, "is_ephemeral": False},
            "trigger_id": self.fake.issue_trigger(new_trigger(), user),
            "team": {"id": "T0FAKE", "domain": "fake"},
            "channel": {"id": CHANNEL, "name": "incidents"},
            "message": {"type": "message", "ts": message_ts, "text": "approval", "user": "U0BOT"},
            "response_url": f"{self.url}/test/responses/click-{uuid.uuid4().hex}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": f"approval:{step_id}", "value": value,
                         "action_ts": str(time.time())}],
        }
        return urlencode({"payload": json.dumps(payload)})

    def submission_body(self, view: Mapping[str, Any], user: str, values: Mapping[str, Any], *,
                        metadata: str | None = None, callback_id: str | None = None) -> str:
        """A view_submission as Slack sends it for `view` (as the fake holds it), `values` being the
        input state by block id: `{"param:x": {"value": {"type": "plain_text_input", "value": "a"}}}`.
        `metadata` and `callback_id` replace the view's own (a forgery)."""
        payload = {
            "type": "view_submission",
            "team": {"id": "T0FAKE", "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0FAKE"},
            "api_app_id": "A0PLAYBOOK",
            "token": "deprecated-verification-token",
            "trigger_id": self.fake.issue_trigger(new_trigger(), user),
            "view": {
                **{k: v for k, v in view.items() if k != "user"},
                "private_metadata": view.get("private_metadata", "") if metadata is None else metadata,
                "callback_id": view.get("callback_id", "") if callback_id is None else callback_id,
                "state": {"values": dict(values)},
            },
            "response_urls": [],
            "is_enterprise_install": False,
        }
        return urlencode({"payload": json.dumps(payload)})

    def view_action_body(self, view: Mapping[str, Any], user: str, action: Mapping[str, Any]) -> str:
        """A block_actions payload from inside a modal (no channel, no response_url)."""
        payload = {
            "type": "block_actions",
            "team": {"id": "T0FAKE", "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0FAKE"},
            "api_app_id": "A0PLAYBOOK",
            "token": "deprecated-verification-token",
            "container": {"type": "view", "view_id": view["id"]},
            "trigger_id": self.fake.issue_trigger(new_trigger(), user),
            "view": {k: v for k, v in view.items() if k != "user"},
            "actions": [{"action_ts": str(time.time()), **action}],
        }
        return urlencode({"payload": json.dumps(payload)})

    async def post_json(self, payload: Mapping[str, Any]) -> httpx.Response:
        """An Events API request (JSON), signed."""
        body = json.dumps(payload)
        return await self.http.post(f"{self.url}/slack/events", content=body,
                                    headers={"Content-Type": "application/json", **sign(body)})

    async def runs(self, query: str) -> list[Any]:
        return [w async for w in self.temporal.list_workflows(query) if not is_control(w.id)]

    async def settled_runs(self) -> list[Any]:
        """Every run on the queue, once a run started now is listed: a refusal must not have added one."""
        return await settled_runs(self.temporal, self.task_queue)


@asynccontextmanager
async def slack_stack(
    client: Client,
    fake_slack: FakeSlack,
    tmp_path: Path,
    playbooks: Mapping[str, str] | None = None,
    front_door_client: Client | None = None,
    policy: str | None = None,
) -> AsyncIterator[Stack]:
    """Worker + front door (real HTTP, /slack/events) + the fake Slack Web API.

    `front_door_client` lets a test put something (a slow proxy) between the front door and
    Temporal while the worker keeps its direct connection. `policy` replaces POLICY (the Rego
    of `package playbook.authz`)."""
    for user, name in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"), (DAVE, "dave"), (MALLORY, "mallory")]:
        fake_slack.add_user(user, name)
    fake_slack.add_usergroup("S0SRE", "sre", [ALICE, BOB, DAVE])
    fake_slack.add_usergroup("S0WEB", "web", [CAROL])
    (tmp_path / "playbooks").mkdir()
    for name, text in {**PLAYBOOKS, **(playbooks or {})}.items():
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(text)
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY if policy is None else policy)
    settings = Settings(
        data_dir=tmp_path / "data",
        playbooks_dir=tmp_path / "playbooks",
        policies_dir=tmp_path / "policies",
        task_queue=f"slack-{uuid.uuid4()}",
        http_port=free_port(),
        slack_signing_secret=SECRET,
        slack_bot_token=fake_slack.token,  # the worker's notifier posts to the fake Slack too
        slack_api_url=fake_slack.api_url,
        envelope_key=ENVELOPE_KEY,
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
            settings,
            SlackDeps(
                front_door_client or client, settings.task_queue, lambda: catalog, deps.policy, web, deps.audit,
                front_door_keyring(settings),
            ),
        )
        app = create_app(Readiness(), [slack_router(slack, settings), recorder])
        http = Http(settings, app)
        async with make_worker(client, settings.task_queue, deps.activities):
            await http.start()
            try:
                async with httpx.AsyncClient(timeout=10) as http_client:
                    yield Stack(f"http://127.0.0.1:{settings.http_port}", http_client, client, fake_slack,
                                responses, settings.task_queue, deps.audit)
            finally:
                await http.stop()
                await drain(slack)  # as a front door stops: its lanes' workers and queued jobs end with it
                await terminate_open(client, settings.task_queue)


def text_of(answers: list[dict[str, Any]]) -> str:
    return "\n".join(a.get("text") or "" for a in answers)


async def run_status(stack: Stack, run_id: str) -> RunStatus | None:
    """The run's status once the worker admitted it, else None."""
    return await admitted(stack.temporal, run_id)


async def step_state(stack: Stack, run_id: str, step: str, state: str) -> RunStatus | None:
    status = await run_status(stack, run_id)
    return status if status and status.step(step).state == state else None


async def finished(stack: Stack, run_id: str) -> RunStatus | None:
    """The final status once the execution has closed: the state reads final a moment before
    (the run's last audit flush and Slack sync), when a new command would still attach."""
    status = await run_status(stack, run_id)
    if not status or not status.finished:
        return None
    desc = await stack.temporal.get_workflow_handle(run_id).describe()
    return status if desc.status != WorkflowExecutionStatus.RUNNING else None


async def returns(value: Any) -> Any:
    """`value` as a coroutine result, for `eventually` over a plain expression."""
    return value


async def waiting_gated_run(stack: Stack) -> tuple[str, str]:
    """A `gated` run by ALICE waiting on step `risky`, and its approval message's ts."""
    trigger = f"{int(time.time())}.9.{uuid.uuid4().hex[:20]}"
    body, _ = stack.command("run gated", trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    run_id = slack_run_id("gated", trigger)
    await eventually(lambda: step_state(stack, run_id, "risky", "waiting_approval"), what="waiting")
    request = await eventually(
        lambda: returns([m for m in stack.fake.messages if m.thread_ts and APPROVE_ACTION in json.dumps(m.blocks or [])]),
        what="approval request posted",
    )
    return run_id, request[0].ts


# ---- the App Home tab ----------------------------------------------------------------------


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


def home_buttons(stack: Stack, user: str) -> list[dict[str, Any]]:
    """The buttons on the user's Home tab as it is now, each with its block id."""
    return [{**e, "block_id": b["block_id"]} for b in stack.fake.homes[user]["blocks"] if b.get("type") == "actions"
            for e in b.get("elements", [])]


async def click_on_home(stack: Stack, user: str, button: dict[str, Any]) -> str:
    """Click `button` on the user's Home tab (no channel, no response_url there); the tab's text
    once it has been published again."""
    before = len(stack.fake.calls_to("views.publish"))
    action = {"type": "button", **{k: button[k] for k in ("action_id", "block_id", "value")}}
    response = await stack.post(stack.view_action_body(stack.fake.homes[user], user, action))
    assert response.status_code == 200
    await eventually(lambda: returns(len(stack.fake.calls_to("views.publish")) > before), what=f"{user}'s tab redrawn")
    [call] = stack.fake.calls_to("views.publish")[before:]
    assert call.ok, call.error
    return json.dumps(stack.fake.homes[user]["blocks"])
