"""A store that cannot be written says why (path and cause), and recovers once the cause is gone.
Tests run as root, which ignores file modes, so the causes here are ones root cannot write past."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.audit import store as store_module
from bot.audit.store import AuditUnavailable, SqliteAuditStore
from tests.audit.support import event


def test_a_path_under_a_file_is_unavailable_and_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    store = SqliteAuditStore(blocker / "audit.db")  # building it never fails: it opens lazily

    with pytest.raises(AuditUnavailable) as caught:
        store.append([event(1)])

    message = str(caught.value)
    assert str(blocker / "audit.db") in message and "Not a directory" in message
    assert "\n" not in message
    reason = store.check_writable()
    assert reason is not None and "Not a directory" in reason and str(blocker) in reason

    blocker.unlink()  # the operator fixes the disk: the same store object recovers
    assert store.check_writable() is None
    assert store.append([event(1)])[0].seq == 1
    store.close()


def test_a_directory_where_the_file_should_be_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "audit.db").mkdir()
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        with pytest.raises(AuditUnavailable, match="is a directory"):
            store.append([event(1)])
        with pytest.raises(AuditUnavailable, match="is a directory"):
            store.events()
        assert "is a directory" in (store.check_writable() or "")


def test_a_lock_held_past_the_timeout_is_unavailable_until_released(db: Path) -> None:
    with SqliteAuditStore(db, timeout=0.1) as store:
        store.append([event(1)])
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

        with pytest.raises(AuditUnavailable, match=r"locked \(another writer held it longer than the 0.1 s"):
            store.append([event(2)])
        assert "database is locked" in (store.check_writable() or "")
        assert len(store.events()) == 1  # readers are not blocked by a writer (WAL)

        holder.execute("ROLLBACK")
        holder.close()
        assert store.check_writable() is None
        assert store.append([event(2)])[0].seq == 2
        assert store.verify().ok


@pytest.mark.sqlite_only
def test_a_full_database_is_unavailable_and_leaves_the_chain_intact(store: SqliteAuditStore) -> None:
    store.append([event(1)])
    pages = store._connection().execute("PRAGMA page_count").fetchone()[0]
    store._connection().execute(f"PRAGMA max_page_count = {pages}")  # what a full disk looks like to SQLite

    with pytest.raises(AuditUnavailable, match="full"):
        store.append([event(n, details={"pad": "x" * 5000}) for n in range(2, 20)])

    assert [e.seq for e in store.events()] == [1]  # the failed batch left nothing behind
    assert store.verify().ok


@pytest.mark.sqlite_only
def test_check_writable_reports_a_nearly_full_disk(store: SqliteAuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store.check_writable() is None

    class Usage:
        free = 4096

    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: Usage)
    assert store.check_writable() == f"audit store {store.path}: disk full (4096 bytes free on {store.path.parent})"


def test_the_probe_writes_nothing(store: SqliteAuditStore) -> None:
    store.append([event(1)])
    assert store.check_writable() is None
    assert [e.seq for e in store.events()] == [1]
    assert store.append([event(2)])[0].seq == 2
    assert store.verify().ok


def test_a_closed_store_is_unavailable(db: Path) -> None:
    store = SqliteAuditStore(db)
    store.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        store.append([event(1)])


def test_a_damaged_file_that_is_replaced_is_picked_up_without_a_restart(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"not a database, " * 512)
    with SqliteAuditStore(db) as store:
        with pytest.raises(AuditUnavailable, match="file is not a database"):
            store.append([event(1)])

        db.unlink()  # the operator moves the damaged file aside

        assert store.append([event(1)])[0].seq == 1
        assert store.verify().ok
