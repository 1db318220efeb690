"""Slack ack latency: bursts of 50 concurrent signed `/playbook run` commands.

The bot (signature check, parse, start policy, audit, workflow start, ack) against a floor
measured in the same run: a minimal Bolt app on the same Temporal server that only verifies the
signature, starts a workflow inside the ack window and acks, with a worker running those
workflows. Slack allows 3 s; the goal is the bot's slowest ack <= 1.3x the floor's. Every command
must be answered and every bot run must post its status message (to a fake Slack Web API).

    .venv/bin/python -m bench.slack_ack [--bursts 3] [--size 50]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from fastapi import FastAPI, Request

from bench.baseline import BaselineFiveSteps
from bench.workers import worker_process
from bot import logging
from bot.devstack import DevServer, free_port
from bot.engine.worker import worker_deps
from bot.playbook.loader import load_directory
from bot.server import Readiness, create_app
from bot.services import _Http, front_door, slack_app
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.slack.fake_slack import FakeSlack  # noqa: E402  (the fake Web API the tests use)

SECRET = "bench-signing-secret"
CHANNEL = "C0INCIDENTS"
PLAYBOOK = """
name: ack
channel: "C0INCIDENTS"
steps:
  - {id: note, action: core.log, with: {message: "acked"}}
"""


def signed(body: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


RESPONSE_URL = ["http://127.0.0.1:9/"]  # set to the fake Slack's address (it answers and records)


def command(text: str) -> str:
    return urlencode({
        "team_id": "T0FAKE", "channel_id": CHANNEL, "user_id": "U0BENCH", "user_name": "bench",
        "command": "/playbook", "text": text, "response_url": RESPONSE_URL[0] + "response_url",
        "trigger_id": f"{int(time.time())}.1.{uuid.uuid4().hex[:20]}",
    })


async def bursts(url: str, n: int, size: int) -> list[float]:
    """Ack latencies in ms: `n` bursts of `size` concurrent signed commands."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as web:

        async def one() -> float:
            body = command("run ack")
            started = time.perf_counter()
            async with web.post(f"{url}/slack/events", data=body, headers=signed(body)) as response:
                await response.read()
                assert response.status == 200, response.status
            return (time.perf_counter() - started) * 1000

        for _ in range(n):
            latencies += await asyncio.gather(*(one() for _ in range(size)))
            await asyncio.sleep(1)
    return latencies


def floor_app(client: Client, task_queue: str, fake: FakeSlack) -> FastAPI:
    """Verify the signature, start a workflow inside the ack window, ack: nothing else."""
    web = AsyncWebClient(token=fake.token, base_url=fake.api_url)
    bolt = AsyncApp(signing_secret=SECRET, client=web, request_verification_enabled=True)

    @bolt.command("/playbook")
    async def run(ack, body) -> None:  # noqa: ANN001 (Bolt's injected arguments)
        await client.start_workflow(
            BaselineFiveSteps.run, 1, id=f"floor-{body['trigger_id']}", task_queue=task_queue
        )
        await ack()

    handler = AsyncSlackRequestHandler(bolt)
    app = FastAPI()

    @app.post("/slack/events")
    async def events(request: Request):  # noqa: ANN202
        return await handler.handle(request)

    return app


async def main(n: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as fake:
        RESPONSE_URL[0] = fake.api_url
        server = DevServer(Path(tmp) / "temporal", port=free_port(), ui_port=free_port())
        await server.start()
        try:
            client = await Client.connect(server.address, data_converter=pydantic_data_converter)
            floor_queue = f"floor-{uuid.uuid4()}"
            floor_settings = Settings(http_port=free_port())
            floor_http = _Http(floor_settings, floor_app(client, floor_queue, fake))
            async with worker_process(server.address, floor_queue, "floor"):
                await floor_http.start()
                floor = await bursts(f"http://127.0.0.1:{floor_settings.http_port}", n, size)
                await floor_http.stop()

            (Path(tmp) / "playbooks").mkdir()
            (Path(tmp) / "playbooks" / "ack.yaml").write_text(PLAYBOOK)
            settings = Settings(
                data_dir=Path(tmp) / "data", playbooks_dir=Path(tmp) / "playbooks", policies_dir=ROOT / "policies",
                http_port=free_port(), task_queue=f"ack-{uuid.uuid4()}", slack_signing_secret=SECRET,
                slack_bot_token=fake.token, slack_api_url=fake.api_url,
            )
            catalog = load_directory(settings.playbooks_dir)
            env = {
                "PLAYBOOK_BOT_DATA_DIR": str(settings.data_dir), "PLAYBOOK_BOT_POLICIES_DIR": str(settings.policies_dir),
                "PLAYBOOK_BOT_TASK_QUEUE": settings.task_queue, "PLAYBOOK_BOT_SLACK_BOT_TOKEN": fake.token,
                "PLAYBOOK_BOT_SLACK_API_URL": fake.api_url, "PLAYBOOK_BOT_LOG_LEVEL": "WARNING",
            }
            async with worker_deps(settings) as deps, worker_process(server.address, settings.task_queue, "bot", env):
                slack = slack_app(settings, client, catalog, deps.policy, deps.audit)
                http = _Http(settings, create_app(Readiness(), front_door(settings, client, catalog, deps.policy,
                                                                            deps.audit, slack)))
                await http.start()
                bot = await bursts(f"http://127.0.0.1:{settings.http_port}", n, size)
                await http.stop()
                deadline = time.monotonic() + 60
                runs: list = []
                while time.monotonic() < deadline:
                    runs = [w async for w in client.list_workflows(f'TaskQueue = "{settings.task_queue}"')]
                    closed = [w for w in runs if w.status and w.status.name != "RUNNING"]
                    if len(closed) == n * size:
                        break
                    await asyncio.sleep(0.5)
            posted = {c.params.get("blocks") and str(c.params["blocks"]) for c in fake.calls_to("chat.postMessage")
                      if "thread_ts" not in c.params}
        finally:
            await server.stop()
    status_messages = len([c for c in fake.calls_to("chat.postMessage") if "thread_ts" not in c.params])
    print(f"\nSlack ack: {n} bursts of {size} concurrent signed /playbook run commands, same Temporal server\n")
    print(f"{'':48} {'p50 ms':>8} {'slowest ms':>11} {'ratio (slowest)':>16}")
    for name, values in (("floor: verify, start workflow, ack (minimal Bolt)", floor), ("playbook-bot", bot)):
        print(f"{name:48} {statistics.median(values):8.1f} {max(values):11.1f} {max(values) / max(floor):16.2f}")
    print(f"\ncommands answered: floor {len(floor)}/{n * size}, bot {len(bot)}/{n * size}; "
          f"bot runs {len(runs)}, status messages posted {status_messages} ({len(posted)} distinct)")
    print("goal: bot slowest ack <= 1.3x the floor's, all under 3000 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--size", type=int, default=50)
    args = parser.parse_args()
    logging.configure("INFO", "json", stream=open(os.devnull, "w"))
    asyncio.run(main(args.bursts, args.size))
