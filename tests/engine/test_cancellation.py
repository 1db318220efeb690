"""Cancels that arrive at awkward moments: each must end in an honest state, never be lost."""

from __future__ import annotations

import asyncio

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError

from bot.policy.activities import PolicyRequest
from bot.policy.models import Decision
from tests.engine.support import Recorder, cancel, execute, playbook, run_input, start, worker


async def test_cancel_during_a_step_that_finishes_anyway_is_not_lost(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: quick-cancel
steps:
  - {id: one, action: t.quick, with: {seconds: 1.5}, compensate: {action: t.ok}}
  - {id: two, action: t.ok}
"""
    )
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        await asyncio.wait_for(rec.started.wait(), 10)
        await cancel(handle)
        status = await handle.result()
    assert status.state == "compensated"
    assert "two" not in rec.sequence(), "a cancelled run must not go on remediating"
    assert rec.sequence() == ["one", "undo one"]


async def test_cancel_during_compensation_lets_the_undo_finish(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: undo-cancel
steps:
  - {id: one, action: t.ok, compensate: {action: t.quick, with: {seconds: 1.5}}}
  - {id: two, action: t.fail, retry: {max_attempts: 1}}
"""
    )
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        await asyncio.wait_for(rec.started.wait(), 10)  # the undo is running
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await cancel(handle)
        status = await handle.result()
    assert "is already ending (compensating): nothing to cancel" in str(refused.value.cause)
    assert status.state == "compensated" and status.cancelled_by is None
    assert [(c.step, c.state) for c in status.compensations] == [("one", "succeeded")]


async def test_cancel_while_asking_policy_is_a_cancel_not_a_deny(dev_env):
    rec = Recorder()
    asked = asyncio.Event()

    @activity.defn(name="policy.decide")
    async def slow_decide(request: PolicyRequest) -> Decision:
        asked.set()
        await asyncio.sleep(2)
        return Decision(allow=True)

    pb = playbook("name: gate-cancel\nsteps: [{id: risky, action: t.ok, impact: high}, {id: after, action: t.ok}]")
    async with worker(dev_env.client, rec, [slow_decide]) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        await asyncio.wait_for(asked.wait(), 10)
        await cancel(handle)
        status = await handle.result()
    assert status.state == "cancelled"
    assert status.step("risky").state == "cancelled" and status.step("risky").error is None
    assert rec.calls == []


async def test_a_template_that_is_not_json_fails_the_step_instead_of_wedging_the_run(dev_env):
    rec = Recorder()
    pb = playbook("name: not-json\nsteps: [{id: one, action: t.ok, with: {items: '{{ range(3) }}'}}]")
    status = await asyncio.wait_for(execute(dev_env.client, rec, pb), 20)
    assert status.step("one").state == "failed"
    assert "not a JSON value" in status.step("one").error


@pytest.mark.parametrize("template", ["{{ params.x | float }}", "{{ [params.x | float] }}"])
async def test_a_template_that_gives_nan_fails_the_step_instead_of_wedging_the_run(dev_env, template):
    """Red team (stop 43): a float that JSON cannot hold (`'nan' | float`, from a param or an alert
    label) passed the render's JSON check; a high-impact step's approval request then failed its
    audit record in workflow code, the workflow task failed on every retry, and the run never
    moved again."""
    from tests.engine.test_approvals import APPROVAL, policy

    rec = Recorder()
    pb = playbook("name: nan-arg\nowner: sre\nparams: {x: {type: string}}\n"
                  f"steps: [{{id: one, action: t.ok, impact: high, with: {{n: '{template}'}}}}]")
    async with worker(dev_env.client, rec, policy(APPROVAL)) as w:
        handle = await start(dev_env.client, w, run_input(pb, params={"x": "nan"}))
        status = await asyncio.wait_for(handle.result(), 20)
    assert status.step("one").state == "failed"
    assert "not a JSON value" in status.step("one").error
