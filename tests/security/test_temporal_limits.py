"""Red team, stop 53: text a client or a target chooses, kept whole in a run's state, took a payload
past Temporal's 2 MB; the workflow task that carried it failed on every replay, and the run never
rolled back or ended. Each is now cut where it enters."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.client import AsyncActivityHandle, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError

from bot.actions.base import ActionFailed, ActionInput, ActionResult, OutputRef
from bot.alerts.payload import ALERT_MAX
from bot.audit.events import EventKind
from bot.engine.locking import ID_MAX, NOTICE_SIGNAL, LockNotice
from bot.engine.state import CancelRequest
from bot.engine.workflow import ERROR_MAX, PlaybookRun
from bot.playbook.params import coerce_params
from tests.engine.support import Recorder, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import policy
from tests.engine.test_locks import LOCKED, Rig, rig  # noqa: F401  (fixture)
from tests.reliability.alertmanager_support import bot_stack, firing, webhook


HOLDING = """
name: holding
steps:
  - {id: scale, action: t.ok, compensate: {action: t.ok}}
  - {id: hold, action: t.wait}
"""


async def held(dev_env: Any, handle: Any) -> AsyncActivityHandle:
    """The `hold` step's pending action, as any client who can reach Temporal answers it by id."""
    await wait_for_state(handle, lambda st: any(s.id == "hold" and s.state == "running" for s in st.steps), 30)
    desc = await handle.describe()
    (pending,) = [p.activity_id for p in desc.raw_description.pending_activities if p.activity_type.name == "t.wait"]
    return dev_env.client.get_async_activity_handle(workflow_id=handle.id, run_id=desc.run_id, activity_id=pending)


async def test_a_forged_failure_of_any_length_leaves_the_rollback_free_to_run(dev_env):
    """A client fails the pending action by id with 400,000 control characters: 2.4 MB once
    JSON-escaped in the step_failed event, which rode on the undo's input (TMPRL1103, every replay)."""
    rec = Recorder()
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(playbook(HOLDING)))
        await (await held(dev_env, handle)).fail(
            ApplicationError("\x01" * 400_000, type="ActionFailed", non_retryable=True))
        status = await asyncio.wait_for(handle.result(), 30)
    assert status.state == "compensated" and rec.sequence()[-1] == "undo scale"
    assert len(status.step("hold").error or "") == ERROR_MAX


async def test_a_forged_output_refusal_of_any_length_leaves_the_rollback_free_to_run(dev_env):
    """Red team, stop 54: a client completes the pending action by id with a result whose
    `stored.refused` is 2 MB (the completion itself within Temporal's limit). The step failed with
    it whole (ERROR_MAX was a failure's bound only), and the step_failed event rode on the undo's
    input, past 2 MB: the rollback never ran."""
    rec = Recorder()
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(playbook(HOLDING)))
        forged = ActionResult(output={}, stored=OutputRef(event_id="e", sha256="0" * 64, size=1,
                                                          refused="r" * 2_096_700))
        await (await held(dev_env, handle)).complete(forged)
        status = await asyncio.wait_for(handle.result(), 30)
    assert status.state == "compensated" and rec.sequence()[-1] == "undo scale"
    assert len(status.step("hold").error or "") <= ERROR_MAX


async def test_a_forged_queued_notice_cannot_swell_the_runs_status(rig: Rig):  # noqa: F811
    """One `queued` notice (not confirmed: it only informs) naming a 2 MB holder: the queued run's
    status query failed, and once cancelled its result was refused on every replay."""
    text = LOCKED.format(mode="queue", limit=1)
    first = await rig.holding(text)
    second = await rig.start(text)
    await wait_for_state(second, lambda s: s.state == "queued" and (s.waiting_for or {}).get("holder") == first.id, 60)
    forged = LockNotice(key=f"svc-{rig.service}", outcome="queued", holders=["h" * 2_096_950], position=1)
    await second.signal(NOTICE_SIGNAL, forged)
    live = await wait_for_state(second, lambda s: (s.waiting_for or {}).get("holder") != first.id, 30)
    assert len(live.waiting_for["holder"]) == ID_MAX
    await second.execute_update(PlaybookRun.cancel, CancelRequest(user="cli:tester", reason="not needed"))
    final = await asyncio.wait_for(second.result(), 30)
    assert final.state == "cancelled"
    rig.gates.open(first.id)
    assert (await asyncio.wait_for(first.result(), 30)).state == "completed"


PART = "n" * 64_000  # a string param at its bound (PARAM_MAX_BYTES)


async def test_items_started_together_wait_for_room_instead_of_passing_grpcs_limit(dev_env):
    """Review (stop 53): 100 items at once, each given four params at their bound (256 KB, within
    ARGS_MAX): their inputs left in one workflow task's completion, past gRPC's 4 MB, and Temporal
    terminated the run at 772 KB of history with `first` never undone. Now at most DISPATCH_MAX is
    out at once; the history bound then stops the items and the run rolls back."""
    rec = Recorder()
    pb = playbook("""
name: wave
params: {a: {type: string}, b: {type: string}, c: {type: string}, d: {type: string}}
steps:
  - {id: first, action: t.ok, compensate: {action: t.ok}}
  - id: each
    foreach: "{{ range(200) | list }}"
    concurrency: 100
    steps:
      - {id: post, action: t.quick, with: {seconds: 0, note: "{{ params.a ~ params.b ~ params.c ~ params.d }}"}}
""")
    params = coerce_params(pb, {"a": PART, "b": PART, "c": PART, "d": PART})  # what the real caps take
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb, params=params))
        status = await asyncio.wait_for(handle.result(), 120)
        desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert status.state == "compensated" and rec.sequence()[-1] == "undo first", [(c.step, c.error) for c in status.compensations if c.error][:3]


async def test_policy_questions_carrying_a_large_alert_take_their_turn(dev_env):
    """Review (stop 53): five high-impact items at once each asked `decide` with the run's whole
    alert (1 MB of annotation): 5 MB in one workflow task's completion, and Temporal terminated the run."""
    rec = Recorder()
    pb = playbook("""
name: decide-wave
steps:
  - {id: first, action: t.ok, compensate: {action: t.ok}}
  - id: each
    foreach: "{{ range(8) | list }}"
    concurrency: 5
    steps:
      - {id: act, action: t.quick, impact: high, with: {seconds: 0}}
""")
    alert = {"labels": {"alertname": "X"}, "annotations": {"description": "d" * 1_000_000}, "fingerprint": "abc"}
    run = run_input(pb, alert=alert)
    async with worker(dev_env.client, rec, policy({"allow": True})) as w:
        handle = await start(dev_env.client, w, run)
        status = await asyncio.wait_for(handle.result(), 120)
        desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED and status.state == "completed"
    assert len([call for call in rec.calls if call[0].startswith("each[")]) == 8



HUGE = """
name: huge
owner: sre-oncall
params:
  a: {type: string, default: none}
  b: {type: string, default: none}
  c: {type: string, default: none}
  d: {type: string, default: none}
triggers:
  alertmanager:
    - matchers: ['alertname="Huge"']
      params: {a: "{{ alert.annotations.part }}", b: "{{ alert.annotations.part }}", c: "{{ alert.annotations.part }}",
               d: "{{ alert.annotations.part }}"}
steps:
  - {id: say, action: core.log, impact: high, with: {message: "{{ params.a }}{{ params.b }}{{ params.c }}{{ params.d }}"}}
"""


async def test_an_alert_too_big_for_its_runs_questions_starts_nothing_and_its_neighbours_do(dev_env, tmp_path):
    """An operator raises alertmanager_max_body for large alert groups. A 1.5 MB alert started its
    run (the input was under Temporal's 2 MB), and the run's first policy question carried it with
    the params it filled (four string params at their bound), the step's arguments made of them and
    the run_started event: 2.3 MB. The workflow task failed on every replay (TMPRL1103) and the run
    held its episode, never acting or rolling back. An alert that starts a run is now at most
    ALERT_MAX; the one past it is rejected, named, and the alert beside it in the body gets its answer."""
    huge = firing("f" * 16, "Huge")
    huge["annotations"] = {"part": "p" * 62_000, "long": "x" * 1_520_000}
    small = firing("e" * 16, "Huge")
    small["annotations"] = {"part": "small"}
    async with bot_stack(dev_env.client, tmp_path, {"huge": HUGE}, alertmanager_max_body=8 << 20) as stack:
        response = await stack.deliver(webhook([huge, small]))
        assert response.status_code == 200, response.text[:300]
        refused, started = response.json()
        assert refused["outcome"] == "rejected" and f"at most {ALERT_MAX:,}" in refused["reason"], refused
        assert started["outcome"] == "started", started
        handle = stack.temporal.get_workflow_handle(started["run_id"])  # its question answered: approval, production
        await wait_for_state(handle, lambda st: st.step("say").state == "waiting_approval", 30)
        grown = {**small, "annotations": huge["annotations"]}  # its episode's run answers a grown repeat,
        peer = await stack.replica(shared_audit=True)  # here and on a door that did not start it
        for url in (stack.url, peer.url):
            [again] = (await stack.deliver(webhook([grown]), url=url)).json()
            assert again["outcome"] == "attached" and again["run_id"] == started["run_id"], again
        assert [w.id for w in await stack.runs()] == [started["run_id"]]
        [outcome] = [e for e in stack.audit.events() if e.kind == EventKind.alert_outcome
                     and e.details.get("fingerprint") == huge["fingerprint"]]
        assert outcome.details["outcome"] == "rejected", outcome.details


async def test_a_failed_fallback_keeps_the_steps_failure_within_its_bound(dev_env):
    """Review, stop 54: the step's failure was cut where it failed, but a failed fallback adds its
    own ("...; fallback X failed: ..."), and `on_failure: continue` kept the sum whole (4,030)."""
    rec = Recorder()

    @activity.defn(name="t.longfail")
    async def longfail(inp: ActionInput) -> ActionResult:
        raise ActionFailed("x" * 5000, retryable=False)

    pb = playbook("""
name: long-errors
steps:
  - id: s
    action: t.longfail
    retry: {max_attempts: 1}
    fallback: {action: t.longfail, retry: {max_attempts: 1}}
    on_failure: continue
  - {id: after, action: t.ok}
""")
    async with worker(dev_env.client, rec, [longfail]) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        status = await asyncio.wait_for(handle.result(), 30)
    assert status.state == "completed" and status.step("s").state == "failed_ignored", status.error
    assert len(status.step("s").error or "") <= ERROR_MAX


async def test_a_grown_copy_of_a_delivery_in_flight_is_answered_by_that_delivery(dev_env, tmp_path):
    """Review, stop 54: the size check ran before a copy waited for the delivery in flight, so a
    copy with grown annotations read `rejected` while the first started the episode's run. Only a
    start is refused for its size now, after copies, resolves and claims had their say."""
    small = firing("d" * 16, "Huge")
    small["annotations"] = {"part": "small"}
    grown = {**small, "annotations": {"part": "small", "long": "x" * 600_000}}
    async with bot_stack(dev_env.client, tmp_path, {"huge": HUGE}, alertmanager_max_body=8 << 20) as stack:
        first, copy = await asyncio.gather(stack.deliver(webhook([small])), stack.deliver(webhook([grown])))
        [a], [b] = first.json(), copy.json()
        assert a["outcome"] == "started" and b["outcome"] == "attached" and b["run_id"] == a["run_id"], (a, b)
