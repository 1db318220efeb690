"""Schedules: each playbook's `triggers.schedule` entries as Temporal Schedules, kept in step.

`sync_schedules` makes the namespace's schedules match a catalog: it creates the missing ones,
updates those whose playbook version, cron, zone, params, overlap or signing key changed, and
deletes those whose entry is gone. It is idempotent (a second call changes nothing) and touches
only schedules it owns: an id under `playbook-schedule:` *and* a memo naming this task queue.
Workers call it when they start and after every catalog reload that changed something
(bot/services.py).

A schedule's runs start with an input fixed when the schedule was written, so their proof is
a schedule proof (purpose `schedule`, principal `schedule`) that a worker signs over the schedule
id, the playbook's name and hash, the params and the trigger; admission checks it without an age
(bot/engine/admission.py `_scheduled_actor`). An edited playbook changes the hash, so its
schedules are re-signed by the reload's sync; a firing before that is refused once the worker
no longer admits the old version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Collection

import structlog
from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from bot.engine.state import RunInput, TriggerContext
from bot.engine.workflow import PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, schedule_content, start_content
from bot.playbook.loader import Catalog, LoadedPlaybook
from bot.playbook.model import ScheduleTrigger
from bot.playbook.params import coerce_params

log = structlog.get_logger(__name__)

ID_PREFIX = "playbook-schedule:"
OWNER_MEMO = "playbook-bot"  # on the schedule: ScheduleOwner
SPEC_MEMO = "playbook-bot-schedule"  # on the action (so on every run it starts): ScheduleSpecMemo
PRINCIPAL = "schedule"
CATCHUP_WINDOW = timedelta(hours=1)  # a firing missed by longer (Temporal down) is dropped, not run late
OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer_all": ScheduleOverlapPolicy.BUFFER_ALL,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}


class ScheduleOwner(BaseModel):
    """The schedule's memo: who made it, for which task queue and playbook (set once, at creation)."""

    owner: str = "playbook-bot"
    task_queue: str
    playbook: str
    key: str


class ScheduleSpecMemo(BaseModel):
    """The action's memo: the entry as written (Temporal hands the cron back parsed) and its fingerprint."""

    schedule: str
    playbook: str
    cron: str
    timezone: str
    fingerprint: str


class SyncReport(BaseModel):
    """What one sync did, by schedule id; `failed` says why a schedule could not be brought in step."""

    created: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list, description="Not in the catalog, but its playbook's file is broken: left as it was.")
    failed: dict[str, str] = Field(default_factory=dict)


def schedule_id(playbook: str, key: str) -> str:
    """`playbook-schedule:<playbook>:<id or index>`; a firing's run id is this plus `-<time>`."""
    return f"{ID_PREFIX}{playbook}:{key}"


@dataclass(frozen=True)
class Planned:
    """One schedule as the catalog wants it."""

    id: str
    key: str
    loaded: LoadedPlaybook
    trigger: ScheduleTrigger
    params: dict[str, Any]

    def fingerprint(self, task_queue: str, keyring: Keyring) -> str:
        """Everything the schedule's definition depends on: a change to any means an update."""
        doc = {
            "v": 1,
            "hash": self.loaded.hash,
            "cron": self.trigger.cron,
            "timezone": self.trigger.timezone,
            "overlap": self.trigger.overlap,
            "params": self.params,
            "task_queue": task_queue,
            "key_id": keyring.vouching_key_id,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def planned(catalog: Catalog) -> list[Planned]:
    """Every schedule entry of every playbook, params typed and defaulted (the loader checked them)."""
    out: list[Planned] = []
    for name, loaded in catalog.items():
        for k, trigger in enumerate(loaded.playbook.triggers.schedule):
            key = trigger.id or str(k)
            out.append(Planned(schedule_id(name, key), key, loaded, trigger, coerce_params(loaded.playbook, trigger.params)))
    return out


def schedule_input(plan: Planned, keyring: Keyring) -> RunInput:
    """What every firing starts: the snapshot, the params and a schedule proof (None without a key:
    the runs then come from an unverified `schedule`, and policy decides what that may do)."""
    trigger = TriggerContext(kind="schedule", requested_by=PRINCIPAL, schedule=plan.id)
    loaded = plan.loaded
    start = start_content(loaded.playbook.name, loaded.hash, plan.params, trigger.model_dump(mode="json"))
    proof = keyring.vouch("schedule", plan.id, Actor(PRINCIPAL, verified_by="schedule"), schedule_content(plan.id, start))
    return RunInput(playbook=loaded.playbook, playbook_hash=loaded.hash, params=plan.params, trigger=trigger, proof=proof)


def build(plan: Planned, task_queue: str, keyring: Keyring, state: ScheduleState | None = None) -> Schedule:
    """The Temporal Schedule for a plan; `state` keeps an operator's pause across updates."""
    trigger = plan.trigger
    action = ScheduleActionStartWorkflow(
        PlaybookRun.run,
        schedule_input(plan, keyring),
        id=plan.id,  # Temporal appends the firing time: one run id per firing
        task_queue=task_queue,
        memo={SPEC_MEMO: ScheduleSpecMemo(
            schedule=plan.id, playbook=plan.loaded.playbook.name, cron=trigger.cron, timezone=trigger.timezone,
            fingerprint=plan.fingerprint(task_queue, keyring),
        ).model_dump()},
        static_summary=f"{plan.loaded.playbook.name} by schedule ({trigger.cron} {trigger.timezone})",
    )
    return Schedule(
        action=action,
        spec=ScheduleSpec(cron_expressions=[trigger.cron], time_zone_name=trigger.timezone),
        policy=SchedulePolicy(overlap=OVERLAP[trigger.overlap], catchup_window=CATCHUP_WINDOW),
        state=state or ScheduleState(note=f"playbook-bot: {plan.loaded.playbook.name} triggers.schedule {plan.key}"),
    )


async def _owner(desc: ScheduleDescription | Any) -> ScheduleOwner | None:
    try:
        raw = await desc.memo_value(OWNER_MEMO, None)
        return ScheduleOwner.model_validate(raw) if raw is not None else None
    except Exception:  # a memo someone else wrote, in a shape not ours
        return None


def _spec_memo(client: Client, desc: ScheduleDescription) -> ScheduleSpecMemo | None:
    """What the schedule's action says it was built from (None when it says nothing we can read)."""
    memo = getattr(desc.schedule.action, "memo", None) or {}
    payload = memo.get(SPEC_MEMO)
    if payload is None:
        return None
    try:
        raw = payload if isinstance(payload, dict) else client.data_converter.payload_converter.from_payload(payload)
        return ScheduleSpecMemo.model_validate(raw)
    except Exception:
        return None


async def sync_schedules(
    client: Client, catalog: Catalog, keyring: Keyring, task_queue: str, *, keep: Collection[str] = ()
) -> SyncReport:
    """Make this task queue's schedules match `catalog` (see the module docstring). `keep`: playbooks
    whose files are there but do not load; their schedules stay as they were (a typo must not
    drop the nightly job, nor an operator's pause). One schedule's failure is reported and
    logged; the others are still synced."""
    report = SyncReport()
    wanted = {plan.id: plan for plan in planned(catalog)}
    for plan in wanted.values():
        try:
            await _sync_one(client, plan, keyring, task_queue, report)
        except RPCError as exc:
            report.failed[plan.id] = f"Temporal refused it: {exc.message}"
    try:
        await _delete_unwanted(client, set(wanted), task_queue, set(keep), report)
    except RPCError as exc:
        report.failed["(list)"] = f"could not list the namespace's schedules to delete removed ones: {exc.message}"
    for sid, why in report.failed.items():
        log.error("schedule not in step with the playbooks", schedule=sid, reason=why)
    for sid in report.kept:
        log.warning("schedule kept as it was: its playbook does not load", schedule=sid)
    log.info("schedules synced", task_queue=task_queue, created=len(report.created), updated=len(report.updated),
             deleted=len(report.deleted), unchanged=len(report.unchanged), kept=len(report.kept),
             failed=len(report.failed))
    return report


async def _delete_unwanted(client: Client, wanted: set[str], task_queue: str, keep: set[str], report: SyncReport) -> None:
    """Delete our schedules whose entry is gone. The list is eventually consistent: one created a
    moment ago may be missing from it, which only matters if it is also unwanted (the next sync)."""
    async for entry in await client.list_schedules():
        if not entry.id.startswith(ID_PREFIX) or entry.id in wanted:
            continue
        owner = await _owner(entry)
        if owner is None or owner.task_queue != task_queue:
            continue  # not ours (another deployment's, or someone else's under our prefix)
        if owner.playbook in keep:
            report.kept.append(entry.id)
            continue
        try:
            await client.get_schedule_handle(entry.id).delete()
            report.deleted.append(entry.id)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # already gone (another worker's sync): fine
                report.failed[entry.id] = f"could not delete it: {exc.message}"


async def _sync_one(client: Client, plan: Planned, keyring: Keyring, task_queue: str, report: SyncReport) -> None:
    handle = client.get_schedule_handle(plan.id)
    owner = ScheduleOwner(task_queue=task_queue, playbook=plan.loaded.playbook.name, key=plan.key)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        try:
            await client.create_schedule(plan.id, build(plan, task_queue, keyring), memo={OWNER_MEMO: owner.model_dump()})
            report.created.append(plan.id)
            return
        except ScheduleAlreadyRunningError:  # another worker's sync created it meanwhile
            desc = await handle.describe()
    found = await _owner(desc)
    if found is None or found.task_queue != task_queue:
        whose = f"task queue {found.task_queue!r}" if found else "something other than playbook-bot"
        report.failed[plan.id] = f"a schedule with this id already exists, made by {whose}; left alone"
        return
    spec = _spec_memo(client, desc)
    if spec is not None and spec.fingerprint == plan.fingerprint(task_queue, keyring):
        report.unchanged.append(plan.id)
        return

    def updated(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state  # an operator's pause (and its note) survive
        return ScheduleUpdate(schedule=build(plan, task_queue, keyring, state))

    await handle.update(updated)
    report.updated.append(plan.id)


class ScheduleView(BaseModel):
    """One schedule as `playbook-bot schedules` shows it."""

    id: str
    playbook: str
    cron: str
    timezone: str
    paused: bool
    next_runs: list[datetime]
    recent_runs: list[str] = Field(default_factory=list, description="Run ids of the latest firings, newest last.")


async def list_schedules(client: Client, task_queue: str) -> list[ScheduleView]:
    """This task queue's schedules (as Temporal has them, not as the files say), by id."""
    views: list[ScheduleView] = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(ID_PREFIX):
            continue
        owner = await _owner(entry)
        if owner is None or owner.task_queue != task_queue:
            continue
        try:
            desc = await client.get_schedule_handle(entry.id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                continue  # deleted since the (eventually consistent) list was made
            raise
        spec = _spec_memo(client, desc)
        recent = [getattr(r.action, "workflow_id", "") for r in desc.info.recent_actions]
        views.append(ScheduleView(
            id=entry.id, playbook=owner.playbook, cron=spec.cron if spec else "?",
            timezone=spec.timezone if spec else desc.schedule.spec.time_zone_name or "UTC", paused=desc.schedule.state.paused,
            next_runs=list(desc.info.next_action_times), recent_runs=[r for r in recent if r],
        ))
    return sorted(views, key=lambda v: v.id)

