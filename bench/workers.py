"""Workers in their own processes for the benchmarks, as deployed: front door and worker apart,
on the bot's side and on the floor's alike, so neither side's load generator or HTTP server
shares a loop with the workflows it starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.baseline import BaselineFiveSteps, noop

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def worker_process(address: str, task_queue: str, kind: str, env: dict[str, str] | None = None) -> Any:
    """Workers in their own process on both sides, as deployed (front door and worker apart)."""
    if kind == "bot":
        argv = [sys.executable, "-m", "bot.cli", "worker"]
    else:
        argv = [sys.executable, "-m", "bench.workers", address, task_queue]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env={**os.environ, **(env or {}), "PLAYBOOK_BOT_TEMPORAL_ADDRESS": address},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(3)  # let it connect and poll
    try:
        yield
    finally:
        proc.terminate()
        await proc.wait()


async def floor_worker(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    async with Worker(client, task_queue=task_queue, workflows=[BaselineFiveSteps], activities=[noop]):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(floor_worker(sys.argv[1], sys.argv[2]))
