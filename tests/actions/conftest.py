"""Run real action activities through Temporal's ActivityEnvironment, against real local servers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bot.actions.activities import build_activities
from bot.actions.base import ActionInput, ActionResult
from bot.actions.k8s_client import KubeClients
from bot.actions.secrets import SecretStore
from bot.playbook.templating import secret_names
from tests.actions import fake_k8s
from tests.http_server import serving

RUN_ID, STEP_ID, KEY = "run-42", "restart", "run-42/restart"


async def _run_action(
    name: str,
    params: dict[str, Any],
    providers: list[object],
    *,
    secrets: SecretStore | None = None,
    env: ActivityEnvironment | None = None,
    key: str = KEY,
    compensation: bool = False,
    declared: list[str] | None = None,
) -> ActionResult:
    """Build the real activities from `providers` and run the one named `name`; the playbook
    declares `declared` secrets (by default those the params refer to)."""
    activities = build_activities(providers, secrets or SecretStore(environ={}))
    by_name = {fn.__name__: fn for fn in activities}
    activity = by_name[name.replace(".", "_")]
    arg = ActionInput(
        run_id=RUN_ID,
        step_id=STEP_ID,
        playbook="restart-service",
        action=name,
        params=params,
        idempotency_key=key,
        compensation=compensation,
        secrets=secret_names(params) if declared is None else declared,
    )
    return await (env or ActivityEnvironment()).run(activity, arg)


async def _run_failing(name: str, params: dict[str, Any], providers: list[object], **kwargs: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await _run_action(name, params, providers, **kwargs)
    return caught.value


@pytest.fixture
def run_action() -> Callable[..., Awaitable[ActionResult]]:
    """`await run_action(name, params, providers, secrets=, env=, key=, declared=)`: the activity's result."""
    return _run_action


@pytest.fixture
def run_failing() -> Callable[..., Awaitable[ApplicationError]]:
    """Like `run_action`, for a run that must fail: the ApplicationError the worker would report."""
    return _run_failing


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeApi:
    """A real HTTP server on 127.0.0.1 that records every request it gets."""

    base_url: str
    requests: list[Recorded] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            record = Recorded(
                self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}, body
            )
            api.requests.append(record)
            segments = parts.path.strip("/").split("/")
            if segments[0] == "status":
                code = int(segments[1])
                self._send(code, f"status {code}: upstream says no".encode(), "text/plain")
            elif segments[0] == "echo":
                echoed = {
                    "method": record.method,
                    "query": record.query,
                    "headers": record.headers,
                    "body": body.decode(),
                }
                self._send(200, json.dumps(echoed).encode(), "application/json")
            elif segments[0] == "nested":  # JSON nested as deep as asked: [[[...1...]]]
                depth = int(segments[1])
                self._send(200, ("[" * depth + "1" + "]" * depth).encode(), "application/json")
            elif segments[0] == "big":
                self._send(200, b"x" * 100_000, "text/plain")
            elif segments[0] == "slow":
                time.sleep(float(segments[1]))
                self._send(200, b"late", "text/plain")
            elif segments[0] == "redirect":
                self._send(302, b"", "text/plain", {"Location": "/echo"})
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeApi]:
    api = FakeApi(base_url="")
    with serving(_handler(api)) as api.base_url:
        yield api


@pytest.fixture
def fake_api(_server: FakeApi) -> FakeApi:
    _server.requests.clear()
    return _server


# --- Kubernetes: the fake API server (tests/actions/fake_k8s.py) and a kubeconfig pointing at it ---

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster: {{server: "{url}"}}
users:
  - name: bot
    user: {{token: "{token}"}}
  - name: stranger
    user: {{token: not-the-token}}
contexts:
  - name: fake
    context: {{cluster: fake, user: bot, namespace: shop}}
  - name: wrong-user
    context: {{cluster: fake, user: stranger}}
current-context: fake
"""


@pytest.fixture(scope="session")
def _kube_server() -> Iterator[fake_k8s.FakeKube]:
    yield from fake_k8s.running()


@pytest.fixture
def fake_kube(_kube_server: fake_k8s.FakeKube) -> fake_k8s.FakeKube:
    """The fake Kubernetes API, emptied for each test."""
    _kube_server.reset()
    return _kube_server


@pytest.fixture
def kubeconfig(fake_kube: fake_k8s.FakeKube, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(url=fake_kube.base_url, token=fake_k8s.TOKEN))
    return path


@pytest_asyncio.fixture
async def kube_clients(kubeconfig: Path) -> AsyncIterator[KubeClients]:
    """Clients as the worker builds them from PLAYBOOK_BOT_KUBECONFIG (short request timeout: the
    tests that hold a response back want the client to give up on it)."""
    clients = KubeClients(kubeconfig, environ={}, request_timeout=2.0)
    yield clients
    await clients.close()
