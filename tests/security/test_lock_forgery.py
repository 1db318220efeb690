"""Forged lock messages (format v1.1 `concurrency:`), sent by anyone who can reach Temporal.

The attacker holds a raw Temporal client and no envelope key. The worker is the real one
(make_worker: KeyLock and the `lock.*` activities); the playbook's one step is `t.gate`, held until
the test opens it, so "one run at a time" is checked directly: every gate's start and end is logged
and no two runs' gates may overlap.

Before signed lock messages, each attack below let the queued run act while the holder still ran.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import pytest_asyncio
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from bot.actions.base import ActionInput, ActionResult
from bot.engine.admission import Admission, AdmitRequest
from bot.engine.lock_workflow import KeyLock
from bot.engine.locking import (
    HOLDERS_LABEL,
    Holder,
    LockNotice,
    LockRelease,
    LockRequest,
    LockState,
    holders_content,
    lock_workflow_id,
)
from bot.engine.state import RunStatus
from bot.engine.worker import make_worker
from bot.engine.workflow import PlaybookRun
from bot.identity.proofs import Keyring
from tests.engine.support import Recorder, wait_for_state
from tests.engine.test_locks import LOCKED, Gates, Rig, queued_behind
from tests.waiting import eventually

WAIT = 60.0  # generous: a loaded machine; nothing asserts on time
QUEUE = LOCKED.format(mode="queue", limit=1)


class LoggedGates(Gates):
    """Gates that log each start and end, and admissions the test may hold back per run."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str]] = []
        self.admit_holds: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.held: set[str] = set()

    def hold_admission(self, run_id: str) -> None:
        self.held.add(run_id)

    def admit_now(self, run_id: str) -> None:
        self.admit_holds[run_id].set()

    def activities(self) -> list[Any]:
        gates = self
        _, real_admit = super().activities()

        @activity.defn(name="t.gate")
        async def gate(inp: ActionInput) -> ActionResult:
            gates.started.append(inp.run_id)
            gates.log.append(("start", inp.run_id))
            event = gates.events[inp.run_id]
            while not event.is_set():
                activity.heartbeat()
                try:
                    await asyncio.wait_for(event.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
            gates.log.append(("end", inp.run_id))
            return ActionResult(output={"run": inp.run_id}, attempt=1)

        @activity.defn(name="run.admit")
        async def admit(request: AdmitRequest) -> Admission:
            run_id = activity.info().workflow_id
            if run_id in gates.held:
                while not gates.admit_holds[run_id].is_set():
                    activity.heartbeat()
                    try:
                        await asyncio.wait_for(gates.admit_holds[run_id].wait(), 0.2)
                    except asyncio.TimeoutError:
                        pass
            return await real_admit(request)

        return [gate, admit]

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of runs whose gates were open at the same time."""
        open_now: set[str] = set()
        pairs = []
        for kind, run in self.log:
            if kind == "start":
                pairs += [(other, run) for other in open_now]
                open_now.add(run)
            else:
                open_now.discard(run)
        return pairs


class AttackRig(Rig):
    def __init__(self, client: Client, task_queue: str) -> None:
        super().__init__(client, task_queue)
        self.gates = LoggedGates()
        self.key = f"svc-{self.service}"

    async def start(self, text: str = QUEUE, run_id: str | None = None, **kwargs: Any) -> WorkflowHandle[PlaybookRun, RunStatus]:
        return await self.client.start_workflow(
            PlaybookRun.run, self.input(text, **kwargs), id=run_id or f"run-{uuid.uuid4()}", task_queue=self.task_queue
        )

    def lock(self) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(lock_workflow_id(self.key))

    async def lock_state(self) -> LockState:
        return await self.lock().query(KeyLock.state)

    async def finish(self, *handles: WorkflowHandle[PlaybookRun, RunStatus]) -> None:
        """Open every gate and let each run end; then no two runs may have acted at once."""
        for handle in handles:
            self.gates.open(handle.id)
        for handle in handles:
            status = await asyncio.wait_for(handle.result(), WAIT)
            assert status.state == "completed", status.model_dump_json(indent=2)
        assert self.gates.overlaps() == [], f"two runs held the key at once: {self.gates.log}"


@pytest_asyncio.fixture
async def rig(dev_env: Any) -> AsyncIterator[AttackRig]:
    rec = Recorder()
    task_queue = f"tq-{uuid.uuid4()}"
    r = AttackRig(dev_env.client, task_queue)
    activities = [a for a in rec.activities() if a.__temporal_activity_definition.name != "run.admit"]
    async with make_worker(dev_env.client, task_queue, activities + r.gates.activities()):
        yield r


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    return await eventually(check, timeout=WAIT, what=what)


async def rejected(rig: AttackRig, at_least: int = 1) -> bool:
    """The lock dropped forged messages (the fixed lock counts them; the old one has no count)."""
    try:
        state = await rig.lock_state()
    except Exception:  # noqa: BLE001  (no lock yet)
        return False
    return getattr(state, "rejected", 0) >= at_least


async def completed_activity(handle: WorkflowHandle[Any, Any], name: str) -> int:
    """How many `name` activities (or local activities) completed in this run's history, with a
    workflow task after."""
    scheduled: dict[int, str] = {}
    done = 0
    after = False
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            if scheduled.get(event.activity_task_completed_event_attributes.scheduled_event_id) == name:
                done += 1
                after = False
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            after = True
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and "data" in event.marker_recorded_event_attributes.details:
            # a local activity (engine-v12's lock.confirm): recorded by the task that read its result
            data = json.loads(event.marker_recorded_event_attributes.details["data"].payloads[0].data)
            done += data.get("activity_type") == name
    return done if after else max(done - 1, 0)


async def holder_and_queued(rig: AttackRig) -> tuple[WorkflowHandle[PlaybookRun, RunStatus], WorkflowHandle[PlaybookRun, RunStatus]]:
    holder = await rig.holding(QUEUE)
    queued = await rig.start()
    await wait_for_state(queued, queued_behind(holder.id), timeout=WAIT)
    return holder, queued


async def test_a_forged_release_of_the_holder_does_not_let_the_queued_run_act(rig: AttackRig):
    holder, queued = await holder_and_queued(rig)

    await rig.lock().signal("release", LockRelease(key=rig.key, run_id=holder.id))

    await until(lambda: _either(queued.id in rig.gates.started, lambda: rejected(rig)), "the forged release dealt with")
    assert queued.id not in rig.gates.started, "the forged release let the queued run act"
    assert [h.run_id for h in (await rig.lock_state()).holders] == [holder.id]
    await rig.finish(holder, queued)


async def test_a_forged_grant_sent_to_a_queued_run_does_not_start_it(rig: AttackRig):
    holder, queued = await holder_and_queued(rig)

    await queued.signal("lock_notice", LockNotice(key=rig.key, outcome="granted", holders=[queued.id]))

    async def dealt_with() -> bool:
        return queued.id in rig.gates.started or await completed_activity(queued, "lock.confirm") >= 1

    await until(dealt_with, "the forged grant dealt with")
    status = await wait_for_state(queued, lambda s: True, timeout=WAIT)
    assert queued.id not in rig.gates.started, "the forged grant started the queued run"
    assert status.state == "queued" and (status.waiting_for or {}).get("holder") == holder.id
    await rig.finish(holder, queued)


async def forged_acquire_before_the_run_asks(rig: AttackRig, forged: Callable[[str, str], LockRequest]) -> None:
    holder = await rig.holding(QUEUE)
    victim = f"run-{uuid.uuid4()}"
    rig.gates.hold_admission(victim)  # the run exists, the attacker sees its id, it has not asked yet
    queued = await rig.start(run_id=victim)

    await rig.lock().signal("acquire", forged(victim, holder.id))

    async def dealt_with() -> bool:
        state = await rig.lock_state()
        return any(h.run_id == victim for h in state.holders) or getattr(state, "rejected", 0) >= 1

    await until(dealt_with, "the forged acquire dealt with")
    rig.gates.admit_now(victim)
    await until(
        lambda: _either(victim in rig.gates.started, lambda: _queued_behind(queued, holder.id)), "the run asked for the key"
    )
    assert victim not in rig.gates.started, "the forged acquire let the run overtake the holder"
    await rig.finish(holder, queued)


async def test_a_forged_acquire_with_a_high_limit_does_not_let_a_run_overtake(rig: AttackRig):
    await forged_acquire_before_the_run_asks(
        rig, lambda victim, _: LockRequest(key=rig.key, run_id=victim, playbook="locked-queue", limit=100)
    )


async def test_a_forged_acquire_as_the_holders_child_does_not_let_a_run_overtake(rig: AttackRig):
    await forged_acquire_before_the_run_asks(
        rig, lambda victim, holder: LockRequest(key=rig.key, run_id=victim, root_run_id=holder, playbook="locked-queue")
    )


async def test_a_lock_started_by_the_attacker_with_crafted_holders_grants_nothing_wrongly(rig: AttackRig):
    victim = f"run-{uuid.uuid4()}"
    crafted = LockState(
        key=rig.key,
        holders=[Holder(run_id=victim, root_run_id=None, since=datetime.now(timezone.utc), nested=True)],
        waiters=[LockRequest(key=rig.key, run_id=f"run-{uuid.uuid4()}", limit=100)],
    )
    await rig.client.start_workflow(
        "KeyLock", crafted, id=lock_workflow_id(rig.key), task_queue=rig.task_queue
    )

    holder = await rig.holding(QUEUE)
    queued = await rig.start(run_id=victim)
    await until(
        lambda: _either(victim in rig.gates.started, lambda: _queued_behind(queued, holder.id)), "the run asked for the key"
    )
    assert victim not in rig.gates.started, "the crafted lock state let a second run act"
    await rig.finish(holder, queued)


@workflow.defn(name="KeyLock", sandboxed=False)
class FakeLock:
    """The attacker's own "KeyLock", on the attacker's own task queue: it grants everyone."""

    def __init__(self) -> None:
        self.asks: list[str] = []

    @workflow.signal(name="acquire")
    def acquire(self, request: dict[str, Any]) -> None:
        self.asks.append(request["run_id"])

    @workflow.signal(name="release")
    def release(self, release: dict[str, Any]) -> None:
        pass

    @workflow.query
    def state(self) -> dict[str, Any]:
        return {"key": "", "holders": [{"run_id": r, "since": "2020-01-01T00:00:00Z"} for r in self.asks]}

    @workflow.run
    async def run(self, state: dict[str, Any]) -> None:
        told = 0
        while True:
            await workflow.wait_condition(lambda: len(self.asks) > told)
            while told < len(self.asks):  # asks may arrive while it signals
                run_id = self.asks[told]
                told += 1
                notice = {"key": state["key"], "outcome": "granted", "holders": [run_id], "position": 0}
                await workflow.get_external_workflow_handle(run_id).signal("lock_notice", notice)


async def test_a_fake_lock_on_another_task_queue_grants_nothing(rig: AttackRig):
    attacker_queue = f"attacker-{uuid.uuid4()}"
    async with Worker(rig.client, task_queue=attacker_queue, workflows=[FakeLock]):
        fake = await rig.client.start_workflow(
            "KeyLock", {"key": rig.key}, id=lock_workflow_id(rig.key), task_queue=attacker_queue
        )
        first, second = await rig.start(), await rig.start()
        try:
            async def dealt_with() -> bool:
                if first.id in rig.gates.started or second.id in rig.gates.started:
                    return True
                return all([await completed_activity(h, "lock.confirm") >= 1 for h in (first, second)])

            await until(dealt_with, "the fake grants dealt with")
            assert rig.gates.started == [], "a lock the bot does not run granted the key"
        finally:
            await fake.terminate("test over")
            for handle in (first, second):
                rig.gates.open(handle.id)
        # With the squatter gone, the runs' next ask (every LOCK_ASK_AGAIN) reaches a real lock: not waited for here.
        for handle in (first, second):
            await handle.terminate("test over")


async def _either(first: bool, second: Callable[[], Awaitable[bool]]) -> bool:
    return first or await second()


async def _queued_behind(handle: WorkflowHandle[PlaybookRun, RunStatus], holder: str) -> bool:
    return queued_behind(holder)(await handle.query(PlaybookRun.status))


def test_carried_over_holders_verify_only_as_sealed_by_the_execution_continued_from() -> None:
    keys = Keyring(b"k" * 32)
    holders = [Holder(run_id="run-a", since=datetime(2026, 1, 1, tzinfo=timezone.utc))]
    seal = keys.seal(HOLDERS_LABEL, holders_content("svc", holders, "exec-1"))

    assert keys.seal_holds(HOLDERS_LABEL, holders_content("svc", holders, "exec-1"), seal)
    assert not keys.seal_holds(HOLDERS_LABEL, holders_content("svc", holders, "exec-2"), seal), "replayed onto another execution"
    nested = [holders[0].model_copy(update={"nested": True})]
    assert not keys.seal_holds(HOLDERS_LABEL, holders_content("svc", nested, "exec-1"), seal), "altered holders"
    assert not Keyring(b"r" * 32).seal_holds(HOLDERS_LABEL, holders_content("svc", holders, "exec-1"), seal), "another key"
    assert Keyring(None, [b"k" * 32]).seal_holds(HOLDERS_LABEL, holders_content("svc", holders, "exec-1"), seal), "rotation"
