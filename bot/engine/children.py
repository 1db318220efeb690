"""What sub-playbooks (format v1.1 `playbook.run`) need outside workflow code: the child's
snapshot from the worker's own catalog, and a look at another run's status.

Parent and child runs wake each other with a `poke` signal that says nothing; the woken run then
reads the other's status with `run.peek` (a query the worker answers from that run's own state).
Anyone who can reach Temporal can send a signal, but nobody can make a run's status say what it
does not, so a forged poke costs one query and changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

import structlog
from pydantic import BaseModel
from temporalio import activity
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from bot.engine.state import RunStatus, StepStatus
from bot.playbook.loader import Catalog, UnknownPlaybook
from bot.playbook.model import Playbook

log = structlog.get_logger(__name__)

PEEK_TIMEOUT = timedelta(seconds=10)
RUNNING = WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING


class SnapshotRequest(BaseModel):
    name: str
    # The child's content hash when the parent was admitted (None: a run admitted before pinning).
    pinned: str | None = None


class Snapshot(BaseModel):
    """The catalog's playbook of that name, or why there is none."""

    playbook: Playbook | None = None
    playbook_hash: str = ""
    error: str | None = None


class PeekRequest(BaseModel):
    run_id: str


class Peek(BaseModel):
    running: bool = False
    status: RunStatus | None = None


class CatalogActivities:
    """`playbook.snapshot`: a child run only ever runs a playbook of this worker's catalog."""

    def __init__(self, catalog: Callable[[], Catalog]) -> None:
        self.catalog = catalog

    def all(self) -> list[Any]:
        return [self.snapshot]

    @activity.defn(name="playbook.snapshot")
    async def snapshot(self, request: SnapshotRequest) -> Snapshot:
        try:
            loaded = self.catalog().get(request.name)
        except UnknownPlaybook as exc:
            return Snapshot(error=f"{exc}: deploy the same playbooks to front doors and workers")
        if request.pinned is not None and loaded.hash != request.pinned:
            # Red team: a child edited while its parent waited for an approval ran as edited, so a
            # vote set off steps nobody was shown. What runs is what the run was admitted with.
            return Snapshot(error=f"playbook {request.name!r} changed since this run was admitted (then "
                                  f"{request.pinned[:19]}, now {loaded.hash[:19]}): what was approved is not what "
                                  "would run; start a new run to run the new version")
        return Snapshot(playbook=loaded.playbook, playbook_hash=loaded.hash)


class PeekActivities:
    """`run.peek`: a run's status as its own workflow answers it (not what a signal claims), read
    only where the bot's code answers it: a PlaybookRun on this worker's queue."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def all(self) -> list[Any]:
        return [self.peek]

    @activity.defn(name="run.peek")
    async def peek(self, request: PeekRequest) -> Peek:
        handle = self.client.get_workflow_handle(request.run_id)
        try:
            desc = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return Peek()
            raise
        if desc.workflow_type != "PlaybookRun" or desc.raw_description.workflow_execution_info.status != RUNNING:
            return Peek()
        if desc.task_queue != activity.info().task_queue:
            # Someone else's worker would answer the query: a PlaybookRun started under the child's
            # id (the genuine child terminated) on their queue could claim to hold for the parent.
            log.warning("a run under the child's id is not on this worker's queue: its status is not read",
                        run_id=request.run_id, task_queue=desc.task_queue)
            return Peek()
        status = await handle.query("status", result_type=RunStatus, rpc_timeout=PEEK_TIMEOUT)
        return Peek(running=True, status=peeked(status))


def peeked(status: RunStatus) -> RunStatus:
    """What a peer run reads of `status` (bot/engine/subplaybooks.py), and no more: a peek's result
    lands in the asker's history, once per poke, and anyone who can reach Temporal can poke (a
    1.5 MiB status per forged poke filled a parent's 50 MB in 30: review, stop 53). Its state,
    whom it holds for and its children's verdicts; its steps' states and outputs (the call step's
    report) only once it holds or has ended, when its parent reads them."""
    reported = status.held_by is not None or status.finished
    steps = [StepStatus(id=s.id, action=s.action, state=s.state, output=s.output if reported else None)
             for s in status.steps]
    return RunStatus(run_id=status.run_id, execution=status.execution, playbook=status.playbook,
                     playbook_hash=status.playbook_hash, state=status.state, requested_by=status.requested_by,
                     trigger=status.trigger, steps=steps, cancelled_by=status.cancelled_by,
                     parent_run=status.parent_run, parent_step=status.parent_step, held_by=status.held_by,
                     children=status.children, lock_key=status.lock_key, waiting_for=status.waiting_for)
