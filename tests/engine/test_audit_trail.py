"""A real worker (shipped activities, embedded policy, SQLite audit store) records a run's story."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from typer.testing import CliRunner

from bot.audit.cli import app as audit_app
from bot.audit.store import SqliteAuditStore, default_path
from bot.engine.state import VoteRequest
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.engine.support import catalog_of, playbook, run_input, wait_for_state
from tests.waiting import eventually

POLICY = """package playbook.authz

import rego.v1

decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": []} if {
	input.step.impact != "high"
} else := {"allow": true, "require_approval": true, "min_approvals": 1, "approver_groups": ["sre"], "approval_timeout": "10m", "reasons": ["high impact needs one approval"]}

default approver := {"allow": false, "reasons": ["not in sre"]}

approver := {"allow": true, "reasons": []} if input.user.id == "cli:dana"

default start := {"allow": true, "reasons": []}
"""

ALLOW_POLICY = """package playbook.authz

import rego.v1

default decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": []}

default approver := {"allow": false, "reasons": ["no votes here"]}

default start := {"allow": true, "reasons": []}
"""

PB = """
name: audited
owner: sre
steps:
  - id: prep
    action: core.log
    with: {message: prepare}
    compensate: {action: core.log, with: {message: undo prepare}}
  - id: risky
    action: core.log
    impact: high
    with: {message: "the risky thing"}
    compensate: {action: core.log, with: {message: undo risky}}
  - id: skipped
    action: core.log
    when: "{{ false }}"
    with: {message: never}
  - id: boom
    action: http.request
    with: {url: "http://127.0.0.1:9/unreachable"}
    retry: {max_attempts: 1}
"""

EXPECTED = [
    ("run_started", None),
    ("step_started", "prep"),
    ("step_succeeded", "prep"),
    ("policy_decision", "risky"),
    ("approval_requested", "risky"),
    ("approval_vote", "risky"),
    ("step_started", "risky"),
    ("step_succeeded", "risky"),
    ("step_skipped", "skipped"),
    ("step_started", "boom"),
    ("step_failed", "boom"),
    ("compensation_started", "risky"),
    ("compensation_succeeded", "risky"),
    ("compensation_started", "prep"),
    ("compensation_succeeded", "prep"),
    ("run_finished", None),
]


async def test_run_with_approval_and_compensation_records_the_full_story(dev_env, tmp_path: Path):
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies")
    async with worker_deps(settings, catalog=catalog_of(playbook(PB))) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(playbook(PB), requested_by="cli:carl"), id=f"audited-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
            await wait_for_state(handle, lambda s: s.state == "waiting_approval", timeout=20)
            await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:dana"))
            status = await handle.result()
    assert status.state == "compensated"

    store = SqliteAuditStore(default_path(settings))
    events = store.events(run_id=status.run_id)
    assert [(e.kind.value, e.step_id) for e in events] == EXPECTED
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    by_kind = {e.kind.value: e for e in events}
    assert by_kind["policy_decision"].details["require_approval"] is True
    assert by_kind["policy_decision"].details["args"] == {"message": "the risky thing"}
    assert by_kind["approval_vote"].actor == "cli:dana" and by_kind["approval_vote"].details["vote"] == "approve"
    assert by_kind["approval_requested"].details["args"] == {"message": "the risky thing"}
    assert by_kind["run_started"].actor == "cli:carl"
    assert by_kind["run_finished"].details["state"] == "compensated"
    assert "127.0.0.1:9" in by_kind["step_failed"].details["error"]
    assert store.verify().ok
    store.close()

    runner = CliRunner()
    exported = runner.invoke(audit_app, ["export", status.run_id, "--format", "json", "--db", str(default_path(settings))])
    assert exported.exit_code == 0, exported.output
    assert [(e["kind"], e["step_id"]) for e in json.loads(exported.stdout)] == [(k, s) for k, s in EXPECTED]
    markdown = runner.invoke(audit_app, ["export", status.run_id, "--format", "md", "--db", str(default_path(settings))])
    assert markdown.exit_code == 0 and "approval_vote" in markdown.stdout and status.run_id in markdown.stdout
    verified = runner.invoke(audit_app, ["verify", "--db", str(default_path(settings))])
    assert verified.exit_code == 0, verified.output


async def test_a_retried_step_is_recorded_once(dev_env, tmp_path: Path):
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    marker = tmp_path / "first-attempt-done"
    settings = Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", shell_allow=["sh"])
    pb = playbook(
        f"""
name: retried
steps:
  - id: flaky
    action: shell.run
    with: {{argv: [sh, -c, "test -f {marker} || {{ touch {marker}; exit 1; }}"]}}
    retry: {{max_attempts: 3, initial_interval: 10ms}}
"""
    )
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            status = await dev_env.client.execute_workflow(
                PlaybookRun.run, run_input(pb), id=f"retried-{uuid.uuid4()}", task_queue=worker.task_queue
            )
    assert (status.state, status.step("flaky").attempts) == ("completed", 2)
    with SqliteAuditStore(default_path(settings)) as store:
        kinds = [e.kind.value for e in store.events(run_id=status.run_id)]
    assert kinds == ["run_started", "step_started", "step_succeeded", "run_finished"]


async def test_unwritable_store_keeps_a_high_impact_step_from_running(dev_env, tmp_path: Path):
    """No record, no high-impact step: it waits (status says how many events wait for the store)
    while the flusher retries, and acts once its policy decision is on the record. Nothing lost."""
    data = tmp_path / "data"
    data.write_text("a file where the data directory should be")  # the store cannot be opened
    acted = tmp_path / "acted"
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(ALLOW_POLICY)
    settings = Settings(data_dir=data, policies_dir=tmp_path / "policies", shell_allow=["touch"])
    pb = playbook(
        f"""
name: needs-record
steps:
  - {{id: risky, action: shell.run, impact: high, with: {{argv: [touch, "{acted}"]}}}}
"""
    )
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        assert "data" in (deps.audit.check_writable() or "")
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb, requested_by="cli:carl"), id=f"unrecorded-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
            status = await wait_for_state(handle, lambda s: s.audit_pending >= 2, timeout=60)
            assert status.step("risky").decision is not None and status.step("risky").decision["allow"] is True
            await eventually(lambda: flush_attempts(handle, 3), timeout=120, what="three failed flushes")
            assert not acted.exists(), "a high-impact step acted before its policy decision was recorded"
            assert (await handle.query(PlaybookRun.status)).audit_pending >= 2
            data.unlink()
            data.mkdir()  # the operator frees the disk: the decision is recorded, then the step acts
            status = await handle.result()
    assert status.state == "completed", status.error
    assert acted.exists() and status.audit_pending == 0
    with SqliteAuditStore(default_path(settings)) as store:
        kinds = [(e.kind.value, e.step_id) for e in store.events(run_id=status.run_id)]
        assert store.verify().ok
    assert kinds == [("run_started", None), ("policy_decision", "risky"), ("step_started", "risky"),
                     ("step_succeeded", "risky"), ("run_finished", None)]


async def flush_attempts(handle, at_least: int) -> bool:
    """Whether the run's flusher has failed this many times: `audit.record` local activity markers
    in its history that carry a failure."""
    history = await handle.fetch_history()
    failed = 0
    for e in history.events:
        marker = e.marker_recorded_event_attributes
        if not e.HasField("marker_recorded_event_attributes") or marker.marker_name != "core_local_activity":
            continue
        data = json.loads(marker.details["data"].payloads[0].data)
        failed += data.get("activity_type") == "audit.record" and marker.HasField("failure")
    return failed >= at_least


async def test_a_missing_secret_fails_on_the_first_attempt_and_says_so(dev_env, tmp_path: Path):
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies")
    pb = playbook(
        "name: nosecret\nsecrets: [NOT_SET_ANYWHERE]\n"
        "steps: [{id: t, action: core.log, with: {message: '{{ secret(\"NOT_SET_ANYWHERE\") }}'}}]"
    )
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            status = await dev_env.client.execute_workflow(
                PlaybookRun.run, run_input(pb), id=f"nosecret-{uuid.uuid4()}", task_queue=worker.task_queue
            )
    step = status.step("t")
    assert (step.state, step.attempts) == ("failed", 1), "non-retryable: one attempt, and status says one"
    assert "NOT_SET_ANYWHERE" in step.error and "is not set" in step.error
    assert "PLAYBOOK_BOT_SECRET_NOT_SET_ANYWHERE" in step.error and "PLAYBOOK_BOT_SECRETS_FILE" in step.error
