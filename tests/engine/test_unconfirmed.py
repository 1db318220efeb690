"""engine-v11: UNCONFIRMED_MAX bounds what waits in `_unconfirmed` to be confirmed (bot/engine/spool.py)."""

from __future__ import annotations

import json

from temporalio.api.enums.v1 import EventType

from bot.engine.spool import UNCONFIRMED_MAX
from tests.engine.support import Recorder, playbook, run_input, start, worker

STEPS = UNCONFIRMED_MAX + 16


async def test_unconfirmed_events_are_flushed_once_past_their_bound(dev_env) -> None:
    """A run of low-impact remote steps, each confirmed only by the flusher: past UNCONFIRMED_MAX
    events the flusher writes them before the run's end. It waits for no activity to hold the queue,
    and in a run of remote steps one always did when it looked (the previous step's success rides on
    the next): nothing was flushed until the end (review, stop 51)."""
    steps = "\n".join(f"  - id: s{i}\n    action: t.ok\n    impact: low" for i in range(STEPS))
    pb = playbook(f"name: many\nsteps:\n{steps}\n")
    rec = Recorder()
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        status = await handle.result()
    assert status.state == "completed"
    history = await handle.fetch_history()
    scheduled, flushes = 0, []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled += 1
        if e.HasField("marker_recorded_event_attributes"):
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity":
                data = json.loads(marker.details["data"].payloads[0].data)
                if data.get("activity_type") == "audit.record":
                    flushes.append(scheduled)
    assert flushes and flushes[0] < STEPS, (
        f"{STEPS} remote steps: the first flush came after {flushes[0] if flushes else None} activities were "
        f"scheduled (flushes after: {flushes}); `_unconfirmed` held every event of the run until its end")



async def test_past_the_bound_no_item_waits_for_a_slow_sibling(dev_env) -> None:
    """Past UNCONFIRMED_MAX an action waited for the flusher, and the flusher for the activity
    holding the queue: in a foreach, one slow item (handed the queue) held back every item after
    the bound until it returned (review of the bound, stop 51). An action waits only for a flush."""
    items = [5.0] + [0.01] * 90
    pb = playbook(f"""
name: slow-and-fast
steps:
  - id: roll
    foreach: {json.dumps(items)}
    concurrency: 4
    steps:
      - {{id: work, action: t.quick, with: {{seconds: "{{{{ item }}}}"}}}}
""")
    rec = Recorder()
    async with worker(dev_env.client, rec) as w:
        status = await (await start(dev_env.client, w, run_input(pb))).result()
    assert status.state == "completed"
    slow_end = rec.spans["roll[0].work"][1]
    late = [i for i in range(1, len(items)) if rec.spans[f"roll[{i}].work"][0] >= slow_end]
    assert not late, f"{len(late)} fast items started only once the slow one had returned (first: {late[0]})"
