"""Waiting for something that happens elsewhere (a worker, a server) without sleeping blindly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecution

from bot.engine.runs import RunError, get_status
from bot.engine.state import RunStatus


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


async def admitted(client: Client, run_id: str) -> RunStatus | None:
    """The run's status once the worker admitted it, else None. A run reads `running` from its
    first workflow task, while its admission is still on the way; the requester, as the worker
    verified it, is filled in only once admission answered."""
    try:
        status = await get_status(client, run_id)
    except RunError:  # not started yet, or no worker has answered its first query yet
        return None
    return status if status.state != "pending" and status.requester is not None else None


CONTROL_PREFIX = "listing-control-"  # listings in tests leave these out


async def settled_runs(client: Client, task_queue: str, timeout: float = 20.0) -> list[WorkflowExecution]:
    """The executions on `task_queue` as Temporal lists them, read once a control run, started
    now, shows up in the same listing.

    The listing is eventually consistent: read straight after a refused request, an empty answer
    proves nothing. The control starts after the request was answered, so a listing that shows it
    has caught up with anything the request could have started. The control never runs (its first
    task is an hour away), is terminated at once, and is left out of the answer."""
    control = await client.start_workflow(
        "PlaybookRun", id=f"{CONTROL_PREFIX}{uuid.uuid4()}", task_queue=task_queue, start_delay=timedelta(hours=1)
    )
    listing = f'TaskQueue = "{task_queue}"'
    try:
        async def with_control() -> list[WorkflowExecution] | None:
            runs = [w async for w in client.list_workflows(listing)]
            return runs if any(w.id == control.id for w in runs) else None

        runs = await eventually(with_control, timeout=timeout, what="a control run in Temporal's listing")
    finally:
        await control.terminate("listing control")
    return [w for w in runs if not is_control(w.id)]


def is_control(workflow_id: str) -> bool:
    return workflow_id.startswith(CONTROL_PREFIX)


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
