"""Workers in their own processes for the benchmarks, as deployed: front door and worker apart,
on the bot's side and on the floor's alike, so neither side's load generator or HTTP server
shares a loop with the workflows it starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.baseline import BaselineAwaitSignal, BaselineFiveSteps, noop

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def worker_process(
    address: str, task_queue: str, kind: str, env: dict[str, str] | None = None, stderr: Any = asyncio.subprocess.DEVNULL
) -> Any:
    """Workers in their own process on both sides, as deployed (front door and worker apart).

    kind: "bot" (`bot.cli worker`), "floor" (BaselineFiveSteps) or "floor-await" (BaselineAwaitSignal).
    Yields the process, for benchmarks that measure it."""
    if kind == "bot":
        argv = [sys.executable, "-m", "bot.cli", "worker"]
    else:
        argv = [sys.executable, "-m", "bench.workers", address, task_queue, kind]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env={**os.environ, **(env or {}), "PLAYBOOK_BOT_TEMPORAL_ADDRESS": address},
        stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
    )
    await asyncio.sleep(3)  # let it connect and poll
    try:
        yield proc
    finally:
        proc.terminate()
        await proc.wait()


async def floor_worker(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    async with Worker(client, task_queue=task_queue, workflows=[BaselineFiveSteps], activities=[noop]):
        await asyncio.Event().wait()


async def floor_await_worker(address: str, task_queue: str) -> None:
    """Stops on SIGTERM by shutting the worker down (evicting its cached runs) instead of dying mid-run."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    async with Worker(client, task_queue=task_queue, workflows=[BaselineAwaitSignal], activities=[noop]):
        await stop.wait()


if __name__ == "__main__":
    if sys.argv[3:4] == ["floor-await"]:
        asyncio.run(floor_await_worker(sys.argv[1], sys.argv[2]))
        # temporalio can crash in interpreter teardown after a worker ran (sdk-python#300): leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    asyncio.run(floor_worker(sys.argv[1], sys.argv[2]))
