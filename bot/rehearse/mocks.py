"""The rehearsal worker's action activities: every non-core action answers from the case's mocks.

Registered under the real action names, so the real `PlaybookRun` schedules them as it would in
production. Each call is checked against the action's own params model (a playbook whose
rendered arguments the real action would refuse fails here too) and recorded with its address.
`core.*` actions are the real ones (they touch nothing outside the worker), recorded likewise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from pydantic import ValidationError
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

from bot.actions.activities import describe_validation_error
from bot.actions.base import ACTION_FAILED, ActionInput, ActionResult, ActionSpec, InvalidParams
from bot.playbook.templating import display
from bot.engine.subplaybooks import CHILD_SEPARATOR
from bot.rehearse.cases import Mock, generic

def address_of(inp: ActionInput, call: str = "") -> str:
    """The rehearsal address of an activity call: the engine's step id (an item's step reads
    `roll[2].drain`), behind `call/` in a child run, behind `undo:` or `fallback:`."""
    where = f"{call}/{inp.step_id}" if call else inp.step_id
    if inp.compensation:
        return f"undo:{where}"
    if inp.idempotency_key.endswith(":fallback"):
        return f"fallback:{where}"
    return where


def root_of(run_id: str, roots: Iterable[str]) -> tuple[str, str] | None:
    """The case run a run belongs to, and the call step that started it (a child run's id is
    `<parent run id>.<call step id>`; '' for the case's own run); None for none of them."""
    for root in roots:
        if run_id == root:
            return root, ""
        if run_id.startswith(root + CHILD_SEPARATOR):
            return root, run_id[len(root) + 1:]
    return None


class MockBook:
    """The mocks of every case now running, by the case's run id (a worker serves one case at a
    time, but lock holders and child runs share it)."""

    def __init__(self) -> None:
        self.by_run: dict[str, Mapping[str, Mock]] = {}

    def locate(self, inp: ActionInput) -> tuple[str, str]:
        """(the case's run id, the call's address) for an activity call."""
        found = root_of(inp.run_id, list(self.by_run))
        root, call = found if found is not None else (inp.run_id, "")
        return root, address_of(inp, call)

    def find(self, inp: ActionInput) -> Mock | None:
        """The mock for this call's address, else the one given for every item (no `[i]`)."""
        root, address = self.locate(inp)
        mocks = self.by_run.get(root) or {}
        return mocks.get(address) or mocks.get(generic(address))


@dataclass
class Calls:
    """What each run's actions were called with, by the case's run id and address (display form:
    secrets as `${secret:NAME}`)."""

    book: MockBook
    args: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # case run id -> address -> args

    def record(self, inp: ActionInput) -> str:
        root, address = self.book.locate(inp)
        self.args.setdefault(root, {})[address] = display(inp.params)
        return address


def mock_activities(specs: Mapping[str, ActionSpec], book: MockBook, calls: Calls) -> list[Callable[..., Any]]:
    """One activity per non-core action name: checks params, then answers from the mock (or
    succeeds with an empty output)."""
    return [_mock(spec, book, calls) for name, spec in sorted(specs.items()) if not name.startswith("core.")]


def _mock(spec: ActionSpec, book: MockBook, calls: Calls) -> Callable[..., Any]:
    async def run(inp: ActionInput) -> ActionResult:
        attempt = activity.info().attempt
        calls.record(inp)
        try:
            spec.params.model_validate(inp.params)
        except ValidationError as exc:
            raise InvalidParams(describe_validation_error(spec.name, exc)) from None
        mock = book.find(inp)
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
