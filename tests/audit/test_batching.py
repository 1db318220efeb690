"""The front door's group commit (bot/audit/batching.py) on both backends: concurrent appends share
transactions, every event ends durable and chained, each caller gets its own events back, and a
failed transaction fails exactly the callers whose events were in it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from bot.audit.batching import GroupCommitter
from bot.audit.events import ID_BYTES_MAX, AuditEvent, EventKind, StoredEvent, UnstorableEvent
from bot.audit.recorder import AUDIT_UNAVAILABLE, AuditWriter, refusal
from bot.audit.store import AuditUnavailable

WAIT = 60  # generous: a loaded machine


def events(caller: str, n: int = 2) -> list[AuditEvent]:
    return [
        AuditEvent(event_id=f"{caller}:{i}", ts=datetime.now(UTC), run_id=caller, step_id=None,
                   kind=EventKind.alert_received, actor="alertmanager", details={"i": i})
        for i in range(n)
    ]  # fmt: skip


class Watched:
    """The real store, counting the transactions it is asked for; an append holding an event
    whose id starts with `poison` fails as a store that is down would. With `gate`, the first
    append waits (in its thread) until the test lets it go, so a test can queue callers behind it."""

    def __init__(self, store: Any, gate: bool = False) -> None:
        self.store = store
        self.appends: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gate:
            self.gate.set()

    def append(self, batch: Sequence[AuditEvent], *, new_only: bool = False) -> list[StoredEvent]:
        self.appends.append([e.event_id for e in batch])
        self.entered.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        if any(e.event_id.startswith("poison") for e in batch):
            raise AuditUnavailable("audit store: cannot append to it: disk I/O error")
        return self.store.append(batch, new_only=new_only)


async def test_concurrent_appends_share_a_transaction_and_all_land_in_the_chain(store: Any) -> None:
    watched = Watched(store)
    committer = GroupCommitter(watched)  # type: ignore[arg-type]
    callers = [f"c{i:02d}" for i in range(40)]
    answers = await asyncio.gather(*(committer.append(events(c)) for c in callers))
    # All 40 queued before the writer first ran: one transaction (a direct append: 40).
    assert len(watched.appends) == committer.transactions == 1
    for caller, answer in zip(callers, answers):
        assert [e.event_id for e in answer] == [f"{caller}:0", f"{caller}:1"], "each caller gets its own events"
    stored = store.events()
    assert len(stored) == 80
    for caller in callers:  # in order, and contiguous in the chain
        seqs = [e.seq for e in stored if e.run_id == caller]
        assert seqs == [seqs[0], seqs[0] + 1]
    assert store.verify().ok


async def test_callers_arriving_during_a_write_go_together_in_the_next_one(store: Any) -> None:
    watched = Watched(store, gate=True)
    committer = GroupCommitter(watched)  # type: ignore[arg-type]
    first = asyncio.create_task(committer.append(events("first")))
    assert await asyncio.to_thread(watched.entered.wait, WAIT)
    later = [asyncio.create_task(committer.append(events(f"later{i}"))) for i in range(10)]
    while len(committer._queue) < 10:  # the ten are queued behind the write in flight
        await asyncio.sleep(0)
    watched.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), WAIT)
    assert [len(ids) for ids in watched.appends] == [2, 20], watched.appends
    assert len(store.events()) == 22 and store.verify().ok


async def test_a_failed_transaction_fails_exactly_the_callers_in_it(store: Any) -> None:
    watched = Watched(store, gate=True)
    committer = GroupCommitter(watched)  # type: ignore[arg-type]
    # Batch 1: the poisoned caller and four others; batch 2, queued while batch 1 is written: five more.
    first = [asyncio.create_task(committer.append(events(name))) for name in ("poison", "a1", "a2", "a3", "a4")]
    assert await asyncio.to_thread(watched.entered.wait, WAIT)
    second = [asyncio.create_task(committer.append(events(f"b{i}"))) for i in range(5)]
    while len(committer._queue) < 5:
        await asyncio.sleep(0)
    watched.gate.set()
    failed = await asyncio.wait_for(asyncio.gather(*first, return_exceptions=True), WAIT)
    assert all(isinstance(f, AuditUnavailable) and "disk I/O error" in str(f) for f in failed), failed
    written = await asyncio.wait_for(asyncio.gather(*second), WAIT)
    assert [len(w) for w in written] == [2] * 5
    assert sorted({e.run_id for e in store.events()}) == [f"b{i}" for i in range(5)], "nothing of batch 1 written"
    assert store.verify().ok
    # The committer goes on after a failure: the failed callers' retry is written.
    assert [e.event_id for e in await committer.append(events("a1"))] == ["a1:0", "a1:1"]


async def test_an_id_already_stored_or_queued_twice_is_written_once(store: Any) -> None:
    committer = GroupCommitter(store)
    await committer.append(events("seen", 1))
    again, twin_a, twin_b = await asyncio.gather(
        committer.append(events("seen", 1)), committer.append(events("twin", 1)), committer.append(events("twin", 1))
    )
    assert again == [], "a retried event is not new"
    assert [e.event_id for e in twin_a] == ["twin:0"] and twin_b == [], "the first caller of an id owns its write"
    assert [e.event_id for e in store.events()] == ["seen:0", "twin:0"]


async def test_a_caller_that_goes_away_still_has_its_events_written(store: Any) -> None:
    watched = Watched(store, gate=True)
    committer = GroupCommitter(watched)  # type: ignore[arg-type]
    waiter = asyncio.create_task(committer.append(events("gone")))
    assert await asyncio.to_thread(watched.entered.wait, WAIT)
    waiter.cancel()  # e.g. the HTTP client hung up while its request waited for the audit
    with pytest.raises(asyncio.CancelledError):
        await waiter
    watched.gate.set()
    assert [e.event_id for e in await asyncio.wait_for(committer.append(events("next", 1)), WAIT)] == ["next:0"]
    assert [e.event_id for e in store.events()] == ["gone:0", "gone:1", "next:0"]


async def test_a_batch_is_bounded_and_the_rest_follows_in_order(store: Any) -> None:
    watched = Watched(store)
    committer = GroupCommitter(watched, max_events=5)  # type: ignore[arg-type]
    await asyncio.gather(*(committer.append(events(f"c{i}", 2)) for i in range(6)))
    assert [len(ids) for ids in watched.appends] == [4, 4, 4], "whole callers only, never over the bound"
    assert [e.run_id for e in store.events()] == [f"c{i}" for i in range(6) for _ in range(2)]


# ---- episode writes, grouped on SQLite ------------------------------------------------------------


class CountingGroups:
    """The real SQLite store, counting its group transactions."""

    def __init__(self, store: Any) -> None:
        self.store, self.groups = store, 0

    def append(self, batch: Sequence[AuditEvent], *, new_only: bool = False) -> list[StoredEvent]:
        return self.store.append(batch, new_only=new_only)

    def group(self, calls: Sequence[Any]) -> list[Any]:
        self.groups += 1
        return self.store.group(calls)


async def test_concurrent_claims_and_appends_share_one_transaction_and_one_claim_wins(db) -> None:
    from bot.audit.store import SqliteAuditStore

    with SqliteAuditStore(db) as store:
        counting = CountingGroups(store)
        committer = GroupCommitter(counting)  # type: ignore[arg-type]
        claims = [committer.call(lambda s: s.claim_episode("episode-1")) for _ in range(20)]
        answers = await asyncio.gather(*claims, *(committer.append(events(f"c{i}")) for i in range(20)))
        assert counting.groups == 1, "claims and appends of concurrent callers: one transaction"
        assert [a.claimed for a in answers[:20]].count(True) == 1, "exactly one caller is told to start"
        assert len(store.events()) == 40 and store.verify().ok
        assert store.episode("episode-1").runs == 1


async def test_a_failing_call_in_a_group_is_rolled_back_alone(db) -> None:
    from bot.audit.store import SqliteAuditStore

    def half_done(store: Any) -> None:  # writes, then fails: none of it may stay
        store.append(events("half", 1))
        store.claim_episode("half")
        raise AuditUnavailable("audit store: cannot claim an episode in it: disk I/O error")

    with SqliteAuditStore(db) as store:
        committer = GroupCommitter(store)
        ok, bad, appended = await asyncio.gather(
            committer.call(lambda s: s.claim_episode("whole")), committer.call(half_done),
            committer.append(events("kept", 1)), return_exceptions=True,
        )  # fmt: skip
        assert ok.claimed and isinstance(bad, AuditUnavailable) and [e.event_id for e in appended] == ["kept:0"]
        assert [e.event_id for e in store.events()] == ["kept:0"]
        assert store.episode("half").runs == 0 and store.episode("whole").runs == 1
        assert store.verify().ok
        # the store is whole afterwards: a direct write works
        assert store.claim_episode("half").claimed


async def test_an_event_no_store_can_hold_fails_its_own_caller_and_never_its_batch(store: Any) -> None:
    """Attack: an alert key with a NUL, or of 3,000 random bytes, reached an event id. PostgreSQL
    refused it (SQLite took it), failing the whole group transaction it rode in, as "unavailable":
    every concurrent delivery got a 503 for as long as the poisoned one was retried. Both stores
    now refuse it alike, before any write, and only its own caller hears of it."""
    poisons = [
        [AuditEvent(**{**events("nul")[0].model_dump(), "event_id": "alert:a\x00b:received"})],
        [AuditEvent(**{**events("long")[0].model_dump(), "run_id": "r" + "\u00e9" * ID_BYTES_MAX})],
        [AuditEvent(**{**events("actor")[0].model_dump(), "actor": "alertmanager\x00"})],
    ]
    committer = GroupCommitter(store)
    callers = [f"ok{i}" for i in range(6)]
    answers = await asyncio.gather(*(committer.append(events(c)) for c in callers[:3]),
                                   *(committer.append(p) for p in poisons),
                                   *(committer.append(events(c)) for c in callers[3:]), return_exceptions=True)
    refused = answers[3:6]
    assert all(isinstance(a, UnstorableEvent) for a in refused), refused
    assert "NUL" in str(refused[0]) and f"over {ID_BYTES_MAX} bytes" in str(refused[1]) and "actor" in str(refused[2])
    assert not [a for a in answers[:3] + answers[6:] if isinstance(a, BaseException)], answers
    assert sorted({e.run_id for e in store.events()}) == callers and store.verify().ok
    for poison in poisons:  # the store itself refuses it too, alike on both backends, writing nothing
        with pytest.raises(UnstorableEvent):
            store.append(poison)
    assert len(store.events()) == 2 * len(callers)


def test_a_refusal_records_the_hostile_ids_it_was_given_as_a_store_can_hold_them(store: Any) -> None:
    """A forged button's 100,000-character run id (or one with a NUL) is still refused on record:
    its start, length and digest, not an event no store can hold (which was never written)."""
    huge, nul = "r" * 100_000, "run\x00id"
    events_ = [refusal("slack:U0BOB", "vote", "no such run", run_id=huge, key="k1"),
               refusal("slack:U0BOB\x00", "vote", "no such run", run_id=nul, key="k2\x00")]
    stored = store.append(events_)
    assert stored[0].run_id.startswith("r" * 200 + "... (100000 characters, sha256 ")
    assert stored[1].run_id == "run\ufffdid... (6 characters, sha256 " + stored[1].run_id.rsplit(" ", 1)[1]
    assert "\x00" not in stored[1].actor + stored[1].event_id and store.verify().ok


async def test_the_workers_writer_groups_concurrent_activity_writes(store: Any) -> None:
    """The worker's AuditWriter (every action, policy and audit activity writes through it) uses
    the same group commit: 50 approvals at once used to be 50 transactions, each an fsync and a
    turn at the store's lock. Each write still returns committed, and a batch the store refuses
    fails its activities with the retryable AuditUnavailable they always raised."""
    watched = Watched(store, gate=True)
    writer = AuditWriter(watched)  # type: ignore[arg-type]
    first = asyncio.create_task(writer.write(events("w00")))
    assert await asyncio.to_thread(watched.entered.wait, WAIT)
    rest = [asyncio.create_task(writer.write(events(f"w{i:02d}"))) for i in range(1, 50)]
    await asyncio.sleep(0.05)
    watched.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
    assert len(watched.appends) == 2, "the first write, then the 49 that queued behind it, together"
    assert {e.run_id for e in store.events()} == {f"w{i:02d}" for i in range(50)}

    down = [writer.write(events("poison-a")), writer.write(events("poison-b"))]
    for outcome in await asyncio.gather(*down, return_exceptions=True):
        assert isinstance(outcome, ApplicationError) and outcome.type == AUDIT_UNAVAILABLE, outcome
