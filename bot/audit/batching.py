"""Group commit: the audit writes of concurrent requests (front doors) and activities (the worker's
AuditWriter) share one transaction.

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

`call(fn)` does the same for the episode writes (claim, started, release, resolve) on a store
that can group them (SQLite's `group`: one transaction, a savepoint per call, so a call that
fails is rolled back alone and fails alone); its result, too, is handed back only after the
commit, so no caller acts on a claim that is not yet durable. A store without `group`
(PostgreSQL: its server commits concurrent transactions together itself) runs each call at once
in a thread, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from bot.audit.backend import AuditStore
from bot.audit.events import AuditEvent, StoredEvent, check_storable
from bot.metrics import observe_events

log = structlog.get_logger(__name__)


@dataclass
class _Waiting:
    events: list[AuditEvent]
    done: asyncio.Future[Any]
    call: Callable[[Any], Any] | None = None  # a store call instead of events

    @property
    def weight(self) -> int:
        return len(self.events) or 1


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
        check_storable(events)  # refused here, alone: it would fail every caller of its batch
        return await self._queued(_Waiting(list(events), asyncio.get_running_loop().create_future()))

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(store)` in the next group transaction (a store without `group`: at once, in a
        thread); its result once committed, or its exception."""
        if getattr(self.store, "group", None) is None:
            return await asyncio.to_thread(fn, self.store)
        return await self._queued(_Waiting([], asyncio.get_running_loop().create_future(), fn))

    async def _queued(self, waiting: _Waiting) -> Any:
        self._queue.append(waiting)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="audit group commit")
        # A caller cancelled while it waits (its client went away) does not take its write
        # back: it is queued, and the writer still writes it.
        return await asyncio.shield(waiting.done)

    async def _write_all(self) -> None:
        try:
            while self._queue:
                batch, size = [], 0
                while self._queue and (not batch or size + self._queue[0].weight <= self.max_events):
                    waiting = self._queue.pop(0)
                    batch.append(waiting)
                    size += waiting.weight
                await self._write(batch)
        except BaseException:  # the loop is going away: nobody waits forever on a writer that is gone
            gone = RuntimeError("the audit group commit stopped before these events were written")
            for waiting in self._queue:
                _fail(waiting, gone)
            self._queue.clear()
            raise

    async def _write(self, batch: list[_Waiting]) -> None:
        appends = [waiting for waiting in batch if waiting.call is None]
        combined = [event for waiting in appends for event in waiting.events]
        calls = [waiting for waiting in batch if waiting.call is not None]
        self.transactions += 1
        try:
            if calls:  # only a store with `group` queues calls
                group = self.store.group  # type: ignore[attr-defined]
                results = await asyncio.to_thread(group, [
                    *([lambda store: store.append(combined, new_only=True)] if combined else []),
                    *(waiting.call for waiting in calls),
                ])
                written = results.pop(0) if combined else []
            else:
                written = await asyncio.to_thread(self.store.append, combined, new_only=True)
                results = []
        except Exception as exc:  # every caller in this batch, and only they, get the failure
            for waiting in batch:
                _fail(waiting, exc)
            return
        except BaseException:  # cancelled mid-write: whether it committed is unknown to us
            for waiting in batch:
                _fail(waiting, RuntimeError("the audit group commit was stopped while writing these events"))
            raise
        for waiting, result in zip(calls, results, strict=True):
            if isinstance(result, Exception):
                _fail(waiting, result)
            elif not waiting.done.done():
                waiting.done.set_result(result)
        if isinstance(written, Exception):  # the appends failed (rolled back alone): their callers
            for waiting in appends:
                _fail(waiting, written)
            return
        observe_events(written)
        by_id = {stored.event_id: stored for stored in written}
        for waiting in appends:
            # An id queued twice in one batch was written once: it is the first caller's.
            mine = [by_id.pop(e.event_id) for e in waiting.events if e.event_id in by_id]
            if not waiting.done.done():
                waiting.done.set_result(mine)


def _fail(waiting: _Waiting, exc: BaseException) -> None:
    if not waiting.done.done():
        waiting.done.set_exception(exc)
        waiting.done.exception()  # retrieved: a caller that went away leaves no "never retrieved" noise
