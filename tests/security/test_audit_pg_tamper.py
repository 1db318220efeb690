"""Attacks on the PostgreSQL audit trail by someone holding the database owner's role.

The triggers stop UPDATE, DELETE and TRUNCATE; an owner who drops them is caught by `verify`
(an edited row, a gap, a cut-off end); one who rewrites the whole table with recomputed hashes
and a matching head is caught by the signed checkpoints kept outside the database.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bot.audit.checkpoint import Checkpointer, check_checkpoints
from bot.audit.events import GENESIS_HASH, chain_hash
from bot.audit.postgres import PostgresAuditStore
from bot.identity.proofs import Keyring
from tests.audit.support import event

KEY = b"k" * 32
DROP_TRIGGERS = (
    "ALTER TABLE audit_events DISABLE TRIGGER USER",
    "ALTER TABLE audit_head DISABLE TRIGGER USER",
)


@pytest.fixture
def filled(pg_url: str) -> PostgresAuditStore:
    store = PostgresAuditStore(pg_url)
    store.append([event(n) for n in range(1, 6)])
    assert store.verify().ok
    yield store
    store.close()


@pytest.fixture
def owner(pg_url: str) -> psycopg.Connection:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize(
    "attack",
    [
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3",
        "DELETE FROM audit_events WHERE seq = 5",
        "TRUNCATE audit_events",
        "UPDATE audit_head SET seq = 2",
        "DELETE FROM audit_head",
        "TRUNCATE audit_head",
    ],
)
def test_the_owner_cannot_change_rows_while_the_triggers_stand(
    filled: PostgresAuditStore, owner: psycopg.Connection, attack: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only|only moves forward"):
        owner.execute(attack)
    assert filled.verify().ok and filled.verify().checked == 5


def test_an_update_with_the_triggers_dropped_is_named_by_seq(filled: PostgresAuditStore, owner: psycopg.Connection) -> None:
    owner.execute(DROP_TRIGGERS[0])
    owner.execute("UPDATE audit_events SET details = replace(details, 'core.log', 'core.lag') WHERE seq = 3")

    result = filled.verify()

    assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 2)
    assert result.reason == "seq 3: hash mismatch (stored event was changed)"


def test_a_deleted_middle_row_is_a_gap(filled: PostgresAuditStore, owner: psycopg.Connection) -> None:
    owner.execute(DROP_TRIGGERS[0])
    owner.execute("DELETE FROM audit_events WHERE seq = 2")
    assert filled.verify().reason == "seq 2: missing (gap: seq 1 is followed by seq 3; rows were deleted)"


def test_a_cut_off_end_is_caught_by_the_high_water_mark(filled: PostgresAuditStore, owner: psycopg.Connection) -> None:
    owner.execute(DROP_TRIGGERS[0])
    owner.execute("DELETE FROM audit_events WHERE seq >= 4")

    result = filled.verify()

    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert result.reason == "seq 4: missing (the log ends at seq 3 but seq 5 was written)"
    assert filled.append([event(9)])[0].seq == 6  # the chain goes on past the hole; verify keeps naming it
    assert filled.verify().first_bad_seq == 4


def test_a_duplicated_event_id_is_caught_with_the_index_gone(filled: PostgresAuditStore, owner: psycopg.Connection) -> None:
    owner.execute("DROP INDEX audit_events_event_id")
    owner.execute(DROP_TRIGGERS[1])
    prev = owner.execute("SELECT hash FROM audit_events WHERE seq = 5").fetchone()[0]
    row = dict(seq=6, event_id=event(2).event_id, ts="2025-03-14T09:27:00.000000Z", run_id="run-1", step_id="step-2",
               kind="step_started", actor="system", details="{}", prev_hash=prev)  # fmt: skip
    owner.execute("INSERT INTO audit_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", (*row.values(), chain_hash(**row)))
    owner.execute("UPDATE audit_head SET seq = 6, hash = %s", (chain_hash(**row),))

    result = filled.verify()

    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert result.reason == f"seq 6: event_id duplicated ({event(2).event_id!r} was stored before)"


def test_a_rewrite_that_leaves_the_recorded_head_is_caught(filled: PostgresAuditStore, owner: psycopg.Connection) -> None:
    head = owner.execute("SELECT seq, hash FROM audit_head").fetchone()
    rewrite_everything(owner)
    owner.execute("UPDATE audit_head SET seq = %s, hash = %s", head)  # the forger forgot (or could not) move it

    result = filled.verify()

    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert result.reason == "seq 5: hash differs from the head recorded when it was appended (the table was rewritten)"


def rewrite_everything(owner: psycopg.Connection, actor: str = "mallory", keep: int | None = None) -> None:
    """The careful forger: triggers off, rows changed (or cut), every hash and the head recomputed."""
    for statement in DROP_TRIGGERS:
        owner.execute(statement)
    if keep is not None:
        owner.execute("DELETE FROM audit_events WHERE seq > %s", (keep,))
    owner.execute("UPDATE audit_events SET actor = %s", (actor,))
    prev = GENESIS_HASH
    rows = owner.execute(
        "SELECT seq, event_id, ts, run_id, step_id, kind, actor, details FROM audit_events ORDER BY seq"
    ).fetchall()
    for seq, event_id, ts, run_id, step_id, kind, who, details in rows:
        digest = chain_hash(seq=seq, event_id=event_id, ts=ts, run_id=run_id, step_id=step_id, kind=kind,
                            actor=who, details=details, prev_hash=prev)  # fmt: skip
        owner.execute("UPDATE audit_events SET prev_hash = %s, hash = %s WHERE seq = %s", (prev, digest, seq))
        prev = digest
    owner.execute("UPDATE audit_head SET seq = %s, hash = %s", (len(rows), prev))


def test_a_whole_table_rewrite_passes_the_chain_but_not_the_checkpoints(
    filled: PostgresAuditStore, owner: psycopg.Connection, tmp_path: Path
) -> None:
    keyring = Keyring(KEY)
    checkpoints = tmp_path / "checkpoints.jsonl"
    writer = Checkpointer(filled, checkpoints, keyring, interval=60)
    assert writer.write_if_moved() is not None
    filled.append([event(6)])
    assert writer.write_if_moved() is not None
    assert writer.write_if_moved() is None  # the head has not moved: nothing new to say
    assert check_checkpoints(checkpoints, filled, keyring) == (2, [])

    rewrite_everything(owner)

    assert filled.verify().ok  # the chain alone cannot see it
    counted, problems = check_checkpoints(checkpoints, filled, keyring)
    assert counted == 2 and len(problems) == 2
    assert all("has another hash than checkpointed" in problem and "rewritten" in problem for problem in problems)


def test_a_rewrite_that_cuts_the_end_is_caught_by_the_checkpoints(
    filled: PostgresAuditStore, owner: psycopg.Connection, tmp_path: Path
) -> None:
    keyring = Keyring(KEY)
    checkpoints = tmp_path / "checkpoints.jsonl"
    Checkpointer(filled, checkpoints, keyring, interval=60).write_if_moved()  # head at seq 5

    rewrite_everything(owner, actor="system", keep=3)  # rows 4-5 gone, head lowered, hashes recomputed

    assert filled.verify().ok
    _, problems = check_checkpoints(checkpoints, filled, keyring)
    assert len(problems) == 1 and "seq 5 was checkpointed" in problems[0] and "no longer in the trail" in problems[0]


def test_a_forged_checkpoint_line_is_refused(filled: PostgresAuditStore, owner: psycopg.Connection, tmp_path: Path) -> None:
    """The forger appends a checkpoint of the rewritten head, sealed with a key of their own."""
    checkpoints = tmp_path / "checkpoints.jsonl"
    rewrite_everything(owner)
    Checkpointer(filled, checkpoints, Keyring(b"m" * 32), interval=60).write_if_moved()

    _, problems = check_checkpoints(checkpoints, filled, Keyring(KEY))

    assert len(problems) == 1 and "seal does not verify" in problems[0]
