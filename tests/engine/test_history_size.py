"""A run's history stays under Temporal's limit (50 MB, past which the server terminates the run):
the run stops starting steps, and then undos, while it can still roll back and say why."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from temporalio.client import WorkflowExecutionStatus

from bot.engine import workflow as workflow_module
from bot.engine.workflow import EVENTS_STEPS_MAX, HISTORY_STEPS_MAX, PlaybookRun
from bot.playbook.params import coerce_params
from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.engine.test_approvals import policy

NOTE = "n" * 250_000  # a param (or an alert's annotation) of 250 KB: each within every per-value bound


async def test_a_run_whose_history_fills_up_rolls_back_instead_of_being_terminated(dev_env):
    """300 foreach items each given the 250 KB param took the history past 50 MB: Temporal
    terminated the run halfway, nothing was rolled back and the trail never said how it ended. The
    step the bound stops does not fall back either (review, stop 53: its fallback passed the bound
    and the run was terminated all the same), and the playbook's on_failure steps, which run after
    the rollback, still have the undos' room (they were refused at 20 MiB)."""
    rec = Recorder()
    pb = playbook(
        """
name: fills-history
params: {note: {type: string}}
steps:
  - {id: first, action: t.ok, compensate: {action: t.ok}}
  - id: each
    foreach: "{{ range(300) | list }}"
    steps:
      - id: post
        action: t.quick
        with: {seconds: 0, note: "{{ params.note }}"}
        fallback: {action: t.quick, with: {seconds: 0, note: "{{ params.note }}"}}
on_failure:
  - {id: tell, action: t.quick, with: {seconds: 0}}
"""
    )
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb, params={"note": NOTE}))
        status = await asyncio.wait_for(handle.result(), 120)
        desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert status.state == "compensated" and status.failed_step == "each"
    posted = [call for call in rec.calls if call[0].startswith("each[")]
    assert 10 < len(posted) < 300
    failing = status.step(f"each[{len(posted)}].post")
    assert failing.state == "failed" and failing.error.startswith("not started: this run's history holds")
    assert f"past the {HISTORY_STEPS_MAX // 2**20} MiB" in failing.error and failing.fallback is None
    assert rec.sequence()[-2:] == ["undo first", "tell"] and status.step("tell").state == "succeeded"


async def test_undos_that_would_fill_the_history_are_left_for_a_human_and_the_run_still_ends(dev_env):
    """Items whose undos take the param: rolling 300 of them back would pass 50 MB. Past
    HISTORY_UNDO_MAX the rest is not undone (paged, on the record) and the run ends `failed`."""
    rec = Recorder()
    pb = playbook(
        """
name: fills-history-undoing
owner: sre-oncall
params: {note: {type: string}}
steps:
  - id: each
    foreach: "{{ range(300) | list }}"
    steps:
      - id: post
        action: t.quick
        with: {seconds: 0}
        compensate: {action: t.quick, with: {seconds: 0, note: "{{ params.note }}"}}
  - {id: boom, action: t.fail}
"""
    )
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb, params={"note": NOTE}))
        status = await asyncio.wait_for(handle.result(), 120)
        desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert status.state == "failed" and status.not_undone and status.escalated_to == ["sre-oncall"]
    undone = [c for c in status.compensations if c.state == "succeeded"]
    assert undone and all(c.state == "failed" for c in status.compensations[len(undone):])
    assert status.compensations[-1].error.startswith("not undone: this run's history holds")


@pytest.mark.parametrize(("size", "length", "said"), [
    (1024, EVENTS_STEPS_MAX, None),
    (1024, EVENTS_STEPS_MAX + 1, f"this run's history holds {EVENTS_STEPS_MAX + 1:,} events, past the "
                                 f"{EVENTS_STEPS_MAX:,} a run may take before Temporal's limit (51,200) ends it"),
    (HISTORY_STEPS_MAX + 1, 10, "this run's history holds 20.0 MiB, past the 20 MiB a run may take before "
                                "Temporal's limit (50 MB) ends it"),
])
def test_the_event_count_bounds_the_run_as_its_bytes_do(monkeypatch, size, length, said):
    """Red team (stop 53): engine-v13 first read only bytes. Item steps with a fallback and an undo
    make 17-18 events each: 500 items of 6 passed Temporal's 51,200 events at 18 MB, and the run was
    terminated with 510 undos never run (about 7 minutes to show whole; a client cannot add the
    events faster: Temporal takes at most 10,000 signals per run). The count is read as the bytes are."""
    info = SimpleNamespace(get_current_history_size=lambda: size, get_current_history_length=lambda: length)
    monkeypatch.setattr(workflow_module.workflow, "info", lambda: info)
    run = SimpleNamespace(_history_bounded=True)
    assert PlaybookRun._history_full(run, HISTORY_STEPS_MAX, EVENTS_STEPS_MAX) == said  # type: ignore[arg-type]
    assert PlaybookRun._history_full(SimpleNamespace(_history_bounded=False), 0, 0) is None  # type: ignore[arg-type]


async def test_policy_questions_of_items_started_together_stop_at_the_bound(dev_env):
    """Red team, stop 54: 100 items started together all passed the step's check while the history
    was small, and each then asked `decide` with the alert (512 KiB, ALERT_MAX) and the params
    (256 KiB), 780 KB a question: Temporal terminated the run at 53 MB, `first` never undone. A
    question waiting for dispatch room checks the bound again when it wakes, as an action does."""
    rec = Recorder()
    pb = playbook("""
name: decide-history
params: {a: {type: string}, b: {type: string}, c: {type: string}, d: {type: string}}
steps:
  - {id: first, action: t.ok, compensate: {action: t.ok}}
  - id: each
    foreach: "{{ range(100) | list }}"
    concurrency: 100
    steps:
      - {id: act, action: t.quick, impact: high, with: {seconds: 0}}
""")
    part = "n" * 64_000
    params = coerce_params(pb, {"a": part, "b": part, "c": part, "d": part})
    alert = {"status": "firing", "labels": {"alertname": "X"}, "annotations": {"description": "d" * 523_000},
             "startsAt": "2026-12-07T00:00:00Z", "fingerprint": "abc"}
    run = run_input(pb, params=params, alert=alert)
    async with worker(dev_env.client, rec, policy({"allow": True})) as w:
        handle = await start(dev_env.client, w, run)
        status = await asyncio.wait_for(handle.result(), 180)
        desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED and status.state == "compensated", status.error
    assert rec.sequence()[-1] == "undo first"
    assert "past the 20 MiB a run may take" in (status.error or ""), status.error
