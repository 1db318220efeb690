"""`audit migrate` SQLite -> PostgreSQL, and the read commands on PostgreSQL through the settings."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from bot.audit.cli import app
from bot.audit.postgres import PostgresAuditStore
from bot.audit.store import SqliteAuditStore
from tests.audit.support import event, incident, raw

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def source(db: Path) -> SqliteAuditStore:
    with SqliteAuditStore(db) as store:
        store.append(incident())
        store.append([event(n, run_id="run-8") for n in range(40)])
        yield store


def test_migrate_copies_every_event_as_it_is_and_the_chain_verifies(source: SqliteAuditStore, db: Path, pg_url: str) -> None:
    result = invoke("migrate", "--from", f"sqlite://{db}", "--to", pg_url)

    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: 51 events in the source, 0 already in the target, 51 copied; the target verifies with 51 events\n"
    with PostgresAuditStore(pg_url) as target:
        assert target.events() == source.events()  # seq, ts, ids, details and hashes
        assert target.verify().head_hash == source.verify().head_hash
        [next_one] = target.append([event(99, run_id="after")])
    assert next_one.seq == 52 and next_one.prev_hash == source.events()[-1].hash


def test_migrate_resumes_a_partial_copy_and_a_second_run_copies_nothing(
    source: SqliteAuditStore, db: Path, pg_url: str
) -> None:
    with PostgresAuditStore(pg_url) as target:
        target.import_events(source.events(limit=20))

    result = invoke("migrate", "--from", f"sqlite://{db}", "--to", pg_url)
    assert result.exit_code == 0, result.output
    assert "20 already in the target, 31 copied" in result.stdout

    again = invoke("migrate", "--from", f"sqlite://{db}", "--to", pg_url)
    assert again.exit_code == 0 and "51 already in the target, 0 copied" in again.stdout


def test_migrate_refuses_a_target_with_another_trail_and_writes_nothing(
    source: SqliteAuditStore, db: Path, pg_url: str
) -> None:
    with PostgresAuditStore(pg_url) as target:
        target.append([event(1, run_id="elsewhere"), event(2, run_id="elsewhere")])

    result = invoke("migrate", "--from", f"sqlite://{db}", "--to", pg_url)

    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: target {pg_url} is not empty and not a copy of this source: its seq 2 ")
    assert result.stderr.rstrip().endswith("migrate into an empty database")
    with PostgresAuditStore(pg_url) as target:
        assert len(target.events()) == 2


def test_migrate_refuses_a_broken_source(source: SqliteAuditStore, db: Path, pg_url: str) -> None:
    conn = raw(db)
    conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 4")
    conn.close()

    result = invoke("migrate", "--from", f"sqlite://{db}", "--to", pg_url)

    assert result.exit_code == 2
    assert "audit chain broken: seq 4: hash mismatch" in result.stderr and "not copied" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "/tmp/audit.db"], "--from must be a sqlite:///path/to/audit.db URL"),
        (["--from", "sqlite:///nowhere/audit.db"], "--from: no audit store at /nowhere/audit.db"),
        (["--from", "sqlite:///x.db", "--to", "mysql://db/x"], "--to must be a postgresql:// URL"),
    ],
)
def test_migrate_arguments_that_cannot_work_exit_2_naming_the_fix(
    args: list[str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAYBOOK_BOT_AUDIT_URL", "postgresql://127.0.0.1:1/none")
    result = invoke("migrate", *args)
    assert result.exit_code == 2 and says in result.stderr, result.output


def test_migrate_to_a_server_that_is_down_exits_2(source: SqliteAuditStore, db: Path) -> None:
    result = invoke("migrate", "--from", f"sqlite://{db}", "--to", "postgresql://bot:pw@127.0.0.1:1/audit")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: audit store postgresql://bot:***@127.0.0.1:1/audit: cannot verify it: ")
    assert "pw@" not in result.stderr


def test_export_verify_and_tail_read_postgresql_from_the_settings(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLAYBOOK_BOT_AUDIT_URL", pg_url)
    monkeypatch.setenv("PLAYBOOK_BOT_DATA_DIR", str(tmp_path / "no-sqlite-here"))
    missing = invoke("verify")
    assert missing.exit_code == 1 and "the audit schema is not there" in missing.stderr
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the reader created nothing
        assert conn.execute("SELECT to_regclass('audit_events')").fetchone() == (None,)

    with PostgresAuditStore(pg_url) as store:
        store.append(incident())

    verify = invoke("verify")
    assert verify.exit_code == 0 and verify.stdout == "ok: 11 events, chain intact\n"
    assert "is a superuser: it can drop the append-only triggers" in verify.stderr
    exported = invoke("export", "run-7")
    assert exported.exit_code == 0 and len(json.loads(exported.stdout)) == 11
    tail = invoke("tail", "-n", "2", "--follow", "--interval", "0.01", "--max-polls", "2")
    assert tail.exit_code == 0 and [line.split()[0] for line in tail.stdout.splitlines()] == ["10", "11"]
    assert not (tmp_path / "no-sqlite-here").exists()


def test_a_non_postgresql_audit_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYBOOK_BOT_AUDIT_URL", "mysql://db/audit")
    result = invoke("verify")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: PLAYBOOK_BOT_AUDIT_URL must start with postgresql:// (got 'mysql'); "
        "leave it unset for the SQLite file in PLAYBOOK_BOT_DATA_DIR\n"
    )
