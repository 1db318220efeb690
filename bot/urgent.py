"""Work someone is waiting on, counted while it runs in this process, so that work that can wait
gives way to it.

In a burst of Approve clicks, each click's `approver` question and gated action are what the
on-call engineer waits for; each finished run's last Slack update is not, and it competes with
them for the worker's one event loop. Measured (bench/latency.py, 3 bursts of 50 clicks), the
finished runs' Slack updates were about a fifth of the burst's p95 click-to-action latency.
`urgent()` marks the first kind while it runs; `give_way(bound)` lets the second wait until none
runs (none has for QUIET seconds), for at most `bound` seconds. Nothing is dropped, only ordered: an idle worker waits for
nothing, and a busy one still sends every update, at most `bound` later. Work that has run for
LONG_AFTER seconds (a rollout being watched, a long script) no longer counts: it is not slowed by
an update, and would otherwise hold every update back for as long as it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

LONG_AFTER = 2.0  # seconds after which urgent work no longer holds anything back
QUIET = 0.05  # seconds without urgent work before what gives way goes

_running = 0
_quiet_since = 0.0  # time.monotonic() when the last urgent work ended
_waiting: list[asyncio.Future[None]] = []


@contextmanager
def urgent() -> Iterator[None]:
    """While the block runs (its first LONG_AFTER seconds), work that gives way waits."""
    global _running
    _running += 1
    counted = [True]
    try:
        aged = asyncio.get_running_loop().call_later(LONG_AFTER, _uncount, counted)
    except RuntimeError:  # no loop here: counted until it ends
        aged = None
    try:
        yield
    finally:
        if aged is not None:
            aged.cancel()
        _uncount(counted)


def busy() -> bool:
    """Whether urgent work runs in this process (and has not run long)."""
    return _running > 0


async def give_way(bound: float) -> None:
    """Return once no urgent work has run in this process for QUIET seconds, or after `bound`
    seconds. (A burst's urgent work comes and goes: a moment with none is not its end.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while (left := deadline - loop.time()) > 0:
        if _running == 0:
            quiet = _quiet_since + QUIET - time.monotonic()
            if quiet <= 0:
                return
            await asyncio.sleep(min(quiet, left))
            continue
        waiter = loop.create_future()
        _waiting.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=left)
        finally:
            if waiter in _waiting:
                _waiting.remove(waiter)
            waiter.cancel()


def _uncount(counted: list[bool]) -> None:
    global _running, _quiet_since
    if not counted[0]:
        return
    counted[0] = False
    _running -= 1
    if _running == 0:
        _quiet_since = time.monotonic()
        _wake()


def _wake() -> None:
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # (ended in a thread)
        here = None
    while _waiting:
        waiter = _waiting.pop()
        loop = waiter.get_loop()
        if loop is here:
            _resolve(waiter)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
