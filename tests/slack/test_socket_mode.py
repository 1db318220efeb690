"""Socket Mode (PLAYBOOK_BOT_SLACK_APP_TOKEN): Slack's side played by a local websocket server that
speaks its envelope protocol, as https://api.slack.com/apis/connections/socket-implement describes it:

- the app calls `apps.connections.open` with its app-level token (`xapp-`) and gets a `wss` URL;
- on connecting, Slack sends `{"type": "hello", ...}`;
- each event is an envelope `{"envelope_id", "type": "slash_commands", "payload",
  "accepts_response_payload"}`, and the app must answer `{"envelope_id": <the same>}` (optionally
  with a `payload`) within 3 seconds, or Slack shows the user an error.

The Web API side is the fake Slack of tests/slack/fake_slack.py, which gains `apps.connections.open`
here; the bot is wired as `dev` and `serve` wire it (bot.services.slack_app and socket_mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from structlog.testing import capture_logs
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from bot.devstack import free_port
from bot.engine.worker import make_worker, worker_deps
from bot.playbook.loader import load_directory
from bot.services import slack_app, socket_mode
from bot.settings import Settings
from bot.slack.app import drain
from bot.slack.commands import slack_run_id
from tests.reliability.test_slack_load import LatencyProxy
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import ALICE, CHANNEL, ENVELOPE_KEY, PLAYBOOKS, POLICY, SECRET, principal
from tests.waiting import admitted, eventually

APP_TOKEN = "xapp-1-A0FAKE-1-0123456789abcdef"  # the app-level token Socket Mode connects with
ACK_DEADLINE = 3.0  # seconds: Slack's deadline for acknowledging an envelope
Answer = tuple[int, dict[str, Any], dict[str, str]]  # HTTP status, JSON body, headers, as FakeSlack.answer gives


@dataclass
class SocketModeSlack(FakeSlack):
    """The fake Web API, plus `apps.connections.open`: Slack answers it only for an app-level token
    (a bot token gets `not_allowed_token_type`) with the URL of a fresh websocket."""

    ws_url: str = ""
    opened_with: list[str] = field(default_factory=list)

    def answer(self, method: str, params: dict[str, Any], auth_header: str | None) -> Answer:
        if method != "apps.connections.open":
            return super().answer(method, params, auth_header)
        header = auth_header or ""
        token = header[7:].strip() if header.lower().startswith("bearer ") else str(params.get("token") or "")
        self.opened_with.append(token)
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token != APP_TOKEN:
            error = "not_allowed_token_type" if token.startswith("xoxb-") else "invalid_auth"
            return 200, {"ok": False, "error": error}, {}
        return 200, {"ok": True, "url": self.ws_url}, {}


class SlackSocket:
    """Slack's end of the connection: `hello` when the app connects, envelopes when a test sends
    them, and every frame the app sends back, with the time it arrived. Also serves the
    commands' response_url (Slack's, faked), recording what the app posts there."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4()}&app_id=A0FAKE"
        self.connected = asyncio.Event()
        self.frames: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.tickets: list[str | None] = []
        self._ws: web.WebSocketResponse | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        app.router.add_post("/responses/{key}", self._response)
        return app

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.tickets.append(request.query.get("ticket"))
        await ws.send_json({
            "type": "hello",
            "num_connections": 1,
            "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": "A0FAKE"},
        })
        self._ws = ws
        self.connected.set()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await self.frames.put((time.monotonic(), json.loads(message.data)))
        return ws

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.setdefault(request.match_info["key"], []).append(await request.json())
        return web.json_response({"ok": True})

    async def command(self, text: str, trigger_id: str, user: str = ALICE) -> tuple[str, str, float]:
        """Send a `/playbook` slash command envelope; its envelope id, response key and send time."""
        assert self._ws is not None, "the app has not connected"
        envelope_id, key = str(uuid.uuid4()), uuid.uuid4().hex
        payload = {
            "token": "deprecated-verification-token", "team_id": "T0FAKE", "team_domain": "fake",
            "channel_id": CHANNEL, "channel_name": "incidents", "user_id": user, "user_name": "alice",
            "command": "/playbook", "text": text, "api_app_id": "A0FAKE", "is_enterprise_install": "false",
            "response_url": f"http://127.0.0.1:{self.port}/responses/{key}", "trigger_id": trigger_id,
        }  # fmt: skip
        await self._ws.send_json(
            {"envelope_id": envelope_id, "type": "slash_commands", "payload": payload, "accepts_response_payload": True}
        )
        return envelope_id, key, time.monotonic()

    async def ack(self, envelope_id: str, sent: float) -> dict[str, Any]:
        """The app's next frame, which must be the ack of `envelope_id`, on time."""
        arrived, frame = await asyncio.wait_for(self.frames.get(), 20)
        assert frame.get("envelope_id") == envelope_id, f"not the ack of {envelope_id}: {frame}"
        assert set(frame) <= {"envelope_id", "payload"}, frame
        assert arrived - sent < ACK_DEADLINE, f"acked after {arrived - sent:.2f}s; Slack gives up after 3 s"
        return frame


@asynccontextmanager
async def slack_socket() -> AsyncIterator[SlackSocket]:
    socket = SlackSocket()
    runner = web.AppRunner(socket.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", socket.port).start()
    try:
        yield socket
    finally:
        await runner.cleanup()


def settings_for(tmp_path: Path, fake: FakeSlack) -> Settings:
    (tmp_path / "playbooks").mkdir()
    for name, text in PLAYBOOKS.items():
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(text)
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    return Settings(
        data_dir=tmp_path / "data",
        playbooks_dir=tmp_path / "playbooks",
        policies_dir=tmp_path / "policies",
        task_queue=f"socket-{uuid.uuid4()}",
        slack_signing_secret=SECRET,  # not used by Socket Mode (its connection is the proof), but required
        slack_bot_token=fake.token,
        slack_api_url=fake.api_url,
        slack_app_token=APP_TOKEN,
        envelope_key=ENVELOPE_KEY,
    )


@asynccontextmanager
async def socket_mode_bot(
    dev_env: Any, tmp_path: Path, front_door: Client | None = None
) -> AsyncIterator[tuple[SlackSocket, SocketModeSlack]]:
    """Worker + the Slack app over Socket Mode, wired as `dev` and `serve` wire it, connected to
    SlackSocket; `front_door` is the Temporal client of the app (default: the worker's)."""
    async with slack_socket() as slack:
        with SocketModeSlack(ws_url=slack.url) as fake:
            fake.add_user(ALICE, "alice")
            fake.add_usergroup("S0SRE", "sre", [ALICE])
            settings = settings_for(tmp_path, fake)
            catalog = load_directory(settings.playbooks_dir)
            client = dev_env.client
            async with worker_deps(settings) as deps, make_worker(client, settings.task_queue, deps.activities):
                app = slack_app(settings, front_door or client, catalog, deps.policy, deps.audit)
                try:
                    async with socket_mode(settings, app):
                        await asyncio.wait_for(slack.connected.wait(), 20)
                        yield slack, fake
                finally:
                    await drain(app)  # as a front door stops: its lanes' workers and queued jobs end with it
                    for w in [w async for w in client.list_workflows(f'TaskQueue = "{settings.task_queue}"')]:
                        with contextlib.suppress(RPCError):
                            await client.get_workflow_handle(w.id).terminate("test over")


async def test_a_slash_command_over_socket_mode_is_acked_in_time_with_its_envelope_id_and_runs(dev_env, tmp_path):
    async with socket_mode_bot(dev_env, tmp_path) as (slack, fake):
        assert fake.opened_with == [APP_TOKEN], "connected with the app-level token"
        assert slack.tickets == [slack.url.split("ticket=")[1].split("&")[0]], "at the URL Slack gave"

        trigger = f"{int(time.time())}.42.{uuid.uuid4().hex[:20]}"
        run_id = slack_run_id("hold", trigger)
        envelope_id, key, sent = await slack.command("run hold service=api", trigger)
        await slack.ack(envelope_id, sent)
        status = await eventually(lambda: admitted(dev_env.client, run_id), what="the run started")
        assert (status.trigger, status.requested_by, status.params) == (
            "slack", principal(ALICE), {"service": "api", "replicas": 2}
        )
        assert status.requester is not None and status.requester.verified_by == "slack"
        answers = await eventually(lambda: answered(slack, key), what="the command's answer")
        assert "Started *hold*" in answers and run_id in answers

        # a second envelope gets its own ack, not a repeat of the first
        help_id, help_key, sent = await slack.command("help", f"{trigger}-2")
        await slack.ack(help_id, sent)
        assert "/playbook run NAME" in await eventually(lambda: answered(slack, help_key), what="the help text")


async def test_a_slow_start_is_still_acked_in_time_and_the_run_starts(dev_env, tmp_path):
    """The front door reaches Temporal over a link that adds 1.5 s each way: starting the run takes
    longer than Slack waits, so the app acks at its budget and finishes the start after."""
    proxy = LatencyProxy(dev_env.client.service_client.config.target_host, delay=(0.0, 0.0))
    address = await proxy.start()
    try:
        slow = await Client.connect(address, namespace=dev_env.client.namespace, data_converter=pydantic_data_converter)
        proxy.delay = (1.5, 1.5)
        async with socket_mode_bot(dev_env, tmp_path, front_door=slow) as (slack, _):
            trigger = f"{int(time.time())}.43.{uuid.uuid4().hex[:20]}"
            with capture_logs() as logs:
                envelope_id, key, sent = await slack.command("run hold service=api", trigger)
                await slack.ack(envelope_id, sent)
                answers = await eventually(lambda: answered(slack, key), what="the command's answer")
            assert "Started *hold*" in answers, answers
            assert "slack run start slower than the ack budget; acking first" in [e["event"] for e in logs]
            await eventually(lambda: admitted(dev_env.client, slack_run_id("hold", trigger)), what="the run started")
    finally:
        await proxy.close()


async def answered(slack: SlackSocket, key: str) -> str:
    return "\n".join(str(a.get("text") or "") for a in slack.responses.get(key, []))
