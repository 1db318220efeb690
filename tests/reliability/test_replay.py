"""Checked-in histories of real runs must replay against today's workflow code.

A failure here means a change would break runs already in flight: guard it with
`workflow.patched()` instead. Record new histories with tests/reliability/record_history.py;
keep the old ones, which is what makes them a test of compatibility.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from bot.engine.lock_workflow import KeyLock
from bot.engine.sandbox import workflow_runner
from bot.engine.workflow import PlaybookRun
from bot.slack.notifier import SlackNotifier
from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.engine.test_approvals import policy
from tests.reliability.record_history import parallel_flush_order, recorded_names

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_checked_in():
    """Every recorded scenario (approvals, failed undo, parallel, cancel, foreach, a run queued behind
    a lock with its holder and the key's lock workflow, a sub-playbook's parent and child) plus the
    demo runs."""
    names = {p.stem for p in HISTORIES}
    assert recorded_names() | {"demo-remediation-completed", "demo-remediation-compensated"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_replay(path: Path):
    """PlaybookRun histories and KeyLock's (a lock workflow outlives the runs it serves)."""
    replayer = Replayer(workflows=[PlaybookRun, KeyLock], data_converter=pydantic_data_converter,
                        workflow_runner=workflow_runner(pydantic_data_converter))  # as the worker runs them
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


def test_the_engine_v6_parallel_history_has_the_order_it_was_recorded_for():
    """A history pins a path only if it took it: the sibling dispatched after an audit flush, in
    the task after both policy answers (with `_after_flush` off, this history does not replay)."""
    path = Path(__file__).parent / "histories" / "engine-v6-parallel-approval.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    assert parallel_flush_order(list(history.events))


def test_the_engine_v6_local_channel_history_waited_for_the_bound():
    """A history pins a path only if it took it: the engine-v6 run of local steps waited for the
    SLACK_DEFER timer and synced in a second task, the path engine-v7 drops, so its replay (above)
    checks that path. A re-recording by newer code, which would not, fails here."""
    path = Path(__file__).parent / "histories" / "engine-v6-local-channel.json"
    events = list(WorkflowHistory.from_json(path.stem, path.read_text()).events)
    kinds = [e.WhichOneof("attributes") for e in events]
    assert kinds.count("timer_started_event_attributes") == 1
    assert kinds.count("workflow_task_completed_event_attributes") == 2


async def test_replay_detects_a_changed_workflow(monkeypatch):
    """The guard works: a workflow that schedules a different activity fails the replay."""
    path = next(p for p in HISTORIES if "compensated" in p.stem)
    original = PlaybookRun._execute

    async def renamed(self, step_id, action, *args, **kwargs):
        return await original(self, step_id, "core.renamed", *args, **kwargs)

    monkeypatch.setattr(PlaybookRun, "_execute", renamed)
    replayer = Replayer(workflows=[PlaybookRun], data_converter=pydantic_data_converter, workflow_runner=workflow_runner())
    result = await replayer.replay_workflow(WorkflowHistory.from_json("x", path.read_text()), raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, NondeterminismError), result.replay_failure


CHANNEL_PLAYBOOK = """
name: queried-at-once
channel: "#incidents"
steps:
  - {id: prepare, action: t.ok, compensate: {action: t.ok}}
  - {id: risky, action: t.ok, impact: high}
"""


async def test_a_run_queried_right_after_its_start_replays(dev_env):
    """The front door starts a run and asks its status at once. That query splits the workflow task
    around the worker's admission (a local activity), and the run's own history must still replay:
    a worker that restarts mid-run replays it, and a nondeterminism error would leave the run stuck.
    (Where the query lands is timing; of a few runs, before the fix, most failed to replay.)
    tests/reliability/histories/trust-approval-approved.json holds that shape for good."""
    replayer = Replayer(workflows=[PlaybookRun], data_converter=pydantic_data_converter, workflow_runner=workflow_runner())
    for _ in range(4):
        rec = Recorder()
        async with worker(dev_env.client, rec, [*policy({"allow": True}), SlackNotifier(None).sync]) as w:
            handle = await start(dev_env.client, w, run_input(playbook(CHANNEL_PLAYBOOK), requested_by="cli:tester"))
            assert (await handle.query(PlaybookRun.status)).state in ("pending", "running")
            status = await handle.result()
        assert status.state == "completed", status.error
        assert rec.sequence() == ["prepare", "risky"]
        result = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
        assert result.replay_failure is None, result.replay_failure


def test_the_engine_v8_history_took_the_front_doors_verdicts():
    """A history pins a path only if it took it: both votes of the engine-v8 run (carol refused, bob
    allowed) were decided by the front door's sealed verdicts, with no `policy.approver` question of
    the worker's. Its replay (above) then fails on any change to the approver input or its digest
    that is not behind a patch: such a change turns these votes into local activities on replay."""
    from tests.engine.test_patches import patch_ids
    from tests.security.test_front_verdicts import approver_asks

    path = Path(__file__).parent / "histories" / "engine-v8-front-verdict.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    assert patch_ids(history) == ["engine-v8"]
    assert sum(e.HasField("workflow_execution_update_accepted_event_attributes") for e in history.events) == 2
    assert approver_asks(history) == 0
