"""Fixtures of the reliability suite, shared by its files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.reliability.sink import sink  # noqa: F401  (the HTTP sink fixture, for every file here)
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import Stack, slack_stack

# ---- Slack: worker + front door + fake Slack Web API on the real Temporal dev server -------------


QUICK_PLAYBOOK = """
name: quick
summary: One log line, then done
params:
  n: {type: integer, default: 0}
steps:
  - id: note
    action: core.log
    with: {message: "quick {{ params.n }}"}
"""


@pytest.fixture
def make_slack_stack(dev_env: Any, fake_slack: FakeSlack, tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Stack]]:
    """`async with make_slack_stack(policy=..., playbooks=..., front_door_client=...) as stack`;
    one per test (it writes its playbooks and policy under tmp_path). Besides tests/slack's
    `hold` and `gated` it always has `quick`, one log line, for runs that finish at once."""

    def make(playbooks: dict[str, str] | None = None, **kwargs: Any) -> AbstractAsyncContextManager[Stack]:
        return slack_stack(dev_env.client, fake_slack, tmp_path, {"quick": QUICK_PLAYBOOK, **(playbooks or {})}, **kwargs)

    return make


@pytest_asyncio.fixture
async def slack(make_slack_stack: Callable[..., AbstractAsyncContextManager[Stack]]) -> AsyncIterator[Stack]:
    """The stack with tests/slack/support.py's policy (one approval from sre) and playbooks, plus `quick`."""
    async with make_slack_stack() as stack:
        yield stack


@dataclass(frozen=True)
class Footprint:
    """Everything a Slack request can leave behind: runs on the stack's task queue, audit events,
    fake Slack Web API calls and response_url answers. Equal footprints: nothing happened."""

    runs: tuple[str, ...]
    audit: tuple[str, ...]
    slack_calls: tuple[str, ...]
    answers: tuple[tuple[str, int], ...]

    def diff(self, other: Footprint) -> dict[str, Any]:
        return {
            name: {"before": getattr(self, name), "after": getattr(other, name)}
            for name in ("runs", "audit", "slack_calls", "answers")
            if getattr(self, name) != getattr(other, name)
        }


@pytest.fixture
def footprint() -> Callable[[Stack], Awaitable[Footprint]]:
    """`await footprint(stack)`: a snapshot to compare before and after requests that must do nothing."""

    async def take(stack: Stack) -> Footprint:
        runs = sorted(f"{w.id}/{w.run_id}" for w in await stack.runs(f'TaskQueue = "{stack.task_queue}"'))
        return Footprint(
            runs=tuple(runs),
            audit=tuple(e.event_id for e in stack.audit.events()),
            slack_calls=tuple(f"{c.method}:{c.params.get('user') or c.params.get('ts') or ''}" for c in stack.fake.calls),
            answers=tuple(sorted((key, len(found)) for key, found in stack.responses.items())),
        )

    return take
