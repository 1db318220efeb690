"""The audit trail and episode state in PostgreSQL: one hash chain for every front door and worker.

PLAYBOOK_BOT_AUDIT_URL=postgresql://... selects it (bot/audit/backend.py). Same methods, hash
and errors as the SQLite store, so an exported trail verifies the same from either.

- One chain: every append is one transaction whose `audit_append` call takes
  `pg_advisory_xact_lock(APPEND_LOCK)`, then reads the head from `audit_head` and links the events
  to it, so appenders on any host queue and the chain never forks. The hash is events.py's: the
  client sends canonical_json cut around the two values known only under the lock, and re-checks
  what comes back. `audit_head` is also the high-water mark: rows cut off the end show up in verify.
- Durable before it returns, without an fsync under the lock: see `_flush`.
- Idempotent: a unique index on event_id; an id already stored is returned, not written (first
  write wins).
- Append-only in the database: triggers refuse UPDATE, DELETE and TRUNCATE of audit_events (and
  lowering audit_head). Run the bot as a role with INSERT/SELECT only (docs/security.md); a role
  that owns the tables can drop the triggers, which is what verify and the checkpoints are for.
- Migrations: the bot applies `MIGRATIONS` itself on first connect, in one transaction under an
  advisory lock, recorded in `schema_migrations`, so processes starting together do not race.

One connection per store behind a lock (callers come in through asyncio.to_thread, as with
SQLite). It opens lazily and is dropped on any error, so a store built while the server is down
works once it is back, without a restart.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote

import psycopg

from bot.audit.chain import FIELDS, FIRST_DUPLICATE_ID, ChainWalk
from bot.audit.episodes import Episode, merge_target, series_key, series_range
from bot.audit.events import GENESIS_HASH, AuditEvent, StoredEvent, canonical_json, check_storable, format_ts, parse_ts
from bot.audit.pg_schema import APPEND_LOCK, SCHEMA_VERSION, migrate_schema, schema_version
from bot.audit.store import LATER_CANDIDATES, AuditUnavailable, VerifyResult, execution_prefixes

P = ParamSpec("P")
R = TypeVar("R")

COLUMNS = ", ".join(FIELDS)
SELECT = f"SELECT {COLUMNS} FROM audit_events"
INSERT = f"INSERT INTO audit_events ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
EPISODE = "SELECT episode_id, runs, started, claimed_at, resolved_at FROM episodes"
# The later episodes of one alert within the merge window (bot/audit/episodes.py `series_range`:
# lower, upper, length; then how many), newest first, in byte order whatever the database's
# collation (migration 5's index is in that order).
# Only claimed ones count against the limit, the open ones first (as bot/audit/store.py `_later_episode`).
LATER = ('SELECT l.episode_id, l.runs, l.started, l.claimed_at, l.resolved_at FROM episodes l'
         ' WHERE l.episode_id COLLATE "C" > %s AND l.episode_id COLLATE "C" <= %s AND length(l.episode_id) = %s'
         ' AND l.claimed_at IS NOT NULL ORDER BY l.resolved_at IS NULL DESC, l.episode_id COLLATE "C" DESC LIMIT %s')



def redact(url: str) -> str:
    """The URL without its password, for messages and logs. Cut as libpq reads it (user info up to
    the first `@` before a `/`, so a password may hold `?` or `#`; query keys percent-decoded), and
    anything before an `@` libpq would not read as user info is hidden too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(not a postgresql:// URL; not shown)"
    at, slash = rest.find("@"), rest.find("/")
    userinfo = ""
    if at != -1 and (slash == -1 or at < slash):
        user, colon, _ = rest[:at].partition(":")
        userinfo, rest = f"{user}{':***' if colon else ''}@", rest[at + 1:]
    where, question, query = rest.partition("?")
    if "@" in where:  # not user info to libpq, but perhaps a misplaced password: not shown either
        where = "***" + where[where.rfind("@"):]
    params = []
    for param in query.split("&") if question else []:
        key, equals, value = param.partition("=")
        params.append(f"{key}=***" if equals and "pass" in unquote(key).lower() else param)
    return f"{scheme}://{userinfo}{where}{question}{'&'.join(params)}"


def _secrets(url: str) -> list[str]:
    """The password as written and decoded (user info, query), to scrub from libpq's messages."""
    _, _, rest = url.partition("://")
    found: list[str] = []
    at, slash = rest.find("@"), rest.find("/")
    if at != -1:
        found.append(rest[:at].partition(":")[2] if (slash == -1 or at < slash) else rest[:at])
    for param in rest.partition("?")[2].split("&"):
        key, _, value = param.partition("=")
        if "pass" in unquote(key).lower():
            found.append(value)
    return sorted({form for value in found if value for form in (value, unquote(value))}, key=len, reverse=True)


def _cause(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


class _StaleConnection(AuditUnavailable):
    """A connection that had worked broke (the server restarted, failed over, or dropped it)."""


def _close_quietly(conn: psycopg.Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass


def _connection_lost(exc: psycopg.Error) -> bool:
    """The connection itself failed (no SQLSTATE: the socket; 08xxx; the server shutting down),
    not a statement on it (a lock timeout, a full disk): only then is a new connection the cure."""
    state = exc.sqlstate
    return isinstance(exc, psycopg.OperationalError) and (
        state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    )


def _reconnecting(method: Callable[P, R]) -> Callable[P, R]:
    """Once more on a new connection when a kept one turns out broken, so a server restart costs
    the caller nothing. Only for calls that are safe to repeat (reads, and append: idempotent by
    event_id); a claim is not, since its first attempt may have committed."""

    @functools.wraps(method)
    def again(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except _StaleConnection:
            return method(*args, **kwargs)

    return again


class PostgresAuditStore:
    def __init__(self, url: str, *, timeout: float = 10.0, create: bool = True, connections: int = 8) -> None:
        """Connects lazily (a store built while the server is down can be built). `create=False`:
        a reader that must not create the schema (the `audit` commands) says it is missing instead.
        Up to `connections` calls run at once, each on its own connection (a front door answers
        many deliveries at a time; appends still queue on the chain lock, in the server)."""
        self.url = url
        self.name = redact(url)
        self._secrets = _secrets(url)
        self.timeout = timeout
        self.create = create
        self._slots = threading.BoundedSemaphore(connections)
        self._lock = threading.Lock()  # guards _idle and _closed
        self._idle: list[psycopg.Connection] = []
        self._closed = False

    def __enter__(self) -> PostgresAuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresAuditStore({self.name!r})"

    def close(self) -> None:
        """Closes idle connections now; one in use is closed when its call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    # -- writing ------------------------------------------------------------------------------

    @_reconnecting
    def append(self, events: Sequence[AuditEvent], *, new_only: bool = False) -> list[StoredEvent]:
        """Append in the given order under the chain lock; an event_id already stored is returned
        as stored (first write wins), so retries are harmless. `new_only`: just what was written.
        UnstorableEvent, before anything is sent, for an event no store can hold."""
        if not events:
            return []
        check_storable(events)
        with self._connected("append to") as conn:
            # A failure mid-transaction or mid-pipeline closes the connection (_connected): the
            # server rolls back when it goes.
            return self._append(conn, events, new_only)

    def _append(self, conn: psycopg.Connection, events: Sequence[AuditEvent], new_only: bool) -> list[StoredEvent]:
        """One round trip (pipelined): `audit_append` takes the chain lock, links and inserts, and
        the commit releases the lock without waiting for the WAL flush; `_flush` then waits for
        durability outside the lock, where appenders' flushes share fsyncs."""
        links = [event.link(0, GENESIS_HASH) for event in events]
        columns: list[list[Any]] = [[link[name] for link in links] for name in FIELDS[1:8]]
        parts = [preimage_parts(link) for link in links]
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute("SET LOCAL synchronous_commit = off")
            cursor = conn.execute(
                "SELECT * FROM audit_append(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (*columns, *(list(part) for part in zip(*parts, strict=True))),
            )
            conn.execute("COMMIT")
            rows = cursor.fetchall()
        _flush(conn)
        stored: list[StoredEvent] = []
        for row in rows:
            event = _from_row(row[:-1])
            if row[-1] and event.expected_hash() != event.hash:  # never, unless the two hashings drift
                raise psycopg.DataError(
                    f"seq {event.seq}: the database's hash differs from bot/audit/events.py's (audit_append is out "
                    "of date with the hash definition; stop appending and report it)"
                )
            if row[-1] or not new_only:
                stored.append(event)
        return stored

    def import_events(self, events: Sequence[StoredEvent]) -> int:
        """Copy events of another store as they are (seq, ts, ids, hashes): `audit migrate`. The
        first must continue this chain's head exactly; anything else is refused, nothing written."""
        if not events:
            return 0
        with self._transaction("import into") as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            seq, head = self._head(conn)
            first = events[0]
            if (first.seq, first.prev_hash) != (seq + 1, head):
                raise ValueError(
                    f"audit store {self.name}: seq {first.seq} does not continue its chain "
                    f"(it ends at seq {seq} with hash {head[:12]}…)"
                )
            rows = [(*event.link(event.seq, event.prev_hash).values(), event.hash) for event in events]
            with conn.cursor() as cursor:
                cursor.executemany(INSERT, rows)
            conn.execute("UPDATE audit_head SET seq = %s, hash = %s", (events[-1].seq, events[-1].hash))
        return len(events)

    def check_writable(self) -> str | None:
        """None when an append would work now; otherwise why not (for /readyz and the logs).
        Connects, migrates if needed and inserts a row it rolls back."""
        try:
            self._probe()
        except AuditUnavailable as exc:
            return str(exc)
        return None

    @_reconnecting
    def _probe(self) -> None:
        with self._transaction("write to", probe=True) as conn:
            conn.execute(
                f"INSERT INTO audit_events ({COLUMNS}) VALUES "
                "(9223372036854775807, %s, '', NULL, NULL, 'probe', 'probe', '{}', '', '')",
                (f"probe:{threading.get_ident()}",),
            )

    # -- reading ------------------------------------------------------------------------------

    @_reconnecting
    def events(self, run_id: str | None = None, after_seq: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """Oldest first; `after_seq` lets a follower poll for what is new."""
        sql, params = f"{SELECT} WHERE seq > %s", [after_seq]
        if run_id is not None:
            sql, params = f"{sql} AND run_id = %s", [*params, run_id]
        sql += " ORDER BY seq"
        if limit is not None:
            sql, params = f"{sql} LIMIT %s", [*params, limit]
        with self._connected("read") as conn:
            return [_from_row(row) for row in conn.execute(sql, params)]

    @_reconnecting
    def last(self, n: int, run_id: str | None = None) -> list[StoredEvent]:
        """The newest `n` events (of one run, if given), oldest first."""
        where, params = ("WHERE run_id = %s", [run_id]) if run_id is not None else ("", [])
        sql = f"SELECT * FROM ({SELECT} {where} ORDER BY seq DESC LIMIT %s) AS newest ORDER BY seq"
        with self._connected("read") as conn:
            return [_from_row(row) for row in conn.execute(sql, [*params, n])]

    @_reconnecting
    def get_event(self, event_id: str) -> StoredEvent | None:
        with self._connected("read") as conn:
            row = conn.execute(f"{SELECT} WHERE event_id = %s", (event_id,)).fetchone()
        return _from_row(row) if row else None

    @_reconnecting
    def get_events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        with self._connected("read") as conn:
            rows = conn.execute(f"{SELECT} WHERE event_id = ANY(%s)", (list(event_ids),)).fetchall()
        return {event.event_id: event for event in map(_from_row, rows)}

    @_reconnecting
    def has_event(self, event_id: str) -> bool:
        with self._connected("read") as conn:
            return conn.execute("SELECT 1 FROM audit_events WHERE event_id = %s", (event_id,)).fetchone() is not None

    @_reconnecting
    def has_run(self, run_id: str) -> bool:
        with self._connected("read") as conn:
            return conn.execute("SELECT 1 FROM audit_events WHERE run_id = %s LIMIT 1", (run_id,)).fetchone() is not None

    @_reconnecting
    def run_ended(self, run_id: str, since: datetime) -> bool:
        """Whether a run under this id recorded its end at or after `since` (see SqliteAuditStore.run_ended)."""
        with self._connected("read") as conn:
            return conn.execute(
                "SELECT 1 FROM audit_events WHERE run_id = %s AND kind = 'run_finished' AND ts >= %s LIMIT 1",
                (run_id, format_ts(since)),
            ).fetchone() is not None

    @_reconnecting
    def run_last_recorded(self, run_id: str, exclude_execution: str | None = None) -> datetime | None:
        """When a run under this id last started or ended (see SqliteAuditStore.run_last_recorded)."""
        own, reset = execution_prefixes(run_id, exclude_execution, nothing="\x01")  # text cannot hold NUL
        with self._connected("read") as conn:
            row = conn.execute(
                "SELECT max(ts) FROM audit_events WHERE run_id = %s AND kind IN ('run_started', 'run_finished')"
                " AND left(event_id, length(%s)) NOT IN (%s, %s)",
                (run_id, own, own, reset),
            ).fetchone()
        return parse_ts(row[0]) if row and row[0] else None

    @_reconnecting
    def verify(self) -> VerifyResult:
        """Walk the whole chain in one REPEATABLE READ snapshot; the first seq that is wrong."""
        with self._connected("verify") as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                return _verify(conn)
            finally:
                conn.execute("ROLLBACK")

    @_reconnecting
    def privilege_warning(self) -> str | None:
        """Why this role could rewrite the trail itself (it owns the table or is a superuser), or None."""
        with self._connected("read") as conn:
            row = conn.execute(
                "SELECT current_user, r.rolsuper, pg_has_role(current_user, c.relowner, 'USAGE')"
                " FROM pg_class c, pg_roles r WHERE c.oid = 'audit_events'::regclass AND r.rolname = current_user"
            ).fetchone()
        if row is None:
            return None
        user, superuser, owner = row
        if superuser or owner:
            what = "is a superuser" if superuser else "owns audit_events"
            return (
                f"role {user!r} {what}: it can drop the append-only triggers; run the bot as a role with "
                "INSERT and SELECT only (docs/security.md) and keep signed checkpoints"
            )
        return None

    # -- episodes -----------------------------------------------------------------------------

    @_reconnecting
    def episode(self, episode_id: str) -> Episode:
        with self._connected("read") as conn:
            row = conn.execute(f"{EPISODE} WHERE episode_id = %s", (episode_id,)).fetchone()
        return _episode(row) if row else Episode(episode_id=episode_id)

    @_reconnecting
    def episodes_of(self, episode_ids: Sequence[str]) -> list[Episode]:
        """Those of `episode_ids` that some front door claimed or resolved (one query for many)."""
        with self._connected("read") as conn:
            rows = conn.execute(f"{EPISODE} WHERE episode_id = ANY(%s)", (list(episode_ids),)).fetchall()
        return [e for e in map(_episode, rows) if e.seen]

    @_reconnecting
    def later_episode(self, episode_id: str) -> Episode | None:
        """The latest episode of `episode_id`'s series that started after it (Alertmanager moved
        the alert's startsAt earlier), if any (bot/audit/episodes.py)."""
        with self._connected("read") as conn:
            return _later_episode(conn, episode_id)

    def claim_episode(self, episode_id: str, *, rerun: bool = False, stale_after: float = 120.0) -> Episode:
        """One transaction holding the episode's row lock, so of two claims exactly one wins; and
        its alert's lock (taken first, in a statement of its own so that what follows sees a claim
        committed meanwhile), so no claim opens an episode below an open later one of the alert."""
        bounds, key = series_range(episode_id), series_key(episode_id)
        with self._transaction("claim an episode in") as conn:
            if key is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_series_lock(key),))
            conn.execute("INSERT INTO episodes (episode_id) VALUES (%s) ON CONFLICT DO NOTHING", (episode_id,))
            row = conn.execute(
                "SELECT episode_id, runs, started, claimed_at, resolved_at,"
                " claimed_at IS NULL OR claimed_at < now() - make_interval(secs => %s),"
                " (SELECT json_agg(json_build_array(c.episode_id, c.runs, c.started, c.claimed_at, c.resolved_at)"
                f' ORDER BY c.resolved_at IS NULL DESC, c.episode_id COLLATE "C" DESC) FROM ({LATER}) c)'
                " FROM episodes WHERE episode_id = %s FOR UPDATE",
                (stale_after, *(bounds or (None, None, None)), LATER_CANDIDATES, episode_id),
            ).fetchone()
            assert row is not None  # inserted above or already there; rows are never deleted
            _, runs, started, _, resolved_at, stale, candidates = row
            if candidates and not _episode(row[:5]).seen:
                # Never an episode below one under way: the delivery is that one's (only an open one:
                # see bot/audit/store.py `claim_episode`).
                for later in (_episode_of_json(c) for c in candidates):
                    if merge_target(later) and later.resolved_at is None:
                        return later
            if resolved_at is not None:
                update = None
            elif runs == 0:
                update = "runs = 1, started = false, claimed_at = now()"
            elif not started and stale:
                update = "claimed_at = now()"
            elif started and rerun:
                update = "runs = runs + 1, started = false, claimed_at = now()"
            else:
                update = None
            if update is None:
                return _episode(row[:5])
            after = conn.execute(f"UPDATE episodes SET {update} WHERE episode_id = %s RETURNING "
                                 "episode_id, runs, started, claimed_at, resolved_at", (episode_id,)).fetchone()
        return _episode(after, claimed=True)

    @_reconnecting
    def episode_started(self, episode_id: str, runs: int) -> Episode:
        """The claimed run was started; the row after (one statement: resolved meanwhile?)."""
        with self._connected("record an episode start in") as conn:
            conn.execute("UPDATE episodes SET started = true WHERE episode_id = %s AND runs = %s", (episode_id, runs))
            row = conn.execute(f"{EPISODE} WHERE episode_id = %s", (episode_id,)).fetchone()
        return _episode(row) if row else Episode(episode_id=episode_id)

    @_reconnecting
    def release_episode(self, episode_id: str, runs: int) -> None:
        """The start failed: give the claim back, only if it is still this claim."""
        with self._transaction("release an episode in") as conn:
            conn.execute(
                "UPDATE episodes SET runs = runs - 1, started = (runs - 1 > 0), claimed_at = NULL"
                " WHERE episode_id = %s AND runs = %s AND NOT started",
                (episode_id, runs),
            )

    @_reconnecting
    def resolve_episode(self, episode_id: str) -> Episode:
        with self._transaction("resolve an episode in") as conn:
            row = conn.execute(
                "INSERT INTO episodes (episode_id, resolved_at) VALUES (%s, now()) ON CONFLICT (episode_id)"
                " DO UPDATE SET resolved_at = COALESCE(episodes.resolved_at, EXCLUDED.resolved_at)"
                " RETURNING episode_id, runs, started, claimed_at, resolved_at",
                (episode_id,),
            ).fetchone()
        return _episode(row)

    # -- plumbing -----------------------------------------------------------------------------

    def _head(self, conn: psycopg.Connection) -> tuple[int, str]:
        head = conn.execute("SELECT seq, hash FROM audit_head").fetchone()
        if head is None:
            raise psycopg.DataError("the audit_head row is gone (someone deleted it; run `playbook-bot audit verify`)")
        return head[0], head[1]

    @contextmanager
    def _connected(self, doing: str) -> Iterator[psycopg.Connection]:
        """A connection of the store's own (an idle one, or a new one) for one call; any database
        error becomes AuditUnavailable and closes that connection, so the next call reconnects."""
        if not self._slots.acquire(timeout=self.timeout):
            raise AuditUnavailable(
                f"audit store {self.name}: cannot {doing} it: every connection was busy for {self.timeout:g} s"
            )
        try:
            with self._lock:
                if self._closed:
                    raise AuditUnavailable(f"audit store {self.name}: cannot {doing} it: the store is closed")
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None and not conn.closed
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                yield conn
            except psycopg.Error as exc:
                _close_quietly(conn)
                stale = reused and _connection_lost(exc)
                if _connection_lost(exc):  # a restart or failover: the idle ones are gone too
                    with self._lock:
                        idle, self._idle = self._idle, []
                    for other in idle:
                        _close_quietly(other)
                cause = _cause(exc)
                for secret in self._secrets:  # libpq quotes a URL part it cannot parse
                    cause = cause.replace(secret, "***")
                raise (_StaleConnection if stale else AuditUnavailable)(
                    f"audit store {self.name}: cannot {doing} it: {cause}"
                ) from None
            except BaseException:
                _close_quietly(conn)
                raise
            self._give_back(conn)
        finally:
            self._slots.release()

    def _give_back(self, conn: psycopg.Connection) -> None:
        """Idle again, unless the store closed meanwhile or the call left a transaction open."""
        clean = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if clean and not self._closed:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    @contextmanager
    def _transaction(self, doing: str, probe: bool = False) -> Iterator[psycopg.Connection]:
        """One transaction: committed, or rolled back when it is a probe or fails."""
        with self._connected(doing) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            except BaseException:
                if not conn.closed:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                raise
            conn.execute("ROLLBACK" if probe else "COMMIT")

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(2, round(self.timeout)),
            application_name="playbook-bot audit",
            # A server that vanished (network partition, host gone) fails a call in about
            # 3x the timeout instead of hanging it: TCP keepalives and an unacknowledged-data limit.
            keepalives=1,
            keepalives_idle=max(1, round(self.timeout)),
            keepalives_interval=max(1, round(self.timeout / 3)),
            keepalives_count=3,
            tcp_user_timeout=int(self.timeout * 3000),
        )
        try:
            conn.execute("SET TIME ZONE 'UTC'")
            # A chain lock or row lock held longer than this is an outage, reported as one.
            conn.execute(f"SET lock_timeout = {int(self.timeout * 1000)}")
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: psycopg.Connection) -> None:
        found = schema_version(conn)
        if found >= SCHEMA_VERSION:
            return
        if not self.create:
            raise psycopg.errors.UndefinedTable(
                "the audit schema is not there (the bot creates it when it starts: `playbook-bot worker`)"
                if found == 0
                else f"the audit schema is at version {found}, this bot needs {SCHEMA_VERSION} (start the bot to migrate it)"
            )
        try:
            migrate_schema(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise psycopg.errors.InsufficientPrivilege(
                f"the audit schema is at version {found}, this bot needs {SCHEMA_VERSION}, and this role may not "
                f"migrate it ({_cause(exc)}): run `playbook-bot audit schema --url <the owner's URL>` once"
            ) from exc


def preimage_parts(link: dict[str, Any]) -> tuple[str, str, str]:
    """canonical_json(link) cut around prev_hash and seq, which only the server knows under the
    lock: prefix + prev_hash + middle + str(seq) + suffix == canonical_json(link). Keys sort as
    actor, details, event_id, kind, prev_hash, run_id, seq, step_id, ts (tests hold it equal)."""
    value = {name: canonical_json(link[name]) for name in ("actor", "details", "event_id", "kind", "run_id", "step_id", "ts")}
    prefix = (
        f'{{"actor":{value["actor"]},"details":{value["details"]},"event_id":{value["event_id"]},'
        f'"kind":{value["kind"]},"prev_hash":"'
    )
    middle = f'","run_id":{value["run_id"]},"seq":'
    suffix = f',"step_id":{value["step_id"]},"ts":{value["ts"]}}}'
    return prefix, middle, suffix


def _flush(conn: psycopg.Connection) -> None:
    """Wait until everything this connection committed is durable. A transaction that takes an
    xid commits with a WAL record, and a synchronous commit flushes the WAL up to that record, so
    it covers the asynchronous commit before it. Appenders wait here in parallel, outside the chain
    lock, and PostgreSQL flushes their commits together (group commit) instead of one fsync per
    append inside the lock. If the server dies first, the append raises and the caller retries
    (idempotent by event_id); a later append's flush covers every earlier one, so the chain on
    disk never links to an event that was lost."""
    conn.execute("SELECT txid_current()")


def _from_row(row: Sequence[Any]) -> StoredEvent:
    import json

    values = dict(zip(FIELDS, row, strict=True))
    values["details"] = json.loads(values["details"])
    return StoredEvent.model_validate(values)


def _later_episode(conn: psycopg.Connection, episode_id: str) -> Episode | None:
    """The latest later episode of the alert that may take a merged copy (bot/audit/store.py)."""
    bounds = series_range(episode_id)
    if bounds is None:
        return None
    rows = conn.execute(LATER, (*bounds, LATER_CANDIDATES)).fetchall()
    return next((e for e in map(_episode, rows) if merge_target(e)), None)


def _episode_of_json(values: list[Any]) -> Episode:
    """An episode row as json_build_array gives it (timestamps as ISO text)."""
    episode_id, runs, started, claimed_at, resolved_at = values
    return Episode(episode_id=episode_id, runs=runs, started=started,
                   claimed_at=_utc(datetime.fromisoformat(claimed_at)) if claimed_at else None,
                   resolved_at=_utc(datetime.fromisoformat(resolved_at)) if resolved_at else None)


def _series_lock(key: str) -> int:
    """The advisory lock key of one alert's episodes (bot/audit/episodes.py `series_key`): a signed bigint."""
    return int.from_bytes(hashlib.sha256(b"episode series\0" + key.encode()).digest()[:8], "big", signed=True)


def _episode(row: Sequence[Any], claimed: bool = False) -> Episode:
    episode_id, runs, started, claimed_at, resolved_at = row[:5]
    return Episode(
        episode_id=episode_id, runs=runs, started=started, claimed=claimed,
        claimed_at=_utc(claimed_at), resolved_at=_utc(resolved_at),
    )  # fmt: skip


def _utc(ts: datetime | None) -> datetime | None:
    return ts.astimezone(UTC) if ts is not None else None


def _verify(conn: psycopg.Connection) -> VerifyResult:
    walk = ChainWalk()
    with conn.cursor(name="audit_verify") as cursor:
        cursor.itersize = 2000
        cursor.execute(f"{SELECT} ORDER BY seq")
        if walk.feed(cursor):
            return walk.result  # type: ignore[return-value]
    head = conn.execute("SELECT seq, hash FROM audit_head").fetchone()
    if head is None:
        return walk.bad(walk.expected_seq, "missing (the audit_head row, the highest seq written, was deleted)")
    if problem := walk.ends(head[0]):
        return problem
    if head[0] == walk.checked and head[1] != walk.head_hash:
        return walk.bad(head[0], "hash differs from the head recorded when it was appended (the table was rewritten)")
    return walk.duplicated(conn.execute(FIRST_DUPLICATE_ID).fetchone()) or walk.ok()
