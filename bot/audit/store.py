"""Append-only, hash-chained audit log in one SQLite file shared by worker, front door and CLI.

Several processes append to the same file. Every write is one `BEGIN IMMEDIATE` transaction
(WAL, busy timeout), and the chain head (last seq and hash) is read inside it, so writers queue
on SQLite's lock and the chain can never fork. Within a process one connection is shared behind
a lock: activities call in through `asyncio.to_thread`, an append holds it for about a
millisecond, and a single connection is simpler to open, probe and close than one per thread.

Triggers refuse UPDATE and DELETE, so application code cannot rewrite history by mistake;
someone with the file can still drop them, which is what `verify` is for.

Alert episode state (bot/audit/episodes.py) lives in the same file, in its own mutable table
outside the chain; a file from before it gets the table on first open.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any


from bot.audit.episodes import Episode, decide_claim, merge_target, series_range
from bot.audit.chain import FIELDS, FIRST_DUPLICATE_ID, ChainWalk, VerifyResult
from bot.audit.events import (
    GENESIS_HASH,
    AuditEvent,
    StoredEvent,
    chain_hash,
    check_storable,
    format_ts,
    parse_ts,
)

if TYPE_CHECKING:
    from bot.settings import Settings

LATER_CANDIDATES = 8  # later episodes of one alert within the merge window looked at (newest first)
MIN_FREE_BYTES = 1 << 20  # below this, check_writable calls the disk full

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id  TEXT NOT NULL,
        ts        TEXT NOT NULL,
        run_id    TEXT,
        step_id   TEXT,
        kind      TEXT NOT NULL,
        actor     TEXT NOT NULL,
        details   TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS audit_events_event_id ON audit_events (event_id)",
    "CREATE INDEX IF NOT EXISTS audit_events_run ON audit_events (run_id, seq)",
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
)
# Mutable episode state, not chained. Timestamps are format_ts text (UTC); started is 0/1.
EPISODES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS episodes (
        episode_id  TEXT PRIMARY KEY,
        runs        INTEGER NOT NULL DEFAULT 0,
        started     BOOLEAN NOT NULL DEFAULT 0,
        claimed_at  TEXT NULL,
        resolved_at TEXT NULL
    )""",
)
EPISODE_COLUMNS = "episode_id, runs, started, claimed_at, resolved_at"
COLUMNS = ", ".join(FIELDS)
SELECT = f"SELECT {COLUMNS} FROM audit_events"
INSERT = f"INSERT INTO audit_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ID_CHUNK = 500  # event ids per lookup statement (SQLite allows 32,766 parameters since 3.32, 999 before)
# check_writable's throwaway row: inserted, then rolled back.
PROBE = f"INSERT INTO audit_events ({COLUMNS}) VALUES (-1, 'probe', '', NULL, NULL, 'probe', 'probe', '{{}}', '', '')"


class AuditUnavailable(RuntimeError):
    """The store cannot be opened, read or written (path and cause in the message).
    Activities let it propagate, so Temporal retries until the disk or lock clears."""


def default_path(settings: Settings) -> Path:
    return settings.data_dir / "audit.db"


def execution_prefixes(run_id: str, execution: str | None, nothing: str = "\0") -> tuple[str, str]:
    """The event id prefixes of the events of `execution`'s chain: its first execution's and its
    resets' (`<first>~<later>`, bot/engine/spool.py `_execution`); either may be given. Without an
    execution, `nothing` twice: a prefix no event id has."""
    if not execution:
        return nothing, nothing
    chain = execution.partition("~")[0]
    return f"{run_id}/{chain}:", f"{run_id}/{chain}~"


class SqliteAuditStore:
    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        """Opens lazily: a store on a missing or full disk can still be built, and every call
        retries the open, so the worker starts and recovers without a restart."""
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._group_thread: int | None = None  # the thread inside `group()`, holding the lock

    def __enter__(self) -> SqliteAuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- writing ------------------------------------------------------------------------------

    def append(self, events: Sequence[AuditEvent], *, new_only: bool = False) -> list[StoredEvent]:
        """Append in the given order; an event_id already stored is not written again and its
        stored event is returned instead (first write wins), so retries are harmless.
        `new_only` returns just the events this call wrote (what metrics may count).
        UnstorableEvent, before anything is written, for an event no store can hold.

        One read of the ids already stored and one insert of the new rows per call (each a
        statement per event before: the front door appends two events per alert delivery)."""
        if not events:
            return []
        check_storable(events)
        stored: list[StoredEvent] = []
        with self._transaction("append to") as conn:
            head = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev_hash = head if head else (0, GENESIS_HASH)
            earlier = self._stored(conn, list(dict.fromkeys(event.event_id for event in events)))
            rows: list[tuple[Any, ...]] = []
            for event in events:
                existing = earlier.get(event.event_id)
                if existing is not None:  # stored before, or earlier in this call: the first write wins
                    if not new_only:
                        stored.append(existing)
                    continue
                seq += 1
                row = _to_row(seq, event, prev_hash)
                rows.append(row)
                # What was written, as it reads back: its details are already plain JSON (AuditEvent)
                written = StoredEvent.model_construct(
                    **dict(event), seq=seq, prev_hash=prev_hash, hash=row[-1])
                earlier[event.event_id] = written
                stored.append(written)
                prev_hash = row[-1]
            conn.executemany(INSERT, rows)
        return stored

    @staticmethod
    def _stored(conn: sqlite3.Connection, event_ids: list[str]) -> dict[str, StoredEvent]:
        """The stored events among `event_ids`, by id."""
        events = (_from_row(row) for row in _rows_in(conn, f"{SELECT} WHERE event_id", event_ids))
        return {event.event_id: event for event in events}

    def check_writable(self) -> str | None:
        """None when an append would work now; otherwise why not (for /readyz and the logs).
        Opens the file, checks free space, takes the write lock and inserts a row it rolls back."""
        try:
            with self._transaction("write to", probe=True) as conn:
                free = shutil.disk_usage(self.path.parent).free
                if free < MIN_FREE_BYTES:
                    return f"audit store {self.path}: disk full ({free} bytes free on {self.path.parent})"
                conn.execute(PROBE)
        except AuditUnavailable as exc:
            return str(exc)
        return None

    def group(self, calls: Sequence[Callable[[SqliteAuditStore], Any]]) -> list[Any]:
        """Run `calls` (each given this store) in ONE transaction, committed once (one fsync):
        the front door's group commit (bot/audit/batching.py). Each call's own transaction
        becomes a savepoint, so a call that raises is rolled back alone and its exception is its
        result, in its place; the others' writes commit together. The results (values or
        exceptions) are returned only after the commit; a commit that fails raises for all."""
        results: list[Any] = []
        with self._transaction("write to") as conn:
            self._group_thread = threading.get_ident()
            try:
                for call in calls:
                    conn.execute("SAVEPOINT grouped_call")
                    try:
                        results.append(call(self))
                    except Exception as exc:  # noqa: BLE001 - handed to that call's caller
                        conn.execute("ROLLBACK TO grouped_call")
                        results.append(exc)
                    conn.execute("RELEASE grouped_call")
            finally:
                self._group_thread = None
        return results

    # -- alert episodes -----------------------------------------------------------------------

    def episode(self, episode_id: str) -> Episode:
        """The episode's state; one never seen reads as runs=0 with nothing set."""
        with self._connected("read") as conn:
            return _episode(conn, episode_id)

    def episodes_of(self, episode_ids: Sequence[str]) -> list[Episode]:
        """Those of `episode_ids` that some front door claimed or resolved (one read for many)."""
        with self._connected("read") as conn:  # (a catalog's worth of ids, on every resolve)
            found = [_row_episode(row) for row in _rows_in(
                conn, f"SELECT {EPISODE_COLUMNS} FROM episodes WHERE episode_id", list(episode_ids))]
        return [e for e in found if e.seen]

    def later_episode(self, episode_id: str) -> Episode | None:
        """The latest episode of `episode_id`'s series that started after it (Alertmanager moved
        the alert's startsAt earlier), if any (bot/audit/episodes.py)."""
        with self._connected("read") as conn:
            return _later_episode(conn, episode_id)

    def claim_episode(self, episode_id: str, *, rerun: bool = False, stale_after: float = 120.0) -> Episode:
        """Claim the right to start the episode's run (`decide_claim`), in one serialized
        transaction, so of any number of front doors exactly one is told `claimed`."""
        with self._transaction("claim an episode in") as conn:
            current = _episode(conn, episode_id)
            # Never an episode below one under way: the delivery is that one's. (Only an open one: a
            # resolved episode is over, and a firing that began before it is no copy of it.)
            if not current.seen and (later := _later_episode(conn, episode_id, open_only=True)) is not None:
                return later
            after = decide_claim(current, datetime.now(UTC), rerun=rerun, stale_after=stale_after)
            if after.claimed:
                _put_episode(conn, after)
            return after

    def episode_started(self, episode_id: str, runs: int) -> Episode:
        """The claimed run (claim number `runs`) was started; the row after (resolved meanwhile?)."""
        with self._transaction("record an episode start in") as conn:
            conn.execute("UPDATE episodes SET started = 1 WHERE episode_id = ? AND runs = ?", (episode_id, runs))
            return _episode(conn, episode_id)

    def release_episode(self, episode_id: str, runs: int) -> None:
        """The claimed run could not be started: give the claim back, so a retry can claim again."""
        with self._transaction("release an episode in") as conn:
            conn.execute(
                "UPDATE episodes SET runs = runs - 1, started = (runs - 1 > 0), claimed_at = NULL"
                " WHERE episode_id = ? AND runs = ? AND NOT started",
                (episode_id, runs),
            )

    def resolve_episode(self, episode_id: str) -> Episode:
        """Mark the episode resolved (the first resolve's time stays); the row after."""
        with self._transaction("resolve an episode in") as conn:
            conn.execute(
                "INSERT INTO episodes (episode_id, resolved_at) VALUES (?, ?)"
                " ON CONFLICT (episode_id) DO UPDATE SET resolved_at = COALESCE(resolved_at, excluded.resolved_at)",
                (episode_id, format_ts(datetime.now(UTC))),
            )
            return _episode(conn, episode_id)

    # -- reading ------------------------------------------------------------------------------

    def events(self, run_id: str | None = None, after_seq: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """Oldest first; `after_seq` lets a follower poll for what is new."""
        sql, params = f"{SELECT} WHERE seq > ?", [after_seq]
        if run_id is not None:
            sql, params = f"{sql} AND run_id = ?", [*params, run_id]
        sql += " ORDER BY seq"
        if limit is not None:
            sql, params = f"{sql} LIMIT ?", [*params, limit]
        with self._connected("read") as conn:
            return [_from_row(row) for row in conn.execute(sql, params)]

    def last(self, n: int, run_id: str | None = None) -> list[StoredEvent]:
        """The newest `n` events (of one run, if given), oldest first: what `tail` shows first."""
        where, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        sql = f"SELECT * FROM ({SELECT} {where} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
        with self._connected("read") as conn:
            return [_from_row(row) for row in conn.execute(sql, [*params, n])]

    def has_event(self, event_id: str) -> bool:
        with self._connected("read") as conn:
            return conn.execute("SELECT 1 FROM audit_events WHERE event_id = ?", (event_id,)).fetchone() is not None

    def get_event(self, event_id: str) -> StoredEvent | None:
        """One event by its id (a large step output's `step_output`, which status points to)."""
        with self._connected("read") as conn:
            row = conn.execute(f"{SELECT} WHERE event_id = ?", (event_id,)).fetchone()
        return _from_row(row) if row else None

    def get_events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The stored events among `event_ids`, by id: one read for many (a burst of clicks)."""
        with self._connected("read") as conn:
            return self._stored(conn, list(event_ids))

    def has_run(self, run_id: str) -> bool:
        with self._connected("read") as conn:
            return conn.execute("SELECT 1 FROM audit_events WHERE run_id = ? LIMIT 1", (run_id,)).fetchone() is not None

    def run_ended(self, run_id: str, since: datetime) -> bool:
        """Whether a run under this id recorded its end (`run_finished`) at or after `since`: how a
        front door answers a repeat delivery of an episode whose run it knows, without asking
        Temporal (bot/alerts/receiver.py). `since` leaves out an earlier execution's end."""
        with self._connected("read") as conn:
            return conn.execute(
                "SELECT 1 FROM audit_events WHERE run_id = ? AND kind = 'run_finished' AND ts >= ? LIMIT 1",
                (run_id, format_ts(since)),
            ).fetchone() is not None

    def run_last_recorded(self, run_id: str, exclude_execution: str | None = None) -> datetime | None:
        """When a run under this id last started or ended (its `ts`), reading only those events:
        admission asks it for every start, and a run's step outputs can be megabytes. Events of
        `exclude_execution`'s chain (ids `<run id>/<first>:...`, and `<run id>/<first>~<later>:...`
        of a reset of it) are the asking run's own: a retried first workflow task may have written
        them already, and they are no earlier run."""
        own, reset = execution_prefixes(run_id, exclude_execution)
        with self._connected("read") as conn:
            row = conn.execute(
                "SELECT max(ts) FROM audit_events WHERE run_id = ? AND kind IN ('run_started', 'run_finished')"
                " AND substr(event_id, 1, length(?)) NOT IN (?, ?)",
                (run_id, own, own, reset),
            ).fetchone()
        return parse_ts(row[0]) if row and row[0] else None

    def verify(self) -> VerifyResult:
        """Walk the whole chain in one read snapshot and report the first seq that is wrong."""
        with self._connected("verify") as conn:
            conn.execute("BEGIN")
            try:
                return _verify(conn)
            finally:
                if conn.in_transaction:
                    conn.rollback()

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _connected(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The shared connection under the lock; any SQLite or OS error becomes AuditUnavailable.
        Inside `group()` (its thread already holds the lock) the group's connection, as it is:
        a failure there is the failing call's, and the group's transaction goes on."""
        if self._group_thread == threading.get_ident() and self._conn is not None:
            try:
                yield self._conn
            except (sqlite3.Error, OSError) as exc:
                raise AuditUnavailable(f"audit store {self.path}: cannot {doing} it: {self._describe(exc)}") from exc
            return
        with self._lock:
            if self._closed:
                raise AuditUnavailable(f"audit store {self.path}: cannot {doing} it: the store is closed")
            try:
                yield self._connection()
            except (sqlite3.Error, OSError) as exc:
                self._reset(busy=_is_busy(exc))
                raise AuditUnavailable(f"audit store {self.path}: cannot {doing} it: {self._describe(exc)}") from exc

    def _reset(self, busy: bool) -> None:
        """After a failure: end any open transaction; unless it was only a lock held too long,
        also drop the connection, so the next call reopens the file (replaced, repaired)."""
        if self._conn is None:
            return
        try:
            if self._conn.in_transaction:
                self._conn.rollback()
            if busy:
                return
            self._conn.close()
        except sqlite3.Error:
            pass
        self._conn = None

    @contextmanager
    def _transaction(self, doing: str, probe: bool = False) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction: committed, or rolled back when it is a probe or fails.
        Inside `group()`: a savepoint, released into the group's transaction or rolled back alone."""
        if self._group_thread == threading.get_ident():
            with self._connected(doing) as conn:
                conn.execute("SAVEPOINT grouped")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK TO grouped")
                    conn.execute("RELEASE grouped")
                    raise
                if probe:
                    conn.execute("ROLLBACK TO grouped")
                conn.execute("RELEASE grouped")
            return
        with self._connected(doing) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            if probe:
                conn.rollback()
            else:
                conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except FileExistsError as exc:  # the parent is a file: "File exists" would mislead
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename) from exc
            if self.path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a directory, not a database file", str(self.path))
            _create_private(self.path)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            try:
                self._enable_wal(conn)
                # FULL: a committed audit event survives power loss too; measured cost is small.
                conn.execute("PRAGMA synchronous=FULL")
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"audit_events", "episodes"} <= tables:  # new file, or one from before episodes
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in (*SCHEMA, *EPISODES_SCHEMA):
                        conn.execute(statement)
                    conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Processes opening a new file at once race to switch it to WAL, and SQLite answers
        that race with an immediate SQLITE_BUSY (no busy handler): retry up to the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _describe(self, exc: BaseException) -> str:
        if _is_busy(exc):
            return f"database is locked (another writer held it longer than the {self.timeout:g} s busy timeout)"
        if isinstance(exc, OSError) and exc.strerror:
            return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        return str(exc)


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorname", "") == "SQLITE_BUSY"


def _to_row(seq: int, event: AuditEvent, prev_hash: str) -> tuple[Any, ...]:
    fields = event.link(seq, prev_hash)
    return (*fields.values(), chain_hash(**fields))


def _episode(conn: sqlite3.Connection, episode_id: str) -> Episode:
    row = conn.execute(f"SELECT {EPISODE_COLUMNS} FROM episodes WHERE episode_id = ?", (episode_id,)).fetchone()
    return Episode(episode_id=episode_id) if row is None else _row_episode(row)


def _row_episode(row: Sequence[Any]) -> Episode:
    episode_id, runs, started, claimed_at, resolved_at = row
    return Episode(
        episode_id=episode_id, runs=runs, started=bool(started),
        claimed_at=_parse_ts(claimed_at), resolved_at=_parse_ts(resolved_at),
    )  # fmt: skip


def _later_episode(conn: sqlite3.Connection, episode_id: str, *, open_only: bool = False) -> Episode | None:
    """The latest episode of the alert that began after `episode_id`, within the merge window, that
    may take a merged copy (bot/audit/episodes.py `merge_target`); `open_only`: not resolved."""
    bounds = series_range(episode_id)
    if bounds is None:
        return None
    # Only claimed ones count against the limit (a resolve records a row under any id it names), the
    # open ones first (a merged resolve settles the episode a merged firing would have joined).
    rows = conn.execute(
        f"SELECT {EPISODE_COLUMNS} FROM episodes WHERE episode_id > ? AND episode_id <= ? AND length(episode_id) = ?"
        f" AND claimed_at IS NOT NULL{' AND resolved_at IS NULL' if open_only else ''}"
        " ORDER BY resolved_at IS NULL DESC, episode_id DESC LIMIT ?", (*bounds, LATER_CANDIDATES),
    )
    return next((later for later in map(_row_episode, rows) if merge_target(later)), None)


def _rows_in(conn: sqlite3.Connection, select: str, ids: list[str]) -> Iterator[Any]:
    """The rows of `select` (ending with the id column it filters on) `IN` ids, a statement per
    ID_CHUNK of them: SQLite caps a statement's parameters."""
    for first in range(0, len(ids), ID_CHUNK):
        chunk = ids[first:first + ID_CHUNK]
        yield from conn.execute(f"{select} IN ({', '.join('?' * len(chunk))})", chunk)


def _put_episode(conn: sqlite3.Connection, episode: Episode) -> None:
    conn.execute(
        f"INSERT INTO episodes ({EPISODE_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (episode_id) DO UPDATE SET"
        " runs = excluded.runs, started = excluded.started, claimed_at = excluded.claimed_at,"
        " resolved_at = excluded.resolved_at",
        (
            episode.episode_id, episode.runs, int(episode.started),
            format_ts(episode.claimed_at) if episode.claimed_at else None,
            format_ts(episode.resolved_at) if episode.resolved_at else None,
        ),
    )  # fmt: skip


def _parse_ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _from_row(row: Sequence[Any]) -> StoredEvent:
    names = COLUMNS.split(", ")
    values = dict(zip(names, row, strict=True))
    values["details"] = json.loads(values["details"])
    return StoredEvent.model_validate(values)


def _verify(conn: sqlite3.Connection) -> VerifyResult:
    walk = ChainWalk()
    if walk.feed(conn.execute(f"{SELECT} ORDER BY seq")):
        return walk.result  # type: ignore[return-value]
    # AUTOINCREMENT remembers the highest seq ever written: rows cut off the end show up here.
    high = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_events'").fetchone()
    if problem := walk.ends(high[0] if high else None):
        return problem
    return walk.duplicated(conn.execute(FIRST_DUPLICATE_ID).fetchone()) or walk.ok()


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner alone, if it is not there (SQLite gives its
    -wal and -shm files the same mode). The trail holds rendered args, alerts, votes and whole
    outputs: sqlite3.connect made it 0644, readable by every local user (red team)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass
