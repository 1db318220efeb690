"""The cyclic garbage collector in the bot's long-running processes: what a process built to start
is left out of its collections.

A full collection walks every tracked object, and a worker or front door holds some 150,000 once
started (modules, pydantic schemas, Temporal's protos, the SDKs), none of which will ever be
garbage. In a worker under a burst of Approve clicks (bench/latency.py) one full collection took
62 ms: a pause of the worker's one Python thread in the middle of the burst. Frozen once the
process is ready, they are no longer walked; a collection walks only what the process built since
(runs, requests). Freezing leaves reference counting alone, so frozen objects dropped later are
still freed, unless they sit in a reference cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_start() -> Iterator[None]:
    """Freeze what is alive now (after a collection: start-up's garbage is freed, not kept), for
    as long as the block runs; unfrozen after it, so a process that serves again (tests) does not
    keep what it built for the last one."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
