"""A real worker on the PostgreSQL store: a run's trail lands in one chain, and the worker leaves a
signed checkpoint that `audit verify --checkpoints` accepts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.audit.cli import app as audit_app
from bot.audit.postgres import PostgresAuditStore
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.engine.support import catalog_of, playbook, run_input
from tests.engine.test_audit_trail import POLICY

PB = """
name: audited-pg
owner: sre
steps:
  - id: one
    action: core.log
    with: {message: one}
  - id: two
    action: core.log
    with: {message: two}
"""
KEY = "e" * 64


async def test_a_run_on_postgresql_is_recorded_and_checkpointed(
    dev_env, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    checkpoints = tmp_path / "checkpoints.jsonl"
    settings = Settings(
        data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", audit_url=pg_url,
        audit_checkpoint_file=checkpoints, envelope_key=KEY,
    )  # fmt: skip
    async with worker_deps(settings, catalog=catalog_of(playbook(PB))) as deps:
        assert isinstance(deps.audit, PostgresAuditStore)
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            status = await dev_env.client.execute_workflow(
                PlaybookRun.run, run_input(playbook(PB), requested_by="cli:carl"), id=f"pg-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
    assert status.state == "completed"
    assert not (tmp_path / "data" / "audit.db").exists()  # nothing went to SQLite

    with PostgresAuditStore(pg_url) as store:
        kinds = [e.kind.value for e in store.events(run_id=status.run_id)]
        head = store.last(1)[0]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and kinds.count("step_succeeded") == 2
    [line] = [json.loads(text) for text in checkpoints.read_text().splitlines()]  # written at shutdown
    assert (line["seq"], line["hash"]) == (head.seq, head.hash)

    monkeypatch.setenv("PLAYBOOK_BOT_AUDIT_URL", pg_url)
    monkeypatch.setenv("PLAYBOOK_BOT_ENVELOPE_KEY", KEY)
    result = CliRunner().invoke(audit_app, ["verify", "--checkpoints", str(checkpoints)])
    assert result.exit_code == 0 and result.stdout == f"ok: {head.seq} events, chain intact, 1 checkpoints hold\n"
