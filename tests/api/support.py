"""The front door's /api/v1 on real HTTP, for tests: a worker on the dev server, the front door as
`serve`/`dev` mount it (bot.services.front_door), a small Rego policy and tokens for a few people.

Policy (written to tmp, with data.playbook.people): alice (api:alice and api:alice-laptop), bob,
carol and dave (unmapped: api:dave is his own person) are sre and may start, approve and read;
mallory may start nothing. The requester
or bob may cancel. `gated` needs one approval, `quorum` two.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowExecutionStatus

from bot.audit.events import EventKind, StoredEvent
from bot.audit.store import SqliteAuditStore
from bot.devstack import free_port
from bot.engine.state import RunStatus
from bot.engine.worker import make_worker, worker_deps
from bot.identity.keys import front_door_keyring
from bot.identity.tokens import TokenStore
from bot.playbook.loader import load_directory
from bot.server import Readiness, create_app
from bot.lifecycle import Http
from bot.services import front_door
from bot.settings import Settings
from tests.waiting import admitted, eventually, is_control, settled_runs, terminate_open

ENVELOPE_KEY = "test-envelope-key-0123456789abcdef0123456789"
NAMES = ("alice", "alice-laptop", "bob", "carol", "dave", "mallory")

POLICY = """package playbook.authz

import rego.v1

_person := p if {
	some p, logins in data.playbook.people
	input.user.id in logins
} else := input.user.id

_sre := {"alice", "bob", "carol", "api:dave"}

_in_sre if _person in _sre

decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": ["low impact"]} if {
	input.step.impact != "high"
} else := {"allow": true, "require_approval": true, "min_approvals": 2, "approver_groups": ["sre"], "approval_timeout": "10m", "reasons": ["quorum needs two"]} if {
	input.playbook.name == "quorum"
} else := {"allow": true, "require_approval": true, "min_approvals": 1, "approver_groups": ["sre"], "approval_timeout": "10m", "reasons": ["high impact needs one approval"]}

default start := {"allow": false, "reasons": ["only sre may start playbooks"]}

start := {"allow": true, "reasons": ["in sre"], "person": _person} if _in_sre

default approver := {"allow": false, "reasons": ["only verified sre may approve"]}

approver := {"allow": true, "reasons": ["in sre"], "person": _person} if {
	input.user.verified
	_in_sre
}

default cancel := {"allow": false, "reasons": ["only the requester or bob may cancel"]}

cancel := {"allow": true, "reasons": ["the requester"], "person": _person} if {
	input.user.verified
	input.user.id == input.run.requested_by
} else := {"allow": true, "reasons": ["bob"], "person": _person} if {
	input.user.verified
	_person == "bob"
}
"""

DATA = {"people": {"alice": ["api:alice", "api:alice-laptop"], "bob": ["api:bob"], "carol": ["api:carol"]}}

PLAYBOOKS = {
    "quick": """
name: quick
summary: One log line
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
  replicas: {type: integer, default: 2}
steps:
  - id: note
    action: core.log
    with: {message: "{{ params.service }} x{{ params.replicas }}"}
""",
    "hold": """
name: hold
summary: Log, then wait
steps:
  - id: note
    action: core.log
    with: {message: holding}
    compensate: {action: core.log, with: {message: released}}
  - id: wait
    action: core.sleep
    with: {duration: 10m}
""",
    "gated": """
name: gated
summary: A high-impact step behind one approval
owner: sre
steps:
  - id: prep
    action: core.log
    with: {message: prepare}
  - id: risky
    action: core.log
    impact: high
    with: {message: the risky thing}
""",
    "quorum": """
name: quorum
summary: A high-impact step behind two approvals
owner: sre
steps:
  - id: risky
    action: core.log
    impact: high
    with: {message: the risky thing}
""",
}


@dataclass
class ApiStack:
    url: str
    http: httpx.AsyncClient
    temporal: Client
    task_queue: str
    audit: SqliteAuditStore
    settings: Settings
    tokens: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    async def call(self, method: str, path: str, who: str | None = None, *, body: Any = None,
                   headers: Mapping[str, Any] | None = None, content: bytes | str | None = None) -> httpx.Response:
        """`path` under /api/v1, as `who` (a name in NAMES; None sends no token)."""
        sent = {**(self.auth(who) if who else {}), **(headers or {})}
        if body is not None:
            content, sent = json.dumps(body), {"Content-Type": "application/json", **sent}
        return await self.http.request(method, f"{self.url}/api/v1{path}", headers=sent, content=content)

    async def start(self, who: str, playbook: str, params: Mapping[str, Any] | None = None) -> str:
        response = await self.call("POST", "/runs", who, body={"playbook": playbook, "params": dict(params or {})})
        assert response.status_code == 201, response.text
        return str(response.json()["run_id"])

    async def runs(self) -> list[Any]:
        """Every execution on this stack's task queue, as listed now (the listing lags a start)."""
        listed = [w async for w in self.temporal.list_workflows(f'TaskQueue = "{self.task_queue}"')]
        return [w for w in listed if not is_control(w.id)]

    async def settled_runs(self) -> list[Any]:
        """The same, once a run started now is listed: what a refused request must not have added."""
        return await settled_runs(self.temporal, self.task_queue)

    async def status(self, run_id: str) -> RunStatus | None:
        """The run's status once the worker admitted it, else None."""
        return await admitted(self.temporal, run_id)

    async def step_in(self, run_id: str, step: str, state: str) -> RunStatus:
        """The run's status once `step` is in `state`."""
        async def check() -> RunStatus | None:
            status = await self.status(run_id)
            return status if status and status.step(step).state == state else None

        return await eventually(check, timeout=30, what=f"{run_id} step {step} {state}")

    async def waiting(self, run_id: str, step: str) -> RunStatus:
        return await self.step_in(run_id, step, "waiting_approval")

    async def finished(self, run_id: str) -> RunStatus:
        async def check() -> RunStatus | None:
            status = await self.status(run_id)
            if not status or not status.finished:
                return None
            desc = await self.temporal.get_workflow_handle(run_id).describe()
            return status if desc.status != WorkflowExecutionStatus.RUNNING else None

        return await eventually(check, timeout=30, what=f"{run_id} finished")

    def refusals(self, actor: str | None = None) -> list[StoredEvent]:
        return [
            e for e in self.audit.events()
            if e.kind == EventKind.access_refused and (actor is None or e.actor == actor)
        ]


def write_policies(root: Path, policy: str = POLICY, data: Mapping[str, Any] = DATA) -> Path:
    authz = root / "playbook" / "authz"
    authz.mkdir(parents=True)
    (authz / "authz.rego").write_text(policy)
    (root / "playbook" / "data.json").write_text(json.dumps(data))
    return root


@asynccontextmanager
async def api_stack(
    client: Client, tmp_path: Path, playbooks: Mapping[str, str] | None = None, front_door_client: Client | None = None,
) -> AsyncIterator[ApiStack]:
    """Worker + front door (real HTTP) on the dev server, with a token for each of NAMES.
    `front_door_client` gives the front door another way to Temporal (one that does not reach it)."""
    (tmp_path / "playbooks").mkdir()
    for name, text in {**PLAYBOOKS, **(playbooks or {})}.items():
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(text)
    settings = Settings(
        data_dir=tmp_path / "data",
        playbooks_dir=tmp_path / "playbooks",
        policies_dir=write_policies(tmp_path / "policies"),
        task_queue=f"api-{uuid.uuid4()}",
        http_port=free_port(),
        envelope_key=ENVELOPE_KEY,
    )
    store = TokenStore(settings.tokens_path)
    tokens = {name: store.issue(name) for name in NAMES}
    catalog = load_directory(settings.playbooks_dir)
    async with worker_deps(settings) as deps:
        routers = front_door(settings, front_door_client or client, catalog, deps.policy, deps.audit, None,
                             front_door_keyring(settings))
        http = Http(settings, create_app(Readiness(), routers))
        async with make_worker(client, settings.task_queue, deps.activities):
            await http.start()
            try:
                async with httpx.AsyncClient(timeout=30) as http_client:
                    yield ApiStack(f"http://127.0.0.1:{settings.http_port}", http_client, client, settings.task_queue,
                                   deps.audit, settings, tokens)
            finally:
                await http.stop()
                await terminate_open(client, settings.task_queue)


class Proxy:
    """A TCP proxy to Temporal that a test can cut: the front door's way to Temporal going down."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, upstream_writer]
        for source, sink in [(reader, upstream_writer), (upstream_reader, writer)]:
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
