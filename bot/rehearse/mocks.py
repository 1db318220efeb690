"""The rehearsal worker's action activities: every non-core action answers from the case's mocks.

Registered under the real action names, so the real `PlaybookRun` schedules them as it would in
production. Each call is checked against the action's own params model (a playbook whose
rendered arguments the real action would refuse fails here too) and recorded with its address.
`core.*` actions are the real ones (they touch nothing outside the worker), recorded likewise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pydantic import ValidationError
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

from bot.actions.activities import describe_validation_error
from bot.actions.base import ACTION_FAILED, ActionInput, ActionResult, ActionSpec, InvalidParams
from bot.playbook.templating import display
from bot.rehearse.cases import Mock

_ITEM = re.compile(r"\[\d+\]")


def address_of(inp: ActionInput) -> str:
    """The rehearsal address of an activity call. TODO(foreach): items' step ids are whatever the
    foreach helper sends (e.g. `roll[2]/drain`); matching below strips `[i]` for per-item-less mocks."""
    if inp.compensation:
        return f"undo:{inp.step_id}"
    if inp.idempotency_key.endswith(":fallback"):
        return f"fallback:{inp.step_id}"
    return inp.step_id


@dataclass
class Calls:
    """What each run's actions were called with, by address (display form: secrets as `${secret:NAME}`)."""

    args: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # run id -> address -> args
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)

    def record(self, inp: ActionInput) -> str:
        address = address_of(inp)
        self.args.setdefault(inp.run_id, {})[address] = display(inp.params)
        return address


class MockBook:
    """The mocks of every case now running, by run id (a worker serves one case at a time, but
    lock holders and child runs share it)."""

    def __init__(self) -> None:
        self.by_run: dict[str, Mapping[str, Mock]] = {}

    def find(self, run_id: str, address: str) -> Mock | None:
        mocks = self.by_run.get(run_id) or {}
        return mocks.get(address) or mocks.get(_ITEM.sub("", address))


def mock_activities(specs: Mapping[str, ActionSpec], book: MockBook, calls: Calls) -> list[Callable[..., Any]]:
    """One activity per non-core action name: checks params, then answers from the mock (or
    succeeds with an empty output)."""
    return [_mock(spec, book, calls) for name, spec in sorted(specs.items()) if not name.startswith("core.")]


def _mock(spec: ActionSpec, book: MockBook, calls: Calls) -> Callable[..., Any]:
    async def run(inp: ActionInput) -> ActionResult:
        attempt = activity.info().attempt
        address = calls.record(inp)
        try:
            spec.params.model_validate(inp.params)
        except ValidationError as exc:
            raise InvalidParams(describe_validation_error(spec.name, exc)) from None
        mock = book.find(inp.run_id, address)
        if mock is not None and mock.fail is not None and (mock.attempts is None or attempt <= mock.attempts):
            raise ApplicationError(mock.fail, {"attempt": attempt}, type=ACTION_FAILED, non_retryable=False)
        output = dict(mock.output or {}) if mock is not None else {}
        return ActionResult(output=output, attempt=attempt)

    run.__name__ = run.__qualname__ = "mock_" + spec.name.replace(".", "_")
    return activity.defn(name=spec.name)(run)


def traced(real: Callable[..., Any], calls: Calls) -> Callable[..., Any]:
    """A real (core.*) activity that also records its call."""
    name = real.__temporal_activity_definition.name  # type: ignore[attr-defined]

    async def run(inp: ActionInput) -> ActionResult:
        calls.record(inp)
        result: ActionResult = await real(inp)
        return result

    run.__name__ = run.__qualname__ = "traced_" + name.replace(".", "_")
    return activity.defn(name=name)(run)


# ---- a run that holds a lock key (`locks: {held: [key]}`) ---------------------------------------


@workflow.defn(name="RehearsalLockHolder", sandboxed=False)
class LockHolder:
    """Stands for another run holding a key: the lock grants it a slot; it waits until released."""

    def __init__(self) -> None:
        self.granted = False
        self.done = False

    @workflow.signal(name="lock_notice")
    def notice(self, notice: dict[str, Any]) -> None:
        if notice.get("outcome") == "granted":
            self.granted = True

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def holding(self) -> bool:
        return self.granted

    @workflow.run
    async def run(self, key: str) -> None:
        await workflow.wait_condition(lambda: self.done)
