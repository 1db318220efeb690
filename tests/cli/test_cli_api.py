"""The console script through the front door's API (PLAYBOOK_BOT_API_URL + PLAYBOOK_BOT_API_TOKEN):
it acts as the token's principal, prints what it prints against Temporal, exits as it does, and
refuses `--by` (which would claim someone else) in one line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from bot.devstack import free_port
from tests.api.support import ApiStack, api_stack
from tests.e2e.support import Result, base_env, cli
from tests.waiting import eventually


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path) as s:
        yield s


async def as_(stack: ApiStack, who: str | None, *args: str, **settings: str) -> Result:
    """`playbook-bot ARGS` with the API settings for `who`'s token, run off the event loop the
    front door serves on, from a directory with no playbooks or data: only the API is reachable."""
    elsewhere = stack.settings.data_dir.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = base_env(**{"api_url": stack.url, **({"api_token": stack.tokens[who]} if who else {}), **settings})
    return await asyncio.to_thread(cli, list(args), env, 120, elsewhere)


async def test_run_wait_json_completes_as_the_tokens_principal(stack: ApiStack) -> None:
    result = await as_(stack, "alice", "run", "quick", "-p", "service=checkout", "-p", "replicas=3", "--wait", "--json")
    assert result.code == 0, result
    status = result.json()
    assert (status["state"], status["requested_by"], status["trigger"]) == ("completed", "api:alice", "api")
    assert status["params"] == {"service": "checkout", "replicas": 3}
    assert [s["state"] for s in status["steps"]] == ["succeeded"]

    shown = await as_(stack, "bob", "status", status["run_id"], "--json")
    assert shown.code == 0, shown
    assert shown.json()["run_id"] == status["run_id"] and shown.json()["state"] == "completed"
    table = await as_(stack, "bob", "status", status["run_id"])
    assert table.code == 0 and status["run_id"] in table.stdout


async def test_approve_and_reject_through_the_api(stack: ApiStack) -> None:
    started = await as_(stack, "alice", "run", "gated", "--json")
    assert started.code == 0, started
    run_id = started.json()["run_id"]
    await stack.waiting(run_id, "risky")

    own = await as_(stack, "alice", "approve", run_id, "risky")
    assert own.code == 1 and "four-eyes" in own.error_line() and own.stdout == "", own
    approved = await as_(stack, "bob", "approve", run_id, "risky", "--reason", "checked")
    assert approved.code == 0, approved
    assert approved.stdout.strip() == "api:bob approved (1/1)"
    assert (await stack.finished(run_id)).state == "completed"

    # `run --wait` exits 1 when the run does not complete: rejected from another token meanwhile.
    waiting = asyncio.create_task(as_(stack, "carol", "run", "gated", "--wait", "--json"))
    run_id = await _first_waiting_run(stack, exclude={run_id})
    rejected = await as_(stack, "bob", "reject", run_id, "risky", "--reason", "not now")
    assert rejected.code == 0 and rejected.stdout.strip() == "api:bob rejected", rejected
    result = await waiting
    assert result.code == 1, result
    assert result.json()["run_id"] == run_id and result.json()["state"] != "completed"


async def test_cancel_through_the_api_follows_the_cancel_rule(stack: ApiStack) -> None:
    run_id = (await as_(stack, "alice", "run", "hold")).stdout.strip()
    await stack.step_in(run_id, "wait", "running")
    refused = await as_(stack, "carol", "cancel", run_id)
    assert refused.code == 1 and refused.stdout == "", refused
    assert "only the requester or bob may cancel" in refused.error_line()
    assert (await stack.status(run_id)).cancelled_by is None  # type: ignore[union-attr]
    accepted = await as_(stack, "alice", "cancel", run_id, "--reason", "false alarm")
    assert accepted.code == 0, accepted
    assert accepted.stdout.startswith("cancel accepted from api:alice") and f"(run {run_id} was running)" in accepted.stdout
    final = await stack.finished(run_id)
    assert (final.cancelled_by, final.cancel_reason) == ("api:alice", "false alarm")


async def test_by_is_refused_through_the_api_and_nothing_happens(stack: ApiStack) -> None:
    for args in (["run", "quick", "-p", "service=x", "--by", "bob"], ["approve", "r", "s", "--by", "bob"],
                 ["reject", "r", "s", "--by", "bob"], ["cancel", "r", "--by", "bob"]):
        result = await as_(stack, "alice", *args)
        assert result.code == 1, result
        assert result.error_line().startswith("error: --by cannot be used through the API"), result
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result
    assert await stack.settled_runs() == []


async def test_refusals_through_the_api_are_one_line(stack: ApiStack) -> None:
    cases = {
        "start refused": (await as_(stack, "mallory", "run", "quick", "-p", "service=x"),
                          "api:mallory may not start quick: only sre may start playbooks"),
        "bad params": (await as_(stack, "alice", "run", "quick", "-p", "service=Bad Name", "-p", "replicas=x"),
                       "does not match"),
        "unknown run": (await as_(stack, "alice", "status", "no-such-run"), "unknown run 'no-such-run'"),
        "unknown token": (await as_(stack, None, "status", "x", api_token="pbt_not-a-token"), "unknown or revoked API token"),
        "no token": (await as_(stack, None, "status", "x"), "PLAYBOOK_BOT_API_TOKEN is not"),
        "unreachable": (await as_(stack, "alice", "status", "x", api_url=f"http://127.0.0.1:{free_port()}"),
                        "cannot reach the API"),
    }
    for case, (result, expected) in cases.items():
        assert result.code == 1 and result.stdout == "", (case, str(result))
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (case, str(result))
    assert "replicas" in cases["bad params"][0].error_line()  # every problem, not just the first
    assert await stack.settled_runs() == []


async def _first_waiting_run(stack: ApiStack, exclude: set[str]) -> str:
    async def check() -> str | None:
        for w in await stack.runs():
            if w.id not in exclude:
                status = await stack.status(w.id)
                if status and status.step("risky").state == "waiting_approval":
                    return w.id
        return None

    return await eventually(check, timeout=60, what="a second gated run waiting")
