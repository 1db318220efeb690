"""Refused cancels on one run stop adding history, like refused votes (test_refused_votes.py).

Attack: anyone who reaches Temporal sends cancel updates without proof (or with a forged one),
each under a new name. Each was an update in history, a `policy.cancel` activity and an audit
record: no bound, so enough of them push the run past Temporal's history limits (which terminate
it with no rollback) or its limit on updates (after which the run hears no approval or cancel).
Past UNVERIFIED_REFUSED_MAX unverified refusals the validator hears only verified cancels; a
refused verified canceller is refused there too; a genuine owner's cancel still works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateFailedError

from bot.engine.approvals import UNVERIFIED_REFUSED_MAX
from bot.engine.runs import cancel_run, start_run
from bot.engine.state import CancelRequest, TriggerContext
from bot.engine.workflow import PlaybookRun
from tests.security.test_raw_temporal import DATA, PLAYBOOKS
from tests.security.trust_stack import FRONT_DOOR, TrustStack, cli_actor, result, slack_actor, trust_stack, until
from tests.slack.support import ALICE, principal

FLOOD = 40


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("cancels"), PLAYBOOKS, DATA) as s:
        yield s


async def test_a_flood_of_unverified_cancels_stops_adding_history(stack: TrustStack) -> None:
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    handle = await start_run(stack.client, stack.task_queue, stack.loaded("remediate"), {}, trigger,
                             actor=slack_actor(ALICE, "sre"), keyring=FRONT_DOOR)
    await until(handle, lambda s: s.step("hold").state == "running", "hold running")

    async def refused(i: int) -> None:
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(PlaybookRun.cancel, CancelRequest(user=f"cli:stranger-{i}", reason="stop"))

    for i in range(UNVERIFIED_REFUSED_MAX):
        await refused(i)
    before = len((await handle.fetch_history()).events)
    for i in range(FLOOD):
        await refused(UNVERIFIED_REFUSED_MAX + i)
    grown = len((await handle.fetch_history()).events) - before
    # On main each refused cancel added an update, a policy activity and workflow tasks (about 10 events).
    assert grown < FLOOD, f"{FLOOD} unverified cancels past the bound added {grown} history events"
    refusals = [e for e in stack.events(handle.id, "cancel_requested") if not e.details["accepted"]]
    assert len(refusals) >= UNVERIFIED_REFUSED_MAX, "the first ones are on the record"

    actor, keyring = cli_actor("bob")  # positive control: a verified owner-group member's cancel
    await cancel_run(stack.client, handle.id, actor, keyring, reason="positive control")
    status = await result(handle)
    assert status.state == "compensated" and status.cancelled_by == "cli:bob", status
