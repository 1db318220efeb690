"""Runs of chatty steps on the real dev server: large outputs live in the trail, the run stays small."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from bot.audit.cli import app as audit_app
from bot.audit.events import EventKind, canonical_json
from bot.audit.store import SqliteAuditStore, default_path
from bot.engine.state import RunStatus
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.engine.support import catalog_of, playbook, run_input
from tests.engine.test_audit_trail import POLICY

PYTHON = sys.executable
MIB = 1024 * 1024


def _settings(tmp_path: Path, **more: Any) -> Settings:
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    return Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", shell_allow=[PYTHON], **more)


def _emit(n: int, blob: int) -> str:
    """A shell.run step whose stdout is one JSON document of about `blob` bytes (parse: json
    keeps stdout and the parsed value: twice that in the output)."""
    code = f"import json; print(json.dumps({{'id': 's{n}', 'n': {n}, 'blob': 'x' * {blob}}}))"
    return json.dumps({"argv": [PYTHON, "-c", code], "parse": "json", "output_limit": 262144})


async def _run(dev_env: Any, settings: Settings, text: str) -> tuple[RunStatus, int]:
    """The run's final status and the size of its whole history, as Temporal serves it."""
    pb = playbook(text)
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb), id=f"outputs-{uuid.uuid4()}", task_queue=worker.task_queue
            )
            # Generous: before the fix such a run never ended (its result over Temporal's payload limit).
            status = await asyncio.wait_for(handle.result(), timeout=300)
            history = await handle.fetch_history()
    return status, len(history.to_json())


async def test_thirty_steps_of_512_kb_output_complete_and_the_trail_holds_every_byte(dev_env, tmp_path: Path):
    settings = _settings(tmp_path)
    steps = "\n".join(f"  - {{id: s{n}, action: shell.run, with: {_emit(n, 250_000)}}}" for n in range(1, 31))
    text = f"""
name: chatty
steps:
{steps}
  - id: report
    action: core.log
    with: {{message: "first {{{{ steps.s1.output.json.id }}}}, n {{{{ steps.s29.output.json.n }}}}"}}
"""
    status, history_bytes = await _run(dev_env, settings, text)

    assert status.state == "completed", status.error
    assert status.step("report").args == {"message": "first s1, n 29"}  # referenced fields kept and read
    assert status.step("s1").output == {"json": {"id": "s1"}}
    assert status.step("s29").output == {"json": {"n": 29}}
    unread = status.step("s2")
    assert unread.output == {} and unread.output_ref is not None  # unreferenced: preview and reference only
    assert unread.output_ref.size > 500_000 and unread.output_ref.preview.startswith('{"duration_ms":')
    assert len(unread.output_ref.preview) <= settings.output_preview_bytes
    assert len(status.model_dump_json()) < 200_000  # thirty 512 KB outputs: a small status
    assert history_bytes < 2 * MIB  # the whole history, every payload in it, under one payload's limit

    with SqliteAuditStore(default_path(settings)) as store:
        events = store.events(run_id=status.run_id)
        stored = [e for e in events if e.kind is EventKind.step_output]
        assert [e.step_id for e in stored] == [f"s{n}" for n in range(1, 31)]
        for event in stored:
            ref = status.step(event.step_id or "").output_ref
            assert ref is not None and ref.event_id == event.event_id
            output = event.details["output"]
            assert len(output["json"]["blob"]) == 250_000 and output["json"]["id"] == event.step_id
            assert len(canonical_json(output).encode()) == ref.size
        assert store.verify().ok
    kinds = [(e.kind.value, e.step_id) for e in events if e.step_id == "s2"]
    assert kinds == [("step_started", "s2"), ("step_output", "s2"), ("step_succeeded", "s2")]

    db = str(default_path(settings))
    runner = CliRunner()
    shown = runner.invoke(audit_app, ["show-output", unread.output_ref.event_id, "--db", db])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["json"] == {"id": "s2", "n": 2, "blob": "x" * 250_000}
    not_output = runner.invoke(audit_app, ["show-output", events[0].event_id, "--db", db])
    assert not_output.exit_code == 1 and "not a step_output" in not_output.output
    assert runner.invoke(audit_app, ["verify", "--db", db]).exit_code == 0


async def test_outputs_past_the_run_budget_fail_the_step_and_roll_back(dev_env, tmp_path: Path):
    """Each step keeps a 200 KB field its report reads: the sixth takes the run past 1 MiB."""
    settings = _settings(tmp_path, output_inline_max=256 * 1024)
    undo = "compensate: {action: core.log, with: {message: undone}}"
    steps = "\n".join(f"  - {{id: s{n}, action: shell.run, with: {_emit(n, 200_000)}, {undo}}}" for n in range(1, 9))
    reads = " ".join(f"{{{{ steps.s{n}.output.json.blob | length }}}}" for n in range(1, 9))
    text = f"""
name: over-budget
steps:
{steps}
  - {{id: report, action: core.log, with: {{message: "{reads}"}}}}
"""
    status, _ = await _run(dev_env, settings, text)

    assert status.state == "compensated"
    assert status.failed_step == "s6" and status.step("s6").state == "compensated"  # it acted: undone too
    error = status.step("s6").error or ""
    assert (status.error or "").startswith("step s6: its output (")
    assert "budget of 1 MiB" in error and "audit event" in error
    assert status.step("s6").output is None and status.step("s5").output is not None
    assert [s.state for s in status.steps[6:]] == ["pending", "pending", "pending"]
    assert [c.step for c in status.compensations] == ["s6", "s5", "s4", "s3", "s2", "s1"]
    assert all(c.state == "succeeded" for c in status.compensations)
    assert len(status.model_dump_json()) < 1.2 * MIB


async def test_a_large_output_read_as_a_whole_fails_its_step_naming_the_limit(dev_env, tmp_path: Path):
    settings = _settings(tmp_path)
    text = f"""
name: reads-whole
steps:
  - {{id: big, action: shell.run, with: {_emit(1, 30_000)}, compensate: {{action: core.log, with: {{message: undone}}}}}}
  - {{id: report, action: core.log, with: {{message: "{{{{ steps.big.output | tojson | length }}}}"}}}}
"""
    status, _ = await _run(dev_env, settings, text)

    assert status.state == "compensated" and status.failed_step == "big"
    error = status.step("big").error or ""
    assert "16384-byte limit" in error and "steps.big.output" in error and "reads it as a whole" in error
    assert status.step("report").state == "pending"
    ref = status.step("big").output_ref
    assert ref is not None
    with SqliteAuditStore(default_path(settings)) as store:
        event = store.get_event(ref.event_id)
        kinds = [e.kind.value for e in store.events(run_id=status.run_id) if e.step_id == "big"]
    assert event is not None and event.details["output"]["json"]["id"] == "s1"
    assert kinds[:3] == ["step_started", "step_output", "step_failed"] and "step_succeeded" not in kinds
