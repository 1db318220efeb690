"""A core.confirm answer is only as verified as its proof: a proof binds the exact answer (and the
step, the run, the purpose), so a captured proof cannot carry another answer, and a vote's proof
cannot pass for an answer. Sent straight to Temporal, as anyone who can reach it could."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from bot.engine.runs import execution_of
from bot.engine.state import ConfirmRequest
from bot.engine.workflow import PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, confirm_content, vote_content
from tests.api.support import ENVELOPE_KEY, ApiStack, api_stack
from tests.api.test_confirmations import PICK


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path, {"pick": PICK}) as s:
        yield s


BOB = Actor("api:bob", "bob", (), "api")


async def refused(stack: ApiStack, run_id: str, request: ConfirmRequest) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await stack.temporal.get_workflow_handle(run_id).execute_update(PlaybookRun.confirm, request)
    return str(info.value.cause)


async def test_a_proof_for_one_answer_cannot_carry_another(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "pick")
    await stack.waiting(run_id, "pick")
    keyring, execution = Keyring(ENVELOPE_KEY.encode()), await execution_of(stack.temporal, run_id)
    for_restart = keyring.sign("confirm", run_id, BOB, confirm_content("pick", "restart", ""), execution=execution)
    as_vote = keyring.sign("vote", run_id, BOB, vote_content("pick", "approve", ""), execution=execution)

    swapped = ConfirmRequest(step_id="pick", user="api:bob", answer="scale", proof=for_restart)
    assert "it was issued for a different confirm than the one sent" in await refused(stack, run_id, swapped)
    vote_proof = ConfirmRequest(step_id="pick", user="api:bob", answer="scale", proof=as_vote)
    assert "it proves a vote, not a confirm" in await refused(stack, run_id, vote_proof)
    status = await stack.status(run_id)
    assert status is not None and status.step("pick").approvals == []

    # the positive control: the same proof with the answer it was issued for is accepted
    honest = ConfirmRequest(step_id="pick", user="api:bob", answer="restart", proof=for_restart)
    await stack.temporal.get_workflow_handle(run_id).execute_update(PlaybookRun.confirm, honest)
    final = await stack.finished(run_id)
    assert final.step("pick").output == {"choice": "restart", "by": "api:bob"}
    assert final.step("pick").approvals[0].verified is True
