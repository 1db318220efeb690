"""The caller check's bookkeeping: which executions it asks Temporal about, and which it takes on
a local activity's word. The attacks themselves (a workflow of an attacker's own worker calling the
bot's activities) run against the real dev server in tests/security/test_raw_temporal.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import (
    Client, DescribeWorkflowInput, Interceptor as ClientInterceptor, OutboundInterceptor,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from bot.audit.store import SqliteAuditStore, default_path
from bot.engine.callers import CALLER_REFUSED, OwnWorkflowsOnly
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.conftest import ROOT
from tests.engine.support import Recorder, catalog_of, execute, playbook, run_input

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

    async def _describe(self, workflow_id: str, run_id: str | None, asker: str,  # type: ignore[override]
                        client: Any = None) -> tuple[str, str]:
        self.asked.append(run_id or "")
        return self.answers[run_id or ""]


async def answered(callers: OwnWorkflowsOnly) -> None:
    """The questions under way answered, and their answers kept."""
    await asyncio.gather(*callers._asking.values(), return_exceptions=True)
    await asyncio.sleep(0)  # (kept by the done callbacks)


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


async def test_a_local_step_finds_the_answer_its_admission_asked_for() -> None:
    """Every run's admission asks early: a `core.log` step records itself (checked), and finds the
    answer there."""
    callers = Counted({"r-1": ("PlaybookRun", QUEUE)})
    await callers.check(local(RUN))
    await asyncio.sleep(0)
    await callers.check(local(RUN, activity_type="core.log"))
    await callers.check(local(RUN, activity_type="slack.sync"))
    assert callers.asked == ["r-1"]


@pytest.mark.parametrize("answering", ["run.admit", "lock.verify"])
async def test_local_activities_whose_only_effect_is_their_answer_are_not_checked(answering: str) -> None:
    """They only start the question (for what the execution does next), and are refused once its
    answer is known."""
    callers = Counted({"r-1": ("PlaybookRun", "mallory")})
    await callers.check(local(RUN, activity_type=answering))  # not refused, not waited for
    await answered(callers)
    assert callers.asked == ["r-1"]
    with pytest.raises(ApplicationError) as refused:
        await callers.check(local(RUN, activity_type=answering))
    assert refused.value.type == CALLER_REFUSED


@pytest.mark.parametrize("answering", ["run.admit", "policy.approver"])
async def test_an_answering_local_activity_handed_events_to_write_is_checked(answering: str) -> None:
    """`run.admit` and the policy questions write the audit events they are handed: the bot's code
    hands a local one none, and one that is handed some is checked like any that writes."""
    callers = Counted({"r-1": ("PlaybookRun", "mallory")})
    handed = types.SimpleNamespace(audit=["an event"])
    with pytest.raises(ApplicationError) as refused:
        await callers.check(local(RUN, activity_type=answering), [handed])
    assert refused.value.type == CALLER_REFUSED


@pytest.mark.parametrize("acting", ["audit.record", "slack.sync", "core.log", "lock.seal", "policy.decide",
                                    "policy.approver", "playbook.snapshot", "someday.new"])
async def test_local_activities_that_act_are_refused_for_an_execution_on_another_queue(acting: str) -> None:
    """The sticky-queue redirect (docs/security.md): the bot's code, replaying a history Mallory's
    worker wrote, runs its next local activities here. Every one that acts asks Temporal first, as
    a regular activity does, and is refused: `audit.record` and a `core.log` step write the trail,
    `slack.sync` posts as the bot, `lock.seal` seals with the worker's keys (a holders list
    Mallory's lock chain could hand to a lock execution on the bot's queue), the approver question
    evaluates the policy on a step of her playbook, a snapshot reads the catalog for her, and a local
    activity nobody listed as only answering is checked by default."""
    callers = Counted({"r-1": ("PlaybookRun", "mallory"), "r-2": ("PlaybookRun", QUEUE)})
    with pytest.raises(ApplicationError) as refused:
        await callers.check(local(RUN, activity_type=acting))
    assert refused.value.type == CALLER_REFUSED
    assert "its tasks go to queue 'mallory'" in refused.value.message
    await callers.check(local(RUN, activity_type=acting, workflow_run_id="r-2"))  # the bot's own run
    assert callers.asked == ["r-1", "r-2"]


async def test_a_lock_seal_for_a_lock_execution_on_another_queue_is_refused() -> None:
    callers = Counted({"r-1": ("KeyLock", "mallory")})
    with pytest.raises(ApplicationError) as refused:
        await callers.check(local(RUN, workflow_type="KeyLock", activity_type="lock.seal"))
    assert refused.value.type == CALLER_REFUSED


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
        async def _describe(self, workflow_id: str, run_id: str | None, asker: str,  # type: ignore[override]
                            client: Any = None) -> tuple[str, str]:
            if not self.asked:
                self.asked.append("failed")
                raise ApplicationError("Temporal did not answer", type="CallerUnknown")
            return await super()._describe(workflow_id, run_id, asker, client)

    callers = FailingOnce({"r-1": ("PlaybookRun", QUEUE)})
    await callers.check(local(RUN))
    await asyncio.sleep(0)
    await callers.check(RUN)
    assert callers.asked == ["failed", "r-1"]


async def test_an_execution_the_runner_hands_over_is_asked_about_before_any_activity() -> None:
    """`expect` (the sandbox runner, as the execution's first task arrives) starts the question;
    the admission and the first step then find it under way or answered, and ask nothing more."""
    callers = Counted({"r-1": ("PlaybookRun", QUEUE)})
    callers.client = object()  # type: ignore[assignment]  (any client: Counted answers itself)
    callers.expect("run-1", "r-1", "PlaybookRun")
    callers.expect("run-1", "r-1", "PlaybookRun")  # a replay after eviction: asked once
    await callers.check(local(RUN))
    await callers.check(RUN)
    assert callers.asked == ["r-1"]


async def test_expect_asks_nothing_for_another_type_or_without_a_client() -> None:
    callers = Counted({})
    callers.expect("run-1", "r-1", "PlaybookRun")  # no client: the activities ask, as before
    callers.client = object()  # type: ignore[assignment]
    callers.expect("other-1", "o-1", "Other")
    await asyncio.sleep(0)
    assert callers.asked == [] and not callers._asking


async def test_the_workers_runner_hands_each_new_execution_to_its_caller_check(dev_env: WorkflowEnvironment) -> None:
    worker = make_worker(dev_env.client, f"tq-{uuid.uuid4()}", [])
    config = worker.config()
    (callers,) = [i for i in config["interceptors"] if isinstance(i, OwnWorkflowsOnly)]
    runner = config["workflow_runner"]
    assert callers.client is not None
    assert getattr(runner, "on_instance", None) == callers.expect


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


async def test_a_run_of_local_steps_passes_the_check_with_one_describe_on_the_real_server(
        dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """`core.log` runs as a local activity and is checked: the run still completes, its step
    recorded in the trail, asking Temporal once."""
    counter = DescribeCounter()
    client = Client(**{**dev_env.client.config(), "interceptors": [counter]})
    pb = playbook("name: local-only\nsteps: [{id: note, action: core.log, with: {message: hi}}]\n")
    settings = Settings(data_dir=tmp_path / "data", policies_dir=ROOT / "policies")
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            status = await client.execute_workflow(PlaybookRun.run, run_input(pb), id=f"local-{uuid.uuid4()}",
                                                   task_queue=worker.task_queue)
    assert status.state == "completed" and status.step("note").state == "succeeded", status.error
    assert len(counter.described) == 1
    kinds = [e.kind for e in SqliteAuditStore(default_path(settings)).events(status.run_id)]
    assert "step_succeeded" in kinds
