"""Foreach groups (format v1.1) for PlaybookRun: a mixin, so the workflow file keeps its shape.

Workflow code (deterministic): items start in index order, at most `concurrency` at once (a
counter and `workflow.wait_condition`). Each item's steps are the group's steps under item
addresses (`roll[2].drain`): copies of the Step whose id is the address, so the run's step
machinery (policy gate, approvals, retries, fallback, idempotency key `run:roll[2].drain`,
compensation) runs them unchanged. An item registers its undos in a saga of its own: a failed
item undoes its own steps at once (newest first); a succeeded (or cancelled) item hands them to
the run's saga, which undoes items newest first if the run fails later.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bot.audit.events import EventKind
    from bot.engine.shield import uncancellable
    from bot.engine.state import CompensationStatus, ForeachItem, ForeachProgress, StepStatus
    from bot.playbook.model import FAIL_ACTION, FOREACH_ACTION, ForeachGroup, Step
    from bot.playbook.outputs import RUN_OUTPUT_BUDGET
    from bot.playbook.templating import TemplateError, render

FOREACH_MAX_DEFAULT = 500  # items per group when admission said nothing (PLAYBOOK_BOT_FOREACH_MAX)
# Item steps a run may start across its foreach groups: each is a few history events, and a run's
# history must stay well inside Temporal's limits (50k events, 50 MB): 500 items x 2 no-op steps
# measured 6,009 events and 5.3 MB at concurrency 1 (bench/foreach_history.py); 3,000 item steps
# and as many undos stay near 36k events.
FOREACH_STEP_BUDGET = 3_000
# What item steps may output in one run, in JSON bytes: every render reads them all, and history
# keeps them. Past it no new item starts and the group fails (red team: 100 items of 180 KB each
# made one render take over the 2 s a workflow task may, and the run never ended).
FOREACH_OUTPUT_BUDGET = 1024 * 1024  # also keeps `status` (which carries them) far under gRPC's 4 MB
ITEM_VALUE_CHARS = 200  # how much of an item's value its status shows
HARD_STOP_STATES = frozenset({"denied", "rejected"})  # a human or the policy said no: no new items


def item_address(group_id: str, index: int, step_id: str | None = None) -> str:
    return f"{group_id}[{index}]" + (f".{step_id}" if step_id else "")


def short_value(value: Any) -> str:
    """An item as status shows it: compact JSON, cut to a bound (values come from params)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= ITEM_VALUE_CHARS else text[: ITEM_VALUE_CHARS - 1] + "…"


@dataclass
class ItemScope:
    """What an item's steps see: the group, the item's index and value, its status and undos."""

    group: ForeachGroup
    index: int
    value: Any
    item: ForeachItem
    saga: Any  # the workflow's _Saga, this item's own


@dataclass
class _Control:
    """One group's scheduling state."""

    concurrency: int
    max_failures: int | None  # None: "all"
    running: int = 0
    failed: int = 0
    stop: str | None = None  # why no new item starts
    failed_on_purpose: tuple[str, str] | None = None  # core.fail in an item: (its reason, its address)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ForeachRuns:
    """Mixed into PlaybookRun, whose state and step machinery it uses (self._status, _run_step...)."""

    _status: Any
    _saga: Any
    _outputs_kept: bool  # outputs-v1 (workflow.py): every output counts against RUN_OUTPUT_BUDGET
    _output_bytes: int

    def _foreach_setup(self) -> None:
        self._scopes: dict[str, ItemScope] = {}  # item step address -> its item
        self._addressed: dict[str, Step] = {}  # item step address -> the step under that id
        self._foreach_max = FOREACH_MAX_DEFAULT
        self._item_steps_used = 0
        self._item_output_bytes = 0
        self._item_sync_queued = False  # an item's end waits to sync Slack behind the sync in flight

    # ---- hooks the workflow calls --------------------------------------------------------

    def _saga_of(self, step_id: str) -> Any:
        """Where a starting step registers its undo: its item's saga, or the run's."""
        scope = self._scopes.get(step_id)
        return scope.saga if scope is not None else self._saga

    def _foreach_context(self, doc: dict[str, Any], owner: str | None) -> None:
        """`steps.<group>.output` is a list (one mapping of inner id -> output per item); inside an
        item, `steps.<inner>` is this item's, and the `as` name and `index` are set."""
        steps = doc["steps"]
        for st in self._status.steps:
            if st.items is not None and st.id in steps:
                steps[st.id] = {
                    "output": [{s.id.rpartition(".")[2]: s.output for s in item.steps} for item in st.items],
                    "state": st.state,
                }
        scope = self._scopes.get(owner) if owner is not None else None
        if scope is None:
            return
        for s in scope.item.steps:
            if s.state not in ("pending", "skipped"):
                steps[s.id.rpartition(".")[2]] = {"output": s.output, "state": s.state}
        doc[scope.group.as_] = scope.value
        doc["index"] = scope.index

    def _foreach_policy(self, doc: dict[str, Any], step_id: str) -> None:
        scope = self._scopes.get(step_id)
        if scope is not None:
            doc["item"], doc["index"] = scope.value, scope.index

    def _foreach_audit(self, step_id: str | None, details: dict[str, Any]) -> dict[str, Any]:
        scope = self._scopes.get(step_id) if step_id else None
        return {**details, "index": scope.index} if scope is not None else details

    def _settled_ids(self, step: Step) -> tuple[set[str], list[Any]]:
        """What `settles:` names, as step ids (item addresses), and the sagas that may hold them."""
        target = step.settles
        assert target is not None
        scope = self._scopes.get(step.id)
        if scope is not None and target in {s.id for s in scope.group.steps}:
            return {item_address(scope.group.id, scope.index, target)}, [scope.saga]
        sagas = [scope.saga, self._saga] if scope is not None else [self._saga]
        group = next((st for st in self._status.steps if st.id == target and st.items is not None), None)
        if group is not None:
            return {s.id for item in group.items for s in item.steps}, sagas
        return {target}, sagas

    # ---- the group -----------------------------------------------------------------------

    async def _run_foreach(self, group: ForeachGroup) -> bool:
        """Every item (as many as `concurrency` at once); False when the group failed."""
        status = self._status
        st: StepStatus = status.step(group.id)
        if group.when is not None and not self._when(group.when, group.id, [group.id]):  # type: ignore[attr-defined]
            return st.state != "failed"
        st.started_at = workflow.now()
        values = self._foreach_values(group, st)
        if values is None:
            return False
        st.items = [
            ForeachItem(
                index=i,
                value=short_value(value),
                steps=[
                    StepStatus(id=item_address(group.id, i, s.id), action=s.action, group=item_address(group.id, i),
                               impact=s.impact, irreversible=s.irreversible)
                    for s in group.steps
                ],
            )
            for i, value in enumerate(values)
        ]
        st.progress = ForeachProgress(total=len(values))
        st.state = "running"
        self._log("foreach started", step_id=group.id, items=len(values))  # type: ignore[attr-defined]
        self._record(group.id, EventKind.step_started, {  # type: ignore[attr-defined]
            "action": FOREACH_ACTION, "items": len(values), "concurrency": group.concurrency,
            "max_failures": group.max_failures,
        })
        before = (status.error, status.failed_step)
        ctl = _Control(group.concurrency, None if group.max_failures == "all" else group.max_failures)
        try:
            for i, value in enumerate(values):
                await workflow.wait_condition(lambda: ctl.running < ctl.concurrency or ctl.stop is not None)
                if ctl.stop is not None:
                    break
                if self._cancels_pending:  # type: ignore[attr-defined]  # a cancel being decided wins
                    await workflow.wait_condition(lambda: self._cancels_pending == 0)  # type: ignore[attr-defined]
                if self._cancel_requested():  # type: ignore[attr-defined]
                    raise asyncio.CancelledError()
                ctl.running += 1
                ctl.tasks.append(asyncio.ensure_future(self._run_item(group, i, value, ctl)))
            await asyncio.gather(*ctl.tasks)
        except asyncio.CancelledError:
            for task in ctl.tasks:
                task.cancel()
            await asyncio.gather(*ctl.tasks, return_exceptions=True)
            self._foreach_end(st, "cancelled")
            status.error, status.failed_step = before
            raise
        return self._foreach_outcome(group, st, ctl, before)

    def _foreach_values(self, group: ForeachGroup, st: StepStatus) -> list[Any] | None:
        """The items, rendered and bounded; None (the group failed, saying why) when they cannot be."""
        fail = self._fail  # type: ignore[attr-defined]
        if isinstance(group.foreach, list):
            values: Any = group.foreach
        else:
            try:
                values = render(group.foreach, self._context())  # type: ignore[attr-defined]
            except TemplateError as exc:
                return fail(st, f"foreach: cannot render the items: {exc}") or None
        if not isinstance(values, list):
            return fail(st, f"foreach: {group.foreach!r} gives a {type(values).__name__}, not a list") or None
        if len(values) > self._foreach_max:
            return fail(st, f"foreach: {len(values)} items, more than the {self._foreach_max} a foreach group may "
                        "have (PLAYBOOK_BOT_FOREACH_MAX): split the list or raise the limit") or None
        needed = len(values) * len(group.steps)
        if self._item_steps_used + needed > FOREACH_STEP_BUDGET:
            return fail(st, f"foreach: {len(values)} items × {len(group.steps)} steps would take this run past "
                        f"{FOREACH_STEP_BUDGET} item steps, which keeps its history inside Temporal's limits: "
                        "fewer items or steps per run") or None
        self._item_steps_used += needed
        return values

    async def _run_item(self, group: ForeachGroup, index: int, value: Any, ctl: _Control) -> None:
        st: StepStatus = self._status.step(group.id)
        assert st.items is not None and st.progress is not None
        item = st.items[index]
        scope = ItemScope(group, index, value, item, type(self._saga)())
        for step in group.steps:
            address = item_address(group.id, index, step.id)
            self._scopes[address] = scope
            self._addressed[address] = step.model_copy(update={"id": address})
        item.state = "running"
        st.progress.running += 1
        outcome = "succeeded"
        try:
            try:
                for step in group.steps:
                    address = item_address(group.id, index, step.id)
                    if not await self._run_step(self._addressed[address]):  # type: ignore[attr-defined]
                        outcome = "failed"
                        break
                    self._item_output_bytes += _json_size(self._status.step(address).output)
                    if self._item_output_bytes > FOREACH_OUTPUT_BUDGET and ctl.stop is None:
                        ctl.stop = (f"item steps output more than {FOREACH_OUTPUT_BUDGET // (1024 * 1024)} MiB in this run "
                                    "(every template reads them and the run's history keeps them): have the steps "
                                    "return less (parse: json only what is needed) or split the list")
                    if self._outputs_kept and self._output_bytes > RUN_OUTPUT_BUDGET and ctl.stop is None:
                        ctl.stop = (f"the outputs this run keeps in its state passed their budget of "
                                    f"{RUN_OUTPUT_BUDGET // (1024 * 1024)} MiB (its steps and items together): have the "
                                    "steps return less, or read fewer fields of large outputs")
                    if self._cancel_requested():  # type: ignore[attr-defined]  # a cancel swallowed with a success
                        raise asyncio.CancelledError()
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                if outcome != "failed":
                    self._saga.entries.extend(scope.saga.entries)  # the run's saga undoes it if the run fails
                    scope.saga.entries = []
            if outcome == "failed":
                failed = next((s for s in item.steps if s.state not in ("pending", "succeeded", "skipped",
                                                                         "failed_ignored")), None)
                item.error = f"{failed.id}: {failed.error}" if failed is not None else "failed"
                hard = failed is not None and failed.state in HARD_STOP_STATES
                # Counted before the item undoes itself: no new item may start while it does.
                ctl.failed += 1
                if failed is not None and failed.action == FAIL_ACTION and ctl.failed_on_purpose is None:
                    ctl.failed_on_purpose = (failed.error or FAIL_ACTION, failed.id)
                    ctl.stop = ctl.stop or f"{failed.id} failed the run on purpose"
                elif hard and ctl.stop is None:
                    ctl.stop = f"{failed.id} was {failed.state}"
                elif ctl.max_failures is not None and ctl.failed > ctl.max_failures and ctl.stop is None:
                    ctl.stop = f"{ctl.failed} items failed, more than max_failures ({ctl.max_failures})"
                undone = await uncancellable(self._undo_item(scope))
                if not undone and ctl.stop is None:
                    ctl.stop = f"item {index} could not be undone"
        finally:
            item.state = outcome  # type: ignore[assignment]
            ctl.running -= 1
            st.progress.running -= 1
            if outcome == "succeeded":
                st.progress.done += 1
            elif outcome == "failed":
                st.progress.failed += 1
        await self._item_ended()

    async def _item_ended(self) -> None:
        """Slack follows the items, coalesced: an item that ends while a sync is in flight queues one
        sync behind it, which shows every item ended by then; items ending while one is queued add
        none. One sync per item in a row made 100 items at concurrency 10 take 2.3x the same steps
        as parallel groups (bench/foreach.md). A run without a channel makes no call and no wait."""
        if not self._channel or self._item_sync_queued:  # type: ignore[attr-defined]
            return
        self._item_sync_queued = True
        try:
            await workflow.wait_condition(lambda: not self._slack_lock.locked())  # type: ignore[attr-defined]
        finally:
            self._item_sync_queued = False
        await self._notify()  # type: ignore[attr-defined]

    async def _undo_item(self, scope: ItemScope) -> bool:
        """A failed item undoes its own steps, newest first; False when one could not be undone."""
        entries = list(reversed(scope.saga.entries))
        scope.saga.entries = []
        records = [CompensationStatus(step=s.id, action=c.action) for s, c in entries]
        self._status.compensations = [*self._status.compensations, *records]
        for (step, comp), record in zip(entries, records):
            await self._undo(step, comp, record)  # type: ignore[attr-defined]
        return all(record.state != "failed" for record in records)

    def _foreach_outcome(self, group: ForeachGroup, st: StepStatus, ctl: _Control,
                         before: tuple[str | None, str | None]) -> bool:
        progress = st.progress
        assert progress is not None
        self._foreach_end(st, None)
        every = progress.total > 0 and progress.failed == progress.total
        failed = ctl.stop is not None or (ctl.max_failures is None and every)
        status = self._status
        status.error, status.failed_step = before  # a tolerated item failure does not end the run
        if not failed:
            st.state, st.finished_at = "succeeded", workflow.now()
            st.error = f"{progress.failed} of {progress.total} items failed (tolerated)" if progress.failed else None
            self._log("foreach succeeded", step_id=group.id, progress=progress.text())  # type: ignore[attr-defined]
            self._record(group.id, EventKind.step_succeeded,  # type: ignore[attr-defined]
                         {"action": FOREACH_ACTION, "progress": progress.model_dump()})
            return True
        first = next((item.error for item in st.items or () if item.state == "failed"), None)
        why = ctl.stop or "every item failed"
        self._fail(st, f"{why} ({progress.text()})" + (f"; first: {first}" if first else ""))  # type: ignore[attr-defined]
        if ctl.failed_on_purpose is not None:  # core.fail ends the run with its reason, as outside a foreach
            status.error, status.failed_step = ctl.failed_on_purpose
        return False

    def _foreach_end(self, st: StepStatus, state: str | None) -> None:
        """Items never started read skipped; a cancelled group reads cancelled."""
        now = workflow.now()
        for item in st.items or ():
            if item.state == "pending":
                item.state = "skipped"
                for s in item.steps:
                    s.state, s.started_at, s.finished_at = "skipped", now, now
                if st.progress is not None:
                    st.progress.skipped += 1
        if state == "cancelled":
            self._cancelled(st)  # type: ignore[attr-defined]


def _json_size(value: Any) -> int:
    """An output's size as history stores it (JSON); deterministic, so replays agree."""
    return 0 if value is None else len(json.dumps(value, separators=(",", ":"), default=str))
