"""The run's audit queue for PlaybookRun: a mixin, so an audit store outage blocks no rollback.

Workflow code (deterministic). Events wait in workflow state (rebuilt by replay, so durable) in
the order the run recorded them, each with its place in that order. They ride on the next
activity as before; when one reports the store down (it acted unrecorded and handed its events
back) the run switches to spooling: activities write nothing (`defer`, or their events would land
before older ones), and one flusher coroutine appends the queue through the `audit.record` local
activity, retrying with backoff (timers), until the store takes it. A high-impact step waits for
that: it never acts before its policy decision is on the record. The run finishes (run_finished
last) only once the queue is empty; `status.audit_pending` says how many events wait meanwhile.

From engine-v11 an activity's word that it wrote what it was handed is not the end of those
events: a plain Temporal client can complete a pending activity by id with any result (review,
stop 50). They wait in a second list (`_unconfirmed`) until a write of the worker's own (the
flusher's local activity, which no client can answer) has taken them, or a high-impact step's own
record before it acts; a write the activity did make leaves that one a no-op (event ids), and the
run ends only once that list is empty too. A forged completion's events are then written late,
after events recorded since (each with its own time); none is lost.

From engine-v14 what an activity carries is at most CARRY_MAX bytes: past it the flusher writes
the queue first, through its local activity, whose input stays in the worker. An activity's input
is a Temporal payload (2 MB at most), and the queue grows without a count's bound: step_started
events hold their step's args (256 KiB), and they pile up behind a long step that holds the queue,
or wait to be confirmed (red team, stop 54: 2.3-2.7 MB rode on one activity, whose run's workflow
task then failed on every replay).

Runs from before the spool (no SPOOL_PATCH marker) keep the old behaviour and event ids.
"""

from __future__ import annotations

from datetime import timedelta
from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from bot.audit.events import AuditEvent
    from bot.audit.recorder import AuditBatch, AuditMode
    from bot.engine.callers import CALLER_REFUSED
    from bot.engine.state import RunStatus, payload_size

SPOOL_PATCH = "audit-spool-v1"  # per-execution event ids, the queue in state, the flusher
# A high-impact step also waits for events an activity in flight was handed (a long sibling in a
# parallel group holds the queue; the approval request and votes queue behind it).
HELD_PATCH = "audit-spool-held-v1"
FLUSH_TIMEOUT = timedelta(seconds=30)
FLUSH_FIRST_RETRY = timedelta(seconds=1)
FLUSH_MAX_RETRY = timedelta(seconds=60)
# Events an activity said it wrote, kept until the flusher confirms them: past this many, the next
# action waits for it to (a long run of remote steps holds no more than that, and its end's flush
# writes no more than that either).
UNCONFIRMED_MAX = 64
# Bytes of queued events one activity carries at most (engine-v14): its input stays well inside
# Temporal's 2 MB beside its own args (ARGS_MAX) or a policy question's document.
CARRY_MAX = 512 * 1024

Queued = tuple[int, AuditEvent]  # (place in the run's order, event)


class AuditSpool:
    _status: RunStatus
    _payloads_bounded: bool  # the run's engine-v14 (PlaybookRun): an activity carries at most CARRY_MAX of the queue

    def _spool_setup(self) -> None:
        self._audit: list[Queued] = []
        self._audit_n = 0  # the last place handed out
        self._spool: bool | None = None  # SPOOL_PATCH, asked once (first thing in run())
        self._store_down = False  # a write failed: only the flusher writes until the queue is empty
        self._flushing: list[Queued] | None = None  # the batch the flusher is appending now
        self._flush_wanted = False
        self._holders = 0  # activities in flight that were handed queued events to write
        self._awaiting_record = 0  # high-impact steps waiting in _recorded for the store to take the record
        self._wait_held = False  # HELD_PATCH, asked in run() right after SPOOL_PATCH
        self._confirms = False  # engine-v11: what an activity says it wrote waits for a write of the worker's
        self._unconfirmed: list[Queued] = []

    # ---- ids and the queue ---------------------------------------------------------------

    def _spooled(self) -> bool:
        if self._spool is None:
            self._spool = workflow.patched(SPOOL_PATCH)
        return self._spool

    def _execution(self) -> str | None:
        """This execution's part of its event ids (None: a run from before, which keeps its ids):
        the chain's first execution, and for a later execution of the chain (an operator's
        `temporal workflow reset`) `<first>~<this one>`. A reset execution acts again, so its
        events are its own, not read as repeats of the first execution's and dropped from the
        trail (event ids are idempotent). A run never reset keeps the ids it always had."""
        if not self._spooled():
            return None
        info = workflow.info()
        first = info.first_execution_run_id.replace("-", "")
        return first if info.run_id == info.first_execution_run_id else f"{first}~{info.run_id.replace('-', '')}"

    def _place(self) -> int:
        self._audit_n += 1
        return self._audit_n

    def _queue(self, event: AuditEvent) -> None:
        self._audit.append((self._place(), event))
        self._count_pending()

    def _take(self) -> list[Queued]:
        queued, self._audit = self._audit, []
        return queued

    def _unconfirmed_too(self, claimed: list[Queued]) -> None:
        """Events an activity's result says it wrote: the flusher writes them again (engine-v11)."""
        self._unconfirmed.extend(claimed)

    async def _confirmed_some(self) -> None:
        """Before an action (engine-v11): past UNCONFIRMED_MAX events to confirm, the flusher takes
        them first (its batch; a write that fails puts them back in the queue). Only while no
        activity holds the queue (the flusher waits for none to), which in a run of remote steps is
        so between them (review, stop 51: nothing was confirmed before the run's end); an action
        never waits for another one to return (a parallel sibling, a foreach item), only for a
        flush, so past the bound in a parallel group the next pause between holders takes them."""
        if len(self._unconfirmed) <= UNCONFIRMED_MAX or self._holders:
            return
        self._flush_wanted = True
        await workflow.wait_condition(
            lambda: len(self._unconfirmed) <= UNCONFIRMED_MAX or self._store_down or bool(self._holders))

    def _carry_over(self, high: bool = False) -> bool:
        """(engine-v14) Whether the next activity's handoff would carry more than CARRY_MAX bytes:
        the queue, and for a high-impact step what waits to be confirmed too."""
        if not self._payloads_bounded or self._holders:
            return False  # (a holder in flight: the next one carries nothing)
        carried = [*self._audit, *(self._unconfirmed if high else [])]
        return sum(payload_size(event) for _, event in carried) > CARRY_MAX

    async def _carry_room(self) -> None:
        """Before a handoff that is not a high-impact step's (engine-v14): a queue past CARRY_MAX is
        written by the flusher first; with the store down nothing is carried anyway (`defer`)."""
        while not self._store_down and self._carry_over():
            self._flush_wanted = True
            await workflow.wait_condition(lambda: self._flushing is not None or self._store_down or bool(self._holders))
            await workflow.wait_condition(lambda: self._flushing is None)

    def _to_flush(self) -> bool:
        return bool(self._audit or self._unconfirmed)

    def _with_unconfirmed(self, taken: list[Queued]) -> list[Queued]:
        """`taken` and every event waiting to be confirmed (taken too), each at its place: one write
        of them all, a no-op for what the activities did write."""
        if not self._unconfirmed:
            return taken
        merged, self._unconfirmed = sorted([*self._unconfirmed, *taken], key=lambda queued: queued[0]), []
        return merged

    def _put_back(self, taken: list[Queued], own: list[AuditEvent] | None = None, at: int = 0) -> None:
        """Unwritten events back in the queue, each at its place: `own`, an activity's events,
        at the place reserved when it was handed its batch (after that batch, before later ones)."""
        back = [*taken, *((at, e) for e in own or [])]
        if back:
            self._audit = sorted([*back, *self._audit], key=lambda queued: queued[0])
        self._count_pending()

    def _count_pending(self) -> None:
        waiting = len(self._audit) + len(self._flushing or [])
        if self._store_down and not waiting:
            self._store_down = False  # nothing left that a write could overtake (nothing to wait for)
        self._status.audit_pending = waiting if self._store_down else 0

    # ---- activities carry the queue --------------------------------------------------------

    def _handoff(self, high: bool = False) -> tuple[AuditMode, list[Queued], int]:
        """How the next activity writes, what it carries, and the place of its own events. Only
        one activity at a time carries queued events, so none overtakes another's in the chain."""
        at = self._place()
        if high:
            mode: AuditMode = "write"  # after _recorded(): the store took everything before it
        elif self._store_down or self._flushing is not None:
            return "defer", [], at
        else:
            mode = "try"
        if self._holders:
            return mode, [], at
        queued = self._take()
        # (engine-v11) what waits to be confirmed is written by a high-impact step itself, before it acts
        return mode, self._with_unconfirmed(queued) if high else queued, at

    def _handed(self, queued: list[Queued]) -> None:
        self._holders += 1 if queued else 0

    def _returned(self, queued: list[Queued]) -> None:
        self._holders -= 1 if queued else 0

    def _kept(self, queued: list[Queued], own: list[AuditEvent] | None, at: int, mode: AuditMode,
              down: bool = True) -> None:
        """The activity did not write (its result says): keep what it carried and its own. Only a
        write that was tried and failed says the store is down; `defer` was this run's choice, and
        `down=False` a result that listed nothing of its own (a forged one: bot/engine/workflow.py
        `_own_events`)."""
        if own is None:
            return
        self._put_back(queued, own, at)
        if mode == "try" and down:
            self._went_down()  # (a no-op when nothing came back)

    def _failed_unrecorded(self, exc: BaseException) -> list[AuditEvent] | None:
        """An action that acted unrecorded and then failed says so in its failure's details."""
        cause = exc.cause if isinstance(exc, ActivityError) else None
        if not isinstance(cause, ApplicationError) or not cause.details or not isinstance(cause.details[0], dict):
            return None
        raw = cause.details[0].get("unrecorded")
        if not isinstance(raw, list):
            return None
        try:
            return [AuditEvent.model_validate(e) for e in raw]
        except Exception:  # noqa: BLE001  not events: a failure forged by id (none is the action's; an
            return []       # exception here failed the workflow task on every replay: an undo never ended)

    def _went_down(self) -> None:
        if not self._audit and self._flushing is None:
            return
        if not self._store_down:
            workflow.logger.warning("audit store down: events kept in the run until it is back",
                                    extra={"run_id": self._status.run_id})
        self._store_down = True
        self._count_pending()

    def _record_flushing(self) -> bool:
        """A high-impact step waits for a flush under way, or for one the flusher takes next (as its
        own wait reads it): its dispatch follows the flush. Never while the store is down (the
        flusher only retries on its backoff, and the step waits for the store) or while the step
        waits for an activity in flight (that may take as long as the activity)."""
        if not self._awaiting_record or self._store_down:
            return False
        return self._flushing is not None or (bool(self._audit) and self._flush_wanted and not self._holders)

    async def _recorded(self) -> None:
        """Before a high-impact step: wait until the store has taken every event recorded before it
        (its policy decision, approval request and votes among them): none queued behind a failed
        write or a flush, and none held by an activity in flight, which writes them or hands them
        back only when it returns. Checked again after each wait: nothing runs between that check
        and the step's handoff, which then carries whatever is still queued and writes it first."""
        if self._wait_held:

            def settled() -> bool:
                return not self._store_down and self._flushing is None and not self._holders

            self._awaiting_record += 1
            try:
                while True:
                    while not settled():
                        self._flush_wanted = True
                        await workflow.wait_condition(settled)
                    if not self._carry_over(high=True):
                        break
                    # (engine-v14) more than one activity carries: the flusher writes it first
                    self._flush_wanted = True
                    await workflow.wait_condition(lambda: not settled())
            finally:
                self._awaiting_record -= 1
            return
        if not self._store_down and self._flushing is None:
            return
        self._flush_wanted = True
        await workflow.wait_condition(lambda: not self._store_down and self._flushing is None)

    async def _drained(self) -> None:
        """The end of the run: nothing queued, nothing in flight."""
        self._flush_wanted = True
        await workflow.wait_condition(lambda: not self._to_flush() and self._flushing is None and not self._holders)

    # ---- the flusher ------------------------------------------------------------------------

    async def _flusher(self) -> None:
        """Append the queue, in order, when asked or while the store is down; retry with backoff."""
        backoff = FLUSH_FIRST_RETRY
        while True:
            await workflow.wait_condition(
                lambda: self._to_flush() and (self._store_down or self._flush_wanted) and not self._holders
            )
            batch, self._flush_wanted = self._with_unconfirmed(self._take()), False
            self._flushing = batch
            try:
                await self._local_activity(  # type: ignore[attr-defined]
                    "audit.record",
                    AuditBatch(events=[e for _, e in batch]),
                    start_to_close_timeout=FLUSH_TIMEOUT,
                    retry_policy=TemporalRetryPolicy(maximum_attempts=1),  # the backoff is ours, in timers
                )
            except FailureError as exc:  # the store's refusal (a local activity raises it as it is), a timeout
                self._flushing = None
                if isinstance(exc, ApplicationError) and exc.type == CALLER_REFUSED:
                    # Not the bot's execution (its task reached this worker by a sticky queue someone
                    # else named): its events are never written, so there is nothing to wait for.
                    workflow.logger.error("audit events of an execution that is not the bot's dropped",
                                          extra={"run_id": self._status.run_id, "error": str(exc)})
                    self._audit, self._unconfirmed, self._store_down = [], [], False
                    self._count_pending()
                    continue
                self._put_back(batch)
                self._went_down()
                workflow.logger.warning(
                    "audit store still down", extra={"run_id": self._status.run_id, "retry_in": backoff.total_seconds(),
                                                     "error": str(exc)}
                )
                await workflow.sleep(backoff, summary="audit store down: retry")
                backoff = min(backoff * 2, FLUSH_MAX_RETRY)
                continue
            self._flushing = None
            backoff = FLUSH_FIRST_RETRY
            if self._store_down and not self._audit:
                self._store_down = False
                workflow.logger.info("audit store back: the run's record is complete", extra={"run_id": self._status.run_id})
            self._count_pending()
