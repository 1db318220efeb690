"""`audit export|verify|tail` through typer's runner, against a store file given with --db."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.audit.cli import app, follow
from bot.audit.store import SqliteAuditStore
from tests.audit.support import event, incident, raw

runner = CliRunner()


@pytest.fixture
def filled(store: SqliteAuditStore) -> SqliteAuditStore:
    store.append(incident())
    return store


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_export_json(filled: SqliteAuditStore, db: Path) -> None:
    result = invoke("export", "run-7", "--db", str(db))

    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["kind"] for r in records][:2] == ["run_started", "step_started"] and len(records) == 11


def test_export_markdown(filled: SqliteAuditStore, db: Path) -> None:
    result = invoke("export", "run-7", "--format", "md", "--db", str(db))

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# Run `run-7`\n")
    assert "| run_finished |  | system | run finished: compensated |" in result.stdout


def test_export_of_an_unknown_run_is_one_line_and_exit_1(filled: SqliteAuditStore, db: Path) -> None:
    result = invoke("export", "nope", "--db", str(db))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: no audit events for run 'nope'\n"


def test_export_without_a_store_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "audit.db"

    result = invoke("export", "nope", "--db", str(db))

    assert result.exit_code == 1
    assert result.stderr == f"error: no audit events for run 'nope': no audit store at {db}\n"
    assert not db.parent.exists()


def test_the_store_path_comes_from_settings(
    filled: SqliteAuditStore, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAYBOOK_BOT_DATA_DIR", str(db.parent))

    assert invoke("verify").stdout == "ok: 11 events, chain intact\n"


def test_verify_ok_and_tampered(filled: SqliteAuditStore, db: Path) -> None:
    result = invoke("verify", "--db", str(db))
    assert (result.exit_code, result.stdout) == (0, "ok: 11 events, chain intact\n")

    conn = raw(db)
    conn.execute("UPDATE audit_events SET details = replace(details, 'dana', 'eve') WHERE seq = 6")
    conn.close()
    result = invoke("verify", "--db", str(db))

    assert result.exit_code == 1
    assert result.stderr == (
        "error: audit chain broken: seq 6: hash mismatch (stored event was changed) (5 events before it are intact)\n"
    )


def test_verify_without_a_store_fails(tmp_path: Path) -> None:
    result = invoke("verify", "--db", str(tmp_path / "audit.db"))
    assert result.exit_code == 1 and result.stderr == f"error: no audit store at {tmp_path / 'audit.db'}\n"


def test_a_store_that_is_not_a_database_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "audit.db").write_text("this is not sqlite\n" * 100)
    result = invoke("verify", "--db", str(tmp_path / "audit.db"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: audit store {tmp_path / 'audit.db'}: cannot verify it: ")
    assert result.stderr.count("\n") == 1


def test_tail_prints_the_last_events_one_line_each(filled: SqliteAuditStore, db: Path) -> None:
    result = invoke("tail", "-n", "3", "--db", str(db))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "     9  2025-03-14T09:27:01.589000Z  compensation_started    run-7/silence  system  "
        "compensation of silence started (alertmanager.expire_silence)",
        "    10  2025-03-14T09:27:02.589000Z  compensation_succeeded  run-7/silence  system  "
        "compensation of silence succeeded",
        "    11  2025-03-14T09:27:03.589000Z  run_finished            run-7/-  system  run finished: compensated",
    ]


def test_tail_follow_prints_what_arrives(filled: SqliteAuditStore, db: Path) -> None:
    result = invoke("tail", "--run", "other", "--follow", "--interval", "0.01", "--max-polls", "2", "--db", str(db))
    assert result.exit_code == 0 and result.stdout == ""

    seen: list[int] = []

    def later(_: float) -> None:  # events written between two polls, by another process
        filled.append([event(100, run_id="other"), event(101, run_id="run-7"), event(102, run_id="other")])

    last = follow(
        filled, run_id="other", after_seq=11, interval=0.5, emit=lambda e: seen.append(e.seq), max_polls=2, sleep=later
    )

    assert seen == [12, 14] and last == 14
