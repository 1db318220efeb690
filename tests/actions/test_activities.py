"""The activity wrapper's audit order: a step that may act unrecorded does not wait for the store
before acting; one that must be recorded first (high impact) still does."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from bot.actions.activities import build_activities
from bot.actions.base import ActionContext, ActionInput, ActionParams, action
from bot.actions.secrets import SecretStore
from bot.audit.recorder import AuditWriter
from bot.audit.store import SqliteAuditStore


class NoParams(ActionParams):
    pass


class Target:
    """An action that says when it acts (the request reaching a target, in a real playbook)."""

    def __init__(self) -> None:
        self.acted = asyncio.Event()

    @action("test.touch_target", NoParams)
    async def touch(self, params: NoParams, ctx: ActionContext) -> dict[str, Any]:
        self.acted.set()
        return {"touched": ctx.step_id}


def _input(mode: str) -> ActionInput:
    return ActionInput(run_id="run-1", step_id="first", playbook="p", action="test.touch_target",
                       idempotency_key="run-1:first", audit_mode=mode)


@pytest.fixture
def held(tmp_path: Path):
    """A store whose write lock another connection holds (a stuck writer), for up to 30 s a write."""
    path = tmp_path / "audit.db"
    with SqliteAuditStore(path) as store:
        store.events()  # the file and its schema exist
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield path, holder
    holder.close()


async def test_a_step_allowed_to_act_unrecorded_acts_while_its_record_waits_for_the_store(held) -> None:
    path, holder = held
    target = Target()
    with SqliteAuditStore(path, timeout=30) as store:
        (run,) = build_activities([target], SecretStore(environ={}), AuditWriter(store))
        running = asyncio.ensure_future(ActivityEnvironment().run(run, _input("try")))
        # Before issue 17 it wrote first, so it acted only after the store's 30 s busy timeout.
        await asyncio.wait_for(target.acted.wait(), 15)
        assert not running.done(), "the result waits for the record"
        holder.execute("ROLLBACK")  # the store is back
        result = await asyncio.wait_for(running, 30)
        assert result.unrecorded is None and result.output == {"touched": "first"}
        assert [e.kind.value for e in store.events(run_id="run-1")] == ["step_started"]


async def test_a_step_that_must_be_recorded_first_does_not_act_before_the_store_takes_it(held) -> None:
    path, holder = held
    target = Target()
    with SqliteAuditStore(path, timeout=30) as store:
        (run,) = build_activities([target], SecretStore(environ={}), AuditWriter(store))
        running = asyncio.ensure_future(ActivityEnvironment().run(run, _input("write")))
        await asyncio.sleep(1.0)
        assert not target.acted.is_set(), "a high-impact step acted before its record was written"
        holder.execute("ROLLBACK")
        await asyncio.wait_for(running, 30)
        assert target.acted.is_set()
        assert [e.kind.value for e in store.events(run_id="run-1")] == ["step_started"]
