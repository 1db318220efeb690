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
from pydantic_core import to_json
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bot.engine.children import Peek, PeekActivities, PeekRequest, peeked
from bot.engine.state import ChildCall, RunStatus, StepStatus
from bot.engine.subplaybooks import child_report

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


def test_a_peek_carries_what_a_peer_reads_and_no_more():
    """Review (stop 53): a peek's result lands in the asker's history once per poke, and anyone who
    can reach Temporal can poke: a child's whole status (1.5 MiB) per forged poke filled its
    parent's 50 MB in 30. Outputs go only once the child holds, when its parent reads them."""
    big = {"o": "y" * 500_000}
    steps = [StepStatus(id="a", action="t.ok", state="succeeded", args={"a": "x" * 200_000}, output=big, error="e" * 2000)]
    running = RunStatus(run_id="p.call", playbook="child", playbook_hash="h", requested_by="cli:a", trigger="playbook",
                        state="running", params={"p": "z" * 60_000}, steps=steps, parent_run="p", trace=["a"] * 1000,
                        children=[ChildCall(step="inner", run_id="p.call.inner", playbook="grandchild")])
    slim = peeked(running)
    assert len(to_json(slim)) < 1000 and slim.step("a").state == "succeeded" and slim.step("a").output is None
    assert (slim.parent_run, slim.children, slim.held_by) == ("p", running.children, None)
    held = peeked(running.model_copy(update={"held_by": "p"}))
    assert child_report(held) == {"state": "running", "steps": {"a": {"output": big, "state": "succeeded"}}}
