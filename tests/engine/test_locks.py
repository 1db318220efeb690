"""Per-target locks (format v1.1 `concurrency:`) on the real dev server: one KeyLock workflow per
key grants its slots in FIFO order, across runs started by any client.

The playbooks' one step is `t.gate`, which holds until the test opens that run's gate, so who
holds the key and when it ends is the test's to decide; every step start is recorded per run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment

from bot.actions.base import ActionInput, ActionResult
from bot.engine.admission import Admission, AdmitRequest
from bot.engine.lock_workflow import KeyLock
from bot.engine.locking import AdoptRequest, Holder, LockKeyError, lock_workflow_id, render_lock_key
from bot.engine.locks import ADOPT_MAX, LockActivities
from bot.engine.runs import RunBusy, start_run
from bot.engine.state import Requester, RunInput, RunStatus, TriggerContext
from bot.engine.workflow import PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring
from bot.playbook.loader import LoadedPlaybook
from bot.policy.inputs import provenance
from bot.engine.worker import make_worker
from tests.engine.support import Recorder, cancel, playbook, wait_for_state

WAIT = 60.0  # generous: a loaded machine; nothing here asserts on time

LOCKED = """
name: locked-{mode}
params:
  service: {{type: string}}
concurrency: {{key: "svc-{{{{ params.service }}}}", limit: {limit}, on_busy: {mode}}}
steps:
  - {{id: work, action: t.gate}}
"""

ALERTED = """
name: alerted
params:
  service: {type: string, default: none}
concurrency: {key: "{{ alert.labels.service }}"}
steps:
  - {id: work, action: t.gate}
"""


class Gates:
    """`t.gate`: records the run that started it, then waits until the test opens that run's gate."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def open(self, run_id: str) -> None:
        self.events[run_id].set()

    def activities(self) -> list[Any]:
        gates = self

        @activity.defn(name="t.gate")
        async def gate(inp: ActionInput) -> ActionResult:
            gates.started.append(inp.run_id)
            event = gates.events[inp.run_id]
            while not event.is_set():
                activity.heartbeat()
                try:
                    await asyncio.wait_for(event.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
            return ActionResult(output={"run": inp.run_id}, attempt=1)

        @activity.defn(name="run.admit")
        async def admit(request: AdmitRequest) -> Admission:
            """Admits every run as support.Recorder's does, with the key rendered as the real one renders it."""
            who = request.trigger.requested_by
            requester = Requester(principal=who, person=who, verified=True, verified_by="dev")
            try:
                key = render_lock_key(request.playbook, request.params, request.trigger.alert)
            except LockKeyError as exc:
                return Admission(allow=False, refused_by="concurrency", reasons=[str(exc)], requester=requester)
            return Admission(
                allow=True, params=request.params, requester=requester, lock_key=key,
                provenance=provenance(request.playbook, request.params, request.trigger.kind, request.trigger.alert, True),
            )

        return [gate, admit]


class Rig:
    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self.gates = Gates()
        self.service = f"s{uuid.uuid4().hex[:8]}"  # a key of this test's own

    def input(self, text: str, service: str | None = None, alert: dict[str, Any] | None = None) -> RunInput:
        pb = playbook(text)
        return RunInput(
            playbook=pb, playbook_hash=pb.content_hash(), params={"service": service or self.service},
            trigger=TriggerContext(kind="alertmanager" if alert else "cli", requested_by="cli:tester", alert=alert),
        )

    async def start(self, text: str, **kwargs: Any) -> WorkflowHandle[PlaybookRun, RunStatus]:
        return await self.client.start_workflow(
            PlaybookRun.run, self.input(text, **kwargs), id=f"run-{uuid.uuid4()}", task_queue=self.task_queue
        )

    async def holding(self, text: str, **kwargs: Any) -> WorkflowHandle[PlaybookRun, RunStatus]:
        """A run that holds its key: its step has started."""
        handle = await self.start(text, **kwargs)
        await self.at_gate(handle)
        return handle

    async def at_gate(self, handle: WorkflowHandle[PlaybookRun, RunStatus]) -> None:
        """Until the run's step has reached its gate."""
        await wait_for_state(handle, lambda s: s.step("work").state == "running", timeout=WAIT)
        deadline = asyncio.get_running_loop().time() + WAIT
        while handle.id not in self.gates.started:  # "running" in status comes before the activity starts
            assert asyncio.get_running_loop().time() < deadline, f"{handle.id} never reached its gate"
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def rig(dev_env: Any) -> AsyncIterator[Rig]:
    rec = Recorder()
    task_queue = f"tq-{uuid.uuid4()}"
    r = Rig(dev_env.client, task_queue)
    # support.Recorder's audit, cancel-policy and admit doubles, with an admit that renders the key
    activities = [a for a in rec.activities() if a.__temporal_activity_definition.name != "run.admit"]
    async with make_worker(dev_env.client, task_queue, activities + r.gates.activities()):
        yield r


def loaded_of(text: str) -> LoadedPlaybook:
    pb = playbook(text)
    return LoadedPlaybook(pb, Path(f"{pb.name}.yaml"), pb.content_hash())


def queued_behind(holder: str):
    return lambda s: s.state == "queued" and (s.waiting_for or {}).get("holder") == holder


async def test_second_run_queues_and_starts_exactly_once_after_the_first_ends(rig: Rig):
    text = LOCKED.format(mode="queue", limit=1)
    first = await rig.holding(text)
    second = await rig.start(text)
    status = await wait_for_state(second, queued_behind(first.id), timeout=WAIT)
    assert status.waiting_for == {"key": f"svc-{rig.service}", "holder": first.id, "position": 1}
    assert status.step("work").state == "pending"
    assert rig.gates.started == [first.id]

    rig.gates.open(first.id)
    assert (await first.result()).state == "completed"
    await rig.at_gate(second)  # (CI at 540c69d read the gates between "running" and the activity's start)
    assert rig.gates.started == [first.id, second.id]
    rig.gates.open(second.id)
    done = await second.result()
    assert done.state == "completed" and done.waiting_for is None and done.lock_key == f"svc-{rig.service}"
    assert rig.gates.started == [first.id, second.id]  # each once


async def test_three_runs_are_granted_in_the_order_they_asked(rig: Rig):
    text = LOCKED.format(mode="queue", limit=1)
    first = await rig.holding(text)
    second = await rig.start(text)
    await wait_for_state(second, queued_behind(first.id), timeout=WAIT)
    third = await rig.start(text)
    await wait_for_state(third, lambda s: s.state == "queued" and (s.waiting_for or {}).get("position") == 2, timeout=WAIT)
    for handle in (first, second):
        rig.gates.open(handle.id)
        await handle.result()
    rig.gates.open(third.id)
    assert (await third.result()).state == "completed"
    assert rig.gates.started == [first.id, second.id, third.id]


async def test_limit_two_lets_two_run_at_once(rig: Rig):
    text = LOCKED.format(mode="queue", limit=2)
    first = await rig.holding(text)
    second = await rig.holding(text)
    third = await rig.start(text)
    await wait_for_state(third, lambda s: s.state == "queued", timeout=WAIT)
    assert sorted(rig.gates.started) == sorted([first.id, second.id])
    rig.gates.open(second.id)
    await wait_for_state(third, lambda s: s.step("work").state == "running", timeout=WAIT)
    for handle in (first, third):
        rig.gates.open(handle.id)
        assert (await handle.result()).state == "completed"


async def test_different_keys_run_in_parallel(rig: Rig):
    text = LOCKED.format(mode="queue", limit=1)
    first = await rig.holding(text, service=rig.service + "-a")
    second = await rig.holding(text, service=rig.service + "-b")  # would time out if it queued
    assert rig.gates.started == [first.id, second.id]
    for handle in (first, second):
        rig.gates.open(handle.id)
        assert (await handle.result()).state == "completed"


async def test_refuse_ends_the_second_run_busy_naming_the_holder(rig: Rig):
    text = LOCKED.format(mode="refuse", limit=1)
    first = await rig.holding(text)
    # The worker enforces it for a run that got past the front door (a race, or a raw client).
    second = await rig.start(text)
    status = await second.result()
    assert status.state == "cancelled"
    assert status.busy == {"key": f"svc-{rig.service}", "holder": first.id, "on_busy": "refuse"}
    assert first.id in (status.error or "") and status.step("work").state == "pending"
    # The front door answers busy before starting anything.
    loaded = loaded_of(text)
    with pytest.raises(RunBusy) as refused:
        await start_run(
            rig.client, rig.task_queue, loaded, {"service": rig.service},
            TriggerContext(kind="cli", requested_by="cli:tester"), actor=Actor("cli:tester"), keyring=Keyring(),
        )
    assert refused.value.holder == first.id and refused.value.rule == "concurrency"
    assert first.id in str(refused.value)
    rig.gates.open(first.id)
    assert (await first.result()).state == "completed"
    assert rig.gates.started == [first.id]


async def test_attach_answers_with_the_holders_run(rig: Rig):
    text = LOCKED.format(mode="attach", limit=1)
    first = await rig.holding(text)
    loaded = loaded_of(text)
    handle = await start_run(
        rig.client, rig.task_queue, loaded, {"service": rig.service},
        TriggerContext(kind="cli", requested_by="cli:tester"), actor=Actor("cli:tester"), keyring=Keyring(),
    )
    assert handle.id == first.id
    raced = await rig.start(text)  # past the front door: the worker attaches it and it does nothing
    status = await raced.result()
    assert status.state == "cancelled" and status.busy and status.busy["holder"] == first.id
    assert status.busy["on_busy"] == "attach"
    rig.gates.open(first.id)
    await first.result()
    assert rig.gates.started == [first.id]


async def test_cancel_while_queued_leaves_the_queue_and_runs_nothing(rig: Rig):
    text = LOCKED.format(mode="queue", limit=1)
    first = await rig.holding(text)
    second = await rig.start(text)
    await wait_for_state(second, queued_behind(first.id), timeout=WAIT)
    await cancel(second, reason="not needed")
    status = await second.result()
    assert status.state == "cancelled" and status.cancelled_by == "cli:tester"
    assert status.step("work").state == "pending"
    lock = rig.client.get_workflow_handle(lock_workflow_id(f"svc-{rig.service}"))

    async def waiters() -> list[str]:
        return [w.run_id for w in (await lock.query(KeyLock.state)).waiters]

    for _ in range(int(WAIT * 10)):
        if not await waiters():
            break
        await asyncio.sleep(0.1)
    assert await waiters() == []
    rig.gates.open(first.id)
    await first.result()
    third = await rig.holding(text)  # granted at once: nobody is left ahead of it
    rig.gates.open(third.id)
    await third.result()
    assert rig.gates.started == [first.id, third.id]


async def test_a_terminated_holder_is_noticed_and_the_queued_run_starts_once(rig: Rig):
    """No release comes from a terminated run: the lock's liveness check frees its slot."""
    text = LOCKED.format(mode="queue", limit=1)
    first = await rig.holding(text)
    second = await rig.start(text)
    await wait_for_state(second, queued_behind(first.id), timeout=WAIT)
    await first.terminate("operator pulled the plug")
    await wait_for_state(second, lambda s: s.step("work").state == "running", timeout=WAIT)
    rig.gates.open(second.id)
    assert (await second.result()).state == "completed"
    assert rig.gates.started == [first.id, second.id]


async def test_a_key_from_alert_labels_locks_two_alerts_for_one_service(rig: Rig):
    def alert(fingerprint: str, service: str) -> dict[str, Any]:
        return {"status": "firing", "labels": {"alertname": "Down", "service": service}, "fingerprint": fingerprint}

    service = rig.service
    first = await rig.holding(ALERTED, alert=alert("aaa", service))
    second = await rig.start(ALERTED, alert=alert("bbb", service))
    other = await rig.holding(ALERTED, alert=alert("ccc", service + "-other"))  # another service: not queued
    status = await wait_for_state(second, queued_behind(first.id), timeout=WAIT)
    assert status.waiting_for and status.waiting_for["key"] == service
    for handle in (first, second, other):
        rig.gates.open(handle.id)
    assert [(await h.result()).state for h in (first, second, other)] == ["completed"] * 3
    assert rig.gates.started.index(second.id) > rig.gates.started.index(first.id)


async def test_a_key_that_does_not_render_refuses_the_run(rig: Rig):
    handle = await rig.start(ALERTED)  # no alert: alert.labels is undefined
    status = await handle.result()
    assert status.state == "cancelled" and "concurrency" in (status.error or "")
    assert rig.gates.started == []


class _Counting:
    """The real client, counting the workflows it is asked about."""

    def __init__(self, client: Any) -> None:
        self.client, self.asked = client, 0

    def get_workflow_handle(self, workflow_id: str, **kwargs: Any) -> Any:
        self.asked += 1
        return self.client.get_workflow_handle(workflow_id, **kwargs)


async def test_a_raw_lock_state_claiming_thousands_of_holders_costs_a_bounded_check(dev_env: Any) -> None:
    """A KeyLock started from a raw client is the bot's code, so it passes the caller check; its
    input's holders, unsealed, are each described and queried. Claiming 5,000 cost 5,000 describes
    at once; now at most ADOPT_MAX, ADOPT_ASKING at a time, and none of them is adopted."""
    counting = _Counting(dev_env.client)
    claims = [Holder(run_id=f"nobody-{i}", since=datetime.now(UTC)) for i in range(5000)]
    result = await ActivityEnvironment().run(LockActivities(counting, Keyring(b"k" * 32)).adopt,  # type: ignore[arg-type]
                                             AdoptRequest(key="svc:x", holders=claims))
    assert result.holders == [] and not result.sealed
    assert counting.asked == ADOPT_MAX
