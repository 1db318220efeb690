"""Signed chain-head checkpoints: written by the worker's loop, checked by `audit verify --checkpoints`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bot.audit.checkpoint import Checkpointer, check_checkpoints, start_checkpoints
from bot.audit.cli import app
from bot.audit.store import SqliteAuditStore
from bot.identity.proofs import Keyring
from bot.settings import ConfigError
from tests.audit.support import event, raw, rehash_from

KEY = "c" * 64
runner = CliRunner()


def test_checkpoints_hold_while_the_trail_grows(store: Any, tmp_path: Path) -> None:
    keyring, path = Keyring(KEY.encode()), tmp_path / "cp.jsonl"
    writer = Checkpointer(store, path, keyring, interval=60)
    assert writer.write_if_moved() is None and not path.exists()  # an empty trail has no head
    for n in range(3):
        store.append([event(n)])
        writer.write_if_moved()

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3] and set(lines[0]) == {"seq", "hash", "ts", "seal"}
    assert check_checkpoints(path, store, keyring) == (3, [])
    assert path.stat().st_mode & 0o777 == 0o600


async def test_the_loop_writes_when_the_head_moves_and_once_more_at_stop(store: Any, tmp_path: Path) -> None:
    path = tmp_path / "cp.jsonl"
    store.append([event(1)])
    stop = start_checkpoints(store, path, Keyring(KEY.encode()), interval=0.01)
    for _ in range(2000):  # until the loop has written one (a poll, not a timed assertion)
        if path.exists():
            break
        await asyncio.sleep(0.01)
    store.append([event(2)])
    await stop()
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1, 2]


def test_checkpoints_need_a_key(store: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PLAYBOOK_BOT_ENVELOPE_KEY"):
        start_checkpoints(store, tmp_path / "cp.jsonl", Keyring(), interval=1)


def test_verify_with_checkpoints_on_the_command_line(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYBOOK_BOT_ENVELOPE_KEY", KEY)
    path = tmp_path / "cp.jsonl"
    with SqliteAuditStore(db) as store:
        store.append([event(n) for n in range(1, 6)])
        Checkpointer(store, path, Keyring(KEY.encode()), interval=60).write_if_moved()

    ok = runner.invoke(app, ["verify", "--db", str(db), "--checkpoints", str(path)])
    assert (ok.exit_code, ok.stdout) == (0, "ok: 5 events, chain intact, 1 checkpoints hold\n")

    conn = raw(db)  # a careful forger: an edit, every later hash recomputed
    conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    rehash_from(conn, 2)
    conn.close()
    assert runner.invoke(app, ["verify", "--db", str(db)]).exit_code == 0  # the chain alone cannot see it
    caught = runner.invoke(app, ["verify", "--db", str(db), "--checkpoints", str(path)])
    assert caught.exit_code == 1
    assert caught.stderr.startswith(f"error: checkpoint: {path}:1: seq 5 has another hash than checkpointed")

    monkeypatch.delenv("PLAYBOOK_BOT_ENVELOPE_KEY")
    monkeypatch.setenv("PLAYBOOK_BOT_DATA_DIR", str(tmp_path / "nodev"))
    keyless = runner.invoke(app, ["verify", "--db", str(db), "--checkpoints", str(path)])
    assert keyless.exit_code == 2 and "set PLAYBOOK_BOT_ENVELOPE_KEY" in keyless.stderr
    nofile = runner.invoke(app, ["verify", "--db", str(db), "--checkpoints", str(tmp_path / "none")])
    assert nofile.exit_code == 2 and "no checkpoint file at" in nofile.stderr
