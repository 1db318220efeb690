"""A high-impact step acts only once its policy decision and approvals are on the record
(bot/engine/spool.py). With the store up, a long low-impact sibling in a parallel group that was
handed the run's queued events holds them until it returns; the approval request and the vote
queue behind it. The approved high-impact step must not act before they are written."""

from __future__ import annotations

import uuid
from pathlib import Path

from bot.audit.store import SqliteAuditStore, default_path
from bot.engine.state import VoteRequest
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.engine.support import catalog_of, playbook, run_input, wait_for_state
from tests.engine.test_audit_trail import POLICY as APPROVAL_POLICY

GROUP = """
name: held-record
steps:
  - id: both
    parallel:
      - {id: slow, action: shell.run, with: {argv: [sleep, "15"]}}
      - {id: risky, action: shell.run, impact: high, with: {argv: [touch, "ACTED"]}}
"""


async def test_an_approved_high_impact_step_does_not_act_before_its_approval_is_recorded(dev_env, tmp_path: Path):
    acted = tmp_path / "acted"
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(APPROVAL_POLICY)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", shell_allow=["touch", "sleep"])
    pb = playbook(GROUP.replace("ACTED", str(acted)))
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb, requested_by="cli:carl"), id=f"held-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
            await wait_for_state(handle, lambda s: s.step("risky").state == "waiting_approval", timeout=60)
            await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:dana"))
            status = await handle.result()
    assert status.state == "completed" and acted.exists()
    with SqliteAuditStore(default_path(settings)) as store:
        trail = [(e.kind.value, e.step_id) for e in store.events(run_id=status.run_id) if e.step_id in (None, "risky")]
        assert store.verify().ok
    started = trail.index(("step_started", "risky"))
    for before in (("policy_decision", "risky"), ("approval_requested", "risky"), ("approval_vote", "risky")):
        assert before in trail[:started], f"{before} is not on the record before risky acted: {trail}"
