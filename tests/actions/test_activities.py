"""The activity wrapper's audit order: a step that may act unrecorded does not wait for the store
before acting; one that must be recorded first (high impact) still does. And the outputs it hands
back: none nested deeper than a run can read."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bot.actions.activities import OUTPUT_MAX_DEPTH, OUTPUT_TOO_DEEP, build_activities
from bot.actions.base import ACTION_FAILED, ActionContext, ActionFailed, ActionInput, ActionParams, action
from bot.actions.secrets import SecretStore
from bot.audit.recorder import AuditWriter
from bot.audit.store import SqliteAuditStore
from bot.playbook.data import value_depth


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


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class Deep:
    """Actions whose target answers with data nested as deep as it likes."""

    @action("test.deep_output", NoParams)
    async def deep(self, params: NoParams, ctx: ActionContext) -> dict[str, Any]:
        return {"json": _nested(OUTPUT_MAX_DEPTH)}

    @action("test.deep_failure", NoParams)
    async def deep_failure(self, params: NoParams, ctx: ActionContext) -> dict[str, Any]:
        raise ActionFailed("the target said no", output={"json": _nested(OUTPUT_MAX_DEPTH)})

    @action("test.flat_output", NoParams)
    async def flat(self, params: NoParams, ctx: ActionContext) -> dict[str, Any]:
        return {"json": _nested(OUTPUT_MAX_DEPTH - 1)}


async def test_an_output_nested_past_the_bound_fails_the_step_and_a_failures_output_is_left_out() -> None:
    """Red-team finding: a result nested past the workflow's decoder (200 levels) left its run
    stuck, its task failing for ever. The wrapper fails such a step instead (not retried: the same
    target answers the same), and leaves such an output out of a failure's details."""
    by_name = {fn.__name__: fn for fn in build_activities([Deep()], SecretStore(environ={}))}

    def arg(name: str) -> ActionInput:
        return ActionInput(run_id="run-1", step_id="probe", playbook="p", action=name, idempotency_key="run-1:probe")

    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(by_name["test_deep_output"], arg("test.deep_output"))
    assert caught.value.type == OUTPUT_TOO_DEEP and caught.value.non_retryable
    assert f"more than {OUTPUT_MAX_DEPTH} levels deep" in caught.value.message

    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(by_name["test_deep_failure"], arg("test.deep_failure"))
    assert caught.value.type == ACTION_FAILED and caught.value.message == "the target said no"
    assert "left_out" in caught.value.details[0]["output"]

    result = await ActivityEnvironment().run(by_name["test_flat_output"], arg("test.flat_output"))
    assert value_depth(result.output, 200) == OUTPUT_MAX_DEPTH  # (the output's own level, then its nesting)


class Surrogates:
    """A target whose JSON escapes a lone surrogate (`"\\ud800"`), in a key and in a value."""

    @action("test.surrogate_output", NoParams)
    async def answer(self, params: NoParams, ctx: ActionContext) -> dict[str, Any]:
        return {"json": {"k\ud800": "v\udfff"}}

    @action("test.surrogate_failure", NoParams)
    async def refuse(self, params: NoParams, ctx: ActionContext) -> dict[str, Any]:
        raise ActionFailed("the target said no", output={"json": ["\ud800"]})


async def test_an_output_holding_a_lone_surrogate_reaches_the_run_as_a_replacement() -> None:
    """Found in stop 48's review: Temporal's converter cannot send a lone surrogate, so such a result
    was a failed attempt, and the step's action acted again on each retry."""
    by_name = {fn.__name__: fn for fn in build_activities([Surrogates()], SecretStore(environ={}))}

    def arg(name: str) -> ActionInput:
        return ActionInput(run_id="run-1", step_id="probe", playbook="p", action=name, idempotency_key="run-1:probe")

    result = await ActivityEnvironment().run(by_name["test_surrogate_output"], arg("test.surrogate_output"))
    assert result.output == {"json": {"k\ufffd": "v\ufffd"}}
    pydantic_data_converter.payload_converter.to_payloads([result])  # what the worker sends back: no error
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(by_name["test_surrogate_failure"], arg("test.surrogate_failure"))
    assert caught.value.details[0]["output"] == {"json": ["\ufffd"]}
