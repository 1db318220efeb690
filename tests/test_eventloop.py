"""The bot's event loop polls instead of sleeping only while an owner says an answer is due, never
past that time or the loop's own timers, and hands over what is ready as a sleeping loop would."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bot import eventloop

T = TypeVar("T")

OWNER = object()


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return eventloop.run(main())


def spinning() -> eventloop.SpinningSelector:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, eventloop.Loop)
    return loop.spinning


def test_nothing_due_the_loop_sleeps() -> None:
    async def main() -> int:
        await asyncio.sleep(0.05)
        return spinning().polls

    assert run(main) == 0


def test_an_answer_due_is_polled_for_and_handed_over_when_it_comes() -> None:
    async def main() -> tuple[bytes, int, float]:
        ours, theirs = socket.socketpair()
        reader, _ = await asyncio.open_connection(sock=ours)
        eventloop.answer_due(OWNER, 5.0)
        sent = threading.Timer(0.02, theirs.send, [b"answer"])
        sent.start()
        started = time.monotonic()
        data = await reader.read(6)
        elapsed = time.monotonic() - started
        eventloop.nothing_due(OWNER)
        sent.join()
        theirs.close()
        return data, spinning().polls, elapsed

    data, polls, elapsed = run(main)
    assert data == b"answer"
    assert polls > 10  # it polled through the 20 ms instead of sleeping
    assert elapsed < 1.0  # and gave the answer over when it came, not at the due time


def test_polling_stops_at_the_due_time() -> None:
    async def main() -> tuple[int, int, float]:
        eventloop.answer_due(OWNER, 0.02)
        cpu = time.process_time()
        await asyncio.sleep(0.02)
        polls_at_due = spinning().polls
        await asyncio.sleep(0.3)
        return polls_at_due, spinning().polls, time.process_time() - cpu

    polls_at_due, polls_after, cpu = run(main)
    assert polls_at_due > 0
    assert polls_after - polls_at_due < 50  # slept through the 300 ms after the due time
    assert cpu < 0.2


def test_the_loops_own_timers_are_not_delayed_by_a_later_due_time() -> None:
    async def main() -> float:
        eventloop.answer_due(OWNER, 10.0)
        started = time.monotonic()
        await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        eventloop.nothing_due(OWNER)
        return elapsed

    assert run(main) < 0.5


def test_nothing_due_ends_the_polling_before_the_due_time() -> None:
    async def main() -> int:
        eventloop.answer_due(OWNER, 10.0)
        await asyncio.sleep(0.01)
        eventloop.nothing_due(OWNER)
        before = spinning().polls
        await asyncio.sleep(0.1)
        return spinning().polls - before

    assert run(main) <= 1  # the select already under way when it was said


def test_ready_callbacks_never_wait_for_a_poll() -> None:
    async def main() -> int:
        eventloop.answer_due(OWNER, 10.0)
        before = spinning().polls
        for _ in range(100):
            await asyncio.sleep(0)  # a ready callback each pass: the loop selects with timeout 0
        polls = spinning().polls - before
        eventloop.nothing_due(OWNER)
        return polls

    assert run(main) == 0


def test_another_loop_ignores_what_is_due() -> None:
    async def main() -> bool:
        eventloop.answer_due(OWNER, 10.0)  # a plain asyncio loop: nothing to poll, nothing raised
        eventloop.nothing_due(OWNER)
        return True

    assert asyncio.run(main())
