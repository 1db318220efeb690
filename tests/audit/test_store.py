"""Appending: seq and chain, idempotency by event_id, order, reads, and the event model."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.audit.events import GENESIS_HASH, AuditEvent, EventKind, StoredEvent
from bot.audit.store import ID_CHUNK, SqliteAuditStore, default_path
from bot.settings import Settings
from tests.audit.support import event


def test_seq_counts_from_one_and_each_hash_links_to_the_one_before(store: SqliteAuditStore, db: Path) -> None:
    first = store.append([event(1), event(2)])
    second = store.append([event(3)])

    stored = first + second
    assert [e.seq for e in stored] == [1, 2, 3]
    assert stored[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in stored[1:]] == [e.hash for e in stored[:-1]]
    assert all(e.hash == e.expected_hash() and len(e.hash) == 64 for e in stored)
    assert db.is_file()  # parent directories were created
    assert store.verify().ok


def test_the_same_event_id_is_stored_once_and_returned_as_stored(store: SqliteAuditStore) -> None:
    [original] = store.append([event(1)])
    retry = event(1, ts=original.ts + timedelta(seconds=5), details={"changed": True})

    [again] = store.append([retry])

    assert again == original  # the first write wins; nothing was rewritten
    assert len(store.events()) == 1


def test_a_batch_mixing_old_and_new_ids_writes_only_the_new_ones_in_order(store: SqliteAuditStore) -> None:
    old = store.append([event(1), event(2)])

    result = store.append([event(3), event(1), event(4), event(2), event(3)])

    assert [e.seq for e in result] == [3, old[0].seq, 4, old[1].seq, 3]
    assert result[1] == old[0] and result[3] == old[1] and result[4] == result[0]
    assert [e.event_id for e in store.events()] == [event(n).event_id for n in (1, 2, 3, 4)]
    assert store.verify().ok


def test_a_batch_larger_than_one_id_lookup_still_finds_every_stored_id(store: SqliteAuditStore) -> None:
    """The ids already stored are read in chunks of ID_CHUNK: one stored in a later chunk counts too."""
    late = ID_CHUNK + 7
    old = store.append([event(late)])

    result = store.append([event(n) for n in range(1, 2 * ID_CHUNK + 1)], new_only=True)

    assert len(result) == 2 * ID_CHUNK - 1 and event(late).event_id not in {e.event_id for e in result}
    assert len(store.events()) == 2 * ID_CHUNK and store.events()[0] == old[0]
    assert store.verify().ok


def test_events_are_read_by_id_many_at_once(store: SqliteAuditStore) -> None:
    """`get_events`: the stored ones among the ids (past one id lookup's chunk), as `get_event` reads each."""
    stored = store.append([event(n) for n in range(1, ID_CHUNK + 3)])
    wanted = [e.event_id for e in stored[::2]] + ["no-such-event"]
    found = store.get_events(wanted)
    assert sorted(found) == sorted(wanted[:-1])
    assert all(found[i] == store.get_event(i) for i in found)
    assert store.get_events([]) == {}


def test_events_keep_the_given_order_not_the_timestamp_order(store: SqliteAuditStore) -> None:
    batch = [event(5), event(1), event(3)]

    store.append(batch)

    assert [e.event_id for e in store.events()] == [e.event_id for e in batch]


def test_stored_events_read_back_equal_what_was_appended(store: SqliteAuditStore) -> None:
    ts = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    original = event(1, ts=ts, details={"b": [1, 2.5, None], "a": {"ü": "${secret:TOKEN}"}})

    [stored] = store.append([original])
    [read] = store.events()

    assert read == stored
    assert read.ts == ts and read.ts.utcoffset() == timedelta(0)
    assert read.details == {"a": {"ü": "${secret:TOKEN}"}, "b": [1, 2.5, None]}
    assert read.model_dump(include=set(AuditEvent.model_fields)) == original.model_dump()


def test_reads_filter_by_run_page_by_seq_and_take_the_last(store: SqliteAuditStore) -> None:
    store.append([event(1, run_id="a"), event(2, run_id="b"), event(3, run_id="a"), event(4, run_id=None)])

    assert [e.seq for e in store.events(run_id="a")] == [1, 3]
    assert [e.seq for e in store.events(after_seq=2)] == [3, 4]
    assert [e.seq for e in store.events(limit=2)] == [1, 2]
    assert [e.seq for e in store.last(2)] == [3, 4]
    assert [e.seq for e in store.last(5, run_id="a")] == [1, 3]
    assert store.has_run("a") and not store.has_run("zzz")
    assert store.append([]) == []


def test_the_table_refuses_updates_and_deletes(store: SqliteAuditStore, db: Path) -> None:
    store.append([event(1)])
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_events SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_events")
    conn.close()


async def test_threads_of_one_process_share_the_store(store: SqliteAuditStore) -> None:
    """Activities call append through asyncio.to_thread."""
    await asyncio.gather(*(asyncio.to_thread(store.append, [event(n), event(n + 1000)]) for n in range(50)))

    assert len(store.events()) == 100
    assert store.verify().ok


def test_a_second_store_on_the_same_file_continues_the_chain(store: SqliteAuditStore, db: Path) -> None:
    store.append([event(1)])
    with SqliteAuditStore(db) as other:
        [stored] = other.append([event(2)])
        assert other.append([event(1)])[0].seq == 1
    assert stored.seq == 2
    assert store.verify().ok and store.verify().checked == 2


def test_the_event_model_refuses_naive_times_unknown_kinds_and_non_json_details() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        event(1, ts=datetime(2025, 1, 1))
    with pytest.raises(ValidationError, match="no UTC time in range"):  # (was an OverflowError, not a refusal)
        AuditEvent.model_validate({"event_id": "x", "ts": "0001-01-01T00:00:00+01:00", "kind": "step_started",
                                   "actor": "a"})
    with pytest.raises(ValidationError, match="kind"):
        event(1, kind="step_exploded")
    with pytest.raises(ValidationError, match="JSON"):
        event(1, details={"x": float("nan")})
    with pytest.raises(ValidationError):
        event(1, event_id="")


def test_every_kind_design_md_lists_exists() -> None:
    listed = (
        "alert_received alert_outcome slack_command run_started step_started step_succeeded step_failed "
        "step_skipped policy_decision approval_requested approval_vote approval_timeout compensation_started "
        "compensation_succeeded compensation_failed run_finished"
    ).split()
    assert {kind.value for kind in EventKind} >= set(listed)


def test_events_survive_a_json_round_trip_for_temporal() -> None:
    original = StoredEvent(**event(1).model_dump(), seq=1, prev_hash=GENESIS_HASH, hash="f" * 64)
    assert StoredEvent.model_validate_json(original.model_dump_json()) == original
    assert original.model_dump(mode="json")["ts"] == "2025-03-14T09:26:54.589000Z"


def test_default_path_is_in_the_data_dir(tmp_path: Path) -> None:
    assert default_path(Settings(data_dir=tmp_path)) == tmp_path / "audit.db"


def test_run_last_recorded_is_the_newest_start_or_end_of_that_run_only(store) -> None:
    """What admission reads for every start (bot/engine/admission.py), on either backend."""
    from datetime import UTC, datetime, timedelta

    from bot.audit.events import AuditEvent, EventKind

    at = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)

    def make(n: int, run: str, kind: EventKind) -> AuditEvent:
        return AuditEvent(event_id=f"{run}:{n}", ts=at + timedelta(seconds=n), run_id=run, kind=kind, actor="system")

    assert store.run_last_recorded("r1") is None
    store.append([make(1, "r1", EventKind.run_started), make(2, "r1", EventKind.step_started),
                  make(3, "r1", EventKind.run_finished), make(4, "r1", EventKind.step_output),
                  make(9, "r2", EventKind.run_started)])
    assert store.run_last_recorded("r1") == at + timedelta(seconds=3)
    assert store.run_last_recorded("r2") == at + timedelta(seconds=9)


def test_run_ended_is_an_end_of_that_run_recorded_since_the_given_time(store) -> None:
    """What a front door reads for a repeat delivery of an episode it knows (bot/alerts/receiver.py),
    on either backend: an earlier execution's end, before `since`, is not this run's."""
    from datetime import UTC, datetime, timedelta

    from bot.audit.events import AuditEvent, EventKind

    at = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)

    def make(n: int, run: str, kind: EventKind) -> AuditEvent:
        return AuditEvent(event_id=f"{run}:{n}", ts=at + timedelta(seconds=n), run_id=run, kind=kind, actor="system")

    store.append([make(1, "r1", EventKind.run_started), make(2, "r2", EventKind.run_finished),
                  make(3, "r1", EventKind.step_succeeded)])
    assert not store.run_ended("r1", at)  # started, not ended; another run's end is not its own
    assert store.run_ended("r2", at + timedelta(seconds=2))
    assert not store.run_ended("r2", at + timedelta(seconds=2, microseconds=1))
    store.append([make(5, "r1", EventKind.run_finished)])
    assert store.run_ended("r1", at) and not store.run_ended("r1", at + timedelta(seconds=6))


def test_run_last_recorded_leaves_out_the_asking_executions_own_events(store) -> None:
    """A retried first workflow task asks admission again after its run wrote `run_started`
    (a locked playbook flushes it in that task): its own events are no earlier run. Another
    execution's under the same run id still are."""
    from datetime import UTC, datetime

    from bot.audit.events import AuditEvent, EventKind

    at = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
    store.append([AuditEvent(event_id="r_1/abc:started", ts=at, run_id="r_1", kind=EventKind.run_started, actor="system")])
    assert store.run_last_recorded("r_1", "abc") is None
    assert store.run_last_recorded("r_1", "abd") == at
    assert store.run_last_recorded("r_1", "ab") == at  # a prefix of the execution is another one
    assert store.run_last_recorded("r_1") == at


def test_run_last_recorded_counts_a_reset_of_the_asking_run_as_that_run(store) -> None:
    """A run reset in Temporal writes under `<first execution>~<this one>` (bot/engine/spool.py):
    that is the asking run again, not an earlier run under its id; another run's reset is not."""
    from datetime import UTC, datetime

    from bot.audit.events import AuditEvent, EventKind

    at = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
    store.append([AuditEvent(event_id="r_1/abc~def:run:run_started", ts=at, run_id="r_1", kind=EventKind.run_started,
                             actor="system")])
    assert store.run_last_recorded("r_1", "abc") is None
    assert store.run_last_recorded("r_1", "abc~ghi") is None  # asked by another reset of the chain
    assert store.run_last_recorded("r_1", "abd") == at
    assert store.run_last_recorded("r_1", "ab") == at


def test_the_trail_and_its_directory_are_the_owners_alone(tmp_path: Path) -> None:
    """Red team: DATA_DIR was created 0755 and audit.db (with -wal and -shm) 0644, readable by every
    local user, while it holds rendered args, alerts, votes and whole step outputs."""
    old = os.umask(0o022)
    try:
        store = SqliteAuditStore(tmp_path / "data" / "audit.db")
        store.append([event(1)])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600, name
    store.close()
