"""A failure path must not be a way around policy: a denied or rejected step neither continues
(`on_failure: continue`) nor falls back; the run ends and rolls back as any denial does."""

from __future__ import annotations

from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.engine.test_approvals import policy

PB = """
name: bypass
steps:
  - {id: prepare, action: t.ok, compensate: {action: t.ok}}
  - id: restart
    action: t.ok
    impact: high
    on_failure: continue
    fallback: {action: t.ok, with: {fb: true}}
  - {id: after, action: t.ok}
"""


async def test_a_denied_step_neither_continues_nor_falls_back(skip_env):
    rec = Recorder()
    async with worker(skip_env.client, rec, policy({"allow": False, "reasons": ["freeze"]})) as w:
        status = await (await start(skip_env.client, w, run_input(playbook(PB)))).result()
    assert [(s, c) for s, c, _ in rec.calls] == [("prepare", False), ("prepare", True)]
    assert status.step("restart").state == "denied" and status.step("restart").fallback is None
    assert status.step("after").state == "pending" and status.state == "compensated"


async def test_a_step_that_times_out_waiting_for_approval_neither_continues_nor_falls_back(skip_env):
    rec = Recorder()
    decision = {"allow": True, "require_approval": True, "approval_timeout": "1m"}
    async with worker(skip_env.client, rec, policy(decision)) as w:
        status = await (await start(skip_env.client, w, run_input(playbook(PB)))).result()
    assert status.step("restart").state == "rejected" and status.step("restart").fallback is None
    assert [s for s, c, _ in rec.calls if not c] == ["prepare"] and status.state == "compensated"
