"""bot/heap.py: a started process's objects are left out of the cyclic collector's walks."""

from __future__ import annotations

import gc
import weakref

from bot.heap import frozen_start


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_what_is_alive_at_the_start_is_frozen_while_the_block_runs_and_unfrozen_after() -> None:
    assert gc.get_freeze_count() == 0
    kept = [Node() for _ in range(100)]
    with frozen_start():
        assert gc.get_freeze_count() >= len(kept)
    assert gc.get_freeze_count() == 0


def test_garbage_made_while_starting_is_freed_not_frozen() -> None:
    """A cycle dropped before the start would never be collected once frozen: the start collects first."""
    dropped = Node()
    gone = weakref.ref(dropped)
    del dropped
    with frozen_start():
        assert gone() is None


def test_what_the_process_builds_after_the_start_is_still_collected() -> None:
    with frozen_start():
        later = Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None
