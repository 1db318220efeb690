"""The latency bench's target: the HTTP server a first action (or a gated step) calls, living in the
load process, noting when each request arrives by the clock the load sends by (time.perf_counter):
a latency is two readings of one clock in one process.

Requests go to `/hit/{key}`; the first arrival of a key counts (a retry does not move it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiohttp import web


class Target:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _hit(self, request: web.Request) -> web.Response:
        now = time.perf_counter()
        self.arrivals.setdefault(request.match_info["key"], now)
        self._arrived.set()
        return web.Response(text="ok")

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_route("*", "/hit/{key}", self._hit)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait(self, keys: Iterable[str], timeout: float) -> set[str]:
        """Until every key has arrived or `timeout` seconds pass; returns the keys still missing."""
        missing = set(keys) - self.arrivals.keys()
        deadline = time.monotonic() + timeout
        while missing and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 1.0))
            except TimeoutError:
                pass
            missing -= self.arrivals.keys()
        return missing
