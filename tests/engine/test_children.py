"""`run.peek`, the parent's read of its child's status, against a squatter of the child's id.

A parent holds its `playbook.run` step until the child's own status says the child holds for it
(`held_by`, `parent_run`). Anyone who can reach Temporal can terminate the genuine child and start
a workflow of type PlaybookRun under the child's id on a queue of theirs, whose worker answers the
`status` query with whatever it likes: a child that holds for the parent, with an output that the
parent's later steps may template on. The peek believes only a status answered on the bot's own
queue (where the bot's code answers it).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bot.engine.children import Peek, PeekActivities, PeekRequest
from bot.engine.state import RunStatus

PARENT = "parent-1"


@workflow.defn(name="PlaybookRun", sandboxed=False)
class Squatter:
    """Mallory's workflow under the child's id: her worker answers its status query."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.query(name="status")
    def status(self) -> RunStatus:
        return RunStatus(run_id=workflow.info().workflow_id, playbook="restricted", playbook_hash="x",
                         requested_by="slack:U0BOB", trigger="playbook", state="running",
                         held_by=PARENT, parent_run=PARENT)


@pytest_asyncio.fixture
async def squatted(dev_env: WorkflowEnvironment) -> AsyncIterator[tuple[Client, str]]:
    client, child_id = dev_env.client, f"child-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=f"mallory-{uuid.uuid4()}", workflows=[Squatter],
                      workflow_runner=UnsandboxedWorkflowRunner()) as worker:
        handle = await client.start_workflow(Squatter.run, id=child_id, task_queue=worker.task_queue)
        yield client, child_id
        await handle.terminate("test over")


def peek_on(queue: str) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, task_queue=queue, workflow_type="PlaybookRun")
    return env


async def test_a_status_answered_on_someone_elses_queue_is_not_believed(squatted: tuple[Client, str]) -> None:
    client, child_id = squatted
    peek: Peek = await peek_on("playbook-bot").run(PeekActivities(client).peek, PeekRequest(run_id=child_id))
    assert peek == Peek(), "the squatter's forged status was read as the child's"


async def test_the_same_status_on_the_bots_own_queue_is_read(squatted: tuple[Client, str]) -> None:
    """The control: the peek reads a running PlaybookRun's status where the bot's code answers it."""
    client, child_id = squatted
    queue = (await client.get_workflow_handle(child_id).describe()).task_queue
    peek: Peek = await peek_on(queue).run(PeekActivities(client).peek, PeekRequest(run_id=child_id))
    assert peek.running and peek.status is not None and peek.status.held_by == PARENT
