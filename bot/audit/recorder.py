"""Writing audit events from activities: the ones that already run, plus one local activity.

Events ride on activities the run needs anyway (an action writes the events queued before it,
then its own `step_started`, before it acts), so auditing adds no server round trip per step.
What no later activity will carry (run_finished, an approval request) goes through the
`audit.record` local activity.

A store that cannot be written never blocks an undo: the workflow says per activity how it may
write (`AuditMode`). `write`: the record comes first, and a store that is down is a retryable
failure (a high-impact step, and runs from before the spool). `try`: write, and if the store is
down act anyway and hand the events back (`unrecorded`), which the workflow keeps, in order, in
its state until its flusher appends them. `defer`: the workflow already holds events the store
has not taken, so the activity writes nothing (writing now would put its events before them).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Sequence

import structlog
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bot.audit.batching import GroupCommitter
from bot.audit.events import AuditEvent, EventKind, UnstorableEvent, storable_id
from bot.audit.backend import AuditStore
from bot.audit.store import AuditUnavailable
from bot.metrics import observe_events

AUDIT_UNAVAILABLE = "AuditUnavailable"
UNSTORABLE = "UnstorableEvent"
AuditMode = Literal["write", "try", "defer"]


class AuditBatch(BaseModel):
    events: list[AuditEvent] = Field(default_factory=list)


async def append_counted(store: AuditStore, events: Sequence[AuditEvent]) -> None:
    """Append off the event loop and count what was newly written (a retry counts nothing).
    Raises AuditUnavailable; each caller decides what that means for it."""
    observe_events(await asyncio.to_thread(store.append, list(events), new_only=True))


def refusal(actor: str, operation: str, reason: str, *, run_id: str | None = None, key: str) -> AuditEvent:
    """`access_refused`: a front door turned an actor away (every refusal is on the record). `key`
    makes a retried request (the same Slack trigger, the same API request) record once. What the
    refused caller chose (a forged run id, its key) is recorded as a store can hold it."""
    return AuditEvent(
        event_id=storable_id(f"refused:{operation}:{key}"),
        ts=datetime.now(timezone.utc),
        run_id=None if run_id is None else storable_id(run_id),
        step_id=None,
        kind=EventKind.access_refused,
        actor=storable_id(actor or "unknown"),
        details={"operation": operation, "reason": reason},
    )


class RefusalBudget:
    """How many refusals of anonymous callers a door records one by one per minute. Past it, the
    rest of that minute is counted and recorded as one summary event once the minute is over (by
    the door's timer, or the next minute's first refusal, whichever comes first; at the latest
    when the door stops), so a flood of forged requests cannot grow the audit trail without bound
    while the trail still says how many there were."""

    def __init__(self, per_minute: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._window = -1
        self._used = 0
        self._dropped = 0

    def take(self) -> tuple[bool, int, int | None]:
        """(record this one?, refusals an earlier minute did not record (0: none), that minute as
        Unix time // 60 when there are some)."""
        window = int(self.clock() // 60)
        report, reported = 0, None
        if window != self._window:
            if self._dropped:
                report, reported = self._dropped, self._window
            self._window, self._used, self._dropped = window, 0, 0
        self._used += 1
        if self._used > self.per_minute:
            self._dropped += 1
            return False, report, reported
        return True, report, reported

    def seconds_left(self) -> float:
        """Until the current minute ends (when its count can be told)."""
        return max(0.0, (self._window + 1) * 60 - self.clock())

    def idle(self) -> bool:
        """Nothing untold, and the minute it counted is over."""
        return not self._dropped and int(self.clock() // 60) != self._window

    def settle(self, final: bool = False) -> tuple[int, int] | None:
        """(refusals not recorded one by one, their minute as Unix time // 60) once that minute is
        over, or at once when `final` (the door is stopping); taken, so it is told once. None: none
        untold. A flood that stops is then on record without waiting for the next refusal."""
        if not self._dropped or (not final and int(self.clock() // 60) == self._window):
            return None
        told, self._dropped = (self._dropped, self._window), 0
        return told


async def record_refusal(store: AuditStore | None, event: AuditEvent) -> None:
    """Best effort: the refusal was told to the actor; one the store did not take (down, or the
    write cancelled: a door stopping) is logged with what it said, and only a cancel is raised."""
    if store is None:
        return
    try:
        await append_counted(store, [event])
    except (Exception, asyncio.CancelledError) as exc:
        structlog.get_logger(__name__).warning(
            "refusal not recorded", actor=event.actor, operation=event.details.get("operation"),
            reason=event.details.get("reason"), error=f"{type(exc).__name__}: {exc}",
        )
        if isinstance(exc, asyncio.CancelledError):
            raise


class AuditWriter:
    """Async front of the store; `None` store (unit tests of one action) writes nothing.

    Concurrent writes share transactions (bot/audit/batching.py): 50 approvals at once, or an
    alert storm's runs, each write a few events from their activities, and one transaction (an
    fsync, a thread hop, a turn at the store's lock) per write queued them behind each other. A
    write still returns only once its events are committed, and fails only with its own batch."""

    def __init__(self, store: AuditStore | None) -> None:
        self.store = store
        self._commit = GroupCommitter(store) if store is not None else None  # built, like its user, in its loop

    async def write(self, events: Sequence[AuditEvent]) -> None:
        if not events or self._commit is None:
            return
        try:
            await self._commit.append(events)
        except AuditUnavailable as exc:
            raise ApplicationError(f"audit store unavailable: {exc}", type=AUDIT_UNAVAILABLE) from None
        except UnstorableEvent as exc:  # no retry can store it
            raise ApplicationError(str(exc), type=UNSTORABLE, non_retryable=True) from None

    async def write_as(self, mode: AuditMode, events: Sequence[AuditEvent]) -> list[AuditEvent] | None:
        """Write as `mode` says: None when written (or nothing to write), else the events not
        written (`try` with the store down, `defer`), for the workflow to keep. `write` raises."""
        if not events:
            return None
        if mode == "defer":
            return list(events)
        try:
            await self.write(events)
        except ApplicationError as exc:
            if mode == "write":
                raise
            structlog.get_logger(__name__).error(
                "audit store down: acting unrecorded, the workflow keeps the events", error=exc.message
            )
            return list(events)
        return None

    def run_recorded(self, run_id: str, exclude_execution: str | None = None) -> asyncio.Future[datetime | None]:
        """When a run under this id last started or ended (refused runs end too); None if never,
        or without a store; AuditUnavailable when the store cannot be read. The read is handed to
        a thread now, not when the answer is first awaited: what the caller does meanwhile (the
        admission's other checks) runs beside it, not before it."""
        loop = asyncio.get_running_loop()
        if self.store is None:
            never: asyncio.Future[datetime | None] = loop.create_future()
            never.set_result(None)
            return never
        context = contextvars.copy_context()  # (as asyncio.to_thread: the log context goes along)
        return loop.run_in_executor(None, context.run, self.store.run_last_recorded, run_id, exclude_execution)


def event(
    run_id: str,
    step_id: str | None,
    kind: EventKind,
    details: dict[str, Any] | None = None,
    *,
    actor: str = "system",
    ts: datetime | None = None,
    key: str | None = None,
    execution: str | None = None,
) -> AuditEvent:
    """An event whose id is its natural key, so writing it twice writes it once. `execution`
    (the workflow's first execution run id) makes it this run's: a later run reusing the run id
    records its own story instead of colliding with the first's (None: runs from before that).
    Ids an actor chose (a voter's principal with a NUL, a raw start's run id) are recorded as a
    store can hold them (`storable_id`): an event no store takes would read as an outage and hold
    the run's next high-impact step and its end for ever."""
    scope = f"{run_id}/{execution}" if execution else run_id
    event_id = f"{scope}:{step_id or 'run'}:{kind.value}" + (f":{key}" if key else "")
    return AuditEvent(
        event_id=storable_id(event_id),
        ts=ts or datetime.now(timezone.utc),
        run_id=storable_id(run_id),
        step_id=None if step_id is None else storable_id(step_id),
        kind=kind,
        actor=storable_id(actor),
        details=details or {},
    )


class AuditActivities:
    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer

    @activity.defn(name="audit.record")
    async def record(self, batch: AuditBatch) -> None:
        await self.writer.write(batch.events)
