"""What every long-running process (`dev`, `serve`, `worker`) shares: its stop signal, its
playbooks (loaded at start, reloaded while it runs) and uvicorn inside its event loop.

Nothing here imports the front door (FastAPI, Bolt) at import time: the worker process loads only
what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from contextlib import AsyncExitStack
from typing import Any, Callable

import structlog

from bot.playbook.loader import load_directory
from bot.playbook.reload import LiveCatalog, directory_signature
from bot.settings import Settings

log = structlog.get_logger(__name__)


def load_catalog(settings: Settings) -> LiveCatalog:
    """The playbooks (a broken one stops the process at start, naming file and line; later edits
    are reloaded: bot/playbook/reload.py); warnings are logged."""
    signature = directory_signature(settings.playbooks_dir)  # before reading: an edit meanwhile is seen
    catalog = load_directory(settings.playbooks_dir)
    for warning in catalog.warnings():
        log.warning("playbook warning", warning=warning)
    return LiveCatalog(settings.playbooks_dir, catalog, signature=signature)


def watch_catalog(stack: AsyncExitStack, settings: Settings, live: LiveCatalog, stop: asyncio.Event,
                  on_hangup: Callable[[], None] | None = None, policy: Any = None) -> None:
    """Reload `live` every PLAYBOOKS_RELOAD_INTERVAL seconds and on SIGHUP while the process runs;
    SIGHUP also has `policy` read its files again at its next question (`recheck`)."""
    interval = settings.playbooks_reload_interval or None  # None: SIGHUP only
    recheck = getattr(policy, "recheck", None)

    def hung_up() -> None:
        if recheck is not None:
            recheck()
        if on_hangup is not None:
            on_hangup()

    task = asyncio.create_task(live.watch(interval, stop, hung_up))

    async def stopped() -> None:
        stop.set()
        with contextlib.suppress(Exception):
            await task

    stack.push_async_callback(stopped)


def stop_event() -> asyncio.Event:
    """Set on SIGINT/SIGTERM so every service shuts down in order, not mid-write."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


class Http:
    """uvicorn inside our loop (the front door's, or a worker's metrics)."""

    def __init__(self, settings: Settings, app: Any) -> None:
        # Here, not at the top: a worker without a metrics port never loads uvicorn or FastAPI.
        import uvicorn
        from fastapi import FastAPI

        from bot.http_limits import BoundedHttpTools
        from bot.server import DirectRoutes

        config = uvicorn.Config(
            DirectRoutes(app) if isinstance(app, FastAPI) else app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            lifespan="off",
            http=BoundedHttpTools,  # a bounded head and a deadline for each request (bot/http_limits.py)
        )
        self.server: Any = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None
        self.task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError(f"HTTP server on {self.server.config.host}:{self.server.config.port} did not start")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, timeout=5)
