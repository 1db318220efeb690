"""The SQLite episode table: the claim rule, start/release/resolve, concurrent claimers through
separate store objects on one file, and a v1 audit.db (no episodes table) upgraded on open."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.audit.events import GENESIS_HASH, AuditEvent, EventKind, format_ts
from bot.audit.store import INSERT, SCHEMA, SqliteAuditStore, _to_row

EP = "alert-p-f-20260101T000000.000000Z"


def test_never_seen_reads_as_nothing(tmp_path: Path) -> None:
    with SqliteAuditStore(tmp_path / "a.db") as store:
        ep = store.episode(EP)
        assert (ep.episode_id, ep.runs, ep.started, ep.claimed_at, ep.resolved_at, ep.claimed) == (EP, 0, False, None, None, False)


def test_first_claim_wins_then_started_then_no_claim_without_rerun(tmp_path: Path) -> None:
    with SqliteAuditStore(tmp_path / "a.db") as store:
        first = store.claim_episode(EP)
        assert (first.claimed, first.runs, first.started) == (True, 1, False) and first.claimed_at is not None
        assert not store.claim_episode(EP).claimed, "a fresh claim is not taken over"
        store.episode_started(EP, 1)
        assert store.episode(EP).started
        again = store.claim_episode(EP)
        assert (again.claimed, again.runs, again.started) == (False, 1, True)
        rerun = store.claim_episode(EP, rerun=True)
        assert (rerun.claimed, rerun.runs, rerun.started) == (True, 2, False)
        store.episode_started(EP, 1)  # an old claim's late word changes nothing
        assert not store.episode(EP).started


def test_stale_claim_is_taken_over_with_the_same_claim_number(tmp_path: Path) -> None:
    with SqliteAuditStore(tmp_path / "a.db") as store:
        store.claim_episode(EP)
        assert not store.claim_episode(EP, stale_after=3600).claimed
        taken = store.claim_episode(EP, stale_after=0)
        assert (taken.claimed, taken.runs) == (True, 1)


def test_release_gives_the_claim_back(tmp_path: Path) -> None:
    with SqliteAuditStore(tmp_path / "a.db") as store:
        store.claim_episode(EP)
        store.release_episode(EP, 1)
        ep = store.episode(EP)
        assert (ep.runs, ep.started, ep.claimed_at) == (0, False, None)
        assert store.claim_episode(EP).claimed
        store.episode_started(EP, 1)
        store.release_episode(EP, 1)  # started: a release is for a start that failed, not this
        assert (store.episode(EP).runs, store.episode(EP).started) == (1, True)
        assert store.claim_episode(EP, rerun=True).runs == 2
        store.release_episode(EP, 2)  # the rerun failed to start: back to the run that did
        ep = store.episode(EP)
        assert (ep.runs, ep.started, ep.claimed_at) == (1, True, None)


def test_resolved_is_never_claimed_and_keeps_its_first_time(tmp_path: Path) -> None:
    with SqliteAuditStore(tmp_path / "a.db") as store:
        resolved = store.resolve_episode(EP)
        assert resolved.resolved_at is not None and resolved.runs == 0
        assert not store.claim_episode(EP).claimed
        assert not store.claim_episode(EP, rerun=True, stale_after=0).claimed
        assert store.resolve_episode(EP).resolved_at == resolved.resolved_at
        other = "alert-p-g-20260101T000000.000000Z"
        store.claim_episode(other)
        after = store.resolve_episode(other)
        assert (after.runs, after.resolved_at is not None) == (1, True), "resolve keeps the claim it found"


def test_many_claimers_on_one_file_exactly_one_wins(tmp_path: Path) -> None:
    stores = [SqliteAuditStore(tmp_path / "a.db") for _ in range(6)]
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def claim(store: SqliteAuditStore, ep: str) -> None:
        barrier.wait()
        results.append(store.claim_episode(ep).claimed)

    try:
        for n in range(10):
            threads = [threading.Thread(target=claim, args=(s, f"{EP}-{n}")) for s in stores]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert len(results) == 60 and results.count(True) == 10
    finally:
        for s in stores:
            s.close()


def test_a_v1_file_without_the_table_keeps_its_trail_and_gets_episodes(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    event = AuditEvent(event_id="e1", ts=datetime.now(UTC), run_id=None, step_id=None,
                       kind=EventKind.alert_received, actor="alertmanager", details={})
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA:  # the v1 schema (audit_events only) with an event in it
        conn.execute(statement)
    conn.execute(INSERT, _to_row(1, event, GENESIS_HASH))
    conn.close()
    with SqliteAuditStore(path) as store:
        assert store.verify().ok and store.has_event("e1")
        assert store.claim_episode(EP).claimed
        assert store.verify().ok and store.verify().checked == 1, "episode state is outside the chain"
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("SELECT runs FROM episodes WHERE episode_id = ?", (EP,)).fetchone() == (1,)
    conn.close()


def test_claimed_at_old_row_written_as_text_reads_back(tmp_path: Path) -> None:
    with SqliteAuditStore(tmp_path / "a.db") as store:
        store.claim_episode(EP)
    old = datetime.now(UTC) - timedelta(hours=1)
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    conn.execute("UPDATE episodes SET claimed_at = ? WHERE episode_id = ?", (format_ts(old), EP))
    conn.close()
    with SqliteAuditStore(tmp_path / "a.db") as store:
        assert store.episode(EP).claimed_at == old
        assert store.claim_episode(EP).claimed, "an hour-old unstarted claim is stale at the default 120 s"
