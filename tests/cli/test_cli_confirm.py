"""`playbook-bot confirm RUN STEP CHOICE`: through the front door's API as the token's principal,
and straight to Temporal (where a CLI principal off the dev stack is unverified)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.api.support import ApiStack, api_stack
from tests.api.test_confirmations import PICK
from tests.e2e.support import Result, base_env, cli


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path, {"pick": PICK}) as s:
        yield s


async def run_cli(stack: ApiStack, env: dict[str, str], *args: str) -> Result:
    elsewhere = stack.settings.data_dir.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return await asyncio.to_thread(cli, list(args), env, 120, elsewhere)


async def test_confirm_through_the_api_picks_the_branch(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "pick")
    await stack.waiting(run_id, "pick")
    env = base_env(api_url=stack.url, api_token=stack.tokens["bob"])
    typo = await run_cli(stack, env, "confirm", run_id, "pick", "scael")
    assert typo.code == 1 and typo.stdout == "", typo
    assert "'scael' is not one of the choices (restart, scale)" in typo.error_line()
    picked = await run_cli(stack, env, "confirm", run_id, "pick", "restart", "--reason", "memory leak")
    assert picked.code == 0, picked
    assert picked.stdout.strip() == "api:bob answered 'restart'"
    final = await stack.finished(run_id)
    assert final.step("pick").output == {"choice": "restart", "by": "api:bob"}
    assert (final.step("restart").state, final.step("scale").state) == ("succeeded", "skipped")


async def test_confirm_straight_to_temporal_reaches_the_run_as_an_unverified_principal(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "pick")
    await stack.waiting(run_id, "pick")
    env = base_env(temporal_address=stack.temporal.service_client.config.target_host,
                   task_queue=stack.task_queue, data_dir=str(stack.settings.data_dir.parent / "cli-data"))
    refused = await run_cli(stack, env, "confirm", run_id, "pick", "scale", "--by", "bob")
    assert refused.code == 1 and refused.stdout == "", refused
    assert "cli:bob may not answer step 'pick': only verified sre may approve" in refused.error_line()
    status = await stack.status(run_id)
    assert status is not None and status.step("pick").approvals == []
