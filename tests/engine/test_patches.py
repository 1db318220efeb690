"""A new run records one patch marker (engine-v2) for every behaviour older runs asked one by one,
and its history replays against today's code; older histories replay too (tests/reliability/test_replay.py)."""

from __future__ import annotations

import json

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from bot.engine.lock_workflow import KeyLock
from bot.engine.worker import workflow_runner
from bot.engine.workflow import ENGINE_PATCH, PlaybookRun
from tests.engine.support import Recorder, start, wait_for_state, worker
from tests.engine.test_approvals import APPROVAL, gated, policy, vote


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
        handle = await start(dev_env.client, w, gated("carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        await handle.execute_update(PlaybookRun.vote, vote("risky", "dana"))
        await handle.execute_update(PlaybookRun.vote, vote("risky", "erin"))
        status = await handle.result()
    assert status.state == "completed"
    history = await handle.fetch_history()
    assert patch_ids(history) == [ENGINE_PATCH]
    # What the run had from the patches it no longer asks: admitted (trust-v1), per-execution
    # event ids (audit-spool-v1).
    assert status.requester is not None and status.requester.principal == "carl"
    execution = history.events[0].workflow_execution_started_event_attributes.first_execution_run_id.replace("-", "")
    assert rec.audit and all(f"/{execution}:" in e.event_id for e in rec.audit)
    replayer = Replayer(workflows=[PlaybookRun, KeyLock], data_converter=pydantic_data_converter,
                        workflow_runner=workflow_runner())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None
