"""The event loop the bot's processes run: asyncio's own, except that while an answer is due
within a millisecond it polls for it instead of sleeping.

Why: the policy child answers a question in about 0.4 ms. A loop that sleeps in epoll for that
long is woken from an idle CPU, and on the VMs we measured (cpuidle driver haltpoll) that wake-up
alone is p50 74 µs, p99 255 µs: more than a decision's whole budget above rego-cpp's own time.
While an owner (bot.policy.rego_process) has said an answer is due, the selector polls with a
zero timeout until something is ready or the due time passes, then sleeps as before. It polls only
where the loop would otherwise sleep (ready callbacks never wait for it), never past the loop's own
timeout, and yields the CPU to any other runnable thread between polls. Its cost is CPU time: at
most `within` per question, and owners stop asking when their answers come slower than that.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class SpinningSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's selector, polling instead of sleeping until the latest due time."""

    def __init__(self) -> None:
        super().__init__()
        self.due: dict[object, float] = {}  # owner -> time.monotonic() its answer is due by
        self.polls = 0  # zero-timeout polls made instead of sleeping (for tests)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.due and (timeout is None or timeout > 0):
            start = now = time.monotonic()
            until = max(self.due.values())
            if timeout is not None:
                until = min(until, start + timeout)
            while now < until:
                self.polls += 1
                ready = super().select(0)
                if ready:
                    return ready
                os.sched_yield()
                now = time.monotonic()
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
        return super().select(timeout)


class Loop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.spinning = SpinningSelector()
        super().__init__(self.spinning)


def answer_due(owner: object, within: float) -> None:
    """`owner` has just asked for an answer it expects within `within` seconds: the running loop
    polls for it until then (only a Loop does; any other loop sleeps as usual)."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, Loop):
        loop.spinning.due[owner] = time.monotonic() + within


def nothing_due(owner: object) -> None:
    """`owner` waits for no answer now."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, Loop):
        loop.spinning.due.pop(owner, None)


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a Loop."""
    with asyncio.Runner(loop_factory=Loop) as runner:
        return runner.run(main)
