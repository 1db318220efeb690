"""The caller check's bookkeeping: which executions it asks Temporal about, and which it takes on
a local activity's word. The attacks themselves (a workflow of an attacker's own worker calling the
bot's activities) run against the real dev server in tests/security/test_raw_temporal.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, DescribeWorkflowInput, Interceptor, OutboundInterceptor
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from bot.engine.callers import CALLER_REFUSED, OwnWorkflowsOnly
from tests.engine.support import Recorder, execute, playbook

QUEUE = "playbook-bot"
RUN = dataclasses.replace(
    ActivityEnvironment().info, workflow_type="PlaybookRun", workflow_id="run-1", workflow_run_id="r-1",
    task_queue=QUEUE, activity_type="http.request",
)


class Counted(OwnWorkflowsOnly):
    """The check, with Temporal's answers given here and the questions counted."""

    def __init__(self, answers: dict[str, tuple[str, str]]) -> None:
        super().__init__(["PlaybookRun", "KeyLock"])
        self.answers = answers
        self.asked: list[str] = []

    async def _describe(self, info: activity.Info) -> tuple[str, str]:  # type: ignore[override]
        self.asked.append(info.workflow_run_id or "")
        return self.answers[info.workflow_run_id or ""]


def local(info: activity.Info, **changes: Any) -> activity.Info:
    return dataclasses.replace(info, is_local=True, activity_type="run.admit", **changes)


async def test_a_runs_local_activity_spares_its_first_steps_describe() -> None:
    """Admission is a local activity: the worker holds the run's task, so the run is its own."""
    callers = Counted({})
    await callers.check(local(RUN))
    await callers.check(RUN)
    assert callers.asked == []


async def test_without_a_local_activity_the_step_asks_once() -> None:
    callers = Counted({"r-1": ("PlaybookRun", QUEUE)})
    await callers.check(RUN)
    await callers.check(RUN)
    assert callers.asked == ["r-1"]


async def test_a_local_activity_vouches_only_for_its_own_execution_and_queue() -> None:
    """Another run of the same id, another queue's activity, another workflow type: still asked,
    and refused on Temporal's answer."""
    callers = Counted({"r-2": ("Mallory", "elsewhere"), "r-1": ("PlaybookRun", "elsewhere")})
    await callers.check(local(RUN))
    with pytest.raises(ApplicationError) as refused:
        await callers.check(dataclasses.replace(RUN, workflow_run_id="r-2"))
    assert refused.value.type == CALLER_REFUSED
    with pytest.raises(ApplicationError) as refused:  # the same execution, on another worker's queue
        await callers.check(dataclasses.replace(RUN, task_queue="other-queue"))
    assert refused.value.type == CALLER_REFUSED
    assert callers.asked == ["r-2", "r-1"]


async def test_a_local_activity_of_a_type_the_worker_does_not_run_vouches_for_nothing() -> None:
    callers = Counted({"r-1": ("PlaybookRun", QUEUE)})
    await callers.check(local(RUN, workflow_type="Other"))
    await callers.check(RUN)
    assert callers.asked == ["r-1"]


class DescribeCounter(Interceptor):
    """Counts the describes a client makes (the worker's activities ask with the worker's client)."""

    def __init__(self) -> None:
        self.described: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counter = self

        class Counting(OutboundInterceptor):
            async def describe_workflow(self, input: DescribeWorkflowInput) -> Any:
                counter.described.append(input.id)
                return await super().describe_workflow(input)

        return Counting(next)


async def test_a_run_on_the_real_server_reaches_its_first_step_without_a_describe(dev_env: WorkflowEnvironment) -> None:
    """Local activities carry their execution on a real worker too: the run's admission vouches,
    and its step (a regular activity) acts without asking Temporal first."""
    counter = DescribeCounter()
    client = Client(**{**dev_env.client.config(), "interceptors": [counter]})
    rec = Recorder()
    status = await execute(client, rec, playbook("""
name: one
steps:
  - {id: a, action: t.ok}
"""))
    assert status.state == "completed" and [c[0] for c in rec.calls] == ["a"]
    assert counter.described == []
