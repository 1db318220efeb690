"""The PostgreSQL store beyond the shared contract: one chain from many processes, migrations the
bot runs itself, an outage it reports and recovers from, and the role it should run as."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from bot.audit.pg_schema import MIGRATIONS, SCHEMA_VERSION, migrate_schema
from bot.audit.postgres import PostgresAuditStore, redact
from bot.audit.cli import app as audit_app
from bot.audit.store import AuditUnavailable
from tests.audit.support import append_many, event
from tests.pg import PgCluster

WRITERS = ("a", "b", "c", "d")
COUNT = 150


def test_four_processes_appending_at_once_make_one_chain_that_verifies(pg_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(WRITERS))
    workers = [context.Process(target=append_many, args=(pg_url, name, COUNT, start)) for name in WRITERS]
    for worker in workers:
        worker.start()  # all wait at the barrier, then race to create the schema and append
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0] * len(WRITERS)

    with PostgresAuditStore(pg_url) as store:
        events = store.events()
        result = store.verify()

    assert (result.ok, result.checked) == (True, len(WRITERS) * COUNT), result.reason
    assert [e.seq for e in events] == list(range(1, len(WRITERS) * COUNT + 1))
    runs = [e.run_id for e in events]
    assert sum(a != b for a, b in zip(runs, runs[1:])) > len(WRITERS), "the processes never overlapped"
    for name in WRITERS:
        assert [e.details["n"] for e in events if e.run_id == name] == list(range(COUNT))


def test_a_second_store_continues_the_chain_and_retries_are_idempotent(pg_url: str) -> None:
    with PostgresAuditStore(pg_url) as one, PostgresAuditStore(pg_url) as two:
        one.append([event(1)])
        [second] = two.append([event(2)])
        assert two.append([event(1)])[0].seq == 1
        assert one.append([event(2), event(3)], new_only=True)[0].seq == 3
        assert second.seq == 2 and one.get_event(event(2).event_id) == second
        assert one.get_event("nope") is None
        assert one.get_events([event(1).event_id, event(3).event_id, "nope"]) == {
            e.event_id: e for e in (one.get_event(event(1).event_id), one.get_event(event(3).event_id)) if e}
        assert one.get_events([]) == {}
        assert one.verify().ok and one.verify().checked == 3


def test_migrations_are_recorded_once_and_running_them_again_changes_nothing(pg_url: str) -> None:
    with PostgresAuditStore(pg_url) as store:
        store.append([event(1)])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert migrate_schema(conn) == []
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [version for version, _ in MIGRATIONS] and versions[-1] == SCHEMA_VERSION
    with PostgresAuditStore(pg_url) as store:
        assert store.verify().checked == 1


def test_processes_starting_at_once_apply_each_migration_once(pg_url: str) -> None:
    stores = [PostgresAuditStore(pg_url, timeout=60) for _ in range(6)]
    gate = threading.Barrier(len(stores))
    problems: list[str | None] = []

    def start(store: PostgresAuditStore) -> None:
        gate.wait(timeout=60)
        problems.append(store.check_writable())

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for store in stores:
        store.close()

    assert problems == [None] * len(stores)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        counted = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
        assert [tuple(row) for row in counted] == [(version, 1) for version, _ in MIGRATIONS]


def test_a_reader_never_creates_the_schema(pg_url: str) -> None:
    with PostgresAuditStore(pg_url, create=False) as reader:
        with pytest.raises(AuditUnavailable, match="the audit schema is not there"):
            reader.verify()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('audit_events')").fetchone() == (None,)


def test_a_stopped_server_is_unavailable_with_a_clear_message_then_the_same_store_recovers(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    store = PostgresAuditStore(pg_url, timeout=5)
    store.append([event(1)])
    pg_cluster.stop()
    try:
        with pytest.raises(AuditUnavailable) as caught:
            store.append([event(2)])
        message = str(caught.value)
        assert message.startswith(f"audit store {pg_url}: cannot append to it: ")
        assert "\n" not in message
        reason = store.check_writable()
        assert reason is not None and "Connection refused" in reason, reason
        with pytest.raises(AuditUnavailable, match="cannot read it"):
            store.events()
    finally:
        pg_cluster.start()

    assert store.check_writable() is None  # the same object, no rebuild
    assert store.append([event(2)])[0].seq == 2
    assert store.verify().ok
    store.close()


def test_a_server_restart_between_calls_costs_the_caller_nothing(pg_cluster: PgCluster, pg_url: str) -> None:
    with PostgresAuditStore(pg_url) as store:
        store.append([event(1)])
        store.claim_episode("fp")
        pg_cluster.stop()
        pg_cluster.start()  # the store's connection is now dead, and it does not know yet

        assert store.append([event(2)])[0].seq == 2  # reconnected once, transparently (append is idempotent)
        pg_cluster.stop()
        pg_cluster.start()
        assert store.check_writable() is None
        pg_cluster.stop()
        pg_cluster.start()
        assert [e.seq for e in store.events()] == [1, 2]
        pg_cluster.stop()
        pg_cluster.start()
        with pytest.raises(AuditUnavailable, match="cannot claim an episode in it"):
            store.claim_episode("fp", rerun=True)  # not repeatable blindly: the caller decides
        assert store.episode("fp").runs == 1


def test_a_store_built_while_the_server_is_down_works_once_it_is_up(pg_cluster: PgCluster, pg_url: str) -> None:
    pg_cluster.stop()
    try:
        store = PostgresAuditStore(pg_url, timeout=2)  # building it never connects
        assert "Connection refused" in (store.check_writable() or "")
    finally:
        pg_cluster.start()
    assert store.append([event(1)])[0].seq == 1
    store.close()


def test_a_chain_lock_held_past_the_timeout_is_unavailable_until_released(pg_url: str) -> None:
    from bot.audit.pg_schema import APPEND_LOCK

    with PostgresAuditStore(pg_url, timeout=1) as store:
        store.append([event(1)])
        with psycopg.connect(pg_url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK,))  # a writer stuck mid-append

            with pytest.raises(AuditUnavailable, match="cannot append to it: canceling statement due to lock timeout"):
                store.append([event(2)])
            assert [e.seq for e in store.events()] == [1]  # readers are not blocked

            holder.execute("SELECT pg_advisory_unlock(%s)", (APPEND_LOCK,))
        assert store.append([event(2)])[0].seq == 2
        assert store.verify().ok


def test_a_claim_waits_for_a_claim_of_the_same_alert_under_a_later_start_and_names_it(pg_url: str) -> None:
    """Two front doors at once: one claims the first notification's episode (startsAt T1), the
    other the merged copy's (Alertmanager moved startsAt earlier, T0). The second waits on the
    alert's series lock and answers as T1's episode instead of opening a second one."""
    from bot.audit.episodes import series_key
    from bot.audit.postgres import _series_lock

    early = "alert-disk-remediation-3c43aa-20261206T100000.000000Z"
    late = "alert-disk-remediation-3c43aa-20261206T100040.000000Z"
    with PostgresAuditStore(pg_url) as store:
        store.episode(early)  # (schema in place)
        with psycopg.connect(pg_url) as first:  # the other front door, mid-claim of the later start
            first.execute("SELECT pg_advisory_xact_lock(%s)", (_series_lock(series_key(late)),))
            first.execute("INSERT INTO episodes (episode_id, runs, claimed_at) VALUES (%s, 1, now())", (late,))
            answers: list[object] = []
            claimer = threading.Thread(target=lambda: answers.append(store.claim_episode(early)))
            claimer.start()
            claimer.join(timeout=0.5)
            assert claimer.is_alive(), f"the claim did not wait for the alert's other claim: {answers}"
            first.commit()
        claimer.join(timeout=30)
        [answer] = answers
        assert (answer.episode_id, answer.claimed) == (late, False)
        assert store.episode(early).runs == 0


def test_a_closed_store_is_unavailable(pg_url: str) -> None:
    store = PostgresAuditStore(pg_url)
    store.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        store.append([event(1)])


def test_messages_never_show_the_password() -> None:
    assert redact("postgresql://bot:s3cret@db:5432/audit") == "postgresql://bot:***@db:5432/audit"
    assert redact("postgresql://db/audit?password=s3cret&sslmode=require") == (
        "postgresql://db/audit?password=***&sslmode=require"
    )
    store = PostgresAuditStore("postgresql://bot:s3cret@127.0.0.1:1/audit", timeout=2)
    reason = store.check_writable() or ""
    assert "s3cret" not in reason and "postgresql://bot:***@127.0.0.1:1/audit" in reason
    assert "s3cret" not in repr(store)


def documented_grants() -> list[str]:
    """The GRANT lines docs/security.md tells the owner to run (so the docs cannot drift)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    grants = [line.split("--")[0].strip().rstrip(";") for line in text.splitlines() if line.startswith("GRANT ")]
    assert grants, "docs/security.md lists no GRANT for the bot's role"
    return grants


def test_an_owner_migrates_and_a_role_with_the_documented_grants_runs_the_bot_but_cannot_rewrite(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    owner_role, bot_role = f"own_{dbname}", f"bot_{dbname}"  # roles are per cluster: one pair per test database
    pg_cluster.create_role(owner_role, dbname)
    pg_cluster.create_role(bot_role, dbname)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{owner_role}"')
    with PostgresAuditStore(pg_cluster.url(dbname, user=owner_role)) as owner:  # migrations run as the owner
        owner.append([event(1)])
        assert (owner.privilege_warning() or "").startswith(f"role {owner_role!r} owns audit_events: it can drop")
        with psycopg.connect(owner.url, autocommit=True) as conn:
            for grant in documented_grants():
                conn.execute(grant.replace("playbook_bot", f'"{bot_role}"'))  # type: ignore[arg-type]
    runtime_url = pg_cluster.url(dbname, user=bot_role)

    with psycopg.connect(pg_url, autocommit=True) as conn:  # an upgrade shipped a migration the owner has not run
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (SCHEMA_VERSION,))
        conn.execute("DROP INDEX episodes_by_series")  # what that migration (5) made
    with PostgresAuditStore(runtime_url) as bot:
        reason = bot.check_writable() or ""
        assert f"the audit schema is at version {SCHEMA_VERSION - 1}, this bot needs {SCHEMA_VERSION}" in reason
        assert "run `playbook-bot audit schema --url <the owner's URL>` once" in reason
    done = CliRunner().invoke(audit_app, ["schema", "--url", pg_cluster.url(dbname, user=owner_role)])
    assert (done.exit_code, done.stdout) == (0, f"ok: audit schema at version {SCHEMA_VERSION}\n"), done.output

    with PostgresAuditStore(runtime_url) as bot:
        assert bot.check_writable() is None
        assert bot.append([event(2)])[0].seq == 2
        assert bot.claim_episode("fp").claimed and bot.resolve_episode("fp").resolved_at is not None
        assert bot.privilege_warning() is None
        assert bot.verify().ok
    with psycopg.connect(runtime_url, autocommit=True) as conn:
        for attack in (
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change",
            "DROP TRIGGER audit_events_no_change ON audit_events",
            "DELETE FROM audit_events",
            "UPDATE audit_events SET actor = 'mallory'",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)  # type: ignore[arg-type]


def test_the_settings_choose_the_backend(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.audit.backend import open_store
    from bot.audit.store import SqliteAuditStore
    from bot.settings import ConfigError, Settings

    sqlite = open_store(Settings(data_dir=tmp_path))
    assert isinstance(sqlite, SqliteAuditStore) and sqlite.path == tmp_path / "audit.db"
    monkeypatch.setenv("PLAYBOOK_BOT_AUDIT_URL", f" {pg_url}\n")
    with open_store(Settings(data_dir=tmp_path)) as store:
        assert isinstance(store, PostgresAuditStore) and store.url == pg_url
        assert store.append([event(1)])[0].seq == 1
    assert not (tmp_path / "audit.db").exists()
    with pytest.raises(ConfigError, match="must start with postgresql://"):
        open_store(Settings(audit_url="sqlite:///x.db"))


NASTY = ['"', "\\", "\\u0000", "\n\r\t\b\f", "\x01\x1f\x7f", "é€😀", "\u2028\u2029", "{}[],:", "null", "%s %(x)s $$", " "]


def test_the_preimage_parts_are_canonical_json_cut_in_three() -> None:
    from bot.audit.events import canonical_json
    from bot.audit.postgres import preimage_parts

    for n, text in enumerate(NASTY):
        for run_id in (None, text):
            link = event(n, run_id=run_id, actor=f"a{text}", step_id=text or None, details={text: [text]}).link(0, "")
            prefix, middle, suffix = preimage_parts(link)
            for seq, prev in ((1, "0" * 64), (12345678901, "ab" * 32)):
                assert prefix + prev + middle + str(seq) + suffix == canonical_json(link | {"seq": seq, "prev_hash": prev})


def test_the_database_links_every_character_as_bot_audit_events_does(pg_url: str) -> None:
    """The chain is hashed in the database (one round trip under the lock); verify recomputes it in Python."""
    batch = [
        event(n, run_id=text, actor=f"user{text}", step_id=text, event_id=f"id{text}{n}", details={text: text, "n": text})
        for n, text in enumerate(NASTY)
    ]
    with PostgresAuditStore(pg_url) as store:
        stored = store.append(batch[:5]) + store.append(batch[5:] + batch[:2])
        assert [e.seq for e in stored] == [*range(1, len(NASTY) + 1), 1, 2]
        assert all(e.hash == e.expected_hash() for e in stored)
        assert store.events() == stored[: len(NASTY)]
        assert store.verify().ok and store.verify().checked == len(NASTY)


def test_schema_grant_gives_the_runtime_role_what_the_docs_list_and_no_more(pg_cluster: PgCluster, pg_url: str) -> None:
    """`audit schema --grant ROLE` (what the compose stack's one-shot service runs as the owner)."""
    from bot.audit.pg_schema import RUNTIME_GRANTS

    assert [f"GRANT {p} ON {t} TO playbook_bot" for p, t in RUNTIME_GRANTS] == documented_grants()
    dbname = pg_url.rsplit("/", 1)[1]
    owner_role, bot_role = f"own_{dbname}", f"bot_{dbname}"
    pg_cluster.create_role(owner_role, dbname)
    pg_cluster.create_role(bot_role, dbname)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{owner_role}"')
    owner_url = pg_cluster.url(dbname, user=owner_role)
    missing = CliRunner().invoke(audit_app, ["schema", "--url", owner_url, "--grant", "no_such_role"])
    assert missing.exit_code == 1 and "cannot grant the runtime privileges to role 'no_such_role'" in missing.output
    done = CliRunner().invoke(audit_app, ["schema", "--url", owner_url, "--grant", bot_role])
    assert done.exit_code == 0, done.output
    with PostgresAuditStore(pg_cluster.url(dbname, user=bot_role)) as bot:
        assert bot.check_writable() is None and bot.append([event(1)])[0].seq == 1
        assert bot.privilege_warning() is None
    with psycopg.connect(pg_cluster.url(dbname, user=bot_role), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM audit_events")
