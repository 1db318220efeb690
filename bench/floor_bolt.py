"""The Slack floor as its own process: a minimal Bolt app that verifies the signature, starts a
workflow inside the ack window and acks, nothing else; its worker runs in this process (the shape
issue 15 measured the floor in). An Approve click (bench/latency.py) is verified, acked, and turned
into an update on the waiting BaselineAwaitUpdate run its button names, nothing else.

    python -m bench.floor_bolt TEMPORAL_ADDRESS TASK_QUEUE HTTP_PORT SIGNING_SECRET SLACK_API_URL SLACK_TOKEN
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import uvicorn
from fastapi import FastAPI, Request, Response
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client
from temporalio.worker import Worker

from bench.baseline import BaselineAwaitUpdate, BaselineFiveSteps, http_get, noop
from bot.slack.blocks import APPROVE_ACTION


def app(client: Client, task_queue: str, secret: str, api_url: str, token: str) -> FastAPI:
    web_client = AsyncWebClient(token=token, base_url=api_url)  # the fake Web API the bot's side uses too
    bolt = AsyncApp(signing_secret=secret, client=web_client, request_verification_enabled=True)

    @bolt.command("/playbook")
    async def run(ack, body) -> None:  # noqa: ANN001 (Bolt's injected arguments)
        await client.start_workflow(BaselineFiveSteps.run, 1, id=f"floor-{body['trigger_id']}", task_queue=task_queue)
        await ack()

    @bolt.action(APPROVE_ACTION)
    async def approve(ack, body) -> None:  # noqa: ANN001
        await ack()
        run_id = json.loads(body["actions"][0]["value"])["run_id"]
        await client.get_workflow_handle(run_id).execute_update(BaselineAwaitUpdate.approve, body["user"]["id"])

    handler = AsyncSlackRequestHandler(bolt)
    web = FastAPI()

    @web.post("/slack/events")
    async def events(request: Request):  # noqa: ANN202
        return await handler.handle(request)

    @web.get("/readyz")
    async def readyz() -> Response:
        return Response("ok")

    return web


async def main(address: str, task_queue: str, port: int, secret: str, api_url: str, token: str) -> None:
    client = await Client.connect(address)
    async with Worker(client, task_queue=task_queue, workflows=[BaselineFiveSteps, BaselineAwaitUpdate],
                      activities=[noop, http_get]):
        # uvicorn as the bot's front door configures it (bot/lifecycle.py Http)
        config = uvicorn.Config(app(client, task_queue, secret, api_url, token), host="127.0.0.1", port=port,
                                log_config=None, lifespan="off")
        await uvicorn.Server(config).serve()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:7]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
