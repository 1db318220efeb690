"""The run's audit queue (bot/engine/spool.py) as the terminal shows it, and per-execution ids."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from bot.audit.events import EventKind
from bot.audit.recorder import event
from bot.audit.store import SqliteAuditStore, default_path
from bot.console import progress_lines, status_table
from bot.engine.state import RunStatus, VoteRequest
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.engine.support import catalog_of, playbook, run_input, wait_for_state
from tests.engine.test_audit_trail import ALLOW_POLICY, flush_attempts
from tests.engine.test_audit_trail import POLICY as APPROVAL_POLICY
from tests.waiting import eventually


def _status(pending: int) -> RunStatus:
    return RunStatus(run_id="r1", playbook="p", playbook_hash="h", state="compensated", requested_by="cli:carl",
                     trigger="cli", audit_pending=pending)


def _text(status: RunStatus) -> str:
    console = Console(width=200, record=True)
    console.print(status_table(status))
    return console.export_text()


def test_status_explains_a_run_that_holds_for_the_audit_store():
    assert "audit store down: 3 event(s)" in _text(_status(3))
    assert "audit store" not in _text(_status(0))
    assert any("audit store down" in line for line in progress_lines(_status(0), _status(2)))
    assert "audit store back: the run's record is complete" in progress_lines(_status(2), _status(0))


def test_event_ids_name_the_execution_and_old_runs_keep_theirs():
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    old = event("r1", "s", EventKind.step_started, ts=ts)
    first = event("r1", "s", EventKind.step_started, ts=ts, execution="aaa")
    second = event("r1", "s", EventKind.step_started, ts=ts, execution="bbb")
    assert old.event_id == "r1:s:step_started"
    assert first.event_id == "r1/aaa:s:step_started" != second.event_id == "r1/bbb:s:step_started"


TIMES_OUT = """
name: times-out
steps:
  - {id: slow, action: shell.run, with: {argv: [sleep, "60"]}, timeout: 2s, retry: {max_attempts: 1}}
"""


async def test_a_step_that_times_out_while_the_store_is_down_is_still_on_the_record(dev_env, tmp_path: Path):
    """A timeout hands nothing back (the worker gave up on the attempt), so the workflow keeps the
    started event itself: the record says the step started and timed out, once the store is back."""
    data = tmp_path / "data"
    data.write_text("a file where the data directory should be")  # the store cannot be opened
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(ALLOW_POLICY)
    settings = Settings(data_dir=data, policies_dir=tmp_path / "policies", shell_allow=["sleep"])
    pb = playbook(TIMES_OUT)
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb, requested_by="cli:carl"), id=f"timeout-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
            status = await wait_for_state(handle, lambda s: s.step("slow").state == "failed" and s.audit_pending >= 3,
                                          timeout=120)
            assert "timed out" in (status.step("slow").error or "")
            data.unlink()
            data.mkdir()
            status = await handle.result()
    assert status.audit_pending == 0
    with SqliteAuditStore(default_path(settings)) as store:
        trail = [(e.kind.value, e.step_id) for e in store.events(run_id=status.run_id)]
        assert store.verify().ok
    assert trail == [("run_started", None), ("step_started", "slow"), ("step_failed", "slow"), ("run_finished", None)]


GATED = """
name: gated-outage
steps:
  - {id: risky, action: shell.run, impact: high, with: {argv: [touch, "ACTED"]}}
"""


async def test_a_vote_counts_while_the_store_is_down_and_the_step_waits_for_the_record(dev_env, tmp_path: Path):
    """Approval with the store down: the request, the decision and the vote wait in the run; the
    approved high-impact step acts only once they are all on the record, in the order they happened."""
    data = tmp_path / "data"
    data.write_text("a file where the data directory should be")
    acted = tmp_path / "acted"
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(APPROVAL_POLICY)
    settings = Settings(data_dir=data, policies_dir=tmp_path / "policies", shell_allow=["touch"])
    pb = playbook(GATED.replace("ACTED", str(acted)))
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb, requested_by="cli:carl"), id=f"gated-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
            await wait_for_state(handle, lambda s: s.state == "waiting_approval", timeout=60)
            await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:dana"))
            status = await wait_for_state(handle, lambda s: s.step("risky").approvals and s.audit_pending >= 4,
                                          timeout=60)
            await eventually(lambda: flush_attempts(handle, 2), timeout=120, what="two failed flushes")
            assert not acted.exists(), "approved, but its record is not down yet"
            data.unlink()
            data.mkdir()
            status = await handle.result()
    assert status.state == "completed" and acted.exists()
    with SqliteAuditStore(default_path(settings)) as store:
        trail = [(e.kind.value, e.step_id) for e in store.events(run_id=status.run_id)]
        assert store.verify().ok
    assert trail == [("run_started", None), ("policy_decision", "risky"), ("approval_requested", "risky"),
                     ("approval_vote", "risky"), ("step_started", "risky"), ("step_succeeded", "risky"),
                     ("run_finished", None)]
