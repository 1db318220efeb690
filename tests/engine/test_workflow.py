"""PlaybookRun on a real Temporal dev server: order, saga, cancel, parallel groups, `when`."""

from __future__ import annotations

import asyncio
import uuid

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy

from bot.actions.base import ActionInput, ActionResult
from bot.engine.state import CancelRequest
from bot.engine.workflow import PlaybookRun

from tests.engine.support import Recorder, cancel, execute, playbook, run_input, start, wait_for_state, worker

SAGA = """
name: saga
steps:
  - id: one
    action: t.ok
    with: {n: 1}
    compensate: {action: t.ok, with: {undo_of: "{{ steps.one.output.id }}"}}
  - id: two
    action: t.ok
    compensate: {action: t.ok}
  - id: three
    action: t.fail
    retry: {max_attempts: 1}
"""


async def test_saga_undoes_completed_steps_in_reverse(dev_env):
    rec = Recorder()
    status = await execute(dev_env.client, rec, playbook(SAGA))
    assert rec.sequence() == ["one", "two", "three", "undo two", "undo one"]
    assert status.state == "compensated"
    assert [(s.id, s.state) for s in status.steps] == [("one", "compensated"), ("two", "compensated"), ("three", "failed")]
    assert status.step("three").error == "three broke on attempt 1"
    assert [(c.step, c.state) for c in status.compensations] == [("two", "succeeded"), ("one", "succeeded")]
    # the undo saw the output of the step it undoes
    assert rec.calls[-1][2] == {"undo_of": "one-out"}


async def test_idempotency_keys_are_run_execution_and_step(dev_env):
    rec = Recorder()
    status = await execute(dev_env.client, rec, playbook(SAGA))
    scope = f"{status.run_id}/{status.execution.replace('-', '')}"
    assert rec.keys == [f"{scope}:one", f"{scope}:two", f"{scope}:two:undo", f"{scope}:one:undo"]


async def test_a_rerun_under_the_same_run_id_has_keys_of_its_own(dev_env):
    """Red-team finding (stop 48): an episode's rerun (`on_rerun: start`, once Temporal forgot the
    first run) has the first run's id, and had its keys: `k8s.rollout_restart` found the first run's
    record and restarted nothing, reporting success. Each execution now keys its own actions."""
    rec = Recorder()
    pb = playbook(SAGA)
    run_id = f"alert-saga-{uuid.uuid4().hex}"
    async with worker(dev_env.client, rec) as w:
        for _ in range(2):  # (the second start: what the front door does once the first run is forgotten)
            await (await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb), id=run_id, task_queue=w.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)).result()
    first, second = rec.keys[:4], rec.keys[4:]
    assert len(second) == 4 and not set(first) & set(second)
    assert all(key.startswith(f"{run_id}/") for key in rec.keys)


async def test_failing_compensation_leaves_run_failed_with_what_was_not_undone(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: bad-undo
steps:
  - id: one
    action: t.ok
    compensate: {action: t.ok}
  - id: two
    action: t.ok
    compensate: {action: t.fail, retry: {max_attempts: 2, initial_interval: 10ms}, with: {retryable: true}}
  - id: three
    action: t.fail
"""
    )
    status = await execute(dev_env.client, rec, pb)
    assert status.state == "failed"
    assert status.not_undone == ["two"]
    assert status.step("two").state == "compensation_failed"
    assert status.step("one").state == "compensated"  # the others are still undone
    assert [(c.step, c.state, c.attempts) for c in status.compensations] == [("two", "failed", 2), ("one", "succeeded", 1)]
    assert rec.sequence() == ["one", "two", "three", "undo two", "undo two", "undo one"]


async def test_completed_run_and_outputs_flow_to_later_steps(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: flow
params: {svc: {type: string}}
steps:
  - id: first
    action: t.ok
    with: {svc: "{{ params.svc }}", by: "{{ run.requested_by }}"}
  - id: second
    action: t.ok
    with: {prev: "{{ steps.first.output.id }}", whole: "{{ steps.first.output.echo }}"}
"""
    )
    status = await execute(dev_env.client, rec, pb, params={"svc": "api"})
    assert status.state == "completed"
    assert rec.calls[0][2] == {"svc": "api", "by": "cli:tester"}
    assert rec.calls[1][2] == {"prev": "first-out", "whole": {"svc": "api", "by": "cli:tester"}}
    assert all(s.state == "succeeded" and s.attempts == 1 for s in status.steps)
    assert status.started_at and status.finished_at and status.finished_at >= status.started_at


async def test_parallel_group_runs_all_members_and_when_skips(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: par
params: {env: {type: string, default: staging}}
steps:
  - id: check
    parallel:
      - {id: a, action: t.ok, compensate: {action: t.ok}}
      - {id: b, action: t.ok}
      - {id: c, action: t.ok, when: "{{ params.env == 'production' }}"}
  - id: prod-only
    when: "{{ params.env == 'production' }}"
    parallel:
      - {id: d, action: t.ok}
  - id: after
    action: t.ok
"""
    )
    status = await execute(dev_env.client, rec, pb, params={"env": "staging"})
    assert status.state == "completed"
    states = {s.id: s.state for s in status.steps}
    assert states == {"a": "succeeded", "b": "succeeded", "c": "skipped", "d": "skipped", "after": "succeeded"}
    assert sorted(rec.sequence()[:2]) == ["a", "b"] and rec.sequence()[2:] == ["after"]
    assert status.step("a").group == "check"


async def test_parallel_failure_waits_for_siblings_then_compensates(dev_env):
    """`bad` fails at once while its siblings are still running (for 1.5 s and 2.5 s): the group
    waits for both to finish, and no undo starts before the step it undoes has finished."""
    rec = Recorder()
    pb = playbook(
        """
name: par-fail
steps:
  - id: before
    action: t.ok
    compensate: {action: t.ok}
  - id: group
    parallel:
      - {id: slow, action: t.quick, with: {seconds: 1.5}, compensate: {action: t.ok}}
      - {id: slower, action: t.quick, with: {seconds: 2.5}, compensate: {action: t.ok}}
      - {id: bad, action: t.fail, retry: {max_attempts: 1}}
  - id: never
    action: t.ok
"""
    )
    status = await execute(dev_env.client, rec, pb)
    assert status.state == "compensated"
    states = {s.id: s.state for s in status.steps}
    assert states == {"before": "compensated", "slow": "compensated", "slower": "compensated", "bad": "failed",
                      "never": "pending"}, "the siblings ran to success, then were undone"
    unfinished = [k for k, span in rec.spans.items() if len(span) < 2]
    assert not unfinished, f"the run ended while {unfinished} were still running"
    began, ended = ({k: v[i] for k, v in rec.spans.items()} for i in (0, 1))
    assert ended["bad"] < ended["slow"] < ended["slower"], "bad failed while both siblings were still running"
    first_undo = min(began[k] for k in ("undo slow", "undo slower", "undo before"))
    assert first_undo >= ended["slower"], "nothing is undone before every sibling has finished"
    for step in ("slow", "slower", "before"):
        assert began[f"undo {step}"] >= ended[step], f"{step} was undone before it finished"
    assert sorted(rec.sequence()[-3:-1]) == ["undo slow", "undo slower"] and rec.sequence()[-1] == "undo before"


async def test_cancel_mid_step_stops_it_and_compensates(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: cancel-me
steps:
  - id: one
    action: t.ok
    compensate: {action: t.ok}
  - id: long
    action: t.wait
    compensate: {action: t.ok}
  - id: never
    action: t.ok
"""
    )
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        await asyncio.wait_for(rec.started.wait(), 10)
        await cancel(handle)
        status = await handle.result()
    assert rec.cancelled == ["long"], "the running step must be told to stop (heartbeat cancellation)"
    assert status.state == "compensated"
    assert [(s.id, s.state) for s in status.steps] == [("one", "compensated"), ("long", "compensated"), ("never", "pending")]
    assert rec.sequence() == ["one", "long", "undo long", "undo one"]
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_cancel_before_any_step_ran_is_cancelled(dev_env):
    rec = Recorder()
    pb = playbook("name: early\nsteps: [{id: a, action: t.ok}, {id: b, action: t.ok, compensate: {action: t.ok}}]")
    w = worker(dev_env.client, rec)
    handle = await start(dev_env.client, w, run_input(pb))
    # Sent before any worker picked the run up: it waits at the server and arrives with the run's
    # first task, so it is decided before the first step could start.
    update = asyncio.create_task(handle.execute_update(PlaybookRun.cancel, CancelRequest(user="cli:tester")))
    await asyncio.sleep(1)
    assert not update.done()
    async with w:
        await update
        status = await handle.result()
    assert status.state == "cancelled"
    assert rec.calls == []
    assert status.compensations == []
    assert [(s.id, s.state) for s in status.steps] == [("a", "pending"), ("b", "pending")]  # neither started
    assert status.cancelled_by == "cli:tester" and status.error == "cancelled by cli:tester"


async def test_template_error_at_runtime_fails_the_step_and_rolls_back(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: tmpl
steps:
  - id: one
    action: t.ok
    compensate: {action: t.ok}
  - id: two
    action: t.ok
    with: {x: "{{ steps.one.output.missing.deeper }}"}
"""
    )
    status = await execute(dev_env.client, rec, pb)
    assert status.state == "compensated"
    assert status.step("two").state == "failed"
    assert "cannot render arguments" in (status.step("two").error or "")
    assert rec.sequence() == ["one", "undo one"]


async def test_compensation_of_a_failed_step_without_output_is_skipped(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: undo-needs-output
steps:
  - id: silence
    action: t.fail
    compensate: {action: t.ok, with: {id: "{{ steps.silence.output.id }}"}}
"""
    )
    status = await execute(dev_env.client, rec, pb)
    assert status.state == "compensated"
    assert status.compensations[0].state == "skipped"
    assert rec.sequence() == ["silence"]


async def test_status_query_shows_running_step(dev_env):
    rec = Recorder()
    pb = playbook("name: q\nsteps: [{id: a, action: t.ok}, {id: b, action: t.wait}]")
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        status = await wait_for_state(handle, lambda s: s.step("b").state == "running")
        assert status.state == "running" and status.step("a").state == "succeeded"
        assert status.requested_by == "cli:tester" and status.trigger == "cli"
        await cancel(handle)
        await handle.result()


async def test_a_slack_post_gets_its_text_with_what_templates_put_in_escaped(dev_env):
    """The run renders a `slack.post` text, its fallback's and its undo's with data escaped for Slack:
    a param (or an error quoting a response body) holding `<!channel>` cannot notify the channel
    as the bot. The author's own mrkdwn stays live; other actions get data as it is."""
    posted: list[tuple[str, dict[str, object]]] = []

    @activity.defn(name="slack.post")
    async def slack_post(inp: ActionInput) -> ActionResult:
        posted.append((inp.step_id + (" (undo)" if inp.compensation else ""), dict(inp.params)))
        return ActionResult(output={"ts": "1.2"})

    pb = playbook("""
name: tell
params: {note: {type: string}}
steps:
  - id: tell
    action: slack.post
    with: {channel: "#ops", text: "<!here> {{ params.note }}"}
    compensate: {action: slack.post, with: {channel: "#ops", text: "undone: {{ params.note }}"}}
  - {id: also, action: t.ok, with: {note: "{{ params.note }}"}}
  - {id: boom, action: t.fail}
""")
    rec = Recorder()
    hostile = "<!channel> see <https://evil.example|https://deploy.internal>"
    async with worker(dev_env.client, rec, extra=[slack_post]) as w:
        handle = await start(dev_env.client, w, run_input(pb, {"note": hostile}))
        status = await handle.result()
    assert status.state == "compensated"
    escaped = "&lt;!channel&gt; see &lt;https://evil.example|https://deploy.internal&gt;"
    assert [(who, params["text"]) for who, params in posted] == [
        ("tell", f"<!here> {escaped}"), ("tell (undo)", f"undone: {escaped}")]
    assert [c[2]["note"] for c in rec.calls if c[0] == "also"] == [hostile]
