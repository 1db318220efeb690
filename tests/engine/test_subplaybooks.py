"""Sub-playbooks (format v1.1 `playbook.run`) on the real dev server with the real worker: a child
run with its own saga, held for its parent's word, rolled back as one unit.

Actions are the Recorder's fakes (tests/engine/support.py); each run's steps have distinct ids, so
`order()` reads like a rehearsal's `order` across parent and child.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle

from bot.engine.admission import Admission, AdmitRequest
from bot.engine.children import CatalogActivities
from bot.engine.locking import render_lock_key
from bot.engine.runs import get_status
from bot.engine.state import Requester, RunStatus
from bot.engine.worker import make_worker
from bot.playbook.model import Playbook
from tests.engine.support import Recorder, cancel, catalog_of, playbook, run_input, start, wait_for_state, worker

WAIT = 60.0  # generous: a loaded machine; nothing here asserts on time

CHILD = """
name: child
params:
  target: {type: string, pattern: "^[a-z]+$"}
steps:
  - id: c1
    action: t.ok
    with: {target: "{{ params.target }}"}
    compensate: {action: t.ok, with: {undo: "{{ steps.c1.output.id }}"}}
  - id: c2
    action: %s
    compensate: {action: t.ok}
"""


def order(rec: Recorder) -> list[str]:
    return [("undo:" if comp else "") + step for step, comp, _ in rec.calls]


def states(status: RunStatus) -> dict[str, str]:
    return {s.id: s.state for s in status.steps}


def child_of(c2: str = "t.ok") -> Playbook:
    return playbook(CHILD % c2)


async def run_tree(client: Client, rec: Recorder, parent: Playbook, child: Playbook) -> tuple[RunStatus, RunStatus]:
    """Run `parent` to its end; returns its status and its child's final status."""
    extra = CatalogActivities(lambda: catalog_of(parent, child)).all()
    async with worker(client, rec, extra) as w:
        handle = await start(client, w, run_input(parent, requested_by="slack:U0ALICE"))
        status = await asyncio.wait_for(handle.result(), WAIT)
        (call,) = status.children
        final = await asyncio.wait_for(client.get_workflow_handle(call.run_id, result_type=RunStatus).result(), WAIT)
        return status, final


async def test_child_runs_and_the_parent_reads_its_outputs(dev_env):
    rec = Recorder()
    parent = playbook(
        """
name: parent
steps:
  - {id: before, action: t.ok, compensate: {action: t.ok}}
  - id: call
    action: playbook.run
    with: {name: child, params: {target: web}}
  - id: after
    action: t.ok
    with:
      state: "{{ steps.call.output.state }}"
      c1: "{{ steps.call.output.steps.c1.output.id }}"
      c2: "{{ steps.call.output.steps.c2.state }}"
"""
    )
    status, child = await run_tree(dev_env.client, rec, parent, child_of())
    assert status.state == "completed", status.error
    assert order(rec) == ["before", "c1", "c2", "after"]
    assert rec.calls[1][2] == {"target": "web"}, "the child ran with the params its parent gave it"
    assert rec.calls[-1][2] == {"state": "completed", "c1": "c1-out", "c2": "succeeded"}
    call = status.step("call")
    assert call.state == "succeeded"
    assert call.output == {
        "state": "completed",
        "steps": {"c1": {"output": {"echo": {"target": "web"}, "id": "c1-out"}, "state": "succeeded"},
                  "c2": {"output": {"echo": {}, "id": "c2-out"}, "state": "succeeded"}},
    }
    assert status.children[0].run_id == f"{status.run_id}.call"
    assert status.children[0].verdict == "release"
    # The child is its own run, linked to its parent, with the parent's requester; released, it completed.
    assert (child.state, child.trigger, child.requested_by) == ("completed", "playbook", "slack:U0ALICE")
    assert (child.parent_run, child.parent_step, child.held_by) == (status.run_id, "call", None)
    assert states(child) == {"c1": "succeeded", "c2": "succeeded"}
    assert (await get_status(dev_env.client, child.run_id)).parent_run == status.run_id


async def test_a_failed_child_undoes_its_own_steps_and_fails_the_call_step(dev_env):
    rec = Recorder()
    parent = playbook(
        """
name: parent
steps:
  - {id: before, action: t.ok, compensate: {action: t.ok}}
  - {id: call, action: playbook.run, with: {name: child, params: {target: db}}}
  - {id: after, action: t.ok}
"""
    )
    status, child = await run_tree(dev_env.client, rec, parent, child_of("t.fail"))
    # The child's saga undid its c2 (it may have acted) and c1; then the parent's undid `before`.
    assert order(rec) == ["before", "c1", "c2", "undo:c2", "undo:c1", "undo:before"]
    assert rec.calls[4][2] == {"undo": "c1-out"}, "the child's undo rendered from its own step's output"
    assert status.state == "compensated"
    assert status.failed_step == "call"
    call = status.step("call")
    assert call.state == "failed"
    assert call.error.startswith(f"child run {status.run_id}.call (child) ended compensated: step c2: c2 broke")
    assert call.output["state"] == "compensated"
    comp = next(c for c in status.compensations if c.step == "call")
    assert comp.state == "skipped" and "undid itself" in (comp.error or "")
    assert child.state == "compensated"
    assert states(child) == {"c1": "compensated", "c2": "compensated"}


async def test_a_later_failure_rolls_the_child_back_as_one_unit_in_its_place(dev_env):
    rec = Recorder()
    parent = playbook(
        """
name: parent
steps:
  - {id: before, action: t.ok, compensate: {action: t.ok}}
  - {id: call, action: playbook.run, with: {name: child, params: {target: api}}}
  - {id: later, action: t.ok, compensate: {action: t.ok}}
  - {id: boom, action: t.fail}
"""
    )
    status, child = await run_tree(dev_env.client, rec, parent, child_of())
    # After the parent's later steps, before its earlier ones; the child's own undos, newest first.
    assert order(rec) == ["before", "c1", "c2", "later", "boom", "undo:later", "undo:c2", "undo:c1", "undo:before"]
    assert status.state == "compensated"
    assert states(status) == {"before": "compensated", "call": "compensated", "later": "compensated", "boom": "failed"}
    assert [(c.step, c.state) for c in status.compensations] == [
        ("later", "succeeded"), ("call", "succeeded"), ("before", "succeeded"),
    ]
    assert status.children[0].verdict == "compensate"
    assert child.state == "compensated"
    assert child.error == f"rolled back by its parent run {status.run_id}"
    assert states(child) == {"c1": "compensated", "c2": "compensated"}


async def test_cancelling_the_parent_cancels_the_child(dev_env):
    rec = Recorder()
    parent = playbook(
        """
name: parent
steps:
  - {id: before, action: t.ok, compensate: {action: t.ok}}
  - {id: call, action: playbook.run, with: {name: child, params: {target: web}}}
  - {id: after, action: t.ok}
"""
    )
    child_pb = child_of("t.wait")
    extra = CatalogActivities(lambda: catalog_of(parent, child_pb)).all()
    client = dev_env.client
    async with worker(client, rec, extra) as w:
        handle = await start(client, w, run_input(parent, requested_by="slack:U0ALICE"))
        await asyncio.wait_for(rec.started.wait(), WAIT)
        child: WorkflowHandle[Any, RunStatus] = client.get_workflow_handle(f"{handle.id}.call", result_type=RunStatus)
        live = await wait_for_state(child, lambda s: s.step("c2").state == "running", WAIT)
        # While it runs, the child is its own run (status), linked to its parent.
        assert (live.state, live.trigger, live.parent_run, live.requested_by) == (
            "running", "playbook", handle.id, "slack:U0ALICE",
        )
        await cancel(handle, by="slack:U0BOB", reason="wrong service")
        status = await asyncio.wait_for(handle.result(), WAIT)
        final = await asyncio.wait_for(child.result(), WAIT)
    assert rec.cancelled == ["c2"], "the child's running step was stopped"
    assert order(rec) == ["before", "c1", "c2", "undo:c2", "undo:c1", "undo:before"]
    assert status.state == "compensated" and status.cancelled_by == "slack:U0BOB"
    assert status.step("call").state == "cancelled"
    assert final.state == "compensated"
    assert final.cancelled_by == "slack:U0BOB", "the child names who cancelled its parent"
    assert states(final) == {"c1": "compensated", "c2": "compensated"}


async def test_a_child_takes_the_lock_its_root_run_holds(dev_env):
    """Parent and child share a concurrency key: the child's request goes through its root's slot
    (a nested grant) instead of queueing behind its own parent, which would wait forever."""
    rec = Recorder()
    parent = playbook(
        """
name: parent
concurrency: {key: "svc-{{ params.service }}"}
params: {service: {type: string}}
steps:
  - {id: call, action: playbook.run, with: {name: locked-child, params: {service: "{{ params.service }}"}}}
"""
    )
    child = playbook(
        """
name: locked-child
concurrency: {key: "svc-{{ params.service }}"}
params: {service: {type: string}}
steps:
  - {id: inner, action: t.ok}
"""
    )

    @activity.defn(name="run.admit")
    async def admit(request: AdmitRequest) -> Admission:
        who = request.trigger.requested_by
        return Admission(
            allow=True, params=request.params, requester=Requester(principal=who, person=who, verified=True),
            lock_key=render_lock_key(request.playbook, request.params, request.trigger.alert),
        )

    activities = [a for a in rec.activities() if a.__temporal_activity_definition.name != "run.admit"]
    extra = CatalogActivities(lambda: catalog_of(parent, child)).all()
    client = dev_env.client
    async with make_worker(client, f"tq-{uuid.uuid4()}", [*activities, admit, *extra]) as w:
        handle = await start(client, w, run_input(parent, {"service": f"web{uuid.uuid4().hex[:6]}"}))
        status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.state == "completed", status.error
    assert order(rec) == ["inner"]
    assert status.step("call").output["steps"]["inner"]["state"] == "succeeded"
