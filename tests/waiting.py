"""Waiting for something that happens elsewhere (a worker, a server) without sleeping blindly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition",
                     interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def terminate_open(client: Any, task_queue: str) -> None:
    """On the way out of a test stack: terminate the runs of its task queue still open (one
    that completes meanwhile is fine)."""
    from temporalio.service import RPCError, RPCStatusCode

    for w in [w async for w in client.list_workflows(f'TaskQueue = "{task_queue}" AND ExecutionStatus = "Running"')]:
        try:
            await client.get_workflow_handle(w.id).terminate("test over")
        except RPCError as exc:  # it completed since it was listed
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
