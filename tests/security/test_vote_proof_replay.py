"""A vote's (or a cancel's) proof from an earlier run under the same run id does not approve this one.

A proof binds the run id, the purpose and what was asked (step, vote, reason), not the execution:
a run id runs again (an alert episode with `on_rerun: start`; admission lets a fresh start proof
through), and its steps have the same ids. The earlier run's history, readable by anyone who can
reach Temporal, holds bob's genuine `approve` proof for `risky`; sent as a raw update to the new
run, it verified, and bob (verified, in sre) approved a high-impact step he never saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateFailedError

from bot.engine.runs import cancel_run
from bot.engine.state import CancelRequest, VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.identity.proofs import cancel_content, vote_content
from tests.security.test_raw_temporal import PLAYBOOKS, DATA, approve_as_bob, assert_nothing_approved, gated_run, refused_vote
from tests.security.trust_stack import FRONT_DOOR, TrustStack, cli_actor, result, slack_actor, state_of, trust_stack
from tests.slack.support import BOB, principal


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("replay"), PLAYBOOKS, DATA) as s:
        yield s


async def test_a_vote_proof_issued_before_the_run_started_is_refused(stack: TrustStack) -> None:
    handle = await gated_run(stack)
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)  # the earlier run under this id, as its history holds it
    lifted = FRONT_DOOR.sign("vote", handle.id, slack_actor(BOB, "sre"), vote_content("risky", "approve", ""),
                             now=yesterday)
    said = await refused_vote(handle, VoteRequest(step_id="risky", user=principal(BOB), proof=lifted))
    assert "issued before" in said, said
    await assert_nothing_approved(stack, handle, refusals=1)
    await approve_as_bob(stack, handle)  # positive control: bob's own click now


async def test_a_cancel_proof_issued_before_the_run_started_is_refused(stack: TrustStack) -> None:
    """The same for a cancel: bob's (an owner) cancel of the earlier run under this id does not
    cancel this one; his own cancel now does."""
    handle = await gated_run(stack)
    actor, keyring = cli_actor("bob")
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    lifted = keyring.sign("cancel", handle.id, actor, cancel_content("stop"), now=yesterday)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(PlaybookRun.cancel, CancelRequest(user="cli:bob", reason="stop", proof=lifted))
    assert "issued before" in str(refused.value.cause), refused.value.cause
    status = await state_of(handle)
    assert status.cancelled_by is None and status.step("risky").state == "waiting_approval", status
    await cancel_run(stack.client, handle.id, actor, keyring, reason="positive control")
    assert (await result(handle)).cancelled_by == "cli:bob"
