"""A flood of core.confirm answers outside the step's choices stops adding history (issue 17.3).

Attack: since the front door no longer asks the `approver` rule first, every API token holder
(and anyone who reaches Temporal, with no proof at all) reaches the run with an answer. An answer
outside the step's choices is refused by the handler before the approver check, so the sender is
never remembered by the validator (`ApprovalBook.screen`): each one was an accepted update in
history. The record stops at REFUSED_ANSWERS_AUDITED, history did not; enough of them push the run
past Temporal's history limits, which terminate it with no rollback (see test_refused_votes.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from bot.engine.workflow import REFUSED_ANSWERS_AUDITED
from tests.api.support import ApiStack, api_stack
from tests.api.test_confirmations import PICK

FLOOD = 40


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path, {"pick": PICK}) as s:
        yield s


async def _history_events(stack: ApiStack, run_id: str) -> int:
    return len((await stack.temporal.get_workflow_handle(run_id).fetch_history()).events)


async def test_answers_outside_the_choices_stop_adding_history_once_the_record_is_full(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "pick")
    await stack.waiting(run_id, "pick")
    url = f"/runs/{run_id}/confirmations"

    async def bad(i: int) -> None:  # mallory holds a token but is no approver; the answer is not a choice
        response = await stack.call("POST", url, "mallory", body={"step": "pick", "choice": f"reboot-{i}"})
        # (she may not read the run, so she hears GET's 403, not the step's choices: the run still refused it)
        assert response.status_code == 403 and response.json()["rule"] == "start", response.text

    for i in range(REFUSED_ANSWERS_AUDITED):
        await bad(i)
    before = await _history_events(stack, run_id)
    for i in range(FLOOD):
        await bad(REFUSED_ANSWERS_AUDITED + i)
    grown = await _history_events(stack, run_id) - before
    # On main each of the FLOOD answers was an update accepted into history (>= 2 events each).
    assert grown < FLOOD, f"{FLOOD} refused answers past the audited ones added {grown} history events"

    audited = [e for e in stack.audit.events(run_id)
               if e.kind == "approval_vote" and e.details.get("vote") == "confirm" and not e.details["accepted"]]
    assert len(audited) == REFUSED_ANSWERS_AUDITED and {e.details["rule"] for e in audited} == {"choices"}

    # positive control: an approver's valid answer still decides the step
    response = await stack.call("POST", url, "bob", body={"step": "pick", "choice": "restart"})
    assert response.status_code == 200, response.text
    final = await stack.finished(run_id)
    assert final.state == "completed" and final.step("pick").output == {"choice": "restart", "by": "api:bob"}
