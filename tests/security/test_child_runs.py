"""Attacks on sub-playbooks (format v1.1 `playbook.run`) from anyone who can reach Temporal.

A child run takes its requester from its parent (the parent's admission verified it). So a raw
client that starts a PlaybookRun claiming to be a child of someone's running run would run as
that someone, verified, with their groups' rights. The worker believes a parent only when
Temporal records it as the workflow that started the run, which no client can set.

The stack is the real worker and front door (tests/security/trust_stack.py) with the shipped
policy: `restricted` may only be started by verified members of sre (bob is one, mallory is not).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio import workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bot.engine.runs import run_input
from bot.engine.state import ParentLink, Requester, RunInput, RunStatus, TriggerContext
from tests.security.test_raw_temporal import PLAYBOOKS as RAW_PLAYBOOKS, assert_refused
from tests.security.trust_stack import FRONT_DOOR, TrustStack, result, slack_actor, trust_stack, until
from tests.slack.support import BOB, principal

PLAYBOOKS = {
    "restricted": RAW_PLAYBOOKS["restricted"],
    "outer": """
name: outer
summary: Runs restricted as a child, then holds
owner: sre
steps:
  - {id: call, action: playbook.run, with: {name: restricted, params: {service: web}}}
  - {id: hold, action: core.sleep, with: {duration: 10m}}
""",
}
DATA = {"start_restrictions": {"restricted": ["sre"]}}


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("child"), PLAYBOOKS, DATA) as s:
        yield s


async def bobs_parent(stack: TrustStack) -> str:
    """Bob (verified through Slack, in sre) starts `outer`; its child runs `restricted` as bob."""
    run_id = f"outer-{uuid.uuid4().hex[:12]}"
    trigger = TriggerContext(kind="slack", requested_by=principal(BOB))
    handle = await stack.start_raw(run_input(stack.loaded("outer"), {}, trigger, slack_actor(BOB, "sre"), FRONT_DOOR, run_id),
                                   run_id)
    await until(handle, lambda s: s.step("hold").state == "running", "the parent holds after its child")
    return run_id


def forged_child(stack: TrustStack, parent: str, *, kind: str = "playbook", link: bool = True) -> RunInput:
    bob = Requester(principal=principal(BOB), person="bob", verified=True, verified_by="slack")
    loaded = stack.loaded("restricted")
    return RunInput(
        playbook=loaded.playbook,
        playbook_hash=loaded.hash,
        params={"service": "db", "mode": "hard"},
        trigger=TriggerContext(kind=kind, requested_by=principal(BOB)),  # type: ignore[arg-type]
        parent=ParentLink(run_id=parent, step_id="call", root_run_id=parent, requester=bob) if link else None,
    )


async def test_the_genuine_child_runs_as_its_parents_requester(stack: TrustStack) -> None:
    """Positive control: the same stack runs the child its parent starts, as bob (verified), linked."""
    parent = await bobs_parent(stack)
    child = f"{parent}.call"
    assert stack.sink.of(child) == [f"/{child}/poke/web/soft"]
    started = stack.events(child, "run_started")
    assert started and started[0].details["requester"]["principal"] == principal(BOB)
    assert started[0].details["requester"]["verified"] is True
    assert started[0].details["trigger"] == "playbook"


async def test_a_raw_start_claiming_to_be_a_running_parents_child_is_refused(stack: TrustStack) -> None:
    """Mallory starts `restricted` straight on Temporal, claiming to be a child of bob's running run
    (its id, its call step, bob as verified requester). Before the parent check, admission took the
    claimed parent's requester: the run was admitted as bob and called the sink with mallory's params."""
    parent = await bobs_parent(stack)
    handle = await stack.start_raw(forged_child(stack, parent), f"forged-{parent}")
    await until(handle, lambda s: s.finished or s.step("poke").state != "pending", "the forged run decided")
    assert stack.sink.of(handle.id) == [], "the forged child ran as bob"
    await assert_refused(stack, handle, "parent", "no workflow started it (a client did)")
    status = await result(handle)
    assert status.parent_run is None, "a refused run does not show the parent it claimed"


@pytest.mark.parametrize(
    ("kind", "link"),
    [("playbook", False), ("cli", True)],
    ids=["playbook-trigger-without-parent", "parent-with-another-trigger"],
)
async def test_half_a_child_claim_is_refused(stack: TrustStack, kind: str, link: bool) -> None:
    parent = await bobs_parent(stack) if link else "nobody"
    handle = await stack.start_raw(forged_child(stack, parent, kind=kind, link=link))
    await until(handle, lambda s: s.finished or s.step("poke").state != "pending", "the forged run decided")
    assert stack.sink.of(handle.id) == [], "the half-claimed child ran"
    await assert_refused(stack, handle, "parent", "a child run needs both trigger 'playbook' and its parent run")


async def _start_child(args: list[Any]) -> str:
    child_input, child_id, queue = args
    await workflow.start_child_workflow(
        "PlaybookRun", RunInput.model_validate(child_input), id=child_id, task_queue=queue,
        parent_close_policy=workflow.ParentClosePolicy.ABANDON)
    return "started"


@workflow.defn(name="NotARun")
class NotARun:
    """Mallory's own workflow, on her own worker and task queue: it starts `restricted` as a
    PlaybookRun child on the bot's queue, claiming itself as the parent and bob as its requester."""

    @workflow.run
    async def run(self, args: list[Any]) -> str:
        return await _start_child(args)


@workflow.defn(name="PlaybookRun")
class PosingRun:
    """The same, under the bot's workflow type name (on her own queue still)."""

    @workflow.run
    async def run(self, args: list[Any]) -> str:
        return await _start_child(args)


@pytest.mark.parametrize(("mallorys", "says"), [
    (NotARun, "started by a 'NotARun' workflow"),
    (PosingRun, "runs on task queue 'mallory-"),
], ids=["own type", "posing as PlaybookRun"])
async def test_a_workflow_of_an_attackers_own_worker_cannot_start_a_child_as_someone_else(
    stack: TrustStack, mallorys: type, says: str
) -> None:
    """Anyone who can reach Temporal can also run a worker. Mallory's workflow starts `restricted`
    as its own child, with no signing key: the child must not run as bob. Before the fix it did
    (Temporal named her workflow its parent, and the requester came from the child's input); now
    the parent must be a PlaybookRun on the bot's queue whose own status names that requester."""
    queue, child_id, parent_id = f"mallory-{uuid.uuid4()}", f"victim-{uuid.uuid4().hex[:8]}", f"mallory-{uuid.uuid4().hex[:8]}"
    name = mallorys.__temporal_workflow_definition.name  # type: ignore[attr-defined]
    async with Worker(stack.client, task_queue=queue, workflows=[mallorys], workflow_runner=UnsandboxedWorkflowRunner()):
        await stack.client.execute_workflow(
            name, [forged_child(stack, parent_id).model_dump(mode="json"), child_id, stack.task_queue],
            id=parent_id, task_queue=queue, result_type=str)
        handle = stack.client.get_workflow_handle(child_id, result_type=RunStatus)
        await until(handle, lambda s: s.finished or s.step("poke").state not in ("pending", "running"), "the child decided")
    await assert_refused(stack, handle, "parent", says)
    assert stack.sink.of(child_id) == [], "the child of mallory's workflow ran as bob"
