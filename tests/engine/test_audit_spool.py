"""The run's audit queue (bot/engine/spool.py) as the terminal shows it, and per-execution ids."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console

from bot.audit.events import EventKind
from bot.audit.recorder import event
from bot.console import progress_lines, status_table
from bot.engine.state import RunStatus


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
