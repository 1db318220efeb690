"""Sub-playbooks (format v1.1 `playbook.run`), the workflow side: PlaybookRun mixes this in.

A `playbook.run` step starts the named playbook (the worker's own catalog snapshot) as a child
PlaybookRun: its own run id, saga, policy gates, approvals and audit trail. How the parent later
rolls it back "as one unit" decides the shape:

- A closed workflow takes no more signals or updates, and only the child knows how to undo its
  own steps (their outputs, its params, its secrets, its settled steps). So a child whose steps
  completed does not close: it reads `completed`, `held_by` its parent, and waits for the
  parent's word. The parent says `release` when it ends well, or `compensate` when its saga
  reaches the call step (after the parent's later steps, before its earlier ones); the child then
  runs its own saga and ends `compensated`. Both are workflows, so the wait is durable, and the
  parent awaits the child's end either way (a parent never closes with a held child).
- A child that fails, or is cancelled, undoes its own steps and ends; the call step fails.
- Words travel as data in the sender's `status` (ChildCall.verdict, `held_by`): a `poke` signal
  only wakes the other run, which reads that status with the `run.peek` activity. A client that
  can reach Temporal can poke, but cannot make a run's status say what it does not.
- Trust: the child's admission believes `parent` only when Temporal records that parent as the
  workflow that started it (`workflow.info().parent`), which no client can set; the child's
  requester is then the parent's, as the parent's admission verified it, and the child's own
  `start` rule, catalog and params checks still run.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, CancelledError, ChildWorkflowError, FailureError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from bot.actions.activities import OUTPUT_MAX_DEPTH, describe_validation_error
    from bot.actions.playbooks import RUN_ACTION, RunPlaybookParams
    from bot.audit.events import EventKind
    from bot.engine.admission import CHILD_DEPTH_MAX
    from bot.engine.children import Peek, PeekRequest, Snapshot, SnapshotRequest
    from bot.engine import results
    from bot.engine.shield import uncancellable
    from bot.engine.state import (
        ChildCall,
        CompensationStatus,
        ParentLink,
        Poke,
        Requester,
        RunInput,
        RunStatus,
        StepStatus,
        TriggerContext,
    )
    from bot.playbook.data import value_depth
    from bot.playbook.model import Compensation, Step

if TYPE_CHECKING:
    from bot.engine.workflow import PlaybookRun as _Run

POKE_SIGNAL = "poke"
SNAPSHOT_TIMEOUT = timedelta(seconds=30)
PEEK_TIMEOUT = timedelta(seconds=30)
HOLD_CHECK = timedelta(minutes=10)  # a held child looks at its parent this often even without a poke
CHILD_SEPARATOR = "."  # a child's run id: <parent run id>.<call step id>


# How deep a child's step output may nest in its call step's report: its own outputs nest at most
# OUTPUT_MAX_DEPTH, and each sub-playbook level below wraps its report in three more. A child's
# status a client made up (a forged `run.peek`, red team) decodes up to pydantic's 200 levels, but two
# levels deeper in this run's status it no longer did: no peek of this run, no read of its status
# or its end, ever again, and the tree never ended.
REPORT_MAX_DEPTH = OUTPUT_MAX_DEPTH + 3 * CHILD_DEPTH_MAX + 3


def child_report(status: RunStatus) -> dict[str, Any]:
    """The call step's output: `{state, steps: {<id>: {output, state}}}` (DESIGN v1.1)."""
    return {"state": status.state, "steps": {s.id: {"output": _reported(s.output), "state": s.state}
                                             for s in status.steps}}


def _reported(output: Any) -> Any:
    if value_depth(output, REPORT_MAX_DEPTH) <= REPORT_MAX_DEPTH:
        return output
    return {"left_out": f"this output nests more than {REPORT_MAX_DEPTH} levels deep, more than any child's own"}


class SubPlaybooks:
    """Parent and child halves of `playbook.run`; every method is workflow code."""

    def _init_subplaybooks(self: _Run) -> None:
        self._parent: ParentLink | None = None  # set once admission believed the input's parent
        self._pokes: dict[str, int] = {}  # pokes received, per peer run (the claimed parent, each child)
        self._pokes_seen = 0  # the parent's pokes this child has acted on
        self._child_ends: dict[str, asyncio.Future[RunStatus | None]] = {}  # child run id -> its end
        self._child_handles: dict[str, Any] = {}
        if self._input.parent is not None:
            self._pokes[self._input.parent.run_id] = 0

    def _poked(self: _Run, poke: Poke) -> None:
        """Count a poke from a peer; any other sender is ignored (nothing it says grows this run)."""
        if poke.run_id in self._pokes:
            self._pokes[poke.run_id] += 1

    async def _poke(self: _Run, run_id: str) -> None:
        try:
            await workflow.get_external_workflow_handle(run_id).signal(POKE_SIGNAL, Poke(run_id=self._status.run_id))
        except FailureError:
            self._log("peer run not reachable", peer=run_id)  # it has ended: its end says the rest

    async def _peek(self: _Run, run_id: str) -> Peek:
        return await self._until_answered(lambda: results.execute(  # type: ignore[attr-defined]
            "run.peek",
            PeekRequest(run_id=run_id),
            Peek,
            start_to_close_timeout=PEEK_TIMEOUT,
            retry_policy=TemporalRetryPolicy(maximum_interval=timedelta(seconds=30)),  # until a worker answers
            summary=f"peek {run_id[:60]}",
        ), "run.peek")

    def _root_run_id(self: _Run) -> str | None:
        """The root of this run's tree: a child run may take a lock its root holds."""
        return self._parent.root_run_id if self._parent is not None else None

    # ---- parent: the call step ------------------------------------------------------------

    async def _call_child(self: _Run, step: Step, st: StepStatus) -> bool:
        """Start the child, wait for it to hold (succeeded) or end (failed); never retried."""
        try:
            call = RunPlaybookParams.model_validate(st.args or {})
        except ValidationError as exc:
            return await self._step_failed(step, st, describe_validation_error(RUN_ACTION, exc))
        depth = self._parent.depth + 1 if self._parent is not None else 1
        if depth > CHILD_DEPTH_MAX:
            return await self._step_failed(step, st, f"sub-playbooks nest {depth} deep; at most {CHILD_DEPTH_MAX}")
        try:
            snapshot: Snapshot = await self._local_activity(  # type: ignore[attr-defined]
                "playbook.snapshot", SnapshotRequest(name=call.name, pinned=self._children.get(call.name)),
                result_type=Snapshot,
                start_to_close_timeout=SNAPSHOT_TIMEOUT, retry_policy=TemporalRetryPolicy(maximum_attempts=3),
            )
        except ActivityError as exc:
            if isinstance(exc.cause, CancelledError):
                self._cancelled(st)
                raise asyncio.CancelledError() from exc
            return await self._step_failed(step, st, f"cannot read playbook {call.name!r}: {exc.cause or exc}")
        if snapshot.playbook is None:
            return await self._step_failed(step, st, snapshot.error or f"unknown playbook {call.name!r}")
        child_id = f"{self._status.run_id}{CHILD_SEPARATOR}{step.id}"
        record = ChildCall(step=step.id, run_id=child_id, playbook=call.name)
        self._status.children.append(record)
        self._pokes[child_id] = 0
        # Registered as it starts (DESIGN: an undo is registered when its step starts).
        self._saga_of(step.id).entries.append((step, Compensation(action=RUN_ACTION)))  # an item undoes its own child
        requester = self._status.requester or Requester(principal=self._status.requested_by, person=self._status.requested_by)
        trigger = self._input.trigger
        child_input = RunInput(
            playbook=snapshot.playbook,
            playbook_hash=snapshot.playbook_hash,
            params=call.params,
            trigger=TriggerContext(kind="playbook", requested_by=self._status.requested_by, alert=trigger.alert,
                                   slack=trigger.slack),
            parent=ParentLink(run_id=self._status.run_id, step_id=step.id, depth=depth, requester=requester,
                              root_run_id=self._root_run_id() or self._status.run_id, pins=self._children),
        )
        self._acting()  # type: ignore[attr-defined]
        try:
            handle = await self._sent(child_input, lambda: workflow.start_child_workflow(  # type: ignore[attr-defined]
                "PlaybookRun", child_input, id=child_id, task_queue=workflow.info().task_queue, result_type=RunStatus,
                parent_close_policy=workflow.ParentClosePolicy.TERMINATE,  # a parent always ends its children first
                static_summary=f"{call.name} for {step.id}",
            ))
        except (WorkflowAlreadyStartedError, ChildWorkflowError) as exc:
            record.state = "failed"
            return await self._step_failed(step, st, f"child run {child_id} could not start: {exc}")
        except asyncio.CancelledError:
            self._cancelled(st)
            raise
        self._child_handles[child_id] = handle
        ended = self._child_ends[child_id] = asyncio.ensure_future(self._child_end(handle))
        self._log("child run started", step_id=step.id, child=child_id, playbook=call.name)
        try:
            held = await self._await_child(record, ended, call.timeout)
        except asyncio.CancelledError:
            record.verdict = "cancel"  # the child stops and undoes itself; the parent waits for that
            await uncancellable(self._stop_child(record, ended))
            self._cancelled(st)
            raise
        if held is not None:
            return self._child_held(step, st, record, held)
        final = ended.result() if ended.done() else None
        if final is None and not ended.done():  # timed out: stop it, it undoes itself
            record.verdict = "cancel"
            final = await uncancellable(self._stop_child(record, ended))
            message = f"child run {child_id} ({call.name}) did not finish within {call.timeout}: cancelled"
        else:
            message = f"child run {child_id} ({call.name}) ended {final.state if final else 'outside playbook-bot'}"
        if final is not None:
            record.state = final.state
            st.output = child_report(final)
            if final.error:
                message += f": {final.error}"
        else:
            record.state = "failed"
        if final is not None and final.state == "completed":  # it ended well without holding: nothing to undo
            return self._child_held(step, st, record, final)
        return await self._step_failed(step, st, message)

    async def _await_child(
        self: _Run, record: ChildCall, ended: asyncio.Future[RunStatus | None], timeout: timedelta | None
    ) -> RunStatus | None:
        """The child's status once it holds for this run; None once it ended, or the timeout passed."""
        child_id = record.run_id
        deadline: datetime | None = workflow.now() + timeout if timeout is not None else None
        seen = 0
        while True:
            left = (deadline - workflow.now()) if deadline is not None else None
            if left is not None and left <= timedelta(0):
                return None
            try:
                await workflow.wait_condition(lambda: ended.done() or self._pokes[child_id] > seen, timeout=left)
            except asyncio.TimeoutError:
                return None
            if ended.done():
                return None
            seen = self._pokes[child_id]
            peek = await self._peek(child_id)
            child = peek.status
            if child is not None and child.held_by == self._status.run_id and child.parent_run == self._status.run_id:
                return child

    def _child_held(self: _Run, step: Step, st: StepStatus, record: ChildCall, child: RunStatus) -> bool:
        record.state = "held" if child.held_by else child.state
        st.output, st.attempts = child_report(child), 1
        st.state, st.finished_at = "succeeded", workflow.now()
        self._log("step succeeded", step_id=step.id, child=record.run_id)
        self._record(step.id, EventKind.step_succeeded, {"action": step.action, "attempts": 1, "child_run": record.run_id})
        if step.settles is not None:
            self._settle(step)
        self._succeeded_irreversible(step)
        return True

    async def _child_end(self: _Run, handle: Any) -> RunStatus | None:
        try:
            return await handle
        except ChildWorkflowError:
            return None  # terminated or failed in Temporal itself: it says nothing more

    async def _stop_child(self: _Run, record: ChildCall, ended: asyncio.Future[RunStatus | None]) -> RunStatus | None:
        """Tell the child the parent's word (already in `record.verdict`) and wait for its end."""
        if not ended.done():
            await self._poke(record.run_id)
        final = await ended
        record.state = final.state if final is not None else "failed"
        return final

    async def _undo_child(self: _Run, step: Step, comp: Compensation, record: CompensationStatus) -> None:
        """The parent's saga reached the call step: the child undoes its own steps, as one unit."""
        st = self._status.step(step.id)
        call = next(c for c in self._status.children if c.step == step.id)
        ended = self._child_ends.get(call.run_id)
        record.started_at = workflow.now()
        if ended is None:
            record.state, record.error, record.finished_at = "skipped", "the child run never started", workflow.now()
            return
        if ended.done():
            final = ended.result()
            if final is not None and final.state in ("compensated", "cancelled"):
                record.state, record.finished_at = "skipped", workflow.now()
                record.error = f"child run {call.run_id} undid itself ({final.state})"
                return
        else:
            self._log("compensation started", step_id=step.id, action=comp.action, child=call.run_id)
            st.state, record.state = "compensating", "running"
            self._traced(f"undo:{step.id}")  # rehearsals' order: the child's own undos follow
            call.verdict = "compensate"
            await self._notify()
            final = await self._stop_child(call, ended)
        if final is not None and final.state in ("compensated", "cancelled"):
            record.state, record.attempts, st.state = "succeeded", 1, "compensated"
            self._record(step.id, EventKind.compensation_succeeded, {"action": comp.action, "child_run": call.run_id})
        else:
            said = f"ended {final.state}: not undone {', '.join(final.not_undone) or final.error}" if final else \
                "ended outside playbook-bot"
            record.state, record.error, st.state = "failed", f"child run {call.run_id} {said}", "compensation_failed"
            self._record(step.id, EventKind.compensation_failed, {"action": comp.action, "error": record.error})
        record.finished_at = workflow.now()
        self._log("compensation " + record.state, step_id=step.id, child=call.run_id)
        await self._notify()

    async def _release_children(self: _Run) -> None:
        """Before the parent closes: every child still held is released, and ends."""
        waiting = []
        for call in self._status.children:
            ended = self._child_ends.get(call.run_id)
            if ended is not None and not ended.done():
                call.verdict = call.verdict or "release"
                waiting.append(self._stop_child(call, ended))
        await asyncio.gather(*waiting)

    def _is_child_call(self: _Run, step: Step) -> bool:
        return step.action == RUN_ACTION and any(c.step == step.id for c in self._status.children)

    # ---- child: believing, hearing and holding for the parent -----------------------------

    def _adopt_parent(self: _Run) -> None:
        """Admission believed the input's parent: show it, and say no run_finished early."""
        parent = self._input.parent
        assert parent is not None
        self._parent = parent
        self._status.parent_run, self._status.parent_step = parent.run_id, parent.step_id

    async def _parent_word(self: _Run, timeout: timedelta | None) -> str | None:
        """Wait for a poke from the parent (or the timeout), then read what its status says of this run:
        its verdict, None for nothing yet, 'gone' when the parent no longer runs."""
        assert self._parent is not None
        parent_id = self._parent.run_id
        try:
            await workflow.wait_condition(lambda: self._pokes[parent_id] > self._pokes_seen, timeout=timeout)
        except asyncio.TimeoutError:
            pass
        self._pokes_seen = self._pokes[parent_id]
        peek = await self._peek(parent_id)
        if not peek.running or peek.status is None:
            return "gone"
        call = next((c for c in peek.status.children if c.run_id == self._status.run_id), None)
        if call is not None and call.verdict == "cancel" and self._status.cancelled_by is None:
            self._status.cancelled_by = peek.status.cancelled_by or "playbook"
            self._status.cancel_reason = f"its parent run {parent_id} stopped its step {self._parent.step_id}"
        return call.verdict if call is not None else None

    async def _watch_parent(self: _Run) -> None:
        """While the steps run: the parent cancelled (or timed out) its call step, so this run cancels."""
        while True:
            word = await self._parent_word(None)
            if word in ("cancel", "compensate", "gone"):
                break
        status = self._status
        if status.cancelled_by is None:
            status.cancelled_by, status.cancel_reason = "playbook", f"its parent run {self._parent.run_id} ended"
        self._record(None, EventKind.cancel_requested, {
            "by": status.cancelled_by, "accepted": True, "reason": status.cancel_reason, "parent_run": self._parent.run_id,
        }, actor=status.cancelled_by, key="parent")
        self._log("cancel from parent run accepted", parent=self._parent.run_id)
        if self._body is not None:
            self._body.cancel()

    async def _hold_for_parent(self: _Run) -> bool:
        """The steps completed: wait for the parent's word. True: roll back (compensate)."""
        assert self._parent is not None
        status = self._status
        status.held_by = self._parent.run_id
        self._log("held for parent run", parent=self._parent.run_id)
        await self._flush_audit()
        await self._notify()
        await self._poke(self._parent.run_id)
        while True:
            word = await self._parent_word(HOLD_CHECK)
            if word is not None:
                break
        status.held_by = None
        if word in ("compensate", "cancel"):
            status.error = f"rolled back by its parent run {self._parent.run_id}"
            return True
        return False

