"""The bot's event loop (uvloop) polls instead of sleeping only while an owner says an answer is
due, never past that time or the loop's own timers, and hands over what is ready as a sleeping
loop would; asyncio's own loop polls the same way."""

from __future__ import annotations

import asyncio
import math
import gc
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from bot import eventloop

T = TypeVar("T")

OWNER = object()


def host(path: Any, runnable: int) -> str:
    """A /proc/loadavg reading with `runnable` tasks runnable now."""
    path.write_text(f"0.50 0.40 0.30 {runnable}/321 4242\n")
    return str(path)


@pytest.fixture(autouse=True)
def idle_host(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host as the tests see it: one task runnable (the test), whatever the machine is doing."""
    monkeypatch.setattr(eventloop, "LOADAVG", host(tmp_path / "loadavg", 1))


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return eventloop.run(main())


def spinning() -> eventloop.Spinner:
    return eventloop.spinner()


@pytest.mark.skipif(eventloop.uvloop is None, reason="no uvloop wheel for this platform")
def test_the_bots_loop_is_uvloop() -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(main).startswith("uvloop")


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
        # 100 ms: each pass yields the CPU, and on a loaded 2-core host (CI's test workers) a pass
        # can wait a few ms for it (20 ms once saw 6 passes): still over 10 passes.
        sent = threading.Timer(0.1, theirs.send, [b"answer"])
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
    assert polls > 10  # it polled through the 100 ms instead of sleeping
    assert elapsed < 1.0  # and gave the answer over when it came, not at the due time


def test_polling_stops_at_the_due_time() -> None:
    async def main() -> tuple[int, int, float]:
        eventloop.answer_due(OWNER, 0.02)
        cpu = time.process_time()
        await asyncio.sleep(0.025)  # (uvloop's timers have millisecond resolution: past the due time)
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


def test_a_closed_loops_spinner_does_not_keep_it() -> None:
    """Each loop's spinner is kept only as long as its loop (a spinner holding its loop kept both)."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    def factory() -> asyncio.AbstractEventLoop:
        loop = eventloop.new_loop()
        loops.append(weakref.ref(loop))
        return loop

    async def main() -> None:
        eventloop.answer_due(OWNER, 0.01)
        await asyncio.sleep(0.02)

    for _ in range(3):
        eventloop.run(main(), loop_factory=factory)
    gc.collect()
    assert len(loops) == 3 and [ref() for ref in loops] == [None, None, None]


def test_the_capacity_counted_is_what_this_process_may_use(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cgroup quota of 1.5 CPUs is 1.5 (the asker and its child do not both fit: no polling);
    no quota leaves the affinity's count."""
    monkeypatch.setattr(eventloop, "CPU_MAX", str(tmp_path / "cpu.max"))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    eventloop.cpu_capacity.cache_clear()
    try:
        assert eventloop.cpu_capacity() == min(1.5, len(os.sched_getaffinity(0)))
        (tmp_path / "cpu.max").write_text("max 100000\n")
        eventloop.cpu_capacity.cache_clear()
        assert eventloop.cpu_capacity() == len(os.sched_getaffinity(0))
    finally:
        eventloop.cpu_capacity.cache_clear()


def test_asyncios_own_loop_polls_as_well() -> None:
    async def main() -> tuple[bytes, int]:
        ours, theirs = socket.socketpair()
        reader, _ = await asyncio.open_connection(sock=ours)
        eventloop.answer_due(OWNER, 5.0)
        sent = threading.Timer(0.02, theirs.send, [b"answer"])
        sent.start()
        data = await reader.read(6)
        eventloop.nothing_due(OWNER)
        sent.join()
        theirs.close()
        return data, spinning().polls

    data, polls = eventloop.run(main(), loop_factory=asyncio.new_event_loop)
    assert data == b"answer" and polls > 10


def test_a_busy_host_is_not_polled_on(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The asker and the child it wakes need two cores: with as many runnable tasks as cores
    besides the child (which the count shows only once its CPU leaves idle), the question is
    waited for asleep (polling would take a core from the child, or from whoever waits); with one
    fewer, or when the child is known to be awake (polling for the question, counted already),
    it is polled for."""
    loadavg = tmp_path / "loadavg"
    cores = math.floor(eventloop.cpu_capacity())
    monkeypatch.setattr(eventloop, "LOADAVG", host(loadavg, cores))

    async def asked(runnable: int, peer_running: bool) -> int:
        eventloop.nothing_due(OWNER)  # (the case before's answer came)
        host(loadavg, runnable)
        await asyncio.sleep(0.01)  # past BUSY_READ_EVERY, and the poll before has stopped
        before = spinning().polls
        eventloop.answer_due(OWNER, 0.05, peer_running=peer_running)
        await asyncio.sleep(0.05)
        return spinning().polls - before

    async def main() -> tuple[int, int, int, int]:
        return (await asked(cores, False), await asked(cores - 1, False), await asked(cores, True),
                await asked(cores + 1, True))

    busy, idle, awake, crowded = run(main)
    assert (busy, crowded) == (0, 0), "no core for the child, or a task waiting: asleep"
    assert idle > 10 and awake > 10


def test_no_proc_counts_as_idle(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "LOADAVG", str(tmp_path / "absent"))

    async def main() -> int:
        eventloop.answer_due(OWNER, 0.02)
        await asyncio.sleep(0.02)
        return spinning().polls

    assert run(main) > 0
