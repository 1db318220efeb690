"""What talks to a KeyLock workflow from outside workflow code: the worker's `lock.request` and
`lock.alive` activities, and the front doors' look at who holds a key before they start a run.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from bot.engine.lock_workflow import KeyLock
from bot.engine.locking import ACQUIRE_SIGNAL, LiveRequest, LiveResult, LockRequest, LockState, lock_workflow_id

QUERY_TIMEOUT = timedelta(seconds=5)
RUNNING = WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING


class LockActivities:
    """Holds the Temporal client the lock activities signal and describe with."""

    def __init__(self, client: Client, check_seconds: float = 5.0, idle_seconds: float = 60.0) -> None:
        self.client = client
        self.check_seconds = check_seconds
        self.idle_seconds = idle_seconds

    def all(self) -> list[Any]:
        return [self.request, self.alive]

    @activity.defn(name="lock.request")
    async def request(self, request: LockRequest) -> None:
        """Ask the key's lock for a slot, creating the lock if there is none (signal-with-start is
        atomic: two first askers meet in one lock). The answer comes to the run as a signal."""
        await self.client.start_workflow(
            KeyLock.run,
            LockState(key=request.key, check_seconds=self.check_seconds, idle_seconds=self.idle_seconds),
            id=lock_workflow_id(request.key),
            task_queue=activity.info().task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=ACQUIRE_SIGNAL,
            start_signal_args=[request],
            static_summary=f"lock {request.key[:80]}",
        )

    @activity.defn(name="lock.alive")
    async def alive(self, request: LiveRequest) -> LiveResult:
        """Which of these runs have ended (or never existed): they hold and wait for nothing."""

        async def ended(run_id: str) -> bool:
            try:
                desc = await self.client.get_workflow_handle(run_id).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return True
                raise
            return desc.raw_description.workflow_execution_info.status != RUNNING

        flags = await asyncio.gather(*(ended(run_id) for run_id in request.run_ids))
        return LiveResult(ended=[run_id for run_id, gone in zip(request.run_ids, flags) if gone])


async def busy_holder(client: Client, key: str, limit: int) -> str | None:
    """The run holding `key` when a new run could not have it now, else None. Front doors ask
    before starting a refuse/attach run, to answer at once; the worker enforces it again, since
    another run may take the key meanwhile. A lock that cannot be asked reads as free: the
    worker decides then."""
    handle = client.get_workflow_handle(lock_workflow_id(key))
    try:
        desc = await handle.describe()
        if desc.raw_description.workflow_execution_info.status != RUNNING:
            return None
        state = await handle.query(KeyLock.state, rpc_timeout=QUERY_TIMEOUT)
    except RPCError:
        return None
    holders = [h.run_id for h in state.holders if not h.nested]
    if holders and (len(holders) >= limit or state.waiters):
        return holders[0]
    return None
