"""Rehearsal kit for workflow tests: recording fake actions registered under action names."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from bot.actions.base import ActionFailed, ActionInput, ActionResult
from bot.audit.recorder import AuditBatch
from bot.engine.admission import Admission, AdmitRequest
from bot.engine.state import CancelRequest, CancelResult, Requester, RunInput, RunStatus, TriggerContext
from bot.policy.activities import PolicyRequest
from bot.policy.inputs import provenance
from bot.policy.models import ActorVerdict
from bot.engine.worker import make_worker
from bot.engine.workflow import PlaybookRun
from bot.playbook.loader import Catalog, LoadedPlaybook
from bot.playbook.model import Playbook


@dataclass
class Recorder:
    """Fake actions: `t.ok` succeeds, `t.fail` fails for good, `t.flaky` fails `fails` times first,
    `t.wait` blocks until cancelled (heartbeating). Every call is recorded in order."""

    calls: list[tuple[str, bool, dict[str, Any]]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: list[str] = field(default_factory=list)
    audit: list[Any] = field(default_factory=list)  # events the run flushed through audit.record
    written: set[str] = field(default_factory=set)  # their ids: a second write of one is a no-op, as in the store
    # When each call's activity began and ended (time.monotonic(), keyed as in `sequence()`; the
    # last attempt's): ordering claims ("waits for", "after it finished") are read from these.
    spans: dict[str, list[float]] = field(default_factory=dict)
    attempt_started: list[datetime] = field(default_factory=list)  # t.flaky: when each attempt started (server time)
    children: dict[str, str] = field(default_factory=dict)  # what run.admit pins each sub-playbook to

    def _began(self, inp: ActionInput) -> str:
        label = ("undo " if inp.compensation else "") + inp.step_id
        self.spans[label] = [time.monotonic()]
        return label

    def _write(self, events: list[Any]) -> None:
        """Append as the store does: an event id already written is not written again."""
        for e in events:
            if e.event_id not in self.written:
                self.written.add(e.event_id)
                self.audit.append(e)

    def _ended(self, label: str) -> None:
        self.spans[label].append(time.monotonic())

    def activities(self) -> list[Any]:
        rec = self

        @activity.defn(name="audit.record")
        async def audit_record(batch: AuditBatch) -> None:
            rec._write(batch.events)

        @activity.defn(name="run.admit")
        async def admit(request: AdmitRequest) -> Admission:
            """Admits every run, its requester verified (the real check: tests/engine/test_admission.py)."""
            who = request.trigger.requested_by
            return Admission(
                allow=True,
                params=request.params,
                requester=Requester(principal=who, person=who, verified=True, verified_by="dev"),
                provenance=provenance(request.playbook, request.params, request.trigger.kind, request.trigger.alert, True),
                children=rec.children,
            )

        @activity.defn(name="policy.cancel")
        async def may_cancel(request: PolicyRequest) -> ActorVerdict:
            claim = request.claim
            user = {"id": claim.principal if claim else "", "groups": [], "verified": True}
            return ActorVerdict(allow=True, reasons=["tests may cancel"], user=user)

        @activity.defn(name="t.ok")
        async def ok(inp: ActionInput) -> ActionResult:
            rec._ended(rec._began(inp))
            rec._write(inp.audit)
            rec.calls.append((inp.step_id, inp.compensation, inp.params))
            rec.keys.append(inp.idempotency_key)
            return ActionResult(output={"echo": inp.params, "id": f"{inp.step_id}-out"}, attempt=activity.info().attempt)

        @activity.defn(name="t.fail")
        async def fail(inp: ActionInput) -> ActionResult:
            rec._ended(rec._began(inp))
            rec.calls.append((inp.step_id, inp.compensation, inp.params))
            attempt = activity.info().attempt
            retryable = bool(inp.params.get("retryable", False))
            raise ActionFailed(f"{inp.step_id} broke on attempt {attempt}", retryable=retryable)

        @activity.defn(name="t.flaky")
        async def flaky(inp: ActionInput) -> ActionResult:
            attempt = activity.info().attempt
            rec.attempt_started.append(activity.info().started_time)
            rec.calls.append((inp.step_id, inp.compensation, {"attempt": attempt}))
            if attempt <= int(inp.params.get("fails", 1)):
                raise ActionFailed(f"flaky attempt {attempt}")
            return ActionResult(output={"attempt": attempt}, attempt=attempt)

        @activity.defn(name="t.wait")
        async def wait(inp: ActionInput) -> ActionResult:
            rec.calls.append((inp.step_id, inp.compensation, inp.params))
            rec.started.set()
            try:
                while True:
                    activity.heartbeat()
                    await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                rec.cancelled.append(inp.step_id)
                raise

        @activity.defn(name="t.quick")
        async def quick(inp: ActionInput) -> ActionResult:
            """Finishes on its own after a moment without heartbeating: it never hears a cancel."""
            label = rec._began(inp)
            rec.calls.append((inp.step_id, inp.compensation, inp.params))
            rec.started.set()
            await asyncio.sleep(float(inp.params.get("seconds", 1.0)))
            rec._ended(label)
            return ActionResult(output={}, attempt=activity.info().attempt)

        return [ok, fail, flaky, wait, quick, audit_record, admit, may_cancel]

    def sequence(self) -> list[str]:
        return [("undo " if comp else "") + step for step, comp, _ in self.calls]


def playbook(text: str) -> Playbook:
    return Playbook.model_validate(yaml.safe_load(text))


def catalog_of(*playbooks: Playbook) -> Catalog:
    """A worker catalog holding these playbooks (the real `run.admit` refuses any other)."""
    return Catalog(LoadedPlaybook(pb, Path(f"{pb.name}.yaml"), pb.content_hash()) for pb in playbooks)


def run_input(pb: Playbook, params: dict[str, Any] | None = None, requested_by: str = "cli:tester",
              alert: dict[str, Any] | None = None) -> RunInput:
    return RunInput(
        playbook=pb,
        playbook_hash=pb.content_hash(),
        params=params or {},
        trigger=TriggerContext(kind="cli", requested_by=requested_by, alert=alert),
    )


def worker(client: Client, rec: Recorder, extra: list[Any] | None = None, task_queue: str | None = None) -> Worker:
    return make_worker(client, task_queue or f"tq-{uuid.uuid4()}", rec.activities() + (extra or []))


async def start(client: Client, w: Worker, run: RunInput) -> WorkflowHandle[PlaybookRun, RunStatus]:
    return await client.start_workflow(PlaybookRun.run, run, id=f"run-{uuid.uuid4()}", task_queue=w.task_queue)


async def execute(client: Client, rec: Recorder, pb: Playbook, **kwargs: Any) -> RunStatus:
    async with worker(client, rec) as w:
        handle = await start(client, w, run_input(pb, **kwargs))
        return await handle.result()


async def cancel(handle: WorkflowHandle[Any, Any], by: str = "cli:tester", reason: str = "") -> CancelResult:
    """Cancel as the front door does: an update naming who asks (Temporal's own cancel is refused)."""
    return await handle.execute_update(PlaybookRun.cancel, CancelRequest(user=by, reason=reason))


async def wait_for_state(handle: WorkflowHandle[Any, Any], predicate: Any, timeout: float = 10) -> RunStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await handle.query(PlaybookRun.status)
        if predicate(status):
            return status
        if loop.time() > deadline:
            raise AssertionError(f"state never reached; last: {status.state} {[(s.id, s.state) for s in status.steps]}")
        await asyncio.sleep(0.1)
