"""A new run records one patch marker (engine-v2) for every behaviour older runs asked one by one,
and its history replays against today's code; older histories replay too (tests/reliability/test_replay.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from bot.engine.lock_workflow import KeyLock
from bot.engine.worker import make_worker, worker_deps, workflow_runner
from bot.engine.workflow import ENGINE_PATCH, PlaybookRun
from bot.settings import Settings
from tests.engine.support import Recorder, catalog_of, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import APPROVAL, gated, policy, vote

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def patch_ids(history) -> list[str]:
    ids = []
    for e in history.events:
        if e.HasField("marker_recorded_event_attributes") and e.marker_recorded_event_attributes.marker_name == "core_patch":
            payload = e.marker_recorded_event_attributes.details["patch-data"].payloads[0]
            ids.append(json.loads(payload.data)["id"])
    return ids


async def test_a_new_run_records_one_patch_marker_and_replays(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(APPROVAL)) as w:
        handle = await start(dev_env.client, w, gated("cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:dana"))
        await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:erin"))
        status = await handle.result()
    assert status.state == "completed"
    history = await handle.fetch_history()
    assert patch_ids(history) == [ENGINE_PATCH]
    # What the run had from the patches it no longer asks: admitted (trust-v1), per-execution
    # event ids (audit-spool-v1).
    assert status.requester is not None and status.requester.principal == "cli:carl"
    execution = history.events[0].workflow_execution_started_event_attributes.first_execution_run_id.replace("-", "")
    assert rec.audit and all(f"/{execution}:" in e.event_id for e in rec.audit)
    replayer = Replayer(workflows=[PlaybookRun, KeyLock], data_converter=pydantic_data_converter,
                        workflow_runner=workflow_runner())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None


LOGS = """
name: logs
steps:
  - {id: first, action: core.log, with: {message: "first {{ run.playbook }}"}}
  - {id: second, action: core.log, with: {message: second}}
  - {id: third, action: core.log, with: {message: third}}
"""

BAD_LOG = """
name: bad-log
steps:
  - {id: first, action: core.log, with: {message: first}}
  - {id: broken, action: core.log, with: {level: loud}}
"""


async def run_with_real_worker(dev_env, tmp_path, text: str):
    pb = playbook(text)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=POLICIES)
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as w:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb), id=f"run-{uuid.uuid4()}", task_queue=w.task_queue
            )
            status = await handle.result()
        events = await asyncio.to_thread(deps.audit.events, handle.id)
    return status, await handle.fetch_history(), events


async def test_core_log_runs_as_a_local_activity_with_its_record_first(dev_env, tmp_path):
    """No activity task for core.log steps (engine-v2), and each step's record is still written
    before it acts, in order, run_finished last."""
    status, history, events = await run_with_real_worker(dev_env, tmp_path, LOGS)
    assert status.state == "completed"
    assert [s.output for s in status.steps] == [{"message": "first logs"}, {"message": "second"}, {"message": "third"}]
    scheduled = [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]
    assert scheduled == []
    local = [e for e in history.events if e.HasField("marker_recorded_event_attributes")
             and e.marker_recorded_event_attributes.marker_name == "core_local_activity"]
    assert len(local) == 4  # run.admit and the three steps
    kinds = [(e.step_id, e.kind.value) for e in events]
    assert kinds == [
        (None, "run_started"),
        ("first", "step_started"), ("first", "step_succeeded"),
        ("second", "step_started"), ("second", "step_succeeded"),
        ("third", "step_started"), ("third", "step_succeeded"),
        (None, "run_finished"),
    ]
    replayer = Replayer(workflows=[PlaybookRun, KeyLock], data_converter=pydantic_data_converter,
                        workflow_runner=workflow_runner())
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None


async def test_a_local_core_log_with_bad_params_fails_its_step(dev_env, tmp_path):
    status, _, events = await run_with_real_worker(dev_env, tmp_path, BAD_LOG)
    assert status.state == "compensated"
    broken = status.step("broken")
    assert broken.state == "failed" and broken.attempts == 1
    assert "core.log: bad params" in (broken.error or "") and "message" in (broken.error or "")
    assert ("broken", "step_failed") in [(e.step_id, e.kind.value) for e in events]


async def test_an_unsandboxed_worker_makes_histories_the_sandbox_replays(dev_env, tmp_path):
    """make_worker(sandboxed=False), the faster runner: same outcome, and its history replays
    within the sandbox, which still checks the workflow code's determinism."""
    pb = playbook(LOGS)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=POLICIES)
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities, sandboxed=False) as w:
            assert not isinstance(w.config()["workflow_runner"], SandboxedWorkflowRunner)
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb), id=f"run-{uuid.uuid4()}", task_queue=w.task_queue
            )
            status = await handle.result()
    assert status.state == "completed"
    replayer = Replayer(workflows=[PlaybookRun, KeyLock], data_converter=pydantic_data_converter,
                        workflow_runner=workflow_runner())
    history = await handle.fetch_history()
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None
