"""Worker, front door and CLI append to one file from different processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from bot.audit.store import SqliteAuditStore
from tests.audit.support import append_many

COUNT = 200
NAMES = ("a", "b")


def test_two_processes_appending_at_once_keep_one_intact_chain(db: Path) -> None:
    # spawn: no forked copy of the test process (and any threads it has) in the children.
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(NAMES))
    workers = [context.Process(target=append_many, args=(str(db), name, COUNT, start)) for name in NAMES]
    for worker in workers:
        worker.start()  # both wait at the barrier, then open a file that does not exist yet
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]

    with SqliteAuditStore(db) as store:
        events = store.events()
        result = store.verify()

    assert (result.ok, result.checked) == (True, 2 * COUNT), result.reason
    assert [e.seq for e in events] == list(range(1, 2 * COUNT + 1))
    runs = [e.run_id for e in events]
    assert sum(a != b for a, b in zip(runs, runs[1:])) > 1, "the processes never overlapped"
    for name in NAMES:  # each process's own events stay in its order
        assert [e.details["n"] for e in events if e.run_id == name] == list(range(COUNT))
