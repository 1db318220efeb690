"""The floor's worker process (bench/topology.py starts it): a plain temporalio worker running the
hand-written workflows, as `playbook-bot worker` runs the bot's, each in its own process.

    python -m bench.workers TEMPORAL_ADDRESS TASK_QUEUE floor|floor-await|floor-http
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.baseline import BaselineAwaitSignal, BaselineFiveSteps, BaselineHttp, http_get, noop


async def floor_worker(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    async with Worker(client, task_queue=task_queue, workflows=[BaselineFiveSteps], activities=[noop]):
        await asyncio.Event().wait()


async def floor_http_worker(address: str, task_queue: str) -> None:
    """Runs whose first activity is an HTTP request (bench/latency.py)."""
    client = await Client.connect(address)
    async with Worker(client, task_queue=task_queue, workflows=[BaselineHttp], activities=[http_get]):
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
    elif sys.argv[3:4] == ["floor-http"]:
        asyncio.run(floor_http_worker(sys.argv[1], sys.argv[2]))
    else:
        asyncio.run(floor_worker(sys.argv[1], sys.argv[2]))
