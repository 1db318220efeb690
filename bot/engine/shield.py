"""Workflow-side work that must finish whatever cancels arrive: undos, a failed item's own undo,
the run's last record. Deterministic (asyncio only), so workflow code may use it."""

from __future__ import annotations

import asyncio
from typing import Any


async def uncancellable(coro: Any) -> Any:
    """Run `coro` to the end; a cancel that arrives meanwhile is absorbed, not lost to the caller's
    state (the caller checks `_cancel_requested()` itself)."""
    task = asyncio.ensure_future(coro)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                return task.result()
