"""Record run histories for the replay tests.

One run of a live bot (`playbook-bot dev`, or any cluster the settings point at):

    PLAYBOOK_BOT_DATA_DIR=... .venv/bin/python -m tests.reliability.record_history RUN_ID tests/reliability/histories/NAME.json

Or every scenario below, each run on a throwaway dev server with the rehearsal actions of
tests/engine/support.py (a history holds activity results, so replay needs no real actions):

    .venv/bin/python -m tests.reliability.record_history --scenarios

Re-record only to add histories: the point of the old ones is that they were made by old code.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bot.engine.state import VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from bot.slack.notifier import SlackNotifier
from bot.temporal import connect
from tests.engine.support import Recorder, cancel, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import policy

HISTORIES = Path(__file__).parent / "histories"
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
    await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="dana", vote=verdict))  # type: ignore[arg-type]


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
}


async def record_scenarios(names: list[str]) -> None:
    from tests.conftest import binary  # noqa: PLC0415  (the dev server beside the interpreter)

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary("temporal")), data_converter=pydantic_data_converter,
        dev_server_extra_args=["--log-level", "error"],
    )
    try:
        for name in names or list(SCENARIOS):
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
