"""Attack: skip the run and call the bot's activities straight from a workflow of one's own.

Anyone who can reach the namespace can run a worker. Its workflow can schedule the bot's
activities on the bot's task queue, and the bot's worker runs them: admission, the policy gate and
approvals live in the PlaybookRun workflow, which this path never enters (docs/security.md, "What
access to Temporal grants"). A strict xfail until activities check who scheduled them.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tests.security.test_child_runs import DATA, PLAYBOOKS
from tests.security.trust_stack import TrustStack, trust_stack


@workflow.defn(name="Direct")
class Direct:
    """Mallory's workflow: one `http.request` on the bot's queue, params of her choosing."""

    @workflow.run
    async def run(self, args: list[Any]) -> Any:
        url, queue, run_id = args
        return await workflow.execute_activity(
            "http.request",
            {"run_id": run_id, "step_id": "poke", "playbook": "restricted", "action": "http.request",
             "params": {"method": "POST", "url": url}, "idempotency_key": f"{run_id}:poke"},
            task_queue=queue, start_to_close_timeout=timedelta(seconds=10), retry_policy=RetryPolicy(maximum_attempts=1))


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("direct"), PLAYBOOKS, DATA) as s:
        yield s


@pytest.mark.xfail(strict=True, reason=(
    "OPEN (stop 34): the bot's activities run for any workflow that schedules them on the bot's "
    "queue; they should act only for an admitted PlaybookRun of the bot's (and namespace access "
    "stays the real boundary: a worker polling the bot's own queue can pose as one)"))
async def test_a_workflow_of_an_attackers_own_worker_cannot_run_the_bots_actions(stack: TrustStack) -> None:
    queue, run_id = f"mallory-{uuid.uuid4()}", f"direct-{uuid.uuid4().hex[:8]}"
    async with Worker(stack.client, task_queue=queue, workflows=[Direct], workflow_runner=UnsandboxedWorkflowRunner()):
        try:
            await stack.client.execute_workflow("Direct", [f"{stack.sink.url}/{run_id}/poke", stack.task_queue, run_id],
                                                id=f"mallory-{uuid.uuid4().hex[:8]}", task_queue=queue)
        except Exception:  # noqa: BLE001  refused: what the fix should make happen
            pass
    assert stack.sink.of(run_id) == [], "mallory's workflow ran the bot's http.request"
