"""Schedules on the real Temporal dev server: `sync_schedules` keeps a task queue's schedules in
step with the playbooks (and nothing else), and a firing runs the playbook as the verified
principal `schedule`, through the real worker's admission and the shipped policies."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    ScheduleSpec,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from bot.engine.schedules import OWNER_MEMO, list_schedules, schedule_id, sync_schedules
from bot.engine.state import RunInput, RunStatus
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.identity.proofs import Keyring
from bot.playbook.loader import Catalog, load_text
from bot.settings import Settings
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
KEY = b"schedule-test-envelope-key-0123456789abcdef"

PLAYBOOK = """
name: NAME
summary: Nightly certificate check
owner: sre
params:
  host: {type: string, pattern: "^[a-z0-9.-]+$"}
  days: {type: integer, default: 14}
triggers:
  schedule:
    - {cron: "CRON", timezone: Europe/Berlin, params: {host: a.example}}
steps:
  - {id: note, action: core.log, with: {message: "check {{ params.host }} for {{ params.days }} days"}}
"""


def catalog(name: str, cron: str | None = "0 3 * * *") -> Catalog:
    text = PLAYBOOK.replace("NAME", name).replace("CRON", cron or "")
    if cron is None:
        text = text.replace(text[text.index("triggers:"):text.index("steps:")], "")
    return Catalog([load_text(text)])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def action_input(client: Client, desc: ScheduleDescription) -> RunInput:
    action = desc.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    return client.data_converter.payload_converter.from_payload(action.args[0], RunInput)  # type: ignore[arg-type]


async def gone(client: Client, sid: str) -> bool:
    try:
        await client.get_schedule_handle(sid).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


async def listed(client: Client, sid: str) -> bool:
    return any([entry.id == sid async for entry in await client.list_schedules()])


async def test_sync_creates_updates_and_deletes_only_its_own_schedules(dev_env: WorkflowEnvironment) -> None:
    client, keys = dev_env.client, Keyring(KEY)
    queue, name = unique("sched"), unique("nightly")
    sid = schedule_id(name, "0")
    foreign = await client.create_schedule(unique("foreign"), Schedule(
        action=ScheduleActionStartWorkflow("SomeoneElses", id=unique("x"), task_queue=queue),
        spec=ScheduleSpec(cron_expressions=["0 1 * * *"]),
    ))
    # Under our prefix but another deployment's (its memo names another task queue): not ours either.
    neighbour = await client.create_schedule(schedule_id(name, "spare"), Schedule(
        action=ScheduleActionStartWorkflow("PlaybookRun", id=unique("y"), task_queue="other-deployment"),
        spec=ScheduleSpec(cron_expressions=["0 2 * * *"]),
    ), memo={OWNER_MEMO: {"task_queue": "other-deployment", "playbook": name, "key": "spare"}})
    await eventually(lambda: listed(client, neighbour.id), what="the neighbour listed")

    first = await sync_schedules(client, catalog(name), keys, queue)
    assert (first.created, first.updated, first.deleted, first.failed) == ([sid], [], [], {})
    desc = await client.get_schedule_handle(sid).describe()
    assert desc.schedule.spec.time_zone_name == "Europe/Berlin"
    assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert [(t.hour, t.minute) for t in desc.info.next_action_times[:2]] == [(2, 0), (2, 0)]  # 03:00 CET in UTC
    run = action_input(client, desc)
    assert (run.trigger.kind, run.trigger.requested_by, run.trigger.schedule) == ("schedule", "schedule", sid)
    assert run.params == {"host": "a.example", "days": 14}  # typed and defaulted
    assert run.proof is not None and (run.proof.purpose, run.proof.run_id) == ("schedule", sid)

    again = await sync_schedules(client, catalog(name), keys, queue)
    assert (again.created, again.updated, again.unchanged) == ([], [], [sid])

    await client.get_schedule_handle(sid).pause(note="maintenance window")
    changed = await sync_schedules(client, catalog(name, "30 4 * * *"), keys, queue)
    assert (changed.created, changed.updated) == ([], [sid])
    desc = await client.get_schedule_handle(sid).describe()
    assert [(t.hour, t.minute) for t in desc.info.next_action_times[:1]] == [(3, 30)]
    assert (desc.schedule.state.paused, desc.schedule.state.note) == (True, "maintenance window")  # the operator's pause stays
    assert action_input(client, desc).playbook_hash == catalog(name, "30 4 * * *").get(name).hash

    rotated = await sync_schedules(client, catalog(name, "30 4 * * *"), Keyring(b"n" * 32, [KEY]), queue)
    assert rotated.updated == [sid]  # a new signing key re-signs: the old one may be retired
    proof = action_input(client, await client.get_schedule_handle(sid).describe()).proof
    assert proof is not None and proof.key_id == Keyring(b"n" * 32).vouching_key_id

    await eventually(lambda: listed(client, sid), what="the schedule listed")
    broken = await sync_schedules(client, Catalog(), keys, queue, keep={name})
    assert (broken.kept, broken.deleted) == ([sid], [])  # its file does not load: left as it was
    removed = await sync_schedules(client, catalog(name, None), keys, queue)
    assert (removed.deleted, removed.failed) == ([sid], {})
    assert await gone(client, sid)
    assert not await gone(client, foreign.id) and not await gone(client, neighbour.id)
    await foreign.delete()
    await neighbour.delete()


async def test_an_entry_whose_id_another_deployment_holds_is_left_alone(dev_env: WorkflowEnvironment) -> None:
    client = dev_env.client
    name = unique("drill")
    theirs = await client.create_schedule(schedule_id(name, "0"), Schedule(
        action=ScheduleActionStartWorkflow("PlaybookRun", id=unique("z"), task_queue="other-deployment"),
        spec=ScheduleSpec(cron_expressions=["0 2 * * *"]),
    ), memo={OWNER_MEMO: {"task_queue": "other-deployment", "playbook": name, "key": "0"}})
    report = await sync_schedules(client, catalog(name), Keyring(KEY), unique("sched"))
    assert report.created == report.updated == [] and "other-deployment" in report.failed[theirs.id]
    desc = await theirs.describe()
    assert desc.schedule.action.task_queue == "other-deployment"  # type: ignore[attr-defined]
    await theirs.delete()


async def test_a_fired_schedule_runs_once_as_the_verified_schedule_principal(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = dev_env.client
    name = unique("certs")
    loaded = catalog(name)
    settings = Settings(data_dir=tmp_path / "data", playbooks_dir=tmp_path, policies_dir=ROOT / "policies",
                        task_queue=unique("sched"))
    async with worker_deps(settings, catalog=loaded, keyring=Keyring(KEY, [KEY])) as deps:
        async with make_worker(client, settings.task_queue, deps.activities, keyring=deps.keyring):
            await sync_schedules(client, loaded, Keyring(KEY, [KEY]), settings.task_queue)
            sid = schedule_id(name, "0")
            handle = client.get_schedule_handle(sid)
            await handle.trigger()
            desc = await eventually(lambda: _fired(handle), what="the schedule fired")
            run_id = desc.info.recent_actions[0].action.workflow_id  # type: ignore[attr-defined]
            status = await client.get_workflow_handle(run_id, result_type=RunStatus).result()
            views = await list_schedules(client, settings.task_queue)
            # What anyone who can read the schedule can do: start its input themselves.
            copied = action_input(client, await handle.describe())
            elsewhere = await client.execute_workflow(PlaybookRun.run, copied, id=unique("raw"),
                                                      task_queue=settings.task_queue, result_type=RunStatus)
            replayed = await client.execute_workflow(PlaybookRun.run, copied, id=run_id,
                                                     task_queue=settings.task_queue, result_type=RunStatus)
            await handle.delete()
        started = [e for e in deps.audit.events(run_id=run_id) if e.kind.value == "run_started"]
    assert run_id.startswith(f"{sid}-") and run_id != sid  # Temporal appended the firing time
    assert status.state == "completed", status.error
    assert (status.requested_by, status.trigger, status.params) == ("schedule", "schedule", {"host": "a.example", "days": 14})
    assert status.requester is not None and (status.requester.verified, status.requester.verified_by) == (True, "schedule")
    assert len(started) == 1 and started[0].actor == "schedule"
    assert (elsewhere.state, replayed.state) == ("cancelled", "cancelled")  # refused: nothing ran
    assert elsewhere.error is not None and "proof" in elsewhere.error and "is not one schedule" in elsewhere.error
    assert replayed.error is not None and "already used by an earlier run" in replayed.error
    [view] = views
    assert (view.id, view.playbook, view.cron, view.timezone, view.paused) == (sid, name, "0 3 * * *", "Europe/Berlin", False)
    assert view.next_runs and view.recent_runs == [run_id]


async def _fired(handle: Any) -> ScheduleDescription | None:
    desc = await handle.describe()
    return desc if desc.info.recent_actions else None


@pytest.mark.parametrize("cron", ["0 3 * * *", "*/15 8-18 * * mon-fri", "0 0 1,15 jan-jun *", "5 4 * * 0", "@daily", "@hourly"])
async def test_every_cron_the_loader_accepts_temporal_accepts(dev_env: WorkflowEnvironment, cron: str) -> None:
    name = unique("cron")
    report = await sync_schedules(dev_env.client, catalog(name, cron), Keyring(KEY), unique("sched"))
    assert report.failed == {}
    handle = dev_env.client.get_schedule_handle(schedule_id(name, "0"))
    assert (await handle.describe()).info.next_action_times
    await handle.delete()
