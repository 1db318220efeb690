"""A deployed bot to attack: the real worker (its `run.admit`, its envelope keys, the shipped Rego
policy with test data), the front door as `serve` builds it (Slack and /alertmanager, signing with
the envelope key), the fake Slack Web API, and a local HTTP sink that counts every side effect.

Playbooks given to `trust_stack` may say `{sink}`: it becomes the sink's base URL (a `vars` value),
and a step that calls `{{ vars.sink }}/{{ run.id }}/...` lets a test count what one run did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from fastapi import APIRouter, Request
from temporalio.client import Client, WorkflowHandle

from bot.audit.events import StoredEvent
from bot.audit.store import SqliteAuditStore
from bot.devstack import free_port
from bot.engine.runs import get_status
from bot.engine.state import RunInput, RunStatus, TriggerContext
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.identity.keys import front_door_keyring, worker_keyring
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, Proof
from bot.playbook.loader import Catalog, LoadedPlaybook, load_directory
from bot.policy.embedded import EmbeddedEngine
from bot.policy.engine import PolicyEngine
from bot.server import Readiness, create_app
from bot.lifecycle import Http
from bot.services import front_door, slack_app
from bot.settings import Settings
from bot.slack.app import drain
from bot.slack.blocks import APPROVE_ACTION
from bot.slack.commands import slack_run_id
from tests.http_server import serving
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import (
    ALICE, BOB, CAROL, DAVE, ENVELOPE_KEY, MALLORY, SECRET, Stack, principal, returns, run_status, step_state,
)
from tests.waiting import eventually, terminate_open

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_POLICIES = ROOT / "policies"
WEBHOOK_TOKEN = "alertmanager-webhook-token-for-attack-tests"
# The embedded stack's key (`dev` writes it beside its server's record): the CLI there signs with it.
DEV_KEY = b"dev-stack-envelope-key-0123456789abcdef0123"
# A key no front door or worker holds: what someone who reads the docs but not the secret would use.
ROGUE_KEY = b"rogue-envelope-key-nobody-deployed-0123456789"
# Who is who (data.playbook.people): one person, several logins.
# A run that acts once (`poke`, undone by `undo-poke`), then holds: what a cancel rolls back.
REMEDIATE = """
name: remediate
summary: Call the service, then hold; undone on cancel
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: poke
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/poke"}
    compensate: {action: http.request, with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/undo-poke"}}
  - id: hold
    action: core.sleep
    with: {duration: 10m}
"""

PEOPLE = {
    "alice": [principal(ALICE), "cli:alice"],
    "bob": [principal(BOB), "cli:bob"],
    "dave": [principal(DAVE), "cli:dave"],
}
# Groups for principals that arrive without Slack's user groups (the CLI): by person.
GROUPS = {"sre": ["bob", "dave"]}


# ---- the side-effect sink -----------------------------------------------------------------------


@dataclass
class Sink:
    """Every request the playbooks' http.request steps made, as (method, path)."""

    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)

    def of(self, run_id: str) -> list[str]:
        """The paths one run called (its steps put `/{run id}/` in the path)."""
        return [path for _, path in self.seen if path.startswith(f"/{run_id}/")]


@contextlib.contextmanager
def sink_server() -> Iterator[Sink]:
    lock = threading.Lock()
    sink = Sink("")

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                sink.seen.append((self.command, self.path))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _record

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        sink.url = url
        yield sink


# ---- the stack ----------------------------------------------------------------------------------


class TrustStack(Stack):
    """tests/slack/support.Stack (commands, clicks, response_url answers) plus what attacks need."""

    settings: Settings
    catalog: Catalog
    sink: Sink
    audit: SqliteAuditStore
    policy: PolicyEngine  # the worker's and the front door's

    @property
    def client(self) -> Client:
        return self.temporal

    def loaded(self, name: str) -> LoadedPlaybook:
        return self.catalog.get(name)

    def events(self, run_id: str, kind: str | None = None) -> list[StoredEvent]:
        return [e for e in self.audit.events(run_id=run_id) if kind is None or e.kind.value == kind]

    async def alert(self, body: Mapping[str, Any], token: str = WEBHOOK_TOKEN) -> httpx.Response:
        return await self.http.post(f"{self.url}/alertmanager", json=dict(body),
                                    headers={"Authorization": f"Bearer {token}"})

    async def start_raw(self, run: RunInput, run_id: str | None = None) -> WorkflowHandle[PlaybookRun, RunStatus]:
        """What anyone who can reach Temporal can do: start a PlaybookRun with any input."""
        return await self.temporal.start_workflow(
            PlaybookRun.run, run, id=run_id or f"raw-{uuid.uuid4().hex[:12]}", task_queue=self.task_queue
        )

    def thread_of(self, run_id: str) -> list[str]:
        """The texts of the run's Slack status message and of every reply in its thread."""
        status = [m for m in self.fake.messages if m.thread_ts is None and run_id in m.text + json.dumps(m.blocks or [])]
        if not status:
            return []
        ts = status[0].ts
        return [status[0].text] + [m.text for m in self.fake.messages if m.thread_ts == ts]


def policies_with(root: Path, data: Mapping[str, Any]) -> Path:
    """A copy of the shipped policies with data.json's keys replaced by `data`'s."""
    target = root / "policies"
    shutil.copytree(SHIPPED_POLICIES, target)
    path = target / "playbook" / "data.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **data}, indent=2))
    return target


@asynccontextmanager
async def trust_stack(
    client: Client,
    fake: FakeSlack,
    root: Path,
    playbooks: Mapping[str, str],
    data: Mapping[str, Any] | None = None,
    *,
    activities: Callable[[list[Any]], list[Any]] | None = None,
    **settings: Any,
) -> AsyncIterator[TrustStack]:
    """Worker + front door on `client`'s Temporal, a fresh task queue, the shipped policy with
    `PEOPLE`, `GROUPS` and `data`. The worker also verifies the dev stack's key (DEV_KEY), as the
    worker of `dev` does, so `cli_actor()` proofs count as the CLI's there. Keyword arguments are
    more Settings fields (shell_allow...); `activities` changes the worker's activities (a test
    holding one of them)."""
    fake.reset()
    for user, name in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"), (DAVE, "dave"), (MALLORY, "mallory")]:
        fake.add_user(user, name)
    fake.add_usergroup("S0SRE", "sre", [ALICE, BOB, DAVE, MALLORY])
    fake.add_usergroup("S0WEB", "web", [CAROL])
    with sink_server() as sink:
        (root / "playbooks").mkdir(parents=True)
        for name, text in playbooks.items():
            (root / "playbooks" / f"{name}.yaml").write_text(text.replace("{sink}", sink.url))
        settings = Settings(
            data_dir=root / "data",
            playbooks_dir=root / "playbooks",
            policies_dir=policies_with(root, {"people": PEOPLE, "groups": GROUPS, **(data or {})}),
            task_queue=f"trust-{uuid.uuid4()}",
            http_port=free_port(),
            slack_signing_secret=SECRET,
            slack_bot_token=fake.token,
            slack_api_url=fake.api_url,
            envelope_key=ENVELOPE_KEY,
            alertmanager_token=WEBHOOK_TOKEN,
            **settings,
        )
        catalog = load_directory(settings.playbooks_dir)
        keys = front_door_keyring(settings)
        responses: dict[str, list[dict[str, Any]]] = {}
        recorder = APIRouter()

        @recorder.post("/test/responses/{key}")
        async def record(key: str, request: Request) -> dict[str, bool]:  # Slack's response_url, faked
            responses.setdefault(key, []).append(await request.json())
            return {"ok": True}

        async with worker_deps(settings, catalog=catalog, keyring=worker_keyring(settings, DEV_KEY)) as deps:
            slack = slack_app(settings, client, catalog, deps.policy, deps.audit, keys)
            assert slack is not None
            routers = [*front_door(settings, client, catalog, deps.policy, deps.audit, slack, keys), recorder]
            http = Http(settings, create_app(Readiness(), routers))
            held = activities(deps.activities) if activities is not None else deps.activities
            async with make_worker(client, settings.task_queue, held):
                await http.start()
                try:
                    async with httpx.AsyncClient(timeout=30) as web:
                        stack = TrustStack(f"http://127.0.0.1:{settings.http_port}", web, client, fake, responses,
                                           settings.task_queue, deps.audit)
                        stack.settings, stack.catalog, stack.sink, stack.policy = settings, catalog, sink, deps.policy
                        yield stack
                finally:
                    await http.stop()
                    await drain(slack)  # as a front door stops: its lanes' workers and queued jobs end with it
                    await terminate_open(client, settings.task_queue)




def stale_fixture(data: Mapping[str, Any]) -> Any:
    """A test's `stale` fixture: a front door's own policy engine on `data` (with PEOPLE and GROUPS),
    from before the workers' data changed (a rollout that reached the workers first)."""

    @pytest_asyncio.fixture
    async def stale(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
        engine = EmbeddedEngine(policies_with(tmp_path, {**data, "people": PEOPLE, "groups": GROUPS}))
        await engine.load()
        try:
            yield engine
        finally:
            await engine.close()

    return stale


def stack_fixture(name: str, playbooks: Mapping[str, str], data: Mapping[str, Any] | None = None) -> Any:
    """A module's `stack` fixture: one trust stack for the module's tests."""

    @pytest_asyncio.fixture(scope="module")
    async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
        async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp(name), playbooks, data) as s:
            yield s

    return stack


# ---- actors and inputs --------------------------------------------------------------------------


def cli_actor(name: str) -> tuple[Actor, Keyring]:
    """`playbook-bot ... --by NAME` on the embedded dev stack: verified by the dev key it signs with."""
    return Actor(f"cli:{name}", name, (), "dev"), Keyring(DEV_KEY)


def slack_actor(user: str, *groups: str) -> Actor:
    return Actor(principal(user), user.lower(), groups, "slack")


FRONT_DOOR = Keyring(ENVELOPE_KEY.encode())


def raw_input(
    loaded: LoadedPlaybook,
    params: Mapping[str, Any] | None = None,
    requested_by: str = "cli:mallory",
    *,
    kind: str = "cli",
    alert: dict[str, Any] | None = None,
    proof: Proof | None = None,
    playbook_hash: str | None = None,
) -> RunInput:
    return RunInput(
        playbook=loaded.playbook,
        playbook_hash=playbook_hash or loaded.hash,
        params=dict(params or {}),
        trigger=TriggerContext(kind=kind, requested_by=requested_by, alert=alert),  # type: ignore[arg-type]
        proof=proof,
    )


async def result(handle: WorkflowHandle[Any, Any], timeout: float = 30) -> RunStatus:
    return await asyncio.wait_for(handle.result(), timeout)


async def state_of(handle: WorkflowHandle[Any, Any]) -> RunStatus:
    return await handle.query(PlaybookRun.status)


async def until(handle: WorkflowHandle[Any, Any], predicate: Any, what: str) -> RunStatus:
    async def check() -> RunStatus | None:
        status = await state_of(handle)
        return status if predicate(status) else None

    return await eventually(check, what=what)


# ---- through Slack ------------------------------------------------------------------------------


async def slack_run(stack: TrustStack, text: str, user: str) -> str:
    """`/playbook run TEXT` as `user`; the run id once it has started."""
    trigger = f"{int(time.time())}.9.{uuid.uuid4().hex[:20]}"
    body, _ = stack.command(f"run {text}", user=user, trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    run_id = slack_run_id(text.split()[0], trigger)
    await eventually(lambda: run_status(stack, run_id), what=f"{run_id} started")
    return run_id


async def approval_message(stack: TrustStack, run_id: str, step: str) -> str:
    """The ts of the approval request the bot posted in the run's thread."""
    def posted() -> list[Any]:
        blocks = [(m, json.dumps(m.blocks or [])) for m in stack.fake.messages if m.thread_ts]
        return [m for m, text in blocks if APPROVE_ACTION in text and run_id in text and f'"approval:{step}"' in text]

    found = await eventually(lambda: returns(posted()), what=f"approval request for {step} posted")
    return found[0].ts


def ephemerals_to(stack: TrustStack, user: str) -> list[str]:
    return [c.params.get("text") or "" for c in stack.fake.calls_to("chat.postEphemeral") if c.params.get("user") == user]


async def waiting(stack: TrustStack, run_id: str, step: str) -> RunStatus:
    return await eventually(lambda: step_state(stack, run_id, step, "waiting_approval"), what=f"{step} waiting")


async def ended(stack: TrustStack, run_id: str) -> RunStatus:
    async def check() -> RunStatus | None:
        status = await get_status(stack.client, run_id)
        return status if status.finished else None

    return await eventually(check, what=f"{run_id} ended")
