"""A bot stack for Alertmanager tests: worker + front door on real HTTP, optionally a second
front-door replica, a real Alertmanager (Debian's prometheus-alertmanager) wired to it, and the
fake Slack Web API behind the worker's notifier.

Every front door is wrapped in `StatusLog`, which records each status it answered, so a test (and
the stack itself, on the way out) can say "no 5xx, ever" about everything it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from bot.audit.store import SqliteAuditStore
from bot.devstack import free_port
from bot.engine.worker import make_worker, open_policy_and_audit, worker_deps
from bot.playbook.loader import Catalog, load_directory
from bot.policy.engine import PolicyEngine
from bot.server import DirectRoutes, Readiness, create_app
from bot.lifecycle import Http
from bot.services import front_door
from bot.settings import Settings
from tests.slack.support import ENVELOPE_KEY
from tests.e2e.support import Service, base_env
from tests.waiting import eventually, is_control, settled_runs, terminate_open  # noqa: F401  (eventually: re-exported)

TOKEN = "s3cret-webhook-token"
ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    message = "prometheus-alertmanager not installed (.ci/run installs it: apt-get install prometheus-alertmanager)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


async def answers_200(http: httpx.AsyncClient, url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll `url` until it answers 200 (True); False at the timeout or as soon as `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if (await http.get(url)).status_code == 200:
                return True
        await asyncio.sleep(0.1)
    return False


# ---- payloads -----------------------------------------------------------------------------------


# Alertmanager's own config for the bot as receiver: format with the bot's port and token.
AM_CONFIG = """
route:
  receiver: bot
  group_by: ['...']
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: bot
    webhook_configs:
      - url: http://127.0.0.1:{port}/alertmanager
        send_resolved: true
        http_config:
          authorization: {{type: Bearer, credentials: {token}}}
"""


def webhook(alerts: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """A version-4 webhook body as Alertmanager sends it."""
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "bot",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example",
        "alerts": alerts,
        **overrides,
    }


def firing(fingerprint: str, alertname: str, starts: str = "2026-11-22T01:00:00Z", **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": alertname, **labels},
        "annotations": {"summary": f"{alertname} {fingerprint}"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": fingerprint,
    }


# ---- observing the front door -------------------------------------------------------------------


class StatusLog:
    """ASGI wrapper: every (method, path, status) the app answered; an escaped exception is a 500."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, int]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def record(message: dict[str, Any]) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self.seen.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, record)
        except BaseException:
            if not answered:
                self.seen.append((scope["method"], scope["path"], 500))
            raise

    def server_errors(self) -> list[tuple[str, str, int]]:
        return [s for s in self.seen if s[2] >= 500]

    def count(self, status: int) -> int:
        return sum(1 for s in self.seen if s[2] == status)


# ---- a real Alertmanager ------------------------------------------------------------------------


class Alertmanager:
    """One clustering-off Alertmanager on 127.0.0.1; `reconfigure` rewrites its file and SIGHUPs it."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.workdir = workdir
        self.config_path = workdir / "am.yml"
        self.config_path.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                alertmanager_binary(),
                f"--config.file={self.config_path}",
                f"--storage.path={workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "am.log", "wb"),
            start_new_session=True,
        )

    async def ready(self, http: httpx.AsyncClient, timeout: float = 10) -> None:
        if not await answers_200(http, f"{self.url}/-/ready", self.proc, timeout):
            raise AssertionError(f"Alertmanager not ready in {timeout}s:\n{self.log()}")

    async def reconfigure(self, http: httpx.AsyncClient, config: str) -> None:
        """Alertmanager's documented reload: a new file, then SIGHUP; waits until the config hash
        it reports (`alertmanager_config_hash`) changed and the reload says it succeeded."""
        before = await self._metric(http, "alertmanager_config_hash")
        self.config_path.write_text(config)
        self.proc.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return (await self._metric(http, "alertmanager_config_hash") != before
                    and await self._metric(http, "alertmanager_config_last_reload_successful") == 1)

        await eventually(reloaded, timeout=10, what="Alertmanager config reload")

    async def _metric(self, http: httpx.AsyncClient, name: str) -> float | None:
        for line in (await http.get(f"{self.url}/metrics")).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "am.log").read_text()[-4000:]
        return ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ---- the stack ----------------------------------------------------------------------------------


@dataclass
class FrontDoor:
    url: str
    statuses: StatusLog
    audit: SqliteAuditStore


@dataclass
class BotStack:
    settings: Settings
    url: str
    http: httpx.AsyncClient
    temporal: Client
    audit: SqliteAuditStore
    policy: PolicyEngine
    catalog: Catalog
    statuses: StatusLog
    am: Alertmanager | None = None
    worker: WorkerProcess | None = None  # when the worker runs in its own process
    replicas: list[FrontDoor] = field(default_factory=list)
    _exit: AsyncExitStack = field(default_factory=AsyncExitStack)

    @property
    def task_queue(self) -> str:
        return self.settings.task_queue

    async def deliver(self, body: Any, *, url: str | None = None, headers: Mapping[str, str] | None = None
                      ) -> httpx.Response:
        """POST one webhook body (a dict is sent as JSON) to a front door, with the right token."""
        kwargs: dict[str, Any] = {"json": body} if isinstance(body, (dict, list)) else {"content": body}
        return await self.http.post(f"{url or self.url}/alertmanager", headers={**AUTH, **(headers or {})}, **kwargs)

    async def runs(self, query: str | None = None) -> list[Any]:
        """Every workflow execution (open or closed) on this stack's task queue, plus `query`."""
        q = f'TaskQueue = "{self.task_queue}"' + (f" AND {query}" if query else "")
        return [w async for w in self.temporal.list_workflows(q) if not is_control(w.id)]

    async def settled_runs(self) -> list[Any]:
        """Every run on the queue, once a run started now is listed: a refusal must not have added one."""
        return await settled_runs(self.temporal, self.task_queue)

    async def executions(self, run_id: str) -> int:
        return len([w async for w in self.temporal.list_workflows(f'WorkflowId = "{run_id}"')])

    def outcomes(self, store: SqliteAuditStore | None = None) -> list[dict[str, Any]]:
        """Details of every alert_outcome event recorded (in `store`, default the worker's)."""
        return [e.details for e in (store or self.audit).events() if e.kind.value == "alert_outcome"]

    def server_errors(self) -> list[tuple[str, str, int]]:
        return self.statuses.server_errors() + [s for r in self.replicas for s in r.statuses.server_errors()]

    async def replica(self, *, shared_audit: bool = True) -> FrontDoor:
        """Another front door (own policy engine, own audit store object) on the same Temporal and
        task queue, as a second `serve` process would be. `shared_audit`: the same audit file (the
        compose deploy shares one data volume); otherwise its own file."""
        data_dir = self.settings.data_dir if shared_audit else self.settings.data_dir.with_name(f"replica-{uuid.uuid4().hex[:6]}")
        settings = self.settings.model_copy(update={"http_port": free_port(), "data_dir": data_dir})
        policy, audit = await open_policy_and_audit(self._exit, settings)
        catalog = load_directory(settings.playbooks_dir)
        statuses = StatusLog(DirectRoutes(create_app(Readiness(), front_door(settings, self.temporal, catalog, policy, audit))))
        http = Http(settings, statuses)
        await http.start()
        self._exit.push_async_callback(http.stop)
        door = FrontDoor(f"http://127.0.0.1:{settings.http_port}", statuses, audit)
        self.replicas.append(door)
        return door


class WorkerProcess:
    """`playbook-bot worker` in its own process (as deployed: front door and worker apart), with
    its /readyz and /metrics on a port of its own."""

    def __init__(self, settings: Settings, address: str, logs: Path, **extra: Any) -> None:
        """`extra`: more settings for the worker's environment (playbooks_reload_interval=...)."""
        self.metrics_port = free_port()
        env = base_env(
            temporal_address=address,
            temporal_namespace=settings.temporal_namespace,
            task_queue=settings.task_queue,
            data_dir=settings.data_dir,
            playbooks_dir=settings.playbooks_dir,
            policies_dir=settings.policies_dir,
            worker_metrics_port=self.metrics_port,
            slack_bot_token=settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None,
            slack_api_url=settings.slack_api_url,
            envelope_key=settings.envelope_key.get_secret_value() if settings.envelope_key else None,
            log_level="WARNING",
            **extra,
        )
        self.service = Service(["worker"], env, logs, "worker")
        self.url = f"http://127.0.0.1:{self.metrics_port}"

    async def ready(self, http: httpx.AsyncClient, timeout: float = 30) -> None:
        if not await answers_200(http, f"{self.url}/readyz", self.service.proc, timeout):
            raise AssertionError(f"worker not ready in {timeout}s:\n{self.service}")

    async def metric(self, http: httpx.AsyncClient, name: str, **labels: str) -> float:
        """A counter's value in the worker's /metrics (0 when it was never touched)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in (await http.get(f"{self.url}/metrics")).text.splitlines():
            if line.startswith(f"{name}{{{want}}} ") or (not want and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self.service.terminate(timeout=15)
        self.service.close()


@asynccontextmanager
async def bot_stack(
    client: Client,
    tmp_path: Path,
    playbooks: Mapping[str, str],
    *,
    alertmanager_config: str | None = None,
    worker: str = "inline",
    check_5xx: bool = True,
    **settings: Any,
) -> AsyncIterator[BotStack]:
    """Worker + front door (real HTTP) on `client`'s Temporal, a fresh task queue, the shipped
    policies. `worker="process"` runs the worker as its own `playbook-bot worker` process (as
    deployed, so load on the front door and on the test cannot starve it); "inline" in this loop.
    `alertmanager_config` (formatted with `port` and `token`) adds a real Alertmanager.
    Extra keyword arguments are Settings fields (slack_bot_token, alertmanager_max_body...).
    On the way out: running workflows of the queue are terminated, and any 5xx answered fails."""
    (tmp_path / "playbooks").mkdir(exist_ok=True)
    for name, text in playbooks.items():
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(text)
    port = free_port()
    config = Settings(
        **{
            "data_dir": tmp_path / "data",
            "playbooks_dir": tmp_path / "playbooks",
            "policies_dir": ROOT / "policies",
            "http_port": port,
            "alertmanager_token": TOKEN,
            "alertmanager_max_body": 64 * 1024,
            "envelope_key": ENVELOPE_KEY,  # the front door vouches for its alerts; the worker checks
            "task_queue": f"tq-{uuid.uuid4()}",
            **settings,
        }
    )
    catalog = load_directory(config.playbooks_dir)
    am = Alertmanager(tmp_path, alertmanager_config.format(port=port, token=TOKEN)) if alertmanager_config else None
    try:
        async with AsyncExitStack() as exit, httpx.AsyncClient(timeout=30) as web:
            process: WorkerProcess | None = None
            if worker == "inline":
                deps = await exit.enter_async_context(worker_deps(config))
                await exit.enter_async_context(make_worker(client, config.task_queue, deps.activities))
                policy, audit = deps.policy, deps.audit
            else:
                policy, audit = await open_policy_and_audit(exit, config)
                process = WorkerProcess(config, client.service_client.config.target_host, tmp_path / "logs")
                exit.callback(process.stop)
                await process.ready(web)
            statuses = StatusLog(DirectRoutes(create_app(Readiness(), front_door(config, client, catalog, policy, audit))))
            http = Http(config, statuses)
            await http.start()
            try:
                async with AsyncExitStack() as replicas:
                    if am is not None:
                        await am.ready(web)
                    stack = BotStack(config, f"http://127.0.0.1:{port}", web, client, audit, policy,
                                     catalog, statuses, am, worker=process, _exit=replicas)
                    yield stack
                    errors = stack.server_errors()
            finally:
                await http.stop()
                await terminate_open(client, config.task_queue)
    finally:
        if am is not None:
            am.stop()
    if check_5xx:
        assert not errors, f"the front door answered 5xx: {errors[:10]}"
