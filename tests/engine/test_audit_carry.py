"""engine-v14: what an activity carries of the run's audit queue is at most CARRY_MAX bytes
(bot/engine/spool.py). Red team, stop 54: every input below is within its own bound (params at
64 KiB each and 256 KiB in all, a step's args at ARGS_MAX), yet the events that hold them added up
on one activity's input past Temporal's 2 MB, and the run's workflow task failed on every replay
(TMPRL1103): the run never went on, never rolled back, never ended."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from temporalio.api.enums.v1 import EventType

from bot.engine.spool import CARRY_MAX
from bot.playbook.params import coerce_params
from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.engine.test_approvals import policy

PART = "n" * 64_000  # a string param at its bound
PARAMS = {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}, "d": {"type": "string"}}
ECHO = 'note: "{{ params.a ~ params.b ~ params.c ~ params.d }}"'  # 256 KB of args, within ARGS_MAX
QUORUM = {"allow": True, "require_approval": True, "min_approvals": 1, "approver_groups": ["sre"],
          "approval_timeout": "10m"}


def text(name: str, steps: list[str]) -> str:
    return f"name: {name}\nparams: {json.dumps(PARAMS)}\nsteps:\n" + "\n".join(f"  - {s}" for s in steps) + "\n"


async def carried(handle: Any) -> list[int]:
    """Bytes of queued events each scheduled activity carried, read from the run's history; fails
    the test if a workflow task failed (a payload Temporal refused fails it, on every replay)."""
    sizes, failed = [], []
    for event in (await handle.fetch_history()).events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failed.append(event.workflow_task_failed_event_attributes.failure.message)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            for payload in event.activity_task_scheduled_event_attributes.input.payloads:
                doc = json.loads(payload.data)
                if isinstance(doc, dict) and doc.get("audit"):
                    sizes.append(len(json.dumps(doc["audit"], separators=(",", ":"), ensure_ascii=False).encode()))
    assert not failed, failed
    return sizes


async def scheduled(handle: Any, activity_type: str) -> int:
    return sum(1 for event in (await handle.fetch_history()).events
               if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
               and event.activity_task_scheduled_event_attributes.activity_type.name == activity_type)


async def finished(rec: Recorder, pb_text: str, allow: dict[str, Any], dev_env: Any) -> list[int]:
    pb = playbook(pb_text)
    params = coerce_params(pb, {"a": PART, "b": PART, "c": PART, "d": PART})
    async with worker(dev_env.client, rec, policy(allow)) as w:
        handle = await start(dev_env.client, w, run_input(pb, params=params))
        status = await asyncio.wait_for(handle.result(), 60)
    assert status.state == "completed", status.error
    return await carried(handle)


async def test_started_events_waiting_for_confirmation_do_not_ride_on_a_high_step_past_the_bound(dev_env):
    """Nine steps' step_started events (256 KB of args each) waited to be confirmed and rode whole
    on the high-impact step's input: 2.57 MB."""
    rec = Recorder()
    steps = [f"{{id: s{i}, action: t.quick, with: {{seconds: 0, {ECHO}}}}}" for i in range(9)]
    sizes = await finished(rec, text("unconfirmed", [*steps, "{id: high, action: t.quick, impact: high, with: {seconds: 0}}"]),
                           {"allow": True}, dev_env)
    assert rec.sequence()[-1] == "high" and max(sizes) <= CARRY_MAX, sizes


async def test_a_chain_of_high_steps_carries_no_growing_batch(dev_env):
    """Each high-impact step carried what waited to be confirmed, which then waited again with its
    own started event: the batch grew by a step's args per step, and the ninth's input was 2.3 MB."""
    rec = Recorder()
    steps = [f"{{id: h{i}, action: t.quick, impact: high, with: {{seconds: 0, {ECHO}}}}}" for i in range(10)]
    sizes = await finished(rec, text("high-chain", steps), {"allow": True}, dev_env)
    assert len(rec.sequence()) == 10 and max(sizes) <= CARRY_MAX, sizes


async def test_items_echoing_params_do_not_sink_the_next_high_step(dev_env):
    """20 foreach items, one at a time, each echoing 128 KB of params (40 events, under the count
    bound of 64), then a high-impact step: 2.7 MB on its input."""
    rec = Recorder()
    steps = ["{id: each, foreach: \"{{ range(20) | list }}\", steps: [{id: post, action: t.quick, "
             "with: {seconds: 0, note: \"{{ params.a ~ params.b }}\"}}]}",
             "{id: high, action: t.quick, impact: high, with: {seconds: 0}}"]
    sizes = await finished(rec, text("unconfirmed-foreach", steps), {"allow": True}, dev_env)
    assert rec.sequence()[-1] == "high" and max(sizes) <= CARRY_MAX, sizes


HELD = [
    "id: each\n    foreach: \"{{ range(10) | list }}\"\n    concurrency: 10\n    steps:\n"
    "      - {id: slow, action: t.quick, when: \"{{ index == 0 }}\", with: {seconds: 4}}\n"
    f"      - {{id: gate, action: t.quick, impact: high, when: \"{{{{ index > 0 }}}}\", with: {{seconds: 0, {ECHO}}}}}\n"
    "      - {id: after, action: t.quick, IMPACT when: \"{{ index == 0 }}\", with: {seconds: 0}}",
]


async def held_queue(dev_env: Any, impact: str) -> None:
    """A long item step holds the queue (the flusher waits for no holder) while nine items' high-impact
    steps ask for approval, each approval_requested event with its 256 KB args; the long step's
    next step took the whole pile: its input (2.3 MB) or, high-impact, its `decide` question (2.6 MB)."""
    rec = Recorder()
    pb = playbook(text("held-queue", [HELD[0].replace("IMPACT ", impact)]))
    params = coerce_params(pb, {"a": PART, "b": PART, "c": PART, "d": PART})
    async with worker(dev_env.client, rec, policy(QUORUM)) as w:
        handle = await start(dev_env.client, w, run_input(pb, params=params))
        # (the status query leaves the steps out here: ten items' 256 KB args are past its 1.5 MiB)
        for _ in range(60):  # the long step's next one was sent: its action, or its question (the tenth)
            if "each[0].after" in rec.sequence() or await scheduled(handle, "policy.decide") == 10:
                break
            await asyncio.sleep(0.5)  # (a history of megabytes: read twice a second, not ten times)
        else:
            raise AssertionError(f"each[0].after never sent: {rec.sequence()}")
        sizes = await carried(handle)
        await handle.terminate("test over")
    assert sizes and max(sizes) <= CARRY_MAX, sizes


async def test_approval_requests_queued_behind_a_long_step_do_not_ride_on_the_next_one(dev_env):
    await held_queue(dev_env, "")


async def test_approval_requests_queued_behind_a_long_step_do_not_ride_on_the_next_question(dev_env):
    await held_queue(dev_env, "impact: high, ")


async def test_a_policy_question_past_its_bound_is_not_sent_and_the_run_rolls_back(dev_env):
    """Review, stop 54: every part within its bound (the alert under ALERT_MAX, no params, no args),
    yet an item's `decide` question carried the alert and the item made of it, past 2 MB: the run
    was stuck. A question past QUESTION_MAX is not sent; its step fails, not started, and the run
    rolls back."""
    rec = Recorder()
    pb = playbook("""
name: big-item
steps:
  - {id: first, action: t.ok, compensate: {action: t.ok}}
  - id: each
    foreach: "{{ [[alert.annotations.d, alert.annotations.d, alert.annotations.d, alert.annotations.d]] }}"
    steps:
      - {id: act, action: t.quick, impact: high, with: {seconds: 0}}
""")
    alert = {"status": "firing", "labels": {"alertname": "X"}, "annotations": {"d": "d" * 500_000},
             "startsAt": "2026-12-07T00:00:00Z", "fingerprint": "abc"}
    run = run_input(pb, alert=alert)
    async with worker(dev_env.client, rec, policy({"allow": True})) as w:
        handle = await start(dev_env.client, w, run)
        status = await asyncio.wait_for(handle.result(), 30)
    await carried(handle)
    assert status.state == "compensated" and rec.sequence() == ["first", "undo first"], rec.sequence()
    assert "not asked: the policy question is" in (status.error or ""), status.error
