"""Group commit for the front doors: the audit appends of concurrent requests share one transaction.

An alert storm's requests each append a few events; one transaction (and, on SQLite, one fsync)
per request makes the store the front door's bottleneck and queues requests behind each other's
fsyncs. `GroupCommitter.append` queues the caller's events; one writer at a time takes everything
queued, appends it with a single `store.append` (one transaction on either backend, in a thread,
never on the event loop) and hands each caller its result. While a batch is being written the next
one gathers, so the batch grows with the load and an idle front door waits for nobody.

What a caller is promised is what a direct append promises: `append` returns only once the
transaction holding its events committed (durable as the store makes any append), and a failed
transaction raises its error in every caller whose events were in it, and in no other. Events
keep their order per caller and each caller's events are contiguous in the chain; an event id
already stored (or queued twice in one batch) is written once, as a direct append would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from bot.audit.backend import AuditStore
from bot.audit.events import AuditEvent, StoredEvent
from bot.metrics import observe_events

log = structlog.get_logger(__name__)


@dataclass
class _Waiting:
    events: list[AuditEvent]
    done: asyncio.Future[list[StoredEvent]]


@dataclass
class GroupCommitter:
    """One per store and event loop. `max_events` bounds a batch (and so one transaction's
    length); what does not fit waits for the next batch, in order."""

    store: AuditStore
    max_events: int = 1000
    transactions: int = 0  # batches written (or attempted): what tests and benches compare
    _queue: list[_Waiting] = field(default_factory=list)
    _writer: asyncio.Task[None] | None = None

    async def append(self, events: Sequence[AuditEvent]) -> list[StoredEvent]:
        """Append with whatever else is waiting; the events this call newly wrote (a retry's
        events already stored are not returned, as `append(new_only=True)`). Raises the store's
        error (AuditUnavailable) when the batch holding these events failed."""
        if not events:
            return []
        waiting = _Waiting(list(events), asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="audit group commit")
        # A caller cancelled while it waits (its client went away) does not take its events
        # back: they are queued, and the writer still writes them.
        return await asyncio.shield(waiting.done)

    async def _write_all(self) -> None:
        try:
            while self._queue:
                batch, size = [], 0
                while self._queue and (not batch or size + len(self._queue[0].events) <= self.max_events):
                    waiting = self._queue.pop(0)
                    batch.append(waiting)
                    size += len(waiting.events)
                await self._write(batch)
        except BaseException:  # the loop is going away: nobody waits forever on a writer that is gone
            gone = RuntimeError("the audit group commit stopped before these events were written")
            for waiting in self._queue:
                _fail(waiting, gone)
            self._queue.clear()
            raise

    async def _write(self, batch: list[_Waiting]) -> None:
        combined = [event for waiting in batch for event in waiting.events]
        self.transactions += 1
        try:
            written = await asyncio.to_thread(self.store.append, combined, new_only=True)
        except Exception as exc:  # every caller in this batch, and only they, get the failure
            for waiting in batch:
                _fail(waiting, exc)
            return
        except BaseException:  # cancelled mid-write: whether it committed is unknown to us
            for waiting in batch:
                _fail(waiting, RuntimeError("the audit group commit was stopped while writing these events"))
            raise
        observe_events(written)
        by_id = {stored.event_id: stored for stored in written}
        for waiting in batch:
            # An id queued twice in one batch was written once: it is the first caller's.
            mine = [by_id.pop(e.event_id) for e in waiting.events if e.event_id in by_id]
            if not waiting.done.done():
                waiting.done.set_result(mine)


def _fail(waiting: _Waiting, exc: BaseException) -> None:
    if not waiting.done.done():
        waiting.done.set_exception(exc)
        waiting.done.exception()  # retrieved: a caller that went away leaves no "never retrieved" noise
