"""Record run histories for the replay tests.

One run of a live bot (`playbook-bot dev`, or any cluster the settings point at):

    PLAYBOOK_BOT_DATA_DIR=... .venv/bin/python -m tests.reliability.record_history RUN_ID tests/reliability/histories/NAME.json

Or the scenarios below, each run on a throwaway dev server with the rehearsal actions of
tests/engine/support.py (a history holds activity results, so replay needs no real actions):

    .venv/bin/python -m tests.reliability.record_history --scenarios [NAME ...]

A scenario whose history files exist is skipped, never re-recorded: the point of the old ones is
that they were made by old code. Record only to add histories.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from bot.actions.activities import started_event
from bot.actions.base import ActionFailed, ActionInput, ActionResult
from bot.audit.recorder import AUDIT_UNAVAILABLE, AuditBatch
from bot.engine.admission import Admission, AdmitRequest
from bot.engine.children import CatalogActivities
from bot.engine.locking import lock_workflow_id, render_lock_key
from bot.engine.state import Requester, RunStatus, VoteRequest
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.policy.activities import PolicyRequest
from bot.policy.inputs import provenance
from bot.policy.models import Decision
from bot.settings import Settings
from bot.slack.notifier import SlackNotifier
from bot.temporal import connect
from tests.engine.support import Recorder, cancel, catalog_of, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import policy

HISTORIES = Path(__file__).parent / "histories"
POLICIES = Path(__file__).resolve().parents[2] / "policies"
APPROVAL = {"allow": True, "require_approval": True, "min_approvals": 1, "approver_groups": ["sre"], "approval_timeout": "10m"}

GATED = """
name: gated
owner: sre
channel: "#incidents"
steps:
  - {id: prepare, action: t.ok, compensate: {action: t.ok}}
  - {id: risky, action: t.ok, impact: high, compensate: {action: t.ok}}
  - {id: after, action: t.ok}
"""

HALF_UNDONE = """
name: half-undone
owner: sre
steps:
  - {id: drain, action: t.ok, compensate: {action: t.fail}}
  - {id: scale, action: t.ok, compensate: {action: t.ok}}
  - {id: verify, action: t.fail, retry: {max_attempts: 1}}
"""

PARALLEL = """
name: fan-out
steps:
  - {id: first, action: t.ok, compensate: {action: t.ok}}
  - {id: optional, action: t.ok, when: "{{ run.trigger == 'slack' }}"}
  - {id: nap, action: core.sleep, with: {duration: 1s}}
  - id: both
    parallel:
      - {id: left, action: t.ok, compensate: {action: t.ok}}
      - {id: right, action: t.flaky, with: {fails: 1}, retry: {max_attempts: 2, initial_interval: 1s}}
  - {id: last, action: t.ok}
"""

PARALLEL_FAILS = PARALLEL.replace("name: fan-out", "name: fan-out-fails").replace(
    "{id: right, action: t.flaky, with: {fails: 1}", "{id: right, action: t.fail, with: {}"
)

CANCELLED = """
name: cancelled-mid-step
steps:
  - {id: prep, action: t.ok, compensate: {action: t.ok}}
  - {id: hang, action: t.wait}
"""

FOREACH = """
name: foreach-roll
vars: {hosts: [a, b, c, d, e]}
steps:
  - {id: pre, action: t.ok, compensate: {action: t.ok}}
  - id: roll
    foreach: "{{ vars.hosts }}"
    as: host
    concurrency: 2
    max_failures: 1
    steps:
      - {id: drain, action: t.ok, with: {h: "{{ host }}"}, compensate: {action: t.ok, with: {h: "{{ host }}"}}}
      - {id: bad, action: t.fail, when: "{{ host in FAILING }}"}
      - {id: check, action: t.ok, with: {d: "{{ steps.drain.output.id }}", i: "{{ index }}"}}
  - {id: after, action: t.ok, with: {n: "{{ steps.roll.output | length }}"}}
"""


async def _vote(handle: WorkflowHandle[Any, Any], verdict: str) -> None:
    await wait_for_state(handle, lambda s: s.step("risky").state == "waiting_approval")
    await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:dana", vote=verdict))  # type: ignore[arg-type]


async def _refused_then_approved(handle: WorkflowHandle[Any, Any]) -> None:
    """A voter the approver rule refuses, twice (the second turned away by the validator), then dana."""
    await wait_for_state(handle, lambda s: s.step("risky").state == "waiting_approval")
    for _ in range(2):
        try:
            await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:mallory"))
        except WorkflowUpdateFailedError:
            pass
    await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:dana"))


async def _cancel(handle: WorkflowHandle[Any, Any]) -> None:
    """Cancel as the front door does: the cancel update (Temporal's own cancel is refused)."""
    await wait_for_state(handle, lambda s: s.step("hang").state == "running")
    await cancel(handle, by="cli:dana")


Scenario = tuple[str, dict[str, Any] | None, Callable[[WorkflowHandle[Any, Any]], Awaitable[None]] | None, str]
SCENARIOS: dict[str, Scenario] = {
    # name: (playbook, policy decision for high-impact steps, what a human does meanwhile, expected end)
    "approval-approved": (GATED, APPROVAL, lambda h: _vote(h, "approve"), "completed"),
    "approval-rejected": (GATED, APPROVAL, lambda h: _vote(h, "reject"), "compensated"),
    "compensation-failed-escalated": (HALF_UNDONE, None, None, "failed"),
    "parallel-retry-skip-timer": (PARALLEL, None, None, "completed"),
    "parallel-sibling-failed": (PARALLEL_FAILS, None, None, "compensated"),
    "cancelled-mid-step": (CANCELLED, None, _cancel, "compensated"),
    # Recorded by trust-v1 code (admission, the cancel update), each run queried right after its
    # start as the front door does: patches must not be asked after the admission's local activity.
    "trust-approval-approved": (GATED, APPROVAL, lambda h: _vote(h, "approve"), "completed"),
    "trust-cancelled-mid-step": (CANCELLED, None, _cancel, "compensated"),
    # Format v1.1 foreach: one failed item tolerated (max_failures 1), then two (the saga undoes the rest)
    "foreach-tolerated": (FOREACH.replace("FAILING", "['b']"), None, None, "completed"),
    "foreach-past-max-failures": (FOREACH.replace("FAILING", "['b', 'c']"), None, None, "compensated"),
    # Recorded by audit-spool-v1 code: per-execution event ids, the flusher writes the approval request
    "spool-approval-approved": (GATED, APPROVAL, lambda h: _vote(h, "approve"), "completed"),
    # Recorded by slack-beside-v1 / refused-votes-v1 code: Slack synced by its own coroutine, a
    # refused voter remembered (their repeat never reaches history), then an approval.
    "slack-beside-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
    # Recorded by engine-v2 code: each vote's `approver` question an activity of its own (a workflow
    # task before it, one after); a run waiting for approval across the upgrade replays this way.
    "engine-v2-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
    # Recorded by engine-v9 code: each action's idempotency key carries the run's execution
    "engine-v9-approval-approved": (GATED, APPROVAL, lambda h: _vote(h, "approve"), "completed"),
    # Recorded by engine-v3 code: each vote's `approver` question a local activity in the workflow task
    # that takes the vote; the deciding vote's task schedules the step (issue 17.3).
    "engine-v3-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
    # Recorded by engine-v4 code: the Slack sync (a local activity) waits out of any workflow task
    # that dispatches a step's work (a timer bounds the wait), so the deciding vote's task is not held.
    "engine-v4-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
    # Recorded by engine-v5 code: once a step's work is dispatched, Slack shows what follows (the
    # run's end included) in one sync when SLACK_DEFER is up, unless a human waits on Slack.
    "engine-v5-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
    # Recorded by engine-v6 code: a sync waits for an audit flush under way, which may release a
    # high-impact step's dispatch, instead of sharing (and holding) that flush's workflow task.
    "engine-v6-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
    # Recorded by engine-v7 code (8af159b): the last engine before front-door verdicts; each vote's
    # `approver` question a local activity, as engine-v3 on.
    "engine-v7-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
    # Recorded by engine-v13 code (830d24f): the last engine whose activities carry the audit queue
    # whatever its size, and whose `decide` questions do not check the history bound
    "engine-v13-votes-refused": (GATED, APPROVAL, _refused_then_approved, "completed"),
}


# ---- scenarios of several workflows: each records every history it names ----------------------

LOCK_HOLDER = """
name: lock-holder
owner: sre
channel: "#incidents"
params: {service: {type: string}}
concurrency: {key: "svc-{{ params.service }}"}
steps:
  - {id: prepare, action: t.ok, compensate: {action: t.ok}}
  - {id: risky, action: t.ok, impact: high}
"""

LOCK_WAITER = """
name: lock-waiter
channel: "#incidents"
params: {service: {type: string}}
concurrency: {key: "svc-{{ params.service }}", on_busy: queue}
steps:
  - {id: work, action: t.ok, with: {service: "{{ params.service }}"}, compensate: {action: t.ok}}
  - {id: check, action: t.ok}
"""

CALL_PARENT = """
name: call-parent
steps:
  - {id: before, action: t.ok, compensate: {action: t.ok}}
  - {id: call, action: playbook.run, with: {name: call-child, params: {target: api}}}
  - {id: later, action: t.ok, compensate: {action: t.ok}}
  - {id: boom, action: t.fail, retry: {max_attempts: 1}}
"""

CALL_CHILD = """
name: call-child
params: {target: {type: string, pattern: "^[a-z]+$"}}
steps:
  - id: c1
    action: t.ok
    with: {target: "{{ params.target }}"}
    compensate: {action: t.ok, with: {undo: "{{ steps.c1.output.id }}"}}
  - {id: c2, action: t.ok, compensate: {action: t.ok}}
"""

WAIT = 120.0  # generous: recording may run on a loaded machine


async def start_as(client: Client, w: Any, text: str, workflow_id: str, **kwargs: Any) -> WorkflowHandle[Any, RunStatus]:
    """A run whose workflow id is its history's name: test_replay replays each history under its
    file's name, and a run's commands can depend on its id (its child's id, what it peeks for)."""
    return await client.start_workflow(PlaybookRun.run, run_input(playbook(text), **kwargs), id=workflow_id,
                                       task_queue=w.task_queue)


@activity.defn(name="run.admit")
async def admit_with_key(request: AdmitRequest) -> Admission:
    """support.Recorder's admission, with the lock key rendered as the real admission renders it."""
    who = request.trigger.requested_by
    return Admission(
        allow=True, params=request.params, lock_key=render_lock_key(request.playbook, request.params, request.trigger.alert),
        requester=Requester(principal=who, person=who, verified=True, verified_by="dev"),
        provenance=provenance(request.playbook, request.params, request.trigger.kind, request.trigger.alert, True),
    )


async def _lock_queued(client: Client, name: str = "lock-queued", service: str = "web") -> dict[str, str]:
    """A run that queues behind the holder of its key (waiting on an approval), then runs once the
    holder ends; and the holder and the key's lock workflow, which ends once idle."""
    rec = Recorder()
    activities = [a for a in rec.activities() if a.__temporal_activity_definition.name != "run.admit"]
    extra = [admit_with_key, *policy(APPROVAL), SlackNotifier(None).sync]
    async with make_worker(client, f"tq-{uuid.uuid4()}", [*activities, *extra]) as w:
        holder = await start_as(client, w, LOCK_HOLDER, f"{name}-holder", params={"service": service})
        await wait_for_state(holder, lambda s: s.step("risky").state == "waiting_approval", timeout=WAIT)
        waiter = await start_as(client, w, LOCK_WAITER, f"{name}-waiter", params={"service": service})
        await wait_for_state(waiter, lambda s: s.state == "queued" and (s.waiting_for or {}).get("holder") == holder.id,
                             timeout=WAIT)
        await holder.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:dana", vote="approve"))
        ends = [await asyncio.wait_for(h.result(), WAIT) for h in (holder, waiter)]
        assert [s.state for s in ends] == ["completed", "completed"], [(s.state, s.error) for s in ends]
        assert [c[0] for c in rec.calls] == ["prepare", "risky", "work", "check"], rec.calls
        lock = client.get_workflow_handle(lock_workflow_id(f"svc-{service}"))
        await asyncio.wait_for(lock.result(), WAIT)  # idle for a minute, it ends
    return {waiter.id: waiter.id, holder.id: holder.id, f"{name}-keylock": lock.id}


async def _outputs_large(client: Client) -> dict[str, str]:
    """outputs-v1, with the shipped activities: a large output whose one read field is kept (and read
    by the next step), then one a template reads whole, which fails its step (the saga undoes)."""
    import tempfile

    from tests.engine.test_audit_trail import POLICY

    emit = "import json; print(json.dumps({'id': 'big', 'blob': 'x' * 30000}))"
    text = f"""
name: outputs-large
steps:
  - {{id: s1, action: shell.run, with: {{argv: [python3, -c, "{emit}"], parse: json}},
     compensate: {{action: core.log, with: {{message: "undo {{{{ steps.s1.output.json.id }}}}"}}}}}}
  - {{id: s2, action: core.log, with: {{message: "read {{{{ steps.s1.output.json.id }}}}"}}}}
  - {{id: s3, action: shell.run, with: {{argv: [python3, -c, "{emit}"], parse: json}}}}
  - {{id: s4, action: core.log, with: {{message: "{{{{ steps.s3.output | tojson | length }}}}"}}}}
"""
    pb = playbook(text)
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies" / "playbook" / "authz"
        policies.mkdir(parents=True)
        (policies / "authz.rego").write_text(POLICY)
        settings = Settings(data_dir=Path(tmp) / "data", policies_dir=Path(tmp) / "policies", shell_allow=["python3"])
        async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
            async with make_worker(client, f"tq-{uuid.uuid4()}", deps.activities) as w:
                handle = await start_as(client, w, text, "outputs-large")
                status = await handle.result()
    assert status.state == "compensated" and status.failed_step == "s3", (status.state, status.error)
    assert status.step("s2").args == {"message": "read big"}
    return {"outputs-large": handle.id}


async def _subplaybook_compensated(client: Client) -> dict[str, str]:
    """A parent whose playbook.run child completed and was held; a later step fails, and the parent
    rolls the child back as one unit (the child's own undos, newest first)."""
    rec = Recorder()
    parent, child = playbook(CALL_PARENT), playbook(CALL_CHILD)
    extra = CatalogActivities(lambda: catalog_of(parent, child)).all()
    async with worker(client, rec, extra) as w:
        handle = await start_as(client, w, CALL_PARENT, "subplaybook-compensated", requested_by="slack:U0ALICE")
        status = await asyncio.wait_for(handle.result(), WAIT)
        kid = client.get_workflow_handle(f"{handle.id}.call", result_type=RunStatus)
        final = await asyncio.wait_for(kid.result(), WAIT)
    assert (status.state, final.state) == ("compensated", "compensated"), (status.error, final.error)
    order = [("undo:" if comp else "") + step for step, comp, _ in rec.calls]
    assert order == ["before", "c1", "c2", "later", "boom", "undo:later", "undo:c2", "undo:c1", "undo:before"], order
    return {handle.id: handle.id, kid.id: kid.id}


SPOOL_OUTAGE = """
name: spool-outage
steps:
  - {id: prep, action: t.ok, compensate: {action: t.ok}}
  - {id: risky, action: t.ok, impact: high, compensate: {action: t.ok}}
  - {id: boom, action: t.fail, retry: {max_attempts: 1}}
"""


async def _spool_outage(client: Client, name: str = "spool-outage-compensated") -> dict[str, str]:
    """The audit store is down from the start (its first two appends fail): prep acts unrecorded,
    the flusher retries on timers, the high-impact step waits for the record, boom fails, and the
    undos act unrecorded again once the store is down a second time (two more failed appends)."""
    rec = Recorder()
    failures = {"left": 2}
    written: list[Any] = []

    @activity.defn(name="audit.record")
    async def audit_record(batch: AuditBatch) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ApplicationError("audit store unavailable: locked", type=AUDIT_UNAVAILABLE)
        written.extend(batch.events)

    async def acted(inp: ActionInput, fails: bool) -> ActionResult:
        rec.calls.append((inp.step_id, inp.compensation, inp.params))
        if inp.compensation and inp.step_id == "risky":
            failures["left"] = 2  # the store goes down again during the rollback
        own = [started_event(inp, activity.info().attempt)]
        if fails:
            raise ActionFailed(f"{inp.step_id} broke")
        if inp.audit_mode == "defer" or (inp.audit_mode == "try" and failures["left"] > 0):
            return ActionResult(output={}, unrecorded=own)
        written.extend([*inp.audit, *own])
        return ActionResult(output={})

    @activity.defn(name="t.ok")
    async def ok(inp: ActionInput) -> ActionResult:
        return await acted(inp, False)

    @activity.defn(name="t.fail")
    async def fail(inp: ActionInput) -> ActionResult:
        return await acted(inp, True)

    keep = {"run.admit", "policy.cancel"}
    activities = [a for a in rec.activities() if a.__temporal_activity_definition.name in keep]
    async with make_worker(client, f"tq-{uuid.uuid4()}", [*activities, audit_record, ok, fail, *policy({"allow": True}),
                                                          SlackNotifier(None).sync]) as w:
        handle = await start_as(client, w, SPOOL_OUTAGE, name)
        status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.state == "compensated" and status.audit_pending == 0, (status.state, status.error)
    assert [("undo:" if comp else "") + step for step, comp, _ in rec.calls] == [
        "prep", "risky", "boom", "undo:risky", "undo:prep"], rec.calls
    assert written[-1].kind == "run_finished", written
    return {handle.id: handle.id}



PARALLEL_GATED = """
name: parallel-gated
owner: sre
channel: "#incidents"
steps:
  - {id: prepare, action: t.ok, compensate: {action: t.ok}}
  - id: both
    parallel:
      - {id: risky, action: t.ok, impact: high, compensate: {action: t.ok}}
      - {id: sibling, action: t.ok, impact: high, compensate: {action: t.ok}}
  - {id: after, action: t.ok}
"""


async def _parallel_approval(client: Client) -> dict[str, str]:
    """engine-v6 in a parallel group: a high-impact step waits for approval while its allowed
    high-impact sibling acts, then the approval lets the gated one act. The sibling's answer comes
    first, but its dispatch waits for the records queued before it (prepare's success rides the
    gated step's question), so it goes in the task that asks for approval, after that task's audit
    flush: the case `_after_flush` is for. The scenarios above share one decision for every step;
    this one checks the order it needs, so a re-recording that missed it fails here."""

    @activity.defn(name="policy.decide")
    async def decide(request: PolicyRequest) -> Decision:
        step = request.input["step"]["id"]
        await asyncio.sleep(0.2 if step == "sibling" else 0.5)  # the sibling's answer first
        return Decision(**(APPROVAL if step == "risky" else {"allow": True}))

    rec = Recorder()
    async with worker(client, rec, [decide, *policy(APPROVAL)[1:], SlackNotifier(None).sync]) as w:
        handle = await start_as(client, w, PARALLEL_GATED, "engine-v6-parallel-approval")
        await wait_for_state(handle, lambda s: s.step("risky").state == "waiting_approval"
                             and s.step("sibling").state == "succeeded", timeout=WAIT)
        await _vote(handle, "approve")
        status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.state == "completed", (status.state, status.error)
    assert sorted(c[0] for c in rec.calls) == ["after", "prepare", "risky", "sibling"], rec.calls
    assert parallel_flush_order(list((await handle.fetch_history()).events)), \
        "scenario not recorded: the sibling must be dispatched after both answers, in the next task, after a flush"
    return {handle.id: handle.id}


def parallel_flush_order(events: list[Any]) -> bool:
    """Whether the sibling's action was scheduled after both policy answers, in the next workflow
    task, after a local activity's marker (the flush) in that task."""
    kinds = [e.WhichOneof("attributes") for e in events]
    decided = [i for i, e in enumerate(events) if kinds[i] == "activity_task_completed_event_attributes"
               and events[e.activity_task_completed_event_attributes.scheduled_event_id - 1]
               .activity_task_scheduled_event_attributes.activity_type.name == "policy.decide"]
    acts = [i for i, e in enumerate(events) if kinds[i] == "activity_task_scheduled_event_attributes"
            and e.activity_task_scheduled_event_attributes.activity_type.name == "t.ok"]
    if len(decided) != 2 or len(acts) < 2 or acts[1] < decided[-1]:  # acts[1]: the sibling's (after prepare's)
        return False
    between = range(decided[-1], acts[1])
    tasks = [i for i in between if kinds[i] == "workflow_task_completed_event_attributes"]
    flushes = [i for i in between if kinds[i] == "marker_recorded_event_attributes"]
    return len(tasks) == 1 and bool(flushes) and tasks[0] < flushes[0]


LOCAL_CHANNEL = """
name: local-channel
channel: "#incidents"
steps:
  - {id: first, action: core.log, with: {message: first}}
  - {id: second, action: core.log, with: {message: second}}
"""


async def _local_channel(client: Client) -> dict[str, str]:
    """A run of local steps only (core.log), with a channel, on the shipped activities and policy:
    recorded by engine-v6 code, its Slack news waits for SLACK_DEFER (a timer, a second workflow
    task) although nothing it dispatched leaves the first task."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", policies_dir=POLICIES)
        async with worker_deps(settings, catalog=catalog_of(playbook(LOCAL_CHANNEL))) as deps:
            async with make_worker(client, f"tq-{uuid.uuid4()}", deps.activities) as w:
                handle = await start_as(client, w, LOCAL_CHANNEL, "engine-v6-local-channel")
                status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.state == "completed", (status.state, status.error)
    return {handle.id: handle.id}


BIG_QUEUE = """
name: big-queue
params: {a: {type: string}, b: {type: string}}
steps:
  - {id: s0, action: t.quick, with: {seconds: 0, note: "{{ params.a ~ params.b }}"}}
  - {id: s1, action: t.quick, with: {seconds: 0, note: "{{ params.a ~ params.b }}"}}
  - {id: s2, action: t.quick, with: {seconds: 0, note: "{{ params.a ~ params.b }}"}}
  - {id: s3, action: t.quick, with: {seconds: 0, note: "{{ params.a ~ params.b }}"}}
  - {id: s4, action: t.quick, with: {seconds: 0, note: "{{ params.a ~ params.b }}"}}
  - {id: high, action: t.quick, impact: high, with: {seconds: 0}}
"""


async def _big_queue(client: Client, name: str) -> dict[str, str]:
    """Five steps of 128 KB args, whose step_started events wait to be confirmed, then a
    high-impact step: by engine-v13 code its input carries them all (past CARRY_MAX, under 2 MB);
    engine-v14 has the flusher write them first. Its replay pins that gate."""
    rec = Recorder()
    part = "n" * 64_000  # (a string param's bound)
    async with worker(client, rec, policy({"allow": True})) as w:
        handle = await start_as(client, w, BIG_QUEUE, name, params={"a": part, "b": part})
        status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.state == "completed", (status.state, status.error)
    return {handle.id: handle.id}


FRONT_VERDICT = """
name: front-verdict
summary: Prepare, then a high-impact step behind an approval
owner: sre
steps:
  - {id: prepare, action: core.log, with: {message: prepare}}
  - {id: risky, action: core.log, impact: high, with: {message: risky}}
"""


async def _front_verdict(client: Client) -> dict[str, str]:
    """engine-v8: carol's vote is refused by the front door's verdict (on record, no question of
    the worker's), then bob's verdict allows and the step runs; the shipped policy and keys, as the
    trust stack runs them. Its replay pins the approver input's shape: a change to it (or to its
    digest) flips this run's votes to the worker's local activity on replay."""
    import tempfile

    from bot.engine.front_approver import FrontApprover
    from bot.engine.runs import RunError, start_run, vote
    from bot.engine.state import TriggerContext
    from bot.identity.principals import Actor
    from bot.identity.proofs import Keyring
    from tests.slack.support import ENVELOPE_KEY

    keyring = Keyring(ENVELOPE_KEY.encode())
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", policies_dir=POLICIES, envelope_key=ENVELOPE_KEY)
        catalog = catalog_of(playbook(FRONT_VERDICT))
        async with worker_deps(settings, catalog=catalog) as deps:
            async with make_worker(client, f"tq-{uuid.uuid4()}", deps.activities) as w:
                alice = Actor("slack:U0ALICE", "alice", ("sre",), "slack")
                handle = await start_run(client, w.task_queue, catalog.get("front-verdict"), {},
                                         TriggerContext(kind="slack", requested_by=alice.principal), actor=alice,
                                         keyring=keyring, run_id="engine-v8-front-verdict")
                await wait_for_state(handle, lambda s: s.step("risky").state == "waiting_approval")
                approver = FrontApprover(deps.audit, deps.policy, keyring)
                for who, groups in (("U0CAROL", ("web",)), ("U0BOB", ("sre",))):
                    try:
                        await vote(client, handle.id, VoteRequest(step_id="risky", user=""),
                                   Actor(f"slack:{who}", who[2:].lower(), groups, "slack"), keyring, approver=approver)
                    except RunError:
                        pass
                status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.state == "completed", (status.state, status.error)
    return {handle.id: handle.id}


TREES: dict[str, tuple[Callable[[Client], Awaitable[dict[str, str]]], list[str]]] = {
    # name: (how to run it, the histories it writes, each under its workflow id but the lock's hashed one)
    "outputs-large": (_outputs_large, ["outputs-large"]),
    "lock-queued": (_lock_queued, ["lock-queued-waiter", "lock-queued-holder", "lock-queued-keylock"]),
    # Recorded by engine-v12 / lock-v2 code: lock.confirm, lock.adopt and lock.alive as local activities
    "lock-v2-queued": (lambda client: _lock_queued(client, "lock-v2-queued", "api"),
                       ["lock-v2-queued-waiter", "lock-v2-queued-holder", "lock-v2-queued-keylock"]),
    "subplaybook-compensated": (_subplaybook_compensated, ["subplaybook-compensated", "subplaybook-compensated.call"]),
    "spool-outage-compensated": (_spool_outage, ["spool-outage-compensated"]),
    # Recorded by engine-v6 code (review of engine-v6, point 4)
    "engine-v6-parallel-approval": (_parallel_approval, ["engine-v6-parallel-approval"]),
    # Recorded by engine-v6 code: local steps only, Slack's news still waits for SLACK_DEFER
    "engine-v6-local-channel": (_local_channel, ["engine-v6-local-channel"]),
    # Recorded by engine-v8 code: votes decided by the front door's sealed verdicts
    "engine-v8-front-verdict": (_front_verdict, ["engine-v8-front-verdict"]),
    # Recorded by engine-v13 code (830d24f): the spool's flusher and carried batches before engine-v14
    "engine-v13-spool-outage": (lambda client: _spool_outage(client, "engine-v13-spool-outage"),
                                ["engine-v13-spool-outage"]),
    # Recorded by engine-v13 code (f76ffd1): a high-impact step carries 640 KB of waiting events
    "engine-v13-big-queue": (lambda client: _big_queue(client, "engine-v13-big-queue"), ["engine-v13-big-queue"]),
}


def recorded_names() -> set[str]:
    """Every history the scenarios write."""
    return set(SCENARIOS) | {h for _, names in TREES.values() for h in names}


async def record_scenarios(names: list[str]) -> None:
    from tests.conftest import binary  # noqa: PLC0415  (the dev server beside the interpreter)

    unknown = set(names) - set(SCENARIOS) - set(TREES)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}: known are {sorted([*SCENARIOS, *TREES])}")
    todo = []
    for name in names or [*SCENARIOS, *TREES]:
        files = TREES[name][1] if name in TREES else [name]
        if any((HISTORIES / f"{f}.json").exists() for f in files):
            print(f"skipped {name}: its history is checked in, and old histories are never re-recorded")
        else:
            todo.append(name)
    if not todo:
        return
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary("temporal")), data_converter=pydantic_data_converter,
        dev_server_extra_args=["--log-level", "error"],
    )
    try:
        for name in todo:
            if name in TREES:
                for history, workflow_id in (await TREES[name][0](env.client)).items():
                    await _write(env.client, workflow_id, HISTORIES / f"{history}.json")
                continue
            text, decision, human, expected = SCENARIOS[name]
            rec = Recorder()
            extra = [*policy(decision or {"allow": True}), SlackNotifier(None).sync]
            async with worker(env.client, rec, extra) as w:
                handle = await start(env.client, w, run_input(playbook(text)))
                if human:
                    await human(handle)
                status = await handle.result()
            assert status.state == expected, (name, status.state, status.error)
            await _write(env.client, handle.id, HISTORIES / f"{name}.json")
    finally:
        await env.shutdown()


async def record(run_id: str, target: Path) -> None:
    await _write(await connect(Settings()), run_id, target)


async def _write(client: Client, run_id: str, target: Path) -> None:
    history = await client.get_workflow_handle(run_id).fetch_history()
    target.write_text(history.to_json())
    print(f"wrote {target} ({len(history.events)} events)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--scenarios"]:
        asyncio.run(record_scenarios(sys.argv[2:]))
    else:
        asyncio.run(record(sys.argv[1], Path(sys.argv[2])))
