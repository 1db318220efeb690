"""What the Slack handlers do after the ack: a bounded queue drained by a few worker tasks.

A command's ephemeral answer and its `slack_command` audit event are not needed to start the
run, so they are queued and the request is acked. A response_url that hangs or fails, a Slack
API error or an audit store that is down then costs one lane's worker a bounded time (the
job's timeout), never another request its ack: the HTTP handler only ever does `put_nowait`.
A full queue drops the job with an error log (a flood must not grow memory without bound).
While other requests still wait for their ack, queued jobs wait too (bounded): see AckWindow.
A job still queued when the door stops and its drain runs out of time is logged with what it
would have said (`said`): an audit record that never reaches the store is at least in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Job = Callable[[], Awaitable[None]]


class AckWindow:
    """The requests still waiting for their ack. Jobs queued after an ack wait until none is
    (or until `max_wait` seconds after they were queued, so a steady stream of requests cannot
    starve them): in a burst of commands, the first ones' answers and audit records would
    otherwise take the event loop from the later ones' acks."""

    def __init__(self, max_wait: float = 2.0) -> None:
        self.max_wait = max_wait
        self._open = 0
        self._idle: asyncio.Event | None = None

    @contextlib.contextmanager
    def acking(self) -> Iterator[None]:
        """Around one request, from its arrival to its ack."""
        self._open += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            yield
        finally:
            self._open -= 1
            if not self._open and self._idle is not None:
                self._idle.set()

    @property
    def open(self) -> int:
        return self._open

    async def passed(self, queued_at: float) -> None:
        """Wait until no request waits for its ack, or `max_wait` after `queued_at`."""
        if not self._open:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, queued_at + self.max_wait - time.monotonic()))


class Lane:
    """`workers` tasks running queued jobs one at a time each, each job cut at `timeout` seconds;
    a job starts once `window` has no request waiting for its ack (bounded)."""

    def __init__(self, name: str, *, workers: int = 4, size: int = 1000, timeout: float = 10.0,
                 window: AckWindow | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self.window = window or AckWindow()
        self._workers = workers
        self._size = size
        self._queue: asyncio.Queue[tuple[str, Job, float, dict[str, Any]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending = 0
        self.failed = 0  # jobs that raised or timed out (logged each time)
        self.dropped = 0  # jobs refused by a full queue or a drained lane (logged each time)
        self._drained = False  # the door stopped: nothing starts the lane again

    def submit(self, what: str, job: Job, said: dict[str, Any] | None = None) -> bool:
        """Queue `job` (never waits). `said`: what the job records, logged with every job that does
        not run: refused here (False) by a full queue or a drained lane (a listener that ran on
        past the shutdown's grace must not start the workers again on a loop that is closing), or
        still queued when the door stopped (see `drain`)."""
        if self._drained:
            self.dropped += 1
            log.error("slack background job not run: the door stopped", lane=self.name, what=what, **(said or {}))
            return False
        if self._queue is None:  # started on first use, inside the running loop
            self._queue = asyncio.Queue(self._size)
            self._tasks = [asyncio.create_task(self._work(), name=f"slack-{self.name}-{i}") for i in range(self._workers)]
        try:
            self._queue.put_nowait((what, job, time.monotonic(), said or {}))
            self._pending += 1
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("slack background queue full; dropped", lane=self.name, what=what, size=self._size, **(said or {}))
            return False
        return True

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            what, job, queued_at, _ = await self._queue.get()
            try:
                await self.window.passed(queued_at)
                await asyncio.wait_for(job(), self.timeout)
            except asyncio.TimeoutError:
                self.failed += 1
                log.warning("slack background job timed out", lane=self.name, what=what, timeout_s=self.timeout)
            except Exception as exc:  # noqa: BLE001  logged; the lane goes on with the next job
                self.failed += 1
                log.warning("slack background job failed", lane=self.name, what=what, error=f"{type(exc).__name__}: {exc}")
            finally:
                self._pending -= 1
                self._queue.task_done()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for what is queued, then stop the workers; what is left is logged: a job
        still running is cancelled (and says so itself), each one never started is logged here
        with what it said. Nothing is taken after it."""
        self._drained = True
        if self._queue is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        if self.pending:
            log.warning("slack background jobs left undone at shutdown", lane=self.name, pending=self.pending)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            what, _, queued_at, said = self._queue.get_nowait()
            self._pending -= 1
            log.error("slack background job never ran: the door stopped", lane=self.name, what=what,
                      queued_s_ago=round(time.monotonic() - queued_at, 1), **said)
        self._tasks, self._queue = [], None


class Background:
    """The front door's lanes: answers to users (Slack can be slow), audit records (a store can be
    down), and users' refusals on record (one user's flood of refused commands, each retried while
    a store is down, must not crowd anyone's other records out). Separate so a hanging
    response_url never holds an audit event back."""

    # Answers are HTTP waits, not work: enough workers that the hanging response_urls of a burst
    # (each held up to answer_timeout) leave the others' answers free to go out at once.
    ANSWER_WORKERS = 32

    def __init__(self, *, answer_timeout: float = 10.0, record_timeout: float = 30.0) -> None:
        self.window = AckWindow()  # the router counts requests in it; both lanes wait for it
        self.answers = Lane("answers", workers=self.ANSWER_WORKERS, timeout=answer_timeout, window=self.window)
        self.records = Lane("records", workers=2, timeout=record_timeout, window=self.window)
        self.refusals = Lane("refusals", workers=2, timeout=record_timeout, window=self.window)

    async def drain(self, timeout: float = 5.0) -> None:
        await asyncio.gather(self.records.drain(timeout), self.refusals.drain(timeout), self.answers.drain(timeout))
