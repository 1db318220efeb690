"""The PostgreSQL audit store's schema, as numbered migrations the bot applies itself.

`migrate_schema` runs the missing ones in one transaction under an advisory lock and records
them in `schema_migrations`, so processes starting at once do not race and a restart applies
nothing twice. A new version is appended here; a shipped one is never edited.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from bot.audit.events import GENESIS_HASH

# pg_advisory_xact_lock keys: b"pbaudit1" and b"pbmigrat" read as big-endian bigints.
APPEND_LOCK = int.from_bytes(b"pbaudit1", "big")
MIGRATE_LOCK = int.from_bytes(b"pbmigrat", "big")

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        f"""
        CREATE TABLE audit_events (
            seq       BIGINT PRIMARY KEY CHECK (seq > 0),
            event_id  TEXT NOT NULL,
            ts        TEXT NOT NULL,
            run_id    TEXT,
            step_id   TEXT,
            kind      TEXT NOT NULL,
            actor     TEXT NOT NULL,
            details   TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash      TEXT NOT NULL
        );
        CREATE UNIQUE INDEX audit_events_event_id ON audit_events (event_id);
        CREATE INDEX audit_events_run ON audit_events (run_id, seq);
        -- The head every append continues from, and the highest seq ever handed out.
        CREATE TABLE audit_head (
            one  BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
            seq  BIGINT NOT NULL,
            hash TEXT NOT NULL
        );
        INSERT INTO audit_head (seq, hash) VALUES (0, '{GENESIS_HASH}');
        CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit events are append-only (% on % refused)', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.seq < OLD.seq OR NEW.one IS DISTINCT FROM OLD.one THEN
                RAISE EXCEPTION 'audit_head only moves forward (seq % to % refused)', OLD.seq, NEW.seq
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
            FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
        CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
            FOR EACH ROW EXECUTE FUNCTION audit_head_forward();
        CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
            FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
        CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
            FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
        """,
    ),
    (
        2,
        """
        -- Episode state: mutable, not chained (the audit trail records the outcomes).
        CREATE TABLE episodes (
            episode_id  TEXT PRIMARY KEY,
            runs        INTEGER NOT NULL DEFAULT 0,
            started     BOOLEAN NOT NULL DEFAULT false,
            claimed_at  TIMESTAMPTZ NULL,
            resolved_at TIMESTAMPTZ NULL
        );
        """,
    ),
    (
        3,
        f"""
        -- One append in one call, so the chain lock is held only while the server works, never
        -- across a round trip to the client. The hash preimage is canonical_json of the fields
        -- (bot/audit/events.py), built by the client in three parts around the two values only
        -- known under the lock: prefix || prev_hash || middle || seq || suffix.
        CREATE FUNCTION audit_append(
            ids TEXT[], tss TEXT[], run_ids TEXT[], step_ids TEXT[], kinds TEXT[], actors TEXT[],
            detailss TEXT[], prefixes TEXT[], middles TEXT[], suffixes TEXT[]
        ) RETURNS TABLE (
            seq BIGINT, event_id TEXT, ts TEXT, run_id TEXT, step_id TEXT, kind TEXT, actor TEXT,
            details TEXT, prev_hash TEXT, hash TEXT, written BOOLEAN
        ) LANGUAGE plpgsql AS $$
        DECLARE
            head_seq BIGINT;
            head_hash TEXT;
            digest TEXT;
            old audit_events%ROWTYPE;
        BEGIN
            PERFORM pg_advisory_xact_lock({APPEND_LOCK});
            SELECT h.seq, h.hash INTO head_seq, head_hash FROM audit_head h;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'the audit_head row is gone (someone deleted it; run playbook-bot audit verify)';
            END IF;
            FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
                SELECT * INTO old FROM audit_events e WHERE e.event_id = ids[i];
                IF FOUND THEN
                    RETURN QUERY SELECT old.seq, old.event_id, old.ts, old.run_id, old.step_id, old.kind,
                        old.actor, old.details, old.prev_hash, old.hash, false;
                    CONTINUE;
                END IF;
                head_seq := head_seq + 1;
                digest := encode(sha256(convert_to(
                    prefixes[i] || head_hash || middles[i] || head_seq::text || suffixes[i], 'UTF8')), 'hex');
                INSERT INTO audit_events VALUES (head_seq, ids[i], tss[i], run_ids[i], step_ids[i], kinds[i],
                    actors[i], detailss[i], head_hash, digest);
                RETURN QUERY SELECT head_seq, ids[i], tss[i], run_ids[i], step_ids[i], kinds[i], actors[i],
                    detailss[i], head_hash, digest, true;
                head_hash := digest;
            END LOOP;
            UPDATE audit_head h SET seq = head_seq, hash = head_hash WHERE h.seq <> head_seq;
        END $$;
        """,
    ),
    (
        4,
        """
        -- Episode state stays mutable, but a resolve is a fact the front doors decide on: undone
        -- (by the bot's own role, e.g. a leaked URL), a late firing delivery would remediate a
        -- resolved alert. So resolved_at is set once, and a row keeps its id and is never removed.
        CREATE FUNCTION episodes_keep_resolved() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.episode_id IS DISTINCT FROM OLD.episode_id THEN
                RAISE EXCEPTION 'an episode keeps its id (% to % refused)', OLD.episode_id, NEW.episode_id
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF OLD.resolved_at IS NOT NULL AND NEW.resolved_at IS DISTINCT FROM OLD.resolved_at THEN
                RAISE EXCEPTION 'a resolved episode stays resolved (% refused)', OLD.episode_id
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER episodes_keep_resolved BEFORE UPDATE ON episodes
            FOR EACH ROW EXECUTE FUNCTION episodes_keep_resolved();
        CREATE TRIGGER episodes_no_delete BEFORE DELETE ON episodes
            FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
        CREATE TRIGGER episodes_no_truncate BEFORE TRUNCATE ON episodes
            FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
        """,
    ),
    (
        5,
        """
        -- The later episodes of one alert (same sender, playbook and fingerprint: a range of ids in
        -- byte order), read when Alertmanager moves a firing alert's startsAt earlier.
        CREATE INDEX episodes_by_series ON episodes ((episode_id COLLATE "C"));
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# What the bot's runtime role needs and no more (docs/security.md lists the same, as SQL):
# `audit schema --grant ROLE` gives it; a test keeps the two equal.
RUNTIME_GRANTS: tuple[tuple[str, str], ...] = (
    ("SELECT, INSERT", "audit_events"),
    ("SELECT, UPDATE", "audit_head"),  # only forward: a trigger refuses lowering it
    ("SELECT, INSERT, UPDATE", "episodes"),  # episode state is mutable, not chained
    ("SELECT", "schema_migrations"),
)


def grant_runtime(conn: psycopg.Connection, role: str) -> None:
    """Give `role` RUNTIME_GRANTS (run as the owner, after migrating); the role must exist."""
    with conn.transaction():
        for privileges, table in RUNTIME_GRANTS:
            conn.execute(sql.SQL(f"GRANT {privileges} ON {{}} TO {{}}").format(  # privileges: fixed text above
                sql.Identifier(table), sql.Identifier(role)))


def schema_version(conn: psycopg.Connection) -> int:
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
        return 0
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return (row[0] if row else None) or 0


def migrate_schema(conn: psycopg.Connection) -> list[int]:
    """Apply the missing migrations in one transaction under MIGRATE_LOCK; the versions applied.
    A process that waited for the lock finds them applied and does nothing."""
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        applied = []
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql)  # type: ignore[arg-type]  # fixed text, no parameters
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    except BaseException:
        if not conn.closed:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied
