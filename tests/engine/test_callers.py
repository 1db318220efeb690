"""The caller check's bookkeeping: which executions it asks Temporal about, and which it takes on
a local activity's word. The attacks themselves (a workflow of an attacker's own worker calling the
bot's activities) run against the real dev server in tests/security/test_raw_temporal.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import types
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import (
    Client, DescribeWorkflowInput, Interceptor as ClientInterceptor, OutboundInterceptor,
)
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
    return dataclasses.replace(info, **{"is_local": True, "activity_type": "run.admit", **changes})


async def test_a_runs_local_activity_starts_the_question_its_first_step_needs() -> None:
    """Admission is a local activity: the describe starts there, and the step finds its answer."""
    callers = Counted({"r-1": ("PlaybookRun", QUEUE)})
    await callers.check(local(RUN))
    await asyncio.sleep(0)  # the early question runs while the workflow task completes
    assert callers.asked == ["r-1"]
    await callers.check(RUN)
    assert callers.asked == ["r-1"]


@pytest.mark.parametrize(("steps", "asked"), [
    ("[{id: a, action: core.log, with: {message: hi}}]", []),
    ("[{id: a, action: core.log, with: {message: hi}}, {id: b, action: t.ok}]", ["r-1"]),
    ("[{id: each, foreach: '[1, 2]', steps: [{id: n, action: core.log, with: {message: hi}}]}]", ["r-1"]),
], ids=["local steps only", "a regular step", "a foreach"])
async def test_admission_asks_early_only_for_a_run_that_will_schedule_activities(steps: str, asked: list[str]) -> None:
    """A run of local steps only never needs the answer: its admission asks nothing (one describe
    saved per run of the storm bench's playbook)."""
    callers = Counted({"r-1": ("PlaybookRun", QUEUE)})
    request = types.SimpleNamespace(playbook=playbook(f"name: p\nsteps: {steps}\n"))
    await callers.check(local(RUN), [request])
    await asyncio.sleep(0)
    assert callers.asked == asked


async def test_local_activities_that_only_ask_are_not_checked() -> None:
    callers = Counted({"r-1": ("PlaybookRun", "mallory")})
    await callers.check(local(RUN, activity_type="policy.approver"))
    await asyncio.sleep(0)
    assert callers.asked == []


@pytest.mark.parametrize("writing", ["audit.record", "slack.sync"])
async def test_local_activities_that_write_are_refused_for_an_execution_on_another_queue(writing: str) -> None:
    """The sticky-queue redirect (docs/security.md): the bot's code, replaying a history Mallory's
    worker wrote, runs its next local activities here. Those that write into the trail or post to
    Slack as the bot ask Temporal first, as a regular activity does: refused."""
    callers = Counted({"r-1": ("PlaybookRun", "mallory"), "r-2": ("PlaybookRun", QUEUE)})
    with pytest.raises(ApplicationError) as refused:
        await callers.check(local(RUN, activity_type=writing))
    assert refused.value.type == CALLER_REFUSED
    await callers.check(local(RUN, activity_type=writing, workflow_run_id="r-2"))  # the bot's own run
    assert callers.asked == ["r-1", "r-2"]


async def test_without_a_local_activity_the_step_asks_once() -> None:
    callers = Counted({"r-1": ("PlaybookRun", QUEUE)})
    await callers.check(RUN)
    await callers.check(RUN)
    assert callers.asked == ["r-1"]


async def test_a_local_activity_does_not_vouch_for_an_execution_on_another_queue() -> None:
    """The attack on a vouch: an execution on Mallory's queue sends one of its workflow tasks to
    this worker (a sticky queue is named by the worker that completed the task before), so a local
    activity runs here for it; then her own worker schedules http.request on the bot's queue. Only
    Temporal's answer decides: refused."""
    callers = Counted({"r-1": ("PlaybookRun", "mallory")})
    await callers.check(local(RUN))
    with pytest.raises(ApplicationError) as refused:
        await callers.check(RUN)
    assert refused.value.type == CALLER_REFUSED
    assert "its tasks go to queue 'mallory'" in refused.value.message


async def test_an_early_question_that_fails_is_asked_again_by_the_step() -> None:
    class FailingOnce(Counted):
        async def _describe(self, info: activity.Info) -> tuple[str, str]:  # type: ignore[override]
            if not self.asked:
                self.asked.append("failed")
                raise ApplicationError("Temporal did not answer", type="CallerUnknown")
            return await super()._describe(info)

    callers = FailingOnce({"r-1": ("PlaybookRun", QUEUE)})
    await callers.check(local(RUN))
    await asyncio.sleep(0)
    await callers.check(RUN)
    assert callers.asked == ["failed", "r-1"]


async def test_a_local_activity_of_a_type_the_worker_does_not_run_asks_nothing() -> None:
    callers = Counted({})
    await callers.check(local(RUN, workflow_type="Other"))
    await asyncio.sleep(0)
    assert callers.asked == []


class DescribeCounter(ClientInterceptor):
    """Counts the describes a client makes (the worker's activities ask with the worker's client)."""

    def __init__(self) -> None:
        self.described: list[tuple[str, float]] = []  # (workflow id, time.monotonic())

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counter = self

        class Counting(OutboundInterceptor):
            async def describe_workflow(self, input: DescribeWorkflowInput) -> Any:
                counter.described.append((input.id, time.monotonic()))
                return await super().describe_workflow(input)

        return Counting(next)


async def test_a_runs_describe_starts_before_its_first_step_on_the_real_server(dev_env: WorkflowEnvironment) -> None:
    """The run's admission (a local activity) starts the question: one describe, made before the
    step's activity began, not by it."""
    counter = DescribeCounter()
    client = Client(**{**dev_env.client.config(), "interceptors": [counter]})
    rec = Recorder()
    status = await execute(client, rec, playbook("""
name: one
steps:
  - {id: a, action: t.ok}
"""))
    assert status.state == "completed" and [c[0] for c in rec.calls] == ["a"]
    [(_, asked_at)] = counter.described
    assert asked_at < rec.spans["a"][0]

