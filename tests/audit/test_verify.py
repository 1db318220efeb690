"""Tamper detection: whoever edits the file directly (triggers dropped) is named by seq."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.audit.events import chain_hash
from bot.audit.store import SqliteAuditStore
from tests.audit.support import event, raw, rehash_from

MIDDLE = 3
FIELDS = ("event_id", "ts", "run_id", "step_id", "kind", "actor", "details", "prev_hash", "hash")


@pytest.fixture
def filled(store: SqliteAuditStore) -> SqliteAuditStore:
    store.append([event(n, details={"action": "core.log", "note": f"ünïcode {n}"}) for n in range(1, 6)])
    assert store.verify().ok
    return store


def test_an_empty_store_verifies(store: SqliteAuditStore) -> None:
    result = store.verify()
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 0, None)


@pytest.mark.parametrize("field", FIELDS)
def test_changing_any_character_of_a_field_is_named_by_its_seq(filled: SqliteAuditStore, db: Path, field: str) -> None:
    conn = raw(db)
    conn.execute("DROP INDEX audit_events_event_id")  # so an id may collide with a neighbour's
    [original] = conn.execute(f"SELECT {field} FROM audit_events WHERE seq = ?", (MIDDLE,)).fetchone()
    for i, char in enumerate(original):
        changed = original[:i] + chr(ord(char) ^ 1) + original[i + 1 :]
        conn.execute(f"UPDATE audit_events SET {field} = ? WHERE seq = ?", (changed, MIDDLE))

        result = filled.verify()

        assert not result.ok, f"{field}[{i}] changed unnoticed"
        assert result.first_bad_seq == MIDDLE and result.checked == MIDDLE - 1
        assert result.reason is not None and result.reason.startswith(f"seq {MIDDLE}: ")
        conn.execute(f"UPDATE audit_events SET {field} = ? WHERE seq = ?", (original, MIDDLE))
    assert filled.verify().ok
    conn.close()


def test_the_reason_says_what_kind_of_change(filled: SqliteAuditStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (MIDDLE,))
    assert filled.verify().reason == f"seq {MIDDLE}: hash mismatch (stored event was changed)"
    conn.execute("UPDATE audit_events SET actor = 'system', prev_hash = ? WHERE seq = ?", ("0" * 64, MIDDLE))
    assert filled.verify().reason == f"seq {MIDDLE}: prev_hash does not match seq {MIDDLE - 1}"
    conn.close()


def test_reformatted_details_that_parse_the_same_are_still_a_change(filled: SqliteAuditStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("UPDATE audit_events SET details = replace(details, ':', ': ') WHERE seq = ?", (MIDDLE,))
    assert filled.verify().first_bad_seq == MIDDLE
    conn.close()


def test_a_deleted_middle_row_is_named_as_a_gap(filled: SqliteAuditStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("DELETE FROM audit_events WHERE seq = ?", (MIDDLE,))
    result = filled.verify()
    assert (result.ok, result.first_bad_seq, result.checked) == (False, MIDDLE, MIDDLE - 1)
    assert result.reason == "seq 3: missing (gap: seq 2 is followed by seq 4; rows were deleted)"
    conn.close()


def test_a_renumbered_row_is_named_as_a_gap(filled: SqliteAuditStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("UPDATE audit_events SET seq = 30 WHERE seq = ?", (MIDDLE,))
    assert filled.verify().first_bad_seq == MIDDLE
    conn.close()


def test_rows_cut_off_the_end_are_noticed(filled: SqliteAuditStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("DELETE FROM audit_events WHERE seq >= 4")
    result = filled.verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert result.reason == "seq 4: missing (the log ends at seq 3 but seq 5 was written)"
    conn.close()


def test_a_deleted_first_row_is_noticed(filled: SqliteAuditStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("DELETE FROM audit_events WHERE seq = 1")
    assert filled.verify().reason == "seq 1: missing (gap: the start is followed by seq 2; rows were deleted)"
    conn.close()


def test_a_duplicated_event_id_is_noticed_even_with_a_valid_chain(filled: SqliteAuditStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("DROP INDEX audit_events_event_id")
    event_id = event(2).event_id
    seq, prev = 6, conn.execute("SELECT hash FROM audit_events WHERE seq = 5").fetchone()[0]
    row = dict(seq=seq, event_id=event_id, ts="2025-03-14T09:27:00.000000Z", run_id="run-1", step_id="step-2",
               kind="step_started", actor="system", details="{}", prev_hash=prev)  # fmt: skip
    conn.execute(
        "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row.values(), chain_hash(**row))
    )
    result = filled.verify()
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert result.reason == f"seq 6: event_id duplicated ({event_id!r} was stored before)"
    conn.close()


def test_a_rewrite_with_recomputed_hashes_changes_the_head_hash(filled: SqliteAuditStore, db: Path) -> None:
    """The chain alone cannot see a careful forger; a head hash published elsewhere can."""
    published = filled.verify().head_hash
    conn = raw(db)
    conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (MIDDLE,))
    rehash_from(conn, MIDDLE)
    result = filled.verify()
    assert result.ok and result.head_hash != published
    conn.close()
