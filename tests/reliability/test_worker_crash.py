"""Durability with real processes: a worker SIGKILLed mid-run, and the dev server restarted on
its database mid-run. Side effects go to a local HTTP sink that records each request's
Idempotency-Key, so "exactly once" is counted, not assumed.

A SIGKILLed worker delays its runs by up to ~10 s (the sticky queue and heartbeat timeouts must
pass before another worker takes over): expected, and the reason for the generous waits.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from bot.audit.store import SqliteAuditStore
from bot.devstack import DevServer
from bot.engine.runs import start_run
from bot.engine.subplaybooks import CHILD_SEPARATOR
from bot.engine.state import RunStatus, TriggerContext
from bot.identity.keys import front_door_keyring
from bot.identity.principals import Actor
from bot.engine.workflow import PlaybookRun
from bot.playbook.loader import load_file
from bot.settings import Settings
from tests.e2e.support import Service, base_env, cmdline, descendants, free_port, kill_strays, pid_alive, write_policies
from tests.reliability.sink import SLOW_SECONDS, Sink
from tests.slack.support import ENVELOPE_KEY

pytestmark = pytest.mark.slow

REQUESTER = Actor("api:crash-test", verified_by="api")  # as the HTTP API's front door vouches for it



@dataclass
class Rig:
    tmp: Path
    data_dir: Path
    env: dict[str, str]
    task_queue: str
    port: int
    ui_port: int
    dev: DevServer
    client: Client
    workers: list[Service] = field(default_factory=list)

    def worker(self, name: str) -> Service:
        service = Service(["worker"], self.env, self.tmp / "logs", name)
        self.workers.append(service)
        return service


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A standalone dev server with its db under tmp, and the env a worker subprocess needs."""
    data_dir = tmp_path / "temporal"
    port, ui_port = free_port(), free_port()
    dev = DevServer(data_dir, port=port, ui_port=ui_port)
    await dev.start()
    task_queue = f"crash-{uuid.uuid4().hex[:8]}"
    env = base_env(
        temporal_address=dev.address,
        task_queue=task_queue,
        data_dir=tmp_path / "bot-data",
        playbooks_dir=tmp_path / "playbooks",
        policies_dir=write_policies(tmp_path / "policies"),
        shell_allow="sh",
        envelope_key=ENVELOPE_KEY,  # the worker verifies the start's proof
    )
    (tmp_path / "playbooks").mkdir()
    rig = Rig(tmp_path, data_dir, env, task_queue, port, ui_port, dev, client=None)  # type: ignore[arg-type]
    try:
        rig.client = await Client.connect(dev.address, data_converter=pydantic_data_converter)
        yield rig
    finally:
        for worker in rig.workers:
            worker.close()
        kill_strays(str(tmp_path))  # what a SIGKILLed worker's shell steps left running
        await rig.dev.stop()


async def start(rig: Rig, playbook_yaml: str, name: str) -> WorkflowHandle[PlaybookRun, RunStatus]:
    path = rig.tmp / "playbooks" / f"{name}.yaml"
    path.write_text(playbook_yaml)
    return await start_run(
        rig.client, rig.task_queue, load_file(path), {}, TriggerContext(kind="api", requested_by=REQUESTER.principal),
        actor=REQUESTER, keyring=front_door_keyring(Settings(envelope_key=ENVELOPE_KEY)),
    )


async def wait_for(handle: WorkflowHandle, predicate, workers: list[Service], timeout: float = 30) -> RunStatus:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}:\n{worker}"
        try:
            last = await handle.query(PlaybookRun.status)
            if predicate(last):
                return last
        except RPCError:  # no worker has answered yet
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"never reached; last: {last and [(s.id, s.state) for s in last.steps]}")


async def result_while_alive(handle: WorkflowHandle, workers: list[Service], timeout: float = 60) -> RunStatus:
    """The run's result; a worker that died meanwhile fails the test at once, with its stderr."""
    task = asyncio.create_task(handle.result())
    deadline = time.monotonic() + timeout
    try:
        while not task.done():
            for worker in workers:
                assert worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}:\n{worker}"
            assert time.monotonic() < deadline, f"run {handle.id} not finished after {timeout}s"
            await asyncio.wait({task}, timeout=0.2)
        return task.result()
    finally:
        task.cancel()


KILL_PLAYBOOK = """\
name: kill-worker
summary: Side effects around a long shell step and a slow API call; the worker dies during both
owner: sre-oncall
steps:
  - id: a
    action: http.request
    with: {{method: POST, url: "{sink}/a"}}
  - id: wait
    action: core.sleep
    with: {{duration: 3s}}
  - id: b
    action: http.request
    with: {{method: POST, url: "{sink}/b"}}
  - id: mid
    parallel:
      - id: c
        action: shell.run
        with: {{argv: [sh, -c, 'sleep 3; echo x >> "$0"', "{file}"]}}
      - id: slow
        action: http.request
        with: {{method: POST, url: "{sink}/slow"}}
  - id: d
    action: http.request
    with: {{method: POST, url: "{sink}/d"}}
"""


async def test_worker_sigkill_mid_step_then_new_worker_finishes_the_run(rig: Rig, sink: Sink) -> None:
    marker = rig.tmp / "c.txt"
    handle = await start(rig, KILL_PLAYBOOK.format(sink=sink.url, file=marker), "kill-worker")
    key = {step: f"{handle.id}:{step}" for step in ("a", "b", "slow", "d")}
    first = rig.worker("worker-1")

    await wait_for(handle, lambda s: s.step("c").state == s.step("slow").state == "running", [first])
    deadline = time.monotonic() + 10
    while len(sink.hits) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [hit.path for hit in sink.hits] == ["/a", "/b", "/slow"]
    await asyncio.sleep(0.5)  # the sink holds `slow` for 3 s, `c` sleeps 3 s: both are mid-flight
    assert first.proc.poll() is None, str(first)
    below = descendants(first.pid)
    assert first.kill() == -9
    killed_at = time.monotonic()
    # The worker's helpers die with it, and so does the shell step's command (parent-death
    # signal): at most a grandchild it started (`sleep 3`) lingers, and it writes nothing.
    await asyncio.sleep(0.5)
    survivors = {pid: cmdline(pid) for pid in below if pid_alive(pid)}
    assert all(line == "sleep 3" for line in survivors.values()), survivors

    second = rig.worker("worker-2")
    final = await result_while_alive(handle, [second])

    assert final.state == "completed", final.model_dump_json(indent=2)
    assert final.requester and final.requester.verified_by == "api", "admitted once, by the first worker, on its proof"
    attempts = {s.id: s.attempts for s in final.steps}
    assert attempts == {"a": 1, "wait": 1, "b": 1, "c": 2, "slow": 2, "d": 1}, "c and slow run again on the new worker"
    # Steps done before the kill are not repeated; the one cut off mid-flight repeats with the same key,
    # which is what lets the API on the other end recognise the retry.
    assert sink.keys() == Counter({key["a"]: 1, key["b"]: 1, key["slow"]: 2, key["d"]: 1})
    assert [hit.path for hit in sink.hits] == ["/a", "/b", "/slow", "/slow", "/d"]
    assert sink.hits[3].at > killed_at and sink.hits[4].at > sink.hits[3].at
    # Step c ran to the end once, on the new worker: the killed attempt's `sh` died with its worker.
    assert marker.read_text().count("x") == 1


RESTART_PLAYBOOK = """\
name: restart-server
summary: Two side effects with a durable timer between them; the server restarts during the timer
owner: sre-oncall
steps:
  - id: a
    action: http.request
    with: {{method: POST, url: "{sink}/a"}}
  - id: nap
    action: core.sleep
    with: {{duration: 5s}}
  - id: b
    action: http.request
    with: {{method: POST, url: "{sink}/b"}}
"""


async def test_dev_server_restart_on_same_db_mid_run(rig: Rig, sink: Sink) -> None:
    worker = rig.worker("worker")
    handle = await start(rig, RESTART_PLAYBOOK.format(sink=sink.url), "restart-server")
    await wait_for(handle, lambda s: s.step("nap").state == "running", [worker])

    await rig.dev.stop()
    down_at = time.monotonic()
    await asyncio.sleep(1)
    rig.dev = DevServer(rig.data_dir, port=rig.port, ui_port=rig.ui_port)
    await rig.dev.start()
    up_at = time.monotonic()

    client = await Client.connect(rig.dev.address, data_converter=pydantic_data_converter)
    # The same worker process carries on: an operator restarting Temporal need not restart workers.
    final = await result_while_alive(client.get_workflow_handle(handle.id, result_type=RunStatus), [worker])
    assert final.state == "completed", final.model_dump_json(indent=2)
    assert sink.keys() == Counter({f"{handle.id}:a": 1, f"{handle.id}:b": 1})
    assert sink.hits[0].at < down_at < up_at < sink.hits[1].at


REPEAT_PLAYBOOK = """\
name: many-kills
summary: Slow side effects in a row; workers keep dying in the middle of them
owner: sre-oncall
steps:
""" + "".join(
    f"""  - id: s{i}
    action: http.request
    with: {{{{method: POST, url: "{{sink}}/slow/s{i}"}}}}
    retry: {{{{max_attempts: 5}}}}
"""
    for i in range(6)
)


@pytest.mark.chaos
async def test_workers_killed_again_and_again_each_side_effect_repeats_only_when_cut_off(rig: Rig, sink: Sink) -> None:
    """Three workers SIGKILLed, each in the middle of a slow request; a fourth finishes. A dead
    worker's attempt counts against the step's retries (hence five), as any timeout would."""
    handle = await start(rig, REPEAT_PLAYBOOK.format(sink=sink.url), "many-kills")
    rng = random.Random(7)
    kills: list[float] = []
    for n in range(3):
        worker = rig.worker(f"worker-{n}")
        seen = len(sink.hits)
        deadline = time.monotonic() + 60
        while len(sink.hits) == seen:  # a request has reached the sink: the step is mid-flight
            assert time.monotonic() < deadline, "no worker picked the run up"
            assert worker.proc.poll() is None, str(worker)
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0.2, SLOW_SECONDS - 0.5))
        assert worker.kill() == -9
        kills.append(time.monotonic())
    last = rig.worker("worker-last")
    final = await result_while_alive(handle, [last], timeout=120)

    assert final.state == "completed", final.model_dump_json(indent=2)
    assert sorted(k for k in sink.keys() if k) == [f"{handle.id}:s{i}" for i in range(6)], "every step reached the API"
    for key in sink.keys():
        times = [hit.at for hit in sink.hits if hit.key == key]
        for before, after in zip(times, times[1:]):
            assert any(before < kill < after for kill in kills), f"{key} repeated without a crash in between"
    assert len(sink.hits) == 6 + len(kills), "only the three requests cut off were sent again"


RESET_PLAYBOOK = """\
name: reset-run
summary: Two side effects; an operator resets the finished run to its first workflow task
owner: sre-oncall
steps:
  - id: a
    action: http.request
    with: {{method: POST, url: "{sink}/a"}}
  - id: b
    action: http.request
    with: {{method: POST, url: "{sink}/b"}}
"""


async def reset_to_first_task(rig: Rig, handle: WorkflowHandle) -> str:
    """What `temporal workflow reset --type FirstWorkflowTask` does; the new execution's run id."""
    history = [e async for e in handle.fetch_history_events()]
    task_done = next(e.event_id for e in history if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    reset = await rig.client.workflow_service.reset_workflow_execution(ResetWorkflowExecutionRequest(
        namespace=rig.client.namespace,
        workflow_execution=WorkflowExecution(workflow_id=handle.id),
        reason="operator retries the run",
        workflow_task_finish_event_id=task_done,
        request_id=str(uuid.uuid4()),
    ))
    return reset.run_id


async def test_a_reset_run_repeats_its_steps_with_the_same_keys_and_the_trail_says_so(rig: Rig, sink: Sink) -> None:
    """`temporal workflow reset` to the run's first workflow task: Temporal replays the run from
    there in a new execution of the same chain, so its steps act again. Each repeat carries the
    key of the first (the target can tell a repeat), and the audit trail shows both executions."""
    worker = rig.worker("worker")
    handle = await start(rig, RESET_PLAYBOOK.format(sink=sink.url), "reset-run")
    first = await result_while_alive(handle, [worker])
    assert first.state == "completed"
    reset = await reset_to_first_task(rig, handle)
    again = await result_while_alive(rig.client.get_workflow_handle(handle.id, run_id=reset, result_type=RunStatus),
                                     [worker])

    assert again.state == "completed", again.model_dump_json(indent=2)
    # Both executions acted, each request with the step's one key: the target can tell a repeat.
    assert sink.keys() == Counter({f"{handle.id}:a": 2, f"{handle.id}:b": 2})
    assert len(sink.raw_keys()) == 2  # (one key per step across both executions: a reset keeps its first's)
    with SqliteAuditStore(rig.data_dir.parent / "bot-data" / "audit.db") as store:
        events = store.events(run_id=handle.id)
        assert store.verify().ok
    chain = (handle.first_execution_run_id or "").replace("-", "")
    later = f"{chain}~{reset.replace('-', '')}"
    story = ["run_started", "step_started a", "step_succeeded a", "step_started b", "step_succeeded b", "run_finished"]
    told = {execution: [" ".join(filter(None, (e.kind.value, e.step_id))) for e in events
                        if e.event_id.startswith(f"{handle.id}/{execution}:")] for execution in (chain, later)}
    # The reset's repeats are on the record as its own, beside the first execution's whole story
    # (with the first execution's ids they were read as retries of its events and dropped).
    assert told == {chain: story, later: story}
    assert len(events) == 2 * len(story)


PARENT_PLAYBOOK = """\
name: reset-parent
summary: A child run, then a side effect; an operator resets the finished run
owner: sre-oncall
steps:
  - {{id: call, action: playbook.run, with: {{name: reset-child}}}}
  - id: after
    action: http.request
    with: {{method: POST, url: "{sink}/after"}}
"""

CHILD_PLAYBOOK = """\
name: reset-child
summary: One side effect
owner: sre-oncall
steps:
  - id: act
    action: http.request
    with: {{method: POST, url: "{sink}/child"}}
"""


async def test_a_reset_parent_is_refused_its_childs_restart_and_rolls_back(rig: Rig, sink: Sink) -> None:
    """A child's run id is its parent's and its step's, so a reset parent starts the child again
    under the id its first child ran under, with no start proof: the worker refuses it as a reused
    run id (fail closed: a workflow that only claims to be the parent could do the same, and the
    child's identity comes from that claim), the call step fails and the parent rolls back. The
    child acts once, the parent's later step not again."""
    (rig.tmp / "playbooks" / "reset-child.yaml").write_text(CHILD_PLAYBOOK.format(sink=sink.url))
    worker = rig.worker("worker")
    handle = await start(rig, PARENT_PLAYBOOK.format(sink=sink.url), "reset-parent")
    assert (await result_while_alive(handle, [worker])).state == "completed"

    reset = await reset_to_first_task(rig, handle)
    again = await result_while_alive(rig.client.get_workflow_handle(handle.id, run_id=reset, result_type=RunStatus),
                                     [worker])

    child = f"{handle.id}{CHILD_SEPARATOR}call"
    assert again.state in ("failed", "compensated"), again.model_dump_json(indent=2)
    assert again.step("call").state == "failed"
    assert "refused by the worker's run id check" in (again.step("call").error or "")
    assert again.step("after").state == "pending"
    assert sink.keys() == Counter({f"{child}:act": 1, f"{handle.id}:after": 1})
