"""Format v1.1 failure paths on the time-skipping server with the real worker: on_failure:
continue, fallback, core.fail, playbook-level on_failure, settles and irreversible.

Actions are the Recorder's fakes (tests/engine/support.py); a fallback is told apart from its
step by a `fb` argument, so `order()` reads like a rehearsal's `order`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bot.audit.events import EventKind
from bot.engine.state import RunStatus
from bot.slack.blocks import approval_blocks, summary_text
from tests.engine.support import Recorder, execute, playbook, run_input, start, worker
from tests.engine.test_approvals import policy


def order(rec: Recorder) -> list[str]:
    """The actions, undos and fallbacks that ran, in order, as `undo:<id>` / `fallback:<id>`."""
    return [("undo:" if comp else "fallback:" if params.get("fb") else "") + step for step, comp, params in rec.calls]


def states(status: RunStatus) -> dict[str, str]:
    return {s.id: s.state for s in status.steps}


def kinds(rec: Recorder, step: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.kind.value, e.details) for e in rec.audit if e.step_id == step]


async def test_continue_reads_failed_ignored_and_later_steps_see_its_state(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: informative
steps:
  - id: probe
    action: t.fail
    on_failure: continue
    retry: {max_attempts: 2, initial_interval: 1s}
    with: {retryable: true}
    compensate: {action: t.ok, with: {of: probe}}
  - id: branch
    action: t.ok
    when: "{{ steps.probe.state == 'failed_ignored' }}"
    with: {saw: "{{ steps.probe.state }}"}
  - id: never
    action: t.ok
    when: "{{ steps.probe.state == 'succeeded' }}"
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "completed" and status.error is None
    assert states(status) == {"probe": "failed_ignored", "branch": "succeeded", "never": "skipped"}
    probe = status.step("probe")
    assert (probe.attempts, probe.error) == (2, "probe broke on attempt 2")
    assert rec.calls[-1] == ("branch", False, {"saw": "failed_ignored"})
    assert order(rec) == ["probe", "probe", "branch"], "a completed run undoes nothing"
    failed = [d for k, d in kinds(rec, "probe") if k == "step_failed"]
    assert failed and failed[-1]["state"] == "failed_ignored"


async def test_an_ignored_step_keeps_its_undo_for_a_later_failure(skip_env):
    """Its undo was registered when it started (it may have acted), so a later failure runs it."""
    rec = Recorder()
    pb = playbook(
        """
name: ignored-then-fail
steps:
  - {id: probe, action: t.fail, on_failure: continue, compensate: {action: t.ok}}
  - {id: boom, action: t.fail}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "compensated"
    assert order(rec) == ["probe", "boom", "undo:probe"]
    assert status.failed_step == "boom"


async def test_continue_in_a_parallel_group_does_not_stop_its_siblings(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: par-continue
steps:
  - id: checks
    parallel:
      - {id: soft, action: t.fail, on_failure: continue}
      - {id: hard, action: t.ok}
  - {id: after, action: t.ok}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "completed"
    assert states(status) == {"soft": "failed_ignored", "hard": "succeeded", "after": "succeeded"}


async def test_fallback_output_takes_the_steps_place(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: fall-back
steps:
  - id: exit-standby
    action: t.fail
    retry: {max_attempts: 2, initial_interval: 1s}
    with: {retryable: true}
    compensate: {action: t.ok, with: {out: "{{ steps['exit-standby'].output.id }}"}}
    fallback: {action: t.ok, with: {fb: true, why: "{{ run.playbook }}"}}
  - {id: later, action: t.ok, with: {got: "{{ steps['exit-standby'].output.id }}", st: "{{ steps['exit-standby'].state }}"}}
  - {id: boom, action: t.fail}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    step = status.step("exit-standby")
    # the fallback ran after both attempts, its output became the step's, the run went on
    assert order(rec) == ["exit-standby", "exit-standby", "fallback:exit-standby", "later", "boom",
                          "undo:exit-standby"]
    assert rec.calls[3][2] == {"got": "exit-standby-out", "st": "succeeded"}
    assert step.fallback is not None
    assert (step.fallback.action, step.fallback.state, step.fallback.attempts) == ("t.ok", "succeeded", 1)
    assert step.fallback.output == step.output == {"echo": {"fb": True, "why": "fall-back"}, "id": "exit-standby-out"}
    assert step.error == "exit-standby broke on attempt 2"
    # the step's undo was registered when it started, and reads the output that took its place
    assert rec.calls[-1][2] == {"out": "exit-standby-out"}
    assert step.state == "compensated" and status.state == "compensated"
    key = next(k for k in rec.keys if k.endswith(":fallback"))
    assert key == f"{status.run_id}/{status.execution.replace('-', '')}:exit-standby:fallback"
    events = kinds(rec, "exit-standby")
    assert ("step_failed", {"action": "t.fail", "attempts": 2, "error": "exit-standby broke on attempt 2",
                            "state": "failed", "fallback": "t.ok"}) in events
    assert ("step_succeeded", {"action": "t.ok", "attempts": 1, "fallback": True}) in events


async def test_a_failed_fallback_fails_the_step_then_on_failure_applies(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: both-fail
steps:
  - id: a
    action: t.fail
    fallback: {action: t.fail, with: {fb: true}, retry: {max_attempts: 1}}
    on_failure: continue
  - id: b
    action: t.fail
    fallback: {action: t.fail, with: {fb: true}, retry: {max_attempts: 1}}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert order(rec) == ["a", "fallback:a", "b", "fallback:b"]
    assert states(status) == {"a": "failed_ignored", "b": "failed"}
    assert status.step("a").fallback.state == "failed"
    assert status.step("b").error == "b broke on attempt 1; fallback t.fail failed: b broke on attempt 1"
    assert status.state == "compensated" and status.failed_step == "b"
    # The trail says both: the step fell back, then the fallback failed too (engine-v11; before, the
    # second step_failed had the first's id and was dropped as a repeat).
    failed = [d for k, d in kinds(rec, "b") if k == "step_failed"]
    assert [d.get("fallback") for d in failed] == ["t.fail", None], failed
    assert "fallback t.fail failed" in failed[-1]["error"]


async def test_a_high_impact_fallback_asks_policy_and_a_deny_ends_the_run(skip_env):
    rec, seen = Recorder(), []
    pb = playbook(
        """
name: gated-fallback
steps:
  - id: restart
    action: t.fail
    irreversible: true
    on_failure: continue
    fallback: {action: t.ok, impact: high, with: {fb: true, how: scale}}
  - {id: after, action: t.ok}
"""
    )
    async with worker(skip_env.client, rec, policy({"allow": False, "reasons": ["freeze"]}, seen)) as w:
        status = await (await start(skip_env.client, w, run_input(pb))).result()
    (doc,) = seen
    assert doc["step"] == {"id": "restart", "action": "t.ok", "impact": "high", "with": {"fb": True, "how": "scale"},
                           "irreversible": True, "fallback_of": "t.fail"}
    assert doc["approvals"] == []
    assert order(rec) == ["restart"], "a denied fallback never runs, and a denial never continues"
    restart = status.step("restart")
    assert restart.state == "denied" and restart.fallback.state == "denied"
    assert "fallback t.ok denied by policy: freeze" in restart.error
    assert status.state == "compensated"


async def test_a_fallback_that_would_need_approval_is_refused(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: fallback-approval
steps:
  - {id: restart, action: t.fail, fallback: {action: t.ok, impact: high, with: {fb: true}}}
"""
    )
    decision = {"allow": True, "require_approval": True, "min_approvals": 1}
    async with worker(skip_env.client, rec, policy(decision)) as w:
        status = await (await start(skip_env.client, w, run_input(pb))).result()
    assert order(rec) == ["restart"]
    assert status.step("restart").state == "denied"
    assert "a fallback cannot wait for" in status.step("restart").error


async def test_core_fail_ends_the_run_with_its_reason_and_compensates(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: give-up
params: {why: {type: string}}
steps:
  - {id: one, action: t.ok, compensate: {action: t.ok}}
  - {id: stop, action: core.fail, with: {reason: "gave up: {{ params.why }}"}}
  - {id: never, action: t.ok}
"""
    )
    status = await execute(skip_env.client, rec, pb, params={"why": "disk still full"})
    assert status.state == "compensated"
    assert status.error == "gave up: disk still full" and status.failed_step == "stop"
    assert states(status) == {"one": "compensated", "stop": "failed", "never": "pending"}
    assert order(rec) == ["one", "undo:one"], "core.fail is no activity, and nothing after it runs"


async def test_core_fail_with_a_failed_undo_ends_failed(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: give-up-badly
steps:
  - {id: one, action: t.ok, compensate: {action: t.fail}}
  - {id: stop, action: core.fail, with: {reason: stop here}}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "failed" and status.error == "stop here" and status.not_undone == ["one"]


async def test_playbook_on_failure_runs_after_the_saga_with_run_error(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: with-failure-path
steps:
  - {id: one, action: t.ok, compensate: {action: t.ok}}
  - {id: two, action: t.fail}
on_failure:
  - {id: page, action: t.ok, with: {text: "{{ run.error }}", at: "{{ run.failed_step }}"}}
  - {id: diag, action: t.fail}
  - {id: after-diag, action: t.ok, with: {diag: "{{ steps.diag.state }}"}}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert order(rec) == ["one", "two", "undo:one", "page", "diag", "after-diag"]
    assert rec.calls[3][2] == {"text": "step two: two broke on attempt 1", "at": "two"}
    assert rec.calls[-1][2] == {"diag": "failed"}, "a failed on_failure step does not stop the others"
    # their own failure is recorded and changes nothing else
    assert status.state == "compensated" and status.error == "step two: two broke on attempt 1"
    assert status.failed_step == "two"
    assert {s.id: (s.group, s.state) for s in status.steps if s.group == "on_failure"} == {
        "page": ("on_failure", "succeeded"), "diag": ("on_failure", "failed"), "after-diag": ("on_failure", "succeeded"),
    }
    assert [c.step for c in status.compensations] == ["one"]


async def test_on_failure_sees_the_core_fail_reason_and_does_not_run_when_the_run_completes(skip_env):
    rec = Recorder()
    failing = playbook(
        """
name: fail-on-purpose
steps:
  - {id: stop, action: core.fail, with: {reason: "no healthy replica"}}
on_failure:
  - {id: page, action: t.ok, with: {text: "{{ run.error }}"}}
"""
    )
    status = await execute(skip_env.client, rec, failing)
    assert order(rec) == ["page"] and rec.calls[0][2] == {"text": "no healthy replica"}
    assert status.state == "compensated" and status.error == "no healthy replica"
    rec = Recorder()
    fine = playbook(failing.model_dump_json(by_alias=True).replace('"core.fail"', '"t.ok"'))
    status = await execute(skip_env.client, rec, fine)
    assert status.state == "completed" and order(rec) == ["stop"]
    assert status.step("page").state == "pending"


async def test_settles_drops_the_earlier_undo(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: standby
steps:
  - {id: enter-standby, action: t.ok, compensate: {action: t.ok, with: {exit: true}}}
  - {id: keep, action: t.ok, compensate: {action: t.ok}}
  - {id: exit-standby, action: t.ok, settles: enter-standby}
  - {id: boom, action: t.fail}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert order(rec) == ["enter-standby", "keep", "exit-standby", "boom", "undo:keep"]
    assert status.state == "compensated"
    assert status.step("enter-standby").settled_by == "exit-standby"
    assert status.step("enter-standby").state == "succeeded"
    assert [c.step for c in status.compensations] == ["keep"]
    assert ("compensation_settled", {"action": "t.ok", "by": "exit-standby"}) in kinds(rec, "enter-standby")


async def test_settles_a_parallel_group_and_not_through_a_fallback(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: settle-group
steps:
  - id: drain
    parallel:
      - {id: a, action: t.ok, compensate: {action: t.ok}}
      - {id: b, action: t.ok, compensate: {action: t.ok}}
  - {id: c, action: t.ok, compensate: {action: t.ok}}
  - {id: undrain, action: t.ok, settles: drain}
  - {id: uncheck, action: t.fail, settles: c, fallback: {action: t.ok, with: {fb: true}}}
  - {id: boom, action: t.fail}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert order(rec)[-2:] == ["boom", "undo:c"], "the fallback did not do uncheck's work: c is still undone"
    assert {s.id: s.settled_by for s in status.steps if s.settled_by} == {"a": "undrain", "b": "undrain"}


async def test_irreversible_in_policy_input_summary_and_still_compensated(skip_env):
    rec, seen = Recorder(), []
    pb = playbook(
        """
name: one-way
steps:
  - {id: migrate, action: t.ok, impact: high, irreversible: true}
  - {id: other, action: t.ok, compensate: {action: t.ok}}
  - {id: boom, action: t.fail}
"""
    )
    async with worker(skip_env.client, rec, policy({"allow": True}, seen)) as w:
        status = await (await start(skip_env.client, w, run_input(pb))).result()
    assert seen[0]["step"]["irreversible"] is True
    assert status.irreversible == ["migrate"]
    assert status.state == "compensated", "only irreversible steps are left: still compensated"
    assert states(status) == {"migrate": "succeeded", "other": "compensated", "boom": "failed"}
    assert "Irreversible (no rollback undoes them): migrate." in summary_text(status)
    finished = [e for e in rec.audit if e.kind == EventKind.run_finished]
    assert finished and finished[-1].details["irreversible"] == ["migrate"]
    shown = str(approval_blocks(status, "migrate", {"reasons": []}, 1))
    assert "Irreversible" in shown and "rollback will not undo this step" in shown


async def test_a_v1_step_policy_input_has_no_irreversible_key(skip_env):
    rec, seen = Recorder(), []
    pb = playbook("name: v1\nsteps: [{id: risky, action: t.ok, impact: high}]")
    async with worker(skip_env.client, rec, policy({"allow": True}, seen)) as w:
        status = await (await start(skip_env.client, w, run_input(pb))).result()
    assert status.state == "completed" and status.irreversible == []
    assert "irreversible" not in seen[0]["step"] and "fallback_of" not in seen[0]["step"]


async def test_args_past_the_bound_fail_their_step_and_the_run_rolls_back(dev_env):
    """Three args of a million characters each are within each render's bound, but together past
    Temporal's 2 MB payload limit: the server refused the task scheduling the action
    (PAYLOADS_TOO_LARGE) on every replay, and the run never rolled back `one` or ended. From
    engine-v12 a step's rendered args are at most ARGS_MAX bytes: the step fails, the run rolls back.
    (The dev server: the time-skipping test server keeps no such limit.)"""
    rec = Recorder()
    pb = playbook(
        """
name: big-args
steps:
  - {id: one, action: t.ok, compensate: {action: t.ok}}
  - id: big
    action: t.ok
    with: {a: "{{ 'x' * 999999 }}", b: "{{ 'y' * 999999 }}", c: "{{ 'z' * 999999 }}"}
"""
    )
    status = await asyncio.wait_for(execute(dev_env.client, rec, pb), 30)
    assert status.state == "compensated" and status.failed_step == "big"
    assert "bytes once rendered; a step's are at most 262,144" in status.step("big").error
    assert order(rec) == ["one", "undo:one"]
