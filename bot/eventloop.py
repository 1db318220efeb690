"""The event loop the bot's processes run: uvloop (libuv), which spends less CPU per callback,
socket read and timer than asyncio's own loop; and on any loop, while an answer is due within a
millisecond, polling for it instead of sleeping.

Why uvloop: the bot is CPU-bound under a burst (the front door, the worker and Temporal share the
host's cores), and its processes are event-loop work throughout: HTTP on both sides, gRPC
completions, subprocess pipes. Measured on 50 Approve clicks at once (bench/latency.py), the
worker's slowest click moved from 1.77-2.08x the floor to 1.50-1.79x with nothing else changed.

Why poll: the policy child answers a question in about 0.4 ms. A loop that sleeps in epoll for
that long is woken from an idle CPU, and on the VMs we measured (cpuidle driver haltpoll) that
wake-up alone is p50 74 µs, p99 255 µs: more than a decision's whole budget above rego-cpp's own
time. While an owner (bot.policy.rego_process) has said an answer is due, a callback keeps itself
ready on the loop, so the loop looks for I/O with a zero timeout on each pass instead of sleeping,
until nothing is due or the due time passes. It yields the CPU to any other runnable thread on
each pass. Its cost is CPU time: at most `within` per question, and owners stop asking when their
answers come slower than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # (a platform without its wheel: asyncio's own loop, polling as well)
    uvloop = None


LOADAVG = "/proc/loadavg"
CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>", or "max <period>"
# Seconds a reading of the host's runnable tasks is reused (a read costs about 10 µs): about two
# answers' time, so a burst that begins is seen within a millisecond. (0.2 ms measured worse on the
# policy bench, p99 0.79-0.88 ms against 0.69-0.90; 10 ms let a burst's first questions poll.)
BUSY_READ_EVERY = 0.001


class Spinner:
    """One loop's owners with an answer due, and the callback that keeps the loop awake for them.
    It holds no reference to its loop (the loop is the key it is kept under, weakly)."""

    def __init__(self) -> None:
        self.due: dict[object, float] = {}  # owner -> time.monotonic() its answer is due by
        self.polls = 0  # passes the loop made awake for an answer (for tests)
        self._scheduled = False  # _poll is on the loop's ready queue (no handle kept: it holds the loop)
        self._runnable: tuple[float, int] = (-1.0, 0)  # (when read, the host's runnable tasks)

    def want(self, owner: object, within: float, peer_running: bool = False) -> None:
        now = time.monotonic()
        if self._host_busy(now, peer_running):
            return
        self.due[owner] = now + within
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._poll)

    def drop(self, owner: object) -> None:
        self.due.pop(owner, None)

    def _host_busy(self, now: float, peer_running: bool) -> bool:
        """A poll would take a core from someone: the host's runnable tasks (this one among them),
        plus the peer that answers when it is not running yet, outnumber the cores this process
        may use. The peer is counted here, not read: a task woken on an idle CPU shows in the
        count only once that CPU has left idle, after the question (`peer_running`: it is awake
        already, polling for the question, and counted). So the asker and its child on a 2-core
        host poll; one more runnable task anywhere, or a fractional CPU quota below two, and the
        answer is waited for asleep. Read at most every BUSY_READ_EVERY; where there is no /proc,
        never busy."""
        read_at, runnable = self._runnable
        if now - read_at >= BUSY_READ_EVERY:
            try:
                with open(LOADAVG, "rb") as f:
                    runnable = int(f.read().split()[3].split(b"/")[0])
            except (OSError, ValueError, IndexError):
                return False
            self._runnable = (now, runnable)
        return runnable + (0 if peer_running else 1) > cpu_capacity()

    def _poll(self) -> None:
        """Ready again for the loop's next pass (so that pass does not sleep), until the latest
        due time; a pass with other work ready costs this one call."""
        self._scheduled = False
        if not self.due or time.monotonic() >= max(self.due.values()):
            return
        self.polls += 1
        os.sched_yield()
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._poll)


@functools.cache
def cpu_capacity() -> float:
    """The CPU time this process may use, in cores: its affinity, or a cgroup v2 quota if lower, as
    the fraction it is (a quota of 1.5 CPUs does not run two busy tasks: polling there spends the
    quota the child needs, and the cgroup is throttled). /proc/loadavg counts the whole host, so
    with fewer cores than the host the test errs towards busy: no polling."""
    capacity = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    with contextlib.suppress(OSError, ValueError, IndexError, ZeroDivisionError):
        quota, period = Path(CPU_MAX).read_text().split()[:2]
        if quota != "max":
            capacity = min(capacity, int(quota) / int(period))
    return capacity


_spinners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Spinner] = weakref.WeakKeyDictionary()


def spinner() -> Spinner:
    """The running loop's spinner."""
    loop = asyncio.get_running_loop()
    found = _spinners.get(loop)
    if found is None:
        found = _spinners[loop] = Spinner()
    return found


def answer_due(owner: object, within: float, peer_running: bool = False) -> None:
    """`owner` has just asked for an answer it expects within `within` seconds: the running loop
    polls for it until then, unless the host has no core for it (`peer_running`: the one that
    answers is known to be on a core already)."""
    spinner().want(owner, within, peer_running)


def nothing_due(owner: object) -> None:
    """`owner` waits for no answer now."""
    spinner().drop(owner)


def new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], loop_factory: Callable[[], asyncio.AbstractEventLoop] = new_loop) -> T:
    """asyncio.run on the bot's loop."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
