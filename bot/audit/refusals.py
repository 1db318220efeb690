"""A door's refusals on the record without a flood growing the trail: one by one up to a budget a
minute (RefusalBudget), the rest of that minute as one count, told once the minute is over.

The webhook doors keep one log per door (their callers are anonymous until proven otherwise);
the HTTP API and Slack keep one per principal and rule (`RefusalLogs`), so one token holder's or
workspace member's flood neither grows the trail without bound nor turns anyone else's refusals
into a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

import structlog

from bot.audit.backend import AuditStore
from bot.audit.events import AuditEvent
from bot.audit.recorder import RefusalBudget, record_refusal, refusal

log = structlog.get_logger(__name__)

SUMMARY_GRACE = 1.0  # seconds past a minute's end before its count of unrecorded refusals is told
CLOSE_WAIT = 5.0  # seconds a stopping door waits, at most, for its last count to be written
# Rule logs one principal has at a door; past it, its refusals under a rule it has no log for yet
# share its `other` log (a run's refusal may name rules of its own).
RULES_EACH = 16
# Logs a door keeps before it lets go of the idle ones (their minute over, nothing left to tell).
REFUSAL_LOGS = 1000
Writer = Callable[[AuditEvent], Awaitable[None]]


class RefusalLog:
    """The `access_refused` events of one door (or one principal at a door): `record` writes an
    event while the minute's budget lasts and counts it after; each minute's count is its own
    event, recorded as `actor` for `operation`."""

    def __init__(self, store: AuditStore | None, actor: str, operation: str, budget: RefusalBudget | None = None) -> None:
        self.store = store
        self.actor = actor
        self.operation = operation  # what its refusals (and their counts) refused
        self.budget = budget or RefusalBudget()
        self._summary: asyncio.Task[None] | None = None  # tells a minute's count once it is over
        self._closing = asyncio.Event()  # set by close(): no timer starts, a sleeping one wakes
        self._told = 0  # counts told by this log (each its own event)
        self._replica = os.urandom(4).hex()  # each replica's count of a minute is its own summary event

    async def record(self, event: AuditEvent, write: Writer | None = None) -> bool:
        """`event` on record if the minute's budget allows (True), else counted (False); `write`
        puts it there (default: one best-effort append, `record_refusal`)."""
        recorded, unrecorded, window = self.budget.take()
        if unrecorded and window is not None:
            await self._summarize(unrecorded, window)
        if not recorded and not self._closing.is_set() and (self._summary is None or self._summary.done()):
            self._summary = asyncio.create_task(self._summarize_when_over())
        if recorded:
            await (write(event) if write is not None else record_refusal(self.store, event))
        return recorded

    async def _summarize(self, unrecorded: int, window: int) -> None:
        """The count of a minute's refusals past the budget, as one event of its own (each
        replica's, and each telling of a minute: a count told at close and one told later for the
        same minute are both kept). A count the store does not take is logged with its number."""
        self._told += 1
        await record_refusal(self.store, refusal(self.actor, self.operation, (
            f"{unrecorded} more refusals in the minute from "
            f"{datetime.fromtimestamp(window * 60, timezone.utc):%Y-%m-%dT%H:%MZ} were not recorded one by one "
            f"(at most {self.budget.per_minute} a minute are)"), key=f"window-{window}-{self._replica}-{self._told}"))

    async def _summarize_when_over(self) -> None:
        """Tell each minute's count once it is over, even if no refusal comes after the flood; the
        door's close wakes it (and then tells what is left itself)."""
        while not self._closing.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.budget.seconds_left() + SUMMARY_GRACE)
            if self._closing.is_set():
                return
            if (told := self.budget.settle()) is not None:
                await self._summarize(*told)  # (a minute that went over meanwhile is the next turn's)
            elif self.budget.seconds_left() <= 0:  # nothing untold, and its minute is over
                return

    @property
    def summarizing(self) -> bool:
        """Whether a timer waits to tell a minute's count."""
        return self._summary is not None and not self._summary.done()

    @property
    def idle(self) -> bool:
        """Nothing to tell and its minute over: a new log would do exactly what this one does."""
        return not self.summarizing and self.budget.idle()

    async def close(self) -> None:
        """The door stops: the count of the minute under way is told now, not lost with the
        process. A count being written is waited for, never cut off; the whole is bounded, and a
        count not written is logged with its number."""
        self._closing.set()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                if self._summary is not None:
                    await self._summary
                if (told := self.budget.settle(final=True)) is not None:
                    await self._summarize(*told)
        except TimeoutError:  # (a count cut off while written was logged with its number)
            if (told := self.budget.settle(final=True)) is not None:
                log.error("refusal count not recorded before the door stopped", actor=self.actor,
                          operation=self.operation, count=told[0])


class RefusalLogs:
    """A door's refusals of authenticated actors (API token holders, Slack users): one RefusalLog
    per principal and rule, so a flood of junk (malformed bodies, a script clicking a button it
    may not) cannot turn the same principal's refusals that matter into a count, nor anyone
    else's. At most RULES_EACH rules per principal have logs of their own; past REFUSAL_LOGS logs
    the idle ones are let go. `door` names the summaries' operation (`door:rule`)."""

    def __init__(self, store: AuditStore | None, door: str) -> None:
        self.store = store
        self.door = door
        self._logs: dict[tuple[str, str], RefusalLog] = {}
        self._rules: Counter[str] = Counter()  # logs per principal

    async def record(self, principal: str, rule: str, event: AuditEvent, write: Writer | None = None) -> bool:
        """`event` on record within `principal`'s budget for `rule` (True), else counted (False)."""
        return await self.log(principal, rule).record(event, write)

    def log(self, principal: str, rule: str) -> RefusalLog:
        """`principal`'s log for `rule` (its `other` log past RULES_EACH rules)."""
        key = (principal, rule)
        if key not in self._logs:
            if len(self._logs) >= REFUSAL_LOGS:
                self._let_go_idle()
            if self._rules[principal] >= RULES_EACH:
                key = (principal, "other")
        refusals = self._logs.get(key)
        if refusals is None:
            refusals = self._logs[key] = RefusalLog(self.store, principal, f"{self.door}:{key[1]}"[:100])
            self._rules[principal] += 1
        return refusals

    def _let_go_idle(self) -> None:
        for key in [key for key, refusals in self._logs.items() if refusals.idle]:
            del self._logs[key]
            self._rules[key[0]] -= 1
            if not self._rules[key[0]]:
                del self._rules[key[0]]

    async def close(self) -> None:
        """The door stops: each principal's count of the minute under way is told now."""
        await asyncio.gather(*(refusals.close() for refusals in self._logs.values()))
