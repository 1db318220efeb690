"""Worker assembly: the PlaybookRun workflow plus every action and policy activity."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any, AsyncIterator, Callable, Sequence

import httpx
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from bot.actions.activities import build_activities
from bot.actions.catalog import make_providers
from bot.actions.secrets import SecretStore
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings

HEARTBEAT_THROTTLE = timedelta(seconds=1)
PASSTHROUGH = ("bot", "pydantic", "pydantic_core", "jinja2", "markupsafe", "structlog", "yaml")


def workflow_runner() -> SandboxedWorkflowRunner:
    """Pure, deterministic modules pass through the sandbox instead of being re-imported per run."""
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))


def make_worker(
    client: Client,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    **options: Any,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[PlaybookRun],
        activities=list(activities),
        workflow_runner=workflow_runner(),
        # Send heartbeats at least every second so a cancel reaches a long step in about a second.
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        **options,
    )


@asynccontextmanager
async def worker_activities(settings: Settings, extra: Sequence[Callable[..., Any]] = ()) -> AsyncIterator[list[Any]]:
    """The shipped activities with their clients, closed when the worker stops."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())
        providers = make_providers(settings, http)
        yield build_activities(providers, SecretStore(settings.secrets_file)) + list(extra)
