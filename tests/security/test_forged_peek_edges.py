"""A forged `run.peek` answer at the edge of what decodes (red team, edge values).

A plain Temporal client completes a parent's pending `run.peek` of its child by id (docs/security.md
concedes she can make up the child's status). The answer is read by bot/engine/results.py: what
does not decode is the activity's failure, asked again. But what decodes as a Peek need not decode
once the run holds it: the call step's output is `child_report(status)`, two levels deeper in the
parent's own RunStatus than in the Peek. A step output nested 196 deep decodes as a Peek (pydantic
stops at 201 levels) and leaves the parent's RunStatus 203 deep: no client, activity or workflow
can read the parent's status or its end again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from temporalio.api.enums.v1 import EventType

from bot.engine.children import PeekActivities
from bot.engine.sandbox import shared_converter
from bot.engine.state import RunStatus
from tests.security.test_forged_activity_results import PEEK, _gated_run, _pending, holding
from tests.security.test_raw_temporal import DATA, PLAYBOOKS
from tests.security.trust_stack import TrustStack, trust_stack

TREE = {
    "grand": """
name: grand
summary: Runs middle as a sub-playbook
owner: sre
steps:
  - {id: call, action: playbook.run, with: {name: middle}}
""",
    "middle": """
name: middle
summary: Runs leaf as a sub-playbook
owner: sre
steps:
  - {id: call, action: playbook.run, with: {name: leaf}}
""",
    "leaf": """
name: leaf
summary: One log line
owner: sre
steps:
  - id: c1
    action: core.log
    with: {message: hello}
""",
}


@pytest_asyncio.fixture(scope="module")
async def tree(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    peek = PEEK.held(PeekActivities(shared_converter(dev_env.client)).peek)
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("peekedge"), {**PLAYBOOKS, **TREE},
                           DATA, activities=lambda activities: [*holding(activities), peek]) as s:
        yield s


def _forged(parent: str, child: str, output: Any) -> dict[str, Any]:
    """The child's status as Mallory writes it: held for its parent, its step's output hers."""
    return {"running": True, "status": {
        "run_id": child, "playbook": "leaf", "playbook_hash": "x", "requested_by": "mallory", "trigger": "playbook",
        "state": "completed", "held_by": parent, "parent_run": parent,
        "steps": [{"id": "c1", "action": "core.log", "state": "succeeded", "output": output}],
    }}


async def _forge_peek(stack: TrustStack, parent_id: str, child_id: str, output: Any) -> None:
    await asyncio.wait_for(PEEK.asked.wait(), 30)
    try:
        handle = stack.client.get_workflow_handle(parent_id)
        run_id, activity_id = await _pending(handle, "run.peek")
        await stack.client.get_async_activity_handle(workflow_id=parent_id, run_id=run_id, activity_id=activity_id
                                                     ).complete(_forged(parent_id, child_id, output))
    finally:
        PEEK.release.set()


def _deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


async def _peek_failures(handle: Any) -> list[str]:
    description = await handle.describe()
    return [p.last_failure.message[:200] for p in description.raw_description.pending_activities
            if p.activity_type.name == "run.peek" and p.HasField("last_failure")]


async def _task_failures(handle: Any) -> list[str]:
    history = await handle.fetch_history()
    return [e.workflow_task_failed_event_attributes.failure.message for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]


async def test_a_forged_peek_nested_to_the_decoders_edge_does_not_stop_the_tree(tree: TrustStack) -> None:
    """The middle run's peek of its leaf is completed with a held status whose step output is
    nested 196 deep: it decodes, so the middle run's call step succeeds with it (a status she makes
    up: conceded), the middle run completes and holds for `grand`. But its RunStatus is now 203 deep:
    `grand`'s `run.peek` of it fails decoding the `status` query (PeekActivities.peek,
    bot/engine/children.py), forever (retried without limit), so `grand` never hears that it holds
    and the tree never ends. Nothing stops it: a `playbook.run` timeout is checked only between
    peeks, and a cancel of `grand` (tried by hand: accepted) reaches the middle run, whose rollback
    then waits for the leaf, whose own peek of the middle run fails the same way: nothing is undone,
    nothing ends. Secure: a peek answer whose status this run could not hold is refused (asked
    again, and the genuine status answers), and the tree completes."""
    PEEK.arm(drop=True)
    handle = await _gated_run(tree, "grand")
    middle = f"{handle.id}.call"
    await _forge_peek(tree, middle, f"{middle}.call", {"v": _deep(196)})
    typed = tree.client.get_workflow_handle(handle.id, result_type=RunStatus)
    try:
        status = await asyncio.wait_for(typed.result(), 20)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"the tree never ended ({type(exc).__name__}); grand's run.peek of the middle run "
                             f"fails: {await _peek_failures(handle)}; grand's workflow task failures: "
                             f"{(await _task_failures(handle))[:1]}") from None
    assert status.state == "completed", status.state
