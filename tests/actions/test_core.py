from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta

import pytest
import structlog
from structlog.testing import capture_logs
from temporalio.testing import ActivityEnvironment

from bot.actions import activities
from bot.actions.base import INVALID_PARAMS
from bot.actions.core import CoreActions
from bot.actions.secrets import MASK, SecretStore
from tests.secret_refs import ref

CORE = [CoreActions()]


async def test_log_writes_message_with_run_context_and_returns_it(run_action) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        result = await run_action("core.log", {"message": "restarting api", "level": "warning"}, CORE)

    assert result.output == {"message": "restarting api"}
    assert result.attempt == 1
    [line] = [entry for entry in logs if entry["event"] == "restarting api"]
    assert line["log_level"] == "warning"
    assert line["run_id"] == "run-42" and line["step_id"] == "restart" and line["action"] == "core.log"


async def test_log_defaults_to_info(run_action) -> None:
    with capture_logs() as logs:
        await run_action("core.log", {"message": "hello"}, CORE)
    assert [e["log_level"] for e in logs if e["event"] == "hello"] == ["info"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"message": "x", "level": "debug"}, "level"),
        ({}, "message"),
        ({"message": "x", "colour": "red"}, "colour"),
    ],
)
async def test_log_bad_params(params: dict, field: str, run_failing) -> None:
    error = await run_failing("core.log", params, CORE)
    assert error.type == INVALID_PARAMS and error.non_retryable
    assert error.message.startswith("core.log: bad params:")
    assert field in error.message


async def test_sleep_sleeps_and_reports_duration_while_heartbeating(run_action, monkeypatch) -> None:
    monkeypatch.setattr(activities, "HEARTBEAT_EVERY", 0.03)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=10))
    beats: list[tuple] = []
    env.on_heartbeat = lambda *details: beats.append(details)

    started = time.monotonic()
    result = await run_action("core.sleep", {"duration": "150ms"}, CORE, env=env)

    assert time.monotonic() - started >= 0.15
    assert result.output == {"slept": "150ms"}
    assert len(beats) >= 2, "the wrapper heartbeats while the action runs"


async def test_sleep_is_cancellable(run_action) -> None:
    env = ActivityEnvironment()
    task = asyncio.create_task(run_action("core.sleep", {"duration": "30s"}, CORE, env=env))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("duration", ["5", 5, "soon", "-1s", None])
async def test_sleep_bad_duration(duration: object, run_failing) -> None:
    error = await run_failing("core.sleep", {"duration": duration}, CORE)
    assert error.type == INVALID_PARAMS and error.non_retryable
    assert "duration" in error.message


async def test_log_never_writes_a_secret(run_action) -> None:
    secrets = SecretStore(environ={"PLAYBOOK_BOT_SECRET_TOKEN": "tok-123"})
    with capture_logs() as logs:
        result = await run_action("core.log", {"message": f"token is {ref('TOKEN')}"}, CORE, secrets=secrets)
    assert result.output == {"message": f"token is {MASK}"}
    assert "tok-123" not in repr(logs)


async def test_core_fail_run_as_an_activity_fails_with_its_reason(run_failing) -> None:
    """The workflow ends the run itself on core.fail; called directly, the action fails the same way."""
    error = await run_failing("core.fail", {"reason": "no healthy replica"}, CORE)
    assert error.message == "no healthy replica" and error.non_retryable
